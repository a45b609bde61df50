"""The exceptions fhir-images raises.

Every exception derives from :class:`FhirImagesError`, so one ``except`` clause
catches them all. The hierarchy::

    FhirImagesError
    ├── BadInput                  the caller's input cannot be used (CLI exit code 2)
    │   ├── UnsupportedMediaType  content is not an accepted image/video/audio format
    │   ├── ContentTypeMismatch   content contradicts the type the sender claimed
    │   ├── InputTooLarge         over the configured byte or pixel limits
    │   ├── CorruptMedia          the content claims a format but cannot be read as it
    │   └── InvalidContext        the clinical context or consent record is invalid
    ├── PolicyNotFound            no policy pack of that name
    └── OutboxError               the local outbox could not be read or written
        └── EntryNotFound         no outbox entry with that id

None of them is "safe to retry" as is: each needs the input or the
configuration changed first, except :class:`OutboxError` raised by an I/O
failure (disk full, permissions), which may succeed once that is fixed.

Messages never contain patient identifiers, names or image bytes.
"""

from __future__ import annotations


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


class PolicyNotFound(FhirImagesError):
    """No policy pack has that name."""


class OutboxError(FhirImagesError):
    """The outbox could not be read or written."""


class EntryNotFound(OutboxError):
    """No outbox entry has that id."""
