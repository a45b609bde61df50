"""Transport: a FHIR R4 REST client over requests.

One :class:`requests.Session` per thread (keep-alive, a connection pool sized
for the worker count), explicit timeouts, TLS verification on by default,
bearer or basic auth. Errors become the typed :class:`ServerError` family,
carrying the status and the server's OperationOutcome issues.

Retries are done here rather than by urllib3's ``Retry`` because a streamed
upload must be re-opened from disk before it is sent again, which urllib3
cannot do. What is retried, with exponential backoff, full jitter, and
``Retry-After`` honoured, bounded in count and total time:

* a connection that failed before the request was sent (any method);
* 429 and 503 (the server says it did not process the request; any method);
* 502, 504 and read time-outs, only for requests that are idempotent (GET,
  PUT, DELETE, and transactions made only of conditional creates).

Server behaviour lives in a :class:`~fhir_images.fhir.servers.ServerProfile`, made from a
probe of the server (:mod:`fhir_images.fhir.probe`, cached per base URL) or forced by the
caller; the FHIR version comes from the CapabilityStatement's ``fhirVersion``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urljoin

import requests
from requests.adapters import HTTPAdapter

from .._exceptions import (
    AuthenticationFailed,
    BadResponse,
    IncompatibleServer,
    InvalidRequest,
    InvalidSetting,
    PayloadTooLarge,
    RateLimited,
    ResourceNotFound,
    ServerError,
    ServerUnavailable,
    VersionConflict,
)
from .auth import Auth, BasicAuth, BearerToken
from .jsonbinary import BinaryJson
from .servers import PROFILES, ServerProfile, software_hint
from .version import FhirVersion, get_version

if TYPE_CHECKING:
    from .._settings import Settings
    from .probe import ServerReport

log = logging.getLogger("fhir_images.transport")

FHIR_JSON = "application/fhir+json"
#: seconds, or (connect, read) seconds
Timeout = float | tuple[float, float]
_CHUNK = 1 << 20


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures are retried (429 and 503 always; 502, 504, time-outs and lost
    connections only where repeating is safe): attempts, backoff and a total time limit."""

    attempts: int = 5
    backoff_base: float = 0.25
    backoff_max: float = 8.0
    total_seconds: float = 60.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after  # bounded by total_seconds in the caller
        return random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _issues(body: Any) -> list[dict[str, Any]]:
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        return [
            {k: i.get(k) for k in ("severity", "code", "diagnostics") if i.get(k) is not None}
            for i in body.get("issue", [])
            if isinstance(i, dict)
        ]
    return []


_STATUS_ERRORS: dict[int, type[ServerError]] = {
    400: InvalidRequest,
    422: InvalidRequest,
    413: PayloadTooLarge,
    401: AuthenticationFailed,
    403: AuthenticationFailed,
    404: ResourceNotFound,
    410: ResourceNotFound,
    409: VersionConflict,
    412: VersionConflict,
    429: RateLimited,
    502: ServerUnavailable,
    503: ServerUnavailable,
    504: ServerUnavailable,
}


def error_for(response: requests.Response, *, idempotent: bool, base: str = "") -> ServerError:
    """The typed error for an HTTP error response (never includes request bodies)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    issues = _issues(body)
    # the server's diagnostics stay in ``issues``: they can echo patient data (an id, a name)
    codes = sorted({str(i["code"]) for i in issues if i.get("code")})
    cls = _STATUS_ERRORS.get(response.status_code, ServerError)
    # 429 and 503 say the request was not processed; after a 502/504 it may have been
    retry_safe = idempotent if response.status_code in (502, 504) else None
    path = _path(response.url, base)
    if response.status_code == 409 and idempotent and response.request.method == "POST":
        # a transaction of conditional creates and fixed-id PUTs that met a concurrent write of
        # the same records (HAPI answers 409): a repeat matches what the other wrote
        retry_safe = True if path == "/" else retry_safe
    message = f"{response.request.method} {path}: HTTP {response.status_code}"
    if codes:
        message += f" ({', '.join(codes)})"
    if response.status_code == 413:
        message += (
            ": the body is larger than the server accepts; raise the server's request body "
            "limit (HFS: HFS_MAX_BODY_SIZE), then retry"
        )
    return cls(
        message,
        status=response.status_code,
        issues=issues,
        retry_safe=retry_safe,
        retry_after=_retry_after(response.headers.get("Retry-After")),
    )


def _path(url: str, base: str = "") -> str:
    """The URL's FHIR path without its query string or ids (queries carry identifiers, and an id
    can be chosen by whoever created the resource, so it may carry a name): ``/Media/{id}``.
    ``base``, the server's base URL, is cut off first when the URL starts with it."""
    url = url.split("?", 1)[0]
    if base and url.startswith(base):
        path = url[len(base) :]
    else:
        path = url.split("://", 1)[-1]
        path = path.split("/", 1)[1] if "/" in path else ""
    parts = [p for p in path.split("/") if p]
    out: list[str] = []
    expect = "type"
    for p in parts:
        if p.startswith("$") or p == "_history":
            out.append(p)
            expect = "id" if p == "_history" else "type"
        elif expect == "id":
            out.append("{id}")
            expect = "op"
        elif p[:1].isupper():
            out.append(p)
            expect = "id"
        elif not out and p == "metadata":
            out.append(p)
    return "/" + "/".join(out)


