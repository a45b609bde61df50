"""Where AuditEvents go: the audit trail of disclosures, destructions and anonymised copies.

Most servers take AuditEvents from clients, and then an audit goes in the same transaction as
the act it records (:class:`ServerAudit`, ``atomic``): both happen or neither. Some servers
keep their audit trail to themselves and refuse client AuditEvents (HFS answers 405: its trail
is immutable and written by the server). IHE BALP's answer is an Audit Record Repository: a
separate place that takes them. Two are offered:

* :class:`RepositoryAudit`: another FHIR server (``FHIR_IMAGES_AUDIT=https://arr.example/fhir``);
* :class:`FileAudit`: an append-only JSON-lines file, each line written whole and synced to
  disk before the act goes ahead (``FHIR_IMAGES_AUDIT=file:/var/log/fhir-images/audit.jsonl``).

Neither can share a transaction with the data server, so the order is fixed to fail closed:
the audit is recorded *first*, then the act; if the act then fails, a second AuditEvent says so
(outcome 8). Nothing is ever released or destroyed without an audit recorded before it; an
audit may (rarely) name an act that then failed, and is followed by the record of the failure.

A server that refuses AuditEvents with no trail configured gets no disclosure, destruction or
anonymised copy at all (:class:`~fhir_images.UnsafeServer`).
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .._exceptions import AuditError, UnsafeServer
from .common import created

if TYPE_CHECKING:
    from .client import FhirClient


class AuditTrail(Protocol):
    """Where AuditEvents go: the data server, an audit repository, or a file."""

    @property
    def atomic(self) -> bool:
        """Whether audits go into the data server's own transaction with the act."""
        ...

    def record(self, audits: list[dict[str, Any]]) -> list[str]:
        """Record all the AuditEvents or none; return a reference to each."""
        ...


@dataclass(frozen=True)
class ServerAudit:
    """AuditEvents on the data server itself (in the act's transaction where there is one)."""

    client: FhirClient
    atomic: bool = True

    def record(self, audits: list[dict[str, Any]]) -> list[str]:
        response = self.client.transaction(
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {"resource": a, "request": {"method": "POST", "url": "AuditEvent"}}
                    for a in audits
                ],
            },
            idempotent=False,
        )
        return created(response, "AuditEvent")


@dataclass(frozen=True)
class RepositoryAudit:
    """AuditEvents sent to a separate FHIR server, an Audit Record Repository (one transaction
    per call, so a call records all its audits or none)."""

    client: FhirClient
    atomic: bool = False

    def record(self, audits: list[dict[str, Any]]) -> list[str]:
        refs = ServerAudit(self.client).record(audits)
        if len(refs) != len(audits):
            from .._exceptions import BadResponse

            raise BadResponse("the audit repository did not report every AuditEvent it stored")
        return [f"{self.client.base_url}{ref}" for ref in refs]


@dataclass(frozen=True)
class FileAudit:
    """AuditEvents appended to a local JSON-lines file (private to the user, locked while
    written, synced to disk before the call returns). Each line:
    ``{"fullUrl": "urn:uuid:...", "resource": {AuditEvent}}``."""

    path: Path
    atomic: bool = False

    def record(self, audits: list[dict[str, Any]]) -> list[str]:
        lines, refs = [], []
        for audit in audits:
            ref = f"urn:uuid:{uuid.uuid4()}"
            lines.append(json.dumps({"fullUrl": ref, "resource": audit}, sort_keys=True))
            refs.append(ref)
        data = ("\n".join(lines) + "\n").encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                written = os.write(fd, data)
                if written != len(data):
                    raise OSError("short write")
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise AuditError(
                f"the audit file cannot be written ({type(exc).__name__}): nothing is done"
            ) from None
        return refs

    def entries(self) -> list[dict[str, Any]]:
        """Every recorded line (for checks and tests)."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def audit_trail(client: FhirClient) -> AuditTrail:
    """The trail for ``client``: the one it was configured with (FHIR_IMAGES_AUDIT), else the
    data server itself if it takes AuditEvents; UnsafeServer when there is nowhere to audit."""
    setting = client.audit
    if setting:
        if setting.startswith("file:"):
            return FileAudit(Path(setting[len("file:") :]))
        from .client import FhirClient as _Client

        version = client.version
        repository = _Client(
            setting, token=client.audit_token, profile="generic", fhir_version=version.release
        )
        # AuditEvents are built in the data server's FHIR version: a repository of another
        # version would store them with R4-only or R5-only elements silently dropped
        spoken = str(repository.request("GET", "metadata").json().get("fhirVersion") or "")
        if not spoken.startswith(version.release):
            raise UnsafeServer(
                f"the audit repository speaks FHIR {spoken or 'of unknown version'} and the "
                f"server FHIR {version.name}: give FhirClient(audit=...) a repository of the "
                "same version, or file:/path"
            )
        return RepositoryAudit(repository)
    if client.profile.audit_on_server:
        return ServerAudit(client)
    raise UnsafeServer(
        "this server does not accept AuditEvents from clients, and no audit trail is set: "
        "give FhirClient(audit=...) (on the command line, FHIR_IMAGES_AUDIT) an audit "
        "repository's FHIR base URL or file:/path"
    )
