"""Faults between push and the server, and push killed at random moments.

Asserted on the server itself, not on what push reports: every image exactly once (one
Binary, one Media, one Consent, one Provenance), no Binary that no Media owns, no Binary
whose labels differ from its Media's or that names another resource, no entry lost.
The counts of requests, faults and kills are printed (``-s``) for the README.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fhir_images import FhirClient, Outbox, RetryPolicy, ingest, push, synthetic
from fhir_images import _codes as c

from ..factories import child_context, make_consent, make_context, parent_consent
from ..faultproxy import FaultProxy, Faults

pytestmark = pytest.mark.integration

IMAGES = 130
KILLS = 14
KILL_IMAGES = 200
PUSH = [sys.executable, "-m", "fhir_images.cli", "push", "--json", "--workers", "2"]


@pytest.fixture(scope="module")
def direct(connect: Callable[..., FhirClient]) -> FhirClient:
    return connect()


def _people(client: FhirClient) -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    adult, child, mum = f"fa-{tag}", f"fc-{tag}", f"fm-{tag}"
    entries = [
        ("Patient", adult, {"birthDate": "1980-01-01"}),
        ("Patient", child, {"birthDate": "2023-05-05"}),
        ("RelatedPerson", mum, {"patient": {"reference": f"Patient/{child}"}}),
        ("Practitioner", "gp1", {}),
    ]
    client.transaction(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": {"resourceType": t, "id": i, **extra},
                    "request": {"method": "PUT", "url": f"{t}/{i}"},
                }
                for t, i, extra in entries
            ],
        }
    )
    return {"adult": f"Patient/{adult}", "child": f"Patient/{child}", "mum": f"RelatedPerson/{mum}"}


def _fill(outbox: Outbox, people: dict[str, str], count: int, seed: int) -> list:
    """Adults' photos with consent, children's intimate photos with a parent's consent (V), and
    ultrasound stills with implicit consent."""
    metas = []
    for i in range(count):
        kind = i % 3
        if kind == 0:
            ctx = make_context(patient=people["adult"], operator=people["adult"])
            consent = make_consent()
        elif kind == 1:
            ctx = child_context(patient=people["child"], operator=people["mum"])
            consent = parent_consent(giver=people["mum"])
        else:
            ctx = make_context(
                patient=people["adult"],
                made_by="clinician",
                operator="Practitioner/gp1",
                kind="ultrasound",
                solicited=None,
            )
            consent = None
        data = synthetic.jpeg(160, 120, seed=seed * 1000 + i)
        result = ingest(data, ctx, consent, outbox=outbox)
        assert result.entry is not None and result.entry.state == "ready", result.decision
        metas.append(result.entry.meta)
    return metas


def _count(client: FhirClient, resource_type: str, params: dict[str, str]) -> int:
    bundle = client.request(
        "GET", resource_type, params={**params, "_summary": "count", "_total": "accurate"}
    ).json()
    return int(bundle["total"])


def _keys(labels: list[dict]) -> set[tuple[str, str]]:
    return {(x["system"], x["code"]) for x in labels}


def assert_accounted_for(client: FhirClient, outbox: Outbox, metas: list, since: str) -> None:
    """Everything on the server is exactly what the outbox says was delivered."""
    assert list(outbox.entries()) == [], "every entry delivered (none left ready or failed)"
    receipts = {r["id"]: r for r in outbox.receipts()}
    assert len(receipts) == len(metas), "no entry lost"
    media_ids: set[str] = set()
    image_type = client.version.image_type
    for meta in metas:
        key, ckey = meta.image_key, meta.consent_key
        counts = {
            "Binary": _count(client, "Binary", {"_tag": f"{c.SID_RECORD}|{key}.binary"}),
            "image": _count(
                client,
                image_type,
                {"identifier": f"{c.SID_SHA256}|{meta.sha256}", "subject": meta.patient},
            ),
            "Provenance": _count(
                client, "Provenance", {"_tag": f"{c.SID_RECORD}|{key}.provenance.{ckey}"}
            ),
        }
        expected = {"Binary": 1, "image": 1, "Provenance": 1}
        if ckey != "implicit":
            counts["Consent"] = _count(
                client, "Consent", {"identifier": f"{c.SID_RECORD}|{key}.consent.{ckey}"}
            )
            expected["Consent"] = 1
        assert counts == expected, meta.id
        [media] = client.search(
            image_type, {"identifier": f"{c.SID_SHA256}|{meta.sha256}", "subject": meta.patient}
        )
        image = client.version.image(media)
        media_ids.add(image.ref)
        assert image.content_url is not None
        binary = client.binary_meta(image.content_url)
        assert binary["securityContext"] == {"reference": image.ref}
        assert _keys(binary["meta"]["security"]) == _keys(media["meta"]["security"]), meta.id
    # no orphan: every Binary these pushes wrote (by its record tag) belongs to one of these
    # Media (other tests' Binaries written in the same seconds are not this test's business)
    tags = {f"{m.image_key}.binary" for m in metas}
    written = [
        b
        for b in client.search(
            "Binary",
            {"_lastUpdated": f"ge{since}", "_elements": "securityContext", "_count": "200"},
        )
        if any(
            t.get("system") == c.SID_RECORD and t.get("code") in tags
            for t in b.get("meta", {}).get("tag", [])
        )
    ]
    orphans = [
        b["id"] for b in written if b.get("securityContext", {}).get("reference") not in media_ids
    ]
    assert orphans == [], "Binaries on the server that no delivered image owns"
    assert len(written) == len(metas)


def _since() -> str:
    return (datetime.now(UTC) - timedelta(seconds=2)).isoformat().replace("+00:00", "Z")


def test_push_through_a_faulty_network_loses_and_duplicates_nothing(
    direct, fhir_base_url, tmp_path
):
    people = _people(direct)
    outbox = Outbox(tmp_path / "ob")
    metas = _fill(outbox, people, IMAGES, seed=1)
    since = _since()
    faults = Faults(seed=20261125)
    started = time.monotonic()
    rounds = 0
    with FaultProxy(fhir_base_url, faults) as proxy:
        client = FhirClient(
            proxy.base_url,
            retry=RetryPolicy(attempts=4, backoff_base=0.01, backoff_max=0.1, total_seconds=10),
        )
        # the server's behaviour is probed once, before the network goes bad (as an
        # administrator's check-server would); the faults are for delivery
        faults.enabled = False
        client.report()
        faults.enabled = True
        while list(outbox.entries("ready")) and rounds < 25:
            rounds += 1
            push(client, outbox, workers=4, max_permanent_failures=50)
    elapsed = time.monotonic() - started
    print(
        f"\nfault proxy: {IMAGES} images, {rounds} pushes, {elapsed:.1f} s, "
        f"{dict(sorted(faults.counts.items()))}"
    )
    # enough went through faults: a delivery on HAPI is at least four requests (the search,
    # the transaction, the byte write, the batch of reads back), each fault one more
    assert faults.counts["requests"] >= 4 * IMAGES, faults.counts
    assert faults.counts["drop_after"] >= 30 and faults.counts["drop_before"] >= 30
    assert_accounted_for(direct, outbox, metas, since)


def test_push_killed_at_random_moments_loses_and_duplicates_nothing(
    direct, fhir_base_url, tmp_path
):
    people = _people(direct)
    root = tmp_path / "ob"
    outbox = Outbox(root)
    metas = _fill(outbox, people, KILL_IMAGES, seed=2)
    since = _since()
    rng = random.Random(7)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    kills = 0
    started = time.monotonic()
    while kills < KILLS and list(outbox.entries("ready")):
        proc = subprocess.Popen(
            [*PUSH, "--server", fhir_base_url, "--outbox", str(root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        time.sleep(rng.uniform(0.3, 1.2))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
    left = len(list(outbox.entries("ready")))
    final = push(direct, Outbox(root), workers=2)
    print(
        f"\nkills: {kills} SIGKILLs of push, {left} of {KILL_IMAGES} entries left for the "
        f"last push, {time.monotonic() - started:.1f} s"
    )
    assert kills >= 10, "push finished too quickly to be killed often enough"
    assert all(r.delivered for r in final), [r.error for r in final if not r.delivered]
    assert_accounted_for(direct, Outbox(root), metas, since)
    leftovers = [p for p in (Path(root) / ".tmp").iterdir()]
    assert len(leftovers) <= 2, "work of killed processes is cleared by the next one"
