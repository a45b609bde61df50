"""Disclosure, consent changes, destruction and anonymised copies against a real server."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from fhir_images import (
    ActionRefused,
    DisclosureRequest,
    FhirClient,
    FhirImagesError,
    Outbox,
    UnsafeServer,
    Verdict,
    anonymise,
    destroy,
    disclose,
    ingest,
    narrow_consent,
    push,
    synthetic,
    withdraw_consent,
)
from fhir_images import _codes as c
from fhir_images.cli import main
from fhir_images.fhir import apply_labels
from fhir_images.fhir.audit import FileAudit, audit_trail

from ..factories import child_context, make_consent, make_context, parent_consent
from ..shapes import (
    audit_outcome,
    audit_purposes,
    audit_subtypes,
    audit_type,
    image_resource,
    permit_consent,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(connect: Callable[..., FhirClient]) -> FhirClient:
    return connect()


@pytest.fixture()
def people(client: FhirClient) -> dict[str, str]:
    """A fresh adult, a fresh young child with a mother, and a GP."""
    return make_people(client)


def make_people(client: FhirClient) -> dict[str, str]:
    """A fresh adult, a fresh young child with a mother, and a GP (on the server)."""
    tag = uuid.uuid4().hex[:10]
    adult, child, mum = f"a-{tag}", f"c-{tag}", f"m-{tag}"
    client.transaction(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": {"resourceType": "Patient", "id": adult, "birthDate": "1970-01-01"},
                    "request": {"method": "PUT", "url": f"Patient/{adult}"},
                },
                {
                    "resource": {"resourceType": "Patient", "id": child, "birthDate": "2024-08-02"},
                    "request": {"method": "PUT", "url": f"Patient/{child}"},
                },
                {
                    "resource": {
                        "resourceType": "RelatedPerson",
                        "id": mum,
                        "patient": {"reference": f"Patient/{child}"},
                    },
                    "request": {"method": "PUT", "url": f"RelatedPerson/{mum}"},
                },
                {
                    "resource": {"resourceType": "Practitioner", "id": "gp1"},
                    "request": {"method": "PUT", "url": "Practitioner/gp1"},
                },
                {
                    "resource": {"resourceType": "Practitioner", "id": "lead"},
                    "request": {"method": "PUT", "url": "Practitioner/lead"},
                },
                {
                    "resource": {
                        "resourceType": "Organization",
                        "id": "dermatology",
                        "name": "Dermatology second-opinion service",
                    },
                    "request": {"method": "PUT", "url": "Organization/dermatology"},
                },
            ],
        }
    )
    return {"adult": f"Patient/{adult}", "child": f"Patient/{child}", "mum": f"RelatedPerson/{mum}"}


def deliver(client, tmp_path, ctx, consent, seed, **kw):
    outbox = Outbox(tmp_path / f"ob-{seed}")
    result = ingest(synthetic.jpeg(seed=seed), ctx, consent, outbox=outbox, **kw)
    assert result.entry is not None and result.entry.state == "ready", result.decision.reasons
    [delivered] = push(client, outbox)
    assert delivered.delivered, delivered.error
    return delivered


def adult_image(client, tmp_path, people, seed, **consent_kw):
    ctx = make_context(patient=people["adult"], operator=people["adult"])
    return deliver(client, tmp_path, ctx, make_consent(**consent_kw), seed)


def child_image(client, tmp_path, people, seed):
    ctx = child_context(patient=people["child"], operator=people["mum"])
    return deliver(client, tmp_path, ctx, parent_consent(giver=people["mum"]), seed)


def recorded_audits(client) -> list[tuple[str, dict]]:
    """(reference, AuditEvent) of everything in the client's audit trail: the server's
    AuditEvents, or the lines of the audit file where the server refuses AuditEvents."""
    trail = audit_trail(client)
    if isinstance(trail, FileAudit):
        return [(e["fullUrl"], e["resource"]) for e in trail.entries()]
    return [(f"AuditEvent/{a['id']}", a) for a in client.search("AuditEvent", {"_count": "500"})]


def audits_for(client, media_ref, *, with_refs=False):
    found = [
        (ref, a)
        for ref, a in recorded_audits(client)
        if any((e.get("what") or {}).get("reference") == media_ref for e in a.get("entity", []))
    ]
    return found if with_refs else [a for _, a in found]


# -------------------------------------------------------------------------------- disclose


def test_second_opinion_released_with_audit_and_v_image_withheld(client, tmp_path, people):
    normal = adult_image(
        client,
        tmp_path,
        people,
        21,
        permissions={"view": True, "store": True, "second_opinion": True},
    )
    request = DisclosureRequest(
        purpose="COC",
        requester="Practitioner/gp1",
        role="clinician",
        clearance="R",
        recipient="Organization/dermatology",
    )
    result = disclose(client, people["adult"], request, tmp_path / "out")
    [d] = result.decisions
    assert d.verdict is Verdict.RELEASE
    bundle = json.loads(result.bundle_file.read_text())
    types = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert types == [client.version.image_type, "Binary"]
    assert bundle["meta"]["security"][0] == {"system": c.V3_CONFIDENTIALITY, "code": "N"}
    [(ref, audit)] = audits_for(client, normal.media, with_refs=True)
    assert audit_type(audit) == "110106"
    assert audit_subtypes(audit) == ["disclose"]
    assert audit_purposes(audit)[0]["coding"][0]["code"] == "COC"
    assert result.audit_events == [ref]

    child = child_image(client, tmp_path, people, 22)
    result = disclose(client, people["child"], request, tmp_path / "out2")
    [d] = result.decisions
    assert d.verdict is Verdict.WITHHOLD, "a V image must not go to R clearance"
    assert json.loads(result.bundle_file.read_text())["entry"] == []
    withheld = json.loads(result.withheld_file.read_text())["images"]
    assert withheld[0]["media"] == child.media and "clearance" in withheld[0]["reasons"][0]
    assert audits_for(client, child.media) == [], "nothing disclosed, nothing audited"


def test_second_opinion_refused_by_consent_is_withheld(client, tmp_path, people):
    adult_image(
        client,
        tmp_path,
        people,
        23,
        permissions={"view": True, "store": True, "second_opinion": False},
    )
    request = DisclosureRequest(purpose="COC", requester="Practitioner/gp1", role="clinician")
    [d] = disclose(client, people["adult"], request, tmp_path / "out").decisions
    assert d.verdict is Verdict.WITHHOLD and "COC" in d.reasons[0]


def test_patient_copy_through_the_cli(client, tmp_path, people):
    adult_image(client, tmp_path, people, 24)
    result = CliRunner().invoke(
        main,
        [
            "disclose",
            "--json",
            "--server",
            client.base_url,
            "--patient",
            people["adult"],
            "--purpose",
            "PATRQT",
            "--requester",
            people["adult"],
            "--role",
            "patient",
            "--out",
            str(tmp_path / "copy"),
        ],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert [d["verdict"] for d in out["decisions"]] == ["release"]
    bundle = json.loads(Path(out["bundle"]).read_text())
    binary = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Binary"
    )
    import base64

    assert Image.open(io.BytesIO(base64.b64decode(binary["data"]))).format == "JPEG"


# -------------------------------------------------------------- bypasses of the disclosure


def _disclose_cli(client, people, tmp_path, *args):
    return CliRunner().invoke(
        main,
        ["disclose", "--json", "--server", client.base_url, "--out", str(tmp_path), *args],
    )


def test_the_requester_cannot_approve_their_own_request(client, tmp_path, people):
    """A V intimate image of a child: `--approve` on the requester's own command line once
    released it at clearance N. Approval is now a recorded act of another clinician."""
    child = child_image(client, tmp_path, people, 42)
    args = ["--patient", people["child"], "--purpose", "ETREAT", "--requester", "Practitioner/gp1"]
    args += ["--role", "clinician", "--clearance", "N"]
    first = _disclose_cli(client, people, tmp_path / "a", *args)
    assert first.exit_code == 3, first.output
    out = json.loads(first.output)
    assert [d["verdict"] for d in out["decisions"]] == ["approve"]
    task = out["approval_requests"][child.media]
    gone = _disclose_cli(client, people, tmp_path / "x", *args, "--approve", child.media)
    assert gone.exit_code == 2, "the requester's own approval flag no longer exists"
    from fhir_images import approve

    with pytest.raises(ActionRefused, match="cannot approve their own"):
        approve(client, task, by="Practitioner/gp1")
    still = json.loads(_disclose_cli(client, people, tmp_path / "b", *args).output)
    assert still["decisions"][0]["verdict"] == "approve" and audits_for(client, child.media) == []
    assert still["approval_requests"][child.media] == task, "asking again reuses the request"

    listed = CliRunner().invoke(
        main,
        ["approvals", "list", "--json", "--server", client.base_url, "--patient", people["child"]],
    )
    assert [a["task"] for a in json.loads(listed.output)] == [task]
    ok = CliRunner().invoke(
        main,
        ["approvals", "approve", task, "--by", "Practitioner/lead", "--server", client.base_url],
    )
    assert ok.exit_code == 0, ok.output
    released = _disclose_cli(client, people, tmp_path / "c", *args)
    assert released.exit_code == 0, released.output
    [audit] = audits_for(client, child.media)
    authorizer = [
        a
        for a in audit["agent"]
        if a.get("type", {}).get("coding", [{}])[0].get("code") == c.BALP_AUTHORIZER[1]
    ]
    assert [a["who"] for a in authorizer] == [{"reference": "Practitioner/lead"}]
    assert client.read(task)["status"] == "completed", "an approval is used once"
    again = json.loads(_disclose_cli(client, people, tmp_path / "d", *args).output)
    assert again["decisions"][0]["verdict"] == "approve"


def test_patient_role_does_not_open_a_v_image(client, tmp_path, people):
    child = child_image(client, tmp_path, people, 43)
    out = _disclose_cli(
        client,
        people,
        tmp_path / "a",
        "--patient",
        people["child"],
        "--purpose",
        "PATRQT",
        "--requester",
        people["child"],
        "--role",
        "patient",
    )
    assert out.exit_code == 3, out.output
    decision = json.loads(out.output)["decisions"][0]
    assert decision["media"] == child.media and decision["verdict"] == "approve"
    assert json.loads((tmp_path / "a" / "release-bundle.json").read_text())["entry"] == []


def test_a_media_pointing_at_another_images_bytes_is_refused(client, tmp_path, people):
    """A Media created directly on the server, for another patient, labelled N, pointing at a
    V child's Binary: the bytes' own labels and securityContext decide."""
    child = child_image(client, tmp_path, people, 44)
    image_type = client.version.image_type
    forged = client.create(
        image_resource(
            image_type, subject=people["adult"], binary_url=child.binary, confidentiality="N"
        )
    )
    forged_ref = f"{image_type}/{forged['id']}"
    client.create(permit_consent(image_type, patient=people["adult"], image_ref=forged_ref))
    for purpose, role, requester in (
        ("TREAT", "clinician", "Practitioner/gp1"),
        ("PATRQT", "patient", people["adult"]),
    ):
        request = DisclosureRequest(purpose=purpose, requester=requester, role=role, clearance="N")
        result = disclose(client, people["adult"], request, tmp_path / purpose)
        [d] = [x for x in result.decisions if x.media == forged_ref]
        assert d.verdict is Verdict.WITHHOLD, d
        assert d.confidentiality == "V"
        assert any("another resource" in r for r in d.reasons)
        bundle = json.loads(result.bundle_file.read_text())
        assert all(e["resource"]["resourceType"] != "Binary" for e in bundle["entry"])
    labels = {s["code"] for s in client.binary_meta(child.binary)["meta"]["security"]}
    assert "V" in labels and "N" not in labels, "nothing relabelled the child's Binary"


def test_release_files_are_owner_only_in_an_existing_folder(client, tmp_path, people):
    adult_image(client, tmp_path, people, 45)
    out = tmp_path / "shared-folder"
    out.mkdir(mode=0o755)
    request = DisclosureRequest(purpose="TREAT", requester="Practitioner/gp1", role="clinician")
    result = disclose(client, people["adult"], request, out)
    for path in (result.bundle_file, result.withheld_file):
        assert oct(path.stat().st_mode & 0o777) == "0o600", path.name


def test_an_unknown_recipient_is_refused_before_anything_is_written(client, tmp_path, people):
    image = adult_image(client, tmp_path, people, 46)
    request = DisclosureRequest(
        purpose="TREAT",
        requester="Practitioner/gp1",
        role="clinician",
        recipient="Organization/nobody-x",
    )
    with pytest.raises(ActionRefused, match="recipient"):
        disclose(client, people["adult"], request, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert audits_for(client, image.media) == []


# ----------------------------------------------------------------------- consent lifecycle


def test_withdrawn_consent_stops_disclosure_and_adds_labels(client, tmp_path, people):
    image = adult_image(client, tmp_path, people, 25)
    change = withdraw_consent(
        client,
        image.consent,
        by="Practitioner/gp1",
        reason="Patient asked for the photo not to be shared",
    )
    assert change.changed == [image.consent]
    withdrawn = client.version.consent(client.read(image.consent))
    assert withdrawn.status == "inactive" and withdrawn.ended is not None
    [recorded] = change.provenance
    provenance = client.read(recorded)
    assert any(t["reference"].startswith(image.consent) for t in provenance["target"])
    codes = {s["code"] for s in client.read(image.media)["meta"]["security"]}
    assert {"NOREUSE", "NORDSCLCDS"} <= codes
    binary = {s["code"] for s in client.binary_meta(image.binary)["meta"]["security"]}
    assert binary == codes, "the bytes are relabelled with the image"
    request = DisclosureRequest(purpose="TREAT", requester="Practitioner/gp1", role="clinician")
    [d] = disclose(client, people["adult"], request, tmp_path / "out").decisions
    assert d.verdict is Verdict.WITHHOLD and "inactive" in d.reasons[0]
    cid = image.consent.split("/")[1]
    version = withdrawn.version_id
    [change_record] = client.search(
        "Provenance", {"_tag": f"{c.SID_RECORD}|consent-change.{cid}.{version}"}
    )
    assert change_record["activity"]["text"] == "consent withdrawn"
    again = CliRunner().invoke(
        main,
        [
            "consent",
            "withdraw",
            image.consent,
            "--by",
            "Practitioner/gp1",
            "--reason",
            "again",
            "--server",
            client.base_url,
        ],
    )
    assert again.exit_code == 0 and "nothing was changed" in again.output
    assert client.read(image.consent)["meta"]["versionId"] == version, "no second change"


def test_withdrawal_ends_every_active_consent_of_the_image(client, tmp_path, people):
    """Four simultaneous submissions once left four active Consents: withdrawing one left the
    image releasable. Withdrawal is of the patient's consent for the image."""
    image = adult_image(
        client,
        tmp_path,
        people,
        41,
        permissions={"view": True, "store": True, "second_opinion": True},
    )
    extra = client.read(image.consent)
    for key in ("id", "meta", "identifier"):
        extra.pop(key, None)
    second = client.create(extra)  # another active Consent for the same image (another route)
    withdraw_consent(client, image.consent, by="Practitioner/gp1", reason="patient asked")
    assert client.read(f"Consent/{second['id']}")["status"] == "inactive"
    request = DisclosureRequest(
        purpose="COC", requester="Practitioner/gp1", role="clinician", clearance="R"
    )
    [d] = disclose(client, people["adult"], request, tmp_path / "out").decisions
    assert d.verdict is Verdict.WITHHOLD


