"""What tests read from resources whose shape differs between FHIR R4 and R5 (AuditEvents,
Consents and images a test writes itself), so one test checks both versions."""

from __future__ import annotations

from typing import Any

from fhir_images import _codes as c


def audit_type(audit: dict[str, Any]) -> str:
    """The event type's code (R4 ``type``, R5 ``category``)."""
    if "type" in audit:
        return str(audit["type"]["code"])
    return str(audit["category"][0]["coding"][0]["code"])


def audit_subtypes(audit: dict[str, Any]) -> list[str]:
    """The subtypes' codes (R4 ``subtype``, R5 ``code``)."""
    if "subtype" in audit:
        return [str(s["code"]) for s in audit["subtype"]]
    return [str(cd["code"]) for cd in audit.get("code", {}).get("coding", [])]


def audit_purposes(audit: dict[str, Any]) -> list[dict[str, Any]]:
    """The purposes of use as CodeableConcepts (R4 ``purposeOfEvent``, R5 ``authorization``)."""
    return list(audit.get("purposeOfEvent") or audit.get("authorization") or [])


def audit_outcome(audit: dict[str, Any]) -> tuple[str, str | None]:
    """The outcome code and its description (R4 ``outcome``/``outcomeDesc``, R5 ``outcome``'s
    ``code`` and ``detail``)."""
    outcome = audit.get("outcome")
    if isinstance(outcome, str):
        return outcome, audit.get("outcomeDesc")
    details = [d.get("text") for d in (outcome or {}).get("detail", [])]
    return str((outcome or {}).get("code", {}).get("code")), next(iter(details), None)


def image_resource(
    image_type: str, *, subject: str, binary_url: str, confidentiality: str, **extra: Any
) -> dict[str, Any]:
    """A minimal image as another system might write it directly on the server."""
    meta = {"security": [{"system": c.V3_CONFIDENTIALITY, "code": confidentiality}]}
    if image_type == "Media":
        return {
            "resourceType": "Media",
            "meta": meta,
            "status": "completed",
            "subject": {"reference": subject},
            "content": {"contentType": "image/jpeg", "url": binary_url},
            **extra,
        }
    return {
        "resourceType": "DocumentReference",
        "meta": meta,
        "status": "current",
        "subject": {"reference": subject},
        "content": [{"attachment": {"contentType": "image/jpeg", "url": binary_url}}],
        **extra,
    }


def permit_consent(image_type: str, *, patient: str, image_ref: str) -> dict[str, Any]:
    """An active Consent permitting everything for one image, as another system might write."""
    data = [{"meaning": "instance", "reference": {"reference": image_ref}}]
    if image_type == "Media":
        return {
            "resourceType": "Consent",
            "status": "active",
            "scope": {"coding": [{"system": c.CONSENT_SCOPE, "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": c.LOINC, "code": "59284-0"}]}],
            "patient": {"reference": patient},
            "policy": [{"uri": c.GMC_RECORDINGS_POLICY}],
            "provision": {"type": "permit", "data": data},
        }
    return {
        "resourceType": "Consent",
        "status": "active",
        "category": [{"coding": [{"system": c.LOINC, "code": "59284-0"}]}],
        "subject": {"reference": patient},
        "decision": "permit",
        "provision": [{"data": data}],
    }
