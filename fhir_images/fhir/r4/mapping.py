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
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.binary import Binary
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.consent import Consent
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.media import Media
from fhir.resources.R4B.provenance import Provenance

from ... import _codes as c
from ..._context import ClinicalContext, ConsentGiver, ConsentRecord, ImageKind, Permissions
from ..._intake import ImageFacts
from ...policy import Decision, SecurityLabels
from .. import parental
from ..building import (
    Builders,
    MappedSubmission,
    assemble,
    binary_resource,
    image_notes,
    provenance_resource,
)
from ..building import concept as _coded
from ..building import identifiers as _identifiers
from ..building import new_meta as _meta

_MODALITY = {
    ImageKind.PHOTO: ("XC", "External-camera Photography"),
    ImageKind.VIDEO: ("XC", "External-camera Photography"),
    ImageKind.ULTRASOUND: ("US", "Ultrasound"),
    ImageKind.ENDOSCOPY: ("ES", "Endoscopy"),
    ImageKind.XRAY: ("DX", "Digital Radiography"),
    ImageKind.PATHOLOGY_SLIDE: ("SM", "Slide Microscopy"),
}


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
    if ctx.request:  # the clinician's request it answers (W5)
        data["basedOn"] = [{"reference": ctx.request}]
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


#: The uses a recording consent covers (GMC paras 10-35), each a purpose of use, and whether
#: the use is of anonymised copies only (teaching, research).
USES: tuple[tuple[str, str, bool], ...] = (
    ("store", c.TREAT, False),
    ("second_opinion", c.COC, False),
    ("teaching", c.TRAIN, True),
    ("research", c.HRESCH, True),
)

#: What an organisation reference says when the context names none: IHE PCF requires the
#: organisation that presented the policy and will enforce it.
UNNAMED_ORGANISATION = "The organisation that holds this record (not named when it was made)"


def _purpose(code: str) -> dict[str, str]:
    return {"system": c.V3_ACT_REASON, "code": code}


def _given(perms: Permissions, use: str) -> bool:
    return bool(perms.view and perms.store) if use == "store" else bool(getattr(perms, use))


def consent_provision(perms: Permissions, image_ref: str, start: datetime) -> dict[str, Any]:
    """The Consent's provision in the shape of IHE PCF's Intermediate option: the root permits
    the consented purposes of use on the image (``data`` meaning instance), and each use not
    consented to is a nested deny naming its purpose. No ``action``, ``class`` or ``code``
    (PCF forbids them); two levels at most. With no use consented to, the root is a deny.

    Teaching and research are for anonymised copies only (G2): PCF has no element for that
    (its Advanced option's ``securityLabel`` codes lack ANONYED), so each such purpose is named
    in an ``anonymised-use-only`` extension of the root provision."""
    permitted = [p for use, p, _ in USES if _given(perms, use)]
    refused = [p for use, p, _ in USES if not _given(perms, use)]
    root: dict[str, Any] = {
        "type": "permit" if permitted else "deny",
        "period": {"start": _iso(start)},
        "data": [{"meaning": "instance", "reference": {"reference": image_ref}}],
    }
    if permitted:
        root["purpose"] = [_purpose(p) for p in permitted]
    anonymised = [p for use, p, anon in USES if anon and _given(perms, use)]
    if anonymised:
        root["extension"] = [
            {"url": c.EXT_ANONYMISED_USE_ONLY, "valueCoding": _purpose(p)} for p in anonymised
        ]
    if refused:
        root["provision"] = [{"type": "deny", "purpose": [_purpose(p)]} for p in refused]
    return root


def build_consent(
    ctx: ClinicalContext,
    consent: ConsentRecord,
    labels: SecurityLabels,
    *,
    submission_id: str,
    image_ref: str,
    record: str | None = None,
) -> Consent:
    """A Consent that conforms to IHE PCF (Intermediate option) and to ``recording-consent``:
    scope patient-privacy, the giver as ``performer``, the organisation, the record of the
    discussion as ``sourceAttachment``, the GMC guidance as ``policy.uri``. A consent confirmed
    after an unsolicited image arrived (G6) says so in a ``consent-confirmed`` extension (PCF
    does not use ``verification``)."""
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
        "performer": [parental.consenter(consent, giver)],
        "organization": [
            {"reference": ctx.organization}
            if ctx.organization
            else {"display": UNNAMED_ORGANISATION}
        ],
        "sourceAttachment": {
            "contentType": "text/plain; charset=utf-8",
            "data": base64.b64encode(discussion.encode()).decode(),
            "title": f"Consent discussion ({consent.method}), taken by {consent.taken_by}",
            "creation": _iso(consent.date),
        },
        "policy": [{"uri": c.GMC_RECORDINGS_POLICY}],
        "provision": consent_provision(consent.permissions, image_ref, consent.date),
    }
    if consent.confirmed:
        data["extension"] = [{"url": c.EXT_CONSENT_CONFIRMED, "valueDateTime": _iso(consent.date)}]
    return Consent.model_validate(data)


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


def build_provenance(ctx: ClinicalContext, labels: SecurityLabels, **kw: Any) -> Provenance:
    return Provenance.model_validate(provenance_resource(ctx, labels, **kw))


def build_binary(facts: ImageFacts, labels: SecurityLabels, **kw: Any) -> Binary:
    return Binary.model_validate(binary_resource(facts, labels, **kw))


BUILDERS = Builders(
    encounter=build_encounter,
    binary=build_binary,
    image=build_media,
    consent=build_consent,
    provenance=build_provenance,
    bundle=Bundle,
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
