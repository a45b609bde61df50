"""Builders for contexts and consent records used across the tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fhir_images import ClinicalContext, ConsentRecord, ImageRequest

CAPTURED = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def make_context(**overrides: Any) -> ClinicalContext:
    """An adult's own solicited photo from a video consultation; override what a test needs."""
    data: dict[str, Any] = {
        "patient": "Patient/p1",
        "birth_date": "1985-06-30",
        "captured": CAPTURED,
        "made_by": "patient",
        "operator": "Patient/p1",
        "kind": "photo",
        "solicited": True,
        "intimate": False,
        "remote": True,
        "purpose": "Rash on forearm; baseline to judge response to treatment.",
    }
    data.update(overrides)
    return ClinicalContext.model_validate(data)


def make_consent(**overrides: Any) -> ConsentRecord:
    """A complete, explicit consent from the (adult) patient; override what a test needs."""
    data: dict[str, Any] = {
        "given_by": "patient",
        "date": CAPTURED,
        "taken_by": "Practitioner/gp1",
        "method": "verbal",
        "confirmed": True,
        "explained": {"why": True, "form": True, "secure_storage": True, "secondary_uses": True},
        "permissions": {"view": True, "store": True, "second_opinion": True},
        "discussion": "Explained purpose, form and secure storage; agreed.",
    }
    data.update(overrides)
    return ConsentRecord.model_validate(data)


def parent_consent(**overrides: Any) -> ConsentRecord:
    return make_consent(
        **{
            "given_by": "parent",
            "giver": "RelatedPerson/mum1",
            "relationship": "MTH",
            "parental_responsibility": {"holder": "mother", "basis": "birth_mother"},
            **overrides,
        }
    )


def child_context(**overrides: Any) -> ClinicalContext:
    """A parent's unsolicited photo of a young child's intimate area."""
    return make_context(
        **{
            "patient": "Patient/c1",
            "birth_date": "2024-08-02",
            "made_by": "parent",
            "operator": "RelatedPerson/mum1",
            "solicited": False,
            "intimate": True,
            "best_interests": "Avoids re-examination; needed to decide treatment.",
            **overrides,
        }
    )


FOREARM = {"code": "14975008", "display": "Forearm"}


def make_request(**overrides: Any) -> ImageRequest:
    """A request for a photo of an adult's forearm, made the day before CAPTURED, valid a week,
    to be sent by the patient; override what a test needs."""
    authored = overrides.pop("authored", CAPTURED - timedelta(days=1))
    data: dict[str, Any] = {
        "id": "ServiceRequest/r1",
        "patient": "Patient/p1",
        "birth_date": "1985-06-30",
        "requester": "Practitioner/gp1",
        "kind": "photo",
        "body_site": FOREARM,
        "intimate": False,
        "reason": "Rash on forearm; judge response to treatment.",
        "authored": authored,
        "valid_until": authored + timedelta(days=7),
        "senders": [overrides.get("patient", "Patient/p1")],
    }
    data.update(overrides)
    return ImageRequest.model_validate(data)
