"""The ingest rules: clinical context + consent record -> findings, and the labels.

Pure functions, no I/O. Each check returns the findings it makes; a pack's decision is the
most serious outcome among them (refuse > hold > store). Every finding names its code in the
one table of reasons (:mod:`.reasons`), which fixes its outcome and the rule it comes from
(G1-G13 of the GMC guidance as summarised in the domain brief, or S1 for the strict pack).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from .. import _codes as c
from .._codes import Confidentiality, Label
from .._context import (
    IMPLICIT_CONSENT_KINDS,
    ClinicalContext,
    ConsentGiver,
    ConsentRecord,
    Maker,
)
from .._exceptions import InvalidContext
from .._requests import ImageRequest
from .reasons import REASONS, Outcome

ADULT_AGE = 18
PRESUMED_COMPETENT_AGE = 16  # Family Law Reform Act 1969 s8; Mental Capacity Act 2005
ADOLESCENT_AGE = 12


_SEVERITY = {Outcome.STORE: 0, Outcome.HOLD: 1, Outcome.REFUSE: 2}


class ConsentState(StrEnum):
    """The consent an image has: implicit (an X-ray, ultrasound, endoscopy...), recorded, or
    missing."""

    IMPLICIT = "implicit"
    RECORDED = "recorded"
    MISSING = "missing"


@dataclass(frozen=True)
class Reason:
    """One finding: the rule, what it decided, and what a clinician should read."""

    rule: str
    outcome: Outcome
    text: str
    code: str

    def as_dict(self) -> dict[str, str]:
        return {
            "rule": self.rule,
            "outcome": self.outcome.value,
            "code": self.code,
            "text": self.text,
        }


@dataclass(frozen=True)
class SecurityLabels:
    """The HL7 security labels of an image: one confidentiality code, the sensitivity, the
    handling caveats and the provenance of the image."""

    confidentiality: Confidentiality
    sensitivity: tuple[Label, ...] = ()
    caveats: tuple[Label, ...] = ()
    provenance: tuple[Label, ...] = ()

    def all(self) -> list[Label]:
        """Every label, confidentiality first, as they go in ``meta.security``."""
        return [c.conf(self.confidentiality), *self.sensitivity, *self.caveats, *self.provenance]

    def without_provenance(self) -> SecurityLabels:
        return SecurityLabels(self.confidentiality, self.sensitivity, self.caveats, ())


@dataclass(frozen=True)
class Decision:
    """What the rules decided for an image: the outcome, every reason (with its rule and a
    text for the clinician), the labels, the consent it rests on, the policy pack and the
    patient's age band."""

    outcome: Outcome
    reasons: tuple[Reason, ...]
    labels: SecurityLabels
    consent: ConsentState
    policy: str
    age_band: str
    notes: tuple[str, ...] = field(default=())

    @property
    def blocking(self) -> tuple[Reason, ...]:
        """The reasons that stop the image from being stored."""
        return tuple(r for r in self.reasons if r.outcome is not Outcome.STORE)


# ---------------------------------------------------------------- facts the checks share


@dataclass(frozen=True)
class Situation:
    ctx: ClinicalContext
    consent: ConsentRecord | None
    #: the clinician's request the image answers, when it is linked to one (W5)
    request: ImageRequest | None = None

    @property
    def age(self) -> int:
        return self.ctx.age_years()

    @property
    def child(self) -> bool:
        return self.age < ADULT_AGE

    @property
    def implicit_kind(self) -> bool:
        return self.ctx.kind in IMPLICIT_CONSENT_KINDS

    @property
    def intimate(self) -> bool:
        """Intimate, or not stated (fail closed)."""
        return self.ctx.intimate is not False

    @property
    def patient_made(self) -> bool:
        return self.ctx.made_by is not Maker.CLINICIAN

    @property
    def unsolicited(self) -> bool:
        return self.ctx.solicited is not True

    @property
    def parent_unsolicited_unusual(self) -> bool:
        """G6: sent unsolicited by a parent, and not a routine face-to-face image or intimate."""
        return (
            self.ctx.made_by in (Maker.PARENT, Maker.RELATIVE_OR_CARER)
            and self.unsolicited
            and (self.intimate or self.ctx.routine_in_person is not True)
        )

    @property
    def age_band(self) -> str:
        if not self.child:
            return "adult"
        return "adolescent" if self.age >= ADOLESCENT_AGE else "young-child"


Check = Callable[[Situation], Iterable[Reason]]


def _r(code: str, outcome: Outcome, rule: str, text: str) -> Reason:
    """A finding: its code from the one table of reasons, which fixes its outcome and rules."""
    entry = REASONS[code]
    if outcome is not entry.outcome or rule not in entry.rules:
        raise AssertionError(f"the finding {code} does not match the table of reasons")
    return Reason(rule, outcome, text, code)


STORE, HOLD, REFUSE = Outcome.STORE, Outcome.HOLD, Outcome.REFUSE

# ----------------------------------------------------------------------- default checks