def test_narrowed_consent_stops_second_opinions(client, tmp_path, people):
    image = adult_image(
        client,
        tmp_path,
        people,
        26,
        permissions={"view": True, "store": True, "second_opinion": True},
    )
    request = DisclosureRequest(purpose="COC", requester="Practitioner/gp1", role="clinician")
    [before] = disclose(client, people["adult"], request, tmp_path / "o1").decisions
    assert before.verdict is Verdict.RELEASE
    narrow_consent(
        client,
        image.consent,
        deny=["second_opinion"],
        by="Practitioner/gp1",
        reason="Patient changed their mind",
    )
    [after] = disclose(client, people["adult"], request, tmp_path / "o2").decisions
    assert after.verdict is Verdict.WITHHOLD
    treat = DisclosureRequest(purpose="TREAT", requester="Practitioner/gp1", role="clinician")
    [care] = disclose(client, people["adult"], treat, tmp_path / "o3").decisions
    assert care.verdict is Verdict.RELEASE, "narrowing second opinions leaves care alone"


def test_stale_consent_change_loses(client, tmp_path, people):
    image = adult_image(client, tmp_path, people, 27)
    stale = client.read(image.consent)
    narrow_consent(
        client, image.consent, deny=["second_opinion"], by="Practitioner/gp1", reason="x"
    )
    from fhir_images import VersionConflict

    stale["status"] = "inactive"
    with pytest.raises(VersionConflict):
        client.update(stale, if_match=stale["meta"]["versionId"])


