"""examples/resources/ is what fhir-images produces today: regenerate it and compare."""

from __future__ import annotations

import copy
import importlib.util
import json
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

from ..factories import make_consent, make_context

ROOT = Path(__file__).resolve().parents[2]
RESOURCES = ROOT / "examples" / "resources"


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


def _converted_bytes_normalised(bundle: dict[str, Any]) -> dict[str, Any]:
    """A HEIC image is re-encoded as JPEG by Pillow and libheif, whose versions may change the
    bytes; for such an example the values derived from the bytes are compared only in shape."""
    bundle = copy.deepcopy(bundle)
    for entry in bundle.get("entry", []):
        media = entry["resource"]
        if media["resourceType"] != "Media":
            continue
        if not any("converted from" in n["text"] for n in media.get("note", [])):
            continue
        for ident in media["identifier"]:
            if ident["system"] == c.SID_SHA256:
                assert len(ident["value"]) == 64
                ident["value"] = "<sha256>"
        for key in ("size", "hash"):
            assert media["content"][key]
            media["content"][key] = f"<{key}>"
        entry["request"]["ifNoneExist"] = "<sha256 and subject>"
    return bundle


def test_examples_are_in_sync(generated: dict[str, dict[str, Any]], make_resources: Any) -> None:
    on_disk = {p.name for p in RESOURCES.glob("*.json")}
    assert on_disk == set(generated), (
        "examples/resources/ has other files than the generator writes; run "
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


def test_examples_cover_every_storing_case_and_both_audits(
    generated: dict[str, dict[str, Any]],
) -> None:
    bundles = {n for n in generated if n.endswith(".bundle.json")}
    assert bundles == {
        f"{case}.bundle.json"
        for case in (
            "01-ultrasound-implicit",
            "02-adult-rash-video-consultation",
            "04-parent-unsolicited-intimate-confirmed",
            "08-clinician-wound-photo",
            "09-teen-own-photo-heic",
            "12-auscultation-audio",
        )
    }
    for name in bundles:
        bundle = generated[name]
        assert bundle["type"] == "transaction"
        media = next(
            e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Media"
        )
        binary = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Binary")
        assert media["content"]["url"] == f"Binary/{binary['resource']['id']}"
    assert generated["audit-disclosure.json"]["type"]["code"] == "110106"
    assert generated["audit-destruction.json"]["action"] == "D"


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
    assert (fixed.media_url, fixed.binary_url) == ("urn:uuid:id-1", "urn:uuid:id-2")
    assert {e["fullUrl"] for e in data["entry"]} == {f"urn:uuid:id-{i}" for i in (1, 2, 3, 4, 5)}
    assert fixed.media.model_dump(mode="json")["issued"].startswith("2026-11-21T09:00:00")
    assert fixed.provenance.model_dump(mode="json")["recorded"].startswith("2026-11-21T09:00:00")

    first = map_submission(ctx, consent, facts, decision)
    second = map_submission(ctx, consent, facts, decision)
    assert first.submission_id != second.submission_id
    assert first.binary_url != second.binary_url
    assert {e["fullUrl"] for e in first.bundle_json()["entry"]}.isdisjoint(
        e["fullUrl"] for e in second.bundle_json()["entry"]
    )
