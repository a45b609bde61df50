from __future__ import annotations

import json

import pytest
import requests
import responses
from responses import matchers

from fhir_images import (
    AuthenticationFailed,
    BadResponse,
    IncompatibleServer,
    InvalidRequest,
    RateLimited,
    ResourceNotFound,
    ServerError,
    ServerUnavailable,
    Settings,
    VersionConflict,
)
from fhir_images.fhir.client import FhirClient, RetryPolicy

BASE = "http://fhir.test/fhir"


def capability(version="4.0.1", software="HAPI FHIR Server", types=None, transaction=True):
    types = types or ["Media", "Consent", "Binary", "Provenance", "Patient"]
    return {
        "resourceType": "CapabilityStatement",
        "fhirVersion": version,
        "software": {"name": software},
        "rest": [
            {
                "mode": "server",
                "resource": [{"type": t} for t in types],
                "interaction": [{"code": "transaction"}] if transaction else [],
            }
        ],
    }


def outcome(text, code="invalid"):
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }


@pytest.fixture()
def client():
    return FhirClient(
        BASE, retry=RetryPolicy(attempts=3, backoff_base=0.001, backoff_max=0.01, total_seconds=5)
    )


@responses.activate
def test_capability_check_accepts_r4_and_a_forced_profile_skips_the_probe(client):
    responses.get(f"{BASE}/metadata", json=capability())
    client.capabilities()
    assert client.version.name == "R4"
    forced = FhirClient(BASE, profile="hapi")
    assert forced.profile.labels.replace_header == {"X-Meta-Snapshot-Mode": "SECURITY_LABEL"}
    assert [c.request.url for c in responses.calls] == [f"{BASE}/metadata"]


@responses.activate
def test_the_fhir_version_comes_from_the_server_unless_forced():
    types = ["Media", "DocumentReference", "Consent", "Binary", "Provenance"]
    responses.get(f"{BASE}/metadata", json=capability(version="5.0.0", types=types))
    assert FhirClient(BASE, profile="hapi").version.name == "R5"
    forced = FhirClient(BASE, profile="hapi", fhir_version="4.0")
    forced.capabilities()
    assert forced.version.name == "R4", "a forced version is kept after the server is read"


def test_a_forced_fhir_version_must_be_one_fhir_images_speaks():
    from fhir_images import InvalidSetting, Settings

    assert Settings.from_env({"FHIR_IMAGES_FHIR_VERSION": "5.0"}).fhir_version == "5.0"
    with pytest.raises(InvalidSetting, match="FHIR_IMAGES_FHIR_VERSION"):
        Settings.from_env({"FHIR_IMAGES_FHIR_VERSION": "3.0"})


@responses.activate
@pytest.mark.parametrize(
    "cs, message",
    [
        (capability(version="5.0.0"), "DocumentReference"),  # R5 has no Media
        (capability(version="4.3.0"), "FHIR 4.3.0"),
        (capability(version="3.0.2"), "FHIR 3.0.2"),
        (capability(types=["Patient", "Binary", "Provenance"]), "Consent, Media"),
        (capability(transaction=False), "transaction"),
        ({"resourceType": "Patient"}, "CapabilityStatement"),
    ],
)
def test_capability_check_refuses_what_it_cannot_use(client, cs, message):
    responses.get(f"{BASE}/metadata", json=cs)
    with pytest.raises(IncompatibleServer, match=message):
        client.capabilities()


@responses.activate
def test_malformed_json_is_a_bad_response(client):
    responses.get(f"{BASE}/metadata", body="<html>proxy error</html>", status=200)
    with pytest.raises(BadResponse, match="not JSON"):
        client.capabilities()


@responses.activate
def test_400_carries_the_operation_outcome(client):
    responses.post(BASE + "/", json=outcome("Media.status: minimum required = 1"), status=400)
    with pytest.raises(InvalidRequest) as info:
        client.transaction({"resourceType": "Bundle", "type": "transaction", "entry": []})
    err = info.value
    assert err.status == 400 and not err.retry_safe
    assert err.issues == [
        {
            "severity": "error",
            "code": "invalid",
            "diagnostics": "Media.status: minimum required = 1",
        }
    ]
    assert "minimum required" not in str(err), "server diagnostics stay out of messages"
    assert "invalid" in str(err)
    assert len(responses.calls) == 1, "a 400 is never retried"


