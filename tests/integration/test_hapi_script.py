"""The HAPI launcher script fails fast and clearly instead of hanging."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "servers" / "hapi" / "hapi.sh"
# a start may have to build the jar first, and a cold start takes about a minute
START_TIMEOUT = 600


def run(
    args: list[str], tmp_path: Path, timeout: float = 120, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        # the script's own settings come from the test alone, not from the suite's environment
        # (scripts/test.sh exports HAPI_PORT for the server under test)
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("HAPI_")},
            "HAPI_DATA_DIR": str(tmp_path),
            **env,
        },
    )


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_start_on_a_port_in_use_fails_with_a_message(hapi_base_url, tmp_path):
    port = str(urlparse(hapi_base_url).port)
    result = run(["start"], tmp_path, HAPI_PORT=port)
    assert result.returncode != 0
    assert "in use" in result.stderr
    assert not (tmp_path / "hapi.pid").exists(), "nothing was started"


def test_status_of_a_server_that_is_not_running(tmp_path):
    result = run(["status"], tmp_path, HAPI_PORT="18999")
    assert result.returncode != 0
    assert "not running" in (result.stdout + result.stderr)


def test_stop_without_a_server_does_nothing_harmful(tmp_path):
    result = run(["stop"], tmp_path, HAPI_PORT="18999")
    assert "not running" in (result.stdout + result.stderr) or result.returncode == 0


def test_unknown_fhir_version_fails_with_a_message(tmp_path):
    result = run(["start"], tmp_path, HAPI_PORT="18999", HAPI_FHIR_VERSION="R3")
    assert result.returncode != 0
    assert "HAPI_FHIR_VERSION must be R4 or R5, got 'R3'" in result.stderr
    assert not (tmp_path / "hapi.pid").exists(), "nothing was started"


def test_database_without_version_marker_counts_as_r4(tmp_path):
    """Data dirs from before the launcher knew FHIR versions hold R4 databases."""
    (tmp_path / "h2").mkdir()
    (tmp_path / "h2" / "hapi.mv.db").write_bytes(b"")
    result = run(["start"], tmp_path, HAPI_PORT="18999", HAPI_FHIR_VERSION="R5")
    assert result.returncode != 0
    assert "created for FHIR R4, not R5" in result.stderr
    assert not (tmp_path / "hapi.pid").exists(), "nothing was started"


def test_an_unreadable_ig_package_fails_with_a_message(tmp_path):
    missing = tmp_path / "missing.tgz"
    result = run(["start"], tmp_path, HAPI_PORT=free_port(), HAPI_IG_PACKAGE=str(missing))
    assert result.returncode != 0
    assert f"HAPI_IG_PACKAGE: no readable file '{missing}'" in result.stderr
    assert not (tmp_path / "hapi.pid").exists(), "nothing was started"


def test_auto_ig_package_without_fhir_images_fails_with_a_message(tmp_path):
    """HAPI_IG_PACKAGE=auto: the package must be built, so no fhir-images to build it is an
    error (unset, the server would start without it and say so)."""
    path = os.pathsep.join(
        d
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if d and not (Path(d) / "fhir-images").exists()
    )
    result = run(
        ["start"],
        tmp_path,
        HAPI_PORT=free_port(),
        HAPI_IG_PACKAGE="auto",
        PYTHON="/bin/false",
        PATH=path,
    )
    assert result.returncode != 0
    assert "HAPI_IG_PACKAGE=auto, but neither" in result.stderr
    assert not (tmp_path / "hapi.pid").exists(), "nothing was started"


@pytest.fixture(scope="module")
def r5_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """One FHIR R5 server on its own port and data dir, shared by the tests below."""
    data_dir = tmp_path_factory.mktemp("hapi-r5")
    try:
        result = run(
            ["start", "--fresh"],
            data_dir,
            timeout=START_TIMEOUT,
            HAPI_PORT=free_port(),
            HAPI_FHIR_VERSION="R5",
        )
        assert result.returncode == 0, result.stderr[-4000:]
        yield result.stdout.strip(), data_dir
    finally:
        run(["stop"], data_dir)


def test_r5_server_starts_and_reports_fhir_5(r5_server):
    base_url, data_dir = r5_server
    cs = requests.get(
        f"{base_url}/metadata", headers={"Accept": "application/fhir+json"}, timeout=60
    ).json()
    assert cs["fhirVersion"].startswith("5."), cs["fhirVersion"]
    assert run(["url"], data_dir).stdout.strip() == base_url
    status = run(["status"], data_dir)
    assert status.returncode == 0
    assert "running" in status.stdout
    assert "FHIR R5" in status.stdout
    assert (data_dir / "h2" / "fhir-version").read_text().strip() == "R5"


def test_other_fhir_version_on_an_r5_data_dir_is_refused(r5_server):
    """Switching the version of an existing database needs --fresh. (Stops the R5 server.)"""
    _, data_dir = r5_server
    assert run(["stop"], data_dir).returncode == 0
    port = free_port()
    result = run(["start"], data_dir, HAPI_PORT=port, HAPI_FHIR_VERSION="R4")
    assert result.returncode != 0
    assert "created for FHIR R5, not R4" in result.stderr
    assert "--fresh" in result.stderr
    assert not (data_dir / "hapi.pid").exists(), "nothing was started"
    assert (data_dir / "h2" / "fhir-version").read_text().strip() == "R5"
