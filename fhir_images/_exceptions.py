"""The exceptions fhir-images raises.

Every exception derives from :class:`FhirImagesError`, so one ``except`` clause
catches them all. The hierarchy::

    FhirImagesError
    ├── BadInput                  the caller's input cannot be used (CLI exit code 2)
    │   ├── UnsupportedMediaType  content is not an accepted image/video/audio format
    │   ├── ContentTypeMismatch   content contradicts the type the sender claimed
    │   ├── InputTooLarge         over the configured byte or pixel limits
    │   ├── CorruptMedia          the content claims a format but cannot be read as it
    │   ├── InvalidContext        the clinical context, consent record, case file or request
    │   │                         is invalid (names the field and the rule, never the value)
    │   ├── InvalidSetting        a setting (an environment variable) is not usable
    │   └── PolicyNotFound        no policy pack of that name
    ├── OutboxError               the local outbox could not be read or written
    │   └── EntryNotFound         no outbox entry with that id
    ├── AuditError                the audit trail could not be written (so nothing was done)
    ├── ServerError               a FHIR server answered with an error, or not at all
    │   ├── ServerUnavailable     connection failed, 502/503/504, or timed out    (retry_safe)
    │   ├── RateLimited           429 Too Many Requests                           (retry_safe)
    │   ├── AuthenticationFailed  401 or 403
    │   ├── ResourceNotFound      404 or 410
    │   ├── VersionConflict       409 or 412: a stale If-Match, or a concurrent change
    │   ├── InvalidRequest        400 or 422: the server rejected the content
    │   ├── PayloadTooLarge       413: the request body is over the server's limit
    │   ├── BadResponse           the answer is not the FHIR JSON it should be
    │   └── IncompatibleServer    not FHIR R4, or lacks Media, Consent, Binary or transactions
    ├── LabelError                a security-label change would remove or lower a label,
    │   └── LabelVerificationFailed   or the server did not keep the labels it was sent
    └── ActionRefused             a destruction, consent change or anonymised copy that the
        │                         rules forbid (retention, legal hold, no consent)
        └── UnsafeServer          the server lacks what protects sensitive images (labels
                                  that stick, _security searches it applies, audits)

``retry_safe`` on a :class:`ServerError` says whether sending the same request
again cannot do harm (the server did not process it, or the request is
idempotent). None of the other errors is safe to retry as is: each needs the
input or the configuration changed first, except :class:`OutboxError` raised
by an I/O failure (disk full, permissions), which may succeed once that is fixed.

Messages never contain patient identifiers, names or image bytes.
"""

from __future__ import annotations

from typing import Any


class FhirImagesError(Exception):
    """Root of every error fhir-images raises."""


class BadInput(FhirImagesError):
    """The input cannot be used as given."""


class UnsupportedMediaType(BadInput):
    """The content is not one of the accepted image, video or audio formats."""


class ContentTypeMismatch(BadInput):
    """The content's real type contradicts the type the sender claimed."""


class InputTooLarge(BadInput):
    """The input is over the configured size or pixel limit (or is a decompression bomb)."""


class CorruptMedia(BadInput):
    """The content looks like an accepted format but cannot be decoded."""


class InvalidContext(BadInput):
    """The clinical context or consent record is missing something or contradicts itself."""


class InvalidSetting(BadInput):
    """A setting, such as a ``FHIR_IMAGES_*`` environment variable, is not usable."""


class PolicyNotFound(BadInput):
    """No policy pack has that name."""


class OutboxError(FhirImagesError):
    """The outbox could not be read or written."""


class EntryNotFound(OutboxError):
    """No outbox entry has that id."""


class AuditError(FhirImagesError):
    """The audit trail could not be written; the act it was to record was not done."""


class ServerError(FhirImagesError):
    """A FHIR server answered with an error, or did not answer.

    ``status`` is the HTTP status (None when nothing was received), ``issues``
    the OperationOutcome issues the server sent (severity, code, diagnostics),
    ``retry_safe`` whether sending the same request again is harmless.
    """

    retry_safe_default = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        issues: list[dict[str, Any]] | None = None,
        retry_safe: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.issues = issues or []
        self.retry_safe = self.retry_safe_default if retry_safe is None else retry_safe
        self.retry_after = retry_after


class ServerUnavailable(ServerError):
    """The server could not be reached, timed out, or answered 502/503/504."""

    retry_safe_default = True


class RateLimited(ServerError):
    """429: the server asks the client to slow down (see ``retry_after``)."""

    retry_safe_default = True


class AuthenticationFailed(ServerError):
    """401 or 403: credentials missing, wrong, or not allowed to do this."""


class ResourceNotFound(ServerError):
    """404 or 410: no such resource (or it was deleted)."""


class VersionConflict(ServerError):
    """409 or 412: the resource changed since it was read (stale If-Match)."""


class InvalidRequest(ServerError):
    """400 or 422: the server rejected what was sent; ``issues`` says why."""


class PayloadTooLarge(ServerError):
    """413: the request body is larger than the server accepts (its limit must be raised)."""


class BadResponse(ServerError):
    """The server's answer is not the FHIR JSON expected."""


class IncompatibleServer(ServerError):
    """The server is not FHIR R4, or lacks something fhir-images needs."""


class LabelError(FhirImagesError):
    """A security-label change would remove or lower a label without being asked to."""


class LabelVerificationFailed(LabelError):
    """After a write, the server's labels are not the ones sent."""


class ActionRefused(FhirImagesError):
    """The rules forbid this action: retention not over, a legal hold, no consent for it."""


class UnsafeServer(ActionRefused):
    """The server lacks something that protects sensitive images: labels that can be set and
    read back, a ``_security`` search it applies, or a place for the audit trail."""
