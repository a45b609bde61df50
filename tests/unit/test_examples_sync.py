"""examples/resources/ (FHIR R4) and examples/resources/r5/ (FHIR R5) are what fhir-images
produces today: regenerate them and compare, and check that both versions hold the same record."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from fhir_images import _codes as c
from fhir_images import decide, synthetic
from fhir_images._intake import intake
from fhir_images.fhir.r4.mapping import map_submission
from fhir_images.fhir.r5.mapping import map_submission as map_submission_r5

from ..factories import make_consent, make_context

ROOT = Path(__file__).resolve().parents[2]
RESOURCES = ROOT / "examples" / "resources"
STORING_CASES = (
    "01-ultrasound-implicit",
    "02-adult-rash-video-consultation",
    "04-parent-unsolicited-intimate-confirmed",
    "08-clinician-wound-photo",
    "09-teen-own-photo-heic",
    "12-auscultation-audio",
    "14-request-answered",
)
#: The folder of each FHIR version's examples (relative to RESOURCES) and its image type.
VERSIONS = {"R4": ("", "Media"), "R5": ("r5/", "DocumentReference")}


@pytest.fixture(scope="module")
def make_resources() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_resources", ROOT / "examples" / "make_resources.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_resources"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generated(make_resources: ModuleType) -> dict[str, dict[str, Any]]:
    files: dict[str, dict[str, Any]] = make_resources.generate()
    return files


def _image_and_file(image: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The words of an image's notes and the part describing its file (R4 Media: ``note`` and
    ``content``; R5 DocumentReference: the narrative and the attachment)."""
    if image["resourceType"] == "Media":
        return " ".join(n["text"] for n in image.get("note", [])), image["content"]
    if image["resourceType"] == "DocumentReference":
        return image.get("text", {}).get("div", ""), image["content"][0]["attachment"]
    return None


def _converted_bytes_normalised(bundle: dict[str, Any]) -> dict[str, Any]:
    """A HEIC image is re-encoded as JPEG by Pillow and libheif, whose versions may change the
    bytes; for such an example the values derived from the bytes are compared only in shape."""
    bundle = copy.deepcopy(bundle)
    for entry in bundle.get("entry", []):
        image = entry["resource"]
        found = _image_and_file(image)
        if found is None or "converted from" not in found[0]:
            continue
        for ident in image["identifier"]:
            if ident["system"] == c.SID_SHA256:
                assert len(ident["value"]) == 64
                ident["value"] = "<sha256>"
        for key in ("size", "hash"):
            assert found[1][key]
            found[1][key] = f"<{key}>"
        entry["request"]["ifNoneExist"] = "<sha256 and subject>"
    return bundle


def test_examples_are_in_sync(generated: dict[str, dict[str, Any]], make_resources: Any) -> None:
    on_disk = make_resources.on_disk(RESOURCES)
    assert on_disk == set(generated), (
        "examples/resources/ (or r5/) has other files than the generator writes; run "
        "python examples/make_resources.py"
    )
    for name, resource in generated.items():
        stored = json.loads((RESOURCES / name).read_text())
        if stored != resource:
            assert _converted_bytes_normalised(stored) == _converted_bytes_normalised(resource), (
                f"{name} is out of date: run python examples/make_resources.py"
            )
        else:
            assert (RESOURCES / name).read_text() == make_resources.dumps(resource), name


def test_generation_is_reproducible(
    make_resources: ModuleType, generated: dict[str, dict[str, Any]]
) -> None:
    assert make_resources.generate() == generated


def _entry(bundle: dict[str, Any], resource_type: str) -> dict[str, Any]:
    return next(e for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type)


def test_examples_cover_every_storing_case_and_both_audits(
    generated: dict[str, dict[str, Any]],
) -> None:
    assert set(generated) == {
        f"{folder}{name}"
        for folder, _ in VERSIONS.values()
        for name in (
            *(f"{case}.bundle.json" for case in STORING_CASES),
            "audit-disclosure.json",
            "audit-destruction.json",
        )
    }
    for folder, image_type in VERSIONS.values():
        for case in STORING_CASES:
            bundle = generated[f"{folder}{case}.bundle.json"]
            assert bundle["type"] == "transaction"
            found = _image_and_file(_entry(bundle, image_type)["resource"])
            assert found is not None
            binary = _entry(bundle, "Binary")["resource"]
            assert found[1]["url"] == f"Binary/{binary['id']}"
            assert image_type == "Media" or '"Media"' not in json.dumps(bundle)
    assert generated["audit-disclosure.json"]["type"]["code"] == "110106"
    assert generated["audit-destruction.json"]["action"] == "D"
    r5_disclosure = generated["r5/audit-disclosure.json"]
    assert r5_disclosure["category"][0]["coding"][0]["code"] == "110106"
    assert r5_disclosure["entity"][1]["what"]["reference"] == "DocumentReference/ex-docref-02"
    assert generated["r5/audit-destruction.json"]["action"] == "D"


def _plain(meta: dict[str, Any]) -> dict[str, Any]:
    """A meta with R5's RelatedArtifact address (``document.url``) where R4 has ``url``."""
    text = json.dumps(meta)
    return json.loads(re.sub(r'"document": \{"url": ("[^"]*")\}', r'"url": \1', text))


