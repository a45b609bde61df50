"""The worked example for EHR integrators runs against the real servers, sync and async, as a
user would run it (its own process, the public API only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ehr_backend.py"
STEPS = ["upload", "push", "second-opinion", "withdraw", "second-opinion-after-withdrawal"]


@pytest.mark.parametrize("mode", [[], ["--asyncio"]], ids=["sync", "asyncio"])
def test_the_ehr_backend_example_runs(
    fhir_base_url: str, audit_setting: str | None, tmp_path: Path, mode: list[str]
) -> None:
    args = [sys.executable, str(EXAMPLE), "--server", fhir_base_url, *mode]
    if audit_setting:
        args += ["--audit", audit_setting]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FHIR_", "FHIR_IMAGES_"))}
    env["FHIR_IMAGES_CACHE_DIR"] = str(tmp_path / "cache")
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["step"] for line in lines] == STEPS
    by_step = {line["step"]: line["result"] for line in lines}
    assert by_step["push"]["delivered"] and by_step["push"]["labels"]
    [released] = by_step["second-opinion"]["decisions"]
    assert released["verdict"] == "release" and by_step["second-opinion"]["audit_events"]
    [withheld] = by_step["second-opinion-after-withdrawal"]["decisions"]
    assert withheld["verdict"] == "withhold"
