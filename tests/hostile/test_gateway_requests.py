"""Hostile requests to the gateway: each is refused with an OperationOutcome, and nothing at all
reaches the server (neither the proxied traffic nor the gateway's own look-ups).

The requests are made straight into the ASGI application with the exact bytes an attacker
would send (an HTTP client would tidy ``..`` and encodings away before they got here).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import responses
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fhir_images import FhirClient
from fhir_images._gateway import Gateway, GatewayLimits, TokenVerifier
from fhir_images.fhir.audit import FileAudit

BASE = "http://upstream.test/fhir"
SECRET = b"s" * 40
TYPES = ["Patient", "Media", "Binary", "Consent", "Observation", "AuditEvent", "Task", "Provenance"]
CAPABILITIES = {
    "resourceType": "CapabilityStatement",
    "fhirVersion": "4.0.1",
    "rest": [
        {
            "mode": "server",
            "resource": [{"type": t} for t in TYPES],
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
        }
    ],
}


def token(key: Any = SECRET, alg: str = "HS256", **claims: Any) -> str:
    body = {
        "sub": "Practitioner/gp1",
        "exp": int(time.time()) + 600,
        "scope": "user/*.cruds",
        "purpose_of_use": "TREAT",
        **claims,
    }
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=alg)


def unsigned(**claims: Any) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    body = {"sub": "Practitioner/gp1", "exp": int(time.time()) + 600, "scope": "user/*.cruds"}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({**body, **claims})}."


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Harness:
    gateway: Gateway
    upstream: list[httpx.Request] = field(default_factory=list)
    lookups: responses.RequestsMock | None = None
    #: what the server answers (the first), else an empty searchset
    replies: list[dict[str, Any]] = field(default_factory=list)

    def call(
        self,
        method: str,
        raw_path: bytes,
        query: bytes = b"",
        *,
        tok: str | None = "default",
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        chunks: list[bytes] | None = None,
    ) -> Answer:
        hdrs = dict(headers or {})
        if tok is not None:
            hdrs.setdefault("authorization", f"Bearer {token() if tok == 'default' else tok}")
        return asyncio.run(self._call(method, raw_path, query, hdrs, chunks or [body]))

    def send_json(self, method: str, path: bytes, body: Any, tok: str) -> Answer:
        data = json.dumps(body).encode() if body is not None else b""
        headers = {"content-type": "application/fhir+json"}
        return self.call(method, path, tok=tok, headers=headers, body=data)

    async def _call(
        self, method: str, raw_path: bytes, query: bytes, headers: dict[str, str], body: list[bytes]
    ) -> Answer:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": raw_path.decode("latin-1"),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8770),
        }
        pending = list(body)
        sent: dict[str, Any] = {"body": b""}
        done = asyncio.Event()

        async def receive() -> dict[str, Any]:
            if pending:
                chunk = pending.pop(0)
                return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
            await done.wait()  # as a server does: the next message is the client leaving
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
                sent["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
            elif message["type"] == "http.response.body":
                sent["body"] += message.get("body", b"")
                if not message.get("more_body"):
                    done.set()

        await self.gateway.start()
        try:
            await self.gateway(scope, receive, send)
        finally:
            await self.gateway.stop()
        return Answer(sent["status"], sent["headers"], sent["body"])

    @property
    def forwarded(self) -> int:
        """Requests that reached the server: proxied ones, and the gateway's own look-ups
        (the CapabilityStatement read at start excepted)."""
        assert self.lookups is not None
        own = [c for c in self.lookups.calls if not c.request.url.endswith("/metadata")]
        return len(self.upstream) + len(own)


def _harness(tmp_path: Path, verifier: TokenVerifier, **limits: Any) -> Iterator[Harness]:
    seen: list[httpx.Request] = []
    replies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = replies[0] if replies else {"resourceType": "Bundle", "type": "searchset"}
        return httpx.Response(200, json=body)

    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.get(f"{BASE}/metadata", json=CAPABILITIES)
        client = FhirClient(BASE, token="upstream-secret", profile="generic", fhir_version="4.0")
        gateway = Gateway(
            client,
            verifier,
            public_url="http://gw.test",
            transport=httpx.MockTransport(handler),
            audit=FileAudit(tmp_path / "audit.jsonl"),
            limits=GatewayLimits(**limits),
        )
        yield Harness(gateway, seen, rsps, replies)


@pytest.fixture()
def gw(tmp_path: Path) -> Iterator[Harness]:
    yield from _harness(
        tmp_path, TokenVerifier(algorithm="HS256", secret=SECRET), max_json=4096, max_binary=8192
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture()
def gw_rs256(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Iterator[Harness]:
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    yield from _harness(tmp_path, TokenVerifier(algorithm="RS256", public_key=pem))


def refused(answer: Answer, *statuses: int) -> dict[str, Any]:
    assert answer.status in statuses, (answer.status, answer.body[:300])
    body = answer.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["severity"] == "error"
    return body


# ------------------------------------------------------------------------------- tokens


@pytest.mark.parametrize(
    "tok",
    [
        pytest.param(None, id="no-token"),
        pytest.param("not-a-jwt", id="garbage"),
        pytest.param(token(key=b"x" * 40), id="forged-signature"),
        pytest.param(token(exp=int(time.time()) - 3600), id="expired"),
        pytest.param(token(exp=None), id="no-exp"),
        pytest.param(token(nbf=int(time.time()) + 3600), id="not-yet-valid"),
        pytest.param(unsigned(), id="alg-none"),
        pytest.param(token(sub="gp1", fhirUser=None), id="requester-not-a-reference"),
        pytest.param(token(clearance="TOP"), id="unknown-clearance"),
        pytest.param(token(scope="patient/*.rs"), id="patient-scope-without-patient"),
        pytest.param("A" * 20000, id="oversized-token"),
    ],
)
def test_a_bad_token_is_401_and_nothing_is_forwarded(gw: Harness, tok: str | None) -> None:
    answer = gw.call("GET", b"/Patient/p1", tok=tok or None)
    if tok is None:
        answer = gw.call("GET", b"/Patient/p1", tok=None)
    refused(answer, 401)
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert gw.forwarded == 0


def test_an_hs256_token_signed_with_the_rs256_public_key_is_refused(
    gw_rs256: Harness, rsa_key: rsa.RSAPrivateKey
) -> None:
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # the classic key confusion: the public key used as an HMAC secret
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {"sub": "Practitioner/gp1", "exp": int(time.time()) + 600, "scope": "user/*.rs"}

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    import hashlib
    import hmac

    signing = b64(json.dumps(header).encode()) + b"." + b64(json.dumps(claims).encode())
    forged = signing + b"." + b64(hmac.new(pem, signing, hashlib.sha256).digest())
    refused(gw_rs256.call("GET", b"/Patient/p1", tok=forged.decode()), 401)
    # and an HS256 token with any secret
    refused(gw_rs256.call("GET", b"/Patient/p1", tok=token()), 401)
    assert gw_rs256.forwarded == 0
    # the right key and algorithm pass (the proof the refusals above are about the token)
    good = jwt.encode({**claims, "purpose_of_use": "TREAT"}, rsa_key, algorithm="RS256")
    assert gw_rs256.call("GET", b"/Patient", tok=good).status == 200
    assert gw_rs256.forwarded == 1


# ------------------------------------------------------------------------------ scopes


@pytest.mark.parametrize(
    "scope,method,path,query",
    [
        ("user/Patient.rs", "GET", b"/Media/m1", b""),
        ("user/Patient.rs", "GET", b"/Binary/b1", b""),
        ("user/*.rs", "POST", b"/Patient", b""),
        ("user/*.read", "PUT", b"/Patient/p1", b""),
        ("user/*.read", "DELETE", b"/Observation/o1", b""),
        ("user/Patient.r", "GET", b"/Patient", b"name=x"),
        ("user/Media.rs?category=x", "GET", b"/Media/m1", b""),
        ("user/Media.rs user/*.rs", "GET", b"/Media/m1/$explain", b"purpose=TREAT"),
        ("openid profile", "GET", b"/Patient/p1", b""),
    ],
)
def test_a_scope_that_does_not_cover_the_request_is_403(
    gw: Harness, scope: str, method: str, path: bytes, query: bytes
) -> None:
    answer = gw.call(
        method,
        path,
        query,
        tok=token(scope=scope),
        headers={"content-type": "application/fhir+json"},
        body=b'{"resourceType": "Patient", "id": "p1"}',
    )
    refused(answer, 403)
    assert gw.forwarded == 0


def test_a_transaction_entry_outside_the_scope_is_403(gw: Harness) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Patient"},
                "request": {"method": "POST", "url": "Patient"},
            },
            {"resource": {"resourceType": "Task"}, "request": {"method": "POST", "url": "Task"}},
        ],
    }
    answer = gw.call(
        "POST",
        b"/",
        tok=token(scope="user/Patient.cruds"),
        headers={"content-type": "application/fhir+json"},
        body=json.dumps(bundle).encode(),
    )
    refused(answer, 403)
    assert gw.forwarded == 0


# ------------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    "path",
    [
        b"/Media/../Binary/b1",
        b"/Patient/../Media/m1",
        b"/Patient/%2e%2e/Media/m1",
        b"/Patient%2FMedia/m1",
        b"/Media%252Fm1",
        b"/Patient/p1/..",
        b"/./Media/m1",
        b"//Media/m1",
        b"/Media//m1",
        b"/Media\\m1",
        b"/Media/m1;jsessionid=x",
        b"/media/m1",
        b"/MEDIA/m1",
        b"/Patient/p\xc3\xa91",
        b"/Patient/" + b"x" * 65,
        b"/_history",
        b"/$export",
        b"/Patient/$export",
        b"/Patient/p1/$everything",
        b"/Media/m1/$meta",
        b"/Media/m1/$meta-delete",
        b"/Media/m1/_history/1/$meta",
        b"/Binary/b1/$binary-access-read",
        b"/Observation/o1/$validate",
        b"/",
    ],
)
def test_a_path_trick_is_refused(gw: Harness, path: bytes) -> None:
    refused(gw.call("GET", path), 400, 403, 404, 405)
    assert gw.forwarded == 0


@pytest.mark.parametrize(
    "method,path",
    [
        ("PATCH", b"/Media/m1"),
        ("DELETE", b"/Media/m1"),
        ("DELETE", b"/Binary/b1"),
        ("PATCH", b"/Consent/c1"),
        ("PUT", b"/Media"),
        ("DELETE", b"/Media"),
        ("OPTIONS", b"/Media/m1"),
        ("TRACE", b"/Patient/p1"),
        ("POST", b"/Media/m1/_history"),
    ],
)
def test_writes_that_could_strip_labels_or_bypass_destruction_are_refused(
    gw: Harness, method: str, path: bytes
) -> None:
    answer = gw.call(method, path, headers={"content-type": "application/json-patch+json"})
    refused(answer, 403, 405)
    assert gw.forwarded == 0


# ------------------------------------------------------------------------------ searches


@pytest.mark.parametrize(
    "path,query",
    [
        (b"/Patient", b"_has:Media:subject:_security=V"),
        (b"/Patient", b"_has:Consent:patient:status=active"),
        (b"/Media", b"_has:Consent:data:status=active"),
        (b"/Consent", b"data:Media._security=V"),
        (b"/Consent", b"data._security=V"),
        (b"/Observation", b"derived-from:Media.subject=Patient/p1"),
        (b"/Task", b"focus.subject=Patient/p1"),
        (b"/Patient", b"_filter=name eq x"),
        (b"/Media", b"_filter=subject eq Patient/p1"),
        (b"/Media", b"_security:not=http://terminology.hl7.org/CodeSystem/v3-Confidentiality|V"),
        (b"/Media", b"_security:missing=true"),
        (b"/Observation", b"_security:not=x|V"),
        (b"/Media", b"_tag:not=x"),
        (b"/Media", b"_elements=id"),
        (b"/Media", b"_summary=count"),
        (b"/Media", b"_summary=true"),
        (b"/Patient", b"_revinclude=Media:subject&_summary=count"),
        (b"/Patient", b"_revinclude=Media:subject&_elements=id"),
        (b"/Patient", b"_contained=true"),
        (b"/Media", b"_text=rash"),
        (b"/Media", b"_content=rash"),
        (b"/Media", b"note=x"),
        (b"/Media", b"subject:missing=true"),
        (b"/Media", b"created:missing=true"),
        (b"/Binary", b"_id=b1&contenttype=image/jpeg"),
        (b"/Patient", b"_query=everything"),
        (b"/Patient", b"_format=xml"),
        (b"/Patient", b"_include:recurse=*"),
        (b"/Patient", b"bad name=x"),
        (b"/Patient", b"name=%00x"),
        (b"/Patient", b"a=1&" * 120),
        (b"/Patient", b"name=" + b"x" * 9000),
    ],
)
def test_a_search_that_could_reveal_hidden_images_is_refused(
    gw: Harness, path: bytes, query: bytes
) -> None:
    refused(gw.call("GET", path, query), 400, 403, 406, 414)
    assert gw.forwarded == 0


def test_a_post_search_is_screened_like_a_get(gw: Harness) -> None:
    answer = gw.call(
        "POST",
        b"/Patient/_search",
        headers={"content-type": "application/x-www-form-urlencoded"},
        body=b"_has:Media:subject:_security=V",
    )
    refused(answer, 403)
    assert gw.forwarded == 0


def test_xml_only_is_not_offered(gw: Harness) -> None:
    refused(gw.call("GET", b"/Patient/p1", headers={"accept": "application/fhir+xml"}), 406)
    assert gw.forwarded == 0


# -------------------------------------------------------------------------------- bodies


def test_an_oversized_json_body_is_refused_before_it_is_read(gw: Harness) -> None:
    big = json.dumps({"resourceType": "Media", "note": [{"text": "x" * 10000}]}).encode()
    answer = gw.call("POST", b"/Media", headers={"content-type": "application/fhir+json"}, body=big)
    refused(answer, 413)
    # a body that lies about its length, or says none, is stopped as it streams
    answer = gw.call(
        "POST",
        b"/Media",
        headers={"content-type": "application/fhir+json", "content-length": "10"},
        chunks=[big[:3000], big[3000:]],
    )
    refused(answer, 413)
    assert gw.forwarded == 0


def test_an_oversized_raw_binary_is_stopped_as_it_streams(gw: Harness) -> None:
    answer = gw.call(
        "POST",
        b"/Binary",
        headers={"content-type": "image/jpeg", "content-length": "100000"},
        body=b"x" * 100000,
    )
    refused(answer, 413)
    assert gw.forwarded == 0


def test_an_oversized_raw_binary_of_unstated_length_is_cut_off_mid_stream(gw: Harness) -> None:
    """Without a Content-Length the size is known only as the bytes come: the upload to the
    server is aborted part-way (so nothing is stored) and the caller told why."""
    answer = gw.call(
        "POST", b"/Binary", headers={"content-type": "image/jpeg"}, chunks=[b"x" * 4096] * 5
    )
    refused(answer, 413)


@pytest.mark.parametrize(
    "body",
    [
        b'{"resourceType": "Media", "resourceType": "Patient"}',
        b"[1, 2, 3]",
        b"not json",
        b'{"resourceType": "Patient"}',
        b"[" * 3000,
    ],
)
def test_a_bad_image_body_is_refused(gw: Harness, body: bytes) -> None:
    answer = gw.call(
        "POST", b"/Media", headers={"content-type": "application/fhir+json"}, body=body
    )
    refused(answer, 400)
    assert gw.forwarded == 0


@pytest.mark.parametrize(
    "entry",
    [
        {"request": {"method": "GET", "url": "Media?_has:Consent:data:status=active"}},
        {"request": {"method": "GET", "url": "Media/m1"}},
        {"request": {"method": "DELETE", "url": "Media/m1"}},
        {"request": {"method": "PATCH", "url": "Binary/b1"}},
        {
            "request": {"method": "PUT", "url": "Media?identifier=x"},
            "resource": {"resourceType": "Media"},
        },
        {
            "request": {"method": "POST", "url": "Media", "ifNoneExist": "_security=V"},
            "resource": {"resourceType": "Media"},
        },
        {
            "request": {
                "method": "POST",
                "url": "Patient",
                "ifNoneExist": "_has:Media:subject:_security=V",
            },
            "resource": {"resourceType": "Patient"},
        },
        {"request": {"method": "POST", "url": "Media"}, "resource": {"resourceType": "Patient"}},
        {
            "request": {"method": "POST", "url": "Nonsense"},
            "resource": {"resourceType": "Nonsense"},
        },
    ],
)
def test_a_transaction_entry_that_reads_or_strips_is_refused(
    gw: Harness, entry: dict[str, Any]
) -> None:
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [entry]}
    answer = gw.call(
        "POST",
        b"/",
        headers={"content-type": "application/fhir+json"},
        body=json.dumps(bundle).encode(),
    )
    refused(answer, 400, 403)
    assert gw.forwarded == 0


def test_a_conditional_create_cannot_smuggle_a_refused_parameter(gw: Harness) -> None:
    answer = gw.call(
        "POST",
        b"/Observation",
        headers={
            "content-type": "application/fhir+json",
            "if-none-exist": "code=x%26_has:Media:subject:_security=V",
        },
        body=b'{"resourceType": "Observation"}',
    )
    assert answer.status == 200
    [sent] = gw.upstream
    assert sent.headers["if-none-exist"] == "code=x%26_has%3AMedia%3Asubject%3A_security%3DV"
    refused(
        gw.call(
            "POST",
            b"/Observation",
            headers={"content-type": "application/fhir+json", "if-none-exist": "_has:Media:x=1"},
            body=b'{"resourceType": "Observation"}',
        ),
        403,
    )
    assert len(gw.upstream) == 1


def test_the_callers_token_never_reaches_the_server(gw: Harness) -> None:
    answer = gw.call(
        "GET", b"/Patient", b"name=x", headers={"cookie": "a=b", "x-forwarded-for": "1.2.3.4"}
    )
    assert answer.status == 200
    [sent] = gw.upstream
    assert sent.headers["authorization"] == "Bearer upstream-secret"
    assert "cookie" not in sent.headers and "x-forwarded-for" not in sent.headers
    assert sent.url.params.get("name") == "x"


# ---------------------------------------------------------------------- patient/ scopes


def patient_token(**claims: Any) -> str:
    return token(scope="patient/*.rs", patient="p1", sub="Patient/p1", **claims)


def test_a_patient_scope_sees_only_that_patients_resources(gw: Harness) -> None:
    gw.replies.append({"resourceType": "Patient", "id": "p2"})
    refused(gw.call("GET", b"/Patient/p2", tok=patient_token()), 403)
    gw.replies[0] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 2,
        "entry": [
            {
                "resource": {
                    "resourceType": "Observation",
                    "id": "o1",
                    "subject": {"reference": "Patient/p1"},
                }
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "id": "o2",
                    "subject": {"reference": "Patient/p2"},
                }
            },
        ],
    }
    found = gw.call("GET", b"/Observation", b"code=x", tok=patient_token())
    assert found.status == 200
    body = found.json()
    assert [e["resource"]["id"] for e in body["entry"]] == ["o1"] and "total" not in body


def test_a_patient_scope_writes_only_for_that_patient(gw: Harness) -> None:
    tok = token(scope="patient/*.cruds", patient="p1", sub="Patient/p1")
    media = {"resourceType": "Media", "subject": {"reference": "Patient/p2"}}
    answer = gw.send_json("POST", b"/Media", media, tok)
    refused(answer, 403)
    assert gw.forwarded == 0


@pytest.mark.parametrize(
    "method,path,body",
    [
        (
            "POST",
            b"/Observation",
            {"resourceType": "Observation", "subject": {"reference": "Patient/p2"}},
        ),
        ("PUT", b"/Observation/o2", {"resourceType": "Observation", "id": "o2"}),
        ("DELETE", b"/Observation/o2", None),
    ],
)
def test_a_patient_scope_cannot_write_another_patients_resources(
    gw: Harness, method: str, path: bytes, body: dict[str, Any] | None
) -> None:
    tok = token(scope="patient/*.cruds", patient="p1", sub="Patient/p1")
    assert gw.lookups is not None
    gw.lookups.get(
        f"{BASE}/Observation/o2",
        json={"resourceType": "Observation", "id": "o2", "subject": {"reference": "Patient/p2"}},
    )
    answer = gw.send_json(method, path, body, tok)
    refused(answer, 403)
    assert not gw.upstream
    mine = {"resourceType": "Observation", "subject": {"reference": "Patient/p1"}}
    ok = gw.send_json("POST", b"/Observation", mine, tok)
    assert ok.status == 200 and len(gw.upstream) == 1


def test_included_resources_of_a_type_no_scope_covers_are_left_out(gw: Harness) -> None:
    gw.replies.append(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [
                {"resource": {"resourceType": "Patient", "id": "p1"}},
                {
                    "resource": {"resourceType": "Observation", "id": "o1"},
                    "search": {"mode": "include"},
                },
            ],
        }
    )
    found = gw.call(
        "GET", b"/Patient", b"_revinclude=Observation:subject", tok=token(scope="user/Patient.rs")
    )
    assert [e["resource"]["resourceType"] for e in found.json()["entry"]] == ["Patient"]
