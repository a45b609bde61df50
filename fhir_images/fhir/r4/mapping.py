"""R4 mapping: a decision to store -> FHIR R4 resources and one transaction Bundle.

No HTTP here. The Bundle holds every resource of one image, the Binary included,
so that the server stores all of them or none (see :class:`MappedSubmission`):
the Binary carries the Media's security labels and a ``securityContext``
pointing at the Media from the moment it exists. Its bytes are not in the
outbox copy of the Bundle: the sender adds them (streamed) as the server allows.

Every entry is a conditional create keyed on a deterministic *record key*
(:func:`image_key`, :func:`consent_key`), so the same image and the same consent
act are stored once however often, and from however many outboxes, they are sent.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.binary import Binary
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.consent import Consent
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.media import Media
from fhir.resources.R4B.provenance import Provenance

from ... import _codes as c
from ..._context import ClinicalContext, ConsentGiver, ConsentRecord, ImageKind, Maker, Permissions
from ..._intake import ImageFacts
from ...policy import Decision, Outcome, SecurityLabels
from ..building import concept as _coded
from ..building import conditional_entry as _entry
from ..building import identifiers as _identifiers
from ..building import image_notes
from ..building import new_meta as _meta
from ..building import random_id as _random_id
from ..keys import binary_id, consent_key, image_key, record_key

_MODALITY = {
    ImageKind.PHOTO: ("XC", "External-camera Photography"),
    ImageKind.VIDEO: ("XC", "External-camera Photography"),
    ImageKind.ULTRASOUND: ("US", "Ultrasound"),
    ImageKind.ENDOSCOPY: ("ES", "Endoscopy"),
    ImageKind.XRAY: ("DX", "Digital Radiography"),
    ImageKind.PATHOLOGY_SLIDE: ("SM", "Slide Microscopy"),
}


@dataclass(frozen=True)
class MappedSubmission:
    """What will be sent for one image.

    ``bundle`` is a transaction whose Binary has no ``data``: the sender adds the
    stored bytes (inline, streamed, or written into the Binary right after the
    transaction, as the server allows). ``media_url`` and ``binary_url`` are the
    ``fullUrl`` of the Media and Binary entries. The Binary is created with a
    client-chosen id (:func:`binary_id`), which ``Media.content.url`` names.
    """

    submission_id: str
    bundle: Bundle
    media: Media
    consent: Consent | None
    provenance: Provenance
    encounter: Encounter | None
    binary: Binary
    media_url: str
    binary_url: str
    image_key: str
    consent_key: str

    def bundle_json(self) -> dict[str, Any]:
        return self.bundle.model_dump(mode="json", exclude_none=True)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def build_media(
    ctx: ClinicalContext,
    facts: ImageFacts,
    decision: Decision,
    *,
    submission_id: str,
    binary_url: str,
    encounter_ref: str | None,
    now: datetime | None = None,
) -> Media:
    """The Media; ``now`` (the ``issued`` instant) defaults to the current time."""
    labels = decision.labels
    notes = [f"Clinical relevance and purpose: {ctx.purpose}"]
    notes += image_notes(ctx, facts, decision.consent.value)
    now = now or datetime.now(UTC)
    data: dict[str, Any] = {
        "resourceType": "Media",
        "meta": _meta(labels.all(), submission_id),
        "identifier": [
            {"system": c.SID_SHA256, "value": facts.sha256_hex},
            {"system": c.SID_SUBMISSION, "value": submission_id},
        ],
        "status": "completed",
        "type": {
            "coding": [
                {
                    "system": c.MEDIA_TYPE,
                    "code": facts.category,
                    "display": facts.category.capitalize(),
                }
            ]
        },
        "subject": {"reference": ctx.patient},
        "createdDateTime": _iso(ctx.captured),
        "issued": _iso(now),
        "reasonCode": [
            {"text": ctx.purpose, **(_coded(ctx.purpose_code) if ctx.purpose_code else {})}
        ],
        "content": {
            "contentType": facts.media_type,
            "url": binary_url,
            "size": facts.size,
            "hash": facts.sha1_b64,
            "creation": _iso(ctx.captured),
            **({"title": ctx.title} if ctx.title else {}),
        },
        "note": [{"text": text} for text in notes],
        "extension": [{"url": c.EXT_REMOTE_CONSULTATION, "valueBoolean": ctx.remote}],
    }
    # the kind of image, in fhir-images' own code (what implicit consent depends on, G3), and
    # as a DICOM modality where there is one
    kind_coding = {"system": c.LOCAL_IMAGE_KIND, "code": ctx.kind.value}
    data["modality"] = {"coding": [kind_coding]}
    if ctx.kind in _MODALITY:
        code, display = _MODALITY[ctx.kind]
        data["modality"]["coding"].insert(0, {"system": c.DICOM, "code": code, "display": display})
    if encounter_ref:
        data["encounter"] = {"reference": encounter_ref}
    if ctx.operator:
        data["operator"] = {"reference": ctx.operator}
    if ctx.body_site:
        data["bodySite"] = _coded(ctx.body_site)
    if ctx.device_name:
        data["deviceName"] = ctx.device_name
    for key, value in (("width", facts.width), ("height", facts.height)):
        if value:
            data[key] = value
    if facts.category == "image" and facts.frames:
        data["frames"] = facts.frames
    if facts.duration_s is not None:
        data["duration"] = round(facts.duration_s, 3)
    return Media.model_validate(data)


def _provision(
    permit: bool, actions: list[str], purpose: str, anonymised: bool = False
) -> dict[str, Any]:
    p: dict[str, Any] = {
        "type": "permit" if permit else "deny",
        "action": [{"coding": [{"system": c.CONSENT_ACTION, "code": a}]} for a in actions],
        "purpose": [{"system": c.V3_ACT_REASON, "code": purpose}],
    }
    if anonymised:
        p["securityLabel"] = [{"system": c.V3_OBSERVATION_VALUE, "code": "ANONYED"}]
    return p


def consent_provisions(perms: Permissions) -> list[dict[str, Any]]:
    """Nested provisions, one per permission, each a permit or an explicit deny."""
    return [
        _provision(perms.view and perms.store, ["collect", "access", "use"], c.TREAT),
        _provision(perms.second_opinion, ["disclose"], c.COC),
        _provision(perms.teaching, ["use", "disclose"], c.TRAIN, anonymised=True),
        _provision(perms.research, ["use", "disclose"], c.HRESCH, anonymised=True),
    ]


def build_consent(
    ctx: ClinicalContext,
    consent: ConsentRecord,
    labels: SecurityLabels,
    *,
    submission_id: str,
    media_ref: str,
    record: str | None = None,
) -> Consent:
    giver = ctx.patient if consent.given_by is ConsentGiver.PATIENT else consent.giver
    assert giver is not None  # validated by ConsentRecord
    discussion = consent.discussion or "Consent discussion not summarised."
    data: dict[str, Any] = {
        "resourceType": "Consent",
        "meta": _meta(labels.without_provenance().all(), submission_id),
        "identifier": _identifiers(submission_id, record),
        "status": "active",
        "scope": {"coding": [{"system": c.CONSENT_SCOPE, "code": "patient-privacy"}]},
        "category": [
            {"coding": [{"system": c.LOINC, "code": "59284-0", "display": "Patient Consent"}]},
            {
                "coding": [
                    {"system": c.V3_ACT_CODE, "code": "ICOL", "display": "information collection"}
                ]
            },
            {
                "coding": [
                    {"system": c.V3_ACT_CODE, "code": "IDSCL", "display": "information disclosure"}
                ]
            },
        ],
        "patient": {"reference": ctx.patient},
        "dateTime": _iso(consent.date),
        "performer": [{"reference": giver}],
        "sourceAttachment": {
            "contentType": "text/plain; charset=utf-8",
            "data": base64.b64encode(discussion.encode()).decode(),
            "title": f"Consent discussion ({consent.method}), taken by {consent.taken_by}",
            "creation": _iso(consent.date),
        },
        "policy": [{"uri": c.GMC_RECORDINGS_POLICY}],
        "provision": {
            "type": "deny",
            "period": {"start": _iso(consent.date)},
            "data": [{"meaning": "instance", "reference": {"reference": media_ref}}],
            "provision": consent_provisions(consent.permissions),
        },
    }
    if ctx.organization:
        data["organization"] = [{"reference": ctx.organization}]
    if consent.confirmed:
        data["verification"] = [
            {
                "verified": True,
                "verifiedWith": {"reference": giver},
                "verificationDate": _iso(consent.date),
            }
        ]
    return Consent.model_validate(data)


def build_provenance(
    ctx: ClinicalContext,
    labels: SecurityLabels,
    *,
    submission_id: str,
    targets: list[str],
    now: datetime | None = None,
    record: str | None = None,
) -> Provenance:
    """Who supplied the image and when; ``now`` (``recorded``) defaults to the current time."""
    agents: list[dict[str, Any]] = []
    author: dict[str, Any] = {
        "type": {"coding": [{"system": c.PROVENANCE_PARTICIPANT, "code": "author"}]},
        "who": (
            {"reference": ctx.operator}
            if ctx.operator
            else {"display": f"made by: {ctx.made_by.value.replace('_', ' ')}"}
        ),
    }
    if ctx.made_by in (Maker.PARENT, Maker.RELATIVE_OR_CARER):
        author["onBehalfOf"] = {"reference": ctx.patient}
    agents.append(author)
    if ctx.recorded_by:
        agents.append(
            {
                "type": {"coding": [{"system": c.PROVENANCE_PARTICIPANT, "code": "enterer"}]},
                "who": {"reference": ctx.recorded_by},
            }
        )
    data: dict[str, Any] = {
        "resourceType": "Provenance",
        "meta": _meta(labels.without_provenance().all(), submission_id, record),
        "target": [{"reference": t} for t in targets],
        "occurredDateTime": _iso(ctx.captured),
        "recorded": _iso(now or datetime.now(UTC)),
        "activity": {"coding": [{"system": c.V3_DATA_OPERATION, "code": "CREATE"}]},
        "agent": agents,
    }
    return Provenance.model_validate(data)


def build_encounter(
    ctx: ClinicalContext, labels: SecurityLabels, *, submission_id: str, record: str | None = None
) -> Encounter:
    """A virtual Encounter (class VR) for a remote consultation that has none in the record."""
    return Encounter.model_validate(
        {
            "resourceType": "Encounter",
            "meta": _meta([c.conf(labels.confidentiality)], submission_id),
            "identifier": _identifiers(submission_id, record),
            "status": "finished",
            "class": {"system": c.V3_ACT_CODE, "code": "VR", "display": "virtual"},
            "subject": {"reference": ctx.patient},
            "period": {"start": _iso(ctx.captured), "end": _iso(ctx.captured)},
        }
    )


def build_binary(
    facts: ImageFacts,
    labels: SecurityLabels,
    *,
    submission_id: str,
    media_ref: str,
    record: str,
) -> Binary:
    """The Binary for the stored bytes, without them: the Media's labels and a securityContext
    naming the Media, so the server and every reader treat the bytes as the Media."""
    return Binary.model_validate(
        {
            "resourceType": "Binary",
            "meta": _meta(labels.all(), submission_id, record),
            "contentType": facts.media_type,
            "securityContext": {"reference": media_ref},
        }
    )


def map_submission(
    ctx: ClinicalContext,
    consent: ConsentRecord | None,
    facts: ImageFacts,
    decision: Decision,
    *,
    submission_id: str | None = None,
    new_id: Callable[[], str] | None = None,
    now: datetime | None = None,
) -> MappedSubmission:
    """Build the resources and the transaction Bundle for a decision to store.

    ``new_id`` makes the submission id (unless given) and the ``urn:uuid``
    placeholders (default: random UUIDs); ``now`` is the instant written as
    ``Media.issued`` and ``Provenance.recorded`` (default: the current time).
    Both exist so that examples and tests can be reproduced exactly.
    """
    if decision.outcome is not Outcome.STORE:
        raise ValueError(f"only a decision to store is mapped (this one is {decision.outcome})")
    make_id = new_id or _random_id
    sid = submission_id or make_id()
    media_url = f"urn:uuid:{make_id()}"
    binary_url = f"urn:uuid:{make_id()}"
    labels = decision.labels
    key = image_key(ctx.patient, facts.sha256_hex)
    ckey = consent_key(consent)

    def by_identifier(record: str) -> str:
        return f"identifier={c.SID_RECORD}|{record}"

    entries: list[dict[str, Any]] = []
    encounter = None
    encounter_ref = ctx.encounter
    if ctx.remote and not ctx.encounter:
        record = record_key(key, "encounter")
        encounter = build_encounter(ctx, labels, submission_id=sid, record=record)
        encounter_ref = f"urn:uuid:{make_id()}"
        entries.append(_entry(encounter_ref, encounter, by_identifier(record)))

    record = record_key(key, "binary")
    binary_ref = f"Binary/{binary_id(key)}"
    binary = build_binary(facts, labels, submission_id=sid, media_ref=media_url, record=record)
    binary.id = binary_id(key)
    entries.append(
        {
            "fullUrl": binary_url,
            "resource": binary.model_dump(mode="json", exclude_none=True),
            # a client-chosen id: created once, found again after a lost reply, and named by
            # the Media directly (not every server resolves placeholders in a url element)
            "request": {"method": "PUT", "url": binary_ref},
        }
    )
    media = build_media(
        ctx,
        facts,
        decision,
        submission_id=sid,
        binary_url=binary_ref,
        encounter_ref=encounter_ref,
        now=now,
    )
    entries.append(
        _entry(
            media_url, media, f"identifier={c.SID_SHA256}|{facts.sha256_hex}&subject={ctx.patient}"
        )
    )
    targets = [media_url]
    consent_res = None
    if consent is not None:
        consent_url = f"urn:uuid:{make_id()}"
        record = record_key(key, "consent", ckey)
        consent_res = build_consent(
            ctx, consent, labels, submission_id=sid, media_ref=media_url, record=record
        )
        entries.append(_entry(consent_url, consent_res, by_identifier(record)))
        targets.append(consent_url)
    record = record_key(key, "provenance", ckey)
    provenance = build_provenance(
        ctx, labels, submission_id=sid, targets=targets, now=now, record=record
    )
    entries.append(_entry(f"urn:uuid:{make_id()}", provenance, f"_tag={c.SID_RECORD}|{record}"))

    # DS4P: the Bundle carries only the high-water mark; caveats and sensitivity codes that would
    # reveal private facts stay on the entries.
    bundle = Bundle.model_validate(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "meta": {"security": [c.conf(labels.confidentiality).as_coding()]},
            "entry": entries,
        }
    )
    return MappedSubmission(
        sid,
        bundle,
        media,
        consent_res,
        provenance,
        encounter,
        binary,
        media_url,
        binary_url,
        key,
        ckey,
    )
