from __future__ import annotations

import base64
import json

import pytest
from fhir.resources.R4B.bundle import Bundle

from fhir_images import _codes as c
from fhir_images import decide, synthetic
from fhir_images._intake import intake
from fhir_images.fhir import ds4p, parental
from fhir_images.fhir.r4 import R4
from fhir_images.fhir.r4.mapping import UNNAMED_ORGANISATION, map_submission

from ..factories import child_context, make_consent, make_context, parent_consent


def _mapped(ctx, consent, workdir, data=None):
    facts = intake(data or synthetic.jpeg(gps=True), workdir=workdir).facts
    return map_submission(ctx, consent, facts, decide(ctx, consent)), facts


def _entries(mapped):
    return {e["resource"]["resourceType"]: e for e in mapped.bundle_json()["entry"]}


def test_bundle_is_a_valid_transaction_with_conditional_creates(workdir):
    mapped, facts = _mapped(make_context(), make_consent(), workdir)
    data = mapped.bundle_json()
    Bundle.model_validate(data)  # round-trips through the R4B model
    assert data["type"] == "transaction"
    entries = _entries(mapped)
    assert set(entries) == {"Encounter", "Binary", "Media", "Consent", "Provenance"}
    for kind, entry in entries.items():
        assert entry["fullUrl"].startswith("urn:uuid:")
        if kind == "Binary":  # created with its own deterministic id
            assert entry["request"] == {"method": "PUT", "url": f"Binary/fi-{mapped.image_key}"}
        else:
            assert entry["request"]["method"] == "POST"
            assert entry["request"]["ifNoneExist"]
    media_req = entries["Media"]["request"]["ifNoneExist"]
    assert f"{c.SID_SHA256}|{facts.sha256_hex}" in media_req
    assert "subject=Patient/p1" in media_req  # the same bytes for another patient are not merged


def test_the_binary_carries_the_media_labels_and_names_it_from_the_start(workdir):
    mapped, _facts = _mapped(child_context(intimate=True), parent_consent(), workdir)
    entries = _entries(mapped)
    binary, media = entries["Binary"], entries["Media"]
    assert binary["resource"]["meta"]["security"] == media["resource"]["meta"]["security"]
    assert binary["resource"]["securityContext"] == {"reference": media["fullUrl"]}
    assert media["resource"]["content"]["url"] == f"Binary/{binary['resource']['id']}"
    assert "data" not in binary["resource"], "the outbox copy holds no bytes"
    tags = binary["resource"]["meta"]["tag"]
    assert {"system": c.SID_RECORD, "code": f"{mapped.image_key}.binary"} in tags


def test_record_keys_are_the_same_for_the_same_image_and_consent(workdir):
    ctx, consent = make_context(), make_consent()
    first, _ = _mapped(ctx, consent, workdir)
    again, _ = _mapped(ctx, consent, workdir)
    other_consent, _ = _mapped(
        ctx, make_consent(permissions={"view": True, "store": True}), workdir
    )
    other_patient, _ = _mapped(
        make_context(patient="Patient/p2", operator="Patient/p2"), consent, workdir
    )
    assert first.submission_id != again.submission_id
    for a, b in ((first, again),):
        for kind in ("Binary", "Media", "Consent", "Provenance", "Encounter"):
            assert _entries(a)[kind]["request"] == _entries(b)[kind]["request"], kind
    assert first.consent_key != other_consent.consent_key
    assert first.image_key == other_consent.image_key
    assert first.image_key != other_patient.image_key
    assert "Patient" not in first.image_key


def test_media_fields(workdir):
    ctx = make_context(
        body_site={"code": "14975008", "display": "Forearm"},
        device_name="Phone",
        title="Forearm rash",
    )
    mapped, facts = _mapped(ctx, make_consent(), workdir)
    media = _entries(mapped)["Media"]["resource"]
    assert media["status"] == "completed"
    assert media["type"]["coding"][0] == {
        "system": c.MEDIA_TYPE,
        "code": "image",
        "display": "Image",
    }
    assert media["modality"]["coding"][0]["code"] == "XC"
    assert media["subject"] == {"reference": "Patient/p1"}
    assert media["operator"] == {"reference": "Patient/p1"}
    assert media["reasonCode"][0]["text"] == ctx.purpose
    assert media["bodySite"]["coding"][0]["code"] == "14975008"
    assert (media["width"], media["height"]) == (640, 480)
    content = media["content"]
    assert content["contentType"] == "image/jpeg"
    assert content["size"] == facts.size
    assert content["hash"] == facts.sha1_b64
    assert content["url"] == f"Binary/fi-{mapped.image_key}"
    assert "data" not in content, "image bytes never go inline in Media"
    notes = " ".join(n["text"] for n in media["note"])
    assert "purpose" in notes and "remote consultation" in notes and "GPS" in notes