def test_confirming_consent_moves_a_held_image_to_the_record(client, tmp_path, people):
    outbox = tmp_path / "ob"
    ctx = child_context(patient=people["child"], operator=people["mum"])
    held = ingest(synthetic.jpeg(seed=28), ctx, None, outbox=Outbox(outbox)).entry
    consent_file = tmp_path / "consent.json"
    consent_file.write_text(parent_consent(giver=people["mum"]).model_dump_json())
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "consent",
            "confirm",
            held.id,
            "--consent",
            str(consent_file),
            "--outbox",
            str(outbox),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        main, ["push", "--json", "--server", client.base_url, "--outbox", str(outbox)]
    )
    assert result.exit_code == 0, result.output
    media = json.loads(result.output.strip().splitlines()[-1])["media"]
    assert client.read(media)["subject"]["reference"] == people["child"]


# ----------------------------------------------------------------------------- destruction


def test_child_image_cannot_be_destroyed_before_25th_birthday(client, tmp_path, people):
    image = child_image(client, tmp_path, people, 29)
    with pytest.raises(ActionRefused, match="25th birthday"):
        destroy(client, image.media, by="Practitioner/gp1", reason="tidy up")
    assert client.read(image.media)["id"]


def test_expired_adult_image_is_destroyed_with_its_resources_and_audited(client, tmp_path, people):
    old = datetime(2010, 3, 4, 10, 0, tzinfo=UTC)
    ctx = make_context(patient=people["adult"], operator=people["adult"], captured=old)
    image = deliver(client, tmp_path, ctx, make_consent(date=old), 30)
    image_hash = client.read(image.media)["identifier"][0]["value"]
    result = CliRunner().invoke(
        main,
        [
            "destroy",
            image.media,
            "--server",
            client.base_url,
            "--by",
            "Practitioner/gp1",
            "--reason",
            "Retention period over",
        ],
    )
    assert result.exit_code == 0, result.output
    from fhir_images import ResourceNotFound

    for ref in (image.media, image.consent, image.binary):
        with pytest.raises(ResourceNotFound):
            client.read(ref)
    events = [
        a
        for _, a in recorded_audits(client)
        if a.get("action") == "D"
        and any((e.get("what") or {}).get("reference") == people["adult"] for e in a["entity"])
        and any(
            (e.get("what") or {}).get("identifier", {}).get("value") == image_hash
            for e in a.get("entity", [])
        )
    ]
    assert len(events) == 1
    assert audit_purposes(events[0])[0]["text"] == "Retention period over"
    assert events[0]["agent"][0]["who"] == {"reference": "Practitioner/gp1"}


