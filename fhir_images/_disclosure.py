"""Disclosure: which of a patient's images may be released to whom, for what (pure, no I/O).

For each image the decision is ``release``, ``approve`` (release only against
an approval recorded on the server by someone other than the requester) or
``withhold``, with reasons that name the label or the consent provision behind
them. The most restrictive finding wins. It fails closed:

* the labels that count are the highest of the Media's and its Binary's (the
  bytes are what goes out); no confidentiality label counts as V;
* the Binary must name this Media as its ``securityContext``: bytes that
  belong to another resource, or say nothing, are withheld;
* a missing, unreadable or withdrawn Consent where one is required means
  withhold, and so does a purpose the consent does not mention, or Consents of
  one image that disagree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from . import _codes as c
from ._codes import Confidentiality
from ._inputs import InputModel, reference

Purpose = Literal[
    "TREAT", "COC", "TRAIN", "HRESCH", "PATRQT", "FAMRQT", "PWATRNY", "HLEGAL", "ETREAT", "BTG"
]
Role = Literal["clinician", "patient", "family", "legal", "researcher", "teacher"]

#: Purposes the consent's provisions govern, and the provision purpose each one is read from
_CONSENT_PURPOSE = {
    "TREAT": "TREAT",
    "ETREAT": "TREAT",
    "BTG": "TREAT",
    "COC": "COC",
    "TRAIN": "TRAIN",
    "HRESCH": "HRESCH",
}
_PATIENT_SIDE = {"PATRQT", "FAMRQT", "PWATRNY"}
_EMERGENCY = {"ETREAT", "BTG"}


class Verdict(StrEnum):
    RELEASE = "release"
    APPROVE = "approve"
    WITHHOLD = "withhold"


_RANK = {Verdict.RELEASE: 0, Verdict.APPROVE: 1, Verdict.WITHHOLD: 2}


Reference = Annotated[str, reference()]


class DisclosureRequest(InputModel):
    """Who asks, in what role, with what clearance, for what purpose, for whom."""

    input_name: ClassVar[str] = "request"

    purpose: Purpose
    requester: Reference = Field(
        description="Reference to who asks (Practitioner/.., Patient/.., ...)"
    )
    role: Role
    clearance: Literal["N", "R", "V"] = "N"
    recipient: Reference | None = Field(
        default=None, description="Who receives it, if not the requester"
    )

    @property
    def receiver(self) -> str:
        return self.recipient or self.requester

    @model_validator(mode="after")
    def _consistent(self) -> DisclosureRequest:
        if self.purpose == "PATRQT" and (
            self.role != "patient" or not self.requester.startswith("Patient/")
        ):
            raise ValueError(
                "PATRQT is the patient's own request: role patient, requester Patient/.."
            )
        if self.purpose == "FAMRQT" and self.role != "family":
            raise ValueError("FAMRQT is a family member's request: role family")
        return self


@dataclass(frozen=True)
class Approval:
    """An approval of one disclosure, as recorded on the server (a Task)."""

    ref: str
    status: str
    media: str
    purpose: str | None
    requester: str | None
    recipient: str | None
    approver: str | None
    approved_at: datetime | None
    valid_until: datetime | None

    def covers(self, media: str, req: DisclosureRequest, now: datetime) -> str | None:
        """Why this approval does not allow this release, or None when it does."""
        if self.status != "accepted":
            return f"{self.ref} is {self.status}"
        if self.media != media:
            return f"{self.ref} is for another image"
        if self.purpose != req.purpose:
            return f"{self.ref} is for another purpose"
        if self.requester != req.requester or self.recipient != req.receiver:
            return f"{self.ref} is for another requester or recipient"
        if not self.approver or not self.approver.startswith(
            ("Practitioner/", "PractitionerRole/")
        ):
            return f"{self.ref} does not name a clinician as approver"
        if self.approver in (req.requester, req.recipient):
            return f"{self.ref} was approved by the requester: approval must come from someone else"
        if self.approved_at is None or self.approved_at > now:
            return f"{self.ref} has no approval time in the past"
        if self.valid_until is not None and self.valid_until < now:
            return f"{self.ref} has expired"
        return None


@dataclass(frozen=True)
class ImageRecord:
    """One Media as read from the server, with its Binary (labels and securityContext, not the
    bytes), the Consents that reference it and approvals of its disclosure.

    ``binary`` is None when the Media's content is not a Binary on the server: then
    ``binary_error`` says why (``None`` and no error: the content is inline in the Media).
    """

    media: dict[str, Any]
    consents: list[dict[str, Any]] = field(default_factory=list)
    consent_error: str | None = None
    binary: dict[str, Any] | None = None
    binary_error: str | None = None
    approvals: tuple[Approval, ...] = ()

    @property
    def ref(self) -> str:
        return f"Media/{self.media.get('id')}"

    @property
    def media_labels(self) -> set[tuple[str, str]]:
        return _keys(self.media.get("meta", {}).get("security", []))

    @property
    def binary_labels(self) -> set[tuple[str, str]]:
        return _keys((self.binary or {}).get("meta", {}).get("security", []))

    @property
    def labels(self) -> set[tuple[str, str]]:
        """Every label of the Media and its Binary: what the bytes going out must honour."""
        return self.media_labels | self.binary_labels

    @property
    def confidentiality(self) -> Confidentiality:
        """The highest of the Media's and the Binary's (each V when it has none)."""
        level = confidentiality_of(self.media_labels)
        if self.binary is not None:
            level = max(level, confidentiality_of(self.binary_labels))
        return level


def _keys(security: Iterable[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(str(s.get("system")), str(s.get("code"))) for s in security}


@dataclass(frozen=True)
class Finding:
    verdict: Verdict
    reason: str


@dataclass(frozen=True)
class DisclosureDecision:
    media: str
    verdict: Verdict
    reasons: tuple[str, ...]
    confidentiality: str
    approval: Approval | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "media": self.media,
            "verdict": self.verdict.value,
            "reasons": list(self.reasons),
            "confidentiality": self.confidentiality,
            "approval": self.approval.ref if self.approval else None,
            "approver": self.approval.approver if self.approval else None,
        }


def confidentiality_of(labels: Iterable[tuple[str, str]]) -> Confidentiality:
    """The highest confidentiality code present; V when there is none (fail closed)."""
    codes = [
        Confidentiality[code]
        for system, code in labels
        if system == c.V3_CONFIDENTIALITY and code in Confidentiality.__members__
    ]
    return max(codes) if codes else Confidentiality.V


def consent_required(record: ImageRecord) -> bool:
    """Implicit consent (G3) only for device-asserted images (X-ray, ultrasound, ...): the
    Media and its Binary (if any) must both say so."""
    devast = (c.V3_OBSERVATION_VALUE, "DEVAST")
    return devast not in record.media_labels or (
        record.binary is not None and devast not in record.binary_labels
    )


def provision_for(consent: dict[str, Any], purpose: str) -> tuple[str, str]:
    """('permit'|'deny', why) for a purpose, from the Consent's provision tree."""
    root = consent.get("provision") or {}
    cid = f"Consent/{consent.get('id')}"
    for nested in root.get("provision", []) or []:
        codes = {p.get("code") for p in nested.get("purpose", []) or []}
        if purpose in codes:
            kind = "permit" if nested.get("type") == "permit" else "deny"
            return kind, f"{cid}: its provision for {purpose} is a {kind}"
    kind = "permit" if root.get("type") == "permit" else "deny"
    return kind, f"{cid} has no provision for {purpose}; its base rule is {kind}"


