"""After an image is in the record: disclosure, consent changes, destruction, anonymised copies.

These read and write the FHIR server; the decisions themselves are pure
functions (:mod:`fhir_images._disclosure`, :func:`earliest_destruction`).
Every disclosure and every destruction leaves an AuditEvent on the server,
following IHE BALP's patterns; a disclosure is audited *before* anything is
written out, so nothing leaves unaudited.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from . import _codes as c
from ._approvals import approvals_for, request_approval, use_approval_entry
from ._codes import Confidentiality
from ._disclosure import (
    DisclosureDecision,
    DisclosureRequest,
    ImageRecord,
    Verdict,
    consent_required,
    decide_disclosure,
    decide_one,
    high_water_mark,
    provision_for,
    releasable_labels,
)
from ._exceptions import ActionRefused, ResourceNotFound, ServerError
from ._labels import label_image
from ._records import (
    binary_reference,
    consents_for_image,
    images_of_consent,
    is_reference,
    record_consent_change,
    who,
)
from ._transport import FhirClient

SOURCE_NAME = "fhir-images"
_OBLIGATIONS = {
    "NORDSCLCDS",
    "NOREUSE",
    "CPLYCD",
    "MINEC",
    "PERSISTLABEL",
    "DELAU",
    "NOCOLLECT",
    "NORELINK",
    "NOPAT",
    "HUAPRV",
}


def _now(at: datetime | None = None) -> str:
    return (at or datetime.now(UTC)).astimezone(UTC).isoformat().replace("+00:00", "Z")


def _who(value: str) -> dict[str, str]:
    return who(value)


def _write_private(path: Path, data: bytes) -> None:
    """Write a file that holds patient data: owner-only whatever the folder, replaced whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _private_dir(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)


# -------------------------------------------------------------------------------- reading


def read_record(client: FhirClient, media_ref: str) -> ImageRecord:
    """One image as the disclosure rules see it: the Media, its Binary's labels and
    securityContext (not its bytes), and its Consents."""
    return _record(client, client.read(media_ref))


def _record(client: FhirClient, media: dict[str, Any]) -> ImageRecord:
    ref = f"Media/{media['id']}"
    consents: list[dict[str, Any]] = []
    consent_error = None
    try:
        consents = consents_for_image(client, ref)
    except ServerError as exc:
        consent_error = type(exc).__name__
    binary, binary_error = None, None
    url = media.get("content", {}).get("url")
    binary_ref = binary_reference(url, client.base_url)
    if binary_ref is not None:
        try:
            binary = client.binary_meta(binary_ref)
        except ResourceNotFound:
            binary_error = "the Binary is not on the server"
        except ServerError as exc:
            binary_error = f"the Binary could not be read ({type(exc).__name__})"
    elif url:
        binary_error = "the image's content is not a Binary on this server"
    return ImageRecord(media, consents, consent_error, binary, binary_error)


def patient_records(client: FhirClient, patient: str) -> list[ImageRecord]:
    """Every Media of a patient, each with its Binary's labels and the Consents that name it."""
    return [
        _record(client, m)
        for m in client.search("Media", {"subject": patient, "_count": "100", "_sort": "-created"})
    ]


# ------------------------------------------------------------------------------ disclosure


def _confidentiality_label(media: dict[str, Any]) -> dict[str, Any]:
    """The image's confidentiality label for an AuditEvent about it: the most restrictive one
    it carries, or V when it has none (as disclosure treats it: fail closed)."""
    codes = [
        str(s.get("code"))
        for s in media.get("meta", {}).get("security", [])
        if s.get("system") == c.V3_CONFIDENTIALITY and s.get("code") in Confidentiality.__members__
    ]
    level = max((Confidentiality[code] for code in codes), default=Confidentiality.V)
    return c.conf(level).as_coding()


