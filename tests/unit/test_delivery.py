"""Delivery error paths with a mocked server: every failure leaves the entry in the outbox,
with its reason, and no Binary orphaned without a record."""

from __future__ import annotations

import json
import re

import pytest
import requests
import responses
from urllib3.exceptions import MaxRetryError, NewConnectionError

from fhir_images import FhirClient, RetryPolicy, ingest, push, synthetic
from fhir_images import _codes as c
from fhir_images._exceptions import LabelError
from fhir_images._labels import plan_label_change

from ..factories import make_consent, make_context
from .test_transport import capability, outcome

BASE = "http://fhir.test/fhir"
CONF = c.V3_CONFIDENTIALITY


@pytest.fixture()
def client(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    return FhirClient(BASE, retry=RetryPolicy(attempts=3, total_seconds=5))


@pytest.fixture()
def entry(outbox):
    return ingest(synthetic.jpeg(), make_context(), make_consent(), outbox=outbox).entry


def mock_until_transaction(labels):
    """A server that has no such Media yet, takes the Binary and labels it."""
    responses.get(f"{BASE}/metadata", json=capability(software="Generic FHIR"))
    responses.get(f"{BASE}/Media", json={"resourceType": "Bundle", "entry": []})
    responses.post(f"{BASE}/Binary", status=201, headers={"Location": f"{BASE}/Binary/b1"})
    responses.post(f"{BASE}/Binary/b1/$meta-add", json=meta_parameters(labels))


def meta_parameters(labels):
    return {
        "resourceType": "Parameters",
        "parameter": [{"name": "return", "valueMeta": {"security": labels}}],
    }


def labels_of(entry):
    bundle = json.loads(entry.bundle_path.read_text())
    media = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Media")
    return media["resource"]["meta"]["security"]


def connection_refused():
    return requests.exceptions.ConnectionError(
        MaxRetryError(None, "/", NewConnectionError(None, "refused"))
    )


@responses.activate
@pytest.mark.parametrize(
    "reply, error_type, binary_kept",
    [
        (
            {"status": 400, "json": outcome("Media.subject: unknown patient")},
            "InvalidRequest",
            False,
        ),
        ({"status": 401, "json": outcome("no token")}, "AuthenticationFailed", False),
        ({"status": 403, "json": outcome("forbidden")}, "AuthenticationFailed", False),
        ({"status": 404, "json": outcome("not found")}, "ResourceNotFound", False),
        ({"status": 409, "json": outcome("conflict")}, "VersionConflict", False),
        ({"status": 412, "json": outcome("precondition")}, "VersionConflict", False),
        ({"status": 429, "headers": {"Retry-After": "0"}}, "RateLimited", True),
        ({"status": 503}, "ServerUnavailable", True),
        ({"status": 502}, "ServerUnavailable", True),  # conditional transaction: safe to repeat
        ({"status": 200, "body": "<html>not json</html>"}, "BadResponse", False),
        (
            {"body": requests.exceptions.ConnectionError(ConnectionResetError(104, "reset"))},
            "ServerUnavailable",
            True,
        ),
        ({"body": connection_refused()}, "ServerUnavailable", True),
    ],
)
def test_transaction_failures_keep_the_entry_with_its_reason(
    client, outbox, entry, reply, error_type, binary_kept
):
    mock_until_transaction(labels_of(entry))
    responses.post(BASE + "/", **reply)
    responses.delete(f"{BASE}/Binary/b1", status=204)
    [result] = push(client, outbox)
    assert not result.delivered and result.error_type == error_type
    kept = outbox.get(entry.id)
    assert kept.state == "ready", "a failed entry stays in the outbox"
    delivery = kept.meta["delivery"]
    assert delivery["last_error_type"] == error_type and delivery["attempts"] == 1
    deleted = [call for call in responses.calls if call.request.method == "DELETE"]
    if binary_kept:
        assert delivery["binary"] == "Binary/b1" and not deleted
        assert "kept for the next attempt" in " ".join(result.notes)
    else:
        assert delivery["binary_removed"] == "Binary/b1" and delivery["binary"] is None
        assert len(deleted) == 1
    assert outbox.receipts() == []


@responses.activate
def test_server_that_is_not_r4_leaves_everything_in_the_outbox(client, outbox, entry):
    responses.get(f"{BASE}/metadata", json=capability(version="5.0.0"))
    from fhir_images import IncompatibleServer

    with pytest.raises(IncompatibleServer):
        push(client, outbox)
    assert outbox.get(entry.id).state == "ready"
    assert not any(call.request.method == "POST" for call in responses.calls)


@responses.activate
def test_upload_failure_keeps_the_entry(client, outbox, entry):
    responses.get(f"{BASE}/metadata", json=capability())
    responses.get(f"{BASE}/Media", json={"resourceType": "Bundle"})
    responses.post(f"{BASE}/Binary", status=413, json=outcome("too large"))
    [result] = push(client, outbox)
    assert not result.delivered and "413" in result.error
    assert outbox.get(entry.id).meta["delivery"]["last_error"] == result.error


@responses.activate
def test_retry_reuses_the_binary_of_an_earlier_attempt(client, outbox, entry):
    mock_until_transaction(labels_of(entry))
    responses.post(BASE + "/", status=503)
    [first] = push(client, outbox)
    assert not first.delivered
    responses.reset()
    responses.get(f"{BASE}/Media", json={"resourceType": "Bundle"})
    responses.head(f"{BASE}/Binary/b1", status=200)
    responses.post(BASE + "/", status=400, json=outcome("stop here"))
    responses.delete(f"{BASE}/Binary/b1", status=204)
    [second] = push(client, outbox)
    posts = [call.request.url for call in responses.calls if call.request.method == "POST"]
    assert posts == [BASE + "/"], "no second upload"
    sent = json.loads(
        next(call.request.body for call in responses.calls if call.request.method == "POST")
    )
    media = next(e for e in sent["entry"] if e["resource"]["resourceType"] == "Media")
    assert media["resource"]["content"]["url"] == "Binary/b1"
    assert second.binary_reused
    # reused from an earlier attempt, so a rejection of this one does not delete it blindly
    assert not any(call.request.method == "DELETE" for call in responses.calls)


@responses.activate
def test_labels_dropped_by_the_server_are_added_back_and_verified(client, outbox, entry):
    labels = labels_of(entry)
    mock_until_transaction(labels)
    responses.post(
        BASE + "/",
        json={
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [
                {"response": {"location": loc}}
                for loc in (
                    "Encounter/e1/_history/1",
                    "Media/m1/_history/1",
                    "Consent/c1/_history/1",
                    "Provenance/p1/_history/1",
                )
            ],
        },
    )
    without = [s for s in labels if s["code"] != "NORDSCLCDS"]
    media = {
        "resourceType": "Media",
        "id": "m1",
        "meta": {"security": without},
        "content": {"url": "Binary/b1", "hash": entry.meta["facts"]["sha1_b64"]},
    }
    responses.get(f"{BASE}/Media/m1", json=media)
    responses.post(f"{BASE}/Media/m1/$meta-add", json=meta_parameters(labels))
    responses.get(
        f"{BASE}/Consent/c1",
        json={
            "resourceType": "Consent",
            "provision": {"data": [{"reference": {"reference": "Media/m1"}}]},
        },
    )
    responses.get(
        f"{BASE}/Binary/b1", body=entry.content_path.read_bytes(), content_type="image/jpeg"
    )
    [result] = push(client, outbox)
    assert result.delivered, result.error
    added = [
        json.loads(call.request.body)
        for call in responses.calls
        if call.request.url.endswith("Media/m1/$meta-add")
    ]
    assert added[0]["parameter"][0]["valueMeta"]["security"] == [
        {"system": c.V3_ACT_CODE, "code": "NORDSCLCDS"}
    ]
    assert outbox.receipts()[0]["resources"]["Media"] == "Media/m1"


@responses.activate
def test_bytes_that_do_not_match_the_hash_fail_verification(client, outbox, entry):
    labels = labels_of(entry)
    mock_until_transaction(labels)
    responses.post(
        BASE + "/",
        json={
            "resourceType": "Bundle",
            "entry": [
                {"response": {"location": loc}}
                for loc in ("Encounter/e1", "Media/m1", "Consent/c1", "Provenance/p1")
            ],
        },
    )
    media = {
        "resourceType": "Media",
        "id": "m1",
        "meta": {"security": labels},
        "content": {"url": "Binary/b1", "hash": entry.meta["facts"]["sha1_b64"]},
    }
    responses.get(re.compile(f"{BASE}/Media/m1"), json=media)
    responses.get(
        f"{BASE}/Consent/c1",
        json={
            "resourceType": "Consent",
            "provision": {"data": [{"reference": {"reference": "Media/m1"}}]},
        },
    )
    responses.get(f"{BASE}/Binary/b1", body=b"something else", content_type="image/jpeg")
    [result] = push(client, outbox)
    assert not result.delivered and "do not match" in result.error
    assert outbox.get(entry.id).state == "ready"


# ------------------------------------------------------------------------- label deltas

N = {"system": CONF, "code": "N"}
R = {"system": CONF, "code": "R"}
V = {"system": CONF, "code": "V"}
PHY = {"system": c.V3_ACT_CODE, "code": "PHY"}


def test_delta_adds_without_removing():
    delta = plan_label_change([N, PHY], [N, {"system": c.V3_ACT_CODE, "code": "NOPAT"}])
    assert delta.add == {(c.V3_ACT_CODE, "NOPAT")} and not delta.delete


def test_delta_raises_confidentiality_by_replacing_it():
    delta = plan_label_change([N, PHY], [R])
    assert delta.add == {(CONF, "R")} and delta.delete == {(CONF, "N")}


def test_delta_refuses_to_lower_unless_asked():
    with pytest.raises(LabelError, match="lower"):
        plan_label_change([V], [N])
    delta = plan_label_change([V], [N], allow_lower=True)
    assert delta.delete == {(CONF, "V")}


def test_delta_refuses_to_remove_the_last_confidentiality_code():
    with pytest.raises(LabelError, match="last"):
        plan_label_change([N, PHY], [], remove=[N])


def test_delta_refuses_two_confidentiality_codes():
    with pytest.raises(LabelError, match="exactly one"):
        plan_label_change([N], [R, V])


def test_delta_repairs_a_server_that_left_two_codes():
    delta = plan_label_change([N, R], [PHY])
    assert delta.delete == {(CONF, "N")}


@responses.activate
def test_labels_by_update_on_a_server_without_meta_operations(outbox):
    from fhir_images import apply_labels

    client = FhirClient(BASE, profile="azure")
    responses.get(
        f"{BASE}/Media/1",
        json={"resourceType": "Media", "id": "1", "meta": {"versionId": "3", "security": [N]}},
    )
    responses.put(
        f"{BASE}/Media/1",
        json={"resourceType": "Media", "id": "1"},
        match=[responses.matchers.header_matcher({"If-Match": 'W/"3"'})],
    )
    responses.get(
        f"{BASE}/Media/1",
        json={"resourceType": "Media", "id": "1", "meta": {"versionId": "4", "security": [R, PHY]}},
    )
    assert {x["code"] for x in apply_labels(client, "Media/1", [R, PHY])} == {"R", "PHY"}
    sent = json.loads(
        next(call.request.body for call in responses.calls if call.request.method == "PUT")
    )
    assert {x["code"] for x in sent["meta"]["security"]} == {"R", "PHY"}


@responses.activate
def test_server_that_silently_drops_a_label_is_caught():
    from fhir_images import LabelVerificationFailed, apply_labels

    client = FhirClient(BASE, profile="generic")
    responses.get(f"{BASE}/Media/1/$meta", json=meta_parameters([N]))
    responses.post(f"{BASE}/Media/1/$meta-add", json={"resourceType": "Parameters"})
    responses.post(f"{BASE}/Media/1/$meta-delete", json={"resourceType": "Parameters"})
    responses.get(f"{BASE}/Media/1/$meta", json=meta_parameters([N]))
    with pytest.raises(LabelVerificationFailed, match="missing"):
        apply_labels(client, "Media/1", [R])


def test_delta_can_keep_a_higher_code_instead_of_refusing():
    delta = plan_label_change(
        [V, PHY], [N, {"system": c.V3_ACT_CODE, "code": "NOPAT"}], keep_higher=True
    )
    assert delta.add == {(c.V3_ACT_CODE, "NOPAT")} and not delta.delete
