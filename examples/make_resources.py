"""Write the example FHIR resources in examples/resources/ from the example cases.

Every file is produced by fhir-images itself: the transaction Bundle that ``ingest`` puts in the
outbox for each storing case, and the AuditEvents that ``disclose`` and ``destroy`` write. Ids and
clocks are fixed, so the output is the same on every run; ``tests/unit/test_examples_sync.py``
regenerates it and fails if the files here have drifted. References between the entries stay
``urn:uuid`` (the server resolves them); the Binary holds no bytes (the sender adds them).

The same cases are written twice: for FHIR R4 in examples/resources/ (the image a Media) and for
FHIR R5 in examples/resources/r5/ (the image a DocumentReference, with R5's Consent, Encounter
and AuditEvents), with the same ids and clocks.

    python examples/make_resources.py           # rewrite examples/resources/ (and r5/)
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
    ImageRequest,
    Outcome,
    RetentionSchedule,
    decide,
    earliest_destruction,
    load_structured,
    parse_consent,
    parse_context,
)
from fhir_images._intake import claimed_type_from_name, intake
from fhir_images.fhir.r4 import R4
from fhir_images.fhir.r5 import R5
from fhir_images.fhir.version import FhirVersion

HERE = Path(__file__).resolve().parent
OUT = HERE / "resources"

#: The FHIR versions written, each with the sub-folder of OUT its files go to.
VERSIONS: tuple[tuple[FhirVersion, str], ...] = ((R4, ""), (R5, "r5/"))

#: The example cases that end in "stored" (the others are held, refused or bad input).
STORED_CASES = (
    "01-ultrasound-implicit",
    "02-adult-rash-video-consultation",
    "04-parent-unsolicited-intimate-confirmed",
    "08-clinician-wound-photo",
    "09-teen-own-photo-heic",
    "12-auscultation-audio",
    "14-request-answered",
)

#: When the examples were "ingested" and "disclosed" (after every case's capture).
INGESTED = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
DISCLOSED = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
#: The destruction example: the first day after the wound photo's retention period (8 years).
DESTROYED = datetime(2034, 11, 19, 9, 0, tzinfo=UTC)

#: The id an example image has "on the server", by resource type and case number.
IMAGE_ID = {"Media": "ex-media-{}", "DocumentReference": "ex-docref-{}"}

_NAMESPACE = uuid.UUID("5d7c3f0e-51a4-4c8e-9d52-3f0b1a6e2c41")


def id_factory(name: str) -> Callable[[], str]:
    """Reproducible UUIDs (version 5) for one example: name#1, name#2, ..."""
    counter = 0

    def new_id() -> str:
        nonlocal counter
        counter += 1
        return str(uuid.uuid5(_NAMESPACE, f"{name}#{counter}"))

    return new_id


def ingest_case(name: str, versions: tuple[FhirVersion, ...] = (R4,)) -> list[dict[str, Any]]:
    """The transaction Bundle fhir-images builds for one example case, in each FHIR version
    (the image is read and checked once; each version maps the same decision)."""
    path = HERE / "cases" / f"{name}.yaml"
    data = load_structured(path)
    image = (path.parent / str(data["image"])).resolve()
    consent_data = data.get("consent")
    if isinstance(consent_data, str):
        consent_data = load_structured(path.parent / consent_data)
    ctx = parse_context(data["context"])
    consent = parse_consent(consent_data)
    request = None
    if data.get("request"):
        request = ImageRequest.model_validate(load_structured(path.parent / str(data["request"])))
        ctx = ctx.model_copy(update={"request": request.id})
    decision = decide(ctx, consent, policy=str(data.get("policy", "default")), request=request)
    if decision.outcome is not Outcome.STORE:
        raise SystemExit(f"{name}: expected a decision to store, got {decision.outcome}")
    with tempfile.TemporaryDirectory() as tmp:
        result = intake(image, claimed_type=claimed_type_from_name(image.name), workdir=Path(tmp))
        facts = result.facts
    bundles: list[dict[str, Any]] = []
    for version in versions:
        mapped = version.map_submission(
            ctx, consent, facts, decision, new_id=id_factory(name), now=INGESTED
        )
        bundles.append(mapped.bundle_json())
    return bundles


