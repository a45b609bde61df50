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
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from . import _codes as c
from ._codes import Confidentiality
from ._disclosure import (
    DisclosureDecision,
    DisclosureRequest,
    ImageRecord,
    Verdict,
    consent_required,
    decide_disclosure,
    high_water_mark,
    provision_for,
    releasable_labels,
)
from ._exceptions import ActionRefused, ServerError
from ._labels import apply_labels
from ._transport import FhirClient

SOURCE_NAME = "fhir-images"
_REF = re.compile(r"^[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}$")
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
    return {"reference": value} if _REF.match(value) else {"display": value}


# -------------------------------------------------------------------------------- reading


def read_record(client: FhirClient, media_ref: str) -> ImageRecord:
    media = client.read(media_ref)
    return _with_consents(client, media)


def _with_consents(client: FhirClient, media: dict[str, Any]) -> ImageRecord:
    ref = f"Media/{media['id']}"
    try:
        consents = list(client.search("Consent", {"data": ref, "_count": "50"}))
    except ServerError as exc:
        return ImageRecord(media, [], consent_error=type(exc).__name__)
    return ImageRecord(media, consents)


def patient_records(client: FhirClient, patient: str) -> list[ImageRecord]:
    """Every Media of a patient, each with the Consents that reference it."""
    return [
        _with_consents(client, m)
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
    record: ImageRecord, req: DisclosureRequest, patient: str, *, now: datetime | None = None
) -> dict[str, Any]:
    """An AuditEvent for one released image (IHE BALP: privacy disclosure at the source).

    ``now`` is the ``recorded`` instant (default: the current time).
    """
    security = record.media.get("meta", {}).get("security", [])
    conf = _confidentiality_label(record.media)
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
            "who": _who(req.recipient or req.requester),
            "requestor": False,
        },
        {"who": _who(req.requester), "requestor": True},
    ]
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
    bundle: Path
    withheld: Path
    audit_events: list[str] = field(default_factory=list)

    @property
    def released(self) -> list[DisclosureDecision]:
        return [d for d in self.decisions if d.verdict is Verdict.RELEASE]


def disclose(
    client: FhirClient, patient: str, req: DisclosureRequest, out_dir: Path
) -> DisclosureResult:
    """Decide, audit, then write ``release-bundle.json`` and ``withheld.json`` into ``out_dir``.

    The release Bundle (type collection) carries the high-water mark and only
    handling obligations (no sensitivity codes, which would reveal private
    facts); each released Media is followed by its Binary with the bytes.
    """
    client.capabilities()
    records = patient_records(client, patient)
    decisions = decide_disclosure(records, req)
    by_ref = {r.ref: r for r in records}
    released = [by_ref[d.media] for d in decisions if d.verdict is Verdict.RELEASE]

    audits: list[str] = []
    if released:
        response = client.transaction(
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {
                        "resource": audit_disclosure(r, req, patient),
                        "request": {"method": "POST", "url": "AuditEvent"},
                    }
                    for r in released
                ],
            },
            idempotent=False,
        )
        audits = [
            e.get("response", {}).get("location", "").split("/_history")[0]
            for e in response.get("entry", [])
        ]

    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    bundle_path = out_dir / "release-bundle.json"
    _write_release(client, bundle_path, released, high_water_mark(decisions))
    withheld = [d.as_dict() for d in decisions if d.verdict is not Verdict.RELEASE]
    withheld_path = out_dir / "withheld.json"
    withheld_path.write_text(
        json.dumps({"patient": patient, "purpose": req.purpose, "images": withheld}, indent=2)
    )
    return DisclosureResult(decisions, bundle_path, withheld_path, audits)


def _write_release(client: FhirClient, path: Path, released: list[ImageRecord], hwm: str) -> None:
    caveats: dict[tuple[str, str], dict[str, Any]] = {}
    for r in released:
        for s in r.media.get("meta", {}).get("security", []):
            if s.get("system") == c.V3_ACT_CODE and s.get("code") in _OBLIGATIONS:
                caveats[(s["system"], s["code"])] = {"system": s["system"], "code": s["code"]}
    meta = {"security": [{"system": c.V3_CONFIDENTIALITY, "code": hwm}, *caveats.values()]}
    head = {"resourceType": "Bundle", "type": "collection", "timestamp": _now(), "meta": meta}
    with path.open("w") as out, tempfile.TemporaryDirectory() as tmp:
        text = json.dumps(head)
        out.write(text[:-1] + ', "entry": [')
        first = True
        for r in released:
            media = json.loads(json.dumps(r.media))
            media["meta"] = {
                "security": releasable_labels(media.get("meta", {}).get("security", []))
            }
            url = media.get("content", {}).get("url", "")
            out.write(
                ("" if first else ",")
                + json.dumps({"fullUrl": f"{client.base_url}{r.ref}", "resource": media})
            )
            first = False
            if url.startswith("Binary/"):
                blob = Path(tmp) / "binary"
                ctype = media["content"].get("contentType", "application/octet-stream")
                client.download_binary(url, blob, ctype)
                out.write(
                    ',{"fullUrl": '
                    + json.dumps(f"{client.base_url}{url}")
                    + ', "resource": {"resourceType": "Binary", "id": '
                    + json.dumps(url.split("/", 1)[1])
                    + ', "contentType": '
                    + json.dumps(ctype)
                    + ', "meta": '
                    + json.dumps(media["meta"])
                    + ', "data": "'
                )
                with blob.open("rb") as f:
                    while chunk := f.read(3 * (1 << 18)):  # a multiple of 3: no padding mid-way
                        out.write(base64.b64encode(chunk).decode())
                out.write('"}}')
        out.write("]}")