@responses.activate
@pytest.mark.parametrize(
    "status, exc",
    [
        (401, AuthenticationFailed),
        (403, AuthenticationFailed),
        (404, ResourceNotFound),
        (410, ResourceNotFound),
        (409, VersionConflict),
        (412, VersionConflict),
    ],
)
def test_status_errors_are_typed_and_not_retried(client, status, exc):
    responses.get(f"{BASE}/Media/1", json=outcome("no"), status=status)
    with pytest.raises(exc) as info:
        client.read("Media/1")
    assert info.value.status == status and not info.value.retry_safe
    assert len(responses.calls) == 1


@responses.activate
def test_stale_if_match_is_a_version_conflict(client):
    responses.get(f"{BASE}/metadata", json=capability())
    responses.put(
        f"{BASE}/Media/1",
        json=outcome("version conflict", "conflict"),
        status=412,
        match=[matchers.header_matcher({"If-Match": 'W/"1"'})],
    )
    with pytest.raises(VersionConflict, match="412"):
        client.update({"resourceType": "Media", "id": "1"}, if_match="1")


@responses.activate
def test_429_waits_for_retry_after_then_succeeds(client, monkeypatch):
    slept = []
    monkeypatch.setattr("time.sleep", slept.append)
    responses.get(f"{BASE}/Media/1", status=429, headers={"Retry-After": "2"})
    responses.get(f"{BASE}/Media/1", json={"resourceType": "Media", "id": "1"})
    assert client.read("Media/1")["id"] == "1"
    assert slept == [2.0]


