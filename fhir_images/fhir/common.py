"""Small things every FHIR version shares: instants, references, a Media's Binary."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from .._context import ImageKind
from .._inputs import reference_parts
from .views import BinaryView, Labels, PatientView, TaskView


def iso(dt: datetime) -> str:
    """A FHIR instant in UTC."""
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_instant(value: Any) -> datetime | None:
    """A FHIR dateTime/instant as an aware datetime (UTC when no zone is given); None if not one."""
    if not isinstance(value, str) or not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def is_reference(value: str) -> bool:
    """A relative FHIR reference ``Type/id`` (id as FHIR's id rules allow)."""
    return reference_parts(value) is not None


def who(value: str) -> dict[str, str]:
    """A Reference for a reference, a display for anything else (a name of a system)."""
    return {"reference": value} if is_reference(value) else {"display": value}


def binary_reference(url: Any, base_url: str) -> str | None:
    """``Binary/{id}`` for an image's content URL on this server (relative or absolute).

    None for anything else: no URL, another server, a contained or inline attachment.
    """
    if not isinstance(url, str):
        return None
    if url.startswith(base_url):
        url = url[len(base_url) :]
    parts = url.split("/")
    if len(parts) == 2 and parts[0] == "Binary" and is_reference(url):
        return str(url)
    if len(parts) == 4 and parts[0] == "Binary" and parts[2] == "_history":
        ref = "/".join(parts[:2])
        return ref if is_reference(ref) else None
    return None


def created(response: dict[str, Any], resource_type: str) -> list[str]:
    """``Type/id`` of each resource of ``resource_type`` a transaction response reports, in
    order (from each entry's location, without its ``_history`` part)."""
    out = []
    for entry in response.get("entry") or []:
        location = ((entry or {}).get("response") or {}).get("location") or ""
        ref = str(location).split("/_history")[0]
        if ref.startswith(f"{resource_type}/"):
            out.append(ref)
    return out


# ------------------------------------------------------------ reading any version's JSON


def ref_of(value: Any) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("reference"), str):
        return str(value["reference"])
    return None


def labels_of(resource: dict[str, Any]) -> Labels:
    meta = resource.get("meta")
    return Labels.of(meta.get("security", []) if isinstance(meta, dict) else [])


def version_of(resource: dict[str, Any]) -> str | None:
    meta = resource.get("meta")
    version = meta.get("versionId") if isinstance(meta, dict) else None
    return str(version) if version is not None else None


def codings(concept: Any) -> list[dict[str, Any]]:
    if not isinstance(concept, dict):
        return []
    return [x for x in concept.get("coding", []) if isinstance(x, dict)]


# ------------------------------------------- views of what did not change between versions

#: DICOM modality -> the kind of image, for images another system recorded
KIND_BY_MODALITY = {
    "US": ImageKind.ULTRASOUND,
    "ES": ImageKind.ENDOSCOPY,
    "DX": ImageKind.XRAY,
    "CR": ImageKind.XRAY,
    "SM": ImageKind.PATHOLOGY_SLIDE,
}


def _date(value: Any) -> date | None:
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def binary(resource: dict[str, Any]) -> BinaryView:
    meta = resource.get("meta") if isinstance(resource.get("meta"), dict) else {}
    assert isinstance(meta, dict)
    tags = frozenset(
        (str(t.get("system")), str(t.get("code")))
        for t in meta.get("tag", [])
        if isinstance(t, dict)
    )
    return BinaryView(
        ref=f"Binary/{resource.get('id')}",
        labels=labels_of(resource),
        security_context=ref_of(resource.get("securityContext")),
        tags=tags,
        content_type=resource.get("contentType"),
        version_id=version_of(resource),
    )


def patient(resource: dict[str, Any]) -> PatientView:
    return PatientView(
        ref=f"Patient/{resource.get('id')}",
        birth_date=_date(resource.get("birthDate")),
        deceased=_date(resource.get("deceasedDateTime")),
    )


def task(resource: dict[str, Any]) -> TaskView:
    return TaskView(
        ref=f"Task/{resource.get('id')}",
        status=str(resource.get("status")),
        description=resource.get("description"),
        version_id=version_of(resource),
        raw=resource,
    )