def check_purpose(s: Situation) -> Iterable[Reason]:
    if not (s.ctx.purpose or "").strip():
        yield _r(
            "purpose-missing",
            REFUSE,
            "G8",
            "No clinical purpose recorded. Record the clinical relevance and purpose of the "
            "image (why it is needed for this patient's care); it justifies its use and storage.",
        )
    else:
        yield _r("purpose-recorded", STORE, "G8", "Clinical relevance and purpose recorded.")


def check_consent_needed(s: Situation) -> Iterable[Reason]:
    consent = s.consent
    if s.implicit_kind and consent is None:
        yield _r(
            "consent-implicit",
            STORE,
            "G3",
            f"Consent is implicit for {s.ctx.kind.value.replace('_', ' ')} images: it is part "
            "of the consent to the investigation; no separate consent is needed.",
        )
        return
    if consent is None:
        if s.parent_unsolicited_unusual:
            yield _r(
                "consent-unconfirmed-unsolicited",
                HOLD,
                "G6",
                "Sent unsolicited by a parent or carer, and intimate or not an image that would "
                "be taken in a normal face-to-face consultation: implied consent is not enough. "
                "Confirm with a person with parental responsibility that they consent to you "
                "viewing, storing and (if needed) sharing it, and record that discussion.",
            )
        else:
            rule = "G4" if s.patient_made else "G1"
            yield _r(
                "consent-missing",
                HOLD,
                rule,
                "No consent recorded. Record the patient's consent (or, for a child who cannot "
                "consent, that of a person with parental responsibility): that you explained "
                "why the image helps their care, what form it takes, and that it is stored "
                "securely.",
            )
        return
    perms = consent.permissions
    if not perms.store or not perms.view:
        yield _r(
            "consent-refused",
            REFUSE,
            "G1",
            "The consent record does not allow the image to be "
            + (
                "viewed and stored"
                if not perms.view and not perms.store
                else "stored"
                if not perms.store
                else "viewed"
            )
            + " in the record. Do not store it; record the discussion in the notes instead.",
        )


def check_consent_quality(s: Situation) -> Iterable[Reason]:
    consent = s.consent
    if consent is None:
        return
    ex = consent.explained
    missing = [
        name
        for name, ok in (
            ("why it helps care", ex.why),
            ("its form", ex.form),
            ("secure storage", ex.secure_storage),
        )
        if not ok
    ]
    if missing and not s.implicit_kind:
        yield _r(
            "consent-explanation-incomplete",
            HOLD,
            "G1",
            "The consent record does not show that you explained "
            + ", ".join(missing)
            + ". Record those points of the consent discussion.",
        )
    perms = consent.permissions
    if (perms.teaching or perms.research) and not ex.secondary_uses:
        yield _r(
            "secondary-use-unexplained",
            HOLD,
            "G2",
            "Teaching or research use is permitted but the record does not show that secondary "
            "uses (in anonymised or coded form) were explained. Record that discussion, or "
            "record the permission as not given.",
        )
    if not (consent.discussion or "").strip() and not s.implicit_kind:
        yield _r(
            "discussion-not-recorded",
            HOLD,
            "G8",
            "Record the key elements of the consent discussion.",
        )
    if consent.method == "implied" and not s.implicit_kind:
        if s.parent_unsolicited_unusual:
            yield _r(
                "implied-consent-insufficient",
                HOLD,
                "G6",
                "Implied consent is not enough for an unsolicited image that is intimate or "
                "would not be taken in a normal face-to-face consultation: confirm consent to "
                "view, store and share with a person with parental responsibility.",
            )
        elif s.intimate:
            yield _r(
                "implied-consent-intimate",
                HOLD,
                "G1",
                "Intimate (or not stated as not intimate): explicit consent is needed, "
                "not implied consent.",
            )
        elif s.child:
            yield _r(
                "implied-consent-child",
                HOLD,
                "G5",
                "For a child's image, record explicit consent from a person with parental "
                "responsibility or from the competent young person.",
            )
    if s.parent_unsolicited_unusual and not consent.confirmed:
        yield _r(
            "consent-unconfirmed-unsolicited",
            HOLD,
            "G6",
            "Sent unsolicited and intimate or unusual: record that consent to viewing, storing "
            "and sharing was confirmed with a person with parental responsibility.",
        )


def check_who_consented(s: Situation) -> Iterable[Reason]:
    consent = s.consent
    if consent is None:
        return
    if consent.given_by is ConsentGiver.PATIENT:
        if consent.giver and consent.giver != s.ctx.patient:
            raise InvalidContext("the consent record's giver is not the patient in the context")
        if s.child and s.age < PRESUMED_COMPETENT_AGE and consent.gillick_competent is not True:
            yield _r(
                "young-person-competence-unassessed",
                HOLD,
                "G5",
                "The patient is under 16: they can consent for themselves only if assessed as "
                "competent (Gillick). Record that assessment, or obtain consent from a person "
                "with parental responsibility.",
            )
        return
    if not s.child:
        yield _r(
            "adult-consent-by-other",
            HOLD,
            "G5",
            "The patient is an adult: consent comes from the patient. (If they lack capacity, "
            "follow the Mental Capacity Act best-interests process; that is outside this tool.)",
        )
        return
    if (
        consent.given_by is ConsentGiver.RELATIVE_OR_CARER
        or consent.parental_responsibility is False
    ):
        yield _r(
            "no-parental-responsibility",
            HOLD,
            "G5",
            "Consent was given by someone without parental responsibility. Obtain consent from "
            "a person with parental responsibility, or from the young person if competent.",
        )
    elif consent.parental_responsibility_stated is None:
        yield _r(
            "parental-responsibility-not-stated",
            HOLD,
            "G5",
            "Consent was given by a parent, but who holds parental responsibility and on what "
            "basis is not recorded; not every parent has it (Children Act 1989 ss2-4). Record "
            "consent.parental_responsibility (holder and basis), or obtain consent from a "
            "person who has it, or from the young person if competent.",
        )


