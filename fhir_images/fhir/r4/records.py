"""R4 resources fhir-images writes about an image once it is in the record: AuditEvents (IHE
BALP), Tasks (approvals, reviews), Provenance of consent changes, changes to a Consent, and the
Subscriptions of the server hook. Built here, and only here, from views and plain values, and
each checked against the R4 model of its type before it is returned."""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

from ... import _codes as c
from ..._codes import Confidentiality
from .. import records_common as common
from ..building import profile_url
from ..common import iso, who
from ..records_common import SOURCE_NAME, checked_with
from ..views import ConsentView, ImageView, Labels, TaskView

SID_HOOK_TASK = c.SID_HOOK_TASK

#: Every builder here is checked against the R4 model of its resourceType.
checked = checked_with(get_fhir_model_class)
_now = common.now_iso
_conf = common.conf_coding


_PATIENT_ROLE = {
    "type": {"system": c.AUDIT_ENTITY_TYPE, "code": "1", "display": "Person"},
    "role": {"system": c.OBJECT_ROLE, "code": "1", "display": "Patient"},
}
_OBJECT = {"system": c.AUDIT_ENTITY_TYPE, "code": "2", "display": "System Object"}
_SOURCE_AGENT = {
    "type": {"coding": [{"system": c.DICOM, "code": "110153", "display": "Source Role ID"}]},
    "who": {"display": SOURCE_NAME},
    "requestor": False,
}


# ------------------------------------------------------------------------------ AuditEvents


def _network(address: str) -> dict[str, str]:
    """An agent's network address: a machine name (type 1), or an IP address (type 2)."""
    kind = "2" if _is_ip(address) else "1"
    return {"address": address, "type": kind}


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


@checked
def disclosure_audit(
    image: ImageView,
    labels: Labels,
    confidentiality: Confidentiality,
    *,
    purpose: str,
    requester: str,
    receiver: str,
    patient: str,
    approver: str | None = None,
    now: datetime | None = None,
    source_network: str | None = None,
    recipient_network: str | None = None,
) -> dict[str, Any]:
    """An AuditEvent for one released image (IHE BALP: privacy disclosure at the source).

    ``labels`` are those the released copy carries; ``approver`` is the clinician whose recorded
    approval allowed the release (BALP's authorizer agent). BALP wants the network address of
    the source and of the recipient: ``source_network`` defaults to this machine's name, and so
    does ``recipient_network`` (a release written to a folder here); a gateway names its client.
    """
    agents: list[dict[str, Any]] = [
        {**_SOURCE_AGENT, "network": _network(source_network or common.this_host())},
        {
            "type": {
                "coding": [{"system": c.DICOM, "code": "110152", "display": "Destination Role ID"}]
            },
            "who": who(receiver),
            "requestor": False,
            "network": _network(recipient_network or common.this_host()),
        },
        {"who": who(requester), "requestor": True},
    ]
    if approver is not None:
        system, code, display = c.BALP_AUTHORIZER
        agents.append(
            {
                "type": {"coding": [{"system": system, "code": code, "display": display}]},
                "who": who(approver),
                "requestor": False,
            }
        )
    return {
        "resourceType": "AuditEvent",
        "meta": {
            "security": [_conf(confidentiality)],
            "profile": [profile_url("disclosure-audit-event")],
        },
        "type": {"system": c.DCM_EXPORT[0], "code": c.DCM_EXPORT[1], "display": c.DCM_EXPORT[2]},
        "subtype": [
            {
                "system": c.ISO_LIFECYCLE,
                "code": "disclose",
                "display": "Disclose Record Lifecycle Event",
            }
        ],
        "action": "R",
        "recorded": _now(now),
        "outcome": "0",
        "purposeOfEvent": [{"coding": [{"system": c.V3_ACT_REASON, "code": purpose}]}],
        "agent": agents,
        "source": {
            "observer": {"display": SOURCE_NAME},
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4",
                    "display": "Application Server",
                }
            ],
        },
        "entity": [
            {"what": {"reference": patient}, **_PATIENT_ROLE},
            {
                "what": {"reference": image.ref},
                "type": _OBJECT,
                "role": {"system": c.OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
                "securityLabel": labels.codings(),
            },
        ],
    }


