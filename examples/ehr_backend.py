"""An EHR backend using fhir-images through its public API only.

The story: a patient sends a photo of a rash before a video consultation; the EHR's upload
endpoint checks it and queues it (``ingest``), a background job delivers it to the FHIR server
(``push``), a dermatologist's second opinion is answered over HTTP with the release Bundle
(``disclose``, no files), and later the patient withdraws their consent
(``withdraw_consent``), after which the image is no longer released.

Every step returns a pydantic model: the backend stores ``model_dump_json()`` in its own
database and reads it back with ``model_validate_json()``.

Run it against a FHIR server (the bundled HAPI, for instance)::

    python examples/ehr_backend.py --server http://127.0.0.1:8080/fhir
    python examples/ehr_backend.py --server http://127.0.0.1:8080/fhir --asyncio

The first form runs the steps in order; the second runs the same steps with
:mod:`fhir_images.aio`, as an async web framework would. Either prints one JSON line per step.
A bearer token for the server can be given in ``FHIR_TOKEN``; an EHR that authenticates to its
FHIR server with SMART Backend Services passes ``auth=SmartBackendServices(...)`` instead. A
server that does not take AuditEvents from clients (HFS) needs ``--audit file:/path`` or an
audit repository's URL: disclosures and consent changes are refused without an audit trail.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from fhir_images import (
    BearerToken,
    ConsentChange,
    DeliveryResult,
    DisclosureRequest,
    DisclosureResult,
    FhirClient,
    IngestResult,
    Outbox,
    Verdict,
    aio,
    disclose,
    ingest,
    parse_consent,
    parse_context,
    push,
    withdraw_consent,
)

HERE = Path(__file__).resolve().parent
PHOTO = HERE / "images" / "rash-forearm-gps.jpg"


# ------------------------------------------------------------------------- the EHR's side


def register_people(client: FhirClient, tag: str) -> dict[str, str]:
    """In a real EHR these exist already: the patient, their GP, and the dermatology service."""
    people = {
        "patient": f"Patient/pt-{tag}",
        "gp": f"Practitioner/gp-{tag}",
        "dermatology": f"Organization/derm-{tag}",
    }
    client.transaction(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": {"resourceType": ref.split("/")[0], "id": ref.split("/")[1]}
                    | ({"birthDate": "1985-06-30"} if ref.startswith("Patient/") else {}),
                    "request": {"method": "PUT", "url": ref},
                }
                for ref in people.values()
            ],
        }
    )
    return people


def upload_form(people: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the upload endpoint receives with the photo: the clinical context and the consent
    the GP recorded on the video call (the same fields as a case file)."""
    context = {
        "patient": people["patient"],
        "birth_date": "1985-06-30",
        "captured": "2026-11-20T10:00:00Z",
        "made_by": "patient",
        "operator": people["patient"],
        "kind": "photo",
        "solicited": True,
        "intimate": False,
        "remote": True,
        "body_site": {"code": "14975008", "display": "Forearm"},
        "purpose": "Rash on the forearm; baseline photo to judge the response to treatment.",
    }
    consent = {
        "given_by": "patient",
        "giver": people["patient"],
        "date": "2026-11-20T09:55:00Z",
        "taken_by": people["gp"],
        "method": "verbal",
        "confirmed": True,
        "explained": {"why": True, "form": True, "secure_storage": True, "secondary_uses": True},
        "permissions": {"view": True, "store": True, "second_opinion": True},
        "discussion": "Explained on the video call why the photo helps, that it is kept "
        "securely in the GP record; agreed to a dermatology second opinion.",
    }
    return context, consent


def second_opinion(people: dict[str, str]) -> DisclosureRequest:
    return DisclosureRequest(
        purpose="COC",
        requester=people["gp"],
        role="clinician",
        clearance="R",
        recipient=people["dermatology"],
    )


def receive_upload(outbox: Outbox, people: dict[str, str]) -> IngestResult:
    """The upload endpoint: check the photo and queue it. CPU-bound and local: no server."""
    context, consent = upload_form(people)
    return ingest(PHOTO, parse_context(context), parse_consent(consent), outbox=outbox)


