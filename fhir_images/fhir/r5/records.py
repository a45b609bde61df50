"""What fhir-images writes on an R5 server after the image: consent changes and the
Provenance that records each. Every builder is checked against the R5 model of its resource.

Disclosure audits, approvals (Tasks), review Tasks and subscriptions are not yet written in
R5 shapes: they raise :class:`~fhir_images.ActionRefused`, naming what is not available, before
anything is read or written."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, NoReturn, ParamSpec, TypeVar

from fhir.resources import get_fhir_model_class

from ... import _codes as c
from ..._codes import Confidentiality
from ..._exceptions import ActionRefused
from ..common import iso, who
from ..views import ConsentView

SOURCE_NAME = "fhir-images"

P = ParamSpec("P")
R = TypeVar("R", bound=dict[str, Any] | None)


def checked(build: Callable[P, R]) -> Callable[P, R]:
    """Check what a builder returns against the R5 model of its resourceType."""

    @functools.wraps(build)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        resource = build(*args, **kwargs)
        if resource is not None:
            get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        return resource

    return wrapper


def not_yet(what: str) -> Callable[..., NoReturn]:
    def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        raise ActionRefused(f"{what} is not yet available on FHIR R5 servers")

    return refuse


@checked
def consent_change_provenance(
    consent: ConsentView, *, by: str | None, reason: str, activity: str, record: str
) -> dict[str, Any]:
    """A Provenance for one change of one Consent (its version), written once (``record``)."""
    target = f"{consent.ref}/_history/{consent.version_id or '1'}"
    confidentiality = [
        {"system": s, "code": code} for s, code in consent.labels if s == c.V3_CONFIDENTIALITY
    ][:1] or [c.conf(Confidentiality.V).as_coding()]  # unlabelled: fail closed
    return {
        "resourceType": "Provenance",
        "meta": {"security": confidentiality, "tag": [{"system": c.SID_RECORD, "code": record}]},
        "target": [{"reference": target}],
        "recorded": iso(datetime.now(UTC)),
        "activity": {
            "coding": [{"system": c.V3_DATA_OPERATION, "code": "UPDATE"}],
            "text": f"consent {activity}",
        },
        "authorization": [
            {
                "concept": {
                    "coding": [
                        {
                            "system": c.V3_ACT_REASON,
                            "code": c.RECORDMGT,
                            "display": "records management",
                        }
                    ],
                    "text": reason,
                }
            }
        ],
        "agent": [
            {
                "type": {"coding": [{"system": c.PROVENANCE_PARTICIPANT, "code": "author"}]},
                "who": who(by) if by else {"display": SOURCE_NAME},
            }
        ],
    }


@checked
def withdrawn(consent: ConsentView, at: datetime) -> dict[str, Any]:
    """The Consent made inactive, its period ending at ``at``."""
    raw = copy.deepcopy(consent.raw)
    raw["status"] = "inactive"
    raw.setdefault("period", {})["end"] = iso(at)
    return raw


@checked
def superseded(consent: ConsentView) -> dict[str, Any]:
    raw = copy.deepcopy(consent.raw)
    raw["status"] = "inactive"
    return raw


def _purposes(provision: dict[str, Any]) -> set[str]:
    return {str(x.get("code")) for x in provision.get("purpose") or [] if isinstance(x, dict)}


@checked
def narrowed(consent: ConsentView, purposes: Iterable[str]) -> dict[str, Any] | None:
    """The Consent no longer permitting ``purposes``; None when it already does not.

    Under a base deny, the permit provisions for them go (a provision that also permits other
    purposes keeps those); under a base permit, a deny provision is added for them."""
    raw = copy.deepcopy(consent.raw)
    wanted = set(purposes)
    provisions = [p for p in raw.get("provision") or [] if isinstance(p, dict)]
    changed = False
    if raw.get("decision") == "permit":
        denied = set().union(*(_purposes(p) for p in provisions)) if provisions else set()
        missing = sorted(wanted - denied)
        if missing:
            provisions.append(
                {"purpose": [{"system": c.V3_ACT_REASON, "code": p} for p in missing]}
            )
            changed = True
    else:
        kept = []
        for p in provisions:
            overlap = _purposes(p) & wanted
            if not overlap:
                kept.append(p)
                continue
            changed = True
            rest = [x for x in p.get("purpose") or [] if x.get("code") not in wanted]
            if rest:
                kept.append({**p, "purpose": rest})
        provisions = kept
    if not changed:
        return None
    raw["provision"] = provisions
    if not provisions:
        raw.pop("provision")
    return raw
