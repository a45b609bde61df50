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

Whether an approval covers a release is the policy's (:func:`fhir_images.policy.disclosure.
approval_refusal`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from . import _codes as c
from ._exceptions import ActionRefused
from ._result import Result
from .fhir import ApprovalView, FhirClient, Repository
from .fhir.common import is_reference
from .policy import DisclosureRequest, ImageRecord

_CLINICIAN = ("Practitioner/", "PractitionerRole/")


def approval_key(media: str, req: DisclosureRequest) -> str:
    """One value per image, purpose, requester and recipient."""
    text = f"{media}|{req.purpose}|{req.requester}|{req.receiver}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def approvals_for(client: FhirClient, media: str) -> tuple[ApprovalView, ...]:
    """The accepted approvals of disclosures of one image."""
    return tuple(Repository(client).approvals(image=media, status="accepted"))


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
    records = Repository(client)
    key = approval_key(record.ref, req)
    task = records.version.approval_task(
        record.ref,
        record.confidentiality,
        key=key,
        patient=patient,
        purpose=req.purpose,
        requester=req.requester,
        receiver=req.receiver,
        reasons=reasons,
        now=now,
    )
    return records.create_once(task, f"identifier={c.SID_APPROVAL}|{key}&status=requested,accepted")


def _must_exist(records: Repository, ref: str, role: str) -> None:
    if not records.exists(ref):
        raise ActionRefused(f"the {role} is not on the server: record them first")


def _clinician(by: str, what: str) -> None:
    if not is_reference(by) or not by.startswith(_CLINICIAN):
        raise ActionRefused(f"{what}: --by Practitioner/.. or PractitionerRole/..")


def _approval(records: Repository, task_ref: str) -> Any:
    if not is_reference(task_ref) or not task_ref.startswith("Task/"):
        raise ActionRefused("an approval is named by its Task reference, like Task/123")
    approval, task = records.approval(task_ref)
    if approval is None:
        raise ActionRefused(f"{task_ref} is not an approval of a disclosure")
    return approval, task


class Approval(Result):
    """An approval of one disclosure as the server records it (an R4 Task): what it covers
    (image, purpose, requester, recipient), who approved it and until when."""

    ref: str
    status: str
    media: str
    purpose: str | None = None
    requester: str | None = None
    recipient: str | None = None
    approver: str | None = None
    approved_at: datetime | None = None
    valid_until: datetime | None = None

    @classmethod
    def of(cls, view: ApprovalView) -> Approval:
        return cls(**dataclasses.asdict(view))


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
    _clinician(by, "an approver is a clinician")
    if not 1 <= valid_days <= 365:
        raise ActionRefused("an approval is valid for 1 to 365 days")
    records = Repository(client)
    current, task = _approval(records, task_ref)
    if current.status != "requested":
        raise ActionRefused(f"{task_ref} is {current.status}, not waiting for approval")
    if by in (current.requester, current.recipient):
        raise ActionRefused(
            "the requester (or recipient) cannot approve their own request: approval must come "
            "from another clinician"
        )
    _must_exist(records, by, "approver")
    at = now or datetime.now(UTC)
    updated = records.update(
        records.version.approved(task, by=by, valid_days=valid_days, at=at), task.version_id
    )
    approved = records.version.approval(updated)
    assert approved is not None
    return Approval.of(approved)


def refuse_approval(
    client: FhirClient, task_ref: str, *, by: str, reason: str, now: datetime | None = None
) -> Approval:
    """Refuse a requested disclosure (the Task is rejected, with the reason)."""
    _clinician(by, "refusing needs a clinician")
    if not reason.strip():
        raise ActionRefused("refusing an approval needs a reason")
    records = Repository(client)
    current, task = _approval(records, task_ref)
    _must_exist(records, by, "clinician refusing it")
    if current.status not in ("requested", "accepted"):
        raise ActionRefused(f"{task_ref} is {current.status}: nothing to refuse")
    at = now or datetime.now(UTC)
    updated = records.update(
        records.version.refused(task, by=by, reason=reason, at=at), task.version_id
    )
    refused = records.version.approval(updated)
    assert refused is not None
    return Approval.of(refused)


def pending_approvals(client: FhirClient, patient: str | None = None) -> list[Approval]:
    """Approvals waiting for a clinician (of one patient, or all)."""
    return [
        Approval.of(a) for a in Repository(client).approvals(patient=patient, status="requested")
    ]


def use_approval_entry(
    client: FhirClient, approval: ApprovalView, audit_url: str
) -> dict[str, Any]:
    """A transaction entry that marks an approval used by the release audited at ``audit_url``
    (If-Match on the version read: if another release used it first, the transaction fails)."""
    records = Repository(client)
    now, task = records.approval(approval.ref)
    if now != approval:
        raise ActionRefused(f"{approval.ref} changed while the disclosure was decided")
    return {
        "resource": records.version.used(task, audit_url),
        "request": {"method": "PUT", "url": approval.ref, "ifMatch": f'W/"{task.version_id}"'},
    }