def test_legal_hold_blocks_destruction(client, tmp_path, people):
    old = datetime(2010, 3, 4, 10, 0, tzinfo=UTC)
    ctx = make_context(patient=people["adult"], operator=people["adult"], captured=old)
    image = deliver(client, tmp_path, ctx, make_consent(date=old), 31)
    apply_labels(client, image.media, [c.LEGAL_HOLD.as_coding()])
    result = CliRunner().invoke(
        main,
        [
            "destroy",
            image.media,
            "--server",
            client.base_url,
            "--by",
            "Practitioner/gp1",
            "--reason",
            "x",
        ],
    )
    assert result.exit_code == 4 and "legal hold" in result.output
    assert client.read(image.media)["id"]


# ---------------------------------------------------------------------------- anonymised copy


def test_anonymised_copy_only_when_consented(client, tmp_path, people):
    gps = synthetic.jpeg(seed=32, gps=True, device=True, orientation=6)
    outbox = Outbox(tmp_path / "ob")
    ctx = make_context(patient=people["adult"], operator=people["adult"])
    consent = make_consent(permissions={"view": True, "store": True, "teaching": True})
    ingest(gps, ctx, consent, outbox=outbox)
    [image] = push(client, outbox)
    copy = anonymise(
        client, image.media, tmp_path / "teach", purpose="TRAIN", by="Practitioner/gp1"
    )
    im = Image.open(copy.image)
    assert not im.getexif() and "icc_profile" not in im.info
    assert im.size == (480, 640), "orientation applied to the pixels"
    media = json.loads(copy.media.read_text())
    assert "subject" not in media and "identifier" not in media
    codes = {s["code"] for s in media["meta"]["security"]}
    assert {"L", "ANONYED", "NORELINK", "HUAPRV"} <= codes
    [audit] = [a for a in audits_for(client, image.media) if audit_subtypes(a) == ["deidentify"]]
    assert audit_purposes(audit)[0]["coding"][0]["code"] == "TRAIN"
    assert audit["agent"][-1]["who"] == {"reference": "Practitioner/gp1"}
    assert oct(copy.image.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(ActionRefused, match="HRESCH"):
        anonymise(
            client, image.media, tmp_path / "research", purpose="HRESCH", by="Practitioner/gp1"
        )
    assert not (tmp_path / "research").exists() or not any((tmp_path / "research").iterdir())
    assert len([a for a in audits_for(client, image.media)]) == 1, "refused: nothing audited"


# ------------------------------------------------------------------- audits kept elsewhere


def test_an_audit_kept_apart_comes_first_and_a_failed_act_is_recorded(
    fhir_base_url, tmp_path, people, monkeypatch
):
    """With an audit file (a trail that cannot share the server's transaction) the audit is
    written before the image is deleted; when the deletion then fails, a second AuditEvent
    says so, and the image is still there."""
    audit_file = tmp_path / "audit" / "trail.jsonl"
    client = FhirClient(fhir_base_url, audit=f"file:{audit_file}")
    old = datetime(2010, 3, 4, 10, 0, tzinfo=UTC)
    ctx = make_context(patient=people["adult"], operator=people["adult"], captured=old)
    image = deliver(client, tmp_path, ctx, make_consent(date=old), 33)
    trail = FileAudit(audit_file)
    seen_before_delete = []
    real = client.transaction

    def failing(bundle, **kw):
        if any(e["request"]["method"] == "DELETE" for e in bundle["entry"]):
            seen_before_delete.append(len(trail.entries()))
            from fhir_images import InvalidRequest

            raise InvalidRequest("POST /: HTTP 400", status=400)
        return real(bundle, **kw)

    monkeypatch.setattr(client, "transaction", failing)
    with pytest.raises(FhirImagesError):
        destroy(client, image.media, by="Practitioner/gp1", reason="Retention period over")
    assert seen_before_delete == [1], "the audit was on disk before anything was deleted"
    first, second = [e["resource"] for e in trail.entries()]
    assert audit_outcome(first) == ("0", None)
    code, text = audit_outcome(second)
    assert code == "8" and text is not None and "not destroyed" in text
    assert client.read(image.media)["id"]
    assert oct(audit_file.stat().st_mode & 0o777) == "0o600"
    monkeypatch.setattr(client, "transaction", real)
    done = destroy(client, image.media, by="Practitioner/gp1", reason="Retention period over")
    assert done.audit_event.startswith("urn:uuid:") and len(trail.entries()) == 3


def test_no_audit_trail_means_no_disclosure_on_a_server_that_refuses_audits(
    fhir_base_url, server_report, tmp_path, people
):
    client = FhirClient(fhir_base_url)  # no FHIR_IMAGES_AUDIT
    request = DisclosureRequest(
        purpose="TREAT", requester="Practitioner/gp1", role="clinician", clearance="N"
    )
    if server_report.audit_event_create:
        disclose(client, people["adult"], request, tmp_path / "out")  # audits go to the server
        return
    with pytest.raises(UnsafeServer, match="FHIR_IMAGES_AUDIT"):
        disclose(client, people["adult"], request, tmp_path / "out")
    assert not (tmp_path / "out").exists(), "nothing written out"