def test_remote_consultation_marked_with_a_virtual_encounter(workdir):
    mapped, _ = _mapped(make_context(remote=True), make_consent(), workdir)
    entries = _entries(mapped)
    enc = entries["Encounter"]
    assert enc["resource"]["class"]["code"] == "VR"
    assert entries["Media"]["resource"]["encounter"]["reference"] == enc["fullUrl"]
    ext = entries["Media"]["resource"]["extension"][0]
    assert ext == {"url": c.EXT_REMOTE_CONSULTATION, "valueBoolean": True}


def test_known_encounter_is_referenced_not_created(workdir):
    mapped, _ = _mapped(
        make_context(remote=True, encounter="Encounter/e1"), make_consent(), workdir
    )
    entries = _entries(mapped)
    assert "Encounter" not in entries
    assert entries["Media"]["resource"]["encounter"] == {"reference": "Encounter/e1"}


def test_face_to_face_has_no_encounter_and_is_marked_not_remote(workdir):
    mapped, _ = _mapped(make_context(remote=False), make_consent(), workdir)
    entries = _entries(mapped)
    assert "Encounter" not in entries
    assert entries["Media"]["resource"]["extension"][0]["valueBoolean"] is False


def test_implicit_consent_has_no_consent_resource(workdir):
    ctx = make_context(
        kind="ultrasound", made_by="clinician", operator="Practitioner/s", remote=False
    )
    mapped, _ = _mapped(ctx, None, workdir, synthetic.png())
    assert mapped.consent is None
    assert set(_entries(mapped)) == {"Binary", "Media", "Provenance"}
    media = _entries(mapped)["Media"]["resource"]
    assert media["modality"]["coding"][0]["code"] == "US"


def test_consent_provisions_say_what_was_permitted_and_refused(workdir):
    consent = make_consent(
        permissions={
            "view": True,
            "store": True,
            "second_opinion": True,
            "teaching": False,
            "research": False,
        }
    )
    mapped, _ = _mapped(make_context(), consent, workdir)
    entries = _entries(mapped)
    res = entries["Consent"]["resource"]
    assert res["status"] == "active"
    assert res["scope"]["coding"][0]["code"] == "patient-privacy"
    assert res["policy"][0]["uri"] == c.GMC_RECORDINGS_POLICY
    assert res["performer"] == [{"reference": "Patient/p1"}]
    root = res["provision"]
    # IHE PCF Intermediate: the root permits the consented purposes on the image; each use not
    # consented to is a nested deny; no action anywhere
    assert root["type"] == "permit"
    assert root["data"] == [
        {"meaning": "instance", "reference": {"reference": entries["Media"]["fullUrl"]}}
    ]
    assert {p["code"] for p in root["purpose"]} == {"TREAT", "COC"}
    by_purpose = {p["purpose"][0]["code"]: p["type"] for p in root["provision"]}
    assert by_purpose == {"TRAIN": "deny", "HRESCH": "deny"}
    assert "action" not in json.dumps(res["provision"])
    assert res["organization"] == [{"display": UNNAMED_ORGANISATION}]
    discussion = base64.b64decode(res["sourceAttachment"]["data"]).decode()
    assert discussion == consent.discussion


def test_teaching_permit_is_for_anonymised_data_only(workdir):
    consent = make_consent(permissions={"view": True, "store": True, "teaching": True})
    mapped, _ = _mapped(make_context(), consent, workdir)
    root = _entries(mapped)["Consent"]["resource"]["provision"]
    assert "TRAIN" in {p["code"] for p in root["purpose"]}
    assert root["extension"] == [
        {
            "url": c.EXT_ANONYMISED_USE_ONLY,
            "valueCoding": {"system": c.V3_ACT_REASON, "code": "TRAIN"},
        }
    ]
    assert "securityLabel" not in root  # not allowed by IHE PCF Intermediate


def test_parent_consent_names_the_parent_and_the_confirmation(workdir):
    mapped, _ = _mapped(child_context(), parent_consent(), workdir)
    entries = _entries(mapped)
    res = entries["Consent"]["resource"]
    [performer] = res["performer"]
    assert performer["reference"] == "RelatedPerson/mum1"
    assert parental.read(performer) == ("mother", "birth_mother")
    assert "verification" not in res  # IHE PCF does not use it
    [confirmed] = res["extension"]
    assert confirmed["url"] == c.EXT_CONSENT_CONFIRMED
    assert confirmed["valueDateTime"] == res["dateTime"]
    prov = entries["Provenance"]["resource"]
    author = prov["agent"][0]
    assert author["who"] == {"reference": "RelatedPerson/mum1"}
    assert author["onBehalfOf"] == {"reference": "Patient/c1"}
    roles = {(cd["system"], cd["code"]) for role in author["role"] for cd in role["coding"]}
    assert roles == {(c.V3_ROLE_CODE, "MTH"), (parental.PR_BASIS, "birth_mother")}
    assert R4.consent(res | {"id": "x"}).parental_responsibility == ("mother", "birth_mother")
    assert {t["reference"] for t in prov["target"]} == {
        entries["Media"]["fullUrl"],
        entries["Consent"]["fullUrl"],
    }


