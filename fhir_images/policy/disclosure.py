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
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from .. import _codes as c
from .._codes import Confidentiality
from .._inputs import InputModel, reference
from ..fhir.views import ApprovalView, BinaryView, ConsentView, ImageView, Labels

Purpose = Literal[
    "TREAT", "COC", "TRAIN", "HRESCH", "PATRQT", "FAMRQT", "PWATRNY", "HLEGAL", "ETREAT", "BTG"
]
"""Why the record is asked for (HL7 v3 PurposeOfUse): care, continuity of care, teaching,
research, the patient's or family's request, a legal request, emergency care, break-glass."""
Role = Literal["clinician", "patient", "family", "legal", "researcher", "teacher"]
"""Who is asking, in what capacity."""

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
    """For one image and one request: release it, release it after a clinician's approval, or
    withhold it."""

    RELEASE = "release"
    APPROVE = "approve"
    WITHHOLD = "withhold"


_RANK = {Verdict.RELEASE: 0, Verdict.APPROVE: 1, Verdict.WITHHOLD: 2}


Reference = Annotated[str, reference()]


Clearance = Literal["N", "R", "V"]


class DisclosureRequest(InputModel):
    """Who asks, in what role, with what clearance, for what purpose, for whom."""

    input_name: ClassVar[str] = "request"

    purpose: Purpose
    requester: Reference = Field(
        description="Reference to who asks (Practitioner/.., Patient/.., ...)"
    )
    role: Role
    clearance: Clearance = "N"
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


def approval_refusal(
    approval: ApprovalView, media: str, req: DisclosureRequest, now: datetime
) -> str | None:
    """Why this approval does not allow this release, or None when it does."""
    if approval.status != "accepted":
        return f"{approval.ref} is {approval.status}"
    if approval.media != media:
        return f"{approval.ref} is for another image"
    if approval.purpose != req.purpose:
        return f"{approval.ref} is for another purpose"
    if approval.requester != req.requester or approval.recipient != req.receiver:
        return f"{approval.ref} is for another requester or recipient"
    if not approval.approver or not approval.approver.startswith(
        ("Practitioner/", "PractitionerRole/")
    ):
        return f"{approval.ref} does not name a clinician as approver"
    if approval.approver in (req.requester, req.recipient):
        return f"{approval.ref} was approved by the requester: approval must come from someone else"
    if approval.approved_at is None or approval.approved_at > now:
        return f"{approval.ref} has no approval time in the past"
    if approval.valid_until is not None and approval.valid_until < now:
        return f"{approval.ref} has expired"
    return None


@dataclass(frozen=True)
class ImageRecord:
    """One image as read from the server, with its Binary (labels and securityContext, not the
    bytes), the Consents that name it and approvals of its disclosure.

    ``binary`` is None when the image's content is not a Binary on the server: then
    ``binary_error`` says why (``None`` and no error: the content is inline in the image).
    """

    image: ImageView
    consents: tuple[ConsentView, ...] = ()
    consent_error: str | None = None
    binary: BinaryView | None = None
    binary_error: str | None = None
    approvals: tuple[ApprovalView, ...] = ()

    @property
    def ref(self) -> str:
        return self.image.ref

    @property
    def labels(self) -> Labels:
        """Every label of the image and its Binary: what the bytes going out must honour."""
        return self.image.labels | (self.binary.labels if self.binary else Labels())

    @property
    def confidentiality(self) -> Confidentiality:
        """The highest of the image's (its labels and any it declares) and the Binary's (each V
        when it has none)."""
        level = self.image.confidentiality
        if self.binary is not None:
            level = max(level, self.binary.labels.confidentiality)
        return level


@dataclass(frozen=True)
class Finding:
    verdict: Verdict
    reason: str


@dataclass(frozen=True)
class DisclosureDecision:
    """The verdict for one image (``media``: its reference, a Media on R4 or a DocumentReference
    on R5), its reasons, its confidentiality, and the approval used."""

    media: str
    verdict: Verdict
    reasons: tuple[str, ...]
    confidentiality: str
    approval: ApprovalView | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "media": self.media,
            "verdict": self.verdict.value,
            "reasons": list(self.reasons),
            "confidentiality": self.confidentiality,
            "approval": self.approval.ref if self.approval else None,
            "approver": self.approval.approver if self.approval else None,
        }


def consent_required(record: ImageRecord) -> bool:
    """Consent is implicit only for the kinds of image the GMC lists (G3), and only when both
    the image and its bytes carry the device-asserted label written when it was stored."""
    if not record.image.implicit_consent:
        return True
    return record.binary is not None and c.DEVAST not in record.binary.labels


def _bytes_findings(record: ImageRecord) -> list[Finding]:
    """The bytes must be this image's: a Binary naming this image as its securityContext."""
    if record.binary is None:
        if record.binary_error:
            return [Finding(Verdict.WITHHOLD, f"the image's bytes: {record.binary_error}")]
        if not record.image.has_inline_data:
            return [Finding(Verdict.WITHHOLD, "the image has no content on this server")]
        return []
    context = record.binary.security_context
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
    codes = record.labels.codes
    conf = record.confidentiality
    unlabelled = [
        name
        for name, own in (
            ("image", record.image.labels),
            ("Binary", record.binary.labels if record.binary else None),
        )
        if own is not None and not own.has_confidentiality
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
    subject = record.image.subject
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
        active = [x for x in record.consents if x.active]
        if not record.consents and not record.consent_error:
            out.append(Finding(Verdict.WITHHOLD, "no Consent found for this image"))
        elif record.consents and not active:
            statuses = ", ".join(f"{x.ref} is {x.status}" for x in record.consents)
            out.append(Finding(Verdict.WITHHOLD, f"consent withdrawn or not active ({statuses})"))
        governed = _CONSENT_PURPOSE.get(req.purpose)
        if governed and active:
            answers = [x.provision_for(governed) for x in active]
            # every active Consent must permit; a deny anywhere wins (Consents that disagree)
            for answer in answers:
                if not answer.permits:
                    out.append(Finding(Verdict.WITHHOLD, answer.why))
            if all(answer.permits for answer in answers):
                out.append(Finding(Verdict.RELEASE, "; ".join(a.why for a in answers)))

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
    used: ApprovalView | None = None
    if verdict is Verdict.APPROVE:
        at = now or datetime.now(UTC)
        refusals = []
        for approval in record.approvals:
            why_not = approval_refusal(approval, record.ref, req, at)
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


def releasable_labels(record: ImageRecord) -> Labels:
    """The labels a released copy of the image and of its bytes carry: every label of the image
    and the Binary, the highest confidentiality code alone, sensitivity codes (which reveal
    private facts) removed. Never lower than either resource's own."""
    keys = {k for k in record.labels.without_sensitivity() if k[0] != c.V3_CONFIDENTIALITY}
    keys.add((c.V3_CONFIDENTIALITY, record.confidentiality.name))
    return Labels(frozenset(keys))


def high_water_mark(decisions: Iterable[DisclosureDecision]) -> str:
    released = [
        Confidentiality[d.confidentiality] for d in decisions if d.verdict is Verdict.RELEASE
    ]
    return max(released, default=Confidentiality.N).name
