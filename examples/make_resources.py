"""Write the example FHIR resources in examples/resources/ from the example cases.

Every file is produced by fhir-images itself: the transaction Bundle that ``ingest`` puts in the
outbox for each storing case, and the AuditEvents that ``disclose`` and ``destroy`` write. Ids and
clocks are fixed, so the output is the same on every run; ``tests/unit/test_examples_sync.py``
regenerates it and fails if the files here have drifted. References between the entries stay
``urn:uuid`` (the server resolves them); the Binary holds no bytes (the sender adds them).

    python examples/make_resources.py           # rewrite examples/resources/
    python examples/make_resources.py --check   # exit 1 if a file would change
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from fhir_images import (
    DisclosureRequest,
    ImageRecord,
    Outcome,
    RetentionSchedule,
    decide,
    earliest_destruction,
    load_structured,
    parse_consent,
    parse_context,
)
from fhir_images._intake import claimed_type_from_name, intake
from fhir_images._lifecycle import disclosure_audit as audit_disclosure
from fhir_images.fhir.r4 import R4
from fhir_images.fhir.r4.mapping import map_submission

HERE = Path(__file__).resolve().parent
OUT = HERE / "resources"

#: The example cases that end in "stored" (the others are held, refused or bad input).
STORED_CASES = (
    "01-ultrasound-implicit",
    "02-adult-rash-video-consultation",
    "04-parent-unsolicited-intimate-confirmed",
    "08-clinician-wound-photo",
    "09-teen-own-photo-heic",
    "12-auscultation-audio",
)

#: When the examples were "ingested" and "disclosed" (after every case's capture).
INGESTED = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
DISCLOSED = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
#: The destruction example: the first day after the wound photo's retention period (8 years).
DESTROYED = datetime(2034, 11, 19, 9, 0, tzinfo=UTC)

_NAMESPACE = uuid.UUID("5d7c3f0e-51a4-4c8e-9d52-3f0b1a6e2c41")


def id_factory(name: str) -> Callable[[], str]:
    """Reproducible UUIDs (version 5) for one example: name#1, name#2, ..."""
    counter = 0

    def new_id() -> str:
        nonlocal counter
        counter += 1
        return str(uuid.uuid5(_NAMESPACE, f"{name}#{counter}"))

    return new_id


def ingest_case(name: str) -> dict[str, Any]:
    """The transaction Bundle fhir-images builds for one example case."""
    path = HERE / "cases" / f"{name}.yaml"
    data = load_structured(path)
    image = (path.parent / str(data["image"])).resolve()
    consent_data = data.get("consent")
    if isinstance(consent_data, str):
        consent_data = load_structured(path.parent / consent_data)
    ctx = parse_context(data["context"])
    consent = parse_consent(consent_data)
    decision = decide(ctx, consent, policy=str(data.get("policy", "default")))
    if decision.outcome is not Outcome.STORE:
        raise SystemExit(f"{name}: expected a decision to store, got {decision.outcome}")
    with tempfile.TemporaryDirectory() as tmp:
        result = intake(image, claimed_type=claimed_type_from_name(image.name), workdir=Path(tmp))
        facts = result.facts
    mapped = map_submission(ctx, consent, facts, decision, new_id=id_factory(name), now=INGESTED)
    return mapped.bundle_json()


def _resource(bundle: dict[str, Any], resource_type: str) -> dict[str, Any]:
    return next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type
    )


def as_stored(bundle: dict[str, Any], resource_type: str, rid: str) -> dict[str, Any]:
    """A resource of a Bundle as the server would hold it after delivery (with an id)."""
    resource = json.loads(json.dumps(_resource(bundle, resource_type)))
    resource["id"] = rid
    return resource


def disclosure_audit(bundle: dict[str, Any]) -> dict[str, Any]:
    """The AuditEvent for releasing case 02's photo for a dermatology second opinion (COC)."""
    media = as_stored(bundle, "Media", "ex-media-02")
    request = DisclosureRequest(
        purpose="COC",
        requester="Practitioner/ex-gp-1",
        role="clinician",
        clearance="N",
        recipient="Organization/ex-dermatology",
    )
    return audit_disclosure(
        ImageRecord(R4.image(media)), request, media["subject"]["reference"], now=DISCLOSED
    )


def destruction_audit(bundle: dict[str, Any]) -> dict[str, Any]:
    """The AuditEvent for destroying case 08's wound photo once its retention period is over."""
    media = as_stored(bundle, "Media", "ex-media-08")
    created = date.fromisoformat(media["createdDateTime"][:10])
    until, why = earliest_destruction(
        RetentionSchedule.load("england"),
        "hospital",
        birth_date=date(1950, 3, 9),  # examples/fhir/seed-bundle.json, Patient/ex-adult-3
        last_treatment=created,
    )
    assert until is not None and until <= DESTROYED.date(), why
    return R4.destruction_audit(
        R4.image(media),
        by="Practitioner/ex-gp-2",
        reason="Retention period over",
        retention=why,
        destroyed_with=[
            "Binary/ex-binary-08",
            "Consent/ex-consent-08",
            "Provenance/ex-provenance-08",
        ],
        now=DESTROYED,
    )


def generate() -> dict[str, dict[str, Any]]:
    """Every example resource, by file name."""
    bundles = {name: ingest_case(name) for name in STORED_CASES}
    files = {f"{name}.bundle.json": bundle for name, bundle in bundles.items()}
    files["audit-disclosure.json"] = disclosure_audit(bundles["02-adult-rash-video-consultation"])
    files["audit-destruction.json"] = destruction_audit(bundles["08-clinician-wound-photo"])
    return files


def dumps(resource: dict[str, Any]) -> str:
    return json.dumps(resource, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report files that would change")
    parser.add_argument("--out", type=Path, default=OUT, help="output folder")
    args = parser.parse_args(argv)
    files = generate()
    stale = [
        name
        for name, resource in files.items()
        if not (args.out / name).exists() or (args.out / name).read_text() != dumps(resource)
    ]
    extra = (
        sorted(p.name for p in args.out.glob("*.json") if p.name not in files)
        if args.out.exists()
        else []
    )
    if args.check:
        for name in [*stale, *extra]:
            print(f"out of date: {args.out / name}")
        return 1 if stale or extra else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name in extra:
        (args.out / name).unlink()
    for name, resource in files.items():
        (args.out / name).write_text(dumps(resource))
    print(f"wrote {len(files)} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
