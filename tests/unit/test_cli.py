from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from fhir_images import __version__, load_structured, synthetic
from fhir_images.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

#: What each bundled example case must come out as (exit code, decision, confidentiality).
EXPECTED = {
    "01-ultrasound-implicit.yaml": (0, "store", "N"),
    "02-adult-rash-video-consultation.yaml": (0, "store", "N"),
    "03-parent-unsolicited-intimate-unconfirmed.yaml": (3, "hold", "V"),
    "04-parent-unsolicited-intimate-confirmed.yaml": (0, "store", "V"),
    "05-strict-policy-intimate-child.yaml": (4, "refuse", "V"),
    "06-no-purpose.yaml": (4, "refuse", "N"),
    "bad-input/07-pdf-renamed-jpg.yaml": (2, "bad-input", None),
    "08-clinician-wound-photo.yaml": (0, "store", "N"),
    "09-teen-own-photo-heic.yaml": (0, "store", "R"),
    "10-grandparent-no-parental-responsibility.yaml": (3, "hold", "R"),
    "11-video-consultation-recording.yaml": (4, "refuse", "N"),
    "12-auscultation-audio.yaml": (0, "store", "N"),
    "13-parent-parental-responsibility-not-stated.yaml": (3, "hold", "R"),
    "14-request-answered.yaml": (0, "store", "N"),
    "15-request-other-body-site.yaml": (3, "hold", "N"),
    "16-request-expired.yaml": (3, "hold", "N"),
    "17-request-intimate-15-year-old.yaml": (4, "refuse", "V"),
    "18-request-sender-not-named.yaml": (3, "hold", "N"),
}


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and __version__ in result.output


def test_every_example_case_is_covered():
    cases = EXAMPLES / "cases"
    assert {str(p.relative_to(cases)) for p in cases.rglob("*.yaml")} == set(EXPECTED)


def test_the_readme_command_over_the_examples_succeeds(tmp_path):
    """The main command of the README: every good example gets a decision, exit 0."""
    cases = sorted(str(p) for p in (EXAMPLES / "cases").glob("*.yaml"))
    result = run("ingest", "--batch", "--json", "--outbox", str(tmp_path / "ob"), *cases)
    assert result.exit_code == 0, result.output
    decisions = [json.loads(line)["decision"] for line in result.output.splitlines()]
    assert {"store", "hold", "refuse"} == set(decisions)
    bad = run(
        "ingest",
        "--batch",
        "--outbox",
        str(tmp_path / "ob"),
        *cases,
        str(EXAMPLES / "cases" / "bad-input" / "07-pdf-renamed-jpg.yaml"),
    )
    assert bad.exit_code == 2, "bad input still fails a batch"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_case(name, tmp_path):
    code, decision, conf = EXPECTED[name]
    result = run(
        "ingest", "--json", "--outbox", str(tmp_path / "ob"), str(EXAMPLES / "cases" / name)
    )
    assert result.exit_code == code, result.output
    row = json.loads(result.output)
    assert row["decision"] == decision
    if conf is None:
        assert row["error_type"] == "UnsupportedMediaType"
        assert not any(any((tmp_path / "ob" / s).iterdir()) for s in ("ready", "held"))
        return
    assert {"decision", "reasons", "security", "consent", "outbox_entry"} <= set(row)
    confs = [s["code"] for s in row["security"] if s["system"].endswith("v3-Confidentiality")]
    assert confs == [conf]
    for reason in row["reasons"]:
        assert reason["rule"][0] in "GSW" and reason["text"]
    if decision == "refuse":
        assert row["outbox_entry"] is None
        assert not any((tmp_path / "ob" / "held").iterdir()), "a refused image is not kept"
    else:
        assert Path(row["outbox_entry"]).is_dir()


