"""Approvals of disclosures: a recorded act, on the server, by someone other than the requester.

An image that needs human approval (HUAPRV, NOPAT for the patient's side, V,
family or legal requests of restricted material) is released only against an
approval that exists on the server before the release. An approval is a Task:

* ``requested``: ``disclose`` asks for it (one per image, purpose, requester and
  recipient; asking again does not add another);
* ``accepted``: a clinician approved it (:func:`approve`): ``owner`` is the
  approver, who must not be the requester or the recipient; it is valid until
  ``restriction.period.end``;
* ``completed``: a release used it, in the same transaction as the release's
  AuditEvent (so an approval is used once: two releases cannot share it);
* ``rejected``: a clinician refused it.

The decision itself is pure (:meth:`fhir_images._disclosure.Approval.covers`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from . import _codes as c
from ._disclosure import Approval, DisclosureRequest, ImageRecord
from ._exceptions import ActionRefused, ResourceNotFound
from ._records import create_once, is_reference, iso, parse_instant
from ._transport import FhirClient

APPROVAL_CODE = {
    "system": c.LOCAL_TASK,
    "code": "approve-disclosure",
    "display": "Approve the disclosure of an image",
}
_CLINICIAN = ("Practitioner/", "PractitionerRole/")


def approval_key(media: str, req: DisclosureRequest) -> str:
    """One value per image, purpose, requester and recipient."""
    text = f"{media}|{req.purpose}|{req.requester}|{req.receiver}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def approval_from_task(task: dict[str, Any]) -> Approval:
    """The approval a Task records (fields the Task lacks are None: it then covers nothing)."""
    purpose = next(
        (
            cd.get("code")
            for cd in (task.get("reasonCode") or {}).get("coding", [])
            if cd.get("system") == c.V3_ACT_REASON
        ),
        None,
    )
    restriction = task.get("restriction") or {}
    recipients = [r.get("reference") for r in restriction.get("recipient", [])]
    return Approval(
        ref=f"Task/{task.get('id')}",
        status=str(task.get("status")),
        media=str((task.get("focus") or {}).get("reference")),
        purpose=purpose,
        requester=(task.get("requester") or {}).get("reference"),
        recipient=recipients[0] if len(recipients) == 1 else None,
        approver=(task.get("owner") or {}).get("reference"),
        approved_at=parse_instant(task.get("lastModified")),
        valid_until=parse_instant((restriction.get("period") or {}).get("end")),
    )


def _is_approval(task: dict[str, Any]) -> bool:
    return any(
        cd.get("system") == APPROVAL_CODE["system"] and cd.get("code") == APPROVAL_CODE["code"]
        for cd in (task.get("code") or {}).get("coding", [])
    )


def approvals_for(client: FhirClient, media: str) -> tuple[Approval, ...]:
    """The accepted approvals of disclosures of one image."""
    tasks = client.search(
        "Task",
        {
            "focus": media,
            "code": f"{APPROVAL_CODE['system']}|{APPROVAL_CODE['code']}",
            "status": "accepted",
            "_count": "50",
        },
    )
    return tuple(approval_from_task(t) for t in tasks if _is_approval(t))


def request_approval(
    client: FhirClient,
    record: ImageRecord,
    req: DisclosureRequest,
    patient: str,
    reasons: Iterable[str],
    *,
    now: datetime | None = None,
) -> str:
    """Ask for an approval (a ``requested`` Task); asking again returns the open one."""
    key = approval_key(record.ref, req)
    open_one = f"identifier={c.SID_APPROVAL}|{key}&status=requested,accepted"
    task = {
        "resourceType": "Task",
        "meta": {"security": [c.conf(record.confidentiality).as_coding()]},
        "identifier": [{"system": c.SID_APPROVAL, "value": key}],
        "status": "requested",
        "intent": "order",
        "priority": "urgent",
        "code": {"coding": [APPROVAL_CODE]},
        "description": "A disclosure of an image needs a clinician's approval: "
        + "; ".join(reasons),
        "focus": {"reference": record.ref},
        "for": {"reference": patient},
        "authoredOn": iso(now or datetime.now(UTC)),
        "requester": {"reference": req.requester},
        "reasonCode": {"coding": [{"system": c.V3_ACT_REASON, "code": req.purpose}]},
        "restriction": {"recipient": [{"reference": req.receiver}]},
    }
    return create_once(client, task, open_one)


def _must_exist(client: FhirClient, ref: str, role: str) -> None:
    try:
        client.read(ref)
    except ResourceNotFound:
        raise ActionRefused(f"the {role} is not on the server: record them first") from None


def _read_approval_task(client: FhirClient, task_ref: str) -> dict[str, Any]:
    if not is_reference(task_ref) or not task_ref.startswith("Task/"):
        raise ActionRefused("an approval is named by its Task reference, like Task/123")
    task = client.read(task_ref)
    if not _is_approval(task):
        raise ActionRefused(f"{task_ref} is not an approval of a disclosure")
    return task


def approve(
    client: FhirClient,
    task_ref: str,
    *,
    by: str,
    valid_days: int = 30,
    now: datetime | None = None,
) -> Approval:
    """Approve a requested disclosure. ``by`` must be a clinician who is not the requester or
    the recipient; the approval is valid for ``valid_days`` and for one release."""
    if not is_reference(by) or not by.startswith(_CLINICIAN):
        raise ActionRefused(
            "an approver is a clinician: --by Practitioner/.. or PractitionerRole/.."
        )
    if not 1 <= valid_days <= 365:
        raise ActionRefused("an approval is valid for 1 to 365 days")
    task = _read_approval_task(client, task_ref)
    current = approval_from_task(task)
    if current.status != "requested":
        raise ActionRefused(f"{task_ref} is {current.status}, not waiting for approval")
    if by in (current.requester, current.recipient):
        raise ActionRefused(
            "the requester (or recipient) cannot approve their own request: approval must come "
            "from another clinician"
        )
    _must_exist(client, by, "approver")
    at = now or datetime.now(UTC)
    task["status"] = "accepted"
    task["owner"] = {"reference": by}
    task["lastModified"] = iso(at)
    task["executionPeriod"] = {"start": iso(at)}
    task.setdefault("restriction", {})["period"] = {
        "start": iso(at),
        "end": iso(at + timedelta(days=valid_days)),
    }
    updated = client.update(task, if_match=task.get("meta", {}).get("versionId"))
    return approval_from_task(updated)


def refuse_approval(
    client: FhirClient, task_ref: str, *, by: str, reason: str, now: datetime | None = None
) -> Approval:
    """Refuse a requested disclosure (the Task is rejected, with the reason)."""
    if not is_reference(by) or not by.startswith(_CLINICIAN):
        raise ActionRefused(
            "refusing needs a clinician: --by Practitioner/.. or PractitionerRole/.."
        )
    if not reason.strip():
        raise ActionRefused("refusing an approval needs a reason")
    task = _read_approval_task(client, task_ref)
    _must_exist(client, by, "clinician refusing it")
    if task.get("status") not in ("requested", "accepted"):
        raise ActionRefused(f"{task_ref} is {task.get('status')}: nothing to refuse")
    task["status"] = "rejected"
    task["owner"] = {"reference": by}
    task["statusReason"] = {"text": reason}
    task["lastModified"] = iso(now or datetime.now(UTC))
    updated = client.update(task, if_match=task.get("meta", {}).get("versionId"))
    return approval_from_task(updated)


def pending_approvals(client: FhirClient, patient: str | None = None) -> list[Approval]:
    """Approvals waiting for a clinician (of one patient, or all)."""
    params = {
        "code": f"{APPROVAL_CODE['system']}|{APPROVAL_CODE['code']}",
        "status": "requested",
        "_count": "100",
    }
    if patient:
        params["subject"] = patient
    return [approval_from_task(t) for t in client.search("Task", params) if _is_approval(t)]


def use_approval_entry(client: FhirClient, approval: Approval, audit_url: str) -> dict[str, Any]:
    """A transaction entry that marks an approval used by the release audited at ``audit_url``
    (If-Match on the version read: if another release used it first, the transaction fails)."""
    task = client.read(approval.ref)
    if approval_from_task(task) != approval:
        raise ActionRefused(f"{approval.ref} changed while the disclosure was decided")
    version = task.get("meta", {}).get("versionId")
    task["status"] = "completed"
    task["output"] = [
        {
            "type": {"text": "the release that used this approval"},
            "valueReference": {"reference": audit_url},
        }
    ]
    return {
        "resource": task,
        "request": {"method": "PUT", "url": approval.ref, "ifMatch": f'W/"{version}"'},
    }
