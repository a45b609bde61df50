"""IHE PCF, HL7 DS4P and IHE BALP, rule by rule (tests/standards.py): every example fhir-images
ships meets every rule that applies to it, and each rule catches a resource that breaks it."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fhir_images import _codes as c
from fhir_images.fhir import ds4p

from .. import standards

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {"R4": ROOT / "examples" / "resources", "R5": ROOT / "examples" / "resources" / "r5"}

Resource = dict[str, Any]


def _examples(version: str) -> list[tuple[str, Resource, bool]]:
    """(name, resource, from a stored image's Bundle) for each example of a version."""
    out = []
    for path in sorted(EXAMPLES[version].glob("*.json")):
        data = json.loads(path.read_text())
        if data["resourceType"] == "Bundle":
            out += [(f"{path.name}#{i}", e["resource"], True) for i, e in enumerate(data["entry"])]
        else:
            out.append((path.name, data, False))
    return out


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_every_example_meets_every_rule_that_applies(version: str) -> None:
    examples = _examples(version)
    applied: set[str] = set()
    for name, resource, stored in examples:
        assert standards.problems(resource, version) == {}, name
        applied |= set(standards.rules_for(resource, version))
        if stored:
            assert standards.fhir_images_label_metadata(resource) == [], name
    expected = set(standards.DS4P) | set(standards.BALP)
    if version == "R4":
        expected |= set(standards.PCF)
    assert applied == expected, "every rule is applied to at least one example"


def _example(kind: str) -> Resource:
    bundle = json.loads(
        (EXAMPLES["R4"] / "04-parent-unsolicited-intimate-confirmed.bundle.json").read_text()
    )
    if kind == "AuditEvent":
        return json.loads((EXAMPLES["R4"] / "audit-disclosure.json").read_text())
    return copy.deepcopy(
        next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind)
    )


def _consent(change: Callable[[Resource], None]) -> Resource:
    consent = _example("Consent")
    change(consent)
    return consent


def _media(change: Callable[[Resource], None]) -> Resource:
    media = _example("Media")
    change(media)
    return media


def _audit(change: Callable[[Resource], None]) -> Resource:
    audit = _example("AuditEvent")
    change(audit)
    return audit


def _artifact(r: Resource) -> Resource:
    return next(
        e["valueRelatedArtifact"]
        for x in r["meta"]["security"]
        for e in x["extension"]
        if e["url"] == ds4p.EXT_RELATED_ARTIFACT
    )


def _source_agent(r: Resource) -> Resource:
    return next(
        a for a in r["agent"] if a.get("type", {}).get("coding", [{}])[0]["code"] == "110153"
    )


def _recipient_agent(r: Resource) -> Resource:
    return next(
        a for a in r["agent"] if a.get("type", {}).get("coding", [{}])[0]["code"] == "110152"
    )


def _second_basis(r: Resource) -> None:
    label = r["meta"]["security"][0]
    for e in label["extension"]:
        if e["url"] == ds4p.EXT_BASIS:
            e["valueCoding"] = {"system": c.LOCAL_LABEL_BASIS, "code": "another-policy"}
    r["meta"]["security"][1]["extension"] = [
        e for e in r["meta"]["security"][1]["extension"] if e["url"] != ds4p.EXT_BASIS
    ]


#: For each rule, a resource that breaks it (made from example case 04 or the disclosure audit).
BROKEN: dict[str, Callable[[], Resource]] = {
    "pcf-scope": lambda: _consent(lambda r: r.pop("scope")),
    "pcf-category": lambda: _consent(lambda r: r.update(category=r["category"][1:])),
    "pcf-patient": lambda: _consent(lambda r: r.pop("patient")),
    "pcf-dateTime": lambda: _consent(lambda r: r.pop("dateTime")),
    "pcf-performer": lambda: _consent(
        lambda r: r.update(performer=[{"reference": "Practitioner/x"}])
    ),
    "pcf-organization": lambda: _consent(lambda r: r.pop("organization")),
    "pcf-source": lambda: _consent(lambda r: r.pop("sourceAttachment")),
    "pcf-policy-uri": lambda: _consent(
        lambda r: r.update(policy=[{"authority": "https://example.org"}])
    ),
    "pcf-unused-elements": lambda: _consent(lambda r: r.update(verification=[{"verified": True}])),
    "pcf-provision-type": lambda: _consent(lambda r: r["provision"]["provision"][0].pop("type")),
    "pcf-no-action-class-code": lambda: _consent(
        lambda r: r["provision"].update(action=[{"coding": [{"code": "access"}]}])
    ),
    "pcf-two-levels": lambda: _consent(
        lambda r: r["provision"]["provision"][0].update(provision=[{"type": "permit"}])
    ),
    "pcf-actor-ircp": lambda: _consent(
        lambda r: r["provision"].update(
            actor=[{"role": {"coding": [{"code": "PRCP"}]}, "reference": {"reference": "X/1"}}]
        )
    ),
    "pcf-intermediate-data": lambda: _consent(
        lambda r: r["provision"]["data"][0].update(meaning="related")
    ),
    "fhir-images-permit-names-purpose": lambda: _consent(lambda r: r["provision"].pop("purpose")),
    "ds4p-one-confidentiality": lambda: _media(
        lambda r: r["meta"]["security"].append({"system": c.V3_CONFIDENTIALITY, "code": "N"})
    ),
    "ds4p-related-artifact": lambda: _media(lambda r: _artifact(r).update(type="citation")),
    "ds4p-classifier": lambda: _media(
        lambda r: r["meta"]["security"][0]["extension"][0].pop("valueReference")
    ),
    "ds4p-basis": lambda: _media(_second_basis),
    "ds4p-inline-labels": lambda: _media(
        lambda r: r["meta"]["security"].append(
            {"system": c.V3_ACT_CODE, "code": "PROCESSINLINELABEL"}
        )
    ),
    "balp-event": lambda: _audit(lambda r: r.update(action="E")),
    "balp-source-agent": lambda: _audit(lambda r: _source_agent(r).pop("network")),
    "balp-recipient-agent": lambda: _audit(lambda r: _recipient_agent(r).pop("network")),
    "balp-entities": lambda: _audit(lambda r: r.update(entity=r["entity"][1:])),
    "balp-outcome-purpose": lambda: _audit(lambda r: r.pop("purposeOfEvent")),
    "balp-authorizer": lambda: _audit(
        lambda r: r["agent"].append(
            {
                "type": {"coding": [{"system": "http://snomed.info/sct", "code": "429577009"}]},
                "requestor": False,
            }
        )
    ),
}


def test_every_rule_has_a_resource_that_breaks_it() -> None:
    assert set(BROKEN) == set(standards.ALL)


@pytest.mark.parametrize("rule", sorted(BROKEN))
def test_each_rule_catches_what_breaks_it(rule: str) -> None:
    resource = BROKEN[rule]()
    assert rule in standards.rules_for(resource, "R4")
    assert standards.ALL[rule](resource), f"{rule} let a resource that breaks it through"


def test_fhir_images_label_metadata_is_checked() -> None:
    media = _media(lambda r: r["meta"]["security"][0].pop("extension"))
    assert standards.fhir_images_label_metadata(media)
