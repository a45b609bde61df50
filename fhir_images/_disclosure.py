"""Disclosure: which of a patient's images may be released to whom, for what (pure, no I/O).

For each image the decision is ``release``, ``approve`` (release only after a
clinician's approval) or ``withhold``, with reasons that name the label or the
consent provision behind them. The most restrictive finding wins. It fails
closed: no confidentiality label counts as V, a missing, unreadable or
withdrawn Consent where one is required means withhold, and a purpose the
consent does not mention is refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from . import _codes as c
from ._codes import Confidentiality

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


class DisclosureRequest(BaseModel):
    """Who asks, in what role, with what clearance, for what purpose, for whom."""

    model_config = ConfigDict(extra="forbid")

    purpose: Purpose
    requester: str = Field(description="Reference to who asks (Practitioner/.., Patient/.., ...)")
    role: Role
    clearance: Literal["N", "R", "V"] = "N"
    recipient: str | None = Field(default=None, description="Who receives it, if not the requester")
    approved: frozenset[str] = Field(
        default=frozenset(),
        description="Media references a clinician has approved for this disclosure",
    )

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
class ImageRecord:
    """One Media as read from the server, with the Consents that reference it."""

    media: dict[str, Any]
    consents: list[dict[str, Any]] = field(default_factory=list)
    consent_error: str | None = None

    @property
    def ref(self) -> str:
        return f"Media/{self.media.get('id')}"

    @property
    def labels(self) -> set[tuple[str, str]]:
        return {
            (str(s.get("system")), str(s.get("code")))
            for s in self.media.get("meta", {}).get("security", [])
        }


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

    def as_dict(self) -> dict[str, Any]:
        return {
            "media": self.media,
            "verdict": self.verdict.value,
            "reasons": list(self.reasons),
            "confidentiality": self.confidentiality,
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
    """Implicit consent (G3) only for device-asserted images (X-ray, ultrasound, ...)."""
    return (c.V3_OBSERVATION_VALUE, "DEVAST") not in record.labels


def provision_for(consent: dict[str, Any], purpose: str) -> tuple[str, str]:
    """('permit'|'deny', why) for a purpose, from the Consent's provision tree."""
    root = consent.get("provision") or {}
    cid = f"Consent/{consent.get('id')}"
    for nested in root.get("provision", []) or []:
        codes = {p.get("code") for p in nested.get("purpose", []) or []}
        if purpose in codes:
            kind = nested.get("type", "deny")
            return kind, f"{cid} provision {kind}s {purpose}"
    kind = root.get("type", "deny")
    return kind, f"{cid} has no provision for {purpose}; its base rule is {kind}"


def _findings(record: ImageRecord, req: DisclosureRequest) -> list[Finding]:
    out: list[Finding] = []
    labels = record.labels
    codes = {code for _, code in labels}
    conf = confidentiality_of(labels)
    if not any(system == c.V3_CONFIDENTIALITY for system, _ in labels):
        out.append(
            Finding(
                Verdict.WITHHOLD if req.clearance != "V" else Verdict.APPROVE,
                "no confidentiality label: treated as V",
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
            out.append(Finding(Verdict.WITHHOLD, "PATRQT: the image is not of the requester"))
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
            # every active Consent must permit; a deny anywhere wins
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


def decide_one(record: ImageRecord, req: DisclosureRequest) -> DisclosureDecision:
    findings = _findings(record, req)
    verdict = max((f.verdict for f in findings), key=_RANK.__getitem__, default=Verdict.RELEASE)
    reasons = [f.reason for f in findings if f.verdict is verdict] or ["nothing restricts it"]
    if verdict is Verdict.APPROVE and record.ref in req.approved:
        verdict = Verdict.RELEASE
        reasons = [*reasons, f"approved for this disclosure ({record.ref})"]
    return DisclosureDecision(
        record.ref, verdict, tuple(reasons), confidentiality_of(record.labels).name
    )


def decide_disclosure(
    records: Iterable[ImageRecord], req: DisclosureRequest
) -> list[DisclosureDecision]:
    """Decide, image by image, what may be released for this request."""
    return [decide_one(r, req) for r in records]


def releasable_labels(security: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """A released copy's labels: sensitivity codes (which reveal private facts) removed."""
    return [
        s for s in security if (str(s.get("system")), str(s.get("code"))) not in c.SENSITIVITY_CODES
    ]


def high_water_mark(decisions: Iterable[DisclosureDecision]) -> str:
    released = [
        Confidentiality[d.confidentiality] for d in decisions if d.verdict is Verdict.RELEASE
    ]
    return max(released, default=Confidentiality.N).name