def stored(result: Any) -> Any:
    """What the EHR keeps in its database, read back as it would be later."""
    return type(result).model_validate_json(result.model_dump_json())


def report(step: str, result: Any) -> dict[str, Any]:
    line = {"step": step, "result": json.loads(result.model_dump_json())}
    print(json.dumps(line, sort_keys=True))
    return line


# ---------------------------------------------------------------------------- synchronous


def run(client: FhirClient, outbox: Outbox) -> list[dict[str, Any]]:
    people = register_people(client, uuid.uuid4().hex[:10])
    lines = []

    queued = stored(receive_upload(outbox, people))
    lines.append(report("upload", queued))
    if queued.entry_state != "ready":
        raise SystemExit(f"the upload was not queued: {queued.decision.outcome.value}")

    [delivered] = push(client, outbox)
    lines.append(report("push", stored(delivered)))
    if not delivered.delivered:
        raise SystemExit(f"delivery failed: {delivered.error}")

    stream = io.BytesIO()  # an HTTP response body, in a web framework
    opinion = disclose(client, people["patient"], second_opinion(people), sink=stream)
    lines.append(report("second-opinion", stored(opinion)))
    release = json.loads(stream.getvalue())

    change = withdraw_consent(
        client, delivered.media or "", by=people["patient"], reason="patient asked"
    )
    lines.append(report("withdraw", stored(change)))

    after = disclose(client, people["patient"], second_opinion(people))
    lines.append(report("second-opinion-after-withdrawal", stored(after)))
    _check(delivered, opinion, release, change, after)
    return lines


# ------------------------------------------------------------------------------- asyncio


async def run_async(client: FhirClient, outbox: Outbox) -> list[dict[str, Any]]:
    people = await asyncio.to_thread(register_people, client, uuid.uuid4().hex[:10])
    lines = []

    queued = await asyncio.to_thread(receive_upload, outbox, people)  # CPU-bound: a thread
    lines.append(report("upload", stored(queued)))
    if queued.entry_state != "ready":
        raise SystemExit(f"the upload was not queued: {queued.decision.outcome.value}")

    [delivered] = await aio.push(client, outbox)
    lines.append(report("push", stored(delivered)))
    if not delivered.delivered:
        raise SystemExit(f"delivery failed: {delivered.error}")

    opinion = await aio.disclose(client, people["patient"], second_opinion(people))
    lines.append(report("second-opinion", stored(opinion)))

    change = await aio.withdraw_consent(
        client, delivered.media or "", by=people["patient"], reason="patient asked"
    )
    lines.append(report("withdraw", stored(change)))

    after = await aio.disclose(client, people["patient"], second_opinion(people))
    lines.append(report("second-opinion-after-withdrawal", stored(after)))
    _check(delivered, opinion, opinion.release or {}, change, after)
    return lines


def _check(
    delivered: DeliveryResult,
    opinion: DisclosureResult,
    release: dict[str, Any],
    change: ConsentChange,
    after: DisclosureResult,
) -> None:
    """What the story must show; the example fails loudly if the library does otherwise."""
    [first] = opinion.decisions
    assert first.media == delivered.media and first.verdict is Verdict.RELEASE, first
    kinds = {e["resource"]["resourceType"] for e in release.get("entry", [])}
    assert {(delivered.media or "").split("/")[0], "Binary"} <= kinds, kinds
    assert delivered.media in change.images and change.provenance, change
    [second] = after.decisions
    assert second.verdict is Verdict.WITHHOLD, second


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="FHIR base URL")
    parser.add_argument("--asyncio", action="store_true", help="use fhir_images.aio")
    parser.add_argument("--audit", help="audit repository URL or file:/path")
    args = parser.parse_args(argv)
    token = os.environ.get("FHIR_TOKEN")
    auth = BearerToken(token) if token else None
    with (
        tempfile.TemporaryDirectory() as work,
        FhirClient(args.server, auth=auth, audit=args.audit) as client,
    ):
        outbox = Outbox(Path(work) / "outbox")
        if args.asyncio:
            asyncio.run(run_async(client, outbox))
        else:
            run(client, outbox)
    return 0


if __name__ == "__main__":
    sys.exit(main())