class FhirClient:
    """A FHIR REST client (R4 or R5, as the server's CapabilityStatement says, or as forced by
    ``fhir_version``). Thread-safe: each thread gets its own Session."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        basic: tuple[str, str] | None = None,
        auth: Auth | None = None,
        timeout: Timeout = (10.0, 120.0),
        verify: bool | str | None = None,
        retry: RetryPolicy | None = None,
        profile: ServerProfile | str | None = None,
        pool_size: int = 8,
        session_factory: Callable[[], requests.Session] | None = None,
        fhir_version: str | None = None,
        cache_dir: Path | None = None,
        accept_risks: Iterable[str] = (),
        audit: str | None = None,
        audit_token: str | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("the FHIR base URL must start with http:// or https://")
        self.base_url = base_url.rstrip("/") + "/"
        self.timeout = timeout
        # TLS verification is on unless the caller says otherwise; an injected session keeps
        # its own setting unless ``verify`` is given
        self.verify = verify
        self.retry = retry or RetryPolicy()
        if sum(x is not None for x in (token, basic, auth)) > 1:
            raise ValueError("give one of token, basic and auth")
        self.auth: Auth | None = (
            auth
            if auth is not None
            else BearerToken(token)
            if token
            else BasicAuth(*basic)
            if basic
            else None
        )
        self._pool_size = pool_size
        self._session_factory = session_factory
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()
        self._closed = False
        self._capabilities: dict[str, Any] | None = None
        self._version: FhirVersion | None = None
        # forced (a server whose CapabilityStatement says otherwise, or nothing), else the
        # CapabilityStatement's, on first use
        self._forced_version = get_version(fhir_version) if fhir_version is not None else None
        self._version = self._forced_version
        self._profile: ServerProfile | None = (
            PROFILES[profile] if isinstance(profile, str) else profile
        )
        self._forced = self._profile is not None
        self._report: ServerReport | None = None
        self._cache_dir = cache_dir
        self.accept_risks = frozenset(accept_risks)
        #: where AuditEvents go instead of this server (see :mod:`.audit`); None: the server
        self.audit = audit
        self._audit_token = audit_token
        self._choose = threading.Lock()
        #: whether the server takes a batch of reads (None: not tried yet)
        self._batch_reads: bool | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, base_url: str | None = None, **kwargs: Any
    ) -> FhirClient:
        """A client configured from :class:`~fhir_images.Settings` (the base URL, credentials,
        CA bundle and a forced server profile); ``base_url`` overrides the settings'."""
        url = base_url or settings.base_url
        if not url:
            raise InvalidSetting("no FHIR server: give --server or set FHIR_BASE_URL")
        if settings.server_profile and settings.server_profile not in PROFILES:
            raise InvalidSetting(f"FHIR_SERVER_PROFILE must be one of {', '.join(PROFILES)}")
        if settings.token:
            kwargs.setdefault("token", settings.token)
        elif settings.username:
            kwargs.setdefault("basic", (settings.username, settings.password or ""))
        if settings.ca_bundle:
            kwargs.setdefault("verify", settings.ca_bundle)
        if settings.server_profile:
            kwargs.setdefault("profile", settings.server_profile)
        kwargs.setdefault("cache_dir", settings.cache_dir)
        kwargs.setdefault("accept_risks", settings.accept_risks)
        kwargs.setdefault("audit", settings.audit)
        kwargs.setdefault("audit_token", settings.audit_token)
        if settings.fhir_version:
            kwargs.setdefault("fhir_version", settings.fhir_version)
        return cls(url, **kwargs)

    # ----------------------------------------------------------------- plumbing

    @property
    def session(self) -> requests.Session:
        """This thread's Session. One the caller's ``session_factory`` made is used as it is
        (its headers, adapters, TLS settings and auth are never changed); otherwise a Session
        with a connection pool sized for the workers and TLS verification on."""
        if self._closed:
            raise RuntimeError("the FhirClient is closed")
        s: requests.Session | None = getattr(self._local, "session", None)
        if s is None:
            if self._session_factory is not None:
                s = self._session_factory()
            else:
                s = requests.Session()
                adapter = HTTPAdapter(
                    pool_connections=1, pool_maxsize=self._pool_size, max_retries=0
                )
                s.mount("http://", adapter)
                s.mount("https://", adapter)
                s.verify = True if self.verify is None else self.verify
                s.headers["User-Agent"] = "fhir-images"
            with self._sessions_lock:
                self._sessions.append(s)
            self._local.session = s
        return s

    def close(self) -> None:
        """Close every Session this client opened (in any thread); the client is then unusable."""
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
            self._closed = True
        for s in sessions:
            s.close()

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            root = self.base_url.rstrip("/")
            if not (path == root or path.startswith((root + "/", root + "?"))):
                raise BadResponse("the server pointed outside its base URL")
            return path
        return urljoin(self.base_url, path.lstrip("/"))

    def request(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool | None = None,
        json_body: Any = None,
        data_factory: Callable[[], IO[bytes] | bytes | Iterable[bytes]] | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        stream: bool = False,
        ok: tuple[int, ...] = (),
        timeout: Timeout | None = None,
    ) -> requests.Response:
        """Send with retries as described in the module docstring; raise ServerError on failure.
        ``timeout`` (connect, read) overrides the client's for this call."""
        if idempotent is None:
            idempotent = method in ("GET", "HEAD", "PUT", "DELETE", "OPTIONS")
        url = self.url(path)
        session = self.session
        hdrs = dict(self.profile.extra_headers) if self._profile else {}
        if "Accept" not in session.headers or session.headers["Accept"] == "*/*":
            hdrs["Accept"] = FHIR_JSON
        hdrs.update(headers or {})
        if json_body is not None:
            hdrs.setdefault("Content-Type", FHIR_JSON)
        started = time.monotonic()
        attempt = 0
        renewed = False
        while True:
            if self.auth is not None:
                hdrs.update(self.auth.headers())
            body: Any = None
            if json_body is not None:
                body = json.dumps(json_body).encode()
            elif data_factory is not None:
                body = data_factory()
            try:
                response = session.request(
                    method,
                    url,
                    data=body,
                    headers=hdrs,
                    params=params,
                    timeout=timeout or self.timeout,
                    stream=stream,
                    verify=self.verify,
                )
                error: ServerError | None = None
                if (
                    response.status_code == 401
                    and not renewed
                    and self.auth is not None
                    and self.auth.renew()
                ):
                    renewed = True  # once: a fresh token, then the 401 stands
                    response.close()
                    continue
                if response.status_code >= 400 and response.status_code not in ok:
                    error = error_for(response, idempotent=idempotent, base=self.base_url)
            except requests.exceptions.ConnectionError as exc:
                sent = not _before_send(exc)
                error = ServerUnavailable(
                    f"{method} {_path(url, self.base_url)}: cannot connect ({type(exc).__name__})",
                    retry_safe=(not sent) or idempotent,
                )
            except requests.exceptions.Timeout as exc:
                connect = isinstance(exc, requests.exceptions.ConnectTimeout)
                error = ServerUnavailable(
                    f"{method} {_path(url, self.base_url)}: timed out",
                    retry_safe=connect or idempotent,
                )
            finally:
                if hasattr(body, "close"):
                    body.close()
            if error is None:
                return response
            attempt += 1
            elapsed = time.monotonic() - started
            if (
                not error.retry_safe
                or attempt >= self.retry.attempts
                or elapsed >= self.retry.total_seconds
            ):
                raise error
            pause = self.retry.delay(attempt, error.retry_after)
            if elapsed + pause > self.retry.total_seconds:
                raise error
            log.warning(
                "retrying %s %s after %s (attempt %d, %.2fs)",
                method,
                _path(url, self.base_url),
                type(error).__name__,
                attempt + 1,
                pause,
            )
            time.sleep(pause)

    def _json(self, response: requests.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            where = _path(response.url, self.base_url)
            raise BadResponse(
                f"{response.request.method} {where}: the answer is not JSON",
                status=response.status_code,
            ) from None

    # --------------------------------------------------------------- capability

    def capabilities(self) -> dict[str, Any]:
        """Fetch and check the CapabilityStatement once (FHIR 4.0.x, Media, Consent, Binary,
        transactions); choose the server profile from it unless one was given."""
        if self._capabilities is not None:
            return self._capabilities
        cs = self._json(self.request("GET", "metadata"))
        if not isinstance(cs, dict) or cs.get("resourceType") != "CapabilityStatement":
            raise IncompatibleServer("the server's /metadata is not a CapabilityStatement")
        version = self._forced_version or get_version(str(cs.get("fhirVersion", "")))
        rest = next((r for r in cs.get("rest", []) if r.get("mode") == "server"), None)
        if rest is None:
            raise IncompatibleServer("the CapabilityStatement has no server REST section")
        types = {r.get("type") for r in rest.get("resource", [])}
        missing = sorted({version.image_type, "Consent", "Binary", "Provenance"} - types)
        if missing:
            raise IncompatibleServer(f"the server does not support {', '.join(missing)}")
        interactions = {i.get("code") for i in rest.get("interaction", [])}
        if "transaction" not in interactions:
            raise IncompatibleServer("the server does not support transaction Bundles")
        self._version = version
        self._capabilities = cs
        return cs

    @property
    def version(self) -> FhirVersion:
        """The FHIR version module for this server (from its CapabilityStatement)."""
        if self._version is None:
            self.capabilities()
        assert self._version is not None
        return self._version

    @property
    def profile(self) -> ServerProfile:
        """The strategies to use on this server: forced, or from its probe report."""
        if self._profile is None:
            with self._choose:
                if self._profile is None:
                    from .probe import profile_from_report

                    report = self.report()
                    hint = software_hint(self.capabilities())
                    self._profile = profile_from_report(report, name=f"{hint} (probed)")
        return self._profile

    @property
    def audit_token(self) -> str | None:
        return self._audit_token

    def report(self, *, fresh: bool = False) -> ServerReport:
        """What a probe found this server does (cached per base URL; ``fresh`` probes again)."""
        from .probe import ProbeCache, report_for

        if self._report is None or fresh:
            cache = ProbeCache(self._cache_dir) if self._cache_dir else None
            self._report = report_for(self, cache, fresh=fresh)
        return self._report

    def require_safe(self) -> None:
        """Refuse (UnsafeServer) a server on which sensitive images must not be written: its
        probe found a risk that the caller has not accepted by name. A forced profile is the
        caller's own statement about the server, and skips the probe."""
        if self._forced:
            return
        from .._exceptions import UnsafeServer

        risks = [(n, why) for n, why in self.report().risks() if n not in self.accept_risks]
        if risks:
            raise UnsafeServer(
                "refusing to write images to this server: "
                + "; ".join(f"{why} [{n}]" for n, why in risks)
            )

    # --------------------------------------------------------------- resources

    def read(self, ref: str, *, timeout: Timeout | None = None) -> dict[str, Any]:
        data: dict[str, Any] = self._json(self.request("GET", ref, timeout=timeout))
        return data

    def read_many(self, refs: list[str]) -> dict[str, dict[str, Any]]:
        """Several resources read in one request (a batch of reads) where the server takes one,
        else one by one. Each resource is the one asked for (type and id checked); a resource
        the batch did not answer with is read on its own, so its error (not found, gone) is the
        one a read raises."""
        wanted = list(dict.fromkeys(refs))
        got: dict[str, dict[str, Any]] = {}
        if len(wanted) > 1 and self._batch_reads is not False:
            try:
                got = self._batch_read(wanted)
                self._batch_reads = True
            except ServerError as exc:
                if not exc.retry_safe:
                    self._batch_reads = False  # not taken here: reads one by one from now on
                got = {}
        for ref in wanted:
            if ref not in got:
                got[ref] = self.read(ref)
        return got

    def _batch_read(self, refs: list[str]) -> dict[str, dict[str, Any]]:
        bundle = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{"request": {"method": "GET", "url": ref}} for ref in refs],
        }
        data = self._json(self.request("POST", "", json_body=bundle, idempotent=True))
        answers = data.get("entry") if isinstance(data, dict) else None
        if not isinstance(answers, list) or data.get("resourceType") != "Bundle":
            raise BadResponse("the batch answer is not a Bundle")
        if len(answers) != len(refs):
            raise BadResponse("the batch answer does not have one entry per request")
        got: dict[str, dict[str, Any]] = {}
        for ref, answer in zip(refs, answers, strict=True):
            answer = answer if isinstance(answer, dict) else {}
            response = answer.get("response")
            status = str(response.get("status", "")) if isinstance(response, dict) else ""
            resource = answer.get("resource")
            if not status.startswith("200") or not isinstance(resource, dict):
                continue  # read on its own, for the error a read gives
            rtype, rid = ref.split("/", 1)
            if resource.get("resourceType") != rtype or str(resource.get("id")) != rid:
                raise BadResponse("the batch answered with another resource than was asked for")
            got[ref] = resource
        return got

    def vread(self, ref: str, version: str, *, timeout: Timeout | None = None) -> dict[str, Any]:
        data: dict[str, Any] = self._json(
            self.request("GET", f"{ref}/_history/{version}", timeout=timeout)
        )
        return data

    def create(self, resource: dict[str, Any], *, timeout: Timeout | None = None) -> dict[str, Any]:
        response = self.request(
            "POST",
            resource["resourceType"],
            json_body=resource,
            idempotent=False,
            headers={"Prefer": "return=representation"},
            timeout=timeout,
        )
        data: dict[str, Any] = self._json(response)
        return data

    def update(
        self,
        resource: dict[str, Any],
        *,
        if_match: str | None = None,
        replace_labels: bool = False,
        timeout: Timeout | None = None,
    ) -> dict[str, Any]:
        """PUT a resource. ``if_match`` is the version id read (a stale one raises
        VersionConflict). ``replace_labels`` makes the server take meta.security as sent."""
        headers = {"Prefer": "return=representation"}
        if if_match is not None:
            headers["If-Match"] = f'W/"{if_match}"'
        if replace_labels:
            headers.update(self.profile.labels.replace_header)
        ref = f"{resource['resourceType']}/{resource['id']}"
        data: dict[str, Any] = self._json(
            self.request("PUT", ref, json_body=resource, headers=headers, timeout=timeout)
        )
        return data

    def delete(self, ref: str, *, timeout: Timeout | None = None) -> None:
        self.request("DELETE", ref, ok=(404, 410), timeout=timeout)

    def search(
        self,
        resource_type: str,
        params: dict[str, str] | None = None,
        *,
        max_pages: int = 1000,
        timeout: Timeout | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Yield every matching resource (mode 'match'), following ``next`` links."""
        bundle = self._json(self.request("GET", resource_type, params=params, timeout=timeout))
        for _ in range(max_pages):
            for entry in bundle.get("entry", []):
                if entry.get("search", {}).get("mode", "match") == "match" and "resource" in entry:
                    yield entry["resource"]
            nxt = next(
                (link["url"] for link in bundle.get("link", []) if link.get("relation") == "next"),
                None,
            )
            if not nxt:
                return
            bundle = self._json(self.request("GET", nxt, timeout=timeout))

    def transaction(
        self,
        bundle: dict[str, Any],
        *,
        idempotent: bool | None = None,
        timeout: Timeout | None = None,
    ) -> dict[str, Any]:
        """POST a transaction (or batch) Bundle. It is retried on 502/504 only when every entry
        is a conditional create, GET, PUT or DELETE (so a repeat cannot duplicate anything)."""
        if idempotent is None:
            idempotent = all(
                e.get("request", {}).get("method") in ("GET", "PUT", "DELETE")
                or (
                    e.get("request", {}).get("method") == "POST"
                    and e.get("request", {}).get("ifNoneExist")
                )
                for e in bundle.get("entry", [])
            )
        data: dict[str, Any] = self._json(
            self.request("POST", "", json_body=bundle, idempotent=idempotent, timeout=timeout)
        )
        if data.get("resourceType") != "Bundle":
            raise BadResponse("the transaction answer is not a Bundle")
        return data

    def transaction_stream(
        self, body: Callable[[], Iterable[bytes]], *, idempotent: bool
    ) -> dict[str, Any]:
        """POST a transaction whose JSON is produced by ``body`` (called again on a retry), so
        that large content is streamed rather than held in memory."""
        response = self.request(
            "POST",
            "",
            idempotent=idempotent,
            data_factory=body,
            headers={"Content-Type": FHIR_JSON, "Prefer": "return=minimal"},
        )
        data: dict[str, Any] = self._json(response)
        if data.get("resourceType") != "Bundle":
            raise BadResponse("the transaction answer is not a Bundle")
        return data

    def patch(
        self,
        ref: str,
        operations: list[dict[str, Any]],
        *,
        if_match: str | None = None,
        answer: bool | None = None,
    ) -> dict[str, Any]:
        """JSON Patch a resource (with If-Match when a version is given); the resource as the
        server answers it. Not for a Binary (unless ``answer=True``): a Binary's answer would
        carry its bytes, so it is asked for none and whatever comes is not read ({})."""
        if answer is None:
            answer = not ref.startswith("Binary/")
        headers = {
            "Content-Type": "application/json-patch+json",
            "Prefer": "return=representation" if answer else "return=minimal",
        }
        if if_match is not None:
            headers["If-Match"] = f'W/"{if_match}"'
        response = self.request(
            "PATCH",
            ref,
            idempotent=if_match is not None,
            data_factory=lambda: json.dumps(operations).encode(),
            headers=headers,
            stream=not answer,
        )
        if not answer:
            response.close()  # a server that sends the Binary anyway: its bytes are not read
            return {}
        data: dict[str, Any] = self._json(response)
        return data

    # ---------------------------------------------------------------- binaries

    def write_binary(self, ref: str, path: Path, content_type: str) -> WrittenBinary | None:
        """Stream a file's raw bytes into an existing Binary (the server keeps its labels and
        securityContext). Only for servers with a binary write operation. The Binary as the
        server answers it after the write, without its bytes, when it answers with it (None
        otherwise); streamed, so an answer that carries the bytes costs no memory."""
        op = self.profile.binary_write.operation
        if op is None:
            raise IncompatibleServer("the server has no operation to write a Binary's bytes")
        response = self.request(
            "POST",
            f"{ref}/{op}",
            idempotent=True,  # the same bytes again: a repeat changes nothing
            data_factory=lambda: path.open("rb"),
            headers={
                "Content-Type": content_type,
                "Content-Length": str(path.stat().st_size),
                "Prefer": "return=representation",
            },
            stream=True,
        )
        got = response.headers.get("Content-Type", "").split(";")[0].strip()
        if got not in (FHIR_JSON, "application/json"):
            response.close()
            return None
        digest = hashlib.sha256()
        try:
            fields, with_bytes = _binary_json(response, digest.update)
        except BadResponse:
            return None  # the write is acknowledged; what it answered is not used
        return WrittenBinary(fields, digest.hexdigest() if with_bytes else stored_sha256(fields))

    def binary_meta(self, ref: str) -> dict[str, Any]:
        """A Binary without its bytes: ``meta`` (labels) and ``securityContext``. The answer is
        streamed, so a server that ignores ``_elements`` and sends the bytes costs time but
        not memory (they are decoded and dropped)."""
        response = self.request("GET", ref, params={"_elements": "securityContext"}, stream=True)
        return _binary_json(response, lambda piece: None)[0]

    def binary_whole(
        self, ref: str, on_bytes: Callable[[bytes], None]
    ) -> tuple[dict[str, Any], bool]:
        """A Binary read once as FHIR JSON, streamed: its elements but ``data`` (labels,
        securityContext), and whether the server sent its bytes inline, each decoded piece
        handed to ``on_bytes`` as it comes (memory stays bounded). A server may leave the
        bytes out of a JSON read (HAPI does above its inflation limit): False then, and the
        bytes are to be read by :meth:`iter_binary`. On any exception, what ``on_bytes`` got
        is not valid content."""
        response = self.request("GET", ref, headers={"Accept": FHIR_JSON}, stream=True)
        return _binary_json(response, on_bytes)

    def iter_binary(self, ref: str, content_type: str) -> Iterator[bytes]:
        """A Binary's raw bytes, streamed in chunks."""
        op = self.profile.binary_read.operation
        path = f"{ref}/{op}" if op else ref
        response = self.request("GET", path, headers={"Accept": content_type}, stream=True)
        with response:
            got = response.headers.get("Content-Type", "").split(";")[0].strip()
            if got in (FHIR_JSON, "application/json"):
                # a server that answers Binary reads only as FHIR JSON: decoded as it streams
                yield from BinaryJson(response.iter_content(_CHUNK))
                return
            yield from response.iter_content(_CHUNK)

    def download_binary(self, ref: str, dest: Path, content_type: str) -> int:
        """GET a Binary's raw bytes into a file, streamed; return the byte count."""
        size = 0
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            for chunk in self.iter_binary(ref, content_type):
                f.write(chunk)
                size += len(chunk)
        return size

    # ----------------------------------------------------------------- labels

    def meta(self, ref: str) -> dict[str, Any]:
        data = self._json(self.request("GET", f"{ref}/$meta"))
        return _meta_from_parameters(data)

    def meta_add(self, ref: str, security: list[dict[str, str]]) -> dict[str, Any]:
        return self._meta_op(ref, "$meta-add", security)

    def meta_delete(self, ref: str, security: list[dict[str, str]]) -> dict[str, Any]:
        return self._meta_op(ref, "$meta-delete", security)

    def _meta_op(self, ref: str, op: str, security: list[dict[str, str]]) -> dict[str, Any]:
        params = {
            "resourceType": "Parameters",
            "parameter": [{"name": "meta", "valueMeta": {"security": security}}],
        }
        data = self._json(self.request("POST", f"{ref}/{op}", json_body=params, idempotent=True))
        return _meta_from_parameters(data)


