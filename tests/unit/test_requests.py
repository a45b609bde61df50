"""Image requests (W5): what arrives is checked against what the clinician asked for, and no
intimate image of an under-18 answering a request is stored under any policy pack."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fhir_images import ActionRefused, InvalidContext, Outbox, Outcome, decide, ingest, synthetic
from fhir_images._intake import intake
from fhir_images._requests import ImageRequest, check_new_request
from fhir_images.fhir import requests as fhir_requests
from fhir_images.fhir.r4 import R4
from fhir_images.fhir.r4.mapping import map_submission
from fhir_images.fhir.r5 import R5
from fhir_images.policy import Policy, register_policy
from fhir_images.policy.packs import POLICIES

from ..factories import CAPTURED, FOREARM, make_consent, make_context, make_request


def teen(**overrides: Any) -> tuple[Any, Any, ImageRequest]:
    """A 15-year-old's own photo answering a request, Gillick competent, best interests."""
    ctx = make_context(
        **{
            "patient": "Patient/t1",
            "operator": "Patient/t1",
            "birth_date": "2011-03-10",
            "body_site": FOREARM,
            "best_interests": "Avoids a visit.",
            **overrides,
        }
    )
    consent = make_consent(gillick_competent=True)
    request = make_request(patient="Patient/t1", birth_date="2011-03-10", senders=["Patient/t1"])
    return ctx, consent, request


def blocking(d: Any) -> set[str]:
    return {r.code for r in d.blocking}


def test_a_photo_made_as_requested_is_stored():
    d = decide(make_context(body_site=FOREARM), make_consent(), request=make_request())
    assert d.outcome is Outcome.STORE, d.blocking
    assert "request-answered" in {r.code for r in d.reasons}


@pytest.mark.parametrize(
    ("ctx_changes", "req_changes", "code"),
    [
        ({"body_site": {"code": "72696002", "display": "Knee"}}, {}, "request-other-body-site"),
        ({"body_site": None}, {}, "request-other-body-site"),
        ({"kind": "video"}, {}, "request-other-kind"),
        (
            {},
            {"authored": CAPTURED - timedelta(days=9), "valid_until": CAPTURED - timedelta(days=2)},
            "request-expired",
        ),
        (
            {"made_by": "relative_or_carer", "operator": "RelatedPerson/x"},
            {},
            "request-sender-not-named",
        ),
        ({}, {"status": "completed"}, "request-not-active"),
    ],
)
def test_an_image_outside_its_request_is_held(ctx_changes, req_changes, code):
    ctx = make_context(**{"body_site": FOREARM, **ctx_changes})
    d = decide(ctx, make_consent(), request=make_request(**req_changes))
    assert d.outcome is Outcome.HOLD
    assert code in blocking(d)
    assert all(r.rule == "W5" for r in d.blocking)


def test_body_sites_match_by_code_or_by_text():
    by_text = make_request(body_site={"display": "forearm"})
    d = decide(make_context(body_site={"display": "Forearm"}), make_consent(), request=by_text)
    assert d.outcome is Outcome.STORE


@pytest.mark.parametrize("pack", ["default", "strict", "empty"])
@pytest.mark.parametrize("intimate", [True, None])
def test_an_intimate_image_of_a_15_year_old_is_never_stored(pack, intimate):
    """Under every pack, even one that has no checks of its own."""
    register_policy(Policy("empty", "no checks of its own", ()))
    try:
        ctx, consent, request = teen(intimate=intimate)
        d = decide(ctx, consent, policy=pack, request=request)
    finally:
        POLICIES.pop("empty")
    assert d.outcome is Outcome.REFUSE
    assert "request-intimate-under-18" in blocking(d)
    assert d.notes and "description" in d.notes[0]


def test_the_same_image_of_a_15_year_old_not_intimate_is_stored():
    ctx, consent, request = teen(intimate=False)
    assert decide(ctx, consent, request=request).outcome is Outcome.STORE


def test_a_request_for_another_patient_is_bad_input():
    with pytest.raises(InvalidContext, match="another patient"):
        decide(
            make_context(body_site=FOREARM),
            make_consent(),
            request=make_request(patient="Patient/other", senders=["Patient/other"]),
        )


def test_a_request_with_another_birth_date_is_bad_input():
    with pytest.raises(InvalidContext, match="birth_date"):
        decide(
            make_context(body_site=FOREARM),
            make_consent(),
            request=make_request(birth_date="1986-06-30"),
        )


def test_a_context_naming_a_request_needs_the_request():
    with pytest.raises(InvalidContext, match=r"context\.request"):
        decide(make_context(request="ServiceRequest/r1"), make_consent())


def test_asking_for_an_intimate_image_of_an_under_18_is_refused():
    with pytest.raises(ActionRefused, match=r"request\.intimate"):
        check_new_request(
            make_request(
                patient="Patient/t1", birth_date="2011-03-10", senders=["Patient/t1"], intimate=True
            )
        )
    check_new_request(make_request(intimate=True))  # an adult: may be asked for


def test_request_validation():
    with pytest.raises(InvalidContext, match="valid_until"):
        make_request(valid_until=CAPTURED - timedelta(days=3))
    with pytest.raises(InvalidContext, match="senders"):
        make_request(senders=["Patient/someone-else"])
    with pytest.raises(InvalidContext, match="senders"):
        make_request(senders=[])


