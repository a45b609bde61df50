"""profiles/ agrees with the code: the local code systems hold every code the code uses, the
value sets hold every label the policy can set, and every canonical reference resolves; and
profiles/r5/ is the same package for FHIR R5, rule for rule."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest

from fhir_images import ClinicalContext, ConsentRecord, ImageKind, Maker, _lifecycle, decide
from fhir_images import _codes as c
from fhir_images._context import IMPLICIT_CONSENT_KINDS

from ..factories import CAPTURED

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "profiles"
PROFILES_R5 = PROFILES / "r5"


def _load(folder: Path) -> dict[str, dict[str, Any]]:
    return {r["url"]: r for r in (json.loads(p.read_text()) for p in sorted(folder.glob("*.json")))}


RESOURCES = _load(PROFILES)
#: The R5 structure definitions (the same canonical URLs as the R4 ones)
R5 = _load(PROFILES_R5)
#: What an R5 server loads: the shared code systems and value sets, and the R5 definitions
R5_PACKAGE = {
    **{u: r for u, r in RESOURCES.items() if r["resourceType"] != "StructureDefinition"},
    **R5,
}


SD = f"{c.CANONICAL_BASE}/StructureDefinition"


def _resource(kind: str, rid: str) -> dict[str, Any]:
    return RESOURCES[f"{c.CANONICAL_BASE}/{kind}/{rid}"]


def _concepts(rid: str) -> dict[str, dict[str, Any]]:
    return {x["code"]: x for x in _resource("CodeSystem", rid)["concept"]}


def _properties(concept: dict[str, Any], code: str) -> list[Any]:
    return [
        next(v for k, v in p.items() if k.startswith("value"))
        for p in concept.get("property", [])
        if p["code"] == code
    ]


@pytest.mark.parametrize(
    ("folder", "url"),
    [*((PROFILES, u) for u in sorted(RESOURCES)), *((PROFILES_R5, u) for u in sorted(R5))],
)
def test_metadata(folder: Path, url: str) -> None:
    r = (R5 if folder == PROFILES_R5 else RESOURCES)[url]
    assert url == f"{c.CANONICAL_BASE}/{r['resourceType']}/{r['id']}"
    assert r["version"] == "0.1.0" and r["status"] == "active"
    assert r["name"] and r["description"].strip()
    assert (folder / f"{r['resourceType']}-{r['id']}.json").exists()
    if r["resourceType"] == "StructureDefinition":
        assert r["fhirVersion"] == ("5.0.0" if folder == PROFILES_R5 else "4.0.1")
        assert "snapshot" not in r, "differential only: the server generates the snapshot"


def _canonicals(node: Any) -> list[str]:
    """Every canonical of ours that a resource points at."""
    out = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("valueSet", "profile", "targetProfile") or key == "system":
                values = value if isinstance(value, list) else [value]
                out += [v for v in values if isinstance(v, str)]
            out += _canonicals(value)
    elif isinstance(node, list):
        for item in node:
            out += _canonicals(item)
    return [u for u in out if u.startswith(f"{c.CANONICAL_BASE}/") and "/sid/" not in u]


@pytest.mark.parametrize("url", sorted(RESOURCES))
def test_canonical_references_resolve(url: str) -> None:
    for target in _canonicals({k: v for k, v in RESOURCES[url].items() if k != "url"}):
        assert target in RESOURCES, f"{url} refers to {target}, which profiles/ does not define"


@pytest.mark.parametrize("url", sorted(R5))
def test_r5_canonical_references_resolve_in_the_r5_package(url: str) -> None:
    """An R5 definition refers only to the shared code systems and value sets and to other R5
    definitions (what an R5 server loads)."""
    for target in _canonicals({k: v for k, v in R5[url].items() if k != "url"}):
        assert target in R5_PACKAGE, f"r5: {url} refers to {target}, which is not defined"


#: The resource each profile constrains in R4 and R5 (R5 has no Media).
R5_TYPE = {"Media": "DocumentReference"}
#: Rules an R5 profile states under another name: R4 constraint keys and slice names, and why.
RENAMED_IN_R5 = {
    "fhir-images-performer": "fhir-images-grantor",  # Consent.performer is grantor
    "fhir-images-entity-media": "fhir-images-entity-image",  # the image is a DocumentReference
    "disclose": None,  # R4 subtype slice; R5's code is one CodeableConcept, fixed by pattern
    # IHE PCF (R4 only) forbids provision.securityLabel and verification, so R4 says these in
    # extensions; R5's Consent says them in its own elements (provision.securityLabel ANONYED,
    # verification)
    "confirmed": None,
    "anonymisedUseOnly": None,
    # R5's decision is always deny and each provision (a permit) requires a purpose
    "fhir-images-permit-names-purpose": None,
}
#: Extensions only the R4 profiles need (see above).
R4_ONLY = {f"{SD}/consent-confirmed", f"{SD}/anonymised-use-only"}


def test_r5_has_the_same_profiles_as_r4() -> None:
    r4 = {u: r for u, r in RESOURCES.items() if r["resourceType"] == "StructureDefinition"}
    assert set(R5) == set(r4) - R4_ONLY, (
        "profiles/r5/ holds an R5 version of each R4 profile, and no other"
    )
    assert {p.name for p in PROFILES_R5.glob("*.json")} == {
        p.name
        for p in PROFILES.glob("StructureDefinition-*.json")
        if f"{SD}/{p.name.removeprefix('StructureDefinition-').removesuffix('.json')}"
        not in R4_ONLY
    }, "profiles/r5/ holds structure definitions only: the terminology is shared"
    for url, new in R5.items():
        old = r4[url]
        for key in ("id", "name", "version", "kind", "derivation"):
            assert new[key] == old[key], (url, key)
        assert new["type"] == R5_TYPE.get(old["type"], old["type"]), url
        assert new["baseDefinition"] == f"http://hl7.org/fhir/StructureDefinition/{new['type']}"


def _rules(sd: dict[str, Any]) -> tuple[set[str], set[str]]:
    """The constraint keys and slice names of a profile's differential."""
    elements = sd["differential"]["element"]
    keys = {x["key"] for e in elements for x in e.get("constraint", [])}
    return keys, {e["sliceName"] for e in elements if "sliceName" in e}


