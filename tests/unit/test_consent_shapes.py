"""R4 Consents in IHE PCF's shape and in the earlier one: both read the same, and narrowing or
withdrawing a PCF-shaped Consent never leaves it permitting more than before."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from fhir_images import _codes as c
from fhir_images._context import Permissions
from fhir_images.fhir.r4 import R4
from fhir_images.fhir.r4 import read as r4read
from fhir_images.fhir.r4.mapping import consent_provision

from .. import standards

AT = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
PURPOSES = (c.TREAT, c.COC, c.TRAIN, c.HRESCH)


def _pcf(**perms: bool) -> dict[str, Any]:
    return _complete(
        {
            "resourceType": "Consent",
            "id": "c1",
            "meta": {"versionId": "1"},
            "status": "active",
            "provision": consent_provision(Permissions(**perms), "Media/1", AT),
        }
    )


def _older(**perms: bool) -> dict[str, Any]:
    """The shape written before IHE PCF: a root deny with a nested permit or deny per purpose,
    each with its actions."""

    def nested(given: bool, purpose: str) -> dict[str, Any]:
        return {
            "type": "permit" if given else "deny",
            "action": [{"coding": [{"system": c.CONSENT_ACTION, "code": "use"}]}],
            "purpose": [{"system": c.V3_ACT_REASON, "code": purpose}],
        }

    p = Permissions(**perms)
    return {
        "resourceType": "Consent",
        "id": "c1",
        "status": "active",
        "provision": {
            "type": "deny",
            "data": [{"meaning": "instance", "reference": {"reference": "Media/1"}}],
            "provision": [
                nested(bool(p.view and p.store), c.TREAT),
                nested(p.second_opinion, c.COC),
                nested(p.teaching, c.TRAIN),
                nested(p.research, c.HRESCH),
            ],
        },
    }


def _answers(resource: dict[str, Any]) -> dict[str, str]:
    view = r4read.consent(resource)
    return {p: view.provision_for(p).kind for p in PURPOSES}


PERMISSION_SETS = [
    {"view": True, "store": True},
    {"view": True, "store": True, "second_opinion": True},
    {"view": True, "store": True, "teaching": True, "research": True},
    {"view": True, "store": True, "second_opinion": True, "teaching": True, "research": True},
]


@pytest.mark.parametrize("perms", PERMISSION_SETS)
def test_both_shapes_give_the_same_answers(perms: dict[str, bool]) -> None:
    assert _answers(_pcf(**perms)) == _answers(_older(**perms))
    assert r4read.consent(_pcf(**perms)).images == ("Media/1",)


def test_what_was_not_consented_to_is_refused() -> None:
    answers = _answers(_pcf(view=True, store=True, second_opinion=True))
    assert answers == {c.TREAT: "permit", c.COC: "permit", c.TRAIN: "deny", c.HRESCH: "deny"}


def test_a_permit_naming_no_purpose_is_read_as_care_only() -> None:
    consent = _pcf(view=True, store=True)
    del consent["provision"]["purpose"]
    del consent["provision"]["provision"]
    assert _answers(consent) == {
        c.TREAT: "permit",
        c.COC: "deny",
        c.TRAIN: "deny",
        c.HRESCH: "deny",
    }


def test_narrowing_takes_the_purpose_out_of_the_permit() -> None:
    consent = _pcf(view=True, store=True, second_opinion=True, teaching=True)
    narrowed = R4.narrowed(r4read.consent(consent), [c.COC, c.TRAIN])
    assert narrowed is not None
    assert _answers(narrowed) == {
        c.TREAT: "permit",
        c.COC: "deny",
        c.TRAIN: "deny",
        c.HRESCH: "deny",
    }
    root = narrowed["provision"]
    assert [p["code"] for p in root["purpose"]] == [c.TREAT]
    assert "extension" not in root, "no anonymised-use note for a purpose no longer permitted"
    assert standards.problems(narrowed, "R4") == {}
    assert R4.narrowed(r4read.consent(narrowed), [c.COC]) is None, "nothing left to narrow"


def test_narrowing_away_care_leaves_a_deny_not_an_open_permit() -> None:
    consent = _pcf(view=True, store=True)
    narrowed = R4.narrowed(r4read.consent(consent), [c.TREAT])
    assert narrowed is not None
    assert narrowed["provision"]["type"] == "deny"
    assert "purpose" not in narrowed["provision"]
    assert set(_answers(narrowed).values()) == {"deny"}


def test_withdrawal_ends_the_provision() -> None:
    withdrawn = R4.withdrawn(r4read.consent(_pcf(view=True, store=True)), AT)
    assert withdrawn["status"] == "inactive"
    assert withdrawn["provision"]["period"]["end"].startswith("2026-11-25T09:00")


def _complete(provisioned: dict[str, Any]) -> dict[str, Any]:
    """The rest of a PCF Consent around a provision."""
    return {
        **provisioned,
        "scope": {"coding": [{"system": c.CONSENT_SCOPE, "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": c.LOINC, "code": "59284-0"}]}],
        "patient": {"reference": "Patient/p1"},
        "dateTime": "2026-11-25T09:00:00Z",
        "performer": [{"reference": "Patient/p1"}],
        "organization": [{"display": "x"}],
        "sourceAttachment": {"title": "discussion"},
        "policy": [{"uri": c.GMC_RECORDINGS_POLICY}],
    }