def test_ingest_discards_an_intimate_image_of_a_teen_keeping_a_record(tmp_path):
    outbox = Outbox(tmp_path / "ob")
    ctx, consent, request = teen(intimate=True)
    result = ingest(synthetic.jpeg(), ctx, consent, outbox=outbox, request=request)
    assert result.decision.outcome is Outcome.REFUSE
    assert result.entry is None and result.discarded is not None
    assert not list(outbox.entries()), "nothing held, nothing ready"
    [record] = outbox.discarded()
    assert record["reason"] == "W5 request-intimate-under-18"
    assert record["decision"]["notes"] == list(result.decision.notes)
    assert not any(p.suffix in (".jpg", ".jpeg") for p in (tmp_path / "ob").rglob("*"))


def test_a_stored_image_is_based_on_its_request(tmp_path):
    outbox = Outbox(tmp_path / "ob")
    result = ingest(
        synthetic.jpeg(),
        make_context(body_site=FOREARM),
        make_consent(),
        outbox=outbox,
        request=make_request(),
    )
    assert result.entry is not None and result.entry.state == "ready"
    assert result.entry.has("request.json")
    bundle = result.entry.read_json("bundle.json")
    [media] = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Media"]
    assert media["basedOn"] == [{"reference": "ServiceRequest/r1"}]


def test_a_request_without_an_id_cannot_be_linked(tmp_path):
    with pytest.raises(InvalidContext, match=r"request\.id"):
        ingest(
            synthetic.jpeg(),
            make_context(body_site=FOREARM),
            make_consent(),
            outbox=Outbox(tmp_path / "ob"),
            request=make_request(id=None),
        )


def test_r5_document_reference_is_based_on_the_request(tmp_path):
    from fhir_images.fhir.r5.mapping import map_submission as map_r5

    ctx = make_context(body_site=FOREARM, request="ServiceRequest/r1")
    d = decide(ctx, make_consent(), request=make_request())
    facts = intake(synthetic.jpeg(), workdir=tmp_path).facts
    for mapper, kind in ((map_submission, "Media"), (map_r5, "DocumentReference")):
        bundle = mapper(ctx, make_consent(), facts, d).bundle_json()
        [image] = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]
        assert image["basedOn"] == [{"reference": "ServiceRequest/r1"}]


@pytest.mark.parametrize("version", [R4, R5], ids=["R4", "R5"])
def test_service_request_round_trip(version):
    request = make_request(intimate=True)
    resource = fhir_requests.service_request(version, request)
    assert resource["status"] == "active" and resource["intent"] == "order"
    assert resource["performer"] == [{"reference": "Patient/p1"}]
    assert fhir_requests.labels_of(resource).confidentiality.name == "R"
    back = fhir_requests.image_request(version, {**resource, "id": "r1"}, request.birth_date)
    assert back.model_dump() == request.model_dump()
    done = fhir_requests.completed({**resource, "id": "r1"})
    assert done is not None and done["status"] == "completed"
    assert fhir_requests.completed(done) is None


def test_a_service_request_that_does_not_say_enough_is_bad_input():
    resource = fhir_requests.service_request(R4, make_request())
    del resource["extension"]
    with pytest.raises(InvalidContext, match="intimacy"):
        fhir_requests.image_request(R4, {**resource, "id": "r1"}, make_request().birth_date)


def test_the_request_file_is_what_ingest_reads(tmp_path):
    """`request create --out` writes the model; `ingest --request FILE` reads it back."""
    path = tmp_path / "request.json"
    path.write_text(json.dumps(make_request().model_dump(mode="json")))
    from fhir_images._ingest import parse_request
    from fhir_images._inputs import load_structured

    assert parse_request(load_structured(path, "request file")) == make_request()
    assert datetime.now(UTC) > CAPTURED


def test_an_image_held_for_an_expired_request_is_stored_on_a_new_request(tmp_path):
    """recheck with a new request relinks the held image; the old request is forgotten."""
    from fhir_images import recheck

    outbox = Outbox(tmp_path / "ob")
    expired = make_request(authored=CAPTURED - timedelta(days=9))
    ctx = make_context(body_site=FOREARM)
    held = ingest(synthetic.jpeg(), ctx, make_consent(), outbox=outbox, request=expired)
    assert held.entry is not None and "request-expired" in blocking(held.decision)
    renewed = make_request(id="ServiceRequest/r2", authored=CAPTURED - timedelta(hours=1))
    result = recheck(outbox, held.entry.id, request=renewed)
    assert result.decision.outcome is Outcome.STORE, result.decision.blocking
    assert result.entry is not None and result.entry.state == "ready"
    bundle = result.entry.read_json("bundle.json")
    [media] = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Media"]
    assert media["basedOn"] == [{"reference": "ServiceRequest/r2"}]


def test_an_image_answering_a_request_was_asked_for(tmp_path):
    """A parent's photo of a child sent on request is not 'unsolicited' (G6) when the context
    does not say."""
    from ..factories import child_context, parent_consent

    ctx = child_context(solicited=None, intimate=False, routine_in_person=False, body_site=FOREARM)
    consent = parent_consent(confirmed=False)
    request = make_request(
        patient="Patient/c1", birth_date="2024-08-02", senders=["RelatedPerson/mum1"]
    )
    alone = decide(ctx, consent)
    assert "consent-unconfirmed-unsolicited" in blocking(alone)
    result = ingest(synthetic.jpeg(), ctx, consent, outbox=Outbox(tmp_path / "ob"), request=request)
    assert result.decision.outcome is Outcome.STORE, result.decision.blocking