def test_required_situations_cite_their_rules(tmp_path):
    def reasons(name):
        result = run(
            "ingest", "--json", "--outbox", str(tmp_path / name), str(EXAMPLES / "cases" / name)
        )
        return {(r["rule"], r["outcome"]) for r in json.loads(result.output)["reasons"]}

    assert ("G3", "store") in reasons("01-ultrasound-implicit.yaml")
    assert ("G9", "store") in reasons("02-adult-rash-video-consultation.yaml")
    assert ("G6", "hold") in reasons("03-parent-unsolicited-intimate-unconfirmed.yaml")
    assert ("S1", "refuse") in reasons("05-strict-policy-intimate-child.yaml")
    assert ("G8", "refuse") in reasons("06-no-purpose.yaml")
    assert ("G5", "hold") in reasons("13-parent-parental-responsibility-not-stated.yaml")
    assert ("W5", "store") in reasons("14-request-answered.yaml")
    assert ("W5", "hold") in reasons("15-request-other-body-site.yaml")
    assert ("W5", "hold") in reasons("16-request-expired.yaml")
    assert ("W5", "refuse") in reasons("17-request-intimate-15-year-old.yaml")
    assert ("W5", "hold") in reasons("18-request-sender-not-named.yaml")


def test_gps_example_is_stored_without_gps_and_same_orientation(tmp_path):
    result = run(
        "ingest",
        "--json",
        "--outbox",
        str(tmp_path / "ob"),
        str(EXAMPLES / "cases" / "02-adult-rash-video-consultation.yaml"),
    )
    row = json.loads(result.output)
    stored = Path(row["outbox_entry"]) / "content.jpg"
    original = Image.open(EXAMPLES / "images" / "rash-forearm-gps.jpg")
    kept = Image.open(io.BytesIO(stored.read_bytes()))
    assert original.getexif().get_ifd(0x8825), "the example must carry GPS"
    assert not kept.getexif().get_ifd(0x8825)
    assert kept.getexif().get(0x0112) == original.getexif().get(0x0112) == 6
    assert "GPS location" in row["metadata_removed"]


def test_context_as_flags(tmp_path):
    img = tmp_path / "photo.jpg"
    img.write_bytes(synthetic.jpeg())
    consent = EXAMPLES / "consent" / "adult-remote-rash.yaml"
    result = run(
        "ingest",
        "--json",
        "--outbox",
        str(tmp_path / "ob"),
        str(img),
        "--patient",
        "Patient/ex-adult-1",
        "--birth-date",
        "1985-06-30",
        "--made-by",
        "patient",
        "--operator",
        "Patient/ex-adult-1",
        "--solicited",
        "--not-intimate",
        "--remote",
        "--purpose",
        "Rash review",
        "--body-site",
        "14975008|Forearm",
        "--consent",
        str(consent),
    )
    assert result.exit_code == 0, result.output
    row = json.loads(result.output)
    assert row["decision"] == "store" and row["consent"] == "recorded"


def test_invalid_context_is_bad_input(tmp_path):
    img = tmp_path / "photo.jpg"
    img.write_bytes(synthetic.jpeg())
    result = run(
        "ingest",
        "--json",
        "--outbox",
        str(tmp_path / "ob"),
        str(img),
        "--patient",
        "Mr Smith",
        "--birth-date",
        "1985-06-30",
        "--made-by",
        "patient",
    )
    assert result.exit_code == 2
    row = json.loads(result.output)
    assert row["decision"] == "bad-input" and "patient" in row["error"]
    assert "Mr Smith" not in row["error"], "identifiers are not echoed back"


def test_png_named_jpg_is_a_type_mismatch(tmp_path):
    img = tmp_path / "photo.jpg"
    img.write_bytes(synthetic.png())
    result = run(
        "ingest",
        "--json",
        "--outbox",
        str(tmp_path / "ob"),
        str(img),
        "--patient",
        "Patient/1",
        "--birth-date",
        "1985-06-30",
        "--made-by",
        "patient",
        "--purpose",
        "x",
    )
    assert result.exit_code == 2
    assert json.loads(result.output)["error_type"] == "ContentTypeMismatch"


def test_missing_file_is_bad_input(tmp_path):
    result = run(
        "ingest",
        "--json",
        "--outbox",
        str(tmp_path / "ob"),
        str(tmp_path / "nope.jpg"),
        "--patient",
        "Patient/1",
        "--birth-date",
        "1985-06-30",
        "--made-by",
        "patient",
    )
    assert result.exit_code == 2
    assert "cannot be read" in json.loads(result.output)["error"]


