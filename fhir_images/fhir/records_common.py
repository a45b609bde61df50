"""Record builders that are the same in every FHIR version fhir-images speaks (Task status
changes, the hook's review Task, a superseded Consent, reading an approval), and the check that
each version's builders apply: a resource that does not conform to that version's model is a
bug here and must never reach a server. A version module wraps these with its own check."""

from __future__ import annotations

import copy
import functools
import socket
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from .. import _codes as c
from .._codes import Confidentiality
from .common import codings, iso, parse_instant, ref_of
from .views import ApprovalView, ConsentView, ImageView, TaskView

SOURCE_NAME = "fhir-images"
APPROVAL_CODE = {
    "system": c.LOCAL_TASK,
    "code": "approve-disclosure",
    "display": "Approve the disclosure of an image",
}

P = ParamSpec("P")
R = TypeVar("R", bound=dict[str, Any] | None)


def checked_with(
    model_class: Callable[[str], Any],
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A decorator that validates what a builder returns against ``model_class(resourceType)``
    (a version's fhir.resources models)."""

    def checked(build: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(build)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            resource = build(*args, **kwargs)
            if resource is not None:
                model_class(resource["resourceType"]).model_validate(resource)
            return resource

        return wrapper

    return checked


def now_iso(at: datetime | None) -> str:
    return iso(at or datetime.now(UTC))


def conf_coding(level: Confidentiality) -> dict[str, str]:
    return c.conf(level).as_coding()


# -------------------------------------------------------------------------------- approvals


def approval_task(
    image_ref: str,
    confidentiality: Confidentiality,
    *,
    key: str,
    patient: str,
    purpose: dict[str, Any],
    requester: str,
    receiver: str,
    reasons: Iterable[str],
    now: datetime | None = None,
) -> dict[str, Any]:
    """The Task asking a clinician to approve one disclosure; ``purpose`` is the element that
    carries the purpose of use in the version (R4 ``reasonCode``, R5 ``reason``)."""
    return {
        "resourceType": "Task",
        "meta": {"security": [conf_coding(confidentiality)]},
        "identifier": [{"system": c.SID_APPROVAL, "value": key}],
        "status": "requested",
        "intent": "order",
        "priority": "urgent",
        "code": {"coding": [APPROVAL_CODE]},
        "description": "A disclosure of an image needs a clinician's approval: "
        + "; ".join(reasons),
        "focus": {"reference": image_ref},
        "for": {"reference": patient},
        "authoredOn": now_iso(now),
        "requester": {"reference": requester},
        **purpose,
        "restriction": {"recipient": [{"reference": receiver}]},
    }


def approved(task: TaskView, *, by: str, valid_days: int, at: datetime) -> dict[str, Any]:
    raw = copy.deepcopy(task.raw)
    raw["status"] = "accepted"
    raw["owner"] = {"reference": by}
    raw["lastModified"] = iso(at)
    raw["executionPeriod"] = {"start": iso(at)}
    raw.setdefault("restriction", {})["period"] = {
        "start": iso(at),
        "end": iso(at + timedelta(days=valid_days)),
    }
    return raw


def rejected(task: TaskView, *, by: str, at: datetime) -> dict[str, Any]:
    """A refused approval, without its reason (whose shape differs between versions)."""
    raw = copy.deepcopy(task.raw)
    raw["status"] = "rejected"
    raw["owner"] = {"reference": by}
    raw["lastModified"] = iso(at)
    return raw


def used(task: TaskView, audit_url: str) -> dict[str, Any]:
    raw = copy.deepcopy(task.raw)
    raw["status"] = "completed"
    raw["output"] = [
        {
            "type": {"text": "the release that used this approval"},
            "valueReference": {"reference": audit_url},
        }
    ]
    return raw


def is_approval(task: dict[str, Any]) -> bool:
    return any(
        cd.get("system") == APPROVAL_CODE["system"] and cd.get("code") == APPROVAL_CODE["code"]
        for cd in (task.get("code") or {}).get("coding", [])
    )


def approval_view(resource: dict[str, Any], purpose_concepts: list[Any]) -> ApprovalView | None:
    """The approval a Task records, its purpose read from ``purpose_concepts`` (where the
    version keeps it); None when the Task is not an approval. Fields it lacks are None, so it
    then covers nothing."""
    if not is_approval(resource):
        return None
    purpose = next(
        (
            str(cd.get("code"))
            for concept in purpose_concepts
            for cd in codings(concept)
            if cd.get("system") == c.V3_ACT_REASON
        ),
        None,
    )
    restriction = (
        resource.get("restriction") if isinstance(resource.get("restriction"), dict) else {}
    )
    assert isinstance(restriction, dict)
    recipients = [ref_of(r) for r in restriction.get("recipient", []) or []]
    period = restriction.get("period") if isinstance(restriction.get("period"), dict) else {}
    assert isinstance(period, dict)
    return ApprovalView(
        ref=f"Task/{resource.get('id')}",
        status=str(resource.get("status")),
        media=str(ref_of(resource.get("focus"))),
        purpose=purpose,
        requester=ref_of(resource.get("requester")),
        recipient=recipients[0] if len(recipients) == 1 else None,
        approver=ref_of(resource.get("owner")),
        approved_at=parse_instant(resource.get("lastModified")),
        valid_until=parse_instant(period.get("end")),
    )


# ------------------------------------------------------------------------------ the hook


def review_task(
    image: ImageView, confidentiality: Confidentiality, description: str, now: datetime | None
) -> dict[str, Any]:
    task: dict[str, Any] = {
        "resourceType": "Task",
        "meta": {"security": [conf_coding(confidentiality)]},
        "identifier": [{"system": c.SID_HOOK_TASK, "value": image.ref}],
        "status": "requested",
        "intent": "order",
        "priority": "urgent",
        "code": {"text": "Review an image's consent and purpose"},
        "description": description,
        "focus": {"reference": image.ref},
        "authoredOn": now_iso(now),
    }
    if image.subject:
        task["for"] = {"reference": image.subject}
    return task


def completed(task: TaskView) -> dict[str, Any]:
    raw = copy.deepcopy(task.raw)
    raw["status"] = "completed"
    return raw


# ------------------------------------------------------------------------- consent changes


def superseded(consent: ConsentView) -> dict[str, Any]:
    raw = copy.deepcopy(consent.raw)
    raw["status"] = "inactive"
    return raw


def consent_confidentiality(consent: ConsentView) -> list[dict[str, str]]:
    """The Consent's confidentiality label, for what records a change of it (V if it has none:
    fail closed)."""
    return [{"system": s, "code": code} for s, code in consent.labels if s == c.V3_CONFIDENTIALITY][
        :1
    ] or [conf_coding(Confidentiality.V)]


def this_host() -> str:
    """The name of the machine fhir-images runs on: the network address of the source agent of
    an AuditEvent (IHE BALP), and of the recipient of a release written to a local folder."""
    return socket.gethostname() or "localhost"
