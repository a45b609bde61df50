"""Where audits go when the server will not take them."""

from __future__ import annotations

import json

import pytest
import responses

from fhir_images import AuditError, FhirClient, UnsafeServer
from fhir_images.fhir.audit import FileAudit, RepositoryAudit, ServerAudit, audit_trail

BASE = "http://fhir.test/fhir"
EVENT = {"resourceType": "AuditEvent", "outcome": "0"}


def test_the_trail_is_the_server_the_setting_or_a_refusal(tmp_path):
    assert isinstance(audit_trail(FhirClient(BASE, profile="hapi")), ServerAudit)
    with pytest.raises(UnsafeServer, match="FHIR_IMAGES_AUDIT"):
        audit_trail(FhirClient(BASE, profile="hfs"))
    file = audit_trail(FhirClient(BASE, profile="hfs", audit=f"file:{tmp_path}/a.jsonl"))
    assert isinstance(file, FileAudit) and not file.atomic


@responses.activate
def test_an_audit_repository_must_speak_the_servers_fhir_version():
    responses.get(f"{BASE}/metadata", json=_capability("4.0.1"))
    responses.get("https://arr.test/fhir/metadata", json=_capability("4.0.1"))
    responses.get("https://arr5.test/fhir/metadata", json=_capability("5.0.0"))
    arr = audit_trail(
        FhirClient(BASE, profile="hfs", audit="https://arr.test/fhir", audit_token="t" * 20)
    )
    assert isinstance(arr, RepositoryAudit) and arr.client.base_url == "https://arr.test/fhir/"
    with pytest.raises(UnsafeServer, match=r"speaks FHIR 5\.0\.0"):
        audit_trail(FhirClient(BASE, profile="hfs", audit="https://arr5.test/fhir"))


def _capability(version: str) -> dict:
    types = ["Media", "DocumentReference", "Consent", "Binary", "Provenance", "AuditEvent"]
    return {
        "resourceType": "CapabilityStatement",
        "fhirVersion": version,
        "rest": [
            {
                "mode": "server",
                "resource": [{"type": t} for t in types],
                "interaction": [{"code": "transaction"}],
            }
        ],
    }


def test_the_audit_file_is_appended_whole_and_private(tmp_path):
    trail = FileAudit(tmp_path / "new" / "audit.jsonl")
    refs = trail.record([EVENT, EVENT])
    refs += trail.record([EVENT])
    assert len(set(refs)) == 3 and all(r.startswith("urn:uuid:") for r in refs)
    lines = (tmp_path / "new" / "audit.jsonl").read_text().splitlines()
    assert [json.loads(x)["fullUrl"] for x in lines] == refs
    assert oct((tmp_path / "new" / "audit.jsonl").stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "new").stat().st_mode & 0o777) == "0o700"


def test_an_audit_path_that_is_a_directory_stops_the_act(tmp_path):
    (tmp_path / "audit.jsonl").mkdir()
    with pytest.raises(AuditError, match="nothing is done"):
        FileAudit(tmp_path / "audit.jsonl").record([EVENT])