def _meta_from_parameters(data: Any) -> dict[str, Any]:
    if isinstance(data, dict) and data.get("resourceType") == "Parameters":
        for p in data.get("parameter", []):
            if p.get("name") in ("return", "meta") and "valueMeta" in p:
                meta: dict[str, Any] = p["valueMeta"]
                return meta
        return {}
    raise BadResponse("the $meta answer is not a Parameters resource")


def _binary_json(
    response: requests.Response, on_bytes: Callable[[bytes], None]
) -> tuple[dict[str, Any], bool]:
    """A streamed Binary answer as FHIR JSON: its elements but ``data``, and whether it had
    ``data``, whose decoded pieces go to ``on_bytes`` as they come."""
    with response:
        reader = BinaryJson(response.iter_content(_CHUNK), require_data=False)
        for piece in reader:
            on_bytes(piece)
        data = dict(reader.fields)
    data["resourceType"] = "Binary"
    return data, reader.has_data


@dataclass(frozen=True)
class WrittenBinary:
    """A Binary as a server answered the write of its bytes: its elements but ``data``, and
    the SHA-256 (hex) of the bytes it holds, where the answer tells (the bytes inline, or a
    hash the server computed as it stored them); None where it does not."""

    resource: dict[str, Any]
    sha256: str | None


