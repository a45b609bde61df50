"""Run one hostile case in a process of its own: exit code, output, wall time and peak RSS.

The peak is the process's own high-water mark (``VmHWM`` in ``/proc/self/status``, written
when it exits), not ``getrusage``'s, which also counts the memory of the parent it was forked
from. ``python -m tests.hostile.run`` runs the whole corpus and prints the README's figures.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .corpus import Case, cases

TIMEOUT = 60.0

_WRAPPER = """\
import atexit, os, runpy, sys
def _peak():
    try:
        for line in open('/proc/self/status'):
            if line.startswith('VmHWM:'):
                with open(os.environ['HOSTILE_PEAK_FILE'], 'w') as f:
                    f.write(line.split()[1])
    except OSError:
        pass
atexit.register(_peak)
sys.argv = ['fhir-images'] + sys.argv[1:]
runpy.run_module('fhir_images.cli', run_name='__main__', alter_sys=True)
"""


@dataclass
class Run:
    exit_code: int
    seconds: float
    peak_rss_mb: float
    row: dict[str, Any]
    stderr: str
    leftovers: list[str]
    timed_out: bool


def _leftovers(outbox: Path) -> list[str]:
    """Data left behind: anything in an entry folder, anything in the temporary folder."""
    found = []
    for path in outbox.rglob("*"):
        rel = path.relative_to(outbox)
        if rel.parts[0] in ("ready", "held", "failed", ".tmp") and len(rel.parts) > 1:
            found.append(str(rel))
    return found


def run_case(case: Case, folder: Path) -> Run:
    done = case.write(folder / "in")
    outbox = folder / "outbox"
    peak_file = folder / "peak"
    env = {**os.environ, **case.env, "PYTHONUNBUFFERED": "1", "HOSTILE_PEAK_FILE": str(peak_file)}
    env.pop("FHIR_BASE_URL", None)
    command = [sys.executable, "-c", _WRAPPER, "ingest", "--json"]
    command += ["--outbox", str(outbox), str(folder / "in" / case.entry)]
    started = time.monotonic()
    proc = subprocess.Popen(
        command,
        cwd=folder / "in",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    timed_out = False
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        timed_out = True
    seconds = time.monotonic() - started
    if done:
        done()
    peak = float(peak_file.read_text()) / 1024 if peak_file.exists() else float("nan")
    text = out.decode("utf-8", "replace").strip()
    try:
        row = json.loads(text.splitlines()[-1]) if text else {}
    except json.JSONDecodeError:
        row = {"unparsed": text[:500]}
    return Run(
        proc.returncode,
        seconds,
        peak,
        row,
        err.decode("utf-8", "replace"),
        _leftovers(outbox),
        timed_out,
    )


def main() -> int:
    results = []
    for case in cases():
        with tempfile.TemporaryDirectory() as d:
            r = run_case(case, Path(d))
        results.append((case.name, r))
        print(f"{case.name:45s} exit {r.exit_code}  {r.seconds:6.2f} s  {r.peak_rss_mb:7.1f} MB")
    seconds = [r.seconds for _, r in results]
    rss = [r.peak_rss_mb for _, r in results]
    slowest = max(results, key=lambda x: x[1].seconds)[0]
    largest = max(results, key=lambda x: x[1].peak_rss_mb)[0]
    print(
        f"\n{len(results)} cases: time median {statistics.median(seconds):.2f} s, "
        f"max {max(seconds):.2f} s ({slowest}); peak RSS median {statistics.median(rss):.0f} MB, "
        f"max {max(rss):.0f} MB ({largest})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
