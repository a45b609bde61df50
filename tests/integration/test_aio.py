"""The asyncio twin against the real servers: concurrent calls sharing one client, results the
same models as the synchronous API's, refusals raised through ``await``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from fhir_images import (
    ActionRefused,
    DeliveryResult,
    DisclosureRequest,
    FhirClient,
    ImageRecord,
    Outbox,
    Verdict,
    aio,
    ingest,
    synthetic,
)

from ..factories import make_consent, make_context

pytestmark = pytest.mark.integration


@pytest.fixture()
def patient(connect: Callable[..., FhirClient]) -> str:
    ref = f"Patient/aio-{uuid.uuid4().hex[:10]}"
    with connect() as client:
        client.update(
            {"resourceType": "Patient", "id": ref.split("/")[1], "birthDate": "1980-01-01"}
        )
        client.update({"resourceType": "Practitioner", "id": "gp1"})
    return ref


def test_concurrent_calls_share_one_client(connect, tmp_path: Path, patient: str) -> None:
    outboxes = []
    for seed in range(3):
        outbox = Outbox(tmp_path / f"ob-{seed}")
        ctx = make_context(patient=patient, operator=patient)
        result = ingest(synthetic.jpeg(seed=900 + seed), ctx, make_consent(), outbox=outbox)
        assert result.entry_state == "ready", result.decision.reasons
        outboxes.append(outbox)

    async def scenario(client: FhirClient) -> tuple[list[list[DeliveryResult]], list[ImageRecord]]:
        pushed = await asyncio.gather(*(aio.push(client, o) for o in outboxes))
        records = await aio.patient_records(client, patient)
        return pushed, records

    with connect() as client:
        pushed, records = asyncio.run(scenario(client))
    delivered = [r for batch in pushed for r in batch]
    assert len(delivered) == 3 and all(r.delivered for r in delivered), delivered
    assert {r.media for r in delivered} == {rec.ref for rec in records}
    assert all(rec.binary is not None and rec.consents for rec in records)


def test_refusals_come_through_await(connect, tmp_path: Path, patient: str) -> None:
    request = DisclosureRequest(
        purpose="TREAT",
        requester="Practitioner/gp1",
        role="clinician",
        recipient=f"Organization/nobody-{uuid.uuid4().hex[:8]}",
    )
    with connect() as client:
        with pytest.raises(ActionRefused, match="recipient"):
            asyncio.run(aio.disclose(client, patient, request))
        with pytest.raises(ActionRefused, match="narrow"):
            asyncio.run(aio.narrow_consent(client, patient, deny=["care"], by="x", reason="y"))
        nothing = asyncio.run(
            aio.disclose(
                client,
                patient,
                DisclosureRequest(purpose="TREAT", requester="Practitioner/gp1", role="clinician"),
            )
        )
    assert nothing.decisions == [] and nothing.release is not None
    assert not [d for d in nothing.decisions if d.verdict is Verdict.RELEASE]
