"""One policy engine: the rules for storing, labelling, disclosing, assessing and destroying
images, grouped in packs chosen by name (:mod:`.packs`), with one table of reasons
(:mod:`.reasons`). Pure: no I/O."""

from __future__ import annotations

from .assessment import Assessment
from .disclosure import (
    DisclosureDecision,
    DisclosureRequest,
    ImageRecord,
    Purpose,
    Role,
    Verdict,
    decide_disclosure,
    decide_one,
    high_water_mark,
    releasable_labels,
)
from .ingest import ConsentState, Decision, Reason, SecurityLabels, Situation
from .lifecycle import (
    RetentionSchedule,
    check_anonymisation,
    check_destruction,
    earliest_destruction,
    register_schedule,
)
from .packs import DEFAULT, POLICIES, STRICT, Policy, decide, get_policy, register_policy
from .reasons import REASONS, Outcome, ReasonCode

__all__ = [
    "DEFAULT",
    "POLICIES",
    "REASONS",
    "STRICT",
    "Assessment",
    "ConsentState",
    "Decision",
    "DisclosureDecision",
    "DisclosureRequest",
    "ImageRecord",
    "Outcome",
    "Policy",
    "Purpose",
    "Reason",
    "ReasonCode",
    "RetentionSchedule",
    "Role",
    "SecurityLabels",
    "Situation",
    "Verdict",
    "check_anonymisation",
    "check_destruction",
    "decide",
    "decide_disclosure",
    "decide_one",
    "earliest_destruction",
    "get_policy",
    "high_water_mark",
    "register_policy",
    "register_schedule",
    "releasable_labels",
]