@checked
def destruction_audit(
    image: ImageView,
    *,
    by: str,
    reason: str,
    retention: str,
    destroyed_with: list[str],
    now: datetime | None = None,
) -> dict[str, Any]:
    """The AuditEvent for destroying an image (G13): who, when, why, the retention rule and the
    image's hash. The image is named by identifier, since it is gone."""
    return {
        "resourceType": "AuditEvent",
        "meta": {
            "security": [_conf(image.labels.confidentiality)],
            "profile": [profile_url("destruction-audit-event")],
        },
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
            "display": "Restful Operation",
        },
        "subtype": [
            {"system": "http://hl7.org/fhir/restful-interaction", "code": "delete"},
            {
                "system": c.ISO_LIFECYCLE,
                "code": "destroy",
                "display": "Destroy/Delete Record Lifecycle Event",
            },
        ],
        "action": "D",
        "recorded": _now(now),
        "outcome": "0",
        "purposeOfEvent": [
            {
                "coding": [
                    {
                        "system": c.V3_ACT_REASON,
                        "code": c.RECORDMGT,
                        "display": "records management",
                    }
                ],
                "text": reason,
            }
        ],
        "agent": [{"who": who(by), "requestor": True}],
        "source": {"observer": {"display": SOURCE_NAME}},
        "entity": [
            {"what": {"reference": image.subject}, **_PATIENT_ROLE},
            {
                "what": {
                    "identifier": {"system": c.SID_SHA256, "value": image.sha256},
                    "display": f"{image.ref} (destroyed)",
                },
                "type": _OBJECT,
                "description": f"Destroyed with {', '.join(destroyed_with) or 'nothing else'}. "
                f"Reason: {reason}. Retention: {retention}.",
            },
        ],
    }


