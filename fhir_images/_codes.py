"""Code systems, canonical URLs and the security-label vocabulary used throughout.

Every URL that fhir-images itself defines lives under :data:`CANONICAL_BASE`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

CANONICAL_BASE = "https://fhir-images.org/fhir"

# HL7 terminology
V3_CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V3_ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
V3_OBSERVATION_VALUE = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
V3_ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
V3_DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
MEDIA_TYPE = "http://terminology.hl7.org/CodeSystem/media-type"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
CONSENT_ACTION = "http://terminology.hl7.org/CodeSystem/consentaction"
PROVENANCE_PARTICIPANT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
DICOM = "http://dicom.nema.org/resources/ontology/DCM"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"

# Local definitions (published as CodeSystems and NamingSystems in profiles/)
LOCAL_SENSITIVITY = f"{CANONICAL_BASE}/CodeSystem/image-sensitivity"
LOCAL_HANDLING = f"{CANONICAL_BASE}/CodeSystem/image-handling"
LOCAL_IMAGE_KIND = f"{CANONICAL_BASE}/CodeSystem/image-kind"
LOCAL_DECISION_REASON = f"{CANONICAL_BASE}/CodeSystem/decision-reason"
LOCAL_CONSENT_GIVER = f"{CANONICAL_BASE}/CodeSystem/consent-giver"
LOCAL_LABEL_BASIS = f"{CANONICAL_BASE}/CodeSystem/label-basis"
LOCAL_TASK = f"{CANONICAL_BASE}/CodeSystem/image-task"
SID_SHA256 = f"{CANONICAL_BASE}/sid/sha256"
SID_SUBMISSION = f"{CANONICAL_BASE}/sid/submission"
#: Deterministic record keys (derived from the patient, the image's hash and the consent act), so
#: that the same image and the same consent act are stored once however often they are sent
SID_RECORD = f"{CANONICAL_BASE}/sid/record"
#: One approval of one disclosure (image, purpose, requester, recipient)
SID_APPROVAL = f"{CANONICAL_BASE}/sid/disclosure-approval"
#: The Task the server hook opens for an image whose record is incomplete
SID_HOOK_TASK = f"{CANONICAL_BASE}/sid/hook-task"
EXT_REMOTE_CONSULTATION = f"{CANONICAL_BASE}/StructureDefinition/remote-consultation"
EXT_METADATA_STRIPPED = f"{CANONICAL_BASE}/StructureDefinition/metadata-stripped"
#: On an R4 Consent's root provision: a purpose permitted for anonymised copies only
EXT_ANONYMISED_USE_ONLY = f"{CANONICAL_BASE}/StructureDefinition/anonymised-use-only"
#: On an R4 Consent: when the consent was confirmed with its giver (IHE PCF has no verification)
EXT_CONSENT_CONFIRMED = f"{CANONICAL_BASE}/StructureDefinition/consent-confirmed"

GMC_RECORDINGS_POLICY = (
    "https://www.gmc-uk.org/professional-standards/the-professional-standards/"
    "making-and-using-visual-and-audio-recordings-of-patients"
)


class Confidentiality(IntEnum):
    """HL7 v3 confidentiality codes, ordered from least to most restrictive."""

    U = 0
    L = 1
    M = 2
    N = 3
    R = 4
    V = 5

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        """In results: the code (``"R"``) in JSON, read back from the code or the member."""
        from pydantic_core import core_schema

        return core_schema.no_info_plain_validator_function(
            cls._parse,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda level: level.name, when_used="json"
            ),
        )

    @classmethod
    def _parse(cls, value: object) -> Confidentiality:
        if isinstance(value, cls):
            return value
        if isinstance(value, str) and value in cls.__members__:
            return cls[value]
        raise ValueError("a confidentiality code is one of U, L, M, N, R, V")


@dataclass(frozen=True, order=True)
class Label:
    """One security label: a system and a code (a Coding in ``meta.security``)."""

    system: str
    code: str

    def as_coding(self) -> dict[str, str]:
        return {"system": self.system, "code": self.code}


def conf(code: Confidentiality) -> Label:
    return Label(V3_CONFIDENTIALITY, code.name)


# Sensitivity (v3-ActCode) and the local codes HL7 lacks
PHY = Label(V3_ACT_CODE, "PHY")
ADOL = Label(V3_ACT_CODE, "ADOL")
SDV = Label(V3_ACT_CODE, "SDV")
VIO = Label(V3_ACT_CODE, "VIO")
INTIMATE = Label(LOCAL_SENSITIVITY, "intimate")
YOUNG_CHILD = Label(LOCAL_SENSITIVITY, "young-child")

#: A legal hold: the record must not be destroyed while it is present (local handling code)
LEGAL_HOLD = Label(LOCAL_HANDLING, "legal-hold")

#: Sensitivity codes: they reveal private facts, so they never go on a released Bundle
SENSITIVITY_CODES = frozenset(
    {
        (V3_ACT_CODE, code)
        for code in (
            "PHY",
            "PRS",
            "ADOL",
            "SEX",
            "STD",
            "SDV",
            "VIO",
            "PSY",
            "MH",
            "TBOO",
            "ETH",
            "HIV",
            "SUD",
            "GDIS",
            "DEMO",
            "SICKLE",
            "BH",
            "PSYTHPN",
            "REL",
            "SOC",
            "LGBTQ",
        )
    }
) | {(LOCAL_SENSITIVITY, "intimate"), (LOCAL_SENSITIVITY, "young-child")}

# Handling caveats (v3-ActCode)
CPLYCD = Label(V3_ACT_CODE, "CPLYCD")
NORDSCLCDS = Label(V3_ACT_CODE, "NORDSCLCDS")
NOREUSE = Label(V3_ACT_CODE, "NOREUSE")
MINEC = Label(V3_ACT_CODE, "MINEC")
HUAPRV = Label(V3_ACT_CODE, "HUAPRV")
NOPAT = Label(V3_ACT_CODE, "NOPAT")
NORELINK = Label(V3_ACT_CODE, "NORELINK")
ANONYED = Label(V3_OBSERVATION_VALUE, "ANONYED")

# Integrity / provenance (v3-ObservationValue)
PATAST = Label(V3_OBSERVATION_VALUE, "PATAST")
SDMAST = Label(V3_OBSERVATION_VALUE, "SDMAST")
PACQAST = Label(V3_OBSERVATION_VALUE, "PACQAST")
CLINAST = Label(V3_OBSERVATION_VALUE, "CLINAST")
DEVAST = Label(V3_OBSERVATION_VALUE, "DEVAST")

# Purpose of use (v3-ActReason)
TREAT = "TREAT"
COC = "COC"
TRAIN = "TRAIN"
HRESCH = "HRESCH"
PATRQT = "PATRQT"
FAMRQT = "FAMRQT"
PWATRNY = "PWATRNY"
HLEGAL = "HLEGAL"
ETREAT = "ETREAT"
BTG = "BTG"
PURPOSES_OF_USE = (TREAT, COC, TRAIN, HRESCH, PATRQT, FAMRQT, PWATRNY, HLEGAL, ETREAT, BTG)
#: Records management: the purpose of use recorded when an image is destroyed (G13)
RECORDMGT = "RECORDMGT"

# Audit (DICOM and ISO 21089), as IHE BALP uses them
DCM_EXPORT = ("http://dicom.nema.org/resources/ontology/DCM", "110106", "Export")
#: IHE BALP's authorizer agent of a privacy disclosure (SNOMED CT "Patient advocate")
BALP_AUTHORIZER = ("http://snomed.info/sct", "429577009", "Patient advocate")
DCM_DESTROY = ("http://dicom.nema.org/resources/ontology/DCM", "110105", "DICOM Study Deleted")
ISO_LIFECYCLE = "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle"
AUDIT_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
