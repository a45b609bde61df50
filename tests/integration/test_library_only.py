"""The library without its extras: no click, rich, starlette, uvicorn or PyJWT importable, it
still ingests and delivers; the console script says which extra to install."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration

#: Makes the extras' packages impossible to import in the child process.
BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = {"click", "rich", "starlette", "uvicorn", "jwt", "httpx"}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not installed")
            return None
    sys.meta_path.insert(0, Block())
    """
)

PUSH = textwrap.dedent(
    """
    import sys, tempfile, uuid
    from pathlib import Path
    import fhir_images as fi
    from fhir_images import synthetic
    base = sys.argv[1]
    client = fi.FhirClient(base)
    pid = "lib-" + uuid.uuid4().hex[:10]
    client.transaction({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": t, "id": i}, "request": {"method": "PUT", "url": f"{t}/{i}"}}
        for t, i in (("Patient", pid), ("Practitioner", "gp1"))]})
    ctx = fi.parse_context({
        "patient": f"Patient/{pid}", "birth_date": "1980-01-01", "made_by": "clinician",
        "operator": "Practitioner/gp1", "kind": "photo", "solicited": True, "intimate": False,
        "remote": False, "purpose": "Wound on the left shin; baseline.",
        "captured": "2026-11-20T10:00:00Z"})
    consent = fi.parse_consent({
        "given_by": "patient", "date": "2026-11-20T10:05:00Z", "taken_by": "Practitioner/gp1",
        "method": "verbal", "explained": {"why": True, "form": True, "secure_storage": True,
        "secondary_uses": True}, "permissions": {"view": True, "store": True},
        "discussion": "Why the photo is taken and how it is kept."})
    with tempfile.TemporaryDirectory() as d:
        outbox = fi.Outbox(Path(d) / "ob")
        result = fi.ingest(synthetic.jpeg(seed=91), ctx, consent, outbox=outbox)
        assert result.entry is not None, result.decision
        [delivered] = fi.push(client, outbox)
        assert delivered.delivered, delivered.error
    for name in ("click", "rich", "starlette", "uvicorn", "jwt"):
        assert name not in sys.modules, name
    print("ok")
    """
)


def test_ingest_and_push_need_no_extras(fhir_base_url):
    out = subprocess.run(
        [sys.executable, "-c", BLOCKER + PUSH, fhir_base_url],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_the_console_script_without_its_extra_names_it():
    out = subprocess.run(
        [sys.executable, "-c", BLOCKER + "from fhir_images._entry import main; main()"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "pip install 'fhir-images[cli]'" in out.stderr and "Traceback" not in out.stderr