#: HAPI states the SHA-256 of bytes it stores outside the resource in an extension on ``data``
_STORED_SHA256 = "http://hapifhir.io/fhir/StructureDefinition/externalized-binary-hash-sha256"


def stored_sha256(binary: dict[str, Any]) -> str | None:
    """The SHA-256 (hex) a server states for the bytes of a Binary it stores outside the
    resource (HAPI), else None."""
    data = binary.get("_data")
    extensions = data.get("extension") if isinstance(data, dict) else None
    for ext in extensions if isinstance(extensions, list) else []:
        if isinstance(ext, dict) and ext.get("url") == _STORED_SHA256:
            value = ext.get("valueString")
            if isinstance(value, str) and len(value) == 64:
                return value.lower()
    return None


def relative_reference(location: str) -> str:
    """'http://x/fhir/Binary/5/_history/1' -> 'Binary/5' (from a Location header)."""
    parts = location.split("?")[0].rstrip("/").split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return "/".join(parts[-2:])


def _before_send(exc: requests.exceptions.ConnectionError) -> bool:
    """True when the connection failed before any of the request was sent."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    from urllib3.exceptions import MaxRetryError, NameResolutionError, NewConnectionError

    inner: BaseException | None = exc.args[0] if exc.args else None
    if isinstance(inner, MaxRetryError):
        inner = inner.reason
    return isinstance(inner, (NewConnectionError, NameResolutionError, ConnectionRefusedError))
