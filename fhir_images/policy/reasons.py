"""The reasons behind a storage decision: one table, the source of the CodeSystem.

Every finding the policy makes names one of these codes; ``profiles/CodeSystem-decision-reason``
is generated from this table (:mod:`fhir_images.policy.codesystem`), and a test fails when the
two differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    """What happens to an image: stored, held until what is missing is recorded, or refused."""

    STORE = "store"
    HOLD = "hold"
    REFUSE = "refuse"


@dataclass(frozen=True)
class ReasonCode:
    """One code: the rules it can come from, what it decides on its own, and its meaning."""

    code: str
    rules: tuple[str, ...]
    outcome: Outcome
    display: str
    definition: str


REASONS: dict[str, ReasonCode] = {
    r.code: r
    for r in (
        ReasonCode(
            "purpose-missing",
            ("G8",),
            Outcome.REFUSE,
            "no clinical purpose",
            "No clinical relevance and purpose recorded: the image is refused until it is.",
        ),
        ReasonCode(
            "purpose-recorded",
            ("G8",),
            Outcome.STORE,
            "clinical purpose recorded",
            "The clinical relevance and purpose are recorded.",
        ),
        ReasonCode(
            "consent-implicit",
            ("G3",),
            Outcome.STORE,
            "consent implicit",
            "The kind of image has implicit consent (X-ray, ultrasound, endoscopy...): no separate consent needed.",
        ),
        ReasonCode(
            "consent-missing",
            ("G1", "G4"),
            Outcome.HOLD,
            "no consent recorded",
            "No consent recorded: record the patient's (or a person with parental responsibility's) consent.",
        ),
        ReasonCode(
            "consent-unconfirmed-unsolicited",
            ("G6",),
            Outcome.HOLD,
            "unsolicited image, consent not confirmed",
            "Sent unsolicited by a parent or carer, and intimate or not a routine face-to-face image: consent to view, store and share must be confirmed.",
        ),
        ReasonCode(
            "consent-refused",
            ("G1",),
            Outcome.REFUSE,
            "consent refused",
            "The consent does not allow the image to be viewed or stored.",
        ),
        ReasonCode(
            "consent-explanation-incomplete",
            ("G1",),
            Outcome.HOLD,
            "explanation incomplete",
            "The consent record does not show that why, form and secure storage were explained.",
        ),
        ReasonCode(
            "secondary-use-unexplained",
            ("G2",),
            Outcome.HOLD,
            "secondary use not explained",
            "Teaching or research is permitted but secondary uses were not explained.",
        ),
        ReasonCode(
            "discussion-not-recorded",
            ("G8",),
            Outcome.HOLD,
            "discussion not recorded",
            "The key elements of the consent discussion are not recorded.",
        ),
        ReasonCode(
            "implied-consent-insufficient",
            ("G6",),
            Outcome.HOLD,
            "implied consent not enough (unsolicited)",
            "Implied consent is not enough for an unsolicited image that is intimate or unusual.",
        ),
        ReasonCode(
            "implied-consent-intimate",
            ("G1",),
            Outcome.HOLD,
            "implied consent not enough (intimate)",
            "An intimate image (or one not stated not to be) needs explicit consent.",
        ),
        ReasonCode(
            "implied-consent-child",
            ("G5",),
            Outcome.HOLD,
            "implied consent not enough (child)",
            "A child's image needs explicit consent from a person with parental responsibility or the competent young person.",
        ),
        ReasonCode(
            "young-person-competence-unassessed",
            ("G5",),
            Outcome.HOLD,
            "competence not assessed",
            "A patient under 16 consented for themselves without a recorded Gillick assessment.",
        ),
        ReasonCode(
            "adult-consent-by-other",
            ("G5",),
            Outcome.HOLD,
            "adult's consent given by someone else",
            "The patient is an adult: consent comes from the patient.",
        ),
        ReasonCode(
            "no-parental-responsibility",
            ("G5",),
            Outcome.HOLD,
            "no parental responsibility",
            "Consent was given by someone without parental responsibility.",
        ),
        ReasonCode(
            "parental-responsibility-not-stated",
            ("G5",),
            Outcome.HOLD,
            "parental responsibility not established",
            "Consent was given by a parent without recording who holds parental responsibility and on what basis: not every parent has it, so it is held as for someone without it.",
        ),
        ReasonCode(
            "best-interests-not-recorded",
            ("G7",),
            Outcome.HOLD,
            "best interests not recorded",
            "Why keeping a child's image is in their best interests is not recorded.",
        ),
        ReasonCode(
            "remote-consultation",
            ("G9",),
            Outcome.STORE,
            "remote consultation",
            "Marked in the record as coming from a remote consultation.",
        ),
        ReasonCode(
            "safeguarding",
            ("G12",),
            Outcome.STORE,
            "safeguarding concern",
            "Safeguarding concern: labelled very restricted, not shown to the patient or family without a clinician's authorisation.",
        ),
        ReasonCode(
            "intimacy-unknown",
            ("G12",),
            Outcome.STORE,
            "intimacy not stated",
            "Not stated whether the image is intimate: treated as intimate.",
        ),
        ReasonCode(
            "intimate",
            ("G12",),
            Outcome.STORE,
            "intimate image",
            "Intimate image: flagged as particularly sensitive for disclosure.",
        ),
        ReasonCode(
            "request-answered",
            ("W5",),
            Outcome.STORE,
            "made as requested",
            "Made and sent as the clinician's request asked: its kind, body site and sender, before it expired.",
        ),
        ReasonCode(
            "request-not-active",
            ("W5",),
            Outcome.HOLD,
            "request no longer active",
            "The request the image is linked to is completed or revoked: it no longer asks for an image.",
        ),
        ReasonCode(
            "request-other-kind",
            ("W5",),
            Outcome.HOLD,
            "not the kind of image requested",
            "The image is another kind (photo, video, audio...) than the request asked for.",
        ),
        ReasonCode(
            "request-other-body-site",
            ("W5",),
            Outcome.HOLD,
            "not the body site requested",
            "The image's body site is not the one the request asked for, or is not stated.",
        ),
        ReasonCode(
            "request-expired",
            ("W5",),
            Outcome.HOLD,
            "request expired",
            "The image was made after the request it answers had expired.",
        ),
        ReasonCode(
            "request-sender-not-named",
            ("W5",),
            Outcome.HOLD,
            "sender not named in the request",
            "The image was made by someone the request does not name as a sender.",
        ),
        ReasonCode(
            "request-intimate-under-18",
            ("W5",),
            Outcome.REFUSE,
            "intimate image of an under-18 (any policy)",
            "An intimate image of a patient under 18 sent in answer to a request is never stored, under any policy pack: it is discarded with a record, and the clinician records a description instead (NHS England / RCPCH principles for remote intimate assessments; CQC GP mythbuster 100).",
        ),
        ReasonCode(
            "strict-intimate-under-18",
            ("S1",),
            Outcome.REFUSE,
            "intimate image of an under-18 (strict policy)",
            "Strict local policy (NHS England / RCPCH): intimate images of under-18s are not stored.",
        ),
    )
}