def _resource(bundle: dict[str, Any], resource_type: str) -> dict[str, Any]:
    return next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type
    )


def as_stored(bundle: dict[str, Any], resource_type: str, rid: str) -> dict[str, Any]:
    """A resource of a Bundle as the server would hold it after delivery (with an id)."""
    resource: dict[str, Any] = json.loads(json.dumps(_resource(bundle, resource_type)))
    resource["id"] = rid
    return resource


def stored_image(bundle: dict[str, Any], version: FhirVersion, case: str) -> dict[str, Any]:
    """The image (Media or DocumentReference) of a case's Bundle as stored, with its id."""
    image_type = version.image_type
    return as_stored(bundle, image_type, IMAGE_ID[image_type].format(case))


def disclosure_audit(bundle: dict[str, Any], version: FhirVersion = R4) -> dict[str, Any]:
    """The AuditEvent for releasing case 02's photo for a dermatology second opinion (COC)."""
    image = stored_image(bundle, version, "02")
    request = DisclosureRequest(
        purpose="COC",
        requester="Practitioner/ex-gp-1",
        role="clinician",
        clearance="N",
        recipient="Organization/ex-dermatology",
    )
    record = ImageRecord(version.image(image))
    audit: dict[str, Any] = version.disclosure_audit(
        record.image,
        record.labels,
        record.confidentiality,
        purpose=request.purpose,
        requester=request.requester,
        receiver=request.receiver,
        patient=image["subject"]["reference"],
        now=DISCLOSED,
        source_network="ehr.example.org",
        recipient_network="dermatology.example.org",
    )
    return audit


def destruction_audit(bundle: dict[str, Any], version: FhirVersion = R4) -> dict[str, Any]:
    """The AuditEvent for destroying case 08's wound photo once its retention period is over."""
    image = stored_image(bundle, version, "08")
    view = version.image(image)
    assert view.created is not None
    until, why = earliest_destruction(
        RetentionSchedule.load("england"),
        "hospital",
        birth_date=date(1950, 3, 9),  # examples/fhir/seed-bundle.json, Patient/ex-adult-3
        last_treatment=view.created.date(),
    )
    assert until is not None and until <= DESTROYED.date(), why
    audit: dict[str, Any] = version.destruction_audit(
        view,
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
    return audit


def generate() -> dict[str, dict[str, Any]]:
    """Every example resource, by file name relative to examples/resources/ (R5's in r5/)."""
    versions = tuple(v for v, _ in VERSIONS)
    by_case = {name: ingest_case(name, versions) for name in STORED_CASES}
    files: dict[str, dict[str, Any]] = {}
    for i, (version, folder) in enumerate(VERSIONS):
        bundles = {name: found[i] for name, found in by_case.items()}
        files.update({f"{folder}{name}.bundle.json": b for name, b in bundles.items()})
        files[f"{folder}audit-disclosure.json"] = disclosure_audit(
            bundles["02-adult-rash-video-consultation"], version
        )
        files[f"{folder}audit-destruction.json"] = destruction_audit(
            bundles["08-clinician-wound-photo"], version
        )
    return files


def dumps(resource: dict[str, Any]) -> str:
    return json.dumps(resource, indent=2, ensure_ascii=False) + "\n"


def on_disk(out: Path) -> set[str]:
    """The example files in ``out`` and its version folders, as ``generate`` names them."""
    folders = {folder for _, folder in VERSIONS}
    return {
        p.relative_to(out).as_posix()
        for folder in folders
        for p in (out / folder).glob("*.json")
        if (out / folder).is_dir()
    }


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
    extra = sorted(on_disk(args.out) - set(files)) if args.out.exists() else []
    if args.check:
        for name in [*stale, *extra]:
            print(f"out of date: {args.out / name}")
        return 1 if stale or extra else 0
    for name in extra:
        (args.out / name).unlink()
    for name, resource in files.items():
        (args.out / name).parent.mkdir(parents=True, exist_ok=True)
        (args.out / name).write_text(dumps(resource))
    print(f"wrote {len(files)} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
