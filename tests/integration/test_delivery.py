"""Delivery, read-back and labels against a real FHIR server (HAPI in CI)."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import pytest
import requests
from click.testing import CliRunner

from fhir_images import FhirClient, LabelError, Outbox, VersionConflict, ingest, push, synthetic
from fhir_images import _codes as c
from fhir_images.cli import main
from fhir_images.fhir import apply_labels

from ..conftest import seed_bundle
from ..factories import child_context, make_consent, make_context, parent_consent

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CONF = c.V3_CONFIDENTIALITY


@pytest.fixture(scope="module")
def client(connect: Callable[..., FhirClient], fhir_version) -> FhirClient:
    client = connect()
    client.transaction(seed_bundle(fhir_version))
    return client


@pytest.fixture()
def patient(client: FhirClient) -> str:
    """A fresh patient (and the people the factories refer to) for each test."""
    pid = f"t-{uuid.uuid4().hex[:12]}"
    client.transaction(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": {"resourceType": "Patient", "id": pid, "birthDate": "1985-06-30"},
                    "request": {"method": "PUT", "url": f"Patient/{pid}"},
                },
                {
                    "resource": {"resourceType": "Practitioner", "id": "gp1"},
                    "request": {"method": "PUT", "url": "Practitioner/gp1"},
                },
            ],
        }
    )
    return f"Patient/{pid}"


def _ctx(patient: str, **kw):
    return make_context(**{"patient": patient, "operator": patient, **kw})


def _count(client: FhirClient, resource_type: str, params: dict[str, str]) -> int:
    bundle = client.request("GET", resource_type, params={**params, "_summary": "count"}).json()
    return int(bundle["total"])


def _codes(resource) -> set[str]:
    return {s["code"] for s in resource.get("meta", {}).get("security", [])}


@pytest.mark.parametrize(
    "case",
    [
        "01-ultrasound-implicit.yaml",
        "02-adult-rash-video-consultation.yaml",
        "04-parent-unsolicited-intimate-confirmed.yaml",
        "08-clinician-wound-photo.yaml",
        "09-teen-own-photo-heic.yaml",
        "12-auscultation-audio.yaml",
    ],
)
def test_each_stored_example_is_delivered_and_reads_back(client, case, tmp_path):
    outbox = tmp_path / "ob"
    runner = CliRunner()
    result = runner.invoke(
        main, ["ingest", "--json", "--outbox", str(outbox), str(EXAMPLES / "cases" / case)]
    )
    assert result.exit_code == 0, result.output
    expected = json.loads(result.output)
    result = runner.invoke(
        main, ["push", "--json", "--server", client.base_url, "--outbox", str(outbox)]
    )
    assert result.exit_code == 0, result.output
    delivered = json.loads(result.output.strip().splitlines()[-1])
    assert delivered["delivered"], delivered
    media = client.read(delivered["media"])
    want = {(s["system"], s["code"]) for s in expected["security"]}
    got = {(s["system"], s["code"]) for s in media["meta"]["security"]}
    assert want <= got
    assert [s for s in got if s[0] == CONF] == [s for s in want if s[0] == CONF]
    assert client.version.image(media).content_url == delivered["binary"]
    binary = client.read(delivered["binary"])
    assert (CONF, next(s for s in want if s[0] == CONF)[1]) in {
        (s["system"], s["code"]) for s in binary["meta"]["security"]
    }, "the Binary is labelled too"
    if expected["consent"] == "implicit":
        assert delivered["consent"] is None
    else:
        consent = client.version.consent(client.read(delivered["consent"]))
        assert consent.images == (delivered["media"],)
    image_type = delivered["media"].split("/")[0]
    assert Outbox(outbox).receipts()[0]["resources"][image_type] == delivered["media"]
    assert list(Outbox(outbox).entries("ready")) == []


def _record_counts(client: FhirClient, patient: str, entry_meta) -> dict[str, int]:
    """How many of each record of one image are on the server (the image under "image")."""
    key, ckey = entry_meta.image_key, entry_meta.consent_key
    return {
        "Binary": _count(client, "Binary", {"_tag": f"{c.SID_RECORD}|{key}.binary"}),
        "image": _count(
            client,
            client.version.image_type,
            {"identifier": f"{c.SID_SHA256}|{entry_meta.sha256}", "subject": patient},
        ),
        "Consent": _count(
            client, "Consent", {"identifier": f"{c.SID_RECORD}|{key}.consent.{ckey}"}
        ),
        "Provenance": _count(
            client, "Provenance", {"_tag": f"{c.SID_RECORD}|{key}.provenance.{ckey}"}
        ),
        "Encounter": _count(client, "Encounter", {"identifier": f"{c.SID_RECORD}|{key}.encounter"}),
    }


def test_delivering_the_same_entry_twice_stores_one_of_each(client, patient, tmp_path):
    outbox = Outbox(tmp_path / "ob")
    result = ingest(synthetic.jpeg(seed=7), _ctx(patient), make_consent(), outbox=outbox)
    entry = result.entry
    spare = tmp_path / "copy"
    shutil.copytree(entry.path, spare)
    [first] = push(client, outbox)
    assert first.delivered
    shutil.copytree(spare, outbox.root / "ready" / entry.id)  # as if the first receipt was lost
    [second] = push(client, outbox)
    assert second.delivered and second.binary_reused
    assert second.media == first.media and second.consent == first.consent
    assert second.binary == first.binary
    assert _record_counts(client, patient, entry.meta) == {
        "Binary": 1,
        "image": 1,
        "Consent": 1,
        "Provenance": 1,
        "Encounter": 1,
    }


def test_three_rounds_of_ingest_and_push_store_one_of_each(client, patient, tmp_path):
    """The same photo ingested and pushed again from fresh outboxes (a double submit, a
    re-import): one Binary, Media, Consent and Provenance on the server."""
    photo = synthetic.jpeg(seed=21)
    metas = []
    for round_ in range(3):
        outbox = Outbox(tmp_path / f"ob{round_}")
        entry = ingest(photo, _ctx(patient), make_consent(), outbox=outbox).entry
        metas.append(entry.meta)
        [result] = push(client, outbox)
        assert result.delivered, result.error
    assert len({(m.image_key, m.consent_key) for m in metas}) == 1
    assert _record_counts(client, patient, metas[0]) == {
        "Binary": 1,
        "image": 1,
        "Consent": 1,
        "Provenance": 1,
        "Encounter": 1,
    }
    image_type = client.version.image_type
    media = next(client.search(image_type, {"subject": patient}))
    assert len(list(client.search("Consent", {"data": f"{image_type}/{media['id']}"}))) == 1


def test_the_binary_carries_the_media_labels_and_names_it(client, tmp_path):
    outbox = Outbox(tmp_path / "ob")
    ctx = child_context(patient="Patient/ex-child-1", operator="RelatedPerson/ex-mother-1")
    ingest(
        synthetic.jpeg(seed=31),
        ctx,
        parent_consent(giver="RelatedPerson/ex-mother-1"),
        outbox=outbox,
    )
    [result] = push(client, outbox)
    assert result.delivered, result.error
    media = client.read(result.media)
    binary = client.binary_meta(result.binary)
    assert _codes(binary) == _codes(media) and {"V", "intimate", "HUAPRV"} <= _codes(binary)
    assert binary["securityContext"] == {"reference": result.media}
    receipt = Outbox(tmp_path / "ob").receipts()[0]
    assert "binary labels (the same as the image's)" in receipt["verified"]


def test_a_new_consent_act_supersedes_the_older_one(client, patient, tmp_path):
    photo = synthetic.jpeg(seed=22)
    first = Outbox(tmp_path / "a")
    ingest(photo, _ctx(patient), make_consent(), outbox=first)
    [one] = push(client, first)
    later = make_consent(
        date=datetime(2026, 11, 22, 9, 0, tzinfo=UTC),
        permissions={"view": True, "store": True, "second_opinion": False},
    )
    second = Outbox(tmp_path / "b")
    ingest(photo, _ctx(patient), later, outbox=second)
    [two] = push(client, second)
    assert two.delivered and two.media == one.media and two.consent != one.consent
    assert client.read(one.consent)["status"] == "inactive"
    assert client.read(two.consent)["status"] == "active"
    assert any("superseded" in n for n in two.notes)
    cid = one.consent.split("/")[1]
    changes = list(client.search("Provenance", {"_tag": f"{c.SID_RECORD}|consent-change.{cid}.2"}))
    assert len(changes) == 1 and changes[0]["activity"]["text"] == "consent superseded"


def test_an_older_consent_never_revives_a_withdrawn_image(client, patient, tmp_path):
    from fhir_images import withdraw_consent

    photo = synthetic.jpeg(seed=23)
    first = Outbox(tmp_path / "a")
    ingest(photo, _ctx(patient), make_consent(), outbox=first)
    [one] = push(client, first)
    withdraw_consent(client, one.media, by="Practitioner/gp1", reason="patient asked")
    stale = make_consent(date=datetime(2026, 11, 19, 9, 0, tzinfo=UTC))  # before the withdrawal
    second = Outbox(tmp_path / "b")
    ingest(photo, _ctx(patient), stale, outbox=second)
    [two] = push(client, second)
    assert two.delivered, two.error
    statuses = [x["status"] for x in client.search("Consent", {"data": one.media})]
    assert statuses.count("active") == 0, "a stale outbox does not revive withdrawn consent"
    assert any("stored as inactive" in n for n in two.notes)


def test_rejected_transaction_leaves_nothing_on_the_server_and_keeps_the_entry(
    client, patient, tmp_path, server_report
):
    outbox = Outbox(tmp_path / "ob")
    ctx = make_context(patient=patient, made_by="clinician", operator="Practitioner/missing-x")
    entry = ingest(synthetic.jpeg(seed=8), ctx, make_consent(), outbox=outbox).entry
    [result] = push(client, outbox)
    if not server_report.referential_integrity:
        # a server that keeps references to what it does not hold stores it as sent
        assert result.delivered, result.error
        return
    assert not result.delivered
    assert result.error_type == "InvalidRequest" and "missing-x" not in result.error
    kept = outbox.get(entry.id)
    assert kept.state == "ready"
    assert kept.meta.delivery.last_error.type == "InvalidRequest"
    assert kept.meta.delivery.last_error.status == 400
    assert "missing-x" not in (kept.path / "entry.json").read_text()
    assert _count(client, "Binary", {"_tag": f"{c.SID_RECORD}|{entry.meta.image_key}.binary"}) == 0
    for _ in range(2):
        push(client, outbox)
    assert outbox.get(entry.id).state == "failed", "a refused entry is not retried for ever"


def test_push_to_a_closed_port_exits_5_and_says_why_in_the_entry(tmp_path):
    outbox = Outbox(tmp_path / "ob")
    entry = ingest(synthetic.jpeg(seed=24), make_context(), make_consent(), outbox=outbox).entry
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    result = CliRunner().invoke(
        main, ["push", "--server", f"http://127.0.0.1:{port}/fhir", "--outbox", str(outbox.root)]
    )
    assert result.exit_code == 5, result.output
    kept = outbox.get(entry.id)
    assert kept.meta.delivery.last_error.type == "ServerUnavailable"
    assert kept.meta.delivery.attempts == 1
    listed = CliRunner().invoke(main, ["outbox", "list", "--json", "--outbox", str(outbox.root)])
    assert json.loads(listed.output)[0]["last_error"]["type"] == "ServerUnavailable"


def test_held_images_are_not_sent(client, tmp_path):
    outbox = Outbox(tmp_path / "ob")
    held = ingest(synthetic.jpeg(seed=9), child_context(), None, outbox=outbox).entry
    assert push(client, outbox) == []
    assert outbox.get(held.id).state == "held"


def test_search_by_security_label(client, patient, tmp_path):
    outbox = Outbox(tmp_path / "ob")
    ingest(synthetic.jpeg(seed=10), _ctx(patient), make_consent(), outbox=outbox)
    ingest(synthetic.jpeg(seed=11), _ctx(patient, intimate=True), make_consent(), outbox=outbox)
    assert all(r.delivered for r in push(client, outbox, workers=2))
    image_type = client.version.image_type
    restricted = list(client.search(image_type, {"subject": patient, "_security": f"{CONF}|R"}))
    normal = list(client.search(image_type, {"subject": patient, "_security": f"{CONF}|N"}))
    assert len(restricted) == 1 and "intimate" in _codes(restricted[0])
    assert len(normal) == 1 and "intimate" not in _codes(normal[0])
    result = CliRunner().invoke(
        main, ["show", "--json", "--server", client.base_url, "--patient", patient, "--label", "R"]
    )
    rows = json.loads(result.output)
    assert [r["media"] for r in rows] == [f"{image_type}/{restricted[0]['id']}"]
    assert rows[0]["consent"].startswith("active")


def _delivered_media(client, patient, tmp_path, **ctx) -> str:
    outbox = Outbox(tmp_path / "ob")
    ingest(synthetic.jpeg(seed=12), _ctx(patient, **ctx), make_consent(), outbox=outbox)
    [result] = push(client, outbox)
    assert result.delivered
    return result.media


def test_add_a_label_and_raise_confidentiality(client, patient, tmp_path):
    ref = _delivered_media(client, patient, tmp_path)
    labels = apply_labels(
        client, ref, [{"system": c.V3_ACT_CODE, "code": "NOPAT"}, {"system": CONF, "code": "R"}]
    )
    codes = {x["code"] for x in labels}
    assert {"NOPAT", "R", "PATAST", "CPLYCD"} <= codes and "N" not in codes
    assert _codes(client.read(ref)) == codes
    image = client.version.image(client.read(ref))
    if client.version.declares_confidentiality:  # R5: securityLabel follows the labels
        assert image.declared_confidentiality is c.Confidentiality.R
    assert image.confidentiality is c.Confidentiality.R


def test_removing_or_lowering_labels_is_refused(client, patient, tmp_path):
    ref = _delivered_media(client, patient, tmp_path, intimate=True)
    with pytest.raises(LabelError, match="last confidentiality"):
        apply_labels(client, ref, [], remove=[{"system": CONF, "code": "R"}])
    with pytest.raises(LabelError, match="lower"):
        apply_labels(client, ref, [{"system": CONF, "code": "N"}])
    assert "R" in _codes(client.read(ref)), "nothing changed on the server"


def test_concurrent_update_loses_with_a_conflict(client, patient, tmp_path):
    ref = _delivered_media(client, patient, tmp_path)
    media = client.read(ref)
    version = media["meta"]["versionId"]

    def edited(by: str) -> dict:
        extra = {"system": "urn:fhir-images:test:editor", "value": by}
        return {**media, "identifier": [*media.get("identifier", []), extra]}

    client.update(edited("first"), if_match=version)
    with pytest.raises(VersionConflict):
        client.update(edited("second"), if_match=version)
    editors = [i["value"] for i in client.read(ref)["identifier"] if "editor" in i["system"]]
    assert editors == ["first"], "the first editor's change stands"


def test_bulk_delivery_with_a_worker_pool(client, patient, tmp_path):
    outbox = Outbox(tmp_path / "ob")
    for i in range(12):
        ingest(synthetic.jpeg(seed=100 + i), _ctx(patient), make_consent(), outbox=outbox)
    results = push(client, outbox, workers=4)
    assert len(results) == 12 and all(r.delivered for r in results)
    assert len({r.media for r in results}) == 12
    assert _count(client, client.version.image_type, {"subject": patient}) == 12


class _Counting(requests.Session):
    """A session that remembers what it was asked to send (method, path, query)."""

    sent: ClassVar[list[tuple[str, str]]] = []

    def request(self, method, url, *args, **kwargs):  # type: ignore[override]
        params = kwargs.get("params") or {}
        query = "&".join(f"{k}={v}" for k, v in params.items())
        self.sent.append((method.upper(), f"{url}?{query}" if query else url))
        return super().request(method, url, *args, **kwargs)


@pytest.mark.parametrize("verify", ["full", "links"])
def test_what_push_reads_back_is_what_it_says(connect, patient, tmp_path, verify):
    """'full' reads every byte back, 'links' none; neither searches for Consents to supersede
    when the image is new; the receipt says what was verified."""
    _Counting.sent = []
    client = connect(session_factory=_Counting)
    outbox = Outbox(tmp_path / "ob")
    ingest(synthetic.jpeg(seed=515), _ctx(patient), make_consent(), outbox=outbox)
    [result] = push(client, outbox, workers=1, verify=verify)
    assert result.delivered, result.error
    bytes_read = [
        u
        for m, u in _Counting.sent
        if m == "GET"
        and result.binary in u
        and "_elements" not in u
        and "_summary" not in u
        and "$meta" not in u
    ]
    assert len(bytes_read) == (1 if verify == "full" else 0), bytes_read
    consent_searches = [u for m, u in _Counting.sent if m == "GET" and "/Consent?" in u]
    assert consent_searches == [], "a new image has no older Consents to supersede"
    [receipt] = outbox.receipts()
    assert receipt["verification"] == verify
    assert any("every byte" in v for v in receipt["verified"]) == (verify == "full")
    if "HAPI" in (client.report().software or ""):
        # HAPI answers the write of the bytes with the SHA-256 of what it stored: checked
        assert any("SHA-256 the server stated" in v for v in receipt["verified"])


def test_large_recording_streams_to_the_server(client, patient, tmp_path):
    video = synthetic.write_mp4(tmp_path / "v.mp4", 20 << 20)
    outbox = Outbox(tmp_path / "ob")
    ctx = _ctx(patient, kind="video", made_by="clinician", operator="Practitioner/gp1")
    ingest(video, ctx, make_consent(), outbox=outbox)
    [result] = push(client, outbox)
    assert result.delivered, result.error
    back = tmp_path / "back.mp4"
    assert client.download_binary(result.binary, back, "video/mp4") == video.stat().st_size
    assert back.read_bytes() == video.read_bytes()


def test_parent_consent_delivered_with_its_performer(client, tmp_path):
    outbox = Outbox(tmp_path / "ob")
    ctx = child_context(patient="Patient/ex-child-1", operator="RelatedPerson/ex-mother-1")
    consent = parent_consent(giver="RelatedPerson/ex-mother-1")
    ingest(synthetic.jpeg(seed=13), ctx, consent, outbox=outbox)
    [result] = push(client, outbox)
    assert result.delivered, result.error
    res = client.read(result.consent)
    assert client.version.consent(res).performers == ("RelatedPerson/ex-mother-1",)
    assert {"V", "intimate"} <= _codes(res)


def test_an_entry_goes_in_the_servers_fhir_version(client, patient, tmp_path):
    """Ingest maps for R4; an R5 server gets the entry mapped again, never R4's shapes."""
    outbox = Outbox(tmp_path / "ob")
    entry = ingest(synthetic.jpeg(seed=14), _ctx(patient), make_consent(), outbox=outbox).entry
    assert entry is not None and entry.meta.fhir_version == "4.0"
    [result] = push(client, outbox)
    assert result.delivered, result.error
    version = client.version
    assert result.media is not None and result.media.startswith(f"{version.image_type}/")
    remapped = [n for n in result.notes if "mapped again" in n]
    assert remapped == (
        [f"mapped again for FHIR {version.name} (was R4)"] if version.name != "R4" else []
    )
    image = version.image(client.read(result.media))
    assert image.content_url == result.binary and image.sha256 == entry.meta.sha256
    consent = version.consent(client.read(result.consent))
    assert consent.images == (result.media,) and consent.provision_for("TREAT").kind == "permit"