@responses.activate
def test_429_gives_up_after_the_bounded_attempts(client, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    responses.get(f"{BASE}/Media/1", status=429, headers={"Retry-After": "1"})
    with pytest.raises(RateLimited) as info:
        client.read("Media/1")
    assert info.value.retry_safe and info.value.retry_after == 1.0
    assert len(responses.calls) == 3


@responses.activate
def test_503_is_retried_even_for_a_streamed_upload(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    client = FhirClient(BASE, profile="hapi")
    responses.get(f"{BASE}/metadata", json=capability())
    op = f"{BASE}/Binary/7/$binary-access-write"
    responses.post(op, status=503)
    responses.post(op, status=200, json={"resourceType": "Binary", "id": "7"})
    import pathlib
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = pathlib.Path(d) / "img.jpg"
        path.write_bytes(b"\xff\xd8 bytes")
        client.write_binary("Binary/7", path, "image/jpeg")
        bodies = [call.request.body for call in responses.calls]
    # the streamed body was re-opened for the second attempt, not sent empty
    assert [b.read() if hasattr(b, "read") else b for b in bodies][1:] != [b""]
    assert len(responses.calls) == 2


@responses.activate
def test_a_streamed_transaction_is_rebuilt_for_each_attempt(client, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    responses.post(BASE + "/", status=503)
    responses.post(BASE + "/", json={"resourceType": "Bundle", "type": "transaction-response"})
    made = []

    def body():
        made.append(1)
        return iter([b'{"resourceType": "Bundle"', b', "type": "transaction"}'])

    client.transaction_stream(body, idempotent=True)
    assert len(made) == 2 and len(responses.calls) == 2


@responses.activate
def test_502_not_retried_for_a_plain_post(client, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    responses.post(f"{BASE}/Media", status=502)
    with pytest.raises(ServerUnavailable) as info:
        client.create({"resourceType": "Media"})
    assert not info.value.retry_safe
    assert len(responses.calls) == 1


@responses.activate
def test_504_retried_for_a_conditional_transaction(client, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    responses.post(BASE + "/", status=504)
    responses.post(BASE + "/", json={"resourceType": "Bundle", "type": "transaction-response"})
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Media"},
                "request": {"method": "POST", "url": "Media", "ifNoneExist": "identifier=a|b"},
            }
        ],
    }
    assert client.transaction(bundle)["type"] == "transaction-response"
    assert len(responses.calls) == 2


@responses.activate
def test_connection_refused_before_sending_is_retried(client, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    from urllib3.exceptions import MaxRetryError, NewConnectionError

    refused = requests.exceptions.ConnectionError(
        MaxRetryError(None, "/", NewConnectionError(None, "refused"))
    )
    responses.post(f"{BASE}/Media", body=refused)
    responses.post(f"{BASE}/Media", json={"resourceType": "Media", "id": "9"}, status=201)
    assert client.create({"resourceType": "Media"})["id"] == "9"


@responses.activate
def test_connection_reset_after_sending_a_post_is_not_retried(client, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    reset = requests.exceptions.ConnectionError(ConnectionResetError(104, "reset by peer"))
    responses.post(f"{BASE}/Media", body=reset)
    with pytest.raises(ServerUnavailable) as info:
        client.create({"resourceType": "Media"})
    assert not info.value.retry_safe
    assert len(responses.calls) == 1


@responses.activate
def test_connection_reset_on_a_get_is_retried(client, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    reset = requests.exceptions.ConnectionError(ConnectionResetError(104, "reset by peer"))
    responses.get(f"{BASE}/Media/1", body=reset)
    responses.get(f"{BASE}/Media/1", json={"resourceType": "Media", "id": "1"})
    assert client.read("Media/1")["id"] == "1"


@responses.activate
def test_search_follows_next_links(client):
    page2 = f"{BASE}?_getpages=abc&_getpagesoffset=1"
    responses.get(
        f"{BASE}/Media",
        json={
            "resourceType": "Bundle",
            "entry": [
                {"resource": {"id": "1"}, "search": {"mode": "match"}},
                {"resource": {"id": "p"}, "search": {"mode": "include"}},
            ],
            "link": [{"relation": "next", "url": page2}],
        },
    )
    responses.get(page2, json={"resourceType": "Bundle", "entry": [{"resource": {"id": "2"}}]})
    assert [r["id"] for r in client.search("Media", {"subject": "Patient/1"})] == ["1", "2"]


@responses.activate
def test_next_link_outside_the_server_is_refused(client):
    responses.get(
        f"{BASE}/Media",
        json={
            "resourceType": "Bundle",
            "entry": [],
            "link": [{"relation": "next", "url": "http://elsewhere.test/steal"}],
        },
    )
    with pytest.raises(BadResponse, match="outside"):
        list(client.search("Media"))


@responses.activate
def test_auth_headers(monkeypatch):
    c = FhirClient.from_settings(Settings.from_env({"FHIR_TOKEN": "s3cret"}), BASE)
    responses.get(
        f"{BASE}/Media/1",
        json={"id": "1"},
        match=[matchers.header_matcher({"Authorization": "Bearer s3cret"})],
    )
    c.read("Media/1")


@responses.activate
def test_errors_never_echo_queries_or_bodies(client):
    responses.get(f"{BASE}/Media", status=500, body="boom")
    with pytest.raises(ServerError) as info:
        list(client.search("Media", {"subject": "Patient/secret-id"}))
    assert "secret-id" not in str(info.value)


def test_base_url_must_be_http():
    with pytest.raises(ValueError):
        FhirClient("ftp://x")


@responses.activate
def test_meta_operations(client):
    responses.post(
        f"{BASE}/Media/1/$meta-add",
        json={
            "resourceType": "Parameters",
            "parameter": [{"name": "return", "valueMeta": {"security": [{"code": "R"}]}}],
        },
    )
    assert client.meta_add("Media/1", [{"system": "s", "code": "R"}]) == {
        "security": [{"code": "R"}]
    }
    sent = json.loads(responses.calls[0].request.body)
    assert sent["parameter"][0]["valueMeta"]["security"] == [{"system": "s", "code": "R"}]


def _batch_answer(*entries):
    return {"resourceType": "Bundle", "type": "batch-response", "entry": list(entries)}


def _found(rtype, rid):
    return {"resource": {"resourceType": rtype, "id": rid}, "response": {"status": "200 OK"}}


@responses.activate
def test_several_reads_go_in_one_batch_and_each_answer_is_the_resource_asked_for(client):
    media = {"resourceType": "Media", "id": "1"}
    consent = {"resourceType": "Consent", "id": "2"}
    responses.post(
        BASE + "/",
        json=_batch_answer(
            {"resource": media, "response": {"status": "200 OK"}},
            {"resource": consent, "response": {"status": "200 OK"}},
        ),
        match=[
            matchers.json_params_matcher(
                {
                    "resourceType": "Bundle",
                    "type": "batch",
                    "entry": [
                        {"request": {"method": "GET", "url": "Media/1"}},
                        {"request": {"method": "GET", "url": "Consent/2"}},
                    ],
                }
            )
        ],
    )
    assert client.read_many(["Media/1", "Consent/2"]) == {"Media/1": media, "Consent/2": consent}
    assert len(responses.calls) == 1


@responses.activate
def test_a_batch_answering_with_another_resource_is_not_used(client):
    responses.post(
        BASE + "/",
        json=_batch_answer(_found("Media", "9"), _found("Consent", "2")),
    )
    responses.get(f"{BASE}/Media/1", json={"resourceType": "Media", "id": "1"})
    responses.get(f"{BASE}/Consent/2", json={"resourceType": "Consent", "id": "2"})
    got = client.read_many(["Media/1", "Consent/2"])
    assert got["Media/1"]["id"] == "1", "each resource read on its own instead"
    assert [c.request.method for c in responses.calls] == ["POST", "GET", "GET"]


@responses.activate
def test_a_resource_the_batch_did_not_find_is_read_for_its_error(client):
    responses.post(
        BASE + "/",
        json=_batch_answer(_found("Media", "1"), {"response": {"status": "404 Not Found"}}),
    )
    responses.get(f"{BASE}/Consent/2", json=outcome("gone"), status=404)
    with pytest.raises(ResourceNotFound):
        client.read_many(["Media/1", "Consent/2"])


@responses.activate
def test_a_server_that_refuses_batches_is_read_one_by_one_from_then_on(client):
    responses.post(BASE + "/", json=outcome("batch not supported", "not-supported"), status=405)
    for rid in ("1", "2"):
        responses.get(f"{BASE}/Media/{rid}", json={"resourceType": "Media", "id": rid})
    for _ in range(2):
        assert set(client.read_many(["Media/1", "Media/2"])) == {"Media/1", "Media/2"}
    assert [c.request.method for c in responses.calls] == ["POST", "GET", "GET", "GET", "GET"]


@responses.activate
def test_a_binary_is_patched_without_asking_for_its_bytes_back(client):
    responses.patch(
        f"{BASE}/Binary/b1",
        json={"resourceType": "Binary", "id": "b1", "data": "AAAA" * 1000},
    )
    responses.patch(f"{BASE}/Media/m1", json={"resourceType": "Media", "id": "m1"})
    ops = [{"op": "add", "path": "/securityContext", "value": {"reference": "Media/m1"}}]
    assert client.patch("Binary/b1", ops, if_match="1") == {}
    assert responses.calls[0].request.headers["Prefer"] == "return=minimal"
    assert client.patch("Media/m1", ops)["id"] == "m1"
    assert responses.calls[1].request.headers["Prefer"] == "return=representation"


@responses.activate
@pytest.mark.parametrize(
    "answer",
    [[], {"resourceType": "Bundle", "entry": ["x", {"response": "200 OK", "resource": 1}]}],
)
def test_a_malformed_batch_answer_leads_to_reads_one_by_one(client, answer):
    responses.post(BASE + "/", json=answer)
    for rid in ("1", "2"):
        responses.get(f"{BASE}/Media/{rid}", json={"resourceType": "Media", "id": rid})
    assert set(client.read_many(["Media/1", "Media/2"])) == {"Media/1", "Media/2"}
    assert [c.request.method for c in responses.calls] == ["POST", "GET", "GET"]