def audit_disclosure(
    record: ImageRecord,
    req: DisclosureRequest,
    patient: str,
    *,
    now: datetime | None = None,
    approver: str | None = None,
) -> dict[str, Any]:
    """An AuditEvent for one released image (IHE BALP: privacy disclosure at the source).

    ``approver`` is the clinician whose recorded approval allowed the release (BALP's
    authorizer agent); ``now`` is the ``recorded`` instant (default: the current time).
    """
    security = (
        releasable_labels(record)
        if record.binary is not None
        else (record.media.get("meta", {}).get("security", []))
    )
    conf = c.conf(record.confidentiality).as_coding()
    agents: list[dict[str, Any]] = [
        {
            "type": {
                "coding": [{"system": c.DICOM, "code": "110153", "display": "Source Role ID"}]
            },
            "who": {"display": SOURCE_NAME},
            "requestor": False,
        },
        {
            "type": {
                "coding": [{"system": c.DICOM, "code": "110152", "display": "Destination Role ID"}]
            },
            "who": _who(req.receiver),
            "requestor": False,
        },
        {"who": _who(req.requester), "requestor": True},
    ]
    if approver is not None:
        system, code, display = c.BALP_AUTHORIZER
        agents.append(
            {
                "type": {"coding": [{"system": system, "code": code, "display": display}]},
                "who": _who(approver),
                "requestor": False,
            }
        )
    return {
        "resourceType": "AuditEvent",
        "meta": {"security": [conf]},
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
        "purposeOfEvent": [{"coding": [{"system": c.V3_ACT_REASON, "code": req.purpose}]}],
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
            {
                "what": {"reference": patient},
                "type": {"system": c.AUDIT_ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": c.OBJECT_ROLE, "code": "1", "display": "Patient"},
            },
            {
                "what": {"reference": record.ref},
                "type": {"system": c.AUDIT_ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": c.OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
                "securityLabel": security,
            },
        ],
    }


@dataclass
class DisclosureResult:
    decisions: list[DisclosureDecision]
    bundle: Path | None
    withheld: Path | None
    audit_events: list[str] = field(default_factory=list)
    approval_requests: dict[str, str] = field(default_factory=dict)

    @property
    def released(self) -> list[DisclosureDecision]:
        return [d for d in self.decisions if d.verdict is Verdict.RELEASE]


def _check_parties(client: FhirClient, req: DisclosureRequest) -> None:
    """The requester and recipient must exist on the server before anything is written."""
    for role, ref in (("requester", req.requester), ("recipient", req.recipient)):
        if ref is None:
            continue
        try:
            client.read(ref)
        except ResourceNotFound:
            raise ActionRefused(f"the {role} is not on the server: record them first") from None


def disclose(
    client: FhirClient,
    patient: str,
    req: DisclosureRequest,
    out_dir: Path,
    *,
    now: datetime | None = None,
) -> DisclosureResult:
    """Decide, audit, then write ``release-bundle.json`` and ``withheld.json`` into ``out_dir``.

    An image that needs approval is released only against an approval on the server
    (:mod:`fhir_images._approvals`); without one, an approval is requested and the image
    waits. Every released image is audited (naming the approver where there is one) before
    anything is written, in one transaction that also marks each approval used.

    The release Bundle (type collection) carries the high-water mark and only
    handling obligations (no sensitivity codes, which would reveal private
    facts); each released Media is followed by its Binary with the bytes, both with
    the highest labels of the two.
    """
    if not is_reference(patient) or not patient.startswith("Patient/"):
        raise ActionRefused("the patient is named by a reference, like Patient/123")
    client.capabilities()
    _check_parties(client, req)
    at = now or datetime.now(UTC)
    records = patient_records(client, patient)
    decisions = decide_disclosure(records, req, now=at)
    for i, (record, decision) in enumerate(zip(records, decisions, strict=True)):
        if decision.verdict is Verdict.APPROVE:
            records[i] = replace(record, approvals=approvals_for(client, record.ref))
            decisions[i] = decide_one(records[i], req, now=at)
    by_ref = {r.ref: r for r in records}
    released = [(by_ref[d.media], d) for d in decisions if d.verdict is Verdict.RELEASE]

    requests_made: dict[str, str] = {}
    for d in decisions:
        if d.verdict is Verdict.APPROVE:
            requests_made[d.media] = request_approval(
                client, by_ref[d.media], req, patient, d.reasons, now=at
            )

    audits: list[str] = []
    if released:
        entries: list[dict[str, Any]] = []
        for record, decision in released:
            audit_url = f"urn:uuid:{uuid.uuid4()}"
            approver = decision.approval.approver if decision.approval else None
            entries.append(
                {
                    "fullUrl": audit_url,
                    "resource": audit_disclosure(record, req, patient, approver=approver),
                    "request": {"method": "POST", "url": "AuditEvent"},
                }
            )
            if decision.approval is not None:
                entries.append(use_approval_entry(client, decision.approval, audit_url))
        response = client.transaction(
            {"resourceType": "Bundle", "type": "transaction", "entry": entries},
            idempotent=False,
        )
        audits = [
            e.get("response", {}).get("location", "").split("/_history")[0]
            for e in response.get("entry", [])
            if e.get("response", {}).get("location", "").startswith("AuditEvent/")
        ]

    _private_dir(out_dir)
    bundle_path = out_dir / "release-bundle.json"
    _write_release(client, bundle_path, [r for r, _ in released], high_water_mark(decisions))
    withheld = []
    for d in decisions:
        if d.verdict is not Verdict.RELEASE:
            row = d.as_dict()
            row["approval_request"] = requests_made.get(d.media)
            withheld.append(row)
    withheld_path = out_dir / "withheld.json"
    _write_private(
        withheld_path,
        json.dumps(
            {"patient": patient, "purpose": req.purpose, "images": withheld}, indent=2
        ).encode(),
    )
    return DisclosureResult(decisions, bundle_path, withheld_path, audits, requests_made)


def _write_release(client: FhirClient, path: Path, released: list[ImageRecord], hwm: str) -> None:
    caveats: dict[tuple[str, str], dict[str, Any]] = {}
    for r in released:
        for s in releasable_labels(r):
            if s.get("system") == c.V3_ACT_CODE and s.get("code") in _OBLIGATIONS:
                caveats[(s["system"], s["code"])] = {"system": s["system"], "code": s["code"]}
    meta = {"security": [{"system": c.V3_CONFIDENTIALITY, "code": hwm}, *caveats.values()]}
    head = {"resourceType": "Bundle", "type": "collection", "timestamp": _now(), "meta": meta}
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        text = json.dumps(head)
        out.write(text[:-1] + ', "entry": [')
        first = True
        for r in released:
            media = json.loads(json.dumps(r.media))
            labels = {"security": releasable_labels(r)}
            media["meta"] = labels
            out.write(
                ("" if first else ",")
                + json.dumps({"fullUrl": f"{client.base_url}{r.ref}", "resource": media})
            )
            first = False
            binary = binary_reference(media.get("content", {}).get("url"), client.base_url)
            if binary is not None:
                ctype = media["content"].get("contentType", "application/octet-stream")
                out.write(
                    ',{"fullUrl": '
                    + json.dumps(f"{client.base_url}{binary}")
                    + ', "resource": {"resourceType": "Binary", "id": '
                    + json.dumps(binary.split("/", 1)[1])
                    + ', "contentType": '
                    + json.dumps(ctype)
                    + ', "securityContext": '
                    + json.dumps({"reference": r.ref})
                    + ', "meta": '
                    + json.dumps(labels)
                    + ', "data": "'
                )
                pending = b""
                for chunk in client.iter_binary(binary, ctype):
                    pending += chunk
                    cut = len(pending) - len(pending) % 3  # no base64 padding mid-way
                    out.write(base64.b64encode(pending[:cut]).decode())
                    pending = pending[cut:]
                out.write(base64.b64encode(pending).decode())
                out.write('"}}')
        out.write("]}")
    os.replace(tmp, path)


# ------------------------------------------------------------------------- consent changes

_PERMISSION_PURPOSE = {
    "second_opinion": c.COC,
    "teaching": c.TRAIN,
    "research": c.HRESCH,
    "care": c.TREAT,
}


@dataclass
class ConsentChange:
    """What a consent change did: the Consents changed, the images whose labels were raised,
    and the Consents that needed no change (already inactive, already denying)."""

    changed: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    @property
    def nothing_changed(self) -> bool:
        return not self.changed


def _images_named(client: FhirClient, ref: str) -> list[str]:
    if not is_reference(ref) or not ref.startswith(("Consent/", "Media/")):
        raise ActionRefused("name a Consent (Consent/123) or an image (Media/123)")
    if ref.startswith("Media/"):
        client.read(ref)  # it must exist
        return [ref]
    images = images_of_consent(client.read(ref))
    if not images:
        raise ActionRefused(f"{ref} names no image")
    return images


def withdraw_consent(client: FhirClient, ref: str, *, by: str, reason: str) -> ConsentChange:
    """The patient withdraws their consent for an image (named directly, or by one of its
    Consents): *every* active Consent of that image becomes inactive, its provision period
    ends now (If-Match), each change is recorded in a Provenance, and the image and its
    bytes gain NOREUSE and NORDSCLCDS. Withdrawing what is already inactive changes nothing."""
    if not by.strip() or not reason.strip():
        raise ActionRefused("withdrawing consent needs who (by) and why (reason)")
    result = ConsentChange()
    for media in _images_named(client, ref):
        for consent in consents_for_image(client, media):
            cref = f"Consent/{consent['id']}"
            if consent.get("status") != "active":
                result.unchanged.append(cref)
                continue
            version = consent.get("meta", {}).get("versionId")
            consent["status"] = "inactive"
            provision = consent.setdefault("provision", {"type": "deny"})
            provision.setdefault("period", {})["end"] = _now()
            updated = client.update(consent, if_match=version)
            record_consent_change(client, updated, by=by, reason=reason, activity="withdrawn")
            result.changed.append(cref)
        if result.changed:
            label_image(client, media, [c.NOREUSE.as_coding(), c.NORDSCLCDS.as_coding()])
            result.images.append(media)
    return result


def narrow_consent(
    client: FhirClient, ref: str, *, deny: Iterable[str], by: str, reason: str
) -> ConsentChange:
    """Turn permissions (second_opinion, teaching, research) into explicit denies in every
    active Consent of the image (If-Match); a Consent that already denies them is unchanged."""
    if not by.strip() or not reason.strip():
        raise ActionRefused("narrowing consent needs who (by) and why (reason)")
    purposes = set()
    for name in deny:
        if name not in _PERMISSION_PURPOSE or name == "care":
            raise ActionRefused(
                f"cannot narrow {name!r}: choose second_opinion, teaching or "
                "research (to stop care use, withdraw the consent)"
            )
        purposes.add(_PERMISSION_PURPOSE[name])
    result = ConsentChange()
    for media in _images_named(client, ref):
        for consent in consents_for_image(client, media):
            cref = f"Consent/{consent['id']}"
            if consent.get("status") != "active":
                result.unchanged.append(cref)
                continue
            version = consent.get("meta", {}).get("versionId")
            root = consent.setdefault("provision", {"type": "deny"})
            nested = root.setdefault("provision", [])
            changed = False
            for purpose in purposes:
                matching = [
                    p for p in nested if purpose in {x.get("code") for x in p.get("purpose", [])}
                ]
                for p in matching:
                    if p.get("type") != "deny":
                        p["type"] = "deny"
                        changed = True
                if not matching:
                    nested.append(
                        {"type": "deny", "purpose": [{"system": c.V3_ACT_REASON, "code": purpose}]}
                    )
                    changed = True
            if not changed:
                result.unchanged.append(cref)
                continue
            updated = client.update(consent, if_match=version)
            record_consent_change(
                client,
                updated,
                by=by,
                reason=reason,
                activity="narrowed: " + ", ".join(sorted(purposes)),
            )
            result.changed.append(cref)
        if result.changed and c.COC in purposes:
            label_image(client, media, [c.NORDSCLCDS.as_coding()])
            result.images.append(media)
    return result


# ----------------------------------------------------------------------------- retention


@dataclass(frozen=True)
class RetentionSchedule:
    name: str
    title: str
    record_types: dict[str, Any]

    @classmethod
    def load(cls, name: str = "england", path: Path | None = None) -> RetentionSchedule:
        try:
            if path is not None:
                data = json.loads(Path(path).read_text())
            else:
                data = json.loads(
                    resources.files("fhir_images")
                    .joinpath("data", f"retention-{name}.json")
                    .read_text()
                )
        except (OSError, ValueError) as exc:
            raise ActionRefused(f"no usable retention schedule {name!r}: {exc}") from exc
        return cls(data["name"], data["title"], data["record_types"])


def _add_years(d: date, years: int) -> date:
    try:
        return d.replace(year=d.year + years)
    except ValueError:  # 29 February
        return d.replace(year=d.year + years, day=28)


def earliest_destruction(
    schedule: RetentionSchedule,
    record_type: str,
    *,
    birth_date: date,
    last_treatment: date,
    deceased: date | None = None,
) -> tuple[date | None, str]:
    """The first day the record may be destroyed (None: not while the patient lives), and why."""
    if record_type not in schedule.record_types:
        raise ActionRefused(
            f"the {schedule.name} schedule has no record type {record_type!r}; "
            f"choose one of {', '.join(sorted(schedule.record_types))}"
        )
    age_at_end = (
        last_treatment.year
        - birth_date.year
        - ((last_treatment.month, last_treatment.day) < (birth_date.month, birth_date.day))
    )
    facts = {
        "any": True,
        "adult": age_at_end >= 18,
        "child": age_at_end < 18,
        "child_17_at_end": age_at_end == 17,
        "alive": deceased is None,
        "deceased": deceased is not None,
    }
    latest: date | None = date.min
    why = []
    for rule in schedule.record_types[record_type]["rules"]:
        if not facts.get(rule["applies"], False):
            continue
        if rule.get("keep_while_alive"):
            return None, f"{record_type}: kept while the patient is alive"
        if "until_birthday" in rule:
            until = _add_years(birth_date, int(rule["until_birthday"]))
            why.append(f"until the {rule['until_birthday']}th birthday ({until})")
        else:
            start = {"last_treatment": last_treatment, "death": deceased}[rule["after"]]
            assert start is not None
            until = _add_years(start, int(rule["years"]))
            why.append(f"{rule['years']} years after {rule['after'].replace('_', ' ')} ({until})")
        latest = max(latest or date.min, until)
    if latest == date.min:
        return None, f"{record_type}: no rule of the {schedule.name} schedule applies; kept"
    return latest, f"{record_type}: " + "; ".join(why)


def _parse_date(value: str | None) -> date | None:
    return date.fromisoformat(value[:10]) if value else None


def audit_destruction(
    media: dict[str, Any],
    media_ref: str,
    *,
    by: str,
    reason: str,
    retention: str,
    destroyed_with: list[str],
    now: datetime | None = None,
) -> dict[str, Any]:
    """The AuditEvent for destroying ``media`` (G13): who, when, why, the retention rule and the
    image's hash. The Media is named by identifier, since it is gone. ``destroyed_with`` lists
    what goes with it; ``now`` is the ``recorded`` instant (default: the current time)."""
    sha = next(
        (i.get("value") for i in media.get("identifier", []) if i.get("system") == c.SID_SHA256),
        None,
    )
    return {
        "resourceType": "AuditEvent",
        "meta": {"security": [_confidentiality_label(media)]},
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
        "agent": [{"who": _who(by), "requestor": True}],
        "source": {"observer": {"display": SOURCE_NAME}},
        "entity": [
            {
                "what": {"reference": media.get("subject", {}).get("reference")},
                "type": {"system": c.AUDIT_ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": c.OBJECT_ROLE, "code": "1", "display": "Patient"},
            },
            {
                "what": {
                    "identifier": {"system": c.SID_SHA256, "value": sha},
                    "display": f"{media_ref} (destroyed)",
                },
                "type": {"system": c.AUDIT_ENTITY_TYPE, "code": "2", "display": "System Object"},
                "description": f"Destroyed with {', '.join(destroyed_with) or 'nothing else'}. "
                f"Reason: {reason}. Retention: {retention}.",
            },
        ],
    }


@dataclass
class DestructionResult:
    media: str
    deleted: list[str]
    audit_event: str


def destroy(
    client: FhirClient,
    media_ref: str,
    *,
    by: str,
    reason: str,
    record_type: str = "hospital",
    schedule: RetentionSchedule | None = None,
    last_treatment: date | None = None,
    today: date | None = None,
) -> DestructionResult:
    """Delete a Media, its Binary, its Consents and Provenance together, with an AuditEvent,
    once the retention schedule allows it and no legal hold is on it (G13)."""
    if not by.strip() or not reason.strip():
        raise ActionRefused("destroying an image needs who (by) and why (reason)")
    schedule = schedule or RetentionSchedule.load()
    today = today or datetime.now(UTC).date()
    media = client.read(media_ref)
    labels = {(s.get("system"), s.get("code")) for s in media.get("meta", {}).get("security", [])}
    if (c.LEGAL_HOLD.system, c.LEGAL_HOLD.code) in labels:
        raise ActionRefused(f"{media_ref} is under a legal hold: it cannot be destroyed")
    subject = media.get("subject", {}).get("reference")
    if not subject:
        raise ActionRefused(f"{media_ref} has no subject: its retention cannot be worked out")
    patient = client.read(subject)
    birth = _parse_date(patient.get("birthDate"))
    if birth is None:
        raise ActionRefused(
            "the patient has no birth date: the retention period cannot be worked "
            "out, so the image is kept"
        )
    created = _parse_date(media.get("createdDateTime") or media.get("issued"))
    last = last_treatment or created
    if last is None:
        raise ActionRefused("give the date of last treatment: the image has no creation date")
    until, why = earliest_destruction(
        schedule,
        record_type,
        birth_date=birth,
        last_treatment=last,
        deceased=_parse_date(patient.get("deceasedDateTime")),
    )
    if until is None or today < until:
        raise ActionRefused(f"retention ({schedule.title}) says keep it: {why}")

    consents = consents_for_image(client, media_ref)
    shared = [x for x in consents if set(images_of_consent(x)) - {media_ref}]
    if shared:
        raise ActionRefused(
            "a Consent also covers other images ("
            + ", ".join(f"Consent/{x['id']}" for x in shared)
            + "); change it first"
        )
    doomed = [media_ref]
    binary = binary_reference(media.get("content", {}).get("url"), client.base_url)
    if binary is not None:
        context = client.binary_meta(binary).get("securityContext", {}).get("reference")
        if context != media_ref:
            raise ActionRefused(
                f"{binary} does not name {media_ref} as its securityContext: the bytes may "
                "belong to another image, so nothing is destroyed; resolve it by hand"
            )
        doomed.append(binary)
    doomed += [f"Consent/{x['id']}" for x in consents]
    provenances = {
        f"Provenance/{p['id']}"
        for target in [media_ref, *(f"Consent/{x['id']}" for x in consents)]
        for p in client.search("Provenance", {"target": target, "_count": "100"})
    }
    doomed += sorted(provenances)
    doomed += [
        f"Task/{t['id']}" for t in client.search("Task", {"focus": media_ref, "_count": "100"})
    ]
    audit = audit_destruction(
        media, media_ref, by=by, reason=reason, retention=why, destroyed_with=doomed[1:]
    )
    entries: list[dict[str, Any]] = [
        {"request": {"method": "DELETE", "url": ref}} for ref in reversed(doomed)
    ]
    entries.append({"resource": audit, "request": {"method": "POST", "url": "AuditEvent"}})
    try:
        response = client.transaction(
            {"resourceType": "Bundle", "type": "transaction", "entry": entries}, idempotent=False
        )
    except ServerError as exc:
        if exc.status == 409:
            raise ActionRefused(f"other resources still reference {media_ref}: {exc}") from exc
        raise
    location = response.get("entry", [{}])[-1].get("response", {}).get("location", "")
    return DestructionResult(media_ref, doomed, location.split("/_history")[0])


# --------------------------------------------------------------------------- anonymisation


@dataclass
class AnonymisedCopy:
    image: Path
    media: Path


def anonymise(
    client: FhirClient, media_ref: str, out_dir: Path, *, purpose: str = "TRAIN", by: str
) -> AnonymisedCopy:
    """An anonymised copy for teaching or research, if the Consent permits it (G2).

    All metadata goes (EXIF, ICC, XMP, text; the orientation is applied to the
    pixels), no patient reference, no identifiers, dates or free text. The
    picture itself may still identify the patient (a face, a tattoo): the copy
    is labelled for human approval before use.
    """
    if purpose not in (c.TRAIN, c.HRESCH):
        raise ActionRefused("anonymised copies are for teaching (TRAIN) or research (HRESCH)")
    record = read_record(client, media_ref)
    if not consent_required(record) and not record.consents:
        raise ActionRefused(
            f"{media_ref} has implicit consent for care only; secondary use "
            "needs its own consent (G2)"
        )
    active = [x for x in record.consents if x.get("status") == "active"]
    if not active:
        raise ActionRefused(f"no active Consent for {media_ref}: an anonymised copy is refused")
    for consent in active:
        kind, why = provision_for(consent, purpose)
        if kind != "permit":
            raise ActionRefused(f"not consented: {why}")
    if (
        record.binary is None
        or record.binary.get("securityContext", {}).get("reference") != media_ref
    ):
        raise ActionRefused(
            f"the bytes of {media_ref} are not a Binary that names it as its securityContext"
        )
    media = record.media
    ctype = media.get("content", {}).get("contentType", "")
    if not ctype.startswith("image/"):
        raise ActionRefused(
            "only still images can be anonymised automatically; recordings "
            "need manual review and editing"
        )
    from ._intake import Limits, decode_for_copy

    limits = Limits()
    raw = bytearray()
    binary = binary_reference(media["content"]["url"], client.base_url)
    assert binary is not None
    for chunk in client.iter_binary(binary, ctype):
        raw += chunk
        if len(raw) > limits.max_image_bytes:
            raise ActionRefused(f"{binary} is larger than an image may be; no copy is made")
    upright = decode_for_copy(bytes(raw), limits)
    from PIL import Image

    pixels = Image.frombytes("RGB", upright.size, upright.tobytes())  # nothing but pixels
    buf = io.BytesIO()
    pixels.save(buf, "PNG")
    data = buf.getvalue()
    sha256 = hashlib.sha256(data).hexdigest()
    name = sha256[:16]
    image_path = out_dir / f"anonymised-{name}.png"
    copy: dict[str, Any] = {
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
        "type": media.get("type"),
        "content": {
            "contentType": "image/png",
            "url": image_path.name,
            "size": len(data),
            "hash": base64.b64encode(hashlib.sha1(data).digest()).decode(),
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
        if key in media:
            copy[key] = {
                "coding": [
                    {k: v for k, v in cd.items() if k in ("system", "code")}
                    for cd in media[key].get("coding", [])
                ]
            }
    # a secondary use: audited before anything is written out, or nothing is
    client.create(audit_anonymisation(record, purpose=purpose, by=by, copy_sha256=sha256))
    _private_dir(out_dir)
    _write_private(image_path, data)
    media_path = out_dir / f"anonymised-{name}.json"
    _write_private(media_path, json.dumps(copy, indent=2).encode())
    return AnonymisedCopy(image_path, media_path)


def audit_anonymisation(
    record: ImageRecord, *, purpose: str, by: str, copy_sha256: str, now: datetime | None = None
) -> dict[str, Any]:
    """The AuditEvent of an anonymised copy made for a secondary use (ISO 21089 de-identify):
    who made it, for what, from which image, and the copy's hash."""
    subject = record.media.get("subject", {}).get("reference")
    return {
        "resourceType": "AuditEvent",
        "meta": {"security": [c.conf(record.confidentiality).as_coding()]},
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
        "agent": [
            {
                "type": {
                    "coding": [{"system": c.DICOM, "code": "110153", "display": "Source Role ID"}]
                },
                "who": {"display": SOURCE_NAME},
                "requestor": False,
            },
            {"who": _who(by), "requestor": True},
        ],
        "source": {"observer": {"display": SOURCE_NAME}},
        "entity": [
            *(
                [
                    {
                        "what": {"reference": subject},
                        "type": {"system": c.AUDIT_ENTITY_TYPE, "code": "1", "display": "Person"},
                        "role": {"system": c.OBJECT_ROLE, "code": "1", "display": "Patient"},
                    }
                ]
                if subject
                else []
            ),
            {
                "what": {"reference": record.ref},
                "type": {"system": c.AUDIT_ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": c.OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
            },
            {
                "what": {"identifier": {"system": c.SID_SHA256, "value": copy_sha256}},
                "type": {"system": c.AUDIT_ENTITY_TYPE, "code": "2", "display": "System Object"},
                "description": "the anonymised copy",
            },
        ],
    }