def _bytes_findings(record: ImageRecord) -> list[Finding]:
    """The bytes must be this image's: a Binary naming this Media as its securityContext."""
    content = record.media.get("content", {})
    if record.binary is None:
        if record.binary_error:
            return [Finding(Verdict.WITHHOLD, f"the image's bytes: {record.binary_error}")]
        if not content.get("data"):
            return [Finding(Verdict.WITHHOLD, "the image has no content on this server")]
        return []
    context = record.binary.get("securityContext", {}).get("reference")
    if context is None:
        return [
            Finding(
                Verdict.WITHHOLD,
                "the Binary does not name the image it belongs to (no securityContext)",
            )
        ]
    if context != record.ref:
        return [
            Finding(
                Verdict.WITHHOLD,
                "the Binary belongs to another resource (its securityContext names another)",
            )
        ]
    return []


def _findings(record: ImageRecord, req: DisclosureRequest) -> list[Finding]:
    out: list[Finding] = _bytes_findings(record)
    labels = record.labels
    codes = {code for _, code in labels}
    conf = record.confidentiality
    unlabelled = [
        name
        for name, own in (("image", record.media_labels), ("Binary", record.binary_labels))
        if (name == "image" or record.binary is not None)
        and not any(system == c.V3_CONFIDENTIALITY for system, _ in own)
    ]
    if unlabelled:
        out.append(
            Finding(
                Verdict.WITHHOLD if req.clearance != "V" else Verdict.APPROVE,
                f"no confidentiality label on the {' or the '.join(unlabelled)}: treated as V",
            )
        )

    # identifiable images never go out for teaching or research
    if req.purpose in ("TRAIN", "HRESCH"):
        out.append(
            Finding(
                Verdict.WITHHOLD,
                f"{req.purpose}: identifiable images are not released for teaching or "
                "research; make an anonymised copy where the Consent permits it",
            )
        )

    # the patient's own copy: only their own images
    subject = record.media.get("subject", {}).get("reference")
    if req.purpose == "PATRQT":
        if subject != req.requester:
            out.append(
                Finding(
                    Verdict.WITHHOLD, "PATRQT: the record says the image is not of the requester"
                )
            )
        elif conf >= Confidentiality.V:
            out.append(
                Finding(
                    Verdict.APPROVE,
                    "PATRQT: a very restricted (V) image is released to the patient only after a "
                    "clinician has reviewed it (G10, serious harm)",
                )
            )
        else:
            out.append(Finding(Verdict.RELEASE, "PATRQT: the patient's own image (G10)"))

    # consent
    if consent_required(record):
        if record.consent_error:
            out.append(
                Finding(Verdict.WITHHOLD, f"the Consent could not be read ({record.consent_error})")
            )
        active = [x for x in record.consents if x.get("status") == "active"]
        if not record.consents and not record.consent_error:
            out.append(Finding(Verdict.WITHHOLD, "no Consent found for this image"))
        elif record.consents and not active:
            statuses = ", ".join(
                f"Consent/{x.get('id')} is {x.get('status')}" for x in record.consents
            )
            out.append(Finding(Verdict.WITHHOLD, f"consent withdrawn or not active ({statuses})"))
        governed = _CONSENT_PURPOSE.get(req.purpose)
        if governed and active:
            answers = [provision_for(x, governed) for x in active]
            # every active Consent must permit; a deny anywhere wins (Consents that disagree)
            for kind, why in answers:
                if kind != "permit":
                    out.append(Finding(Verdict.WITHHOLD, why))
            if all(kind == "permit" for kind, _ in answers):
                out.append(Finding(Verdict.RELEASE, "; ".join(why for _, why in answers)))

    # clearance for restricted images
    own_copy = req.purpose == "PATRQT"
    if conf >= Confidentiality.R and not own_copy:
        cleared = Confidentiality[req.clearance] >= conf
        if req.purpose in _EMERGENCY and conf == Confidentiality.R:
            out.append(
                Finding(
                    Verdict.RELEASE, f"{req.purpose}: R released for emergency treatment, audited"
                )
            )
        elif req.purpose in _EMERGENCY:
            out.append(
                Finding(
                    Verdict.APPROVE, f"{req.purpose}: a V image needs approval even in an emergency"
                )
            )
        elif not cleared:
            out.append(
                Finding(
                    Verdict.WITHHOLD,
                    f"labelled {conf.name}; requester clearance is {req.clearance}",
                )
            )
        elif req.purpose in ("FAMRQT", "PWATRNY", "HLEGAL"):
            out.append(
                Finding(
                    Verdict.APPROVE,
                    f"labelled {conf.name}: a {req.purpose} disclosure "
                    "of restricted material needs a clinician's review",
                )
            )

    # handling caveats
    if "NOPAT" in codes and (req.purpose in _PATIENT_SIDE or req.role in ("patient", "family")):
        out.append(
            Finding(
                Verdict.APPROVE,
                "NOPAT: not shown to the patient or family without a clinician's authorisation",
            )
        )
    if "HUAPRV" in codes:
        out.append(Finding(Verdict.APPROVE, "HUAPRV: a person must approve each disclosure"))
    if req.purpose == "HLEGAL" and conf < Confidentiality.R:
        out.append(Finding(Verdict.RELEASE, "HLEGAL: normal-confidentiality image"))
    return out


