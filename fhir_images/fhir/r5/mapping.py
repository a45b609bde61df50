"""R5 mapping: a decision to store -> FHIR R5 resources and one transaction Bundle.

The same record as R4 (see :mod:`fhir_images.fhir.r4.mapping`), in R5's shapes: the image is a
``DocumentReference`` (R5 has no Media) whose attachment carries size, dimensions, frames and
duration; its confidentiality is in ``meta.security`` and, as IHE MHD carries it, in
``securityLabel``. The Consent is R5's: a base ``decision`` of deny with one permit provision
per permitted purpose, each scoped to the image (``data`` meaning instance); a purpose not
permitted has no provision, so the base deny applies. The same record keys and the same
Binary id as R4, so an image is stored once whichever version sent it.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fhir.resources.binary import Binary
from fhir.resources.bundle import Bundle
from fhir.resources.consent import Consent
from fhir.resources.documentreference import DocumentReference
from fhir.resources.encounter import Encounter
from fhir.resources.provenance import Provenance

from ... import _codes as c
from ..._context import ClinicalContext, ConsentGiver, ConsentRecord, ImageKind, Maker, Permissions
from ..._intake import ImageFacts
from ...policy import Decision, Outcome, SecurityLabels
from ..building import concept, conditional_entry, identifiers, image_notes, new_meta, random_id
from ..common import iso
from ..keys import binary_id, consent_key, image_key, record_key

#: DICOM modality of each kind of image that has one (photo and video: external camera)
MODALITY = {
    ImageKind.PHOTO: ("XC", "External-camera Photography"),
    ImageKind.VIDEO: ("XC", "External-camera Photography"),
    ImageKind.ULTRASOUND: ("US", "Ultrasound"),
    ImageKind.ENDOSCOPY: ("ES", "Endoscopy"),
    ImageKind.XRAY: ("DX", "Digital Radiography"),
    ImageKind.PATHOLOGY_SLIDE: ("SM", "Slide Microscopy"),
}


@dataclass(frozen=True)
class MappedSubmission:
    """What will be sent for one image (R5); as the R4 one, with the image a DocumentReference.
    The Binary has no ``data``: the sender adds the stored bytes as the server allows."""

    submission_id: str
    bundle: Bundle
    image: DocumentReference
    consent: Consent | None
    provenance: Provenance
    encounter: Encounter | None
    binary: Binary
    image_url: str
    binary_url: str
    image_key: str
    consent_key: str

    def bundle_json(self) -> dict[str, Any]:
        bundle = self.bundle.model_dump(mode="json", exclude_none=True)
        for entry in bundle.get("entry", []):
            if entry["resource"]["resourceType"] == "DocumentReference":
                _size_as_string(entry["resource"])
        return bundle


def _size_as_string(doc: dict[str, Any]) -> None:
    """R5's Attachment.size is an integer64, a JSON string (the models dump it as a number,
    which an R5 server refuses)."""
    for content in doc.get("content", []):
        attachment = content.get("attachment", {})
        if isinstance(attachment.get("size"), int):
            attachment["size"] = str(attachment["size"])


def _narrative(lines: list[str]) -> dict[str, str]:
    body = "".join(f"<p>{html.escape(line)}</p>" for line in lines)
    return {
        "status": "additional",
        "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{body}</div>',
    }


def build_image(
    ctx: ClinicalContext,
    facts: ImageFacts,
    decision: Decision,
    *,
    submission_id: str,
    binary_url: str,
    encounter_ref: str | None,
    now: datetime | None = None,
) -> DocumentReference:
    """The DocumentReference of the image; ``now`` (its ``date``) defaults to the current time.

    The clinical purpose is the ``description``; the other notes (remote consultation, best
    interests, metadata removed, the consent it rests on) are its narrative, as R4's notes."""
    labels = decision.labels
    notes = image_notes(ctx, facts, decision.consent.value)
    if ctx.device_name:
        notes.append(f"Device: {ctx.device_name}")
    attachment: dict[str, Any] = {
        "contentType": facts.media_type,
        "url": binary_url,
        "size": str(facts.size),
        "hash": facts.sha1_b64,
        "creation": iso(ctx.captured),
        **({"title": ctx.title} if ctx.title else {}),
    }
    for key, value in (("width", facts.width), ("height", facts.height)):
        if value:
            attachment[key] = value
    if facts.category == "image" and facts.frames:
        attachment["frames"] = facts.frames
    if facts.duration_s is not None:
        attachment["duration"] = round(facts.duration_s, 3)
    modality = [{"system": c.LOCAL_IMAGE_KIND, "code": ctx.kind.value}]
    if ctx.kind in MODALITY:
        code, display = MODALITY[ctx.kind]
        modality.insert(0, {"system": c.DICOM, "code": code, "display": display})
    data: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "meta": new_meta(labels.all(), submission_id),
        "text": _narrative(notes),
        "identifier": [
            {"system": c.SID_SHA256, "value": facts.sha256_hex},
            {"system": c.SID_SUBMISSION, "value": submission_id},
        ],
        "status": "current",
        "docStatus": "final",
        "modality": [{"coding": modality}],
        "category": [
            {
                "coding": [
                    {
                        "system": c.MEDIA_TYPE,
                        "code": facts.category,
                        "display": facts.category.capitalize(),
                    }
                ]
            }
        ],
        "subject": {"reference": ctx.patient},
        "date": iso(now or datetime.now(UTC)),
        "description": ctx.purpose,
        "securityLabel": [{"coding": [c.conf(labels.confidentiality).as_coding()]}],
        "content": [{"attachment": attachment}],
        "extension": [{"url": c.EXT_REMOTE_CONSULTATION, "valueBoolean": ctx.remote}],
    }
    if ctx.purpose_code:
        data["event"] = [{"concept": concept(ctx.purpose_code)}]
    if encounter_ref:
        data["context"] = [{"reference": encounter_ref}]
    if ctx.operator:
        data["author"] = [{"reference": ctx.operator}]
    if ctx.body_site:
        data["bodySite"] = [{"concept": concept(ctx.body_site)}]
    return DocumentReference.model_validate(data)


