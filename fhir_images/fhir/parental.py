"""Parental responsibility in the record, the same in R4 and R5: who holds it and on what basis,
on the Consent's performer (R4) or grantor (R5) as the ``parental-responsibility`` extension,
and as roles of the Provenance's author when the author is the person who consented.

Kept apart from the version mappings so that it is one definition, written and read here.
"""

from __future__ import annotations

from typing import Any

from .. import _codes as c
from .._context import ConsentGiver, ConsentRecord, ParentalResponsibility

EXT_PARENTAL_RESPONSIBILITY = f"{c.CANONICAL_BASE}/StructureDefinition/parental-responsibility"
PR_HOLDER = f"{c.CANONICAL_BASE}/CodeSystem/parental-responsibility-holder"
PR_BASIS = f"{c.CANONICAL_BASE}/CodeSystem/parental-responsibility-basis"


def extension(pr: ParentalResponsibility) -> dict[str, Any]:
    """The ``parental-responsibility`` extension: holder and basis."""
    return {
        "url": EXT_PARENTAL_RESPONSIBILITY,
        "extension": [
            {"url": "holder", "valueCoding": {"system": PR_HOLDER, "code": pr.holder.value}},
            {"url": "basis", "valueCoding": {"system": PR_BASIS, "code": pr.basis.value}},
        ],
    }


def consenter(consent: ConsentRecord, giver: str) -> dict[str, Any]:
    """The Reference to whoever consented, carrying their parental responsibility when stated."""
    ref: dict[str, Any] = {"reference": giver}
    pr = consent.parental_responsibility_stated
    if consent.given_by is ConsentGiver.PARENT and pr is not None:
        ref["extension"] = [extension(pr)]
    return ref


def read(reference: Any) -> tuple[str, str] | None:
    """(holder, basis) from a Reference that carries the extension; None otherwise."""
    if not isinstance(reference, dict):
        return None
    for ext in reference.get("extension", []) or []:
        if not isinstance(ext, dict) or ext.get("url") != EXT_PARENTAL_RESPONSIBILITY:
            continue
        parts = {
            str(e.get("url")): str((e.get("valueCoding") or {}).get("code"))
            for e in ext.get("extension", []) or []
            if isinstance(e, dict) and isinstance(e.get("valueCoding"), dict)
        }
        if "holder" in parts and "basis" in parts:
            return parts["holder"], parts["basis"]
    return None


def author_roles(consent: ConsentRecord | None, operator: str | None) -> list[dict[str, Any]]:
    """Roles for the Provenance's author when they are the parent who consented with stated
    parental responsibility: the relationship (v3-RoleCode) and the basis."""
    if consent is None or operator is None or consent.giver != operator:
        return []
    pr = consent.parental_responsibility_stated
    if consent.given_by is not ConsentGiver.PARENT or pr is None:
        return []
    roles = [{"coding": [{"system": PR_BASIS, "code": pr.basis.value}]}]
    if consent.relationship is not None and consent.relationship.value != "OTHER":
        roles.insert(
            0, {"coding": [{"system": c.V3_ROLE_CODE, "code": consent.relationship.value}]}
        )
    return roles


def first_stated(references: Any) -> tuple[str, str] | None:
    """The first (holder, basis) among a Consent's performers (R4) or grantors (R5)."""
    for ref in references if isinstance(references, list) else []:
        found = read(ref)
        if found is not None:
            return found
    return None
