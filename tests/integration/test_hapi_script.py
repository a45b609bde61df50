"""The HAPI launcher script fails fast and clearly instead of hanging."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "servers" / "hapi" / "hapi.sh"


def run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HAPI_DATA_DIR": str(tmp_path), **env},
    )


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
