"""Shared fixtures.

Integration tests talk to real FHIR servers, each test once per server. The servers come from
``FHIR_IMAGES_TEST_SERVERS`` (``name=url,name=url``; ``scripts/test.sh`` starts HAPI and HFS
and sets it), else from ``FHIR_BASE_URL`` alone. Without any they are skipped locally, but in
CI (``CI`` set) or under ``scripts/test.sh`` (which sets ``FHIR_IMAGES_REQUIRE_SERVER``) a
missing or unreachable server fails the run.

What a test may expect of a server comes from the probe (``server_report``): where servers
really differ, the test asks the report, not the server's name.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from fhir_images import FhirClient, Outbox
from fhir_images.fhir.probe import ServerReport
from fhir_images.fhir.version import FhirVersion, get_version

SEED = Path(__file__).resolve().parents[1] / "examples" / "fhir" / "seed-bundle.json"

# one probe per server for the whole run, subprocesses included
os.environ.setdefault("FHIR_IMAGES_CACHE_DIR", tempfile.mkdtemp(prefix="fhir-images-probes-"))


def configured_servers() -> dict[str, str]:
    servers: dict[str, str] = {}
    for part in os.environ.get("FHIR_IMAGES_TEST_SERVERS", "").split(","):
        if "=" in part:
            name, url = part.split("=", 1)
            servers[name.strip()] = url.strip().rstrip("/")
    if not servers and os.environ.get("FHIR_BASE_URL"):
        servers["server"] = os.environ["FHIR_BASE_URL"].rstrip("/")
    return servers


SERVERS = configured_servers()


def _unusable(message: str) -> None:
    if os.environ.get("CI") or os.environ.get("FHIR_IMAGES_REQUIRE_SERVER"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session", params=sorted(SERVERS) or ["none"])
def server_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def fhir_base_url(server_name: str) -> str:
    url = SERVERS.get(server_name, "")
    if not url:
        _unusable("no FHIR server: set FHIR_IMAGES_TEST_SERVERS or FHIR_BASE_URL")
    try:
        r = requests.get(f"{url}/metadata", headers={"Accept": "application/fhir+json"}, timeout=30)
        r.raise_for_status()
    except requests.RequestException as exc:
        _unusable(f"FHIR server {server_name} at {url} is not answering /metadata: {exc}")
    return url


def _named_server(name: str, software: str) -> str:
    """The base URL of the server called ``name``, or of the only server if its software is
    ``software`` (for tests of one server's own behaviour, or of its launcher)."""
    url = SERVERS.get(name)
    if url is None and set(SERVERS) == {"server"}:
        try:
            cs = requests.get(
                f"{SERVERS['server']}/metadata",
                headers={"Accept": "application/fhir+json"},
                timeout=30,
            ).json()
        except (requests.RequestException, ValueError):
            cs = {}
        if software in str((cs.get("software") or {}).get("name", "")).lower():
            url = SERVERS["server"]
    if not url:
        _unusable(f"no {name} server among FHIR_IMAGES_TEST_SERVERS")
    return str(url)


@pytest.fixture(scope="session")
def hapi_base_url() -> str:
    return _named_server("hapi", "hapi")


@pytest.fixture(scope="session")
def hfs_base_url() -> str:
    return _named_server("hfs", "helios")


@pytest.fixture(scope="session")
def server_report(fhir_base_url: str) -> ServerReport:
    """What the probe found this server does (the source of server-specific expectations)."""
    cache = Path(os.environ["FHIR_IMAGES_CACHE_DIR"])
    return FhirClient(fhir_base_url, cache_dir=cache).report()


@pytest.fixture(scope="session")
def fhir_version(server_report: ServerReport) -> FhirVersion:
    """The FHIR version module the server's CapabilityStatement selects (R4 or R5)."""
    return get_version(server_report.fhir_version)


@pytest.fixture(scope="session")
def image_type(fhir_version: FhirVersion) -> str:
    """Media (R4) or DocumentReference (R5)."""
    return fhir_version.image_type


def seed_bundle(version: FhirVersion) -> dict[str, Any]:
    """The example people and encounter as a transaction, in the server's FHIR version (an
    Encounter's class and status changed shape in R5)."""
    bundle: dict[str, Any] = json.loads(SEED.read_text())
    if version.name == "R5":
        for entry in bundle["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] == "Encounter":
                resource["class"] = [{"coding": [resource["class"]]}]
                resource["status"] = "completed"
    return bundle


@pytest.fixture(scope="session")
def audit_setting(
    server_report: ServerReport, tmp_path_factory: pytest.TempPathFactory
) -> str | None:
    """Where audits go: the server itself, or a file where the server refuses AuditEvents."""
    if server_report.audit_event_create:
        return None
    return f"file:{tmp_path_factory.mktemp('audit') / 'audit.jsonl'}"


@pytest.fixture(scope="session")
def connect(fhir_base_url: str, audit_setting: str | None) -> Callable[..., FhirClient]:
    """A client for the server under test, set up as a user would set it up."""

    def make(**kwargs: Any) -> FhirClient:
        kwargs.setdefault("audit", audit_setting)
        return FhirClient(fhir_base_url, **kwargs)

    return make


@pytest.fixture(autouse=True)
def _server_environment(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands run by a test see the same audit trail as the test's clients."""
    if "fhir_base_url" in request.fixturenames:
        audit = request.getfixturevalue("audit_setting")
        if audit:
            monkeypatch.setenv("FHIR_IMAGES_AUDIT", audit)


@pytest.fixture()
def outbox(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "outbox")


@pytest.fixture()
def workdir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "work"
    d.mkdir()
    yield d
