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
from datetime import UTC, datetime
from typing import Any

from fhir.resources.binary import Binary
from fhir.resources.bundle import Bundle
from fhir.resources.consent import Consent
from fhir.resources.documentreference import DocumentReference
from fhir.resources.encounter import Encounter
from fhir.resources.provenance import Provenance

from ... import _codes as c
from ..._context import ClinicalContext, ConsentGiver, ConsentRecord, ImageKind, Permissions
from ..._intake import ImageFacts
from ...policy import Decision, SecurityLabels
from .. import ds4p, parental
from ..building import (
    Builders,
    MappedSubmission,
    assemble,
    binary_resource,
    concept,
    identifiers,
    image_notes,
    new_meta,
    provenance_resource,
)
from ..common import iso

#: DICOM modality of each kind of image that has one (photo and video: external camera)
MODALITY = {
    ImageKind.PHOTO: ("XC", "External-camera Photography"),
    ImageKind.VIDEO: ("XC", "External-camera Photography"),
    ImageKind.ULTRASOUND: ("US", "Ultrasound"),
    ImageKind.ENDOSCOPY: ("ES", "Endoscopy"),
    ImageKind.XRAY: ("DX", "Digital Radiography"),
    ImageKind.PATHOLOGY_SLIDE: ("SM", "Slide Microscopy"),
}


def _sizes_as_strings(bundle: dict[str, Any]) -> None:
    """R5's Attachment.size is an integer64, a JSON string (the models dump it as a number,
    which an R5 server refuses)."""
    for entry in bundle.get("entry", []):
        if entry["resource"]["resourceType"] != "DocumentReference":
            continue
        for content in entry["resource"].get("content", []):
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
    if ctx.request:  # the clinician's request it answers (W5)
        data["basedOn"] = [{"reference": ctx.request}]
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
        "grantor": [parental.consenter(consent, giver)],
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


def build_provenance(ctx: ClinicalContext, labels: SecurityLabels, **kw: Any) -> Provenance:
    return Provenance.model_validate(provenance_resource(ctx, labels, **kw))


def build_binary(facts: ImageFacts, labels: SecurityLabels, **kw: Any) -> Binary:
    return Binary.model_validate(binary_resource(facts, labels, **kw))


BUILDERS = Builders(
    encounter=build_encounter,
    binary=build_binary,
    image=build_image,
    consent=build_consent,
    provenance=build_provenance,
    bundle=Bundle,
    finish_json=_sizes_as_strings,
    artifact_target=ds4p.r5_target,
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
    """The resources and the transaction Bundle for a decision to store; see
    :func:`fhir_images.fhir.building.assemble`."""
    return assemble(
        ctx, consent, facts, decision, BUILDERS, submission_id=submission_id, new_id=new_id, now=now
    )