def test_r4_and_r5_examples_are_the_same_record(generated: dict[str, dict[str, Any]]) -> None:
    """Each case in R5 is the R4 case in R5's shapes: the same entries in the same order, the
    same ids, record keys and Binary, the same labels and tags on every resource, and the same
    image facts (R5 writes its size, an integer64, in R5's own way)."""
    for case in STORING_CASES:
        r4 = generated[f"{case}.bundle.json"]
        r5 = generated[f"r5/{case}.bundle.json"]
        assert r4["meta"] == r5["meta"]
        assert len(r4["entry"]) == len(r5["entry"])
        for a, b in zip(r4["entry"], r5["entry"], strict=True):
            ra, rb = a["resource"], b["resource"]
            types = (ra["resourceType"], rb["resourceType"])
            assert types[0] == types[1] or types == ("Media", "DocumentReference"), (case, types)
            assert a["fullUrl"] == b["fullUrl"]
            assert _plain(ra["meta"]) == _plain(rb["meta"]), (case, types)
            assert ra.get("identifier") == rb.get("identifier"), (case, types)
            assert a["request"].get("ifNoneExist") == b["request"].get("ifNoneExist")
            assert a["request"]["method"] == b["request"]["method"]
            assert a["request"]["url"] == b["request"]["url"] or types[0] == "Media"
        media = _entry(r4, "Media")["resource"]
        doc = _entry(r5, "DocumentReference")["resource"]
        attachment = doc["content"][0]["attachment"]
        assert doc["subject"] == media["subject"]
        assert doc["description"] == media["reasonCode"][0]["text"]
        assert attachment["creation"] == media["createdDateTime"]
        assert doc["date"] == media["issued"]
        assert doc["extension"] == media["extension"]
        assert doc["category"][0]["coding"] == media["type"]["coding"]
        assert doc["modality"][0]["coding"] == media["modality"]["coding"]
        assert int(attachment["size"]) == media["content"]["size"]
        for key in ("contentType", "url", "hash", "creation"):
            assert attachment[key] == media["content"][key], (case, key)
        for key in ("width", "height", "frames", "duration"):
            assert attachment.get(key) == media.get(key), (case, key)
        confidentiality = [
            s for s in media["meta"]["security"] if s["system"] == c.V3_CONFIDENTIALITY
        ]
        assert doc["securityLabel"] == [
            {"coding": [{"system": x["system"], "code": x["code"]} for x in confidentiality]}
        ]
        if "Consent" in {e["resource"]["resourceType"] for e in r4["entry"]}:
            old = _entry(r4, "Consent")["resource"]
            new = _entry(r5, "Consent")["resource"]
            assert new["subject"] == old["patient"] and new["grantor"] == old["performer"]
            assert new["period"]["start"] == old["dateTime"]
            # R4 in IHE PCF's shape (a root permit of the consented purposes), R5 in its own (a
            # base deny with one permit per consented purpose): the same purposes
            assert new["decision"] == "deny" and old["provision"]["type"] == "permit"
            permitted = [[p] for p in old["provision"]["purpose"]]
            assert [p["purpose"] for p in new["provision"]] == permitted
    for name in ("audit-disclosure.json", "audit-destruction.json"):
        assert generated[name]["meta"] == generated[f"r5/{name}"]["meta"]
        assert generated[name]["recorded"] == generated[f"r5/{name}"]["recorded"]


def test_fixed_ids_and_clock_are_used_and_the_defaults_stay_random(workdir: Path) -> None:
    ctx, consent = make_context(), make_consent()
    facts = intake(synthetic.jpeg(seed=3), workdir=workdir).facts
    decision = decide(ctx, consent)
    counter = iter(range(100))
    at = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
    fixed = map_submission(
        ctx, consent, facts, decision, new_id=lambda: f"id-{next(counter)}", now=at
    )
    data = fixed.bundle_json()
    assert fixed.submission_id == "id-0"
    assert (fixed.image_url, fixed.binary_url) == ("urn:uuid:id-1", "urn:uuid:id-2")
    assert {e["fullUrl"] for e in data["entry"]} == {f"urn:uuid:id-{i}" for i in (1, 2, 3, 4, 5)}
    assert fixed.image.model_dump(mode="json")["issued"].startswith("2026-11-21T09:00:00")
    assert fixed.provenance.model_dump(mode="json")["recorded"].startswith("2026-11-21T09:00:00")

    first = map_submission(ctx, consent, facts, decision)
    second = map_submission(ctx, consent, facts, decision)
    assert first.submission_id != second.submission_id
    assert first.binary_url != second.binary_url
    assert {e["fullUrl"] for e in first.bundle_json()["entry"]}.isdisjoint(
        e["fullUrl"] for e in second.bundle_json()["entry"]
    )


def test_r5_fixed_ids_and_clock_are_used_and_the_defaults_stay_random(workdir: Path) -> None:
    ctx, consent = make_context(), make_consent()
    facts = intake(synthetic.jpeg(seed=3), workdir=workdir).facts
    decision = decide(ctx, consent)
    counter = iter(range(100))
    at = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
    fixed = map_submission_r5(
        ctx, consent, facts, decision, new_id=lambda: f"id-{next(counter)}", now=at
    )
    data = fixed.bundle_json()
    assert fixed.submission_id == "id-0"
    assert (fixed.image_url, fixed.binary_url) == ("urn:uuid:id-1", "urn:uuid:id-2")
    assert {e["fullUrl"] for e in data["entry"]} == {f"urn:uuid:id-{i}" for i in (1, 2, 3, 4, 5)}
    assert fixed.image.model_dump(mode="json")["date"].startswith("2026-11-21T09:00:00")
    assert fixed.provenance.model_dump(mode="json")["recorded"].startswith("2026-11-21T09:00:00")

    first = map_submission_r5(ctx, consent, facts, decision)
    second = map_submission_r5(ctx, consent, facts, decision)
    assert first.submission_id != second.submission_id
    assert {e["fullUrl"] for e in first.bundle_json()["entry"]}.isdisjoint(
        e["fullUrl"] for e in second.bundle_json()["entry"]
    )