@pytest.mark.parametrize("url", sorted(R5))
def test_r5_profiles_carry_every_rule_of_r4(url: str) -> None:
    """Every constraint and every slice of the R4 profile is in the R5 one (under the R5 name
    where R5 renamed the element), and the R5 profile speaks of R5 elements only."""
    old_keys, old_slices = _rules(RESOURCES[url])
    new_keys, new_slices = _rules(R5[url])
    for rule in old_keys | old_slices:
        renamed = RENAMED_IN_R5.get(rule, rule)
        assert renamed is None or renamed in new_keys | new_slices, f"r5: {url} lacks {rule}"
    sd = R5[url]
    for element in sd["differential"]["element"]:
        assert element["path"].split(".")[0] == sd["type"], element["id"]
        targets = [p for t in element.get("type", []) for p in t.get("targetProfile", [])]
        assert not any(t.endswith("/Media") for t in targets), element["id"]
    if sd["type"] == "Extension":
        r5_name = {"Media": "DocumentReference", "Consent.performer": "Consent.grantor"}
        assert sd["context"] == [
            {"type": "element", "expression": r5_name.get(x["expression"], x["expression"])}
            for x in RESOURCES[url]["context"]
        ]


def test_local_urls_match_the_code() -> None:
    for url in (
        c.LOCAL_SENSITIVITY,
        c.LOCAL_HANDLING,
        c.LOCAL_IMAGE_KIND,
        c.LOCAL_DECISION_REASON,
        c.LOCAL_CONSENT_GIVER,
        c.LOCAL_LABEL_BASIS,
        c.EXT_REMOTE_CONSULTATION,
    ):
        assert url in RESOURCES, url
    for image in (_resource("StructureDefinition", "clinical-image"), R5[f"{SD}/clinical-image"]):
        text = json.dumps(image)
        assert c.SID_SHA256 in text and c.EXT_REMOTE_CONSULTATION in text


def test_the_decision_reason_codesystem_is_generated_from_the_one_table() -> None:
    from fhir_images.policy import codesystem

    assert (PROFILES / "CodeSystem-decision-reason.json").read_text() == codesystem.text(), (
        "run: python -m fhir_images.policy.codesystem"
    )


def test_every_finding_the_checks_can_make_is_in_the_table() -> None:
    """The checks name codes; each must be in the table with the rule and outcome it uses (a
    finding that does not match its table entry fails at run time too)."""
    from fhir_images.policy import REASONS
    from fhir_images.policy import ingest as rules
    from fhir_images.policy import requests as request_rules

    source = Path(rules.__file__).read_text() + Path(request_rules.__file__).read_text()
    used = set(re.findall(r'_r\(\s*"([a-z0-9-]+)"', source))
    used |= set(re.findall(r'^\s+"(request-[a-z0-9-]+)",$', source, re.M))
    assert len(used) > 15
    assert used == set(REASONS)


def test_image_kinds() -> None:
    concepts = _concepts("image-kind")
    assert set(concepts) == {k.value for k in ImageKind}
    for kind in ImageKind:
        assert _properties(concepts[kind.value], "implicit-consent") == [
            kind in IMPLICIT_CONSENT_KINDS
        ]