@checked
def anonymisation_audit(
    image: ImageView,
    confidentiality: Confidentiality,
    *,
    purpose: str,
    by: str,
    copy_sha256: str,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The AuditEvent of an anonymised copy made for a secondary use (ISO 21089 de-identify):
    who made it, for what, from which image, and the copy's hash."""
    entities: list[dict[str, Any]] = []
    if image.subject:
        entities.append({"what": {"reference": image.subject}, **_PATIENT_ROLE})
    entities += [
        {
            "what": {"reference": image.ref},
            "type": _OBJECT,
            "role": {"system": c.OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
        },
        {
            "what": {"identifier": {"system": c.SID_SHA256, "value": copy_sha256}},
            "type": _OBJECT,
            "description": "the anonymised copy",
        },
    ]
    return {
        "resourceType": "AuditEvent",
        "meta": {"security": [_conf(confidentiality)]},
        "type": {"system": c.DCM_EXPORT[0], "code": c.DCM_EXPORT[1], "display": c.DCM_EXPORT[2]},
        "subtype": [
            {
                "system": c.ISO_LIFECYCLE,
                "code": "deidentify",
                "display": "De-Identify (Anononymize) Record Lifecycle Event",
            }
        ],
        "action": "E",
        "recorded": _now(now),
        "outcome": "0",
        "purposeOfEvent": [{"coding": [{"system": c.V3_ACT_REASON, "code": purpose}]}],
        "agent": [dict(_SOURCE_AGENT), {"who": who(by), "requestor": True}],
        "source": {"observer": {"display": SOURCE_NAME}},
        "entity": entities,
    }


@checked
def audit_failed(
    audit: dict[str, Any], description: str, now: datetime | None = None
) -> dict[str, Any]:
    """A second AuditEvent saying that the act ``audit`` recorded did not complete (outcome 8,
    serious failure), for an audit trail that could not share a transaction with the act."""
    failed = copy.deepcopy(audit)
    failed.pop("id", None)
    failed["recorded"] = _now(now)
    failed["outcome"] = "8"
    failed["outcomeDesc"] = description
    return failed


@checked
def anonymised_copy(
    image: ImageView, *, purpose: str, file_name: str, size: int, sha1_b64: str
) -> dict[str, Any]:
    """The Media of an anonymised copy: no subject, identifiers, dates or free text, labelled
    for human review (the picture itself may still identify the patient)."""
    copy_: dict[str, Any] = {
        "resourceType": "Media",
        "meta": {
            "security": [
                {"system": c.V3_CONFIDENTIALITY, "code": "L"},
                c.ANONYED.as_coding(),
                c.NORELINK.as_coding(),
                c.HUAPRV.as_coding(),
            ]
        },
        "status": "completed",
        "type": image.raw.get("type"),
        "content": {
            "contentType": "image/png",
            "url": file_name,
            "size": size,
            "hash": sha1_b64,
            "title": f"Anonymised copy for {purpose}",
        },
        "note": [
            {
                "text": f"Anonymised copy for {purpose}: metadata, identifiers, "
                "dates and free text removed. The picture itself may still identify the "
                "patient; review it before use."
            }
        ],
    }
    for key in ("modality", "bodySite"):
        concept = image.raw.get(key)
        if isinstance(concept, dict):
            copy_[key] = {
                "coding": [
                    {k: v for k, v in cd.items() if k in ("system", "code")}
                    for cd in concept.get("coding", [])
                ]
            }
    return copy_


# -------------------------------------------------------------------------------- approvals


# ------------------------------------------------------------------------------ the hook


BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
_TOPIC_EXT = "http://hl7.org/fhir/5.0/StructureDefinition/extension-SubscriptionTopic"
_TRIGGER_EXT = "http://hl7.org/fhir/4.3/StructureDefinition/extension-SubscriptionTopic"


@checked
def subscription(
    criteria: str,
    endpoint: str,
    header: str,
    *,
    reason: str,
    topic: bool = False,
    sid: str | None = None,
) -> dict[str, Any]:
    """An R4 rest-hook Subscription. Classic: ``criteria`` is a search and each matching
    resource is sent. ``topic``: the R4 Subscriptions Backport, ``criteria`` the topic's URL,
    notifications carrying only ids."""
    channel: dict[str, Any] = {
        "type": "rest-hook",
        "endpoint": endpoint,
        "payload": "application/fhir+json",
        "header": [header],
    }
    resource: dict[str, Any] = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": reason,
        "criteria": criteria,
        "channel": channel,
    }
    if topic:
        resource["meta"] = {"profile": [f"{BACKPORT}/backport-subscription"]}
        channel["_payload"] = {
            "extension": [{"url": f"{BACKPORT}/backport-payload-content", "valueCode": "id-only"}]
        }
    if sid is not None:
        resource["id"] = sid
    return resource


@checked
def subscription_topic(url: str, resource_types: Iterable[str], title: str) -> dict[str, Any]:
    """A SubscriptionTopic as R4 carries it (a Basic, as the Backport describes): changes
    (create, update) of the given resource types."""
    triggers = [
        {
            "url": f"{_TRIGGER_EXT}.resourceTrigger",
            "extension": [
                {"url": "resource", "valueUri": f"http://hl7.org/fhir/StructureDefinition/{t}"},
                {"url": "supportedInteraction", "valueCode": "create"},
                {"url": "supportedInteraction", "valueCode": "update"},
            ],
        }
        for t in resource_types
    ]
    return {
        "resourceType": "Basic",
        "code": {
            "coding": [{"system": "http://hl7.org/fhir/fhir-types", "code": "SubscriptionTopic"}]
        },
        "extension": [
            {"url": f"{_TOPIC_EXT}.url", "valueUri": url},
            {"url": f"{_TOPIC_EXT}.title", "valueString": title},
            *triggers,
        ],
    }


def topic_url_of(basic: dict[str, Any]) -> str | None:
    """The canonical URL of a topic carried as a Basic; None for any other Basic."""
    for ext in basic.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == f"{_TOPIC_EXT}.url":
            value = ext.get("valueUri")
            return value if isinstance(value, str) else None
    return None


def topic_search(url: str) -> tuple[str, dict[str, str]]:
    """Where topics are found (as Basics; which one is ``url`` is :func:`topic_url_of`'s)."""
    return "Basic", {"code": "http://hl7.org/fhir/fhir-types|SubscriptionTopic"}


def subscription_target(subscription: dict[str, Any]) -> str | None:
    """A Subscription's criteria: a search (classic) or a topic's URL (Backport)."""
    criteria = subscription.get("criteria")
    return criteria if isinstance(criteria, str) else None


def subscription_headers(subscription: dict[str, Any]) -> list[str]:
    headers = (subscription.get("channel") or {}).get("header") or []
    return [h for h in headers if isinstance(h, str)]


def notification_focus(bundle: dict[str, Any]) -> list[str]:
    """The resources a Backport notification (a history Bundle) is about: the ``focus`` of each
    event in its SubscriptionStatus, else the entries' request URLs. Unchecked strings."""
    out: list[str] = []
    entries = bundle.get("entry") if isinstance(bundle, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") == "Parameters":
            for p in resource.get("parameter") or []:
                if not isinstance(p, dict) or p.get("name") != "notification-event":
                    continue
                for part in p.get("part") or []:
                    if isinstance(part, dict) and part.get("name") == "focus":
                        ref = (part.get("valueReference") or {}).get("reference")
                        if isinstance(ref, str):
                            out.append(ref)
        elif isinstance(entry, dict):
            url = (entry.get("request") or {}).get("url") or entry.get("fullUrl")
            if isinstance(url, str):
                out.append(url)
    return out


def notification_type(bundle: dict[str, Any]) -> str | None:
    """handshake, heartbeat, event-notification, ... of a Backport notification."""
    entries = bundle.get("entry") if isinstance(bundle, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") == "Parameters":
            for p in resource.get("parameter") or []:
                if isinstance(p, dict) and p.get("name") == "type":
                    value = p.get("valueCode")
                    return value if isinstance(value, str) else None
    return None


# ------------------------------------------------------------------------- consent changes


@checked
def consent_change_provenance(
    consent: ConsentView, *, by: str | None, reason: str, activity: str, record: str
) -> dict[str, Any]:
    """A Provenance for one change of one Consent (its version); ``record`` names it so that it
    is written once however often the change is retried."""
    target = f"{consent.ref}/_history/{consent.version_id or '1'}"
    confidentiality = common.consent_confidentiality(consent)
    return {
        "resourceType": "Provenance",
        "meta": {
            "security": confidentiality,
            "tag": [{"system": c.SID_RECORD, "code": record}],
            "profile": [profile_url("image-provenance")],
        },
        "target": [{"reference": target}],
        "recorded": _now(None),
        "activity": {
            "coding": [{"system": c.V3_DATA_OPERATION, "code": "UPDATE"}],
            "text": f"consent {activity}",
        },
        "reason": [
            {
                "coding": [
                    {
                        "system": c.V3_ACT_REASON,
                        "code": c.RECORDMGT,
                        "display": "records management",
                    }
                ],
                "text": reason,
            }
        ],
        "agent": [
            {
                "type": {"coding": [{"system": c.PROVENANCE_PARTICIPANT, "code": "author"}]},
                "who": who(by) if by else {"display": SOURCE_NAME},
            }
        ],
    }


@checked
def withdrawn(consent: ConsentView, at: datetime) -> dict[str, Any]:
    """The Consent made inactive, its provision ending at ``at``."""
    raw = copy.deepcopy(consent.raw)
    raw["status"] = "inactive"
    raw.setdefault("provision", {"type": "deny"}).setdefault("period", {})["end"] = iso(at)
    return raw


@checked
def narrowed(consent: ConsentView, purposes: Iterable[str]) -> dict[str, Any] | None:
    """The Consent with ``purposes`` refused: each leaves the root's permitted purposes (and
    its anonymised-use note) and gets an explicit nested deny; None when it already denies
    them. A root left with no permitted purpose becomes a deny: a permit naming no purpose
    would read as consent to everything."""
    raw = copy.deepcopy(consent.raw)
    root = raw.setdefault("provision", {"type": "deny"})
    nested = root.setdefault("provision", [])
    changed = False
    for purpose in purposes:
        kept = [p for p in root.get("purpose", []) if p.get("code") != purpose]
        if len(kept) != len(root.get("purpose", [])):
            root["purpose"] = kept
            changed = True
        notes = [e for e in root.get("extension", []) if _coded(e) != purpose]
        if len(notes) != len(root.get("extension", [])):
            root["extension"] = notes
            changed = True
        matching = [p for p in nested if purpose in {x.get("code") for x in p.get("purpose", [])}]
        for p in matching:
            if p.get("type") != "deny":
                p["type"] = "deny"
                changed = True
        if not matching:
            nested.append(
                {"type": "deny", "purpose": [{"system": c.V3_ACT_REASON, "code": purpose}]}
            )
            changed = True
    for key in ("purpose", "extension"):
        if key in root and not root[key]:
            del root[key]
            if key == "purpose":
                root["type"] = "deny"
    return raw if changed else None


def _coded(extension: dict[str, Any]) -> object:
    value = extension.get("valueCoding")
    return value.get("code") if isinstance(value, dict) else None


# ------------------------------------------------- the same in every version, checked as R4

approved = checked(common.approved)
used = checked(common.used)
review_task = checked(common.review_task)
completed = checked(common.completed)
superseded = checked(common.superseded)


@checked
def refused(task: TaskView, *, by: str, reason: str, at: datetime) -> dict[str, Any]:
    raw = common.rejected(task, by=by, at=at)
    raw["statusReason"] = {"text": reason}
    return raw


@checked
def approval_task(
    image_ref: str,
    confidentiality: Confidentiality,
    *,
    key: str,
    patient: str,
    purpose: str,
    requester: str,
    receiver: str,
    reasons: Iterable[str],
    now: datetime | None = None,
) -> dict[str, Any]:
    return common.approval_task(
        image_ref,
        confidentiality,
        key=key,
        patient=patient,
        purpose={"reasonCode": {"coding": [{"system": c.V3_ACT_REASON, "code": purpose}]}},
        requester=requester,
        receiver=receiver,
        reasons=reasons,
        now=now,
    )
