"""Children grow up (W4, GMC *Making and using visual and audio recordings of patients* para
35): when a child whose image was kept on someone else's consent becomes able to decide, they
should be offered the chance to withdraw or vary that consent.

:func:`maturity_review` finds the patients who have reached :data:`MATURITY_AGE` and have
images whose only active consent was given by someone else, and opens one Task per patient for
a clinician to offer re-consent (the same Task however often it runs). :func:`reconsent`
records the young person's own consent for an image: their Consent is added, the consents
given for them are superseded (each change with a Provenance), and once none of their images
rests on someone else's consent the Task is completed.

Why 16: in England and Wales a young person of 16 is presumed able to consent to their own
treatment (Family Law Reform Act 1969 s8; Mental Capacity Act 2005 s1(2) and s2(5) from 16);
in Scotland a person of 16 has full legal capacity (Age of Legal Capacity (Scotland) Act 1991
s1(1)(b)), and one under 16 may consent to treatment when a qualified practitioner judges them
capable of understanding it (s2(4)); in Northern Ireland the Age of Majority Act (Northern
Ireland) 1969 s4 matches s8 of the 1969 Act. Younger Gillick-competent (Scotland: s2(4))
patients can be reviewed with a lower ``age`` when the practice decides to offer re-consent
earlier; their own consent then needs ``gillick_competent: true``.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, date, datetime
from typing import Any

from pydantic import Field

from . import _codes as c
from ._codes import Confidentiality, Label
from ._context import ClinicalContext, ConsentGiver, ConsentRecord
from ._exceptions import ActionRefused, ResourceNotFound
from ._result import Result
from .fhir import FhirClient, Repository
from .fhir.building import claim
from .fhir.common import iso
from .fhir.keys import consent_key
from .fhir.views import ConsentView, ImageView, TaskView
from .policy import SecurityLabels, decide

log = logging.getLogger("fhir_images.maturity")

MATURITY_AGE = 16
SID_MATURITY_TASK = f"{c.CANONICAL_BASE}/sid/maturity-review"
MATURITY_CODE = {
    "system": c.LOCAL_TASK,
    "code": "offer-reconsent",
    "display": "Offer a young person re-consent for images kept on someone else's consent",
}
#: The findings about the consent itself that stop a young person's re-consent being recorded
_CONSENT_FINDINGS = frozenset(
    {
        "consent-refused",
        "consent-explanation-incomplete",
        "secondary-use-unexplained",
        "discussion-not-recorded",
        "implied-consent-insufficient",
        "implied-consent-intimate",
        "implied-consent-child",
        "young-person-competence-unassessed",
    }
)


def _age(born: date, on: date) -> int:
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def task_key(patient: str) -> str:
    """The identifier value of a patient's review Task: a one-way key, never the patient."""
    return hashlib.sha256(f"maturity-review|{patient}".encode()).hexdigest()[:32]


def _by_someone_else(image: ImageView, consents: list[ConsentView]) -> bool:
    """Every active Consent of the image was given by someone other than the patient."""
    active = [x for x in consents if x.active]
    return bool(active) and all(image.subject not in x.performers for x in active)


class MaturityReview(Result):
    """What a review found and did: per patient reached the age, the Task (created now or
    already there), and how many of their images rest on someone else's consent."""

    age: int
    created: list[str] = Field(default_factory=list)
    existing: list[str] = Field(default_factory=list)
    images: dict[str, int] = Field(default_factory=dict)


def _review_task(
    version_name: str, patient: str, images: list[ImageView], age: int, now: datetime
) -> dict[str, Any]:
    task: dict[str, Any] = {
        "resourceType": "Task",
        "meta": {"security": [c.conf(Confidentiality.R).as_coding()]},
        "identifier": [{"system": SID_MATURITY_TASK, "value": task_key(patient)}],
        "status": "requested",
        "intent": "order",
        "priority": "routine",
        "code": {"coding": [MATURITY_CODE], "text": MATURITY_CODE["display"]},
        "description": (
            f"The patient has reached {age} and has images kept on consent given by someone "
            "else (a parent). Offer them the chance to give their own consent, or to withdraw "
            "or vary it (GMC recordings guidance para 35); record their decision with "
            "`fhir-images consent confirm IMAGE --consent FILE`, or `consent withdraw`."
        ),
        "focus": {"reference": patient},
        "for": {"reference": patient},
        "authoredOn": iso(now),
        # the images by their identifier, not a literal reference: a review Task must never
        # stop an image being destroyed when its retention ends
        "input": [
            {
                "type": {"text": "image kept on someone else's consent"},
                "valueReference": {
                    "type": image.ref.split("/")[0],
                    "identifier": {"system": c.SID_SHA256, "value": image.sha256},
                },
            }
            for image in images
            if image.sha256
        ],
    }
    if version_name == "R5":
        from fhir.resources.task import Task as R5Task

        R5Task.model_validate(task)
    else:
        from fhir.resources.R4B.task import Task

        Task.model_validate(task)
    return task


def _patients_with_consents(records: Repository) -> list[str]:
    """Every patient with an image named by an active Consent."""
    found: set[str] = set()
    for resource in records.client.search("Consent", {"status": "active", "_count": "100"}):
        for image in records.version.consent(resource).images:
            try:
                subject = records.image(image).subject
            except ResourceNotFound:
                continue
            if subject:
                found.add(subject)
    return sorted(found)


