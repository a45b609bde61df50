"""Image requests, parental responsibility in the record, and the maturity review against a
real server (each test runs once per configured server: HAPI R4, HAPI R5, HFS)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import pytest
from click.testing import CliRunner

from fhir_images import (
    ActionRefused,
    FhirClient,
    ImageRequest,
    Outbox,
    Outcome,
    RetentionSchedule,
    destroy,
    ingest,
    load_request,
    push,
    request_image,
    synthetic,
)
from fhir_images._maturity import SID_MATURITY_TASK, maturity_review, reconsent, task_key
from fhir_images.cli import main
from fhir_images.fhir import Repository
from fhir_images.fhir.audit import FileAudit

from ..factories import FOREARM, make_consent, make_context, make_request, parent_consent

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(connect: Callable[..., FhirClient]) -> FhirClient:
    return connect()


def _years_ago(years: int, days: int = 0) -> date:
    today = datetime.now(UTC).date()
    return today.replace(year=today.year - years) - timedelta(days=days)


def _put(client: FhirClient, *resources: dict) -> None:
    client.transaction(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": r,
                    "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
                }
                for r in resources
            ],
        }
    )


@pytest.fixture()
def family(client: FhirClient) -> dict[str, str]:
    """A young person who turned 16 ten days ago, a 15-year-old, their mother, and a GP."""
    tag = uuid.uuid4().hex[:10]
    teen, younger, mum = f"t16-{tag}", f"t15-{tag}", f"m-{tag}"
    _put(
        client,
        {"resourceType": "Patient", "id": teen, "birthDate": _years_ago(16, 10).isoformat()},
        {"resourceType": "Patient", "id": younger, "birthDate": _years_ago(15, 10).isoformat()},
        {"resourceType": "RelatedPerson", "id": mum, "patient": {"reference": f"Patient/{teen}"}},
        {"resourceType": "Practitioner", "id": "gp1"},
    )
    return {
        "teen": f"Patient/{teen}",
        "younger": f"Patient/{younger}",
        "mum": f"RelatedPerson/{mum}",
        "teen_born": _years_ago(16, 10).isoformat(),
        "younger_born": _years_ago(15, 10).isoformat(),
    }


def _parent_image(client, tmp_path, family, who: str, seed: int) -> str:
    """An image of the child, taken at 9 with the mother's consent (parental responsibility
    stated), delivered; its reference."""
    born = date.fromisoformat(family[f"{who}_born"])
    at = datetime(born.year + 9, 5, 1, 10, tzinfo=UTC)
    ctx = make_context(
        patient=family[who],
        birth_date=born,
        captured=at,
        made_by="parent",
        operator=family["mum"],
        best_interests="Avoids a visit; needed to decide treatment.",
    )
    outbox = Outbox(tmp_path / f"ob-{seed}")
    result = ingest(
        synthetic.jpeg(seed=seed), ctx, parent_consent(giver=family["mum"], date=at), outbox=outbox
    )
    assert result.decision.outcome is Outcome.STORE, result.decision.blocking
    [delivered] = push(client, outbox)
    assert delivered.delivered, delivered.error
    assert delivered.media is not None
    return delivered.media


def _review_tasks(client: FhirClient, patient: str) -> list[dict]:
    key = f"{SID_MATURITY_TASK}|{task_key(patient)}"
    return list(client.search("Task", {"identifier": key, "_count": "10"}))


def _own_consent(**overrides):
    return make_consent(
        **{"date": datetime.now(UTC) - timedelta(minutes=5), "gillick_competent": None, **overrides}
    )


def test_maturity_review_opens_one_task_per_patient_and_reconsent_closes_it(
    client, tmp_path, family, fhir_base_url
):
    first = _parent_image(client, tmp_path, family, "teen", 301)
    second = _parent_image(client, tmp_path, family, "teen", 302)
    _parent_image(client, tmp_path, family, "younger", 303)
    records = Repository(client)
    [consent] = records.consents_for_image(first)
    assert consent.parental_responsibility == ("mother", "birth_mother"), (
        "read back from the record"
    )

    patients = [family["teen"], family["younger"]]
    review = maturity_review(client, patients=patients)
    assert len(review.created) == 1 and review.images == {family["teen"]: 2}
    again = maturity_review(client, patients=patients)
    assert again.created == [] and again.existing == review.created
    result = CliRunner().invoke(
        main,
        [
            "consent",
            "maturity-review",
            "--server",
            fhir_base_url,
            "--json",
            "--patient",
            family["teen"],
            "--patient",
            family["younger"],
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["created"] == []
    [task] = _review_tasks(client, family["teen"])
    assert task["status"] == "requested" and len(task["input"]) == 2
    assert _review_tasks(client, family["younger"]) == [], "15: not yet reviewed"

    # the young person's own consent for one image: the mother's is superseded; the review
    # stays open while the other image still rests on her consent
    done = reconsent(client, first, _own_consent())
    assert done.superseded == [consent.ref] and done.provenance
    assert done.task_completed is None
    assert records.consent(consent.ref).status == "inactive"
    assert family["teen"] in records.consent(done.consent).performers

    # refused paths: not the patient's own consent; consent that does not allow storing
    with pytest.raises(ActionRefused, match="given_by"):
        reconsent(client, second, parent_consent(giver=family["mum"]))
    with pytest.raises(ActionRefused, match="consent-refused"):
        reconsent(client, second, _own_consent(permissions={"view": True, "store": False}))
    assert _review_tasks(client, family["teen"])[0]["status"] == "requested"

    consent_file = tmp_path / "own.json"
    consent_file.write_text(_own_consent().model_dump_json())
    result = CliRunner().invoke(
        main,
        ["consent", "confirm", second, "--consent", str(consent_file), "--server", fhir_base_url],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "maturity review completed" in result.output
    [task] = _review_tasks(client, family["teen"])
    assert task["status"] == "completed"
    after = maturity_review(client, patients=patients)
    assert after.created == [] and family["teen"] not in after.images


def _request(patient: str, born: str, **overrides) -> ImageRequest:
    """A request made an hour ago, valid a week (the factory's, for a patient on the server)."""
    now = datetime.now(UTC)
    return make_request(
        **{
            "id": None,
            "patient": patient,
            "birth_date": born,
            "authored": now - timedelta(hours=1),
        },
        **overrides,
    )


def _own_photo(patient: str, born: str, **overrides):
    """A young person's own photo of the forearm made ten minutes ago, and their consent."""
    ctx = make_context(
        patient=patient,
        operator=patient,
        birth_date=born,
        captured=datetime.now(UTC) - timedelta(minutes=10),
        body_site=FOREARM,
        best_interests="Avoids a visit.",
        **overrides,
    )
    return ctx, make_consent(date=datetime.now(UTC) - timedelta(minutes=5), gillick_competent=True)


def test_a_requested_image_is_based_on_the_request_which_it_completes(client, tmp_path, family):
    patient, born = family["younger"], family["younger_born"]
    asked = _request(patient, born)
    recorded = request_image(client, asked).request
    assert recorded.id and recorded.id.startswith("ServiceRequest/")
    assert request_image(client, asked).request.id == recorded.id, "recorded once"
    loaded = load_request(client, recorded.id)
    assert loaded == recorded

    ctx, consent = _own_photo(patient, born)
    outbox = Outbox(tmp_path / "ob")
    result = ingest(synthetic.jpeg(seed=311), ctx, consent, outbox=outbox, request=loaded)
    assert result.decision.outcome is Outcome.STORE, result.decision.blocking
    [delivered] = push(client, outbox)
    assert delivered.delivered, delivered.error
    image = client.read(delivered.media)
    assert image["basedOn"] == [{"reference": recorded.id}]
    assert client.read(recorded.id)["status"] == "completed"

    # a second image for the same request: no longer asked for, held
    again = load_request(client, recorded.id)
    held = ingest(synthetic.jpeg(seed=312), ctx, consent, outbox=outbox, request=again)
    assert held.decision.outcome is Outcome.HOLD
    assert "request-not-active" in {r.code for r in held.decision.blocking}


def test_an_intimate_image_of_a_15_year_old_is_neither_requested_nor_stored(
    client, tmp_path, family
):
    patient, born = family["younger"], family["younger_born"]
    before = list(client.search("ServiceRequest", {"subject": patient, "_count": "50"}))
    with pytest.raises(ActionRefused, match="intimate"):
        request_image(client, _request(patient, born, intimate=True))
    assert list(client.search("ServiceRequest", {"subject": patient, "_count": "50"})) == before

    recorded = request_image(client, _request(patient, born)).request
    ctx, consent = _own_photo(patient, born, intimate=True)
    outbox = Outbox(tmp_path / "ob")
    result = ingest(
        synthetic.jpeg(seed=313),
        ctx,
        consent,
        outbox=outbox,
        policy="default",
        request=load_request(client, str(recorded.id)),
    )
    assert result.decision.outcome is Outcome.REFUSE and result.discarded
    assert push(client, outbox) == []
    assert client.read(str(recorded.id))["status"] == "active"
    assert list(client.search(client.version.image_type, {"subject": patient})) == []


def test_a_recording_summarised_in_the_record_is_destroyed_early_and_audited(
    fhir_base_url, tmp_path, family
):
    """England's Code lets an original recording go once its content is in the record (W6):
    refused without that, destroyed with it, the audit saying why."""
    audit_file = tmp_path / "audit" / "trail.jsonl"
    client = FhirClient(fhir_base_url, audit=f"file:{audit_file}")
    patient = f"Patient/adult-{uuid.uuid4().hex[:10]}"
    _put(
        client, {"resourceType": "Patient", "id": patient.split("/")[1], "birthDate": "1970-01-01"}
    )
    at = datetime.now(UTC) - timedelta(days=1)
    ctx = make_context(
        patient=patient,
        operator=patient,
        captured=at,
        kind="audio",
        intimate=False,
        purpose="Auscultation recorded in a video consultation; findings in the consultation note.",
    )
    outbox = Outbox(tmp_path / "ob")
    result = ingest(synthetic.wav(), ctx, make_consent(date=at), outbox=outbox)
    assert result.decision.outcome is Outcome.STORE, result.decision.blocking
    [delivered] = push(client, outbox)
    assert delivered.delivered and delivered.media, delivered.error
    with pytest.raises(ActionRefused, match="retention"):
        destroy(client, delivered.media, by="Practitioner/gp1", reason="summarised")
    with pytest.raises(ActionRefused, match="does not provide"):
        destroy(
            client,
            delivered.media,
            by="Practitioner/gp1",
            reason="summarised",
            schedule=RetentionSchedule.load("scotland"),
            summary_in_record="note",
        )
    done = destroy(
        client,
        delivered.media,
        by="Practitioner/gp1",
        reason="content summarised in the notes",
        summary_in_record="consultation note of the same day",
    )
    assert delivered.media in done.deleted
    [audit] = [e["resource"] for e in FileAudit(audit_file).entries()]
    text = json.dumps(audit)
    assert "W6" in text and "consultation note of the same day" in text
