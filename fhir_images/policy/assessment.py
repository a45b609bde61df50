"""The assessment of an image that reached the server by another route (the hook's question).

Pure: from the image, its patient and its Consents as the record shows them, the labels the
image needs and what its record lacks. It fails closed on what the record does not say: an
image not labelled intimate counts as intimate, an unknown maker as someone without parental
responsibility, a missing birth date as a child. The pack's record checks decide what is a
problem (the strict pack adds its own).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .. import _codes as c
from .._codes import Confidentiality
from .._context import IMPLICIT_CONSENT_KINDS, ClinicalContext, Maker
from ..fhir.views import ConsentView, ImageView, PatientView
from .ingest import ADULT_AGE, SecurityLabels, Situation

_MAKER_BY_TYPE = {
    "Practitioner": Maker.CLINICIAN,
    "PractitionerRole": Maker.CLINICIAN,
    "Patient": Maker.PATIENT,
    "RelatedPerson": Maker.RELATIVE_OR_CARER,
}
_RESTRICTIVE = (c.HUAPRV, c.NORDSCLCDS, c.NOREUSE)


@dataclass(frozen=True)
class RecordSituation:
    """An image as the record shows it, with what the policy can infer from it."""

    image: ImageView
    patient: PatientView | None
    consents: tuple[ConsentView, ...]
    situation: Situation  # the same facts as at ingest, inferred failing closed
    birth_date_known: bool


RecordCheck = Callable[[RecordSituation], Iterable[str]]


@dataclass
class Assessment:
    media: str
    labels: list[dict[str, str]]
    problems: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.problems

    def restrict(self) -> None:
        """Add the restrictive handling labels (and at least R) for a problem found later."""
        have = {(x["system"], x["code"]) for x in self.labels}
        self.labels += [x.as_coding() for x in _RESTRICTIVE if (x.system, x.code) not in have]
        conf = next((x for x in self.labels if x["system"] == c.V3_CONFIDENTIALITY), None)
        if conf is None or Confidentiality[conf["code"]] < Confidentiality.R:
            self.labels = [x for x in self.labels if x["system"] != c.V3_CONFIDENTIALITY]
            self.labels.insert(0, c.conf(Confidentiality.R).as_coding())


def record_situation(
    image: ImageView, patient: PatientView | None, consents: Iterable[ConsentView]
) -> RecordSituation:
    now = datetime.now(UTC)
    birth = patient.birth_date if patient else None
    birth_date = birth or now.date().replace(year=now.year - 1)  # unknown: a child
    captured = image.created or now
    if captured.date() < birth_date:
        captured = now
    operator_type = (image.operator or "").split("/")[0]
    ctx = ClinicalContext.model_construct(
        patient=image.subject or "Patient/unknown",
        birth_date=birth_date,
        captured=captured,
        made_by=_MAKER_BY_TYPE.get(operator_type, Maker.RELATIVE_OR_CARER),
        kind=image.kind,
        intimate=True if c.INTIMATE in image.labels else None,
        solicited=None,
        routine_in_person=None,
        remote=False,
        safeguarding_concern=False,
        purpose=image.purpose,
    )
    return RecordSituation(image, patient, tuple(consents), Situation(ctx, None), birth is not None)


# ------------------------------------------------------------------------- record checks


def check_birth_date(r: RecordSituation) -> Iterable[str]:
    if not r.birth_date_known:
        yield "the patient's birth date is not recorded: labelled as for a child"


def check_purpose(r: RecordSituation) -> Iterable[str]:
    if not r.image.purpose:
        yield "no clinical purpose recorded (G8)"


def check_consent(r: RecordSituation) -> Iterable[str]:
    if r.image.kind in IMPLICIT_CONSENT_KINDS:
        return
    active = [x for x in r.consents if x.active]
    if not active:
        yield "no active Consent references this image (G1, G4, G6)"
    elif not all(x.provision_for(c.TREAT).permits for x in active):
        yield "the Consent does not permit use for care (G1)"
    elif not all(x.performers for x in active):
        yield "the Consent does not say who gave it (G5)"


def check_strict_intimate_child(r: RecordSituation) -> Iterable[str]:
    s = r.situation
    if s.child and s.intimate and not s.implicit_kind:
        yield (
            "an intimate image of an under-18 is not kept under the strict policy (S1): review "
            "it, record a description instead and delete the image"
        )


DEFAULT_RECORD_CHECKS: tuple[RecordCheck, ...] = (check_birth_date, check_purpose, check_consent)


def assess(
    r: RecordSituation,
    labels_for: Callable[[Situation], SecurityLabels],
    checks: Iterable[RecordCheck],
) -> Assessment:
    """The labels the image needs and what is missing from its record."""
    labels = labels_for(r.situation)
    problems = [p for check in checks for p in check(r)]
    result = [label.as_coding() for label in labels.all()]
    if problems:
        result += [label.as_coding() for label in _RESTRICTIVE]
        # restricted at least, very restricted for a child
        floor = Confidentiality.V if r.situation.age < ADULT_AGE else Confidentiality.R
        level = max(floor, labels.confidentiality)
        result = [x for x in result if x["system"] != c.V3_CONFIDENTIALITY]
        result.insert(0, c.conf(level).as_coding())
    unique = list({(x["system"], x["code"]): x for x in result}.values())
    return Assessment(r.image.ref, unique, problems)
