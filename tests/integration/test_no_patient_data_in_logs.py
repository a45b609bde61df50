"""No patient data in logs, error messages or the outbox's own bookkeeping, at any verbosity.

Every command runs at ``-vv`` in a process of its own, with canary values in every input (the
patient's id, the purpose, the title, the consent discussion, the giver, a device serial in the
image's EXIF, the file's name) and against servers that echo those values back in their
OperationOutcome diagnostics: the real HAPI (which names missing references) and a small
server that echoes every request into its diagnostics. The test fails if a canary appears on
stderr (where logs and errors go), in an outbox file that is not the entry's own data, or in
the delivery error recorded in an entry.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fhir_images import synthetic

pytestmark = pytest.mark.integration

CANARIES = (
    "CanaryPid7731",
    "CanaryPurpose",
    "CanaryTitle",
    "CanaryDiscussion",
    "CanaryGiver",
    "CanarySerial",
    "CanaryFileName",
    "CanaryBodySite",
)


class _Echo(http.server.BaseHTTPRequestHandler):
    """Answers everything with an error whose diagnostics repeat the request."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)[:4000].decode("latin-1") if length else ""
        if self.path.endswith("/metadata"):
            payload = {
                "resourceType": "CapabilityStatement",
                "fhirVersion": "4.0.1",
                "software": {"name": "echo"},
                "rest": [
                    {
                        "mode": "server",
                        "resource": [
                            {"type": t} for t in ("Media", "Consent", "Binary", "Provenance")
                        ],
                        "interaction": [{"code": "transaction"}],
                    }
                ],
            }
            status = 200
        else:
            payload = {
                "resourceType": "OperationOutcome",
                "issue": [
                    {
                        "severity": "error",
                        "code": "processing",
                        "diagnostics": f"{self.command} {self.path} {body}",
                    }
                ],
            }
            status = 400
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def echo() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/fhir"
    server.shutdown()


def _cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fhir_images.cli", "-vv", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def _canaries_in(text: str) -> list[str]:
    return [c for c in CANARIES if c in text]


def _write_inputs(folder: Path) -> Path:
    from PIL import Image

    im = synthetic.picture(320, 240)
    exif = Image.Exif()
    exif[0x010F] = "CanarySerialMake"
    exif.get_ifd(0x8769)[0xA431] = "CanarySerial-123"
    image = folder / "rash-CanaryFileName.jpg"
    im.save(image, "JPEG", exif=exif)
    (folder / "consent.yaml").write_text(
        "given_by: patient\n"
        "giver: Patient/CanaryPid7731\n"
        "date: 2026-11-20T09:55:00Z\n"
        "taken_by: Practitioner/gp1\n"
        "method: verbal\n"
        "confirmed: true\n"
        "explained: {why: true, form: true, secure_storage: true, secondary_uses: true}\n"
        "permissions: {view: true, store: true, second_opinion: true}\n"
        "discussion: CanaryDiscussion of the photo\n"
    )
    case = folder / "case-CanaryFileName.yaml"
    case.write_text(
        f"image: {image.name}\n"
        "context:\n"
        "  patient: Patient/CanaryPid7731\n"
        "  birth_date: 1980-01-15\n"
        "  captured: 2026-11-20T10:00:00Z\n"
        "  made_by: patient\n"
        "  operator: Patient/CanaryPid7731\n"
        "  solicited: true\n"
        "  intimate: false\n"
        "  remote: true\n"
        "  purpose: CanaryPurpose rash on the forearm\n"
        "  title: CanaryTitle\n"
        "  body_site: {display: CanaryBodySite}\n"
        "consent: consent.yaml\n"
    )
    # a held image too: a child's photo sent by a relative without consent
    (folder / "held-CanaryFileName.yaml").write_text(
        case.read_text()
        .replace("1980-01-15", "2022-01-15")
        .replace("made_by: patient", "made_by: relative_or_carer")
        .replace("operator: Patient/CanaryPid7731", "operator: RelatedPerson/CanaryGiver")
        .replace("consent: consent.yaml\n", "")
    )
    return case


