"""The clinical context of an image and the consent record, as validated models.

Unknowns are allowed where a clinician may genuinely not know (was it
solicited? is it intimate?); the policy treats an unknown as the more
restrictive answer.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field, model_validator

from ._codes import SNOMED
from ._inputs import InputModel, Line, Text, reference

PatientRef = Annotated[str, reference("Patient")]
EncounterRef = Annotated[str, reference("Encounter")]
PractitionerRef = Annotated[str, reference("Practitioner", "PractitionerRole")]
PersonRef = Annotated[
    str, reference("Practitioner", "PractitionerRole", "Patient", "RelatedPerson")
]
OrganizationRef = Annotated[str, reference("Organization")]
RequestRef = Annotated[str, reference("ServiceRequest")]

#: The earliest date fhir-images accepts for a birth, an image or a consent
EARLIEST = date(1900, 1, 1)


def _birth_date(value: date) -> date:
    if value < EARLIEST:
        raise ValueError(f"is before {EARLIEST.isoformat()}")
    if value > datetime.now(UTC).date():
        raise ValueError("is in the future")
    return value


def _past_instant(value: datetime) -> datetime:
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    if value.date() < EARLIEST:
        raise ValueError(f"is before {EARLIEST.isoformat()}")
    if value > datetime.now(UTC) + timedelta(days=1):
        raise ValueError("is in the future")
    return value


BirthDate = Annotated[date, AfterValidator(_birth_date)]
PastInstant = Annotated[datetime, AfterValidator(_past_instant)]


class Maker(StrEnum):
    """Who made the image or recording."""

    CLINICIAN = "clinician"
    PATIENT = "patient"
    PARENT = "parent"  # a person with parental responsibility
    RELATIVE_OR_CARER = "relative_or_carer"  # another relative or carer, no parental responsibility


class ImageKind(StrEnum):
    """What the image is; X-rays, ultrasound, endoscopy and pathology slides have implicit
    consent as part of the investigation, the others need it recorded."""

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


class Coded(InputModel):
    """A code with its system (SNOMED CT unless said otherwise) and text."""

    input_name: ClassVar[str] = "code"
    code: Line | None = None
    system: Line = SNOMED
    display: Line | None = None

    @model_validator(mode="after")
    def _something(self) -> Coded:
        if not self.code and not self.display:
            raise ValueError("give a code, a display text, or both")
        return self


class ClinicalContext(InputModel):
    """Everything the policy needs to know about one image, apart from consent."""

    input_name: ClassVar[str] = "context"

    patient: PatientRef
    birth_date: BirthDate
    captured: PastInstant = Field(default_factory=lambda: datetime.now(UTC))
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
    purpose: Text | None = Field(default=None, description="Clinical relevance and purpose (G8)")
    purpose_code: Coded | None = None
    safeguarding_concern: bool = False
    best_interests: Text | None = Field(
        default=None,
        description="For a child: why keeping the image is in their best interests (G7)",
    )
    device_name: Line | None = None
    title: Line | None = None
    recorded_by: PractitionerRef | None = None
    organization: OrganizationRef | None = None
    request: RequestRef | None = Field(
        default=None,
        description="The clinician's request this image answers (a ServiceRequest; W5)",
    )

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


class PRHolder(StrEnum):
    """Who holds parental responsibility for the child (Children Act 1989 ss2-5, 12, 14C, 33;
    Children (Scotland) Act 1995 ss1-3, 11; Children (Northern Ireland) Order 1995 arts 5-7)."""

    MOTHER = "mother"
    FATHER = "father"
    SECOND_FEMALE_PARENT = "second_female_parent"  # HFEA 2008 ss42-43
    STEP_PARENT = "step_parent"
    GUARDIAN = "guardian"
    SPECIAL_GUARDIAN = "special_guardian"
    ADOPTER = "adopter"
    LOCAL_AUTHORITY = "local_authority"
    OTHER_WITH_ORDER = "other_with_order"  # e.g. a relative the child lives with under an order


class PRBasis(StrEnum):
    """On what basis a person holds parental responsibility."""

    BIRTH_MOTHER = "birth_mother"  # always (CA 1989 s2(1), s2(2)(a))
    MARRIED_TO_MOTHER = "married_to_mother"  # married to / civil partner of the mother at birth
    REGISTERED_ON_BIRTH_CERTIFICATE = "registered_on_birth_certificate"  # CA 1989 s4(1)(a), s4ZA
    PR_AGREEMENT = "pr_agreement"  # CA 1989 s4(1)(b), s4A(1)(a)
    PR_ORDER = "pr_order"  # CA 1989 s4(1)(c), s4A(1)(b)
    CHILD_ARRANGEMENTS_ORDER = "child_arrangements_order"  # 'lives with' order, CA 1989 s12(2)
    GUARDIANSHIP = "guardianship"  # appointed guardian, CA 1989 s5
    SPECIAL_GUARDIANSHIP_ORDER = "special_guardianship_order"  # CA 1989 s14C
    ADOPTION_ORDER = "adoption_order"  # Adoption and Children Act 2002 s46
    PARENTAL_ORDER = "parental_order"  # surrogacy, HFEA 2008 s54
    CARE_ORDER = "care_order"  # shared with the parents, CA 1989 s33(3)


#: How a father or a second female parent can hold parental responsibility
_SECOND_PARENT_BASES = frozenset(
    {
        PRBasis.MARRIED_TO_MOTHER,
        PRBasis.REGISTERED_ON_BIRTH_CERTIFICATE,
        PRBasis.PR_AGREEMENT,
        PRBasis.PR_ORDER,
        PRBasis.CHILD_ARRANGEMENTS_ORDER,
        PRBasis.ADOPTION_ORDER,
        PRBasis.PARENTAL_ORDER,
    }
)

#: Which bases can give which holder parental responsibility: a pairing outside this is an input
#: error (a birth mother's responsibility cannot rest on a care order).
PR_BASES: dict[PRHolder, frozenset[PRBasis]] = {
    PRHolder.MOTHER: frozenset(
        {PRBasis.BIRTH_MOTHER, PRBasis.ADOPTION_ORDER, PRBasis.PARENTAL_ORDER}
    ),
    PRHolder.FATHER: _SECOND_PARENT_BASES,
    PRHolder.SECOND_FEMALE_PARENT: _SECOND_PARENT_BASES,
    PRHolder.STEP_PARENT: frozenset(
        {
            PRBasis.PR_AGREEMENT,
            PRBasis.PR_ORDER,
            PRBasis.CHILD_ARRANGEMENTS_ORDER,
            PRBasis.ADOPTION_ORDER,
        }
    ),
    PRHolder.GUARDIAN: frozenset({PRBasis.GUARDIANSHIP}),
    PRHolder.SPECIAL_GUARDIAN: frozenset({PRBasis.SPECIAL_GUARDIANSHIP_ORDER}),
    PRHolder.ADOPTER: frozenset({PRBasis.ADOPTION_ORDER}),
    PRHolder.LOCAL_AUTHORITY: frozenset({PRBasis.CARE_ORDER}),
    PRHolder.OTHER_WITH_ORDER: frozenset({PRBasis.CHILD_ARRANGEMENTS_ORDER, PRBasis.PR_ORDER}),
}


class ParentalResponsibility(InputModel):
    """Who holds parental responsibility and on what basis (GMC 0-18 paras 24-27 and
    recordings para 34: not every parent has it, so it is stated, never assumed)."""

    input_name: ClassVar[str] = "parental_responsibility"
    holder: PRHolder
    basis: PRBasis

    @model_validator(mode="after")
    def _possible(self) -> ParentalResponsibility:
        if self.basis not in PR_BASES[self.holder]:
            raise ValueError(
                f"basis {self.basis.value} cannot give a {self.holder.value.replace('_', ' ')} "
                "parental responsibility"
            )
        return self


class ConsentGiver(StrEnum):
    """Who gave consent."""

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


class Explained(InputModel):
    """What the clinician explained when seeking consent (G1, G2)."""

    input_name: ClassVar[str] = "explained"
    why: bool = False
    form: bool = False
    secure_storage: bool = False
    secondary_uses: bool = False


class Permissions(InputModel):
    """What the consent allows. Anything not said is not allowed."""

    input_name: ClassVar[str] = "permissions"
    view: bool = False
    store: bool = False
    second_opinion: bool = False
    teaching: bool = False
    research: bool = False


class ConsentRecord(InputModel):
    """A recorded consent discussion for one image or recording."""

    input_name: ClassVar[str] = "consent"

    given_by: ConsentGiver
    giver: PersonRef | None = Field(
        default=None, description="Patient/.. or RelatedPerson/.. who gave consent"
    )
    relationship: Relationship | None = None
    parental_responsibility: ParentalResponsibility | bool | None = Field(
        default=None,
        description="For consent from a parent: {holder, basis}; false when they have none. "
        "true (or nothing) without the holder and basis is held as not established (G5)",
    )
    gillick_competent: bool | None = Field(
        default=None, description="For a patient under 16 consenting for themselves"
    )
    date: PastInstant
    taken_by: PractitionerRef
    method: Literal["verbal", "written", "implied"]
    confirmed: bool = Field(
        default=False,
        description="Consent to view, store and share was confirmed after the image arrived (G6)",
    )
    explained: Explained = Field(default_factory=Explained)
    permissions: Permissions
    discussion: Text | None = Field(
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
        return self

    @property
    def parental_responsibility_stated(self) -> ParentalResponsibility | None:
        """The holder and basis of the giver's parental responsibility, when recorded."""
        pr = self.parental_responsibility
        return pr if isinstance(pr, ParentalResponsibility) else None