def maturity_review(
    client: FhirClient,
    *,
    age: int = MATURITY_AGE,
    patients: list[str] | None = None,
    today: date | None = None,
    now: datetime | None = None,
) -> MaturityReview:
    """Open one Task per patient who has reached ``age`` and has images whose every active
    Consent was given by someone else (``patients``: only these; default: every patient with
    an image under an active Consent). A patient who already has such a Task (in any state)
    gets no second one."""
    if not 12 <= age <= 18:
        raise ActionRefused("age: choose an age from 12 to 18 (16 unless there is a reason)")
    records = Repository(client)
    on = today or datetime.now(UTC).date()
    at = now or datetime.now(UTC)
    result = MaturityReview(age=age)
    for patient in patients if patients is not None else _patients_with_consents(records):
        view = records.patient(patient)
        if view is None or view.birth_date is None or _age(view.birth_date, on) < age:
            continue
        pending = [
            image
            for image in records.images_of_patient(patient)
            if _by_someone_else(image, records.consents_for_image(image.ref))
        ]
        if not pending:
            continue
        result.images[patient] = len(pending)
        key = f"{SID_MATURITY_TASK}|{task_key(patient)}"
        existing = records.tasks_with_identifier(key)
        if existing:
            result.existing.append(existing[0].ref)
            continue
        task = _review_task(client.version.name, patient, pending, age, at)
        result.created.append(records.create_once(task, f"identifier={key}"))
    log.info("maturity review: %d tasks created", len(result.created))
    return result


class Reconsent(Result):
    """The young person's own Consent, the consents it superseded, the Provenance of each
    change, and the review Task it completed (if this was the last image it waited for)."""

    consent: str
    superseded: list[str] = Field(default_factory=list)
    provenance: list[str] = Field(default_factory=list)
    task_completed: str | None = None


def _labels(image: ImageView) -> SecurityLabels:
    """The image's labels for its Consent (no provenance code: the Consent is not the image)."""
    rest = tuple(
        Label(system, code)
        for system, code in image.labels
        if system not in (c.V3_CONFIDENTIALITY, c.V3_OBSERVATION_VALUE)
    )
    return SecurityLabels(image.confidentiality, rest, ())


def _consent_builder(version_name: str) -> Any:
    if version_name == "R5":
        from .fhir.r5.mapping import build_consent as build_r5

        return build_r5
    from .fhir.r4.mapping import build_consent

    return build_consent


def reconsent(
    client: FhirClient, image_ref: str, consent: ConsentRecord, *, by: str | None = None
) -> Reconsent:
    """Record a young person's own consent for an image kept on someone else's consent (W4):
    their Consent is added, every active Consent given by someone else is superseded (each
    change recorded in a Provenance), and the maturity review Task is completed once none of
    their images rests on someone else's consent. To refuse, use ``withdraw_consent``."""
    if consent.given_by is not ConsentGiver.PATIENT:
        raise ActionRefused("consent.given_by: a re-consent is given by the patient themselves")
    records = Repository(client)
    image = records.image(image_ref)
    patient = records.patient(image.subject) if image.subject else None
    if patient is None or patient.birth_date is None:
        raise ActionRefused(
            "the patient's birth date is not recorded: re-consent cannot be checked"
        )
    ctx = ClinicalContext.model_validate(
        {
            "patient": patient.ref,
            "birth_date": patient.birth_date,
            # the young person's age is the one they have when they consent now
            "captured": consent.date,
            "made_by": "patient",
            "kind": image.kind.value,
            "intimate": c.INTIMATE in image.labels,
            "purpose": image.purpose,
        }
    )
    blocking = [r for r in decide(ctx, consent).blocking if r.code in _CONSENT_FINDINGS]
    if blocking:
        raise ActionRefused(
            "the re-consent cannot be recorded: "
            + "; ".join(f"{r.rule} {r.code}" for r in blocking)
        )
    record = (
        "reconsent."
        + hashlib.sha256(f"{image.ref}|{consent_key(consent)}".encode()).hexdigest()[:32]
    )
    # the Consent claims its profile and its labels say who assigned them, as at ingest
    resource = claim(
        _consent_builder(client.version.name)(
            ctx, consent, _labels(image), submission_id=record, image_ref=image.ref, record=record
        ),
        "recording-consent",
    ).model_dump(mode="json", exclude_none=True)
    new_ref = records.create_once(resource, f"identifier={c.SID_RECORD}|{record}")
    result = Reconsent(consent=new_ref)
    who = by or consent.taken_by
    for old in records.consents_for_image(image.ref):
        if not old.active or old.ref == new_ref or patient.ref in old.performers:
            continue
        updated = records.update(records.version.superseded(old), old.version_id)
        result.provenance.append(
            records.record_consent_change(
                records.version.consent(updated),
                by=who,
                reason="the young person gave their own consent (GMC recordings para 35)",
                activity="superseded",
            )
        )
        result.superseded.append(old.ref)
    result.task_completed = _complete_review(records, patient.ref)
    return result


def _complete_review(records: Repository, patient: str) -> str | None:
    """Complete the patient's review Task when none of their images rests on someone else's
    consent any more."""
    tasks = records.tasks_with_identifier(f"{SID_MATURITY_TASK}|{task_key(patient)}")
    open_tasks: list[TaskView] = [t for t in tasks if t.status not in ("completed", "cancelled")]
    if not open_tasks:
        return None
    for image in records.images_of_patient(patient):
        if _by_someone_else(image, records.consents_for_image(image.ref)):
            return None
    task = open_tasks[0]
    records.update(records.version.completed(task), task.version_id)
    return task.ref
