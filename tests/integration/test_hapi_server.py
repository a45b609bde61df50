"""Integration tests for the FHIR server the project relies on (servers/hapi, or HAPI in Docker).

Each test proves one capability fhir-images needs from the server and fails if the server
lacks it. Every test uses its own random identifiers and tags, so existing data on the
server does not matter. Run against a server with, for example::

    servers/hapi/hapi.sh start
    export FHIR_BASE_URL=$(servers/hapi/hapi.sh url)
    python -m pytest tests/integration/test_hapi_server.py -q
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

pytestmark = pytest.mark.integration

TIMEOUT = 30  # seconds, for every HTTP request
VALIDATE_TIMEOUT = 120  # the first $validate loads the core definitions
SUBSCRIPTION_TIMEOUT = 60  # activation and delivery are asynchronous

FHIR_JSON = "application/fhir+json"
HEADERS = {"Accept": FHIR_JSON, "Content-Type": FHIR_JSON}
TEST_TAG_SYSTEM = "http://example.org/fhir-images/test-run"
ID_SYSTEM_PREFIX = "urn:fhir-images-test:"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
RESTRICTED = {"system": CONFIDENTIALITY, "code": "R"}
VERY_RESTRICTED = {"system": CONFIDENTIALITY, "code": "V"}

Resource = dict[str, Any]


# --------------------------------------------------------------------------- helpers


def uid() -> str:
    return uuid.uuid4().hex


def tag(code: str) -> dict[str, str]:
    return {"system": TEST_TAG_SYSTEM, "code": code}


def token(coding: dict[str, str]) -> str:
    return f"{coding['system']}|{coding['code']}"


def create(base: str, resource: Resource) -> Resource:
    r = requests.post(
        f"{base}/{resource['resourceType']}", json=resource, headers=HEADERS, timeout=TIMEOUT
    )
    assert r.status_code == 201, f"create {resource['resourceType']}: {r.status_code} {r.text}"
    created: Resource = r.json()
    assert created.get("id"), created
    return created


def read(base: str, rtype: str, rid: str) -> Resource:
    r = requests.get(f"{base}/{rtype}/{rid}", headers=HEADERS, timeout=TIMEOUT)
    assert r.status_code == 200, f"read {rtype}/{rid}: {r.status_code} {r.text}"
    resource: Resource = r.json()
    return resource


def search_ids(base: str, rtype: str, params: dict[str, str]) -> list[str]:
    r = requests.get(
        f"{base}/{rtype}", params={**params, "_count": "50"}, headers=HEADERS, timeout=TIMEOUT
    )
    assert r.status_code == 200, f"search {rtype} {params}: {r.status_code} {r.text}"
    bundle = r.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset", bundle
    return [
        e["resource"]["id"]
        for e in bundle.get("entry", [])
        if e.get("search", {}).get("mode", "match") == "match"
    ]


def meta_operation(base: str, rtype: str, rid: str, operation: str, meta: Resource) -> Resource:
    body = {"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": meta}]}
    r = requests.post(
        f"{base}/{rtype}/{rid}/${operation}", json=body, headers=HEADERS, timeout=TIMEOUT
    )
    assert r.status_code == 200, f"${operation}: {r.status_code} {r.text}"
    params = r.json()
    assert params["resourceType"] == "Parameters", params
    returned: Resource = params["parameter"][0]["valueMeta"]
    return returned


def codings(meta: Resource, element: str) -> set[tuple[str, str]]:
    return {(c.get("system", ""), c.get("code", "")) for c in meta.get(element, [])}


def pair(coding: dict[str, str]) -> tuple[str, str]:
    return coding["system"], coding["code"]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def media(code: str, **extra: Any) -> Resource:
    return {
        "resourceType": "Media",
        "meta": {"tag": [tag(code)]},
        "status": "completed",
        "identifier": [{"system": f"{ID_SYSTEM_PREFIX}media", "value": code}],
        "content": {"contentType": "image/jpeg", "url": f"http://example.org/images/{code}.jpg"},
        **extra,
    }


# --------------------------------------------------------------------------- fixtures


@pytest.fixture()
def patient(hapi_base_url: str) -> Resource:
    code = uid()
    return create(
        hapi_base_url,
        {
            "resourceType": "Patient",
            "meta": {"tag": [tag(code)]},
            "identifier": [{"system": f"{ID_SYSTEM_PREFIX}patient", "value": code}],
            "name": [{"family": "Integration", "given": ["Test"]}],
        },
    )


def _minimal(rtype: str, code: str, patient_ref: str) -> Resource:
    """A minimal, valid instance of each resource type fhir-images stores."""
    now = "2024-01-02T03:04:05Z"
    ident = [{"system": f"{ID_SYSTEM_PREFIX}{rtype.lower()}", "value": code}]
    bodies: dict[str, Resource] = {
        "Patient": {"identifier": ident, "name": [{"family": "Crud"}]},
        "Media": {
            "identifier": ident,
            "status": "completed",
            "subject": {"reference": patient_ref},
            "content": {"contentType": "image/jpeg", "url": "http://example.org/x.jpg"},
        },
        "Consent": {
            "identifier": ident,
            "status": "active",
            "scope": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                        "code": "patient-privacy",
                    }
                ]
            },
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": patient_ref},
            "policyRule": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}
                ]
            },
            "provision": {"type": "permit"},
        },
        "Binary": {
            "contentType": "text/plain",
            "data": base64.b64encode(f"hello {code}".encode()).decode(),
        },
        "Provenance": {
            "target": [{"reference": patient_ref}],
            "recorded": now,
            "agent": [{"who": {"display": "fhir-images tests"}}],
        },
        "AuditEvent": {
            "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
            "recorded": now,
            "agent": [{"requestor": True, "who": {"display": "fhir-images tests"}}],
            "source": {"observer": {"display": "fhir-images tests"}},
        },
        "Encounter": {
            "identifier": ident,
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": patient_ref},
        },
        "RelatedPerson": {
            "identifier": ident,
            "patient": {"reference": patient_ref},
            "name": [{"family": "Relative"}],
        },
        # status "off": stored and searchable, but never activated or delivered
        "Subscription": {
            "status": "off",
            "reason": "fhir-images integration test",
            "criteria": f"Media?_tag={TEST_TAG_SYSTEM}|{code}",
            "channel": {
                "type": "rest-hook",
                "endpoint": "http://127.0.0.1:9/unused",
                "payload": FHIR_JSON,
            },
        },
        "StructureDefinition": {
            "url": f"http://example.org/fhir/StructureDefinition/crud-{code}",
            "name": f"Crud{code[:12]}",
            "status": "draft",
            "fhirVersion": "4.0.1",
            "kind": "resource",
            "abstract": False,
            "type": "Media",
            "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Media",
            "derivation": "constraint",
            "differential": {"element": [{"id": "Media", "path": "Media"}]},
        },
    }
    return {"resourceType": rtype, "meta": {"tag": [tag(code)]}, **bodies[rtype]}


# --------------------------------------------------------------------------- tests

RESOURCE_TYPES = [
    "Patient",
    "Media",
    "Consent",
    "Binary",
    "Provenance",
    "AuditEvent",
    "Encounter",
    "RelatedPerson",
    "Subscription",
    "StructureDefinition",
]


@pytest.mark.parametrize("rtype", RESOURCE_TYPES)
def test_crud_and_search(hapi_base_url: str, patient: Resource, rtype: str) -> None:
    base, code = hapi_base_url, uid()
    by_tag = {"_tag": token(tag(code))}
    # Searching before and right after each write also proves that the server does not
    # answer a repeated search from cached results.
    assert search_ids(base, rtype, by_tag) == []

    created = create(base, _minimal(rtype, code, f"Patient/{patient['id']}"))
    rid = created["id"]
    assert created["meta"]["versionId"] == "1"

    fetched = read(base, rtype, rid)
    assert fetched["id"] == rid
    assert pair(tag(code)) in codings(fetched["meta"], "tag")
    assert search_ids(base, rtype, by_tag) == [rid]
    assert search_ids(base, rtype, {"_id": rid}) == [rid]
    if "identifier" in created:
        ident = created["identifier"][0]
        assert search_ids(base, rtype, {"identifier": f"{ident['system']}|{ident['value']}"}) == [
            rid
        ]

    fetched["language"] = "en"
    r = requests.put(f"{base}/{rtype}/{rid}", json=fetched, headers=HEADERS, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    updated = read(base, rtype, rid)
    assert updated["language"] == "en"
    assert updated["meta"]["versionId"] == "2"

    r = requests.delete(f"{base}/{rtype}/{rid}", headers=HEADERS, timeout=TIMEOUT)
    assert r.status_code in (200, 204), r.text
    r = requests.get(f"{base}/{rtype}/{rid}", headers=HEADERS, timeout=TIMEOUT)
    assert r.status_code == 410, f"deleted {rtype} should be gone: {r.status_code}"
    assert search_ids(base, rtype, by_tag) == []


def _transaction(code: str, media_code: str) -> Resource:
    patient_url, media_url = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"
    patient_ident = f"{ID_SYSTEM_PREFIX}patient|{code}"
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": patient_url,
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": f"{ID_SYSTEM_PREFIX}patient", "value": code}],
                    "name": [{"family": "Transaction"}],
                },
                "request": {
                    "method": "POST",
                    "url": "Patient",
                    "ifNoneExist": f"identifier={patient_ident}",
                },
            },
            {
                "fullUrl": media_url,
                "resource": media(media_code, subject={"reference": patient_url}),
                "request": {"method": "POST", "url": "Media"},
            },
        ],
    }


def _post_transaction(base: str, bundle: Resource) -> list[Resource]:
    r = requests.post(base, json=bundle, headers=HEADERS, timeout=TIMEOUT)
    assert r.status_code == 200, f"transaction: {r.status_code} {r.text}"
    response = r.json()
    assert response["type"] == "transaction-response", response
    entries: list[Resource] = response["entry"]
    assert len(entries) == 2
    return entries


def _location_id(entry: Resource) -> tuple[str, str]:
    # e.g. "Patient/123/_history/1"
    parts = entry["response"]["location"].split("/")
    return parts[0], parts[1]


def test_transaction_urn_uuid_references_and_conditional_create(hapi_base_url: str) -> None:
    base, code = hapi_base_url, uid()
    first_media, second_media = uid(), uid()

    first = _post_transaction(base, _transaction(code, first_media))
    assert first[0]["response"]["status"].startswith("201")
    ptype, pid = _location_id(first[0])
    mtype, mid = _location_id(first[1])
    assert (ptype, mtype) == ("Patient", "Media")
    # the urn:uuid placeholder was rewritten to the server-assigned id
    assert read(base, "Media", mid)["subject"]["reference"] == f"Patient/{pid}"

    # Same bundle again: ifNoneExist matches, so the Patient is not created twice, and the
    # new Media points at the existing Patient.
    second = _post_transaction(base, _transaction(code, second_media))
    assert second[0]["response"]["status"].startswith("200"), second[0]["response"]
    assert _location_id(second[0]) == ("Patient", pid)
    _, mid2 = _location_id(second[1])
    assert mid2 != mid
    assert read(base, "Media", mid2)["subject"]["reference"] == f"Patient/{pid}"

    assert search_ids(base, "Patient", {"identifier": f"{ID_SYSTEM_PREFIX}patient|{code}"}) == [pid]


def test_search_by_security_label_and_tag(hapi_base_url: str) -> None:
    base, code = hapi_base_url, uid()
    ident_system = f"{ID_SYSTEM_PREFIX}labels-{code}"
    labelled = media(code)
    labelled["meta"]["security"] = [RESTRICTED]
    labelled["identifier"] = [{"system": ident_system, "value": "labelled"}]
    plain = media(uid())
    plain["meta"] = {}
    plain["identifier"] = [{"system": ident_system, "value": "plain"}]
    labelled_id = create(base, labelled)["id"]
    plain_id = create(base, plain)["id"]

    both = {"identifier": f"{ident_system}|"}
    assert sorted(search_ids(base, "Media", both)) == sorted([labelled_id, plain_id])
    assert search_ids(base, "Media", {**both, "_security": token(RESTRICTED)}) == [labelled_id]
    assert search_ids(base, "Media", {**both, "_security:not": token(RESTRICTED)}) == [plain_id]
    assert search_ids(base, "Media", {"_tag": token(tag(code))}) == [labelled_id]
    assert search_ids(base, "Media", {**both, "_tag": token(tag(code))}) == [labelled_id]


def test_meta_add_and_meta_delete(hapi_base_url: str) -> None:
    base, code = hapi_base_url, uid()
    rid = create(base, media(code))["id"]
    extra_tag = tag(uid())

    returned = meta_operation(
        base, "Media", rid, "meta-add", {"security": [RESTRICTED], "tag": [extra_tag]}
    )
    assert pair(RESTRICTED) in codings(returned, "security")
    meta = read(base, "Media", rid)["meta"]
    assert pair(RESTRICTED) in codings(meta, "security")
    assert {pair(tag(code)), pair(extra_tag)} <= codings(meta, "tag")
    assert search_ids(base, "Media", {"_tag": token(extra_tag)}) == [rid]

    r = requests.get(f"{base}/Media/{rid}/$meta", headers=HEADERS, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert pair(RESTRICTED) in codings(r.json()["parameter"][0]["valueMeta"], "security")

    returned = meta_operation(base, "Media", rid, "meta-delete", {"security": [RESTRICTED]})
    assert pair(RESTRICTED) not in codings(returned, "security")
    meta = read(base, "Media", rid)["meta"]
    assert pair(RESTRICTED) not in codings(meta, "security")
    # only the label named in $meta-delete went away
    assert {pair(tag(code)), pair(extra_tag)} <= codings(meta, "tag")
    assert search_ids(base, "Media", {"_id": rid, "_security": token(RESTRICTED)}) == []


def test_put_merges_security_labels_unless_snapshot_mode(hapi_base_url: str) -> None:
    """HAPI keeps existing meta.security on a plain PUT; the client must ask to replace."""
    base = hapi_base_url
    resource = media(uid())
    resource["meta"]["security"] = [RESTRICTED]
    created = create(base, resource)
    rid = created["id"]

    created["meta"] = {"security": [VERY_RESTRICTED]}
    r = requests.put(f"{base}/Media/{rid}", json=created, headers=HEADERS, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert codings(read(base, "Media", rid)["meta"], "security") == {
        pair(RESTRICTED),
        pair(VERY_RESTRICTED),
    }

    created["meta"] = {"security": [VERY_RESTRICTED]}
    r = requests.put(
        f"{base}/Media/{rid}",
        json=created,
        timeout=TIMEOUT,
        headers={**HEADERS, "X-Meta-Snapshot-Mode": "SECURITY_LABEL"},
    )
    assert r.status_code == 200, r.text
    assert codings(read(base, "Media", rid)["meta"], "security") == {pair(VERY_RESTRICTED)}


def test_raw_binary_upload_and_readback(hapi_base_url: str) -> None:
    base = hapi_base_url
    payload = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + os.urandom(256 * 1024) + b"\xff\xd9"
    r = requests.post(
        f"{base}/Binary",
        data=payload,
        timeout=TIMEOUT,
        headers={"Content-Type": "image/jpeg", "Accept": FHIR_JSON},
    )
    assert r.status_code == 201, f"{r.status_code} {r.text[:500]}"
    location = r.headers.get("Location") or r.headers["Content-Location"]
    rid = location.split("/Binary/")[1].split("/")[0]

    raw = requests.get(f"{base}/Binary/{rid}", headers={"Accept": "image/jpeg"}, timeout=TIMEOUT)
    assert raw.status_code == 200
    assert raw.headers["Content-Type"].split(";")[0].strip() == "image/jpeg"
    assert raw.content == payload

    as_fhir = requests.get(f"{base}/Binary/{rid}", headers={"Accept": FHIR_JSON}, timeout=TIMEOUT)
    assert as_fhir.status_code == 200
    binary = as_fhir.json()
    assert binary["resourceType"] == "Binary"
    assert binary["contentType"] == "image/jpeg"
    assert base64.b64decode(binary["data"]) == payload


def test_large_binary_bytes_via_binary_access_read(hapi_base_url: str) -> None:
    """Above 10 MB HAPI no longer inlines the bytes on a plain read; $binary-access-read works."""
    base = hapi_base_url
    payload = b"\xff\xd8\xff\xe0" + os.urandom(11 * 1024 * 1024)
    r = requests.post(
        f"{base}/Binary",
        data=payload,
        timeout=120,
        headers={"Content-Type": "image/jpeg", "Accept": FHIR_JSON},
    )
    assert r.status_code == 201, f"{r.status_code} {r.text[:500]}"
    rid = (r.headers.get("Location") or r.headers["Content-Location"]).split("/Binary/")[1]
    rid = rid.split("/")[0]

    raw = requests.get(
        f"{base}/Binary/{rid}/$binary-access-read", params={"path": "Binary"}, timeout=120
    )
    assert raw.status_code == 200, raw.text[:500]
    assert raw.headers["Content-Type"].split(";")[0].strip() == "image/jpeg"
    assert raw.content == payload


# --------------------------------------------------------------------------- subscriptions


class _HookRecorder(http.server.ThreadingHTTPServer):
    """A tiny REST-hook endpoint that records every request it gets."""

    daemon_threads = True

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, bytes]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _HookHandler)

    def seen(self, method: str, path: str) -> list[bytes]:
        with self.lock:
            return [body for m, p, body in self.requests if m == method and p == path]


class _HookHandler(http.server.BaseHTTPRequestHandler):
    server: _HookRecorder

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.server.lock:
            self.server.requests.append((self.command, self.path.split("?")[0], body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_PUT = do_POST = do_GET = do_DELETE = _record

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture()
def hook() -> Iterator[_HookRecorder]:
    server = _HookRecorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def active_subscription(hapi_base_url: str, hook: _HookRecorder) -> Iterator[tuple[str, str]]:
    """A rest-hook Subscription on Media with a unique tag; yields (tag code, endpoint path)."""
    base, code = hapi_base_url, uid()
    port = hook.server_address[1]
    sub = create(
        base,
        {
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "fhir-images integration test",
            "criteria": f"Media?_tag={TEST_TAG_SYSTEM}|{code}",
            "channel": {
                "type": "rest-hook",
                "endpoint": f"http://127.0.0.1:{port}/hook",
                "payload": FHIR_JSON,
            },
        },
    )
    try:
        wait_for(
            lambda: read(base, "Subscription", sub["id"])["status"] == "active",
            SUBSCRIPTION_TIMEOUT,
            "the Subscription to become active",
        )
        yield code, "/hook"
    finally:
        requests.delete(f"{base}/Subscription/{sub['id']}", headers=HEADERS, timeout=TIMEOUT)


def test_rest_hook_subscription_delivers_put(
    hapi_base_url: str, hook: _HookRecorder, active_subscription: tuple[str, str]
) -> None:
    base = hapi_base_url
    code, path = active_subscription
    rid = create(base, media(code))["id"]

    bodies = wait_for(
        lambda: hook.seen("PUT", f"{path}/Media/{rid}"),
        SUBSCRIPTION_TIMEOUT,
        f"PUT {path}/Media/{rid} on the rest-hook endpoint",
    )
    delivered = json.loads(bodies[0])
    assert delivered["resourceType"] == "Media"
    assert delivered["id"] == rid
    assert pair(tag(code)) in codings(delivered["meta"], "tag")


def test_label_only_change_triggers_rest_hook(
    hapi_base_url: str, hook: _HookRecorder, active_subscription: tuple[str, str]
) -> None:
    """$meta-add changes labels without a new version; servers/hapi still notifies."""
    base = hapi_base_url
    r = requests.get(f"{base}/metadata", headers=HEADERS, timeout=TIMEOUT)
    description = r.json().get("implementation", {}).get("description", "")
    if "label-only changes trigger subscriptions" not in description:
        # e.g. the hapiproject/hapi image, which has no setting for it
        pytest.skip("server does not declare that label-only changes trigger subscriptions")
    code, path = active_subscription
    rid = create(base, media(code))["id"]
    wait_for(
        lambda: hook.seen("PUT", f"{path}/Media/{rid}"),
        SUBSCRIPTION_TIMEOUT,
        f"PUT {path}/Media/{rid} after the create",
    )

    meta_operation(base, "Media", rid, "meta-add", {"security": [RESTRICTED]})
    bodies = wait_for(
        lambda: [
            b
            for b in hook.seen("PUT", f"{path}/Media/{rid}")
            if pair(RESTRICTED) in codings(json.loads(b)["meta"], "security")
        ],
        SUBSCRIPTION_TIMEOUT,
        "delivery of the label-only change",
    )
    assert json.loads(bodies[0])["id"] == rid


def test_non_matching_resource_is_not_delivered(
    hapi_base_url: str, hook: _HookRecorder, active_subscription: tuple[str, str]
) -> None:
    base = hapi_base_url
    code, path = active_subscription
    other = create(base, media(uid()))["id"]  # a different tag: must not be delivered
    matching = create(base, media(code))["id"]
    wait_for(
        lambda: hook.seen("PUT", f"{path}/Media/{matching}"),
        SUBSCRIPTION_TIMEOUT,
        "delivery of the matching Media",
    )
    assert hook.seen("PUT", f"{path}/Media/{other}") == []


# --------------------------------------------------------------------------- $validate


def _issues(outcome: Resource, *severities: str) -> list[Resource]:
    assert outcome["resourceType"] == "OperationOutcome", outcome
    return [i for i in outcome.get("issue", []) if i.get("severity") in severities]


def _validate(base: str, resource: Resource, profile: str) -> Resource:
    r = requests.post(
        f"{base}/Media/$validate",
        params={"profile": profile},
        json=resource,
        headers=HEADERS,
        timeout=VALIDATE_TIMEOUT,
    )
    # HAPI answers 200 with the outcome; some servers use 412 for an invalid resource
    assert r.status_code in (200, 412), f"$validate: {r.status_code} {r.text}"
    outcome: Resource = r.json()
    return outcome


def test_validate_against_uploaded_profile(hapi_base_url: str) -> None:
    base, code = hapi_base_url, uid()
    profile = f"http://example.org/fhir/StructureDefinition/media-with-note-{code}"
    # Upload the profile before anything asks for its URL (servers cache failed look-ups).
    create(
        base,
        {
            "resourceType": "StructureDefinition",
            "url": profile,
            "name": f"MediaWithNote{code[:12]}",
            "status": "active",
            "fhirVersion": "4.0.1",
            "kind": "resource",
            "abstract": False,
            "type": "Media",
            "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Media",
            "derivation": "constraint",
            # differential only: the server has to generate the snapshot itself
            "differential": {"element": [{"id": "Media.note", "path": "Media.note", "min": 1}]},
        },
    )
    conforming = media(code, note=[{"text": "taken with consent"}])
    nonconforming = media(code)

    good = _validate(base, conforming, profile)
    assert _issues(good, "error", "fatal") == [], good

    bad = _validate(base, nonconforming, profile)
    errors = _issues(bad, "error", "fatal")
    assert errors, bad
    assert any("note" in json.dumps(i) for i in errors), errors
    # the base definition alone accepts the same resource: the error comes from our profile
    base_only = _validate(base, nonconforming, "http://hl7.org/fhir/StructureDefinition/Media")
    assert _issues(base_only, "error", "fatal") == [], base_only
