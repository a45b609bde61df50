"""``check-server`` on the real servers, and the refusal of a server that drops ``_security``.

The expected behaviour of the two bundled servers is written out here once, as found by hand
(see the README's compatibility table); the probe must find the same. A server that silently
ignores ``_security`` is made from a real one by a proxy that removes the parameter before
forwarding, the way such servers behave.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import pytest
from click.testing import CliRunner

from fhir_images import FhirClient, Outbox, UnsafeServer, ingest, push, synthetic
from fhir_images.cli import main
from fhir_images.fhir.probe import PROBE_TAG, ServerReport, probe

from ..factories import make_consent, make_context
from ..faultproxy import FaultProxy, Faults

pytestmark = pytest.mark.integration

#: What each bundled server does (HAPI JPA 8.8 as R4 and as R5, and HFS 0.2.7, as the project
#: starts them): the facts on which servers differ.
KNOWN: dict[str, dict[str, object]] = {
    "hapi": {
        "binary_raw_upload": True,
        "binary_operations": True,
        "meta_operations": True,
        "put_labels": "merge",
        "put_replace_header": True,
        "stale_if_match_status": 409,
        "subscriptions": ["rest-hook"],
        "validate_operation": True,
        "snapshot_operation": True,
        "total_by_default": True,
        "security_search": True,
        "audit_event_create": True,
        "strategy": {"labels": "MetaOperations", "subscriptions": "rest-hook"},
        # HAPI JPA keeps only the system and code of a label (its tag tables)
        "label_extensions_kept": False,
    },
    # the same HAPI as R5: the same answers, and R5's own topic-based subscriptions
    "hapi-r5": {
        "fhir_version": "5.0.0",
        "binary_raw_upload": True,
        "binary_operations": True,
        "meta_operations": True,
        "put_labels": "merge",
        "put_replace_header": True,
        "stale_if_match_status": 409,
        "subscriptions": ["topic-based"],
        "validate_operation": True,
        "snapshot_operation": True,
        "total_by_default": True,
        "security_search": True,
        "audit_event_create": True,
        "strategy": {"labels": "MetaOperations", "subscriptions": "topic-based"},
        "label_extensions_kept": False,
    },
    "hfs": {
        "label_extensions_kept": True,
        "binary_raw_upload": False,
        "binary_raw_read": False,
        "binary_json_read": True,
        "binary_operations": False,
        "meta_operations": False,
        "put_labels": "replace",
        "json_patch_labels": True,
        "stale_if_match_status": 412,
        "subscriptions": ["topic-based"],
        "validate_operation": True,
        "snapshot_operation": False,
        "total_by_default": False,
        "security_search": True,
        "audit_event_create": False,
        "urn_in_attachment_url": False,
        "delete_missing_in_transaction": False,
        "strategy": {"labels": "JsonPatchLabels", "subscriptions": "topic-based"},
    },
}


def test_check_server_reports_what_the_server_does(fhir_base_url, server_name):
    result = CliRunner().invoke(main, ["check-server", "--json", "--server", fhir_base_url])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["risks"] == []
    assert report["transaction"] and report["conditional_create"] and report["urn_in_reference"]
    assert report["labels_kept_on_create"]
    expected = KNOWN.get(server_name, {})
    for key, value in expected.items():
        if key == "strategy":
            assert value.items() <= report["strategy"].items(), report["strategy"]
        else:
            assert report[key] == value, key


def test_the_probe_leaves_nothing_behind(connect: Callable[..., FhirClient]) -> None:
    client = connect()
    code = f"probe-{uuid.uuid4().hex[:16]}"
    probe(client, code=code)
    for rtype in ("Basic", "DocumentReference", "Binary"):
        for tag in (code, f"{code}-binary"):
            left = list(client.search(rtype, {"_tag": f"{PROBE_TAG}|{tag}"}))
            assert left == [], f"{rtype} tagged {tag} left behind"
    subs = [
        s
        for s in client.search("Subscription", {"status": "requested,active,error"})
        if code in json.dumps(s)
    ]
    assert subs == []


def test_a_server_that_drops_security_search_gets_no_images(fhir_base_url, tmp_path, monkeypatch):
    pid = f"probe-{uuid.uuid4().hex[:10]}"
    FhirClient(fhir_base_url).transaction(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": {"resourceType": rtype, "id": rid},
                    "request": {"method": "PUT", "url": f"{rtype}/{rid}"},
                }
                for rtype, rid in (("Patient", pid), ("Practitioner", "gp1"))
            ],
        }
    )
    outbox = Outbox(tmp_path / "ob")
    ctx = make_context(patient=f"Patient/{pid}", operator=f"Patient/{pid}")
    ingest(synthetic.jpeg(seed=71), ctx, make_consent(), outbox=outbox)
    faults = Faults(
        drop_before=0,
        drop_after=0,
        unavailable=0,
        rate_limited=0,
        delay=0,
        drop_params=("_security", "_security:not"),
    )
    with FaultProxy(fhir_base_url, faults) as proxy:
        client = FhirClient(proxy.base_url)
        report: ServerReport = client.report(fresh=True)
        assert report.security_search is False
        assert "no-security-search" in [n for n, _ in report.risks()]
        with pytest.raises(UnsafeServer, match="_security"):
            client.require_safe()
        [result] = push(client, outbox)
        assert not result.delivered and result.error_type == "UnsafeServer"
        assert outbox.get(result.entry_id).state == "ready", "kept, not failed for good"
        assert outbox.get(result.entry_id).meta.delivery.permanent_failures == 0
        cli = CliRunner().invoke(
            main, ["push", "--server", proxy.base_url, "--outbox", str(outbox.root)]
        )
        assert cli.exit_code == 4, cli.output
        check = CliRunner().invoke(main, ["check-server", "--server", proxy.base_url])
        assert check.exit_code == 4 and "no-security-search" in check.output
        # accepted knowingly, by name: then it is written
        monkeypatch.setenv("FHIR_IMAGES_ACCEPT_RISK", "no-security-search")
        cli = CliRunner().invoke(
            main, ["push", "--json", "--server", proxy.base_url, "--outbox", str(outbox.root)]
        )
        assert cli.exit_code == 0, cli.output