def test_broken_case_file_is_bad_input(tmp_path):
    case = tmp_path / "case.yaml"
    case.write_text("image: [unclosed\n")
    result = run("ingest", "--outbox", str(tmp_path / "ob"), str(case))
    assert result.exit_code == 2


def test_several_inputs_worst_exit_code_wins(tmp_path):
    cases = EXAMPLES / "cases"
    result = run(
        "ingest",
        "--json",
        "--outbox",
        str(tmp_path / "ob"),
        str(cases / "01-ultrasound-implicit.yaml"),
        str(cases / "03-parent-unsolicited-intimate-unconfirmed.yaml"),
    )
    assert result.exit_code == 3
    assert len(result.output.strip().splitlines()) == 2


def test_human_table(tmp_path):
    result = run(
        "ingest",
        "--outbox",
        str(tmp_path / "ob"),
        str(EXAMPLES / "cases" / "03-parent-unsolicited-intimate-unconfirmed.yaml"),
    )
    assert result.exit_code == 3
    assert "held" in result.output and "G6" in result.output


def test_outbox_list_recheck_discard(tmp_path):
    ob = str(tmp_path / "ob")
    run(
        "ingest",
        "--outbox",
        ob,
        str(EXAMPLES / "cases" / "03-parent-unsolicited-intimate-unconfirmed.yaml"),
        str(EXAMPLES / "cases" / "10-grandparent-no-parental-responsibility.yaml"),
    )
    listing = json.loads(run("outbox", "list", "--json", "--outbox", ob).output)
    assert [e["state"] for e in listing] == ["held", "held"]
    assert "ex-child" not in json.dumps(listing), "the listing shows no patient identifiers"
    child = next(e for e in listing if "G6" in e["blocking"])
    other = next(e for e in listing if e is not child)

    result = run(
        "outbox",
        "recheck",
        child["id"],
        "--json",
        "--outbox",
        ob,
        "--consent",
        str(EXAMPLES / "consent" / "parent-confirmed.yaml"),
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["decision"] == "store"

    result = run(
        "outbox",
        "discard",
        other["id"],
        "--outbox",
        ob,
        "--by",
        "Practitioner/gp1",
        "--reason",
        "Grandparent sent it by mistake",
    )
    assert result.exit_code == 0
    listing = json.loads(run("outbox", "list", "--json", "--outbox", ob).output)
    assert [(e["id"], e["state"]) for e in listing] == [(child["id"], "ready")]
    assert (
        run(
            "outbox", "discard", "no-such-id", "--outbox", ob, "--by", "P/1", "--reason", "x"
        ).exit_code
        == 1
    )


def test_policy_packs_are_looked_up_when_the_command_runs(tmp_path, monkeypatch):
    from dataclasses import replace

    from fhir_images.policy import POLICIES, STRICT, register_policy

    case = str(EXAMPLES / "cases" / "04-parent-unsolicited-intimate-confirmed.yaml")
    unknown = run("ingest", "--outbox", str(tmp_path / "ob"), "--policy", "local", case)
    assert unknown.exit_code == 2 and "choose one of" in unknown.output
    monkeypatch.setitem(POLICIES, "local", POLICIES["default"])
    register_policy(replace(STRICT, name="local"))
    later = run("ingest", "--json", "--outbox", str(tmp_path / "ob"), "--policy", "local", case)
    assert later.exit_code == 4 and json.loads(later.output)["decision"] == "refuse"


def test_the_hook_service_gets_the_chosen_pack(monkeypatch):
    import fhir_images._hook as hook

    seen = {}
    monkeypatch.setenv("FHIR_IMAGES_HOOK_SECRET", "s" * 32)
    monkeypatch.setattr(hook, "run_service", lambda service, **kw: seen.update(pack=service))
    result = run("hook", "serve", "--server", "http://fhir.test/fhir", "--policy", "strict")
    assert result.exit_code == 0, result.output
    assert seen["pack"].labeller.policy.name == "strict"
    assert seen["pack"].labeller.parallel == 4
    result = run("hook", "serve", "--server", "http://fhir.test/fhir", "--parallel", "2")
    assert result.exit_code == 0 and seen["pack"].labeller.parallel == 2, result.output
    assert run("hook", "serve", "--server", "http://x/fhir", "--parallel", "0").exit_code == 2


def test_ingest_with_a_request_file(tmp_path):
    """`ingest --request FILE` links the image to the request and checks it against it."""
    case = EXAMPLES / "cases" / "02-adult-rash-video-consultation.yaml"
    request = EXAMPLES / "requests" / "adult-forearm-rash.yaml"
    result = run(
        "ingest", "--json", "--outbox", str(tmp_path / "ob"), "--request", str(request), str(case)
    )
    assert result.exit_code == 2, result.output
    assert "another patient" in result.output, "the request is for another patient than the case"
    ctx = tmp_path / "ctx.json"
    ctx.write_text(
        json.dumps(
            {
                "patient": "Patient/ex-adult-4",
                "birth_date": "1985-06-30",
                "captured": "2026-11-20T10:00:00Z",
                "made_by": "patient",
                "operator": "Patient/ex-adult-4",
                "solicited": True,
                "intimate": False,
                "remote": True,
                "body_site": {"code": "72696002", "display": "Knee"},
                "purpose": "Itchy rash; baseline photo.",
            }
        )
    )
    held = run(
        "ingest",
        "--json",
        "--outbox",
        str(tmp_path / "ob"),
        "--context",
        str(ctx),
        "--consent",
        str(EXAMPLES / "consent" / "adult-requested-photo.yaml"),
        "--request",
        str(request),
        str(EXAMPLES / "images" / "wound-clinic.jpg"),
    )
    assert held.exit_code == 3, held.output
    row = json.loads(held.output)
    assert {r["code"] for r in row["reasons"] if r["outcome"] == "hold"} == {
        "request-other-body-site"
    }


def test_a_request_by_id_needs_a_server(tmp_path):
    result = run(
        "ingest",
        "--outbox",
        str(tmp_path / "ob"),
        "--request",
        "ServiceRequest/1",
        str(EXAMPLES / "cases" / "14-request-answered.yaml"),
    )
    assert result.exit_code == 2 and "--server" in result.output


def test_asking_for_an_intimate_image_of_a_child_is_refused_before_anything_is_sent():
    result = CliRunner().invoke(
        main,
        [
            "request",
            "create",
            "--server",
            "http://127.0.0.1:9/fhir",
            "--patient",
            "Patient/t1",
            "--birth-date",
            "2011-03-10",
            "--requester",
            "Practitioner/gp1",
            "--body-site",
            "|Groin",
            "--intimate",
            "--reason",
            "Rash",
            "--valid-until",
            "2099-01-01T00:00:00Z",
            "--sender",
            "Patient/t1",
        ],
    )
    assert result.exit_code == 4, result.output
    assert "request.intimate" in result.output and "Patient/t1" not in result.output


def test_the_example_discard_leaves_a_record_and_a_note(tmp_path):
    case = str(EXAMPLES / "cases" / "17-request-intimate-15-year-old.yaml")
    result = run("ingest", "--json", "--outbox", str(tmp_path / "ob"), case)
    assert result.exit_code == 4
    row = json.loads(result.output)
    assert row["discarded"] and "description" in row["notes"][0]
    [record] = list((tmp_path / "ob" / "discarded").glob("*.json"))
    assert json.loads(record.read_text())["reason"] == "W5 request-intimate-under-18"
    table = run("ingest", "--outbox", str(tmp_path / "ob2"), case)
    flat = "".join(ch for ch in table.output if ch.isalnum())
    assert table.exit_code == 4 and "discarded" in flat and "Notetocomplete" in flat


def test_every_example_case_names_people_of_the_seed_bundle_as_they_are_there():
    """The example cases can be sent to a server loaded with examples/fhir/seed-bundle.json:
    each patient is there with the same birth date, and each RelatedPerson is there."""
    seed = json.loads((EXAMPLES / "fhir" / "seed-bundle.json").read_text())
    people = {f"{r['resourceType']}/{r['id']}": r for r in (e["resource"] for e in seed["entry"])}
    for case in sorted((EXAMPLES / "cases").glob("*.yaml")):
        context = load_structured(case)["context"]
        patient = people.get(context["patient"])
        assert patient is not None, case.name
        assert patient["birthDate"] == str(context["birth_date"]), case.name
        operator = context.get("operator", "")
        if operator.startswith("RelatedPerson/"):
            assert operator in people, case.name
