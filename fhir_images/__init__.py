"""fhir-images: clinical images and recordings into FHIR, with consent rules and security labels.

The public API is what this module exports (``__all__``); everything else is internal and may
change without notice. A sketch::

    from fhir_images import FhirClient, Outbox, ingest, parse_consent, parse_context, push

    ctx = parse_context({"patient": "Patient/123", "birth_date": "1980-02-01", ...})
    result = ingest(Path("rash.jpg"), ctx, parse_consent({...}), outbox=Outbox("outbox"))
    result.decision.outcome  # store / hold / refuse, with reasons and labels
    with FhirClient("https://fhir.example.org/fhir", auth=...) as client:
        [delivered] = push(client, Outbox("outbox"))

Every result is a pydantic model (``model_dump()`` / ``model_validate()``). Every error derives
from :class:`FhirImagesError`; :mod:`fhir_images.aio` has the same operations for asyncio.
"""

from ._approvals import Approval, approve, pending_approvals, refuse_approval
from ._codes import Confidentiality, Label
from ._context import (
    ClinicalContext,
    ConsentGiver,
    ConsentRecord,
    Explained,
    ImageKind,
    Maker,
    Permissions,
    Relationship,
)
from ._delivery import DeliveryResult, push, retry_failed
from ._exceptions import (
    ActionRefused,
    AuditError,
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
    InvalidSetting,
    LabelError,
    LabelVerificationFailed,
    OutboxError,
    PayloadTooLarge,
    PolicyNotFound,
    RateLimited,
    ResourceNotFound,
    ServerError,
    ServerUnavailable,
    UnsafeServer,
    UnsupportedMediaType,
    VersionConflict,
)
from ._ingest import IngestResult, ingest, load_case, parse_consent, parse_context, recheck
from ._inputs import load_structured
from ._intake import ImageFacts, Limits
from ._lifecycle import (
    AnonymisedCopy,
    ConsentChange,
    DestructionResult,
    DisclosureResult,
    anonymise,
    destroy,
    disclose,
    narrow_consent,
    patient_records,
    read_record,
    withdraw_consent,
)
from ._outbox import Entry, Outbox, State
from ._settings import Settings
from ._version import __version__
from .fhir import FhirClient, RetryPolicy, ServerProfile, register_server
from .fhir.audit import FileAudit, RepositoryAudit
from .fhir.auth import Auth, BasicAuth, BearerToken, SmartBackendServices
from .fhir.probe import ServerReport
from .policy import (
    ConsentState,
    Decision,
    DisclosureDecision,
    DisclosureRequest,
    ImageRecord,
    Outcome,
    Policy,
    Purpose,
    Reason,
    RetentionSchedule,
    Role,
    SecurityLabels,
    Verdict,
    decide,
    decide_disclosure,
    earliest_destruction,
    get_policy,
    register_policy,
    register_schedule,
)

__all__ = [
    "ActionRefused",
    "AnonymisedCopy",
    "Approval",
    "AuditError",
    "Auth",
    "AuthenticationFailed",
    "BadInput",
    "BadResponse",
    "BasicAuth",
    "BearerToken",
    "ClinicalContext",
    "Confidentiality",
    "ConsentChange",
    "ConsentGiver",
    "ConsentRecord",
    "ConsentState",
    "ContentTypeMismatch",
    "CorruptMedia",
    "Decision",
    "DeliveryResult",
    "DestructionResult",
    "DisclosureDecision",
    "DisclosureRequest",
    "DisclosureResult",
    "Entry",
    "EntryNotFound",
    "Explained",
    "FhirClient",
    "FhirImagesError",
    "FileAudit",
    "ImageFacts",
    "ImageKind",
    "ImageRecord",
    "IncompatibleServer",
    "IngestResult",
    "InputTooLarge",
    "InvalidContext",
    "InvalidRequest",
    "InvalidSetting",
    "Label",
    "LabelError",
    "LabelVerificationFailed",
    "Limits",
    "Maker",
    "Outbox",
    "OutboxError",
    "Outcome",
    "PayloadTooLarge",
    "Permissions",
    "Policy",
    "PolicyNotFound",
    "Purpose",
    "RateLimited",
    "Reason",
    "Relationship",
    "RepositoryAudit",
    "ResourceNotFound",
    "RetentionSchedule",
    "RetryPolicy",
    "Role",
    "SecurityLabels",
    "ServerError",
    "ServerProfile",
    "ServerReport",
    "ServerUnavailable",
    "Settings",
    "SmartBackendServices",
    "State",
    "UnsafeServer",
    "UnsupportedMediaType",
    "Verdict",
    "VersionConflict",
    "__version__",
    "anonymise",
    "approve",
    "decide",
    "decide_disclosure",
    "destroy",
    "disclose",
    "earliest_destruction",
    "get_policy",
    "ingest",
    "load_case",
    "load_structured",
    "narrow_consent",
    "parse_consent",
    "parse_context",
    "patient_records",
    "pending_approvals",
    "push",
    "read_record",
    "recheck",
    "refuse_approval",
    "register_policy",
    "register_schedule",
    "register_server",
    "retry_failed",
    "withdraw_consent",
]