def _permit(actions: list[str], purpose: str, image_ref: str, anonymised: bool) -> dict[str, Any]:
    p: dict[str, Any] = {
        "action": [{"coding": [{"system": c.CONSENT_ACTION, "code": a}]} for a in actions],
        "purpose": [{"system": c.V3_ACT_REASON, "code": purpose}],
        "data": [{"meaning": "instance", "reference": {"reference": image_ref}}],
    }
    if anonymised:
        p["securityLabel"] = [{"system": c.V3_OBSERVATION_VALUE, "code": "ANONYED"}]
    return p


def consent_provisions(perms: Permissions, image_ref: str) -> list[dict[str, Any]]:
    """One permit provision (an exception to the base deny) per permitted purpose."""
    wanted = [
        (perms.view and perms.store, ["collect", "access", "use"], c.TREAT, False),
        (perms.second_opinion, ["disclose"], c.COC, False),
        (perms.teaching, ["use", "disclose"], c.TRAIN, True),
        (perms.research, ["use", "disclose"], c.HRESCH, True),
    ]
    return [_permit(a, p, image_ref, anon) for given, a, p, anon in wanted if given]


def build_consent(
    ctx: ClinicalContext,
    consent: ConsentRecord,
    labels: SecurityLabels,
    *,
    submission_id: str,
    image_ref: str,
    record: str | None = None,
) -> Consent:
    giver = ctx.patient if consent.given_by is ConsentGiver.PATIENT else consent.giver
    assert giver is not None  # validated by ConsentRecord
    discussion = consent.discussion or "Consent discussion not summarised."
    data: dict[str, Any] = {
        "resourceType": "Consent",
        "meta": new_meta(labels.without_provenance().all(), submission_id),
        "identifier": identifiers(submission_id, record),
        "status": "active",
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
        "subject": {"reference": ctx.patient},
        "date": consent.date.astimezone(UTC).date().isoformat(),
        # R5's date has no time of day: the period's start keeps the moment it was given
        "period": {"start": iso(consent.date)},
        "grantor": [{"reference": giver}],
        "sourceAttachment": [
            {
                "contentType": "text/plain; charset=utf-8",
                "data": _b64(discussion),
                "title": f"Consent discussion ({consent.method}), taken by {consent.taken_by}",
                "creation": iso(consent.date),
            }
        ],
        "policyBasis": {"url": c.GMC_RECORDINGS_POLICY},
        "decision": "deny",
        "provision": consent_provisions(consent.permissions, image_ref),
    }
    if ctx.organization:
        data["controller"] = [{"reference": ctx.organization}]
    if consent.confirmed:
        data["verification"] = [
            {
                "verified": True,
                "verifiedWith": {"reference": giver},
                "verificationDate": [iso(consent.date)],
            }
        ]
    return Consent.model_validate(data)


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


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
    agents = [author]
    if ctx.recorded_by:
        agents.append(
            {
                "type": {"coding": [{"system": c.PROVENANCE_PARTICIPANT, "code": "enterer"}]},
                "who": {"reference": ctx.recorded_by},
            }
        )
    return Provenance.model_validate(
        {
            "resourceType": "Provenance",
            "meta": new_meta(labels.without_provenance().all(), submission_id, record),
            "target": [{"reference": t} for t in targets],
            "occurredDateTime": iso(ctx.captured),
            "recorded": iso(now or datetime.now(UTC)),
            "activity": {"coding": [{"system": c.V3_DATA_OPERATION, "code": "CREATE"}]},
            "agent": agents,
        }
    )


