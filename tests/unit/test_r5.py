"""FHIR R5: the same record as R4 in R5's shapes (DocumentReference, R5 Consent), read back
into the same views, and R4 entries mapped again for an R5 server."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import responses
from fhir.resources.bundle import Bundle

from fhir_images import Outbox, decide, ingest, synthetic
from fhir_images import _codes as c
from fhir_images._ingest import remap
from fhir_images._intake import intake
from fhir_images.fhir.r4.mapping import map_submission as map_r4
from fhir_images.fhir.r5 import R5
from fhir_images.fhir.r5.mapping import map_submission as map_r5
from fhir_images.fhir.version import get_version

from ..factories import child_context, make_consent, make_context, parent_consent


def _mapped(ctx, consent, workdir, mapper=map_r5):
    facts = intake(synthetic.jpeg(gps=True), workdir=workdir).facts
    return mapper(ctx, consent, facts, decide(ctx, consent)), facts


def _entries(mapped):
    return {e["resource"]["resourceType"]: e for e in mapped.bundle_json()["entry"]}


def _stored(entry, rid):
    """The resource as a server would return it: an id, the placeholders resolved."""
    return {**entry["resource"], "id": rid}


def test_the_version_comes_from_the_servers_fhir_version():
    assert get_version("5.0.0") is R5 and R5.image_type == "DocumentReference"
    assert get_version("4.0.1").image_type == "Media"


def test_an_r5_bundle_is_a_valid_transaction_with_the_same_keys_as_r4(workdir):
    ctx, consent = make_context(), make_consent()
    r5, facts = _mapped(ctx, consent, workdir)
    r4, _ = _mapped(ctx, consent, workdir, map_r4)
    Bundle.model_validate(r5.bundle_json())
    entries = _entries(r5)
    assert set(entries) == {"Encounter", "Binary", "DocumentReference", "Consent", "Provenance"}
    assert r5.image_key == r4.image_key and r5.consent_key == r4.consent_key
    assert entries["Binary"]["request"] == _entries(r4)["Binary"]["request"]
    doc_req = entries["DocumentReference"]["request"]["ifNoneExist"]
    assert f"{c.SID_SHA256}|{facts.sha256_hex}" in doc_req and "subject=Patient/p1" in doc_req


def test_the_image_carries_its_labels_twice_and_its_bytes_name_it(workdir):
    mapped, facts = _mapped(child_context(intimate=True), parent_consent(), workdir)
    entries = _entries(mapped)
    doc, binary = entries["DocumentReference"], entries["Binary"]
    security = doc["resource"]["meta"]["security"]
    assert binary["resource"]["meta"]["security"] == security
    assert binary["resource"]["securityContext"] == {"reference": doc["fullUrl"]}
    [label] = doc["resource"]["securityLabel"]
    conf = [
        {"system": s["system"], "code": s["code"]}
        for s in security
        if s["system"] == c.V3_CONFIDENTIALITY
    ]
    assert label["coding"] == conf and conf[0]["code"] == "V"
    attachment = doc["resource"]["content"][0]["attachment"]
    assert attachment["url"] == f"Binary/{binary['resource']['id']}"
    assert attachment["width"] == facts.width and attachment["height"] == facts.height
    assert attachment["hash"] == facts.sha1_b64
    assert attachment["size"] == str(facts.size), "an integer64 is a JSON string"


def test_the_image_reads_back_into_the_same_view_as_r4(workdir):
    ctx = make_context(body_site={"code": "14975008", "display": "Forearm"})
    r5, facts = _mapped(ctx, make_consent(), workdir)
    r4, _ = _mapped(ctx, make_consent(), workdir, map_r4)
    v5 = R5.image(_stored(_entries(r5)["DocumentReference"], "d1"))
    v4 = get_version("4.0").image(_stored(_entries(r4)["Media"], "m1"))
    assert v5.ref == "DocumentReference/d1"
    for field in ("labels", "subject", "content_url", "content_type", "content_hash",
                  "content_size", "kind", "purpose", "operator", "sha256", "created"):  # fmt: skip
        assert getattr(v5, field) == getattr(v4, field), field
    assert v5.content_size == facts.size


def test_the_consent_permits_what_was_permitted_and_nothing_else(workdir):
    consent = make_consent(permissions={"view": True, "store": True, "second_opinion": True})
    mapped, _ = _mapped(make_context(), consent, workdir)
    raw = _stored(_entries(mapped)["Consent"], "c1")
    # the placeholder a server would resolve
    for p in raw["provision"]:
        p["data"][0]["reference"]["reference"] = "DocumentReference/d1"
    view = R5.consent(raw)
    assert raw["decision"] == "deny" and view.base_rule == "deny"
    assert view.images == ("DocumentReference/d1",)
    assert view.provision_for(c.TREAT).kind == "permit"
    assert view.provision_for(c.COC).kind == "permit"
    assert view.provision_for(c.TRAIN).kind == "deny"
    assert view.provision_for(c.HRESCH).kind == "deny"
    assert view.date_time == consent.date.astimezone(UTC)
    assert view.performers == ("Patient/p1",)


def test_consent_changes_in_r5(workdir):
    consent = make_consent(
        permissions={"view": True, "store": True, "second_opinion": True, "teaching": True}
    )
    mapped, _ = _mapped(make_context(), consent, workdir)
    view = R5.consent(_stored(_entries(mapped)["Consent"], "c1"))
    narrowed = R5.narrowed(view, [c.COC, c.TRAIN])
    assert narrowed is not None
    again = R5.consent(narrowed)
    assert again.provision_for(c.COC).kind == "deny"
    assert again.provision_for(c.TRAIN).kind == "deny"
    assert again.provision_for(c.TREAT).kind == "permit"
    assert R5.narrowed(again, [c.COC]) is None, "nothing left to narrow"
    at = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    gone = R5.consent(R5.withdrawn(view, at))
    assert gone.status == "inactive" and gone.ended == at
    assert R5.superseded(view)["status"] == "inactive"


def test_narrowing_a_permit_based_consent_adds_a_deny():
    raw = {"resourceType": "Consent", "id": "c2", "status": "active", "decision": "permit"}
    view = R5.consent(raw)
    assert view.provision_for(c.COC).kind == "permit"
    narrowed = R5.consent(R5.narrowed(view, [c.COC]))
    assert narrowed.provision_for(c.COC).kind == "deny"
    assert narrowed.provision_for(c.TREAT).kind == "permit"


def test_a_consent_without_a_decision_denies():
    view = R5.consent({"resourceType": "Consent", "id": "c3", "status": "active"})
    assert view.provision_for(c.TREAT).kind == "deny"


def test_the_submission_points_a_reused_binary_and_dates_the_consent(workdir):
    mapped, _ = _mapped(make_context(), make_consent(), workdir)
    sub = R5.submission(mapped.bundle_json())
    sub.reuse_binary("Binary/other")
    kinds = [e["resource"]["resourceType"] for e in sub.json()["entry"]]
    assert "Binary" not in kinds
    doc = next(
        e for e in sub.json()["entry"] if e["resource"]["resourceType"] == "DocumentReference"
    )
    assert doc["resource"]["content"][0]["attachment"]["url"] == "Binary/other"
    assert sub.consent_date == make_consent().date.astimezone(UTC)


def test_r5_subscriptions_are_topic_based_and_carry_the_header_as_a_parameter():
    from fhir_images import ActionRefused

    with pytest.raises(ActionRefused, match="only topic-based"):
        R5.subscription("DocumentReference?", "http://127.0.0.1:1/hook", "X-S: y", reason="r")
    sub = R5.subscription(
        "https://t.example/topic", "http://127.0.0.1:1/hook/t/abc", "X-S: y", reason="r", topic=True
    )
    assert R5.subscription_target(sub) == "https://t.example/topic"
    assert R5.subscription_headers(sub) == ["X-S: y"] and sub["content"] == "id-only"
    topic = R5.subscription_topic("https://t.example/topic", ["DocumentReference"], "t")
    assert R5.topic_url_of(topic) == "https://t.example/topic"
    assert topic["resourceTrigger"][0]["resource"] == "DocumentReference"
    note = {
        "resourceType": "Bundle",
        "type": "subscription-notification",
        "entry": [
            {
                "resource": {
                    "resourceType": "SubscriptionStatus",
                    "type": "event-notification",
                    "notificationEvent": [{"focus": {"reference": "DocumentReference/7"}}],
                }
            },
            {"fullUrl": "DocumentReference/7/_history/1"},
        ],
    }
    assert R5.notification_type(note) == "event-notification"
    assert R5.notification_focus(note) == ["DocumentReference/7"]


def test_an_r4_entry_is_mapped_again_for_r5(tmp_path):
    outbox = Outbox(tmp_path / "outbox")
    result = ingest(synthetic.jpeg(seed=5), make_context(), make_consent(), outbox=outbox)
    entry = result.entry
    assert entry is not None and entry.meta.fhir_version == "4.0"
    again = remap(outbox, entry, "5.0")
    assert again.state == "ready" and again.meta.fhir_version == "5.0"
    bundle = json.loads((again.path / "bundle.json").read_text())
    kinds = {e["resource"]["resourceType"] for e in bundle["entry"]}
    assert "DocumentReference" in kinds and "Media" not in kinds
    tags = {t["code"] for e in bundle["entry"] for t in e["resource"]["meta"].get("tag", [])}
    assert entry.id in tags, "the same submission"
    assert outbox.get(entry.id).meta.fhir_version == "5.0"


def test_an_entry_the_rules_no_longer_store_is_held_not_sent(tmp_path):
    outbox = Outbox(tmp_path / "outbox")
    result = ingest(synthetic.jpeg(seed=6), make_context(), make_consent(), outbox=outbox)
    entry = result.entry
    assert entry is not None
    # the consent on file changed since (as if edited): storage no longer permitted
    consent = json.loads((entry.path / "consent.json").read_text())
    consent["permissions"]["store"] = False
    (entry.path / "consent.json").write_text(json.dumps(consent))
    again = remap(outbox, entry, "5.0")
    assert again.state == "held"
    assert outbox.get(entry.id).state == "held"


def test_every_r5_record_is_a_valid_r5_resource(workdir):
    """Each builder checks its result against the R5 model; this calls every one of them."""
    from fhir_images._codes import Confidentiality

    mapped, _ = _mapped(make_context(), make_consent(), workdir)
    image = R5.image(_stored(_entries(mapped)["DocumentReference"], "d1"))
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    audit = R5.disclosure_audit(
        image, image.labels, Confidentiality.N, purpose="COC", requester="Practitioner/gp1",
        receiver="Organization/o1", patient="Patient/p1", approver="Practitioner/lead", now=now,
    )  # fmt: skip
    assert audit["category"][0]["coding"][0]["code"] == "110106"
    assert audit["code"]["coding"][0]["code"] == "disclose" and audit["action"] == "R"
    assert audit["outcome"]["code"]["code"] == "0"
    failed = R5.audit_failed(audit, "the release did not complete", now)
    assert failed["outcome"]["code"]["code"] == "8"
    R5.destruction_audit(
        image, by="Practitioner/gp1", reason="end of retention", retention="8 years",
        destroyed_with=["Binary/b1"], now=now,
    )  # fmt: skip
    R5.anonymisation_audit(
        image, Confidentiality.N, purpose="TRAIN", by="Practitioner/gp1", copy_sha256="0" * 64
    )
    copy_ = R5.anonymised_copy(image, purpose="TRAIN", file_name="a.png", size=10, sha1_b64="AAAA")
    assert "subject" not in copy_ and "identifier" not in copy_
    task = R5.approval_task(
        image.ref, Confidentiality.V, key="k1", patient="Patient/p1", purpose="COC",
        requester="Practitioner/gp1", receiver="Organization/o1", reasons=["very restricted"],
        now=now,
    )  # fmt: skip
    view = R5.approval({**task, "id": "t1"})
    assert view is not None and view.purpose == "COC" and view.recipient == "Organization/o1"
    tv = R5.task({**task, "id": "t1"})
    accepted = R5.approval({**R5.approved(tv, by="Practitioner/lead", valid_days=7, at=now)})
    assert accepted is not None and accepted.approver == "Practitioner/lead"
    assert accepted.valid_until is not None and accepted.status == "accepted"
    assert R5.refused(tv, by="Practitioner/lead", reason="no", at=now)["status"] == "rejected"
    assert R5.used(tv, "AuditEvent/a1")["status"] == "completed"
    review = R5.task({**R5.review_task(image, Confidentiality.R, "check it", now), "id": "t2"})
    assert R5.completed(review)["status"] == "completed"


def test_a_declared_confidentiality_higher_than_the_labels_wins(workdir):
    """A DocumentReference whose securityLabel says V is treated as V whatever its meta says;
    a code that is not a confidentiality code reads as V (fail closed)."""
    from fhir_images._codes import Confidentiality

    mapped, _ = _mapped(make_context(), make_consent(), workdir)
    doc = _stored(_entries(mapped)["DocumentReference"], "d1")
    assert R5.image(doc).confidentiality is Confidentiality.N
    assert R5.declared_labels_patch(doc, doc["meta"]["security"]) is None
    doc["securityLabel"] = [{"coding": [{"system": c.V3_CONFIDENTIALITY, "code": "V"}]}]
    image = R5.image(doc)
    assert image.labels.confidentiality is Confidentiality.N
    assert image.declared_confidentiality is Confidentiality.V
    assert image.confidentiality is Confidentiality.V
    doc["securityLabel"] = [{"coding": [{"system": c.V3_CONFIDENTIALITY, "code": "Q"}]}]
    assert R5.image(doc).confidentiality is Confidentiality.V
    [op] = R5.declared_labels_patch(doc, doc["meta"]["security"])
    assert op["path"] == "/securityLabel" and op["value"][0]["coding"][0]["code"] == "N"


def test_disclosure_uses_the_declared_confidentiality(workdir):
    from fhir_images._codes import Confidentiality
    from fhir_images.policy import ImageRecord

    mapped, _ = _mapped(make_context(), make_consent(), workdir)
    doc = _stored(_entries(mapped)["DocumentReference"], "d1")
    doc["securityLabel"] = [{"coding": [{"system": c.V3_CONFIDENTIALITY, "code": "V"}]}]
    assert ImageRecord(R5.image(doc)).confidentiality is Confidentiality.V


@responses.activate
def test_bringing_the_declared_confidentiality_into_line_says_the_version_it_made(workdir):
    """On R5 the image states its confidentiality in its content too; the patch that brings it
    into line with the labels makes a version, and whoever labelled it is told which (so the
    notification of that change is known as the labeller's own)."""
    from fhir_images import FhirClient
    from fhir_images.fhir.labels import apply_labels

    base = "http://fhir.test/fhir"
    mapped, _ = _mapped(make_context(), make_consent(), workdir)
    doc = _stored(_entries(mapped)["DocumentReference"], "d1")
    labels = doc["meta"]["security"]
    stale = {
        **doc,
        "meta": {**doc["meta"], "versionId": "1"},
        "securityLabel": [{"coding": [{"system": c.V3_CONFIDENTIALITY, "code": "V"}]}],
    }
    synced = {**doc, "meta": {**doc["meta"], "versionId": "2"}}
    responses.get(f"{base}/DocumentReference/d1", json=stale)
    responses.get(f"{base}/DocumentReference/d1", json=synced)
    responses.patch(f"{base}/DocumentReference/d1", json=synced)
    client = FhirClient(base, profile="hapi", fhir_version="5.0")
    made: list[str] = []
    apply_labels(client, "DocumentReference/d1", labels, current=labels, on_version=made.append)
    assert made == ["2"]
    patched = [call for call in responses.calls if call.request.method == "PATCH"]
    assert len(patched) == 1 and patched[0].request.headers["If-Match"] == 'W/"1"'
