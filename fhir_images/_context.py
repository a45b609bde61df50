"""The clinical context of an image and the consent record, as validated models.

Unknowns are allowed where a clinician may genuinely not know (was it
solicited? is it intimate?); the policy treats an unknown as the more
restrictive answer.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from ._codes import SNOMED

_REF = re.compile(r"^(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})$")


def _reference(*allowed: str) -> AfterValidator:
    def check(value: str) -> str:
        m = _REF.match(value)
        if not m or m.group("type") not in allowed:
            raise ValueError(
                f"must be a relative reference to {' or '.join(allowed)}, like {allowed[0]}/123"
            )
        return value

    return AfterValidator(check)


PatientRef = Annotated[str, _reference("Patient")]
EncounterRef = Annotated[str, _reference("Encounter")]
PractitionerRef = Annotated[str, _reference("Practitioner", "PractitionerRole")]
PersonRef = Annotated[
    str, _reference("Practitioner", "PractitionerRole", "Patient", "RelatedPerson")
]
OrganizationRef = Annotated[str, _reference("Organization")]


class Maker(StrEnum):
    """Who made the image or recording."""

    CLINICIAN = "clinician"
    PATIENT = "patient"
    PARENT = "parent"  # a person with parental responsibility
    RELATIVE_OR_CARER = "relative_or_carer"  # another relative or carer, no parental responsibility


class ImageKind(StrEnum):
    PHOTO = "photo"
    VIDEO = "video"
    AUDIO = "audio"
    XRAY = "xray"
    ULTRASOUND = "ultrasound"
    ENDOSCOPY = "endoscopy"  # includes laparoscopy
    PATHOLOGY_SLIDE = "pathology_slide"
    INTERNAL_ORGAN = "internal_organ"
    ORGAN_FUNCTION = "organ_function"


#: The GMC's list of recordings whose consent is implicit in the investigation (G3).
IMPLICIT_CONSENT_KINDS = frozenset(
    {
        ImageKind.XRAY,
        ImageKind.ULTRASOUND,
        ImageKind.ENDOSCOPY,
        ImageKind.PATHOLOGY_SLIDE,
        ImageKind.INTERNAL_ORGAN,
        ImageKind.ORGAN_FUNCTION,
    }
)


class Coded(BaseModel):
    """A code with its system (SNOMED CT unless said otherwise) and text."""

    model_config = ConfigDict(extra="forbid")
    code: str | None = None
    system: str = SNOMED
    display: str | None = None

    @model_validator(mode="after")
    def _something(self) -> Coded:
        if not self.code and not self.display:
            raise ValueError("give a code, a display text, or both")
        return self


class ClinicalContext(BaseModel):
    """Everything the policy needs to know about one image, apart from consent."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    patient: PatientRef
    birth_date: date
    captured: datetime = Field(default_factory=lambda: datetime.now(UTC))
    made_by: Maker
    operator: PersonRef | None = None
    kind: ImageKind = ImageKind.PHOTO
    solicited: bool | None = None
    intimate: bool | None = None
    routine_in_person: bool | None = Field(
        default=None,
        description="Would this image be taken in a normal face-to-face consultation? (G6)",
    )
    remote: bool = False
    encounter: EncounterRef | None = None
    body_site: Coded | None = None
    purpose: str | None = Field(default=None, description="Clinical relevance and purpose (G8)")
    purpose_code: Coded | None = None
    safeguarding_concern: bool = False
    best_interests: str | None = Field(
        default=None,
        description="For a child: why keeping the image is in their best interests (G7)",
    )
    device_name: str | None = None
    title: str | None = None
    recorded_by: PractitionerRef | None = None
    organization: OrganizationRef | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ClinicalContext:
        captured = self.captured if self.captured.tzinfo else self.captured.replace(tzinfo=UTC)
        self.captured = captured
        if captured.date() < self.birth_date:
            raise ValueError("captured is before the patient's birth date")
        if captured > datetime.now(UTC) + timedelta(days=1):
            raise ValueError("captured is in the future")
        if self.operator:
            kind = self.operator.split("/")[0]
            expected = {
                Maker.CLINICIAN: {"Practitioner", "PractitionerRole"},
                Maker.PATIENT: {"Patient"},
                Maker.PARENT: {"RelatedPerson"},
                Maker.RELATIVE_OR_CARER: {"RelatedPerson"},
            }[self.made_by]
            if kind not in expected:
                raise ValueError(
                    f"operator must be a {' or '.join(sorted(expected))} "
                    f"when made_by is {self.made_by.value}"
                )
            if self.made_by is Maker.PATIENT and self.operator != self.patient:
                raise ValueError("operator must be the patient when made_by is patient")
        return self

    def age_years(self) -> int:
        born, on = self.birth_date, self.captured.date()
        return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


class ConsentGiver(StrEnum):
    PATIENT = "patient"  # an adult, or a competent young person for themselves
    PARENT = "parent"  # someone who says they have parental responsibility
    RELATIVE_OR_CARER = "relative_or_carer"


class Relationship(StrEnum):
    """v3-RoleCode codes for who holds parental responsibility."""

    MTH = "MTH"
    FTH = "FTH"
    PRN = "PRN"
    GUARD = "GUARD"
    OTHER = "OTHER"


class Explained(BaseModel):
    """What the clinician explained when seeking consent (G1, G2)."""

    model_config = ConfigDict(extra="forbid")
    why: bool = False
    form: bool = False
    secure_storage: bool = False
    secondary_uses: bool = False


class Permissions(BaseModel):
    """What the consent allows. Anything not said is not allowed."""

    model_config = ConfigDict(extra="forbid")
    view: bool = False
    store: bool = False
    second_opinion: bool = False
    teaching: bool = False
    research: bool = False


class ConsentRecord(BaseModel):
    """A recorded consent discussion for one image or recording."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    given_by: ConsentGiver
    giver: PersonRef | None = Field(
        default=None, description="Patient/.. or RelatedPerson/.. who gave consent"
    )
    relationship: Relationship | None = None
    parental_responsibility: bool | None = None
    gillick_competent: bool | None = Field(
        default=None, description="For a patient under 16 consenting for themselves"
    )
    date: datetime
    taken_by: PractitionerRef
    method: Literal["verbal", "written", "implied"]
    confirmed: bool = Field(
        default=False,
        description="Consent to view, store and share was confirmed after the image arrived (G6)",
    )
    explained: Explained = Field(default_factory=Explained)
    permissions: Permissions
    discussion: str | None = Field(
        default=None, description="Key elements of the discussion (G2, G8)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> ConsentRecord:
        if not self.date.tzinfo:
            self.date = self.date.replace(tzinfo=UTC)
        if self.given_by is ConsentGiver.PATIENT:
            if self.giver and not self.giver.startswith("Patient/"):
                raise ValueError("giver must be the Patient when given_by is patient")
        else:
            if not self.giver or not self.giver.startswith("RelatedPerson/"):
                raise ValueError(
                    f"giver (a RelatedPerson reference) is required when given_by is "
                    f"{self.given_by.value}"
                )
            if self.relationship is None:
                raise ValueError("relationship is required when consent is given by someone else")
        if self.given_by is ConsentGiver.PARENT and self.parental_responsibility is None:
            raise ValueError(
                "say whether the parent has parental responsibility "
                "(parental_responsibility: true or false)"
            )
        return self
