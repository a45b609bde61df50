"""Pieces every FHIR version's mapping builds the same way: the meta of a new resource, a
CodeableConcept from a context code, identifiers, and a conditional-create transaction entry."""

from __future__ import annotations

import uuid
from typing import Any

from .. import _codes as c


def new_meta(
    labels: list[c.Label], submission_id: str, record: str | None = None
) -> dict[str, Any]:
    """Security labels, the submission tag, and the record key tag (when there is one)."""
    tags = [{"system": c.SID_SUBMISSION, "code": submission_id}]
    if record is not None:
        tags.insert(0, {"system": c.SID_RECORD, "code": record})
    return {"security": [label.as_coding() for label in labels], "tag": tags}


def concept(coded: Any) -> dict[str, Any]:
    """A CodeableConcept from a context code (system, code, display)."""
    coding = {
        k: v
        for k, v in (("system", coded.system), ("code", coded.code), ("display", coded.display))
        if v
    }
    out: dict[str, Any] = {}
    if coded.code:
        out["coding"] = [coding]
    if coded.display:
        out["text"] = coded.display
    return out


def identifiers(submission_id: str, record: str | None) -> list[dict[str, str]]:
    ids = [{"system": c.SID_SUBMISSION, "value": submission_id}]
    if record is not None:
        ids.insert(0, {"system": c.SID_RECORD, "value": record})
    return ids


def random_id() -> str:
    return str(uuid.uuid4())


def conditional_entry(full_url: str, resource: Any, if_none_exist: str) -> dict[str, Any]:
    """A transaction entry that creates ``resource`` (a fhir.resources model) unless a resource
    matching ``if_none_exist`` exists."""
    return {
        "fullUrl": full_url,
        "resource": resource.model_dump(mode="json", exclude_none=True),
        "request": {
            "method": "POST",
            "url": resource.get_resource_type(),
            "ifNoneExist": if_none_exist,
        },
    }


def image_notes(ctx: Any, facts: Any, consent_state: str) -> list[str]:
    """What the record says in words about an image besides its purpose."""
    notes = []
    if ctx.remote:
        notes.append("Made or received during a remote consultation.")
    if ctx.best_interests:
        notes.append(f"Best interests of the child: {ctx.best_interests}")
    if facts.metadata_removed:
        notes.append("Removed before storage: " + ", ".join(facts.metadata_removed) + ".")
    if facts.converted_from:
        notes.append(f"Stored as {facts.media_type}, converted from {facts.converted_from}.")
    notes.append(
        {
            "implicit": "Consent implicit in the consent to the investigation (GMC).",
            "recorded": "Consent recorded: see the linked Consent.",
            "missing": "No consent recorded.",
        }[consent_state]
    )
    return notes
