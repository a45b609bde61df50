"""The client's auth hook and an injected session, against a small local token endpoint and
FHIR endpoint started by the tests (real HTTP, no mocking)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from requests.adapters import HTTPAdapter

from fhir_images import AuthenticationFailed, FhirClient, InvalidSetting
from fhir_images.fhir.auth import ASSERTION_TYPE, SmartBackendServices


def _pem(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP384R1())


class Server:
    """A token endpoint (/token) and a FHIR endpoint (/fhir/...) in one local HTTP server."""

    def __init__(self) -> None:
        self.expires_in = 3600
        self.tokens: dict[str, float] = {}  # token -> expiry (monotonic)
        self.revoked: set[str] = set()
        self.assertions: list[dict[str, Any]] = []
        self.fhir_requests: list[dict[str, str]] = []
        self.public_keys = {"RS384": RSA_KEY.public_key(), "ES384": EC_KEY.public_key()}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
                if self.path != "/token" or form.get("client_assertion_type") != [ASSERTION_TYPE]:
                    return self._send(400, {"error": "invalid_request"})
                token = form["client_assertion"][0]
                alg = jwt.get_unverified_header(token)["alg"]
                try:
                    claims = jwt.decode(
                        token,
                        server.public_keys[alg],
                        algorithms=[alg],
                        audience=server.url + "/token",
                    )
                except (jwt.PyJWTError, KeyError):
                    return self._send(401, {"error": "invalid_client"})
                server.assertions.append(claims)
                access = f"tok-{len(server.assertions)}"
                server.tokens[access] = time.monotonic() + server.expires_in
                self._send(
                    200,
                    {
                        "access_token": access,
                        "token_type": "bearer",
                        "expires_in": server.expires_in,
                    },
                )

            def do_GET(self) -> None:
                auth = self.headers.get("Authorization", "")
                token = auth.removeprefix("Bearer ")
                server.fhir_requests.append(dict(self.headers))
                good = token in server.tokens and token not in server.revoked
                if not good or time.monotonic() > server.tokens[token]:
                    return self._send(401, {"resourceType": "OperationOutcome", "issue": []})
                self._send(200, {"resourceType": "Patient", "id": "1"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def smart(server: Server, **kw: Any) -> SmartBackendServices:
    kw.setdefault("private_key", _pem(RSA_KEY))
    return SmartBackendServices(server.url + "/token", "fhir-images-test", **kw)


def client(server: Server, auth: Any) -> FhirClient:
    return FhirClient(server.url + "/fhir", auth=auth, profile="generic", fhir_version="4.0")


@pytest.mark.parametrize("alg, key", [("RS384", RSA_KEY), ("ES384", EC_KEY)])
def test_a_signed_assertion_gets_a_token_that_is_reused(server, alg, key):
    auth = smart(server, algorithm=alg, private_key=_pem(key), key_id="k1")
    with client(server, auth) as c:
        for _ in range(3):
            assert c.read("Patient/1")["id"] == "1"
    assert auth.tokens_fetched == 1
    [claims] = server.assertions
    assert claims["iss"] == claims["sub"] == "fhir-images-test"
    assert claims["exp"] - claims["iat"] <= 300 and claims["jti"]


def test_the_token_is_fetched_again_before_it_expires(server):
    server.expires_in = 30  # inside the 60 s margin at once: every call renews first
    auth = smart(server)
    c = client(server, auth)
    c.read("Patient/1")
    c.read("Patient/1")
    assert auth.tokens_fetched == 2
    assert len({r["Authorization"] for r in server.fhir_requests}) == 2


def test_a_401_renews_the_token_once_then_stands(server):
    auth = smart(server)
    c = client(server, auth)
    c.read("Patient/1")
    server.revoked.add("tok-1")  # the server forgets the token early
    assert c.read("Patient/1")["id"] == "1"
    assert auth.tokens_fetched == 2
    server.revoked.update({"tok-2", "tok-3", "tok-4"})
    with pytest.raises(AuthenticationFailed):
        c.read("Patient/1")
    assert auth.tokens_fetched == 3, "one renewal per request, no loop"


def test_a_refused_client_gets_a_clear_error_without_secrets(server):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    auth = smart(server, private_key=_pem(other))
    with pytest.raises(AuthenticationFailed, match="refused the client") as info:
        client(server, auth).read("Patient/1")
    assert "BEGIN" not in str(info.value) and "tok-" not in str(info.value)


def test_bad_settings_are_refused_up_front():
    with pytest.raises(InvalidSetting, match="RS384 or ES384"):
        SmartBackendServices("https://x.test/token", "c", "k", algorithm="HS256")
    with pytest.raises(InvalidSetting, match="https"):
        SmartBackendServices("http://x.test/token", "c", "k")
    with pytest.raises(InvalidSetting, match="cannot sign"):
        SmartBackendServices("https://x.test/token", "c", "not a key").assertion()
    with pytest.raises(ValueError, match="one of"):
        FhirClient("https://x.test/fhir", token="t", basic=("u", "p"))


def test_an_injected_session_is_used_as_it_is(server):
    session = requests.Session()
    session.headers.update({"User-Agent": "my-ehr/2.1", "X-Tenant": "north"})
    adapter = HTTPAdapter(pool_maxsize=3)
    session.mount("http://", adapter)
    session.verify = "/etc/my-ca.pem"
    before = (dict(session.headers), dict(session.adapters), session.verify, session.auth)
    auth = smart(server)
    c = FhirClient(
        server.url + "/fhir",
        auth=auth,
        session_factory=lambda: session,
        profile="generic",
        fhir_version="4.0",
    )
    c.read("Patient/1")
    assert (dict(session.headers), dict(session.adapters), session.verify, session.auth) == before
    sent = server.fhir_requests[-1]
    assert sent["User-Agent"] == "my-ehr/2.1" and sent["X-Tenant"] == "north"
    assert sent["Accept"] == "application/fhir+json" and sent["Authorization"].startswith("Bearer")


def test_close_closes_every_session_and_the_client(server):
    closed = []

    class Tracked(requests.Session):
        def close(self) -> None:
            closed.append(self)
            super().close()

    c = FhirClient(
        server.url + "/fhir",
        auth=smart(server),
        session_factory=Tracked,
        profile="generic",
        fhir_version="4.0",
    )
    c.read("Patient/1")
    worker = threading.Thread(target=lambda: c.read("Patient/1"))
    worker.start()
    worker.join()
    c.close()
    assert len(closed) == 2
    with pytest.raises(RuntimeError, match="closed"):
        c.read("Patient/1")


def test_a_per_call_timeout_overrides_the_clients(server, monkeypatch):
    seen = []
    real = requests.Session.request

    def spy(self, method, url, *args, **kwargs):
        if "/fhir/" in url:
            seen.append(kwargs["timeout"])
        return real(self, method, url, *args, **kwargs)

    monkeypatch.setattr(requests.Session, "request", spy)
    c = client(server, smart(server))
    c.read("Patient/1")
    c.read("Patient/1", timeout=2.5)
    assert seen == [(10.0, 120.0), 2.5]
