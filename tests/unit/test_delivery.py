"""Delivery error paths with a mocked server: every failure leaves the entry in the outbox,
with its reason, and no Binary orphaned without a record."""

from __future__ import annotations

import base64
import json

import pytest
import requests
import responses
from urllib3.exceptions import MaxRetryError, NewConnectionError

from fhir_images import FhirClient, RetryPolicy, ingest, push, synthetic
from fhir_images import _codes as c
from fhir_images._exceptions import LabelError
from fhir_images.fhir import ds4p
from fhir_images.fhir.labels import plan_label_change
from fhir_images.fhir.servers import BinaryRead, ServerProfile

from ..factories import make_consent, make_context
from .test_transport import capability, outcome

BASE = "http://fhir.test/fhir"
CONF = c.V3_CONFIDENTIALITY


@pytest.fixture()
def client(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    # the profile a probe of a plain server gives (probing itself is tested elsewhere)
    return FhirClient(BASE, retry=RetryPolicy(attempts=3, total_seconds=5), profile="generic")


@pytest.fixture()
def entry(outbox):
    return ingest(synthetic.jpeg(), make_context(), make_consent(), outbox=outbox).entry


def labels_of(entry):
    bundle = json.loads(entry.bundle_path.read_text())
    media = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Media")
    return media["resource"]["meta"]["security"]


def meta_parameters(labels):
    return {
        "resourceType": "Parameters",
        "parameter": [{"name": "return", "valueMeta": {"security": labels}}],
    }


def connection_refused():
    return requests.exceptions.ConnectionError(
        MaxRetryError(None, "/", NewConnectionError(None, "refused"))
    )


def mock_before_transaction(software="Generic FHIR"):
    """A server that has no such Media yet."""
    responses.get(f"{BASE}/metadata", json=capability(software=software))
    responses.get(f"{BASE}/Media", json={"resourceType": "Bundle", "entry": []})


def answer(*locations, status="201 Created"):
    return {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [{"response": {"status": status, "location": loc}} for loc in locations],
    }


LOCATIONS = (
    "Encounter/e1/_history/1",
    "Binary/b1/_history/1",
    "Media/m1/_history/1",
    "Consent/c1/_history/1",
    "Provenance/p1/_history/1",
)


def mock_read_back(
    entry,
    *,
    media_labels=None,
    binary_labels=None,
    bytes_=None,
    context="Media/m1",
    inline=True,
):
    """The server's answers to push's read-back; ``inline``: a read of the Binary as FHIR
    JSON carries its bytes (else, as HAPI does above its inflation limit, it leaves them out
    and they come from a raw read)."""
    labels = labels_of(entry)
    media = {
        "resourceType": "Media",
        "id": "m1",
        "subject": {"reference": entry.meta.patient},
        "meta": {"security": labels if media_labels is None else media_labels},
        "content": {"url": "Binary/b1", "hash": entry.meta.facts["sha1_b64"]},
    }
    responses.get(f"{BASE}/Media/m1", json=media)
    binary = {
        "resourceType": "Binary",
        "id": "b1",
        "meta": {"versionId": "1", "security": labels if binary_labels is None else binary_labels},
        "securityContext": {"reference": context},
    }
    responses.get(
        f"{BASE}/Binary/b1",
        json=binary,
        match=[responses.matchers.query_param_matcher({"_elements": "securityContext"})],
    )
    responses.get(
        f"{BASE}/Consent/c1",
        json={
            "resourceType": "Consent",
            "id": "c1",
            "status": "active",
            "dateTime": "2026-11-20T10:00:00Z",
            "provision": {"data": [{"reference": {"reference": "Media/m1"}}]},
        },
    )
    responses.get(
        f"{BASE}/Consent",
        json={"resourceType": "Bundle", "entry": []},
    )
    content = entry.content_path.read_bytes() if bytes_ is None else bytes_
    responses.get(  # a read as FHIR JSON: everything, the bytes as base64
        f"{BASE}/Binary/b1",
        json={**binary, "data": base64.b64encode(content).decode()} if inline else binary,
        match=[responses.matchers.header_matcher({"Accept": "application/fhir+json"})],
    )
    responses.get(f"{BASE}/Binary/b1", body=content, content_type="image/jpeg")


@responses.activate
@pytest.mark.parametrize(
    "reply, error_type, counts",
    [
        (
            {"status": 400, "json": outcome("Media.subject: Patient/ghost-4711")},
            "InvalidRequest",
            1,
        ),
        ({"status": 401, "json": outcome("no token")}, "AuthenticationFailed", 0),
        ({"status": 403, "json": outcome("forbidden")}, "AuthenticationFailed", 0),
        ({"status": 404, "json": outcome("not found")}, "ResourceNotFound", 1),
        # a conflict with a concurrent write of the same records: safe to repeat
        ({"status": 409, "json": outcome("conflict")}, "VersionConflict", 0),
        ({"status": 412, "json": outcome("precondition")}, "VersionConflict", 1),
        ({"status": 429, "headers": {"Retry-After": "0"}}, "RateLimited", 0),
        ({"status": 503}, "ServerUnavailable", 0),
        ({"status": 502}, "ServerUnavailable", 0),  # conditional transaction: safe to repeat
        ({"status": 200, "body": "<html>not json</html>"}, "BadResponse", 1),
        (
            {"body": requests.exceptions.ConnectionError(ConnectionResetError(104, "reset"))},
            "ServerUnavailable",
            0,
        ),
        ({"body": connection_refused()}, "ServerUnavailable", 0),
    ],
)
def test_transaction_failures_keep_the_entry_with_its_reason(
    client, outbox, entry, reply, error_type, counts
):
    mock_before_transaction()
    responses.post(BASE + "/", **reply)
    [result] = push(client, outbox)
    assert not result.delivered and result.error_type == error_type
    kept = outbox.get(entry.id)
    assert kept.state == "ready", "a failed entry stays in the outbox"
    delivery = kept.meta.delivery
    assert delivery.attempts == 1 and delivery.permanent_failures == counts
    assert delivery.last_error.type == error_type and delivery.last_error.attempt == 1
    assert delivery.last_error.status == result.status
    assert "ghost-4711" not in (entry.path / "entry.json").read_text(), "no server diagnostics"
    posts = [call for call in responses.calls if call.request.method == "POST"]
    assert [call.request.url for call in posts] == [BASE + "/"] * len(posts), "only the transaction"
    assert not any(call.request.method == "DELETE" for call in responses.calls)
    assert outbox.receipts() == []


@responses.activate
def test_the_transaction_carries_the_bytes_with_their_labels(client, outbox, entry):
    """Without a binary write operation, the bytes go base64 inside the one transaction,
    in the Binary that carries the Media's labels and names it as its securityContext."""
    mock_before_transaction()
    bodies = []

    def transaction(request):
        body = request.body
        bodies.append(body if isinstance(body, bytes) else b"".join(body))
        return (200, {}, json.dumps(answer(*LOCATIONS)))

    responses.add_callback(responses.POST, BASE + "/", callback=transaction)
    mock_read_back(entry)
    stored = entry.content_path.read_bytes()
    [result] = push(client, outbox)
    assert result.delivered, result.error
    sent = json.loads(bodies[0])
    binary = next(e for e in sent["entry"] if e["resource"]["resourceType"] == "Binary")
    media = next(e for e in sent["entry"] if e["resource"]["resourceType"] == "Media")
    assert base64.b64decode(binary["resource"]["data"]) == stored
    assert binary["resource"]["meta"]["security"] == media["resource"]["meta"]["security"]
    assert binary["resource"]["securityContext"]["reference"] == media["fullUrl"]
    receipt = outbox.receipts()[0]
    assert receipt["resources"]["Binary"] == "Binary/b1"
    assert "binary securityContext" in receipt["verified"]


@responses.activate
def test_bytes_written_into_the_labelled_binary_where_the_server_can(outbox, entry, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    hapi = FhirClient(BASE, retry=RetryPolicy(attempts=3, total_seconds=5), profile="hapi")
    mock_before_transaction(software="HAPI FHIR Server")
    responses.post(BASE + "/", json=answer(*LOCATIONS))
    responses.post(f"{BASE}/Binary/b1/$binary-access-write", json={"resourceType": "Binary"})
    mock_read_back(entry)
    responses.get(
        f"{BASE}/Binary/b1/$binary-access-read",
        body=entry.content_path.read_bytes(),
        content_type="image/jpeg",
    )
    [result] = push(hapi, outbox)
    assert result.delivered, result.error
    calls = [(c_.request.method, c_.request.url.split("?")[0]) for c_ in responses.calls]
    tx = calls.index(("POST", BASE + "/"))
    write = calls.index(("POST", f"{BASE}/Binary/b1/$binary-access-write"))
    assert tx < write, "the labelled Binary exists before its bytes arrive"
    sent = json.loads(responses.calls[tx].request.body)
    binary = next(e for e in sent["entry"] if e["resource"]["resourceType"] == "Binary")
    assert "data" not in binary["resource"] and binary["resource"]["meta"]["security"]


def _written(entry, *, sha256=None):
    """HAPI's answer to $binary-access-write with return=representation: the Binary after the
    write, its bytes stored outside it, with the SHA-256 of what was stored."""
    return {
        "resourceType": "Binary",
        "id": "b1",
        "meta": {"versionId": "2", "security": labels_of(entry)},
        "contentType": "image/jpeg",
        "securityContext": {"reference": "Media/m1"},
        "_data": {
            "extension": [
                {
                    "url": "http://hapifhir.io/fhir/StructureDefinition/externalized-binary-hash-sha256",
                    "valueString": sha256 or entry.meta.sha256,
                }
            ]
        },
    }


@responses.activate
@pytest.mark.parametrize("same", [True, False], ids=["same-bytes", "other-bytes"])
def test_the_answer_to_the_byte_write_checks_labels_and_bytes(outbox, entry, monkeypatch, same):
    """Where the server answers the write of the bytes with the Binary and the SHA-256 of what
    it stored (HAPI), that answer is the read-back of the Binary: no other read of it, and
    bytes other than the image's are refused."""
    monkeypatch.setattr("time.sleep", lambda s: None)
    hapi = FhirClient(BASE, retry=RetryPolicy(attempts=3, total_seconds=5), profile="hapi")
    mock_before_transaction(software="HAPI FHIR Server")
    responses.post(BASE + "/", json=answer(*LOCATIONS))
    responses.post(
        f"{BASE}/Binary/b1/$binary-access-write",
        json=_written(entry, sha256=None if same else "0" * 64),
        content_type="application/fhir+json",
    )
    mock_read_back(entry)
    [result] = push(hapi, outbox)
    if not same:
        assert not result.delivered and "do not match" in result.error
        assert outbox.get(entry.id).state == "ready"
        return
    assert result.delivered, result.error
    assert not [
        c_
        for c_ in responses.calls
        if c_.request.method == "GET" and "/Binary/b1" in c_.request.url
    ], "the Binary is not read again"
    [receipt] = outbox.receipts()
    assert any("SHA-256 the server stated" in v for v in receipt["verified"])


@responses.activate
def test_bytes_refused_for_good_remove_what_the_transaction_created(outbox, entry, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    hapi = FhirClient(BASE, retry=RetryPolicy(attempts=3, total_seconds=5), profile="hapi")
    mock_before_transaction(software="HAPI FHIR Server")
    responses.post(BASE + "/", json=answer(*LOCATIONS))
    responses.post(f"{BASE}/Binary/b1/$binary-access-write", status=413, json=outcome("too large"))
    responses.post(BASE + "/", json=answer())  # the undo
    [result] = push(hapi, outbox)
    assert not result.delivered and result.status == 413
    undo = json.loads(
        [c_ for c_ in responses.calls if c_.request.url == BASE + "/"][1].request.body
    )
    assert {e["request"]["url"] for e in undo["entry"]} == {
        loc.split("/_history")[0] for loc in LOCATIONS
    }
    assert all(e["request"]["method"] == "DELETE" for e in undo["entry"])
    assert "removed again" in " ".join(result.notes)


@responses.activate
def test_permanent_failures_move_the_entry_to_failed_after_three_attempts(client, outbox, entry):
    from fhir_images._delivery import retry_failed

    mock_before_transaction()
    responses.post(BASE + "/", status=400, json=outcome("Patient/ghost-4711 not found"))
    for attempt in (1, 2):
        [result] = push(client, outbox)
        assert result.state == "ready" and outbox.get(entry.id).meta.delivery.attempts == attempt
    [result] = push(client, outbox)
    assert result.state == "failed"
    failed = outbox.get(entry.id)
    assert failed.state == "failed" and failed.meta.delivery.failed_at is not None
    assert push(client, outbox) == [], "a failed entry is not sent again by push"
    assert retry_failed(outbox, entry.id).state == "ready"
    assert outbox.get(entry.id).meta.delivery.permanent_failures == 0


@responses.activate
def test_a_server_that_is_down_never_fails_an_entry_for_good(client, outbox, entry):
    responses.get(f"{BASE}/metadata", body=connection_refused())
    for _ in range(5):
        [result] = push(client, outbox)
        assert result.error_type == "ServerUnavailable" and result.retry_safe
    kept = outbox.get(entry.id)
    assert kept.state == "ready" and kept.meta.delivery.attempts == 5
    assert kept.meta.delivery.last_error.type == "ServerUnavailable"


@responses.activate
def test_server_that_is_not_r4_leaves_everything_in_the_outbox(client, outbox, entry):
    responses.get(f"{BASE}/metadata", json=capability(version="5.0.0"))
    [result] = push(client, outbox)
    assert result.error_type == "IncompatibleServer"
    assert outbox.get(entry.id).state == "ready"
    assert outbox.get(entry.id).meta.delivery.last_error.type == "IncompatibleServer"
    assert not any(call.request.method == "POST" for call in responses.calls)


@responses.activate
def test_an_image_already_on_the_server_reuses_its_binary_and_sends_no_new_one(
    client, outbox, entry
):
    responses.get(f"{BASE}/metadata", json=capability(software="Generic FHIR"))
    existing = {
        "resourceType": "Media",
        "id": "m1",
        "subject": {"reference": entry.meta.patient},
        "content": {"url": "Binary/b1"},
    }
    responses.get(
        f"{BASE}/Media", json={"resourceType": "Bundle", "entry": [{"resource": existing}]}
    )
    responses.get(
        f"{BASE}/Binary/b1",
        json={"resourceType": "Binary", "id": "b1", "meta": {"versionId": "1"}},
        match=[responses.matchers.query_param_matcher({"_elements": "securityContext"})],
    )
    responses.patch(f"{BASE}/Binary/b1", json={"resourceType": "Binary", "id": "b1"})
    responses.get(f"{BASE}/Consent", json={"resourceType": "Bundle", "entry": []})
    responses.post(BASE + "/", status=400, json=outcome("stop here"))
    [result] = push(client, outbox)
    patch = next(c_ for c_ in responses.calls if c_.request.method == "PATCH")
    assert json.loads(patch.request.body)[0]["value"] == {"reference": "Media/m1"}
    tx = next(c_ for c_ in responses.calls if c_.request.url == BASE + "/")
    sent = json.loads(tx.request.body)
    kinds = [e["resource"]["resourceType"] for e in sent["entry"]]
    assert "Binary" not in kinds, "no second Binary for an image the server has"
    media = next(e for e in sent["entry"] if e["resource"]["resourceType"] == "Media")
    assert media["resource"]["content"]["url"] == "Binary/b1"
    assert result.binary_reused


@responses.activate
def test_an_existing_image_whose_bytes_belong_to_another_resource_is_refused(client, outbox, entry):
    responses.get(f"{BASE}/metadata", json=capability(software="Generic FHIR"))
    existing = {"resourceType": "Media", "id": "m1", "content": {"url": "Binary/b1"}}
    responses.get(
        f"{BASE}/Media", json={"resourceType": "Bundle", "entry": [{"resource": existing}]}
    )
    responses.get(
        f"{BASE}/Binary/b1",
        json={"resourceType": "Binary", "id": "b1", "securityContext": {"reference": "Media/x"}},
    )
    [result] = push(client, outbox)
    assert not result.delivered and "another resource" in result.error
    assert not any(c_.request.method in ("POST", "PATCH") for c_ in responses.calls)


@responses.activate
def test_labels_dropped_by_the_server_are_added_back_on_media_and_binary(client, outbox, entry):
    labels = labels_of(entry)
    mock_before_transaction()
    responses.post(BASE + "/", json=answer(*LOCATIONS))
    without = [s for s in labels if s["code"] != "NORDSCLCDS"]
    mock_read_back(entry, media_labels=without, binary_labels=without)
    responses.post(f"{BASE}/Media/m1/$meta-add", json=meta_parameters(labels))
    responses.post(f"{BASE}/Binary/b1/$meta-add", json=meta_parameters(labels))
    [result] = push(client, outbox)
    assert result.delivered, result.error
    for ref in ("Media/m1", "Binary/b1"):
        added = [
            json.loads(call.request.body)
            for call in responses.calls
            if call.request.url.endswith(f"{ref}/$meta-add")
        ]
        [label] = added[0]["parameter"][0]["valueMeta"]["security"]
        assert (label["system"], label["code"]) == (c.V3_ACT_CODE, "NORDSCLCDS"), ref
        # a label added back says who assigned it and why (DS4P)
        assert {e["url"] for e in label["extension"]} == {ds4p.EXT_CLASSIFIER, ds4p.EXT_BASIS}
    assert {(x["system"], x["code"]) for x in result.labels} == {
        (x["system"], x["code"]) for x in labels
    }


@responses.activate
def test_a_binary_that_names_another_media_fails_verification(client, outbox, entry):
    mock_before_transaction()
    responses.post(BASE + "/", json=answer(*LOCATIONS))
    mock_read_back(entry, context="Media/other")
    [result] = push(client, outbox)
    assert not result.delivered and "securityContext" in result.error
    assert outbox.get(entry.id).state == "ready"


#: a server that answers a Binary read only as FHIR JSON (the bytes in base64), as HFS does
JSON_ONLY = ServerProfile("json-only", binary_read=BinaryRead(json_only=True))

READ_BACKS = {
    # server profile, whether its JSON read carries the bytes, the Binary reads expected
    "json-only": (JSON_ONLY, True, {"json": 1, "meta": 0, "raw": 0}),
    "json-only-bytes-left-out": (JSON_ONLY, False, {"json": 1, "meta": 0, "raw": 1}),
    "raw-read": ("generic", True, {"json": 0, "meta": 1, "raw": 1}),
}


def binary_reads():
    kinds = {"json": 0, "meta": 0, "raw": 0}
    for call in responses.calls:
        request = call.request
        if request.method != "GET" or "/Binary/b1" not in request.url:
            continue
        if "_elements" in request.url:
            kinds["meta"] += 1
        elif request.headers.get("Accept") == "application/fhir+json":
            kinds["json"] += 1
        else:
            kinds["raw"] += 1
    return kinds


@responses.activate
@pytest.mark.parametrize("server", sorted(READ_BACKS))
def test_bytes_that_do_not_match_the_hash_fail_verification(monkeypatch, outbox, entry, server):
    profile, inline, _ = READ_BACKS[server]
    monkeypatch.setattr("time.sleep", lambda s: None)
    client = FhirClient(BASE, retry=RetryPolicy(attempts=3, total_seconds=5), profile=profile)
    mock_before_transaction()
    responses.post(BASE + "/", json=answer(*LOCATIONS))
    mock_read_back(entry, bytes_=b"something else", inline=inline)
    [result] = push(client, outbox, verify="full")
    assert not result.delivered and "do not match" in result.error
    assert outbox.get(entry.id).state == "ready"


@responses.activate
@pytest.mark.parametrize("server", sorted(READ_BACKS))
def test_full_verification_reads_every_byte_once(monkeypatch, outbox, entry, server):
    """Where the server answers only JSON, one read checks labels, securityContext and bytes
    (the bytes read raw when it leaves them out); elsewhere a read of the labels and a raw read
    of the bytes, cheaper than the bytes as base64."""
    profile, inline, expected = READ_BACKS[server]
    monkeypatch.setattr("time.sleep", lambda s: None)
    client = FhirClient(BASE, retry=RetryPolicy(attempts=3, total_seconds=5), profile=profile)
    mock_before_transaction()
    responses.post(BASE + "/", json=answer(*LOCATIONS))
    mock_read_back(entry, inline=inline)
    [result] = push(client, outbox, verify="full")
    assert result.delivered, result.error
    assert binary_reads() == expected
    [receipt] = outbox.receipts()
    assert receipt["verification"] == "full"


@responses.activate
def test_links_verification_reads_no_byte(client, outbox, entry):
    mock_before_transaction()
    responses.post(BASE + "/", json=answer(*LOCATIONS))
    mock_read_back(entry, bytes_=b"something else")
    [result] = push(client, outbox)  # the default
    assert result.delivered, result.error  # the bytes are not read, so not compared
    assert binary_reads() == {"json": 0, "meta": 1, "raw": 0}


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
    from fhir_images.fhir import apply_labels

    client = FhirClient(BASE, profile="azure", fhir_version="4.0")
    for _ in range(2):  # the labels, then the resource to update at its current version
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
    from fhir_images import LabelVerificationFailed
    from fhir_images.fhir import apply_labels

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


def _ov(code: str) -> dict[str, str]:
    return {"system": c.V3_OBSERVATION_VALUE, "code": code}


def test_two_accounts_of_an_images_origin_leave_the_less_trusted_one() -> None:
    """Exactly one provenance (integrity) code: a hook that cannot see who made an image
    (PACQAST) meeting one pushed as a parent's with parental responsibility (SDMAST) leaves
    PACQAST, whichever came first; codes not in play are untouched."""
    conf = {"system": c.V3_CONFIDENTIALITY, "code": "V"}
    delta = plan_label_change([conf, _ov("SDMAST")], [conf, _ov("PACQAST")])
    assert delta.add == {(c.V3_OBSERVATION_VALUE, "PACQAST")}
    assert delta.delete == {(c.V3_OBSERVATION_VALUE, "SDMAST")}
    delta = plan_label_change([conf, _ov("PACQAST")], [conf, _ov("SDMAST")])
    assert delta.empty
    delta = plan_label_change([conf, _ov("CLINAST")], [conf, _ov("CLINAST"), _ov("PATAST")])
    assert delta.result({(s["system"], s["code"]) for s in [conf, _ov("CLINAST")]}) == {
        (c.V3_CONFIDENTIALITY, "V"),
        (c.V3_OBSERVATION_VALUE, "PATAST"),
    }
