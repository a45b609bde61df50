"""Typed read views of what fhir-images reads from a server: the same for every FHIR version.

A view is made by a version module (:mod:`fhir_images.fhir.r4`) from a resource as the server
sent it; everything outside the FHIR layer reads views, never FHIR field names. Each view keeps
the resource it came from (``raw``) only so that the FHIR layer can write a change back.

One definition each of: a resource's confidentiality (:attr:`Labels.confidentiality`), implicit
consent (:attr:`ImageView.implicit_consent`) and an image's consents (the repository's
:meth:`~fhir_images.fhir.repository.Repository.consents_for_image`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from .. import _codes as c
from .._codes import Confidentiality, Label
from .._context import IMPLICIT_CONSENT_KINDS, ImageKind


@dataclass(frozen=True)
class Labels:
    """A resource's security labels (``meta.security``)."""

    keys: frozenset[tuple[str, str]] = frozenset()

    @classmethod
    def of(cls, codings: Iterable[dict[str, Any]]) -> Labels:
        return cls(frozenset((str(x.get("system", "")), str(x.get("code", ""))) for x in codings))

    @classmethod
    def from_labels(cls, labels: Iterable[Label]) -> Labels:
        return cls(frozenset((x.system, x.code) for x in labels))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(sorted(self.keys))

    def __contains__(self, item: object) -> bool:
        if isinstance(item, Label):
            return (item.system, item.code) in self.keys
        return item in self.keys

    def __or__(self, other: Labels) -> Labels:
        return Labels(self.keys | other.keys)

    @property
    def codes(self) -> frozenset[str]:
        return frozenset(code for _, code in self.keys)

    @property
    def has_confidentiality(self) -> bool:
        return any(s == c.V3_CONFIDENTIALITY for s, _ in self.keys)

    @property
    def confidentiality(self) -> Confidentiality:
        """The highest confidentiality code present; V when there is none (fail closed)."""
        levels = [
            Confidentiality[code]
            for system, code in self.keys
            if system == c.V3_CONFIDENTIALITY and code in Confidentiality.__members__
        ]
        return max(levels) if levels else Confidentiality.V

    def codings(self) -> list[dict[str, str]]:
        return [{"system": s, "code": code} for s, code in sorted(self.keys)]

    def without_sensitivity(self) -> Labels:
        return Labels(frozenset(k for k in self.keys if k not in c.SENSITIVITY_CODES))


@dataclass(frozen=True)
class ImageView:
    """An image (R4 Media, R5 DocumentReference) as the record holds it."""

    ref: str
    labels: Labels
    subject: str | None
    content_url: str | None
    content_type: str | None
    content_hash: str | None
    content_size: int | None
    has_inline_data: bool
    created: datetime | None
    kind: ImageKind
    purpose: str | None
    operator: str | None
    sha256: str | None
    version_id: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)
    #: the confidentiality the resource states in its content as well as in its labels (R5's
    #: DocumentReference.securityLabel, as IHE MHD carries it); None where there is no such
    declared_confidentiality: Confidentiality | None = None

    @property
    def confidentiality(self) -> Confidentiality:
        """The higher of the labels' and the declared confidentiality (V when unlabelled)."""
        level = self.labels.confidentiality
        if self.declared_confidentiality is not None:
            level = max(level, self.declared_confidentiality)
        return level

    @property
    def implicit_consent(self) -> bool:
        """Consent is implicit in the investigation (GMC, G3): only for the kinds the GMC lists,
        and only when the record says so by the image's own provenance label (DEVAST: the
        device made it); anything else needs a Consent."""
        return self.kind in IMPLICIT_CONSENT_KINDS and c.DEVAST in self.labels


@dataclass(frozen=True)
class BinaryView:
    """A Binary without its bytes: its labels, tags and securityContext."""

    ref: str
    labels: Labels
    security_context: str | None
    tags: frozenset[tuple[str, str]]
    content_type: str | None
    version_id: str | None


@dataclass(frozen=True)
class Provision:
    """What a Consent says about one purpose: ``permit`` or ``deny``, and why."""

    kind: str
    why: str

    @property
    def permits(self) -> bool:
        return self.kind == "permit"


@dataclass(frozen=True)
class ConsentView:
    """A Consent about one or more images."""

    ref: str
    status: str
    date_time: datetime | None
    ended: datetime | None
    images: tuple[str, ...]
    performers: tuple[str, ...]
    record_keys: frozenset[str]
    labels: Labels
    version_id: str | None
    provisions: tuple[tuple[frozenset[str], str], ...]
    base_rule: str
    raw: dict[str, Any] = field(repr=False, compare=False)
    #: (holder, basis) of the parental responsibility of whoever consented, when recorded
    parental_responsibility: tuple[str, str] | None = None

    @property
    def active(self) -> bool:
        return self.status == "active"

    def provision_for(self, purpose: str) -> Provision:
        """The Consent's answer for a purpose of use, from its nested provisions (a deny when it
        names none and its base rule is a deny)."""
        for purposes, kind in self.provisions:
            if purpose in purposes:
                kind = "permit" if kind == "permit" else "deny"
                return Provision(kind, f"{self.ref}: its provision for {purpose} is a {kind}")
        kind = "permit" if self.base_rule == "permit" else "deny"
        return Provision(
            kind, f"{self.ref} has no provision for {purpose}; its base rule is {kind}"
        )

    @property
    def latest_moment(self) -> datetime | None:
        """When the last thing happened to it: given, or ended (withdrawn)."""
        stamps = [t for t in (self.date_time, self.ended) if t is not None]
        return max(stamps) if stamps else None


@dataclass(frozen=True)
class PatientView:
    ref: str
    birth_date: date | None
    deceased: date | None


@dataclass(frozen=True)
class TaskView:
    ref: str
    status: str
    description: str | None
    version_id: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class ApprovalView:
    """An approval of one disclosure, as recorded on the server (an R4 Task)."""

    ref: str
    status: str
    media: str
    purpose: str | None
    requester: str | None
    recipient: str | None
    approver: str | None
    approved_at: datetime | None
    valid_until: datetime | None
