"""Image requests as ServiceRequests, written and read for R4 and R5 (which differ only in how
``code`` and the reason are carried: R5 made them CodeableReferences).

What each element holds: ``code`` the kind of image (fhir-images' image-kind code);
``bodySite`` the body site asked for; ``performer`` who may send it (the patient, or a
RelatedPerson); ``occurrencePeriod`` from when it was asked for until it expires;
``requester`` the clinician; the reason the clinical purpose (G8); the
``intimate-image-request`` extension whether the image asked for is intimate. Its labels are
those of a record about a child's or an intimate image: R when either, N otherwise.
"""

from __future__ import annotations

import copy
from datetime import date
from typing import Any

from .. import _codes as c
from .._context import Coded, ImageKind
from .._exceptions import BadResponse, InvalidContext
from .._requests import INTIMATE_REQUEST_MIN_AGE, ImageRequest
from .building import concept
from .common import codings, iso, parse_instant, ref_of
from .common import labels_of as labels_of
from .common import version_of as version_of
from .version import FhirVersion

SID_IMAGE_REQUEST = f"{c.CANONICAL_BASE}/sid/image-request"
EXT_INTIMATE_REQUEST = f"{c.CANONICAL_BASE}/StructureDefinition/intimate-image-request"


def by_key(key: str) -> str:
    """The search that finds a request already recorded (its conditional create)."""
    return f"identifier={SID_IMAGE_REQUEST}|{key}"


def _r5(version: FhirVersion) -> bool:
    return version.name == "R5"


def service_request(version: FhirVersion, request: ImageRequest) -> dict[str, Any]:
    """The ServiceRequest recording a request for an image (validated against the version's
    model)."""
    kind = {
        "coding": [{"system": c.LOCAL_IMAGE_KIND, "code": request.kind.value}],
        "text": f"{request.kind.value.replace('_', ' ')} requested",
    }
    reason = {"text": request.reason}
    sensitive = request.intimate or request.age_on(request.authored) < INTIMATE_REQUEST_MIN_AGE
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "meta": {
            "security": [
                c.conf(c.Confidentiality.R if sensitive else c.Confidentiality.N).as_coding()
            ]
        },
        "extension": [{"url": EXT_INTIMATE_REQUEST, "valueBoolean": request.intimate}],
        "identifier": [{"system": SID_IMAGE_REQUEST, "value": request.key}],
        "status": request.status,
        "intent": "order",
        "code": {"concept": kind} if _r5(version) else kind,
        "subject": {"reference": request.patient},
        "occurrencePeriod": {"start": iso(request.authored), "end": iso(request.valid_until)},
        "authoredOn": iso(request.authored),
        "requester": {"reference": request.requester},
        "performer": [{"reference": s} for s in request.senders],
        "bodySite": [concept(request.body_site)],
    }
    if _r5(version):
        resource["reason"] = [{"concept": reason}]
    else:
        resource["reasonCode"] = [reason]
    if _r5(version):
        from fhir.resources.servicerequest import ServiceRequest as R5ServiceRequest

        R5ServiceRequest.model_validate(resource)
    else:
        from fhir.resources.R4B.servicerequest import ServiceRequest

        ServiceRequest.model_validate(resource)
    return resource


def subject_of(resource: dict[str, Any]) -> str | None:
    return ref_of(resource.get("subject"))


def _coded(concept_: Any) -> Coded | None:
    for cd in codings(concept_):
        if cd.get("code") or cd.get("display"):
            return Coded.model_validate(
                {k: cd[k] for k in ("code", "system", "display") if isinstance(cd.get(k), str)}
            )
    if isinstance(concept_, dict) and isinstance(concept_.get("text"), str):
        return Coded(display=concept_["text"])
    return None


def image_request(version: FhirVersion, resource: dict[str, Any], birth_date: date) -> ImageRequest:
    """The request a ServiceRequest records; InvalidContext when it is not one fhir-images can
    check an image against (no kind, body site, period or intimacy stated)."""
    if resource.get("resourceType") != "ServiceRequest":
        raise BadResponse("the server did not answer with a ServiceRequest")
    code = resource.get("code")
    if _r5(version) and isinstance(code, dict):
        code = code.get("concept")
    kind = next(
        (
            cd.get("code")
            for cd in codings(code)
            if cd.get("system") == c.LOCAL_IMAGE_KIND
            and cd.get("code") in ImageKind._value2member_map_
        ),
        None,
    )
    intimate = next(
        (
            e.get("valueBoolean")
            for e in resource.get("extension", []) or []
            if isinstance(e, dict) and e.get("url") == EXT_INTIMATE_REQUEST
        ),
        None,
    )
    sites = [s for s in (_coded(b) for b in resource.get("bodySite", []) or []) if s]
    period = resource.get("occurrencePeriod") or {}
    reasons = (
        [r.get("concept") for r in resource.get("reason", []) or [] if isinstance(r, dict)]
        if _r5(version)
        else resource.get("reasonCode", []) or []
    )
    reason = next(
        (r["text"] for r in reasons if isinstance(r, dict) and isinstance(r.get("text"), str)),
        None,
    )
    start, end = parse_instant(period.get("start")), parse_instant(period.get("end"))
    if kind is None or intimate is None or not sites or end is None or reason is None:
        raise InvalidContext(
            "request: the ServiceRequest does not state the kind, body site, intimacy, reason "
            "and end of validity that an image is checked against"
        )
    return ImageRequest.model_validate(
        {
            "id": f"ServiceRequest/{resource.get('id')}",
            "status": resource.get("status")
            if resource.get("status") in ("active", "completed", "revoked")
            else "revoked",
            "patient": subject_of(resource),
            "birth_date": birth_date,
            "requester": ref_of(resource.get("requester")),
            "kind": kind,
            "body_site": sites[0],
            "intimate": intimate,
            "reason": reason,
            "authored": parse_instant(resource.get("authoredOn")) or start,
            "valid_until": end,
            "senders": [r for r in (ref_of(p) for p in resource.get("performer", []) or []) if r],
        }
    )


def completed(resource: dict[str, Any]) -> dict[str, Any] | None:
    """The ServiceRequest marked completed; None when it is not active."""
    if resource.get("status") != "active":
        return None
    changed = copy.deepcopy(resource)
    changed["status"] = "completed"
    return changed
