"""Shared fixtures.

Integration tests talk to a real FHIR server at ``FHIR_BASE_URL`` (for example the
project's HAPI server: ``servers/hapi/hapi.sh start``). Without it they are skipped
locally, but in CI (``CI`` set) or under ``scripts/test.sh`` (which sets
``FHIR_IMAGES_REQUIRE_SERVER``) a missing or unreachable server fails the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from fhir_images import Outbox


@pytest.fixture(scope="session")
def fhir_base_url() -> str:
    url = os.environ.get("FHIR_BASE_URL", "").rstrip("/")
    in_ci = bool(os.environ.get("CI") or os.environ.get("FHIR_IMAGES_REQUIRE_SERVER"))
    if not url:
        message = "FHIR_BASE_URL is not set: integration tests need a running FHIR server"
        if in_ci:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    try:
        r = requests.get(f"{url}/metadata", headers={"Accept": "application/fhir+json"}, timeout=30)
        r.raise_for_status()
    except requests.RequestException as exc:
        message = f"FHIR server at {url} is not answering /metadata: {exc}"
        if in_ci:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return url


@pytest.fixture()
def outbox(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "outbox")


@pytest.fixture()
def workdir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "work"
    d.mkdir()
    yield d