def test_local_label_codes() -> None:
    assert set(_concepts("image-sensitivity")) == {c.INTIMATE.code, c.YOUNG_CHILD.code}
    assert set(_concepts("image-handling")) == {c.LEGAL_HOLD.code}
    assert set(_concepts("consent-giver")) == {
        "patient",
        "gillick-competent",
        "parental-responsibility",
        "no-parental-responsibility",
    }


def _members(rid: str) -> set[tuple[str, str]]:
    """The (system, code) pairs a value set of ours holds, expanded through our code systems."""
    out: set[tuple[str, str]] = set()
    for include in _resource("ValueSet", rid)["compose"]["include"]:
        for vs in include.get("valueSet", []):
            out |= _members(vs.rsplit("/", 1)[1])
        system = include.get("system")
        if system is None:
            continue
        if "concept" in include:
            out |= {(system, x["code"]) for x in include["concept"]}
        elif system in RESOURCES:
            out |= {(system, code) for code in _concepts(system.rsplit("/", 1)[1])}
        else:
            out.add((system, "*"))  # a whole external code system
    return out


def _every_label_the_policy_sets() -> set[tuple[str, str]]:
    labels: set[tuple[str, str]] = set()
    births = ["1980-01-01", "2012-01-01", "2025-01-01"]  # adult, adolescent, young child
    for made_by, kind, born, intimate, safeguarding, giver in itertools.product(
        Maker, ImageKind, births, (True, False, None), (True, False), ("patient", "pr", "no-pr")
    ):
        ctx = ClinicalContext.model_validate(
            {
                "patient": "Patient/p1",
                "birth_date": born,
                "captured": CAPTURED,
                "made_by": made_by,
                "kind": kind,
                "intimate": intimate,
                "safeguarding_concern": safeguarding,
                "purpose": "x",
            }
        )
        consent = ConsentRecord.model_validate(
            {
                "given_by": "patient" if giver == "patient" else "parent",
                "giver": None if giver == "patient" else "RelatedPerson/r1",
                "relationship": None if giver == "patient" else "MTH",
                "parental_responsibility": None if giver == "patient" else giver == "pr",
                "date": CAPTURED,
                "taken_by": "Practitioner/gp1",
                "method": "verbal",
                "permissions": {"view": True, "store": True},
            }
        )
        for record in (None, consent):
            labels |= {(x.system, x.code) for x in decide(ctx, record).labels.all()}
    return labels


def test_value_sets_hold_every_label_the_policy_sets() -> None:
    by_system = {
        c.V3_CONFIDENTIALITY: _members("confidentiality"),
        c.V3_OBSERVATION_VALUE: _members("integrity"),
        c.LOCAL_SENSITIVITY: _members("sensitivity"),
        c.LOCAL_HANDLING: _members("handling"),
        c.V3_ACT_CODE: _members("sensitivity") | _members("handling"),
    }
    labels = _every_label_the_policy_sets()
    assert {code for system, code in labels if system == c.V3_CONFIDENTIALITY} == {"N", "R", "V"}
    for label in labels:
        assert label in by_system[label[0]], f"{label} is in no value set of profiles/"
    assert by_system[c.V3_CONFIDENTIALITY] == {(c.V3_CONFIDENTIALITY, x) for x in "NRV"}
    assert _members("security-labels") == set().union(
        *(_members(v) for v in ("confidentiality", "integrity", "sensitivity", "handling"))
    )


def test_value_sets_hold_what_disclosure_recognises() -> None:
    sensitivity = _members("sensitivity")
    # SOC and LGBTQ are newer than the R4 terminology servers load (see profiles/README.md)
    assert set(c.SENSITIVITY_CODES) - sensitivity == {
        (c.V3_ACT_CODE, "SOC"),
        (c.V3_ACT_CODE, "LGBTQ"),
    }
    assert sensitivity <= set(c.SENSITIVITY_CODES)
    handling = _members("handling")
    assert {(c.V3_ACT_CODE, code) for code in _lifecycle._OBLIGATIONS} <= handling
    assert c.LEGAL_HOLD.system and (c.LEGAL_HOLD.system, c.LEGAL_HOLD.code) in handling


def test_parental_responsibility_vocabulary_is_the_code() -> None:
    from fhir_images import PRBasis, PRHolder
    from fhir_images.fhir import parental

    assert set(_concepts("parental-responsibility-holder")) == {h.value for h in PRHolder}
    assert set(_concepts("parental-responsibility-basis")) == {b.value for b in PRBasis}
    for url in (parental.PR_HOLDER, parental.PR_BASIS, parental.EXT_PARENTAL_RESPONSIBILITY):
        assert url in RESOURCES and url.replace("CodeSystem", "ValueSet") in RESOURCES | R5 | {
            parental.EXT_PARENTAL_RESPONSIBILITY: None
        }