def test_labels_on_each_resource_and_high_water_mark_on_bundle(workdir):
    mapped, _ = _mapped(child_context(), parent_consent(), workdir)
    data = mapped.bundle_json()
    assert data["meta"]["security"] == [{"system": c.V3_CONFIDENTIALITY, "code": "V"}]
    for entry in data["entry"]:
        labels = entry["resource"]["meta"]["security"]
        conf = [lab["code"] for lab in labels if lab["system"] == c.V3_CONFIDENTIALITY]
        assert conf == ["V"]
    media_codes = {lab["code"] for lab in _entries(mapped)["Media"]["resource"]["meta"]["security"]}
    assert {"PHY", "intimate", "HUAPRV", "SDMAST"} <= media_codes
    bundle_text = json.dumps(data["meta"])
    assert "intimate" not in bundle_text and "PHY" not in bundle_text


def test_every_label_says_who_assigned_it_and_why_and_what_backs_it(workdir):
    """HL7 DS4P: classifier and basis on every label; the image's and Binary's confidentiality
    justified by their Consent, the integrity code documented by the Provenance; every resource
    claims its profile; no inline labels."""
    mapped, _ = _mapped(child_context(), parent_consent(), workdir)
    entries = _entries(mapped)
    for entry in entries.values():
        resource = entry["resource"]
        assert resource["meta"]["profile"][0].startswith(f"{c.CANONICAL_BASE}/StructureDefinition/")
        for label in resource["meta"]["security"]:
            by_url = {e["url"]: e for e in label["extension"]}
            assert by_url[ds4p.EXT_CLASSIFIER]["valueReference"]["display"] == "fhir-images"
            assert by_url[ds4p.EXT_BASIS]["valueCoding"] == ds4p.BASIS
            assert label["code"] != "PROCESSINLINELABEL"
    consent_key = entries["Consent"]["resource"]["identifier"][0]["value"]
    provenance_key = entries["Provenance"]["resource"]["meta"]["tag"][0]["code"]
    for kind in ("Media", "Binary"):
        artifacts = {
            label["code"]: e["valueRelatedArtifact"]
            for label in entries[kind]["resource"]["meta"]["security"]
            for e in label["extension"]
            if e["url"] == ds4p.EXT_RELATED_ARTIFACT
        }
        assert set(artifacts) == {"V", "SDMAST"}, kind  # a parent (substitute decision maker)
        assert artifacts["V"]["type"] == "justification"
        assert artifacts["V"]["url"] == ds4p.record_search("Consent", "identifier", consent_key)
        assert artifacts["SDMAST"]["type"] == "documentation"
        assert artifacts["SDMAST"]["url"] == ds4p.record_search(
            "Provenance", "_tag", provenance_key
        )


def test_implicit_consent_is_justified_by_the_policy(workdir):
    ctx = make_context(
        kind="ultrasound", made_by="clinician", operator="Practitioner/s", remote=False
    )
    mapped, _ = _mapped(ctx, None, workdir, synthetic.png())
    [conf] = [
        lab
        for lab in _entries(mapped)["Media"]["resource"]["meta"]["security"]
        if lab["system"] == c.V3_CONFIDENTIALITY
    ]
    [artifact] = [e for e in conf["extension"] if e["url"] == ds4p.EXT_RELATED_ARTIFACT]
    assert artifact["valueRelatedArtifact"]["url"] == c.GMC_RECORDINGS_POLICY


def test_only_a_decision_to_store_is_mapped(workdir):
    ctx = child_context()
    facts = intake(synthetic.jpeg(), workdir=workdir).facts
    with pytest.raises(ValueError, match="store"):
        map_submission(ctx, None, facts, decide(ctx, None))


def test_video_duration_mapped(tmp_path, workdir):
    path = synthetic.write_mp4(tmp_path / "v.mp4", 5000, duration_s=95.0)
    ctx = make_context(kind="video", made_by="clinician", operator="Practitioner/x")
    facts = intake(path, workdir=workdir).facts
    mapped = map_submission(ctx, make_consent(), facts, decide(ctx, make_consent()))
    media = _entries(mapped)["Media"]["resource"]
    assert media["type"]["coding"][0]["code"] == "video"
    assert media["duration"] == 95.0
    assert "frames" not in media


def test_records_are_checked_against_the_r4_models():
    from pydantic import ValidationError

    from fhir_images.fhir.r4.records import checked

    with pytest.raises(ValidationError, match="status"):
        checked(lambda: {"resourceType": "Task", "intent": "order"})()
    with pytest.raises(ValidationError, match="bogus"):
        checked(lambda: {"resourceType": "Consent", "bogus": 1})()
    assert checked(lambda: None)() is None
