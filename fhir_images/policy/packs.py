"""Policy packs: one engine, its rules grouped in packs chosen by name.

A pack holds every rule fhir-images applies: the ingest checks and the label function (store,
hold or refuse a new image, and how it is labelled), the record checks (what the server hook
finds missing in an image that arrived by another route), and, shared by every pack here, the
disclosure and lifecycle rules (:mod:`.disclosure`, :mod:`.lifecycle`). The hook, disclosure and
the lifecycle commands take the pack as a parameter, so a stricter pack applies everywhere.
Another pack is added with :func:`register_policy`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .._context import ClinicalContext, ConsentRecord
from .._exceptions import InvalidContext, PolicyNotFound
from .._requests import ImageRequest
from ..fhir.views import ConsentView, ImageView, PatientView
from .assessment import (
    DEFAULT_RECORD_CHECKS,
    Assessment,
    RecordCheck,
    assess,
    check_strict_intimate_child,
    record_situation,
)
from .ingest import (
    DEFAULT_CHECKS,
    SEVERITY,
    Check,
    ConsentState,
    Decision,
    SecurityLabels,
    Situation,
    default_labels,
)
from .ingest import (
    check_strict_intimate_child as check_strict_ingest,
)
from .reasons import Outcome
from .requests import NOTE_TEMPLATES, REQUEST_CHECKS


@dataclass(frozen=True)
class Policy:
    """A policy pack: the checks a new image goes through, how its labels are chosen, and the
    checks of a record already on a server."""

    name: str
    description: str
    checks: tuple[Check, ...]
    labels: Callable[[Situation], SecurityLabels] = default_labels
    record_checks: tuple[RecordCheck, ...] = DEFAULT_RECORD_CHECKS

    def decide(
        self,
        ctx: ClinicalContext,
        consent: ConsentRecord | None = None,
        *,
        request: ImageRequest | None = None,
    ) -> Decision:
        """Store, hold or refuse a new image, with the findings behind it and its labels; an
        image linked to a request (``ctx.request``) is checked against it (W5)."""
        if consent is not None and consent.date.date() < ctx.birth_date:
            raise InvalidContext("invalid consent: date: is before the patient's birth date")
        if ctx.request is not None and request is None:
            raise InvalidContext("context.request: give the request the image answers")
        s = Situation(ctx, consent, request)
        reasons = [reason for check in (*self.checks, *REQUEST_CHECKS) for reason in check(s)]
        outcome = max((r.outcome for r in reasons), key=SEVERITY.__getitem__, default=Outcome.STORE)
        if s.implicit_kind and consent is None:
            state = ConsentState.IMPLICIT
        else:
            state = ConsentState.RECORDED if consent is not None else ConsentState.MISSING
        return Decision(
            outcome=outcome,
            reasons=tuple(reasons),
            labels=self.labels(s),
            consent=state,
            policy=self.name,
            age_band=s.age_band,
            notes=tuple(NOTE_TEMPLATES[r.code] for r in reasons if r.code in NOTE_TEMPLATES),
        )

    def assess(
        self, image: ImageView, patient: PatientView | None, consents: Iterable[ConsentView]
    ) -> Assessment:
        """The labels an image on the server needs and what its record lacks (the hook)."""
        return assess(record_situation(image, patient, consents), self.labels, self.record_checks)


DEFAULT = Policy(
    "default",
    "GMC 'Making and using visual and audio recordings of patients' as applied by the "
    "Medical Protection article on storing images in medical records.",
    DEFAULT_CHECKS,
)

STRICT = Policy(
    "strict",
    "The default policy, plus: intimate images of under-18s are not stored "
    "(NHS England / RCPCH principles for remote intimate assessments).",
    (*DEFAULT_CHECKS, check_strict_ingest),
    record_checks=(*DEFAULT_RECORD_CHECKS, check_strict_intimate_child),
)

POLICIES: dict[str, Policy] = {p.name: p for p in (DEFAULT, STRICT)}


def register_policy(policy: Policy) -> None:
    """Make a policy pack available by its name (``--policy NAME``, case files)."""
    POLICIES[policy.name] = policy


def get_policy(name: str | Policy) -> Policy:
    """The policy pack of that name (``default``, ``strict``, or one registered);
    PolicyNotFound otherwise."""
    if isinstance(name, Policy):
        return name
    try:
        return POLICIES[name]
    except KeyError:
        raise PolicyNotFound(
            f"no policy pack of that name; choose one of: {', '.join(sorted(POLICIES))}"
        ) from None


def decide(
    ctx: ClinicalContext,
    consent: ConsentRecord | None = None,
    *,
    policy: str | Policy = "default",
    request: ImageRequest | None = None,
) -> Decision:
    """Decide whether an image may go into the record, and how it is labelled."""
    return get_policy(policy).decide(ctx, consent, request=request)
