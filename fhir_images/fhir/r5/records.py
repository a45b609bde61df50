"""What fhir-images writes on an R5 server after the image: AuditEvents (IHE BALP's events in
R5's shape), Tasks (approvals, reviews), the anonymised copy, consent changes and the
Provenance that records each. Every builder is checked against the R5 model of its resource.

R4 -> R5 for AuditEvent, as the R5 mapping gives it: ``type`` -> ``category``, ``subtype`` ->
``code``, ``purposeOfEvent`` -> ``authorization``, ``outcome`` -> ``outcome.code`` (with
``outcomeDesc`` -> ``outcome.detail``), ``source.type`` Codings -> CodeableConcepts, entity
``role`` Coding -> CodeableConcept, and an entity's ``type``/``description`` (gone in R5) ->
``detail``. Tasks: ``reasonCode`` -> ``reason`` (CodeableReference)."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from fhir.resources import get_fhir_model_class

from ... import _codes as c
from ..._codes import Confidentiality
from ..._exceptions import ActionRefused
from .. import records_common as common
from ..building import profile_url
from ..common import iso, who
from ..records_common import SOURCE_NAME, checked_with
from ..views import ConsentView, ImageView, Labels, TaskView

#: Every builder here is checked against the R5 model of its resourceType.
checked = checked_with(get_fhir_model_class)
_now = common.now_iso
_conf = common.conf_coding
_OUTCOME = "http://terminology.hl7.org/CodeSystem/audit-event-outcome"


def _concept(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    coding = {"system": system, "code": code, **({"display": display} if display else {})}
    return {"coding": [coding]}


def _detail(text: str) -> dict[str, Any]:
    return {"type": {"text": "description"}, "valueString": text}


_PATIENT_ROLE = {"role": _concept(c.OBJECT_ROLE, "1", "Patient")}
_IMAGE_ROLE = {"role": _concept(c.OBJECT_ROLE, "4", "Domain Resource")}
_SOURCE_AGENT = {
    "type": _concept(c.DICOM, "110153", "Source Role ID"),
    "who": {"display": SOURCE_NAME},
    "requestor": False,
}
_SOURCE = {
    "observer": {"display": SOURCE_NAME},
    "type": [
        _concept(
            "http://terminology.hl7.org/CodeSystem/security-source-type", "4", "Application Server"
        )
    ],
}
_EXPORT = _concept(*c.DCM_EXPORT)


def _success() -> dict[str, Any]:
    return {"code": {"system": _OUTCOME, "code": "0", "display": "Success"}}


# ------------------------------------------------------------------------------ AuditEvents


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
    """An AuditEvent for one released image (IHE BALP's disclosure at the source, in R5; the
    network addresses as in R4, in R5's ``networkString``)."""
    agents: list[dict[str, Any]] = [
        {**_SOURCE_AGENT, "networkString": source_network or common.this_host()},
        {
            "type": _concept(c.DICOM, "110152", "Destination Role ID"),
            "who": who(receiver),
            "requestor": False,
            "networkString": recipient_network or common.this_host(),
        },
        {"who": who(requester), "requestor": True},
    ]
    if approver is not None:
        agents.append(
            {"type": _concept(*c.BALP_AUTHORIZER), "who": who(approver), "requestor": False}
        )
    return {
        "resourceType": "AuditEvent",
        "meta": {
            "security": [_conf(confidentiality)],
            "profile": [profile_url("disclosure-audit-event")],
        },
        "category": [_EXPORT],
        "code": _concept(c.ISO_LIFECYCLE, "disclose", "Disclose Record Lifecycle Event"),
        "action": "R",
        "recorded": _now(now),
        "outcome": _success(),
        "authorization": [_concept(c.V3_ACT_REASON, purpose)],
        "patient": {"reference": patient},
        "agent": agents,
        "source": _SOURCE,
        "entity": [
            {"what": {"reference": patient}, **_PATIENT_ROLE},
            {
                "what": {"reference": image.ref},
                **_IMAGE_ROLE,
                "securityLabel": [{"coding": [x]} for x in labels.codings()],
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
    """The AuditEvent for destroying an image (G13); the image is named by identifier."""
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "meta": {
            "security": [_conf(image.labels.confidentiality)],
            "profile": [profile_url("destruction-audit-event")],
        },
        "category": [
            _concept("http://terminology.hl7.org/CodeSystem/audit-event-type", "rest", "Restful")
        ],
        "code": {
            "coding": [
                {"system": "http://hl7.org/fhir/restful-interaction", "code": "delete"},
                {
                    "system": c.ISO_LIFECYCLE,
                    "code": "destroy",
                    "display": "Destroy/Delete Record Lifecycle Event",
                },
            ]
        },
        "action": "D",
        "recorded": _now(now),
        "outcome": _success(),
        "authorization": [
            {**_concept(c.V3_ACT_REASON, c.RECORDMGT, "records management"), "text": reason}
        ],
        "agent": [{"who": who(by), "requestor": True}],
        "source": {"observer": {"display": SOURCE_NAME}},
        "entity": [
            {
                "what": {
                    "identifier": {"system": c.SID_SHA256, "value": image.sha256},
                    "display": f"{image.ref} (destroyed)",
                },
                "detail": [
                    _detail(
                        f"Destroyed with {', '.join(destroyed_with) or 'nothing else'}. "
                        f"Reason: {reason}. Retention: {retention}."
                    )
                ],
            },
        ],
    }
    if image.subject:
        event["patient"] = {"reference": image.subject}
        event["entity"].insert(0, {"what": {"reference": image.subject}, **_PATIENT_ROLE})
    return event


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
    """The AuditEvent of an anonymised copy made for a secondary use (ISO 21089 de-identify)."""
    entities: list[dict[str, Any]] = []
    if image.subject:
        entities.append({"what": {"reference": image.subject}, **_PATIENT_ROLE})
    entities += [
        {"what": {"reference": image.ref}, **_IMAGE_ROLE},
        {
            "what": {"identifier": {"system": c.SID_SHA256, "value": copy_sha256}},
            "detail": [_detail("the anonymised copy")],
        },
    ]
    return {
        "resourceType": "AuditEvent",
        "meta": {"security": [_conf(confidentiality)]},
        "category": [_EXPORT],
        "code": _concept(
            c.ISO_LIFECYCLE, "deidentify", "De-Identify (Anononymize) Record Lifecycle Event"
        ),
        "action": "E",
        "recorded": _now(now),
        "outcome": _success(),
        "authorization": [_concept(c.V3_ACT_REASON, purpose)],
        "agent": [dict(_SOURCE_AGENT), {"who": who(by), "requestor": True}],
        "source": {"observer": {"display": SOURCE_NAME}},
        "entity": entities,
    }


@checked
def audit_failed(
    audit: dict[str, Any], description: str, now: datetime | None = None
) -> dict[str, Any]:
    """A second AuditEvent saying the act ``audit`` recorded did not complete (serious
    failure), for an audit trail that could not share a transaction with the act."""
    failed = copy.deepcopy(audit)
    failed.pop("id", None)
    failed["recorded"] = _now(now)
    failed["outcome"] = {
        "code": {"system": _OUTCOME, "code": "8", "display": "Serious failure"},
        "detail": [{"text": description}],
    }
    return failed


@checked
def anonymised_copy(
    image: ImageView, *, purpose: str, file_name: str, size: int, sha1_b64: str
) -> dict[str, Any]:
    """The DocumentReference of an anonymised copy: no subject, identifiers, dates or free
    text, labelled for human review (the picture itself may still identify the patient)."""
    copy_: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "meta": {
            "security": [
                {"system": c.V3_CONFIDENTIALITY, "code": "L"},
                c.ANONYED.as_coding(),
                c.NORELINK.as_coding(),
                c.HUAPRV.as_coding(),
            ]
        },
        "status": "current",
        "description": f"Anonymised copy for {purpose}: metadata, identifiers, dates and free "
        "text removed. The picture itself may still identify the patient; review it before use.",
        "securityLabel": [{"coding": [{"system": c.V3_CONFIDENTIALITY, "code": "L"}]}],
        "content": [
            {
                "attachment": {
                    "contentType": "image/png",
                    "url": file_name,
                    "size": str(size),
                    "hash": sha1_b64,
                    "title": f"Anonymised copy for {purpose}",
                }
            }
        ],
    }
    for key in ("modality", "category"):
        concepts = image.raw.get(key)
        if isinstance(concepts, list):
            copy_[key] = [
                {
                    "coding": [
                        {k: v for k, v in cd.items() if k in ("system", "code")}
                        for cd in (cc.get("coding") or [])
                        if isinstance(cd, dict)
                    ]
                }
                for cc in concepts
                if isinstance(cc, dict)
            ]
    sites = image.raw.get("bodySite")
    if isinstance(sites, list):
        copy_["bodySite"] = [
            {
                "concept": {
                    "coding": [
                        {k: v for k, v in cd.items() if k in ("system", "code")}
                        for cd in ((s.get("concept") or {}).get("coding") or [])
                        if isinstance(cd, dict)
                    ]
                }
            }
            for s in sites
            if isinstance(s, dict)
        ]
    return copy_


# -------------------------------------------------------------------------------- approvals


# ------------------------------------------------------------------------------ the hook


def declared_labels_patch(
    image: dict[str, Any], labels: list[dict[str, str]]
) -> list[dict[str, Any]] | None:
    """A JSON Patch that makes a DocumentReference's ``securityLabel`` state the confidentiality
    of its labels (``labels``: its meta.security after a change), or None when it already does.
    Without it a client that reads securityLabel (IHE MHD) would see a lower one."""
    level = Labels.of(labels).confidentiality
    wanted = [{"coding": [c.conf(level).as_coding()]}]
    if image.get("securityLabel") == wanted:
        return None
    return [{"op": "add", "path": "/securityLabel", "value": wanted}]


# --------------------------------------------------------------------------- subscriptions

_CHANNEL_TYPE = "http://terminology.hl7.org/CodeSystem/subscription-channel-type"


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
    """An R5 rest-hook Subscription to a topic (``criteria`` is the topic's URL; R5 has no
    search-based subscriptions), id-only. The header goes in as a channel parameter, which a
    server may send as an HTTP header; the endpoint carries the hook's token in case it does
    not."""
    if not topic:
        raise ActionRefused("FHIR R5 has only topic-based subscriptions")
    name, _, value = header.partition(":")
    resource: dict[str, Any] = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": reason,
        "topic": criteria,
        "channelType": {"system": _CHANNEL_TYPE, "code": "rest-hook"},
        "endpoint": endpoint,
        "parameter": [{"name": name.strip(), "value": value.strip()}],
        "contentType": "application/fhir+json",
        "content": "id-only",
    }
    if sid is not None:
        resource["id"] = sid
    return resource


@checked
def subscription_topic(url: str, resource_types: Iterable[str], title: str) -> dict[str, Any]:
    """An R5 SubscriptionTopic: creates and updates of the given resource types."""
    return {
        "resourceType": "SubscriptionTopic",
        "url": url,
        "title": title,
        "status": "active",
        "resourceTrigger": [
            {
                "description": f"A {t} is created or updated",
                "resource": t,  # the type's name: HAPI matches no canonical URL here
                "supportedInteraction": ["create", "update"],
            }
            for t in resource_types
        ],
    }


def topic_url_of(topic: dict[str, Any]) -> str | None:
    url = topic.get("url")
    return url if isinstance(url, str) else None


def topic_search(url: str) -> tuple[str, dict[str, str]]:
    return "SubscriptionTopic", {"url": url}


def subscription_target(subscription: dict[str, Any]) -> str | None:
    target = subscription.get("topic")
    return target if isinstance(target, str) else None


def subscription_headers(subscription: dict[str, Any]) -> list[str]:
    return [
        f"{p.get('name')}: {p.get('value')}"
        for p in subscription.get("parameter") or []
        if isinstance(p, dict)
    ]


def _status(bundle: dict[str, Any]) -> dict[str, Any] | None:
    entries = bundle.get("entry") if isinstance(bundle, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") == "SubscriptionStatus":
            return resource
    return None


def notification_focus(bundle: dict[str, Any]) -> list[str]:
    """The resources an R5 notification is about: each event's ``focus`` in its
    SubscriptionStatus, else the other entries' URLs. Unchecked strings."""
    status = _status(bundle)
    out: list[str] = []
    for event in (status or {}).get("notificationEvent") or []:
        ref = (
            ((event or {}).get("focus") or {}).get("reference") if isinstance(event, dict) else None
        )
        if isinstance(ref, str):
            out.append(ref)
    if out:
        return out
    entries = bundle.get("entry") if isinstance(bundle, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or entry.get("resource", {}).get("resourceType") == (
            "SubscriptionStatus"
        ):
            continue
        url = (entry.get("request") or {}).get("url") or entry.get("fullUrl")
        if isinstance(url, str):
            out.append(url)
    return out


def notification_type(bundle: dict[str, Any]) -> str | None:
    """handshake, heartbeat, event-notification, ... of an R5 notification."""
    value = (_status(bundle) or {}).get("type")
    return value if isinstance(value, str) else None


# ------------------------------------------------------------------------- consent changes


@checked
def consent_change_provenance(
    consent: ConsentView, *, by: str | None, reason: str, activity: str, record: str
) -> dict[str, Any]:
    """A Provenance for one change of one Consent (its version), written once (``record``)."""
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
        "recorded": iso(datetime.now(UTC)),
        "activity": {
            "coding": [{"system": c.V3_DATA_OPERATION, "code": "UPDATE"}],
            "text": f"consent {activity}",
        },
        "authorization": [
            {
                "concept": {
                    "coding": [
                        {
                            "system": c.V3_ACT_REASON,
                            "code": c.RECORDMGT,
                            "display": "records management",
                        }
                    ],
                    "text": reason,
                }
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
    """The Consent made inactive, its period ending at ``at``."""
    raw = copy.deepcopy(consent.raw)
    raw["status"] = "inactive"
    raw.setdefault("period", {})["end"] = iso(at)
    return raw


def _purposes(provision: dict[str, Any]) -> set[str]:
    return {str(x.get("code")) for x in provision.get("purpose") or [] if isinstance(x, dict)}


@checked
def narrowed(consent: ConsentView, purposes: Iterable[str]) -> dict[str, Any] | None:
    """The Consent no longer permitting ``purposes``; None when it already does not.

    Under a base deny, the permit provisions for them go (a provision that also permits other
    purposes keeps those); under a base permit, a deny provision is added for them."""
    raw = copy.deepcopy(consent.raw)
    wanted = set(purposes)
    provisions = [p for p in raw.get("provision") or [] if isinstance(p, dict)]
    changed = False
    if raw.get("decision") == "permit":
        denied = set().union(*(_purposes(p) for p in provisions)) if provisions else set()
        missing = sorted(wanted - denied)
        if missing:
            provisions.append(
                {"purpose": [{"system": c.V3_ACT_REASON, "code": p} for p in missing]}
            )
            changed = True
    else:
        kept = []
        for p in provisions:
            overlap = _purposes(p) & wanted
            if not overlap:
                kept.append(p)
                continue
            changed = True
            rest = [x for x in p.get("purpose") or [] if x.get("code") not in wanted]
            if rest:
                kept.append({**p, "purpose": rest})
        provisions = kept
    if not changed:
        return None
    raw["provision"] = provisions
    if not provisions:
        raw.pop("provision")
    return raw


# ------------------------------------------------- the same in every version, checked as R5

approved = checked(common.approved)
used = checked(common.used)
review_task = checked(common.review_task)
completed = checked(common.completed)
superseded = checked(common.superseded)


@checked
def refused(task: TaskView, *, by: str, reason: str, at: datetime) -> dict[str, Any]:
    raw = common.rejected(task, by=by, at=at)
    raw["statusReason"] = {"concept": {"text": reason}}
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
        purpose={"reason": [{"concept": _concept(c.V3_ACT_REASON, purpose)}]},
        requester=requester,
        receiver=receiver,
        reasons=reasons,
        now=now,
    )