def test_every_command_at_full_verbosity_leaks_no_canary(fhir_base_url, echo, tmp_path):
    work = tmp_path / "in"
    work.mkdir()
    case = _write_inputs(work)
    outbox = tmp_path / "outbox"
    runs: list[tuple[str, subprocess.CompletedProcess[str]]] = []

    def run(label: str, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        r = _cli(*args, cwd=work, **kw)  # type: ignore[arg-type]
        runs.append((label, r))
        return r

    ob = ["--outbox", str(outbox)]
    run("ingest", "ingest", *ob, "--json", case.name, "held-CanaryFileName.yaml")
    run(
        "ingest flags",
        "ingest",
        *ob,
        "rash-CanaryFileName.jpg",
        "--patient",
        "Patient/CanaryPid7731",
        "--birth-date",
        "1980-01-15",
        "--made-by",
        "patient",
        "--purpose",
        "CanaryPurpose again",
        "--consent",
        "consent.yaml",
    )
    run(
        "bad context",
        "ingest",
        *ob,
        "rash-CanaryFileName.jpg",
        "--patient",
        "Patient/CanaryPid7731/..",
        "--birth-date",
        "CanaryTitle",
        "--made-by",
        "patient",
    )
    listed = run("outbox list", "outbox", "list", "--json", *ob)
    entries = json.loads(listed.stdout)
    held = next(e["id"] for e in entries if e["state"] == "held")
    run("recheck", "outbox", "recheck", held, "--consent", "consent.yaml", *ob)
    run("push echo", "push", "--server", echo, *ob)
    run("push hapi", "push", "--server", fhir_base_url, *ob)  # Patient/CanaryPid7731 is unknown
    run("show", "show", "--patient", "Patient/CanaryPid7731", "--server", fhir_base_url)
    run("show echo", "show", "--patient", "Patient/CanaryPid7731", "--server", echo)
    run(
        "disclose",
        "disclose",
        "--patient",
        "Patient/CanaryPid7731",
        "--purpose",
        "TREAT",
        "--requester",
        "Practitioner/CanaryGiver",
        "--role",
        "clinician",
        "--out",
        str(tmp_path / "rel"),
        "--server",
        fhir_base_url,
    )
    run(
        "disclose echo",
        "disclose",
        "--patient",
        "Patient/CanaryPid7731",
        "--purpose",
        "TREAT",
        "--requester",
        "Practitioner/gp1",
        "--role",
        "clinician",
        "--out",
        str(tmp_path / "rel2"),
        "--server",
        echo,
    )
    run(
        "withdraw",
        "consent",
        "withdraw",
        "Consent/CanaryPid7731",
        "--by",
        "Practitioner/gp1",
        "--reason",
        "asked",
        "--server",
        fhir_base_url,
    )
    run(
        "withdraw echo",
        "consent",
        "withdraw",
        "Media/CanaryPid7731",
        "--by",
        "Practitioner/gp1",
        "--reason",
        "asked",
        "--server",
        echo,
    )
    run(
        "destroy",
        "destroy",
        "Media/CanaryPid7731",
        "--by",
        "Practitioner/gp1",
        "--reason",
        "x",
        "--server",
        echo,
    )
    run(
        "anonymise",
        "anonymise",
        "Media/CanaryPid7731",
        "--by",
        "Practitioner/gp1",
        "--out",
        str(tmp_path / "anon"),
        "--server",
        echo,
    )
    run("approvals", "approvals", "list", "--patient", "Patient/CanaryPid7731", "--server", echo)
    run(
        "approve",
        "approvals",
        "approve",
        "Task/CanaryPid7731",
        "--by",
        "Practitioner/lead",
        "--server",
        echo,
    )
    run(
        "discard",
        "outbox",
        "discard",
        entries[0]["id"],
        "--by",
        "Practitioner/gp1",
        "--reason",
        "sent by mistake",
        *ob,
    )
    run(
        "hook install",
        "hook",
        "install",
        "--endpoint",
        "http://127.0.0.1:9/x",
        "--server",
        echo,
        "--timeout",
        "1",
        env={"FHIR_IMAGES_HOOK_SECRET": "s" * 24},
    )

    leaks = [f"{label}: {r.stderr[-1500:]}" for label, r in runs if _canaries_in(r.stderr)]
    assert leaks == [], "\n".join(leaks)
    assert all("Traceback" not in r.stderr for _, r in runs)
    assert any("DEBUG" in r.stderr or "INFO" in r.stderr for _, r in runs), "logging was on"

    own_data = {"context.json", "consent.json", "bundle.json"}
    for path in outbox.rglob("*"):
        if not path.is_file() or path.name in own_data or path.name.startswith("content."):
            continue
        text = path.read_text(errors="replace")
        if path.name == "entry.json":
            meta = json.loads(text)
            meta.pop("patient", None)  # the entry's own subject
            text = json.dumps(meta)
        assert _canaries_in(text) == [], f"{path.relative_to(outbox)} holds {_canaries_in(text)}"
