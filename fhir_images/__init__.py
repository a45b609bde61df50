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
from ._delivery import DeliveryResult, push
from ._exceptions import (
    AuthenticationFailed,
    BadInput,
    BadResponse,
    ContentTypeMismatch,
    CorruptMedia,
    EntryNotFound,
    FhirImagesError,
    IncompatibleServer,
    InputTooLarge,
    InvalidContext,
    InvalidRequest,
    LabelError,
    LabelVerificationFailed,
    OutboxError,
    PolicyNotFound,
    RateLimited,
    ResourceNotFound,
    ServerError,
    ServerUnavailable,
    UnsupportedMediaType,
    VersionConflict,
)
from ._ingest import IngestResult, ingest, load_structured, parse_consent, parse_context, recheck
from ._intake import ImageFacts, IntakeResult, Limits, intake, sniff
from ._labels import apply_labels, plan_label_change
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
from ._transport import PROFILES, FhirClient, RetryPolicy, ServerProfile
from ._version import __version__

__all__ = [
    "IMPLICIT_CONSENT_KINDS",
    "POLICIES",
    "PROFILES",
    "AuthenticationFailed",
    "BadInput",
    "BadResponse",
    "ClinicalContext",
    "Coded",
    "ConsentGiver",
    "ConsentRecord",
    "ConsentState",
    "ContentTypeMismatch",
    "CorruptMedia",
    "Decision",
    "DeliveryResult",
    "Entry",
    "EntryNotFound",
    "Explained",
    "FhirClient",
    "FhirImagesError",
    "ImageFacts",
    "ImageKind",
    "IncompatibleServer",
    "IngestResult",
    "InputTooLarge",
    "IntakeResult",
    "InvalidContext",
    "InvalidRequest",
    "LabelError",
    "LabelVerificationFailed",
    "Limits",
    "Maker",
    "MappedSubmission",
    "Outbox",
    "OutboxError",
    "Outcome",
    "Permissions",
    "Policy",
    "PolicyNotFound",
    "RateLimited",
    "Reason",
    "Relationship",
    "ResourceNotFound",
    "RetryPolicy",
    "SecurityLabels",
    "ServerError",
    "ServerProfile",
    "ServerUnavailable",
    "UnsupportedMediaType",
    "VersionConflict",
    "__version__",
    "apply_labels",
    "decide",
    "get_policy",
    "ingest",
    "intake",
    "load_structured",
    "map_submission",
    "parse_consent",
    "parse_context",
    "plan_label_change",
    "push",
    "recheck",
    "sniff",
]
