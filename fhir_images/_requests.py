"""Image requests: a clinician asks for a specific image (what, which body site, by when, from
whom), and what arrives is checked against that request (W5: CQC GP mythbuster 100; the NHS
England / RCPCH principles for remote intimate assessments).

A request is recorded on the FHIR server as a ServiceRequest (R4 and R5): the only request
resource an R4 Media may be ``basedOn``, and the one with the fields a request for an image
needs (``code`` for the kind, ``bodySite``, ``performer`` for who may send it,
``occurrencePeriod`` for how long it is valid, ``requester``, ``reasonCode``). Fulfilling it
(delivering an image linked to it) completes it.

Nothing is asked for that the rules would never store: a request for an intimate image of
anyone under 18 is refused before anything is written.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, date, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from ._context import (
    BirthDate,
    Coded,
    ImageKind,
    PastInstant,
    PatientRef,
    PractitionerRef,
    RequestRef,
)
from ._exceptions import ActionRefused, InvalidContext, ResourceNotFound
from ._inputs import InputModel, Text, reference
from ._result import Result

log = logging.getLogger("fhir_images.requests")

SenderRef = Annotated[str, reference("Patient", "RelatedPerson")]

#: Under this age no intimate image is asked for or stored on a request (W5)
INTIMATE_REQUEST_MIN_AGE = 18


def _age(born: date, on: datetime) -> int:
    d = on.date()
    return d.year - born.year - ((d.month, d.day) < (born.month, born.day))


class ImageRequest(InputModel):
    """A clinician's request for one image or recording of a patient."""

    input_name: ClassVar[str] = "request"

    id: RequestRef | None = Field(
        default=None, description="ServiceRequest/.. once recorded on the server"
    )
    status: Literal["active", "completed", "revoked"] = "active"
    patient: PatientRef
    birth_date: BirthDate
    requester: PractitionerRef
    kind: ImageKind = ImageKind.PHOTO
    body_site: Coded
    intimate: bool = Field(description="Does the image asked for show an intimate area?")
    reason: Text = Field(description="Why the image is needed for the patient's care (G8)")
    authored: PastInstant = Field(default_factory=lambda: datetime.now(UTC))
    valid_until: datetime
    senders: list[SenderRef] = Field(
        min_length=1, max_length=10, description="Who may send it: Patient/.. or RelatedPerson/.."
    )

    @model_validator(mode="after")
    def _consistent(self) -> ImageRequest:
        if not self.valid_until.tzinfo:
            self.valid_until = self.valid_until.replace(tzinfo=UTC)
        if self.valid_until <= self.authored:
            raise ValueError("valid_until must be after authored")
        for sender in self.senders:
            if sender.startswith("Patient/") and sender != self.patient:
                raise ValueError("senders: a Patient who sends it must be the patient")
        return self

    def age_on(self, when: datetime) -> int:
        return _age(self.birth_date, when)

    @property
    def key(self) -> str:
        """The record key of this request (no patient data in it)."""
        content = self.model_dump_json(exclude={"id", "status"})
        return hashlib.sha256(content.encode()).hexdigest()[:32]


def check_new_request(request: ImageRequest) -> None:
    """A request the rules would never fulfil is not made (W5): ActionRefused."""
    if request.intimate and request.age_on(request.authored) < INTIMATE_REQUEST_MIN_AGE:
        raise ActionRefused(
            "request.intimate: intimate images of under-18s are not to be requested or "
            "received (W5: NHS England / RCPCH principles for remote intimate assessments); "
            "arrange a face-to-face assessment instead"
        )


class RequestResult(Result):
    """A recorded request: its reference on the server and the request as recorded."""

    request: ImageRequest


def request_image(client: Any, request: ImageRequest) -> RequestResult:
    """Record a clinician's request for an image on the server (a ServiceRequest, created once
    however often this is repeated); refused (ActionRefused) when the rules would never store
    what it asks for."""
    from .fhir import requests as fhir_requests
    from .fhir.repository import Repository

    check_new_request(request)
    records = Repository(client)
    resource = fhir_requests.service_request(client.version, request)
    ref = records.create_once(resource, fhir_requests.by_key(request.key))
    if not ref.startswith("ServiceRequest/"):
        raise ActionRefused("the server did not say where it recorded the request")
    log.info("image request recorded")
    return RequestResult(request=request.model_copy(update={"id": ref}))


def load_request(client: Any, ref: str) -> ImageRequest:
    """A request recorded on the server, with the patient's birth date read from the record."""
    from .fhir import requests as fhir_requests
    from .fhir.repository import Repository

    if not ref.startswith("ServiceRequest/"):
        raise InvalidContext("request: must be a ServiceRequest reference or a request file")
    records = Repository(client)
    resource = client.read(ref)
    patient_ref = fhir_requests.subject_of(resource)
    patient = records.patient(patient_ref) if patient_ref else None
    if patient is None or patient.birth_date is None:
        raise ActionRefused(
            "request: the patient's birth date is not on the server, so the request cannot "
            "be checked"
        )
    return fhir_requests.image_request(client.version, resource, patient.birth_date)


def complete_request(client: Any, ref: str) -> bool:
    """Mark a request completed once an image answering it is in the record (If-Match);
    False when it was no longer active."""
    from .fhir import requests as fhir_requests

    try:
        resource = client.read(ref)
    except ResourceNotFound:
        return False
    changed = fhir_requests.completed(resource)
    if changed is None:
        return False
    client.update(changed, if_match=fhir_requests.version_of(resource))
    return True