def decide_one(
    record: ImageRecord, req: DisclosureRequest, *, now: datetime | None = None
) -> DisclosureDecision:
    """The verdict for one image. An ``approve`` verdict becomes ``release`` only through an
    approval in ``record.approvals`` that covers exactly this request (see :meth:`Approval.covers`)
    at ``now`` (default: the current time)."""
    findings = _findings(record, req)
    verdict = max((f.verdict for f in findings), key=_RANK.__getitem__, default=Verdict.RELEASE)
    reasons = [f.reason for f in findings if f.verdict is verdict] or ["nothing restricts it"]
    used: Approval | None = None
    if verdict is Verdict.APPROVE:
        at = now or datetime.now(UTC)
        refusals = []
        for approval in record.approvals:
            why_not = approval.covers(record.ref, req, at)
            if why_not is None:
                used = approval
                break
            refusals.append(why_not)
        if used is not None:
            verdict = Verdict.RELEASE
            reasons = [*reasons, f"approved by {used.approver} ({used.ref})"]
        else:
            reasons += refusals
    return DisclosureDecision(
        record.ref, verdict, tuple(reasons), record.confidentiality.name, used
    )


def decide_disclosure(
    records: Iterable[ImageRecord], req: DisclosureRequest, *, now: datetime | None = None
) -> list[DisclosureDecision]:
    """Decide, image by image, what may be released for this request."""
    return [decide_one(r, req, now=now) for r in records]


def releasable_labels(record: ImageRecord) -> list[dict[str, str]]:
    """The labels a released copy of the image and of its bytes carry: every label of the Media
    and the Binary, the highest confidentiality code alone, sensitivity codes (which reveal
    private facts) removed. Never lower than either resource's own."""
    keys = {k for k in record.labels if k not in c.SENSITIVITY_CODES}
    keys = {k for k in keys if k[0] != c.V3_CONFIDENTIALITY}
    keys.add((c.V3_CONFIDENTIALITY, record.confidentiality.name))
    return [{"system": s, "code": code} for s, code in sorted(keys)]


def high_water_mark(decisions: Iterable[DisclosureDecision]) -> str:
    released = [
        Confidentiality[d.confidentiality] for d in decisions if d.verdict is Verdict.RELEASE
    ]
    return max(released, default=Confidentiality.N).name
