"""R5 resources -> views: the only place that reads R5 field names of what the server sent.

Patients, Binaries and Tasks read as in R4 (their fields did not change in ways the views
use); the image (a DocumentReference) and the Consent are R5's own."""

from __future__ import annotations

from typing import Any

from ... import _codes as c
from ..._codes import Confidentiality
from ..._context import ImageKind
from .. import parental
from ..common import KIND_BY_MODALITY, parse_instant
from ..common import codings as _codings
from ..common import labels_of as _labels
from ..common import ref_of as _ref
from ..common import version_of as _version
from ..records_common import approval_view
from ..views import ApprovalView, ConsentView, ImageView


def image_kind(doc: dict[str, Any]) -> ImageKind:
    """The kind of image the record says: fhir-images' own coding, else the DICOM modality,
    else the media type category (photo, video, audio)."""
    codings = [cd for m in doc.get("modality") or [] for cd in _codings(m)]
    for coding in codings:
        if (
            coding.get("system") == c.LOCAL_IMAGE_KIND
            and coding.get("code") in ImageKind._value2member_map_
        ):
            return ImageKind(coding["code"])
    for coding in codings:
        if coding.get("system") == c.DICOM and coding.get("code") in KIND_BY_MODALITY:
            return KIND_BY_MODALITY[str(coding["code"])]
    category = next(
        (
            cd.get("code")
            for cat in doc.get("category") or []
            for cd in _codings(cat)
            if cd.get("system") == c.MEDIA_TYPE
        ),
        "image",
    )
    return {"video": ImageKind.VIDEO, "audio": ImageKind.AUDIO}.get(str(category), ImageKind.PHOTO)


def _size(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit() and len(value) < 20:
        return int(value)
    return None


def image(doc: dict[str, Any]) -> ImageView:
    """A DocumentReference as an image. More than one content (another format of the same
    document) is read from the first; ``content_url`` is None when it has no attachment URL."""
    contents = [x for x in doc.get("content") or [] if isinstance(x, dict)]
    attachment = contents[0].get("attachment") if contents else None
    att: dict[str, Any] = attachment if isinstance(attachment, dict) else {}
    description = doc.get("description")
    purpose = description if isinstance(description, str) and description.strip() else None
    if purpose is None:
        texts = [
            (e.get("concept") or {}).get("text")
            for e in doc.get("event") or []
            if isinstance(e, dict)
        ]
        purpose = next((t for t in texts if isinstance(t, str) and t.strip()), None)
    sha256 = next(
        (
            str(i.get("value"))
            for i in doc.get("identifier") or []
            if isinstance(i, dict) and i.get("system") == c.SID_SHA256
        ),
        None,
    )
    authors = [r for r in (_ref(a) for a in doc.get("author") or []) if r]
    declared = [
        str(cd.get("code"))
        for label in doc.get("securityLabel") or []
        for cd in _codings(label)
        if cd.get("system") == c.V3_CONFIDENTIALITY
    ]
    return ImageView(
        ref=f"DocumentReference/{doc.get('id')}",
        labels=_labels(doc),
        subject=_ref(doc.get("subject")),
        content_url=att.get("url") if isinstance(att.get("url"), str) else None,
        content_type=att.get("contentType"),
        content_hash=att.get("hash"),
        content_size=_size(att.get("size")),
        has_inline_data=bool(att.get("data")),
        created=parse_instant(att.get("creation") or doc.get("date")),
        kind=image_kind(doc),
        purpose=purpose,
        operator=authors[0] if authors else None,
        sha256=sha256,
        version_id=_version(doc),
        raw=doc,
        declared_confidentiality=_highest(declared),
    )


def _highest(codes: list[str]) -> Confidentiality | None:
    """The highest confidentiality code of a list; V for a code that is not one (fail closed)."""
    if not codes:
        return None
    return max(
        Confidentiality[x] if x in Confidentiality.__members__ else Confidentiality.V for x in codes
    )


def consent(resource: dict[str, Any]) -> ConsentView:
    """An R5 Consent. Its top-level provisions are exceptions to ``decision`` (a permit under a
    deny, a deny under a permit); the images are the instances their ``data`` names. No
    decision reads as deny (fail closed)."""
    decision = "permit" if resource.get("decision") == "permit" else "deny"
    exception = "deny" if decision == "permit" else "permit"
    provisions_raw = [p for p in resource.get("provision") or [] if isinstance(p, dict)]
    images: list[str] = []
    for p in provisions_raw:
        for d in p.get("data") or []:
            ref = _ref(d.get("reference")) if isinstance(d, dict) else None
            if ref and ref.startswith("DocumentReference/") and ref not in images:
                images.append(ref)
    provisions = tuple(
        (
            frozenset(str(x.get("code")) for x in p.get("purpose") or [] if isinstance(x, dict)),
            exception,
        )
        for p in provisions_raw
    )
    period = resource.get("period") if isinstance(resource.get("period"), dict) else {}
    assert isinstance(period, dict)
    return ConsentView(
        ref=f"Consent/{resource.get('id')}",
        status=str(resource.get("status")),
        date_time=parse_instant(period.get("start") or resource.get("date")),
        ended=parse_instant(period.get("end")),
        images=tuple(images),
        performers=tuple(r for r in (_ref(g) for g in resource.get("grantor") or []) if r),
        record_keys=frozenset(
            str(i.get("value"))
            for i in resource.get("identifier") or []
            if isinstance(i, dict) and i.get("system") == c.SID_RECORD
        ),
        labels=_labels(resource),
        version_id=_version(resource),
        provisions=provisions,
        base_rule=decision,
        raw=resource,
        parental_responsibility=parental.first_stated(resource.get("grantor")),
    )


def approval(resource: dict[str, Any]) -> ApprovalView | None:
    """The approval an R5 Task records (its purpose in ``reason``, CodeableReferences)."""
    reasons = [r.get("concept") for r in resource.get("reason") or [] if isinstance(r, dict)]
    return approval_view(resource, reasons)
