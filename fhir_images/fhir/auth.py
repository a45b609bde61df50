"""How the client proves who it is to the FHIR server: a pluggable hook.

An :class:`Auth` gives the headers for each request and may be asked to renew its credentials
once when the server answers 401. Three are provided:

* :class:`BearerToken`: a fixed token;
* :class:`BasicAuth`: user name and password;
* :class:`SmartBackendServices`: the SMART App Launch *Backend Services* flow, as EHR backends
  authenticate to FHIR servers: a client-credentials grant with a signed JWT assertion (RS384 or
  ES384), the access token cached and fetched again shortly before it expires, and once more
  after a 401.

Credentials are never logged and never appear in error messages.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

import requests

from .._exceptions import AuthenticationFailed, InvalidSetting

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class Auth(Protocol):
    """How requests to the FHIR server are authenticated."""

    def headers(self) -> dict[str, str]:
        """The headers that authenticate one request."""
        ...

    def renew(self) -> bool:
        """After a 401: drop what is cached; True when asking again may succeed."""
        ...


@dataclass(frozen=True)
class BearerToken:
    """A fixed bearer token (it is never renewed)."""

    token: str = field(repr=False)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def renew(self) -> bool:
        return False


@dataclass(frozen=True)
class BasicAuth:
    """HTTP Basic authentication."""

    username: str
    password: str = field(repr=False)

    def headers(self) -> dict[str, str]:
        raw = f"{self.username}:{self.password}".encode()
        return {"Authorization": f"Basic {base64.b64encode(raw).decode()}"}

    def renew(self) -> bool:
        return False


class SmartBackendServices:
    """SMART Backend Services: a token from ``token_url`` for a signed client assertion.

    ``private_key`` is the PEM of the client's RSA (RS384) or P-384 EC (ES384) key, registered
    with the authorisation server by its public half (``key_id`` is its ``kid`` in the JWKS).
    The token is kept until ``refresh_margin`` seconds before it expires. Thread-safe: one
    token request at a time, shared by every thread.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        private_key: str | bytes,
        *,
        algorithm: str = "RS384",
        key_id: str | None = None,
        scope: str = "system/*.rs system/*.cud",
        assertion_lifetime: int = 300,
        refresh_margin: float = 60.0,
        timeout: float = 30.0,
        session: requests.Session | None = None,
    ) -> None:
        if algorithm not in ("RS384", "ES384"):
            raise InvalidSetting("SMART Backend Services signs with RS384 or ES384")
        if not token_url.startswith("https://") and not token_url.startswith("http://127.0.0.1"):
            raise InvalidSetting("the token endpoint must be https (or a local test endpoint)")
        self.token_url = token_url
        self.client_id = client_id
        self.algorithm = algorithm
        self.key_id = key_id
        self.scope = scope
        self.assertion_lifetime = min(assertion_lifetime, 300)  # the spec allows 5 minutes
        self.refresh_margin = refresh_margin
        self.timeout = timeout
        self._key = private_key
        self._session = session or requests.Session()
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires = 0.0
        self.tokens_fetched = 0

    def __repr__(self) -> str:
        return f"SmartBackendServices({self.token_url!r}, {self.client_id!r}, {self.algorithm})"

    def assertion(self) -> str:
        try:
            import jwt
        except ImportError:
            raise InvalidSetting(
                "SMART Backend Services needs PyJWT: pip install 'fhir-images[smart]'"
            ) from None

        now = int(time.time())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.token_url,
            "exp": now + self.assertion_lifetime,
            "iat": now,
            "jti": uuid.uuid4().hex,
        }
        headers: dict[str, Any] = {"typ": "JWT"}
        if self.key_id:
            headers["kid"] = self.key_id
        try:
            return str(jwt.encode(claims, self._key, algorithm=self.algorithm, headers=headers))
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            raise InvalidSetting(
                f"the SMART private key cannot sign {self.algorithm} ({type(exc).__name__})"
            ) from None

    def _fetch(self) -> None:
        form = {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.assertion(),
        }
        try:
            r = self._session.post(
                self.token_url,
                data=form,
                headers={"Accept": "application/json"},
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise AuthenticationFailed(
                f"the token endpoint cannot be reached ({type(exc).__name__})"
            ) from None
        try:
            body = r.json()
        except ValueError:
            body = {}
        token = body.get("access_token") if isinstance(body, dict) else None
        if r.status_code != 200 or not isinstance(token, str) or not token:
            error = body.get("error") if isinstance(body, dict) else None
            raise AuthenticationFailed(
                f"the token endpoint refused the client (HTTP {r.status_code}"
                + (f", {error}" if isinstance(error, str) and error.isascii() else "")
                + ")",
                status=401,
            )
        kind = str(body.get("token_type", "bearer")).lower()
        if kind != "bearer":
            raise AuthenticationFailed("the token endpoint gave a token that is not a bearer token")
        try:
            lifetime = float(body.get("expires_in", 300))
        except (TypeError, ValueError):
            lifetime = 300.0
        self._token = token
        self._expires = time.monotonic() + max(0.0, lifetime)
        self.tokens_fetched += 1

    def headers(self) -> dict[str, str]:
        with self._lock:
            if self._token is None or time.monotonic() >= self._expires - self.refresh_margin:
                self._fetch()
            return {"Authorization": f"Bearer {self._token}"}

    def renew(self) -> bool:
        with self._lock:
            self._token = None
            self._expires = 0.0
        return True

    def close(self) -> None:
        self._session.close()