# ------------------------------------------------------------------------- consent changes

_PERMISSION_PURPOSE = {
    "second_opinion": c.COC,
    "teaching": c.TRAIN,
    "research": c.HRESCH,
    "care": c.TREAT,
}


def _record_change(
    client: FhirClient, consent: dict[str, Any], by: str, reason: str, activity: str
) -> None:
    client.create(
        {
            "resourceType": "Provenance",
            "meta": {
                "security": [
                    s
                    for s in consent.get("meta", {}).get("security", [])
                    if s.get("system") == c.V3_CONFIDENTIALITY
                ]
            },
            "target": [
                {
                    "reference": f"Consent/{consent['id']}/_history/"
                    f"{consent.get('meta', {}).get('versionId', '1')}"
                }
            ],
            "recorded": _now(),
            "activity": {
                "coding": [{"system": c.V3_DATA_OPERATION, "code": "UPDATE"}],
                "text": activity,
            },
            "reason": [{"text": reason}],
            "agent": [
                {
                    "type": {"coding": [{"system": c.PROVENANCE_PARTICIPANT, "code": "author"}]},
                    "who": _who(by),
                }
            ],
        }
    )


def _media_of(consent: dict[str, Any]) -> list[str]:
    return [
        d["reference"]["reference"]
        for d in consent.get("provision", {}).get("data", [])
        if d.get("reference", {}).get("reference", "").startswith("Media/")
    ]


def withdraw_consent(
    client: FhirClient, consent_ref: str, *, by: str, reason: str
) -> dict[str, Any]:
    """The patient withdraws consent: the Consent becomes inactive (If-Match), the Media gain
    NOREUSE and NORDSCLCDS, and later disclosures withhold them."""
    if not by.strip() or not reason.strip():
        raise ActionRefused("withdrawing consent needs who (by) and why (reason)")
    consent = client.read(consent_ref)
    version = consent.get("meta", {}).get("versionId")
    consent["status"] = "inactive"
    updated = client.update(consent, if_match=version)
    _record_change(client, updated, by, reason, "consent withdrawn")
    for media in _media_of(updated):
        apply_labels(client, media, [c.NOREUSE.as_coding(), c.NORDSCLCDS.as_coding()])
    return updated


def narrow_consent(
    client: FhirClient, consent_ref: str, *, deny: Iterable[str], by: str, reason: str
) -> dict[str, Any]:
    """Turn permissions (second_opinion, teaching, research) into explicit denies (If-Match)."""
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
    consent = client.read(consent_ref)
    version = consent.get("meta", {}).get("versionId")
    root = consent.setdefault("provision", {"type": "deny"})
    nested = root.setdefault("provision", [])
    for purpose in purposes:
        matching = [p for p in nested if purpose in {x.get("code") for x in p.get("purpose", [])}]
        for p in matching:
            p["type"] = "deny"
        if not matching:
            nested.append(
                {"type": "deny", "purpose": [{"system": c.V3_ACT_REASON, "code": purpose}]}
            )
    updated = client.update(consent, if_match=version)
    _record_change(client, updated, by, reason, "consent narrowed: " + ", ".join(sorted(purposes)))
    if c.COC in purposes:
        for media in _media_of(updated):
            apply_labels(client, media, [c.NORDSCLCDS.as_coding()])
    return updated


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

    consents = list(client.search("Consent", {"data": media_ref, "_count": "50"}))
    shared = [x for x in consents if set(_media_of(x)) - {media_ref}]
    if shared:
        raise ActionRefused(
            "a Consent also covers other images ("
            + ", ".join(f"Consent/{x['id']}" for x in shared)
            + "); change it first"
        )
    provenances = list(client.search("Provenance", {"target": media_ref, "_count": "50"}))
    doomed = [media_ref]
    binary = media.get("content", {}).get("url", "")
    if binary.startswith("Binary/"):
        doomed.append(binary)
    doomed += [f"Consent/{x['id']}" for x in consents]
    doomed += [f"Provenance/{x['id']}" for x in provenances]
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
    media = record.media
    ctype = media.get("content", {}).get("contentType", "")
    if not ctype.startswith("image/"):
        raise ActionRefused(
            "only still images can be anonymised automatically; recordings "
            "need manual review and editing"
        )
    from PIL import Image, ImageOps

    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        client.download_binary(media["content"]["url"], raw, ctype)
        with Image.open(raw) as im:
            upright = ImageOps.exif_transpose(im).convert("RGB")
    pixels = Image.frombytes("RGB", upright.size, upright.tobytes())  # nothing but pixels
    buf = io.BytesIO()
    pixels.save(buf, "PNG")
    data = buf.getvalue()
    name = hashlib.sha256(data).hexdigest()[:16]
    image_path = out_dir / f"anonymised-{name}.png"
    image_path.write_bytes(data)
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
                "text": f"Anonymised copy for {purpose} made by {by}: metadata, identifiers, "
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
    media_path = out_dir / f"anonymised-{name}.json"
    media_path.write_text(json.dumps(copy, indent=2))
    return AnonymisedCopy(image_path, media_path)
