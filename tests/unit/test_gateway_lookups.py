"""The gateway's record look-ups for an answer of many images: the Binaries' labels are searched
for in several searches at once, and a search that fails withholds the images it was for unless
their Binaries can still be read one by one (never a release without the Binary's labels)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import responses

from fhir_images import FhirClient
from fhir_images import _codes as c
from fhir_images._gateway import Gateway, GatewayLimits, TokenVerifier
from fhir_images._gateway.service import _split
from fhir_images.fhir.audit import FileAudit

from ..hostile.test_gateway_requests import BASE, CAPABILITIES, SECRET, token

N = {"security": [{"system": c.V3_CONFIDENTIALITY, "code": "N"}]}
IMAGES = 12


def media(i: int) -> dict[str, Any]:
    return {
        "resourceType": "Media",
        "id": f"m{i:02d}",
        "meta": N,
        "status": "completed",
        "subject": {"reference": "Patient/p1"},
        "content": {"contentType": "image/jpeg", "url": f"Binary/b{i:02d}"},
    }


def binary(bid: str) -> dict[str, Any]:
    return {
        "resourceType": "Binary",
        "id": bid,
        "meta": N,
        "contentType": "image/jpeg",
        "securityContext": {"reference": f"Media/m{bid[1:]}"},
    }


def consent(i: int) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "id": f"c{i:02d}",
        "status": "active",
        "scope": {"coding": [{"code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": "Patient/p1"},
        "policy": [{"uri": "https://www.gmc-uk.org/"}],
        "provision": {
            "type": "permit",
            "data": [{"meaning": "instance", "reference": {"reference": f"Media/m{i:02d}"}}],
        },
    }


def searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }


class Upstream:
    """The server: the image search and the Binary searches (the proxied traffic), with the
    Binary search that asks for ``failing`` answering 500."""

    def __init__(self, failing: str) -> None:
        self.failing = failing
        self.searches: list[list[str]] = []
        self.failed: set[str] = set()
        self.running = 0
        self.most_at_once = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        query = parse_qs(urlsplit(str(request.url)).query)
        if path.endswith("/Media"):
            return httpx.Response(200, json=searchset([media(i) for i in range(IMAGES)]))
        if path.endswith("/Binary"):
            ids = query["_id"][0].split(",")
            self.searches.append(ids)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            try:
                await asyncio.sleep(0.05)  # long enough for the others to start
            finally:
                self.running -= 1
            if self.failing in ids:
                self.failed |= set(ids)
                return httpx.Response(500, json={"resourceType": "OperationOutcome"})
            return httpx.Response(200, json=searchset([binary(x) for x in ids]))
        return httpx.Response(404, json={"resourceType": "OperationOutcome"})


def ask(tmp_path: Path, upstream: Upstream, binary_reads: int) -> tuple[dict[str, Any], str]:
    """The image search through the gateway; Binaries read one by one answer ``binary_reads``."""

    def consents(request: Any) -> tuple[int, dict[str, str], str]:
        named = parse_qs(urlsplit(request.url).query)["data"][0].split(",")
        found = [consent(int(ref.split("/m")[1])) for ref in named]
        return 200, {}, json.dumps(searchset(found))

    def one_binary(request: Any) -> tuple[int, dict[str, str], str]:
        if binary_reads != 200:
            return binary_reads, {}, json.dumps({"resourceType": "OperationOutcome"})
        bid = urlsplit(request.url).path.rsplit("/", 1)[1]
        return 200, {}, json.dumps(binary(bid))

    audit = tmp_path / "audit.jsonl"
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.get(f"{BASE}/metadata", json=CAPABILITIES)
        rsps.add_callback("GET", f"{BASE}/Consent", callback=consents)
        rsps.add_callback("GET", re.compile(rf"{re.escape(BASE)}/Binary/b\d+"), callback=one_binary)
        client = FhirClient(BASE, token="upstream-secret", profile="generic", fhir_version="4.0")
        gateway = Gateway(
            client,
            TokenVerifier(algorithm="HS256", secret=SECRET),
            public_url="http://gw.test",
            transport=httpx.MockTransport(upstream.handle),
            audit=FileAudit(audit),
            limits=GatewayLimits(binary_searches=3, binary_search_min=1),
        )
        tok = token(scope="user/*.rs")

        async def call() -> httpx.Response:
            await gateway.start()
            try:
                async with httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=gateway), base_url="http://gw.test"
                ) as http:
                    return await http.get(
                        "/Media",
                        params={"subject": "Patient/p1"},
                        headers={"Authorization": f"Bearer {tok}"},
                    )
            finally:
                await gateway.stop()

        answer = asyncio.run(call())
    assert answer.status_code == 200, answer.text[:300]
    return answer.json(), audit.read_text() if audit.exists() else ""


def released(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", [])}


def test_the_binaries_are_searched_for_at_once_in_bounded_searches(tmp_path: Path) -> None:
    upstream = Upstream(failing="none")
    bundle, audit = ask(tmp_path, upstream, binary_reads=500)
    assert released(bundle) == {f"m{i:02d}" for i in range(IMAGES)}
    assert len(upstream.searches) == 3 and upstream.most_at_once == 3
    assert sorted(x for ids in upstream.searches for x in ids) == [
        f"b{i:02d}" for i in range(IMAGES)
    ]
    assert audit.count('"Media/m') == IMAGES


def test_a_failed_binary_search_withholds_its_images_when_they_cannot_be_read(
    tmp_path: Path,
) -> None:
    upstream = Upstream(failing="b05")
    bundle, audit = ask(tmp_path, upstream, binary_reads=500)
    failed = {f"m{b[1:]}" for b in upstream.failed}
    assert "m05" in failed and 0 < len(failed) < IMAGES
    assert released(bundle) == {f"m{i:02d}" for i in range(IMAGES)} - failed
    for image in failed:  # withheld, so not audited as released either
        assert f'"Media/{image}"' not in audit


def test_a_failed_binary_search_is_made_up_for_by_reading_each_binary(tmp_path: Path) -> None:
    upstream = Upstream(failing="b05")
    bundle, _ = ask(tmp_path, upstream, binary_reads=200)
    assert released(bundle) == {f"m{i:02d}" for i in range(IMAGES)}


@pytest.mark.parametrize(
    "count,sizes",
    [(0, []), (1, [1]), (3, [3]), (12, [5, 5, 2]), (50, [13, 13, 13, 11]), (230, [50] * 4 + [30])],
)
def test_the_binaries_are_split_into_a_few_searches_of_at_most_50(
    count: int, sizes: list[int]
) -> None:
    limits = GatewayLimits()
    refs = [f"Binary/b{i}" for i in range(count)]
    parts = _split(refs, limits.binary_searches, limits.binary_search_min)
    assert [len(p) for p in parts] == sizes
    assert [r for p in parts for r in p] == refs