def build_encounter(
    ctx: ClinicalContext, labels: SecurityLabels, *, submission_id: str, record: str | None = None
) -> Encounter:
    """A virtual Encounter (class VR) for a remote consultation that has none in the record."""
    return Encounter.model_validate(
        {
            "resourceType": "Encounter",
            "meta": new_meta([c.conf(labels.confidentiality)], submission_id),
            "identifier": identifiers(submission_id, record),
            "status": "completed",
            "class": [{"coding": [{"system": c.V3_ACT_CODE, "code": "VR", "display": "virtual"}]}],
            "subject": {"reference": ctx.patient},
            "actualPeriod": {"start": iso(ctx.captured), "end": iso(ctx.captured)},
        }
    )


def build_binary(
    facts: ImageFacts, labels: SecurityLabels, *, submission_id: str, image_ref: str, record: str
) -> Binary:
    """The Binary for the stored bytes, without them: the image's labels and a securityContext
    naming the image."""
    return Binary.model_validate(
        {
            "resourceType": "Binary",
            "meta": new_meta(labels.all(), submission_id, record),
            "contentType": facts.media_type,
            "securityContext": {"reference": image_ref},
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
    """Build the resources and the transaction Bundle for a decision to store (R5)."""
    if decision.outcome is not Outcome.STORE:
        raise ValueError(f"only a decision to store is mapped (this one is {decision.outcome})")
    make_id = new_id or random_id
    sid = submission_id or make_id()
    image_url = f"urn:uuid:{make_id()}"
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
        entries.append(conditional_entry(encounter_ref, encounter, by_identifier(record)))

    record = record_key(key, "binary")
    binary_ref = f"Binary/{binary_id(key)}"
    binary = build_binary(facts, labels, submission_id=sid, image_ref=image_url, record=record)
    binary.id = binary_id(key)
    entries.append(
        {
            "fullUrl": binary_url,
            "resource": binary.model_dump(mode="json", exclude_none=True),
            "request": {"method": "PUT", "url": binary_ref},
        }
    )
    image = build_image(
        ctx,
        facts,
        decision,
        submission_id=sid,
        binary_url=binary_ref,
        encounter_ref=encounter_ref,
        now=now,
    )
    entries.append(
        conditional_entry(
            image_url, image, f"identifier={c.SID_SHA256}|{facts.sha256_hex}&subject={ctx.patient}"
        )
    )
    targets = [image_url]
    consent_res = None
    if consent is not None:
        consent_url = f"urn:uuid:{make_id()}"
        record = record_key(key, "consent", ckey)
        consent_res = build_consent(
            ctx, consent, labels, submission_id=sid, image_ref=image_url, record=record
        )
        entries.append(conditional_entry(consent_url, consent_res, by_identifier(record)))
        targets.append(consent_url)
    record = record_key(key, "provenance", ckey)
    provenance = build_provenance(
        ctx, labels, submission_id=sid, targets=targets, now=now, record=record
    )
    entries.append(
        conditional_entry(f"urn:uuid:{make_id()}", provenance, f"_tag={c.SID_RECORD}|{record}")
    )
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
        image,
        consent_res,
        provenance,
        encounter,
        binary,
        image_url,
        binary_url,
        key,
        ckey,
    )
