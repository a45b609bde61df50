"""Every hostile input gets a clear, specific error, in bounded time and memory.

Each case runs ``fhir-images ingest`` in a process of its own. Asserted: the exit code, the
error class (or, for inputs rightly accepted, the decision), no traceback, nothing left in the
outbox or its temporary folder after a refusal, no patient data in the message, and generous
bounds on time and peak memory that still catch a runaway (the figures are in the README).
"""

from __future__ import annotations

import pytest

from .corpus import cases
from .run import TIMEOUT, run_case

CASES = cases()
MAX_RSS_MB = 400
NAMES = ("John", "Smith")


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 100
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(case, tmp_path):
    r = run_case(case, tmp_path)
    assert not r.timed_out, f"hung for {TIMEOUT} s"
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.exit_code == case.exit_code, (r.row, r.stderr[-500:])
    row = r.row
    if not row and case.error == "InvalidSetting":  # a setting: refused before any input
        assert "bad input" in r.stderr and "FHIR_IMAGES_MAX_PIXELS" in r.stderr
        return
    expected = case.error if isinstance(case.error, tuple) else (case.error,)
    got = row.get("error_type")
    assert got in expected, row
    if got is None:
        assert row["decision"] == case.decision, row
    else:
        assert row["error"] and row["decision"] == "bad-input", row
        assert r.leftovers == [], "a refused input leaves nothing behind"
        for name in NAMES:
            assert name not in row["error"] and name not in r.stderr
    assert r.peak_rss_mb < MAX_RSS_MB, f"peak RSS {r.peak_rss_mb:.0f} MB"
    assert r.seconds < TIMEOUT
