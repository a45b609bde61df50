"""R4 resources -> views: the only place that reads R4 field names of what the server sent."""

from __future__ import annotations

from typing import Any

from ... import _codes as c
from ..._context import ImageKind
from .. import parental
from ..common import KIND_BY_MODALITY, parse_instant
from ..common import codings as _codings
from ..common import labels_of as _labels
from ..common import ref_of as _ref
from ..common import version_of as _version
from ..records_common import approval_view
from ..views import (
    ApprovalView,
    ConsentView,
    ImageView,
)


def image_kind(media: dict[str, Any]) -> ImageKind:
    """The kind of image the record says: fhir-images' own coding, else the DICOM modality,
    else the media type (photo, video, audio)."""
    codings = _codings(media.get("modality"))
    for coding in codings:
        if (
            coding.get("system") == c.LOCAL_IMAGE_KIND
            and coding.get("code") in ImageKind._value2member_map_
        ):
            return ImageKind(coding["code"])
    for coding in codings:
        if coding.get("system") == c.DICOM and coding.get("code") in KIND_BY_MODALITY:
            return KIND_BY_MODALITY[str(coding["code"])]
    category = next((cd.get("code") for cd in _codings(media.get("type"))), "image")
    return {"video": ImageKind.VIDEO, "audio": ImageKind.AUDIO}.get(str(category), ImageKind.PHOTO)


def image(media: dict[str, Any]) -> ImageView:
    content = media.get("content") if isinstance(media.get("content"), dict) else {}
    assert isinstance(content, dict)
    reasons = [r for r in media.get("reasonCode", []) if isinstance(r, dict)]
    texts = [r.get("text") for r in reasons]
    texts += [cd.get("display") for r in reasons for cd in _codings(r)]
    purpose = next((t for t in texts if isinstance(t, str) and t.strip()), None)
    sha256 = next(
        (
            str(i.get("value"))
            for i in media.get("identifier", [])
            if isinstance(i, dict) and i.get("system") == c.SID_SHA256
        ),
        None,
    )
    size = content.get("size")
    return ImageView(
        ref=f"Media/{media.get('id')}",
        labels=_labels(media),
        subject=_ref(media.get("subject")),
        content_url=content.get("url") if isinstance(content.get("url"), str) else None,
        content_type=content.get("contentType"),
        content_hash=content.get("hash"),
        content_size=size if isinstance(size, int) else None,
        has_inline_data=bool(content.get("data")),
        created=parse_instant(media.get("createdDateTime") or media.get("issued")),
        kind=image_kind(media),
        purpose=purpose,
        operator=_ref(media.get("operator")),
        sha256=sha256,
        version_id=_version(media),
        raw=media,
    )


def consent(resource: dict[str, Any]) -> ConsentView:
    root = resource.get("provision") if isinstance(resource.get("provision"), dict) else {}
    assert isinstance(root, dict)
    images = tuple(
        str(d["reference"]["reference"])
        for d in root.get("data", []) or []
        if isinstance(d, dict)
        and isinstance(d.get("reference"), dict)
        and str(d["reference"].get("reference", "")).startswith("Media/")
    )
    # Nested provisions are the exceptions to the root (IHE PCF): they are read first. The root's
    # own purposes come next (PCF's shape: a root permit naming the consented purposes); purposes
    # named nowhere get the root's rule when it names no purposes (the older shape: a root deny
    # with nested permits), and a deny when it does. A root permit that names no purpose at all
    # is read as consent to care only: fhir-images never writes one, and consent to every
    # secondary use of a clinical image is not to be inferred from silence.
    provisions = tuple(
        (_purposes(nested), str(nested.get("type", "deny")))
        for nested in root.get("provision", []) or []
        if isinstance(nested, dict)
    )
    root_rule = str(root.get("type", "deny"))
    root_purposes = _purposes(root)
    if root_rule == "permit" and not root_purposes:
        root_purposes = frozenset({c.TREAT})
    if root_purposes:
        provisions += ((root_purposes, root_rule),)
        base_rule = "deny"
    else:
        base_rule = root_rule
    period = root.get("period") if isinstance(root.get("period"), dict) else {}
    assert isinstance(period, dict)
    return ConsentView(
        ref=f"Consent/{resource.get('id')}",
        status=str(resource.get("status")),
        date_time=parse_instant(resource.get("dateTime")),
        ended=parse_instant(period.get("end")),
        images=images,
        performers=tuple(r for r in (_ref(p) for p in resource.get("performer", []) or []) if r),
        record_keys=frozenset(
            str(i.get("value"))
            for i in resource.get("identifier", []) or []
            if isinstance(i, dict) and i.get("system") == c.SID_RECORD
        ),
        labels=_labels(resource),
        version_id=_version(resource),
        provisions=provisions,
        base_rule=base_rule,
        raw=resource,
        parental_responsibility=parental.first_stated(resource.get("performer")),
    )


def _purposes(provision: dict[str, Any]) -> frozenset[str]:
    return frozenset(
        str(p.get("code")) for p in provision.get("purpose", []) or [] if isinstance(p, dict)
    )


def approval(resource: dict[str, Any]) -> ApprovalView | None:
    """The approval an R4 Task records (its purpose in ``reasonCode``)."""
    return approval_view(resource, [resource.get("reasonCode")])
