"""Shared queries and small records about an image on a server.

One definition each of: the Binary an image points at, the Consents of an
image, and the Provenance that records a change of a Consent.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from . import _codes as c
from ._inputs import reference_parts
from ._transport import FhirClient


def is_reference(value: str) -> bool:
    """A relative FHIR reference ``Type/id`` (id as FHIR's id rules allow)."""
    return reference_parts(value) is not None


def who(value: str) -> dict[str, str]:
    """A Reference for a reference, a display for anything else (a name of a system)."""
    return {"reference": value} if is_reference(value) else {"display": value}


def binary_reference(url: Any, base_url: str) -> str | None:
    """``Binary/{id}`` for a Media's content.url on this server (relative or absolute).

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


def consents_for_image(client: FhirClient, media_ref: str) -> list[dict[str, Any]]:
    """Every Consent that names the image in its provision data (any status)."""
    return list(client.search("Consent", {"data": media_ref, "_count": "100"}))


def images_of_consent(consent: dict[str, Any]) -> list[str]:
    """The Media a Consent's provision names."""
    return [
        d["reference"]["reference"]
        for d in (consent.get("provision") or {}).get("data", [])
        if str(d.get("reference", {}).get("reference", "")).startswith("Media/")
    ]


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


def create_once(client: FhirClient, resource: dict[str, Any], if_none_exist: str) -> str:
    """Create a resource unless one matching ``if_none_exist`` exists; its reference either way.

    A conditional create inside a transaction (supported where the plain If-None-Exist header
    is not), so a repeat after a lost reply creates nothing twice.
    """
    response = client.transaction(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": resource,
                    "request": {
                        "method": "POST",
                        "url": resource["resourceType"],
                        "ifNoneExist": if_none_exist,
                    },
                }
            ],
        }
    )
    location = str(response.get("entry", [{}])[0].get("response", {}).get("location", ""))
    return "/".join(location.split("/")[:2])


def record_consent_change(
    client: FhirClient,
    consent: dict[str, Any],
    *,
    by: str | None,
    reason: str,
    activity: str,
) -> None:
    """A Provenance for one change of one Consent (its version), written once however often."""
    version = consent.get("meta", {}).get("versionId", "1")
    target = f"Consent/{consent['id']}/_history/{version}"
    record = f"consent-change.{consent['id']}.{version}"
    agent: dict[str, Any] = {
        "type": {"coding": [{"system": c.PROVENANCE_PARTICIPANT, "code": "author"}]},
        "who": who(by) if by else {"display": "fhir-images"},
    }
    confidentiality = [
        s
        for s in consent.get("meta", {}).get("security", [])
        if s.get("system") == c.V3_CONFIDENTIALITY
    ][:1] or [c.conf(c.Confidentiality.V).as_coding()]  # unlabelled: fail closed
    provenance = {
        "resourceType": "Provenance",
        "meta": {"security": confidentiality, "tag": [{"system": c.SID_RECORD, "code": record}]},
        "target": [{"reference": target}],
        "recorded": iso(datetime.now(UTC)),
        "activity": {
            "coding": [{"system": c.V3_DATA_OPERATION, "code": "UPDATE"}],
            "text": f"consent {activity}",
        },
        "reason": [
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
        "agent": [agent],
    }
    create_once(client, provenance, f"_tag={c.SID_RECORD}|{record}")
