"""fhir-images: clinical images and recordings into FHIR R4, with consent and security labels.

The public API::

    from fhir_images import Outbox, ClinicalContext, ConsentRecord, ingest

    ctx = ClinicalContext(patient="Patient/123", birth_date="1980-02-01", made_by="patient",
                          purpose="Rash on forearm, review of response to treatment", ...)
    result = ingest(Path("rash.jpg"), ctx, consent, outbox=Outbox("outbox"))
    result.decision.outcome  # store / hold / refuse, with reasons and labels

Errors are described in :mod:`fhir_images._exceptions`.
"""

from ._context import (
    IMPLICIT_CONSENT_KINDS,
    ClinicalContext,
    Coded,
    ConsentGiver,
    ConsentRecord,
    Explained,
    ImageKind,
    Maker,
    Permissions,
    Relationship,
)
from ._exceptions import (
    BadInput,
    ContentTypeMismatch,
    CorruptMedia,
    EntryNotFound,
    FhirImagesError,
    InputTooLarge,
    InvalidContext,
    OutboxError,
    PolicyNotFound,
    UnsupportedMediaType,
)
from ._ingest import IngestResult, ingest, load_structured, parse_consent, parse_context, recheck
from ._intake import ImageFacts, IntakeResult, Limits, intake, sniff
from ._mapping import MappedSubmission, map_submission
from ._outbox import Entry, Outbox
from ._policy import (
    POLICIES,
    ConsentState,
    Decision,
    Outcome,
    Policy,
    Reason,
    SecurityLabels,
    decide,
    get_policy,
)
from ._version import __version__

__all__ = [
    "IMPLICIT_CONSENT_KINDS",
    "POLICIES",
    "BadInput",
    "ClinicalContext",
    "Coded",
    "ConsentGiver",
    "ConsentRecord",
    "ConsentState",
    "ContentTypeMismatch",
    "CorruptMedia",
    "Decision",
    "Entry",
    "EntryNotFound",
    "Explained",
    "FhirImagesError",
    "ImageFacts",
    "ImageKind",
    "IngestResult",
    "InputTooLarge",
    "IntakeResult",
    "InvalidContext",
    "Limits",
    "Maker",
    "MappedSubmission",
    "Outbox",
    "OutboxError",
    "Outcome",
    "Permissions",
    "Policy",
    "PolicyNotFound",
    "Reason",
    "Relationship",
    "SecurityLabels",
    "UnsupportedMediaType",
    "__version__",
    "decide",
    "get_policy",
    "ingest",
    "intake",
    "load_structured",
    "map_submission",
    "parse_consent",
    "parse_context",
    "recheck",
    "sniff",
]