def check_child_best_interests(s: Situation) -> Iterable[Reason]:
    if s.child and not s.implicit_kind and not (s.ctx.best_interests or "").strip():
        yield _r(
            "best-interests-not-recorded",
            HOLD,
            "G7",
            "Record why keeping this image is in the child's best interests (a safeguarding "
            "lead may advise).",
        )


def check_remote(s: Situation) -> Iterable[Reason]:
    if s.ctx.remote:
        yield _r(
            "remote-consultation",
            STORE,
            "G9",
            "Marked in the record as coming from a remote consultation.",
        )


def check_sensitive(s: Situation) -> Iterable[Reason]:
    if s.ctx.safeguarding_concern:
        yield _r(
            "safeguarding",
            STORE,
            "G12",
            "Safeguarding concern: labelled very restricted, not to be shown to the patient or "
            "family without a clinician's authorisation; discuss with the safeguarding lead.",
        )
    if s.ctx.intimate is None and not s.implicit_kind:
        yield _r(
            "intimacy-unknown",
            STORE,
            "G12",
            "Not stated whether the image is intimate: treated as intimate.",
        )
    elif s.intimate and not s.implicit_kind:
        yield _r(
            "intimate",
            STORE,
            "G12",
            "Intimate image: flagged as particularly sensitive for disclosure.",
        )


def check_strict_intimate_child(s: Situation) -> Iterable[Reason]:
    if s.child and s.intimate and not s.implicit_kind:
        yield _r(
            "strict-intimate-under-18",
            REFUSE,
            "S1",
            "Local policy (NHS England / RCPCH principles for remote intimate assessments): "
            "intimate images of under-18s should not be requested or received, and are not "
            "stored in the record. Arrange a face-to-face assessment; if there is a "
            "safeguarding concern, follow local safeguarding procedures. Delete the image "
            "from the device it arrived on.",
        )


# ------------------------------------------------------------------------------- labels


def default_labels(s: Situation) -> SecurityLabels:
    """Security labels for the Media (see the README's labelling table)."""
    conf = Confidentiality.N
    sens: list[Label] = []
    cav: list[Label] = []

    def raise_to(level: Confidentiality) -> None:
        nonlocal conf
        conf = max(conf, level)

    if not s.implicit_kind:
        cav.append(c.CPLYCD)
    if s.patient_made:
        cav.append(c.NORDSCLCDS)
    if s.child and not s.implicit_kind:
        raise_to(Confidentiality.R)
        sens.append(c.PHY)
        sens.append(c.ADOL if s.age >= ADOLESCENT_AGE else c.YOUNG_CHILD)
        cav += [c.NORDSCLCDS, c.NOREUSE]
    if (s.intimate and not s.implicit_kind) or (s.implicit_kind and s.ctx.intimate):
        sens += [c.PHY, c.INTIMATE]
        if s.child:
            raise_to(Confidentiality.V)
            cav += [c.HUAPRV, c.NOREUSE, c.NORDSCLCDS]
        else:
            raise_to(Confidentiality.R)
            cav.append(c.MINEC)
    if s.ctx.safeguarding_concern:
        raise_to(Confidentiality.V)
        sens.append(c.SDV if s.child else c.VIO)
        cav += [c.NOPAT, c.HUAPRV]

    if s.implicit_kind and s.ctx.made_by is Maker.CLINICIAN:
        prov = c.DEVAST
    else:
        consent = s.consent
        prov = {
            Maker.CLINICIAN: c.CLINAST,
            Maker.PATIENT: c.PATAST,
            Maker.PARENT: (
                c.PACQAST
                if consent is not None
                and consent.given_by is ConsentGiver.PARENT
                and consent.parental_responsibility_stated is None
                else c.SDMAST
            ),
            Maker.RELATIVE_OR_CARER: c.PACQAST,
        }[s.ctx.made_by]
    return SecurityLabels(conf, _unique(sens), _unique(cav), (prov,))


def _unique(labels: list[Label]) -> tuple[Label, ...]:
    return tuple(dict.fromkeys(labels))


SEVERITY = _SEVERITY
DEFAULT_CHECKS: tuple[Check, ...] = (
    check_purpose,
    check_consent_needed,
    check_who_consented,
    check_consent_quality,
    check_child_best_interests,
    check_remote,
    check_sensitive,
)
