"""Record keys: deterministic names for what fhir-images writes, the same in every FHIR version.

A key is a one-way hash of the patient reference, the image's SHA-256 and, for a Consent or
Provenance, the consent act: the same image and the same consent act are stored once however
often, and from however many outboxes, they are sent, and a key never reveals the patient.
"""

from __future__ import annotations

import hashlib

from .._context import ConsentRecord


def image_key(patient: str, sha256_hex: str) -> str:
    """The record key of one image of one patient (the same bytes for another patient differ)."""
    return hashlib.sha256(f"{patient}|{sha256_hex}".encode()).hexdigest()[:32]


def consent_key(consent: ConsentRecord | None) -> str:
    """The record key of one consent act (``implicit`` when consent is implicit)."""
    if consent is None:
        return "implicit"
    return hashlib.sha256(consent.model_dump_json().encode()).hexdigest()[:32]


def binary_id(image: str) -> str:
    """The id fhir-images gives the Binary of an image: deterministic, so a repeat finds it."""
    return f"fi-{image}"


def record_key(image: str, part: str, consent: str | None = None) -> str:
    """``{image}.{part}`` or ``{image}.{part}.{consent}``: the value of a SID_RECORD key."""
    return f"{image}.{part}" if consent is None else f"{image}.{part}.{consent}"
