"""The gateway: a FHIR proxy that labels images as they are written and decides every image
and Binary it hands out, in front of any server.

Invariants:

* nothing reaches the server before the caller's token is verified, the request screened
  (:mod:`.screen`) and the scope found to cover it; a refusal forwards nothing;
* every image (R4 Media, R5 DocumentReference) and Binary in an answer is decided by the
  disclosure rules :func:`~fhir_images.policy.decide_one` applies for ``disclose``: the same
  engine, the same record (the image, its Binary's labels and securityContext, its Consents,
  approvals); withheld ones are removed from bundles (their ``total`` removed with them) and a
  read of one answers 403 with the one code ``withheld``, whatever the reason, and the same
  answer for an image that does not exist;
* every release is audited (IHE BALP, through the configured audit trail) before any of it
  goes out; if the audit cannot be written nothing goes out (503);
* images, Binaries and transactions holding them are labelled by the policy pack before they
  reach the server, failing closed as the hook does; the labels applied are named in the
  ``X-Fhir-Images-Labels`` header of the answer; a raw Binary upload is streamed to the server
  as a labelled FHIR Binary, restrictively labelled unless ``X-Security-Context`` names the
  image it belongs to;
* other resources pass through unchanged, streamed;
* the server's credentials stay here: the caller's Authorization header is never forwarded,
  and only a short allow-list of headers is;
* logs name interactions and resource types, never ids, queries, tokens or content.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import httpx
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from .. import _codes as c
from .._approvals import approvals_for
from .._exceptions import FhirImagesError, LabelError, ResourceNotFound, ServerError
from .._hook import Labeller, _no_duplicate_keys
from .._lifecycle import _audit_release, _record, disclosure_audit
from ..fhir import FhirClient, ImageView, Labels, Repository
from ..fhir.audit import AuditTrail, audit_trail
from ..fhir.auth import BasicAuth, BearerToken
from ..fhir.labels import plan_label_change
from ..fhir.views import BinaryView, ConsentView, PatientView
from ..policy import (
    DisclosureDecision,
    DisclosureRequest,
    ImageRecord,
    Policy,
    Verdict,
    decide_one,
    get_policy,
)
from .screen import Refused, Route, Screen, parse_query, screen, screen_params
from .tokens import Caller, TokenError, TokenVerifier

__all__ = ["Gateway", "GatewayLimits"]

log = logging.getLogger("fhir_images.gateway")

#: loggers whose lines carry URLs (with ids and search parameters) or request lines: nothing
#: under WARNING from them gets out, whatever the logging configuration
URL_LOGGERS = ("httpx", "httpcore", "urllib3.connectionpool", "uvicorn.access")


def _below_warning(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def quiet_url_loggers() -> None:
    for name in URL_LOGGERS:
        logger = logging.getLogger(name)
        if _below_warning not in logger.filters:
            logger.addFilter(_below_warning)


FHIR_JSON = "application/fhir+json"
LABELS_HEADER = "X-Fhir-Images-Labels"
CONTEXT_HEADER = "X-Security-Context"
WITHHELD = "withheld"
_RESTRICTIVE = [
    c.conf(c.Confidentiality.V).as_coding(),
    c.HUAPRV.as_coding(),
    c.NORDSCLCDS.as_coding(),
    c.NOREUSE.as_coding(),
]
_FORWARD_REQUEST = ("if-match", "if-none-match", "if-modified-since", "prefer", "x-request-id")
_FORWARD_RESPONSE = ("etag", "last-modified", "location", "content-location", "x-request-id")
#: a search whose answer's ``total`` is not wanted: servers that count by default (HAPI) need
#: not (the count can cost as much as the search)
_NO_TOTAL = ("_total", "none")
_WRITE_LETTER = {"POST": "c", "PUT": "u", "DELETE": "d", "PATCH": "u"}


@dataclass(frozen=True)
class GatewayLimits:
    """Bytes the gateway reads whole (FHIR JSON it must change or decide), and bytes it streams
    (raw Binary uploads); anything over is refused with an OperationOutcome."""

    max_json: int = 16 << 20
    max_answer: int = 64 << 20
    max_binary: int = 256 << 20
    max_form: int = 64 << 10
    lookups: int = 16
    #: the Binaries of an answer are looked up in at most this many searches at once, each of
    #: at least ``binary_search_min`` ids (fewer only for the last)
    binary_searches: int = 4
    binary_search_min: int = 5


class _Problem(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def outcome(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    severity = "information" if status < 400 else "error"
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": message}],
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=FHIR_JSON)


def _withheld() -> _Problem:
    return _Problem(403, "forbidden", f"{WITHHELD}: not released to this requester")


class Gateway:
    """The ASGI application. ``client`` reaches the server with the gateway's own credentials
    (the record look-ups and audits); ``transport`` is the upstream's for the proxied traffic
    (tests give a mock)."""

    def __init__(
        self,
        client: FhirClient,
        verifier: TokenVerifier,
        *,
        public_url: str,
        policy: str | Policy = "default",
        limits: GatewayLimits | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        audit: AuditTrail | None = None,
    ) -> None:
        self.client = client
        self.verifier = verifier
        self.public_url = public_url.rstrip("/")
        self.policy = get_policy(policy)
        self.limits = limits or GatewayLimits()
        self._transport = transport
        self._trail = audit
        self._http: httpx.AsyncClient | None = None
        self._screen: Screen | None = None
        self._lookups = asyncio.Semaphore(self.limits.lookups)
        self.labeller = Labeller(client, self.policy)
        self.records = Repository(client)
        self.upstream = client.base_url.rstrip("/")
        quiet_url_loggers()

    # ---------------------------------------------------------------- life cycle

    async def start(self) -> None:
        caps = await asyncio.to_thread(self.client.capabilities)
        types = {
            str(r.get("type"))
            for rest in caps.get("rest", []) or []
            if isinstance(rest, dict)
            for r in rest.get("resource", []) or []
            if isinstance(r, dict)
        }
        version = await asyncio.to_thread(lambda: self.client.version)
        self._screen = Screen(frozenset(types), version.image_type)
        if self._trail is None:
            self._trail = await asyncio.to_thread(audit_trail, self.client)
        # the record look-ups run in worker threads (the FHIR client is synchronous): as many
        # as may run at once, not the interpreter's default of a few
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(self.limits.lookups + 4, "gateway"))
        self._http = httpx.AsyncClient(
            transport=self._transport,
            timeout=httpx.Timeout(120.0, connect=10.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            follow_redirects=False,
        )

    async def stop(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    try:
                        await self.start()
                    except Exception as exc:
                        log.error("gateway: cannot start (%s)", type(exc).__name__)
                        await send({"type": "lifespan.startup.failed", "message": "no upstream"})
                        return
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.stop()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if self._http is None:
            await self.start()
        request = Request(scope, receive)
        try:
            response = await self.handle(request)
        except _Problem as exc:
            response = outcome(exc.status, exc.code, str(exc))
        except Refused as exc:
            response = outcome(exc.status, exc.code, str(exc))
        except httpx.HTTPError as exc:
            log.warning("gateway: the server did not answer (%s)", type(exc).__name__)
            response = outcome(502, "transient", "the FHIR server did not answer")
        except FhirImagesError as exc:
            log.warning("gateway: %s", type(exc).__name__)
            response = outcome(
                503, "transient", "a decision could not be made now: nothing was released"
            )
        await response(scope, receive, send)

    # ------------------------------------------------------------------ dispatch

    async def handle(self, request: Request) -> Response:
        if request.url.path == "/health" and request.method == "GET":
            return JSONResponse({"status": "ok"})
        try:
            caller = self.verifier.caller(request.headers.get("authorization"))
        except TokenError as exc:
            return outcome(
                exc.status,
                "login" if exc.status == 401 else "forbidden",
                str(exc),
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        assert self._screen is not None
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        raw_path = raw_path.split(b"?", 1)[0]
        route = screen(
            request.method, raw_path, request.scope.get("query_string", b""), self._screen
        )
        self._check_accept(request, route)
        self._check_scope(caller, route)
        log.info("gateway: %s %s", route.interaction, route.resource_type or "-")
        if route.interaction == "explain":
            return await self._explain(caller, route)
        if route.interaction == "metadata":
            return await self._forward_json(route, {}, filtered=False)
        if route.interaction == "search-post":
            params = parse_query(await self._read(request, self.limits.max_form, "form"))
            clean, involves = screen_params(
                route.resource_type, params, self._screen, images_possible=False
            )
            route = replace(route, interaction="search", params=clean, involves_images=involves)
        if route.interaction in ("read", "vread") and route.resource_type == "Binary":
            return await self._binary_read(request, caller, route)
        if route.interaction == "binary-access-read":
            return await self._image_bytes(caller, route)
        if route.interaction in (
            "read",
            "vread",
            "search",
            "history-instance",
            "history-type",
            "page",
        ):
            return await self._read_interaction(caller, route)
        if route.interaction == "transaction":
            return await self._transaction(request, caller)
        if route.resource_type in self._screen.hidden or route.resource_type == "Consent":
            return await self._write_hidden(request, caller, route)
        if route.resource_type and caller.patient_only(route.resource_type, str(route.permission)):
            return await self._patient_write(request, caller, route)
        return await self._pass_write(request, route)

    async def _patient_write(self, request: Request, caller: Caller, route: Route) -> Response:
        """A write under ``patient/`` scopes only: of that patient's resources, checked (so the
        body is read, bounded, rather than streamed)."""
        rtype = str(route.resource_type)
        if request.method == "DELETE":
            try:
                current = await asyncio.to_thread(self.client.read, f"{rtype}/{route.id}")
            except ResourceNotFound:
                current = {}
            if not _of_patient(current, caller.patient):
                raise _Problem(
                    403, "forbidden", "patient/ scopes allow writes of that patient only"
                )
            return await self._pass_write(request, route)
        resource = await self._json_body(request)
        if not _of_patient(resource, caller.patient):
            raise _Problem(403, "forbidden", "patient/ scopes allow writes of that patient only")
        return await self._pass_write(request, route, json.dumps(resource).encode())

    def _check_accept(self, request: Request, route: Route) -> None:
        accept = request.headers.get("accept", "*/*").lower()
        if route.resource_type == "Binary" or route.interaction == "binary-access-read":
            return
        if "json" not in accept and "*/*" not in accept:
            raise Refused(406, "not-supported", "Accept: only FHIR JSON is offered")

    def _check_scope(self, caller: Caller, route: Route) -> None:
        if route.interaction in ("metadata", "transaction"):
            return  # metadata is open to any verified caller; transactions, per entry
        if route.interaction == "explain":
            if not caller.admin:
                raise Refused(403, "forbidden", "the explain operation needs the admin scope")
            return
        letter = route.permission or "r"
        if route.resource_type is None:
            if not any(letter in s.permissions for s in caller.scopes):
                raise Refused(403, "forbidden", "no scope allows searches")
            return
        if not caller.allowed(route.resource_type, letter):
            raise Refused(
                403, "forbidden", f"no scope allows this ({letter}) on {route.resource_type}"
            )
        if route.interaction.startswith("conditional-") and caller.patient_only(
            route.resource_type, letter
        ):
            raise Refused(403, "forbidden", "patient/ scopes do not allow conditional writes")

    # -------------------------------------------------------------------- upstream

    async def _upstream_headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": FHIR_JSON, "Accept-Encoding": "identity"}
        auth = self.client.auth
        if isinstance(auth, BearerToken | BasicAuth):
            headers.update(auth.headers())
        elif auth is not None:
            headers.update(await asyncio.to_thread(auth.headers))
        headers.update(extra or {})
        return headers

    def _url(self, route: Route) -> str:
        return f"{self.upstream}/{route.path}" if route.path else f"{self.upstream}/"

    async def _read(self, request: Request, limit: int, what: str) -> bytes:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _Problem(413, "too-long", f"the {what} is over the gateway's limit")
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > limit:
                raise _Problem(413, "too-long", f"the {what} is over the gateway's limit")
        return bytes(data)

    async def _json_body(self, request: Request) -> dict[str, Any]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in (FHIR_JSON, "application/json"):
            raise _Problem(415, "not-supported", "Content-Type: only FHIR JSON is offered")
        body = _parse_json(await self._read(request, self.limits.max_json, "request body"), "")
        if not isinstance(body, dict):
            raise _Problem(400, "invalid", "the request body must be a FHIR resource")
        return body

    async def _send(
        self,
        method: str,
        route: Route,
        *,
        params: Iterable[tuple[str, str]] = (),
        headers: dict[str, str] | None = None,
        content: bytes | AsyncIterator[bytes] | None = None,
        url: str | None = None,
    ) -> httpx.Response:
        assert self._http is not None
        req = self._http.build_request(
            method,
            url or self._url(route),
            params=list(params),
            headers=await self._upstream_headers(headers),
            content=content,
        )
        return await self._http.send(req, stream=True)

    async def _answer_json(self, response: httpx.Response) -> Any:
        data = bytearray()
        try:
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > self.limits.max_answer:
                    raise _Problem(
                        400,
                        "too-costly",
                        "the answer is too large to decide: ask for less (_count)",
                    )
        finally:
            await response.aclose()
        if not data:
            return None
        return _parse_json(bytes(data), "the server's answer")

    def _response_headers(self, response: httpx.Response) -> dict[str, str]:
        out = {}
        for name in _FORWARD_RESPONSE:
            value = response.headers.get(name)
            if value is not None:
                out[name] = self._public(value)
        return out

    def _public(self, url: str) -> str:
        if url == self.upstream or url.startswith((self.upstream + "/", self.upstream + "?")):
            return self.public_url + url[len(self.upstream) :]
        return url

    def _json(self, body: Any, status: int, headers: dict[str, str]) -> Response:
        return Response(
            json.dumps(body).encode(), status_code=status, headers=headers, media_type=FHIR_JSON
        )

    # ------------------------------------------------------------------- reads

    async def _forward_json(
        self, route: Route, headers: dict[str, str], *, filtered: bool
    ) -> Response:
        response = await self._send("GET", route, params=route.params)
        out_headers = self._response_headers(response)
        if not filtered and route.interaction in ("read", "vread", "metadata"):
            return StreamingResponse(
                _closing(response),
                status_code=response.status_code,
                headers=out_headers,
                media_type=response.headers.get("content-type", FHIR_JSON),
            )
        body = await self._answer_json(response)
        if isinstance(body, dict) and body.get("resourceType") == "Bundle":
            _rewrite_links(body, self._public)
        return self._json(body, response.status_code, out_headers)

    async def _read_interaction(self, caller: Caller, route: Route) -> Response:
        assert self._screen is not None
        single = route.interaction in ("read", "vread")
        if not route.involves_images and not (
            route.resource_type and caller.patient_only(route.resource_type, "r")
        ):
            return await self._forward_json(route, {}, filtered=False)
        params = route.params
        if route.interaction == "search" and route.involves_images:
            params = (*params, _NO_TOTAL)  # removed from the answer anyway: not counted at all
        response = await self._send("GET", route, params=params)
        headers = self._response_headers(response)
        status = response.status_code
        body = await self._answer_json(response)
        if single and route.resource_type in self._screen.hidden:
            if status in (404, 410) or not isinstance(body, dict):
                raise _withheld()  # the same answer as for an image that is withheld
            if status >= 400:
                return self._json(body, status, headers)
            released = await self._decide(caller, [body], history=route.interaction == "vread")
            if not released:
                raise _withheld()
            return self._json(body, status, headers)
        if not isinstance(body, dict) or body.get("resourceType") != "Bundle" or status >= 400:
            if (
                single
                and isinstance(body, dict)
                and status < 400
                and not (
                    self._in_scope(caller, body) and await self._names_only_shown(caller, [body])
                )
            ):
                raise _withheld()
            return self._json(body, status, headers)
        await self._filter_bundle(caller, body, history=route.interaction.startswith("history"))
        _rewrite_links(body, self._public)
        return self._json(body, status, headers)

    def _in_scope(self, caller: Caller, resource: dict[str, Any]) -> bool:
        rtype = str(resource.get("resourceType", ""))
        if rtype == "OperationOutcome":
            return True
        if not (caller.allowed(rtype, "r") or caller.allowed(rtype, "s")):
            return False
        if caller.patient_only(rtype, "r") or caller.patient_only(rtype, "s"):
            return _of_patient(resource, caller.patient)
        return True

    async def _filter_bundle(
        self, caller: Caller, bundle: dict[str, Any], *, history: bool
    ) -> None:
        assert self._screen is not None
        hidden = self._screen.hidden
        entries = [e for e in bundle.get("entry", []) or [] if isinstance(e, dict)]
        kept: list[dict[str, Any]] = []
        to_decide: list[dict[str, Any]] = []
        for entry in entries:
            resource = entry.get("resource")
            if not isinstance(resource, dict):
                # a deleted version in a history names the resource: of an image, it is dropped
                named = (
                    str(entry.get("fullUrl", ""))
                    + " "
                    + str((entry.get("request") or {}).get("url", ""))
                )
                if not any(f"{t}/" in named for t in hidden):
                    kept.append(entry)
                continue
            if not self._in_scope(caller, resource):
                continue
            if resource.get("resourceType") in hidden:
                to_decide.append(resource)
            kept.append(entry)
        released = await self._decide(caller, to_decide, history=history) if to_decide else []
        keep_ids = {id(r) for r, _ in released}
        consents = [
            e["resource"]
            for e in kept
            if isinstance(e.get("resource"), dict)
            and e["resource"].get("resourceType") == "Consent"
        ]
        shown = await asyncio.gather(*(self._names_only_shown(caller, [x]) for x in consents))
        keep_ids |= {id(x) for x, ok in zip(consents, shown, strict=True) if ok}
        bundle["entry"] = [
            e
            for e in kept
            if not isinstance(e.get("resource"), dict)
            or e["resource"].get("resourceType") not in (*hidden, "Consent")
            or id(e["resource"]) in keep_ids
        ]
        if not bundle["entry"]:
            del bundle["entry"]
        bundle.pop("total", None)

    # --------------------------------------------------------------- decisions

    def _disclosure_request(self, caller: Caller) -> DisclosureRequest | None:
        if caller.purpose is None or caller.role is None:
            return None
        try:
            return DisclosureRequest(
                purpose=caller.purpose,
                requester=caller.requester,
                role=caller.role,
                clearance=caller.clearance,
            )
        except ValidationError:
            return None

    async def _image_of(
        self, resource: dict[str, Any], history: bool
    ) -> tuple[ImageView, BinaryView | None] | None:
        """The image a resource in an answer stands for (an image, or the image a Binary names
        as its securityContext), with the Binary's own view; None when there is none."""
        version = self.client.version
        async with self._lookups:
            if resource.get("resourceType") == "Binary":
                view = version.binary(resource)
                context = view.security_context
                if context is None or not context.startswith(version.image_type + "/"):
                    return None
                try:
                    return await asyncio.to_thread(self.records.image, context), view
                except ResourceNotFound:
                    return None
            image = version.image(resource)
            if history:
                # the labels of the version handed out count as well as the current one's
                try:
                    current = await asyncio.to_thread(self.records.image, image.ref)
                except ResourceNotFound:
                    return None
                image = replace(current, labels=current.labels | image.labels)
            return image, None

    async def _records(
        self, resources: list[dict[str, Any]], history: bool
    ) -> list[ImageRecord | None]:
        """Each resource's image as the disclosure rules see it (``_record``, as ``disclose``
        reads it): the Consents of them all (one search per 50 images) and their Binaries'
        labels looked up at the same time."""
        images = await asyncio.gather(*(self._image_of(r, history) for r in resources))
        refs = sorted({found[0].ref for found in images if found is not None})
        # both to the end, whatever happens to the other: an error is raised (nothing released)
        # only once neither is still running
        of_consents, binaries = await asyncio.gather(
            self._consents(refs),
            self._binaries([b for b in (self.records.binary_of(f[0]) for f in images if f) if b]),
            return_exceptions=True,
        )
        if isinstance(of_consents, BaseException):
            raise of_consents
        if isinstance(binaries, BaseException):
            raise binaries
        consents, error = of_consents

        async def one(
            resource: dict[str, Any], found: tuple[ImageView, BinaryView | None] | None
        ) -> ImageRecord | None:
            if found is None:
                return None
            image, own = found
            known = (consents.get(image.ref, []), error)
            binary = self.records.binary_of(image)
            if binary is None or binary in binaries:  # nothing left to read: no thread needed
                record = _record(self.records, image, known, binaries)
            else:  # read now, one by one, as ``disclose`` reads it
                async with self._lookups:
                    record = await asyncio.to_thread(_record, self.records, image, known, binaries)
            if own is None:
                return record
            if record.binary is None or record.binary.ref != own.ref:
                return None  # the image names other bytes
            return replace(record, binary=_with_labels(record.binary, own.labels))

        return list(
            await asyncio.gather(*(one(r, f) for r, f in zip(resources, images, strict=True)))
        )

    async def _consents(self, refs: list[str]) -> tuple[dict[str, list[ConsentView]], str | None]:
        """The Consents of the images, one search per 50 of them (run at once), and the error
        that stopped any of them (then every image is decided as one whose Consents are not
        known)."""

        async def chunk(part: list[str]) -> dict[str, list[ConsentView]]:
            async with self._lookups:
                return await asyncio.to_thread(self.records.consents_for_images, part)

        found = await asyncio.gather(
            *(chunk(refs[i : i + 50]) for i in range(0, len(refs), 50)), return_exceptions=True
        )
        consents: dict[str, list[ConsentView]] = {}
        error: str | None = None
        for result in found:
            if isinstance(result, ServerError):
                error = type(result).__name__
            elif isinstance(result, BaseException):
                raise result
            else:
                consents.update(result)
        return consents, error

    async def _binaries(self, refs: list[str]) -> dict[str, BinaryView]:
        """The labels and securityContext of many Binaries without their bytes (``_elements``),
        in up to ``binary_searches`` searches run at once (a server's search by many ids can
        cost more than linearly in them), at most 50 ids a search; each a bounded read, so a
        server that sends the bytes anyway costs at most the answer limit. What is not found
        here (a search that failed included) is read one by one later, as ``disclose`` reads
        it."""
        at_once = asyncio.Semaphore(max(1, self.limits.binary_searches))

        async def search(part: list[str]) -> dict[str, BinaryView]:
            async with at_once:
                return await self._binary_search(part)

        parts = _split(
            sorted(set(refs)), self.limits.binary_searches, self.limits.binary_search_min
        )
        found: dict[str, BinaryView] = {}
        for views in await asyncio.gather(*(search(part) for part in parts)):
            found.update(views)
        return found

    async def _binary_search(self, refs: list[str]) -> dict[str, BinaryView]:
        """One search of :meth:`_binaries`; an error finds nothing."""
        version = self.client.version
        wanted = set(refs)
        ids = [ref.split("/", 1)[1] for ref in refs]
        params = [("_id", ",".join(ids)), ("_elements", "securityContext"), _NO_TOTAL]
        params.append(("_count", str(len(ids))))
        try:
            async with self._lookups:
                response = await self._send("GET", Route("search", "Binary"), params=params)
                if response.status_code != 200:
                    await response.aclose()
                    return {}
                bundle = await self._answer_json(response)
        except (httpx.HTTPError, _Problem):
            return {}
        found: dict[str, BinaryView] = {}
        for entry in (bundle or {}).get("entry", []) or []:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(resource, dict) and resource.get("resourceType") == "Binary":
                resource.pop("data", None)
                view = version.binary(resource)
                if view.ref in wanted:
                    found[view.ref] = view
        return found

    async def _names_only_shown(self, caller: Caller, resources: list[dict[str, Any]]) -> bool:
        """Whether every image these resources (Consents) name would be released to the caller:
        a Consent shows that its images exist and what was agreed about them. Decided as a
        read of each image would be, but nothing is released (so nothing audited)."""
        if not resources or resources[0].get("resourceType") != "Consent":
            return True
        version = self.client.version
        named = sorted({ref for r in resources for ref in version.consent(r).images})
        if not named:
            return True
        req = self._disclosure_request(caller)
        if req is None:
            return False

        async def read(ref: str) -> ImageView:
            async with self._lookups:
                return await asyncio.to_thread(self.records.image, ref)

        found = await asyncio.gather(*(read(ref) for ref in named), return_exceptions=True)
        images: list[ImageView] = []
        for image in found:
            if isinstance(image, ResourceNotFound):
                return False
            if isinstance(image, BaseException):
                raise image
            images.append(image)
        records = await self._records([i.raw for i in images], False)
        now = datetime.now(UTC)
        for record in records:
            if record is None or (
                caller.patient_only(version.image_type, "r")
                and record.image.subject != caller.patient
            ):
                return False
            _, decision = await self._decide_one(record, req, now)
            if decision.verdict is not Verdict.RELEASE:
                return False
        return True

    async def _decide(
        self, caller: Caller, resources: list[dict[str, Any]], *, history: bool = False
    ) -> list[tuple[dict[str, Any], ImageRecord]]:
        """The resources (images and Binaries) released to the caller, each with its record,
        audited; the rest are withheld. Raises (nothing released) when the audit cannot be
        written."""
        req = self._disclosure_request(caller)
        if req is None:
            return []
        found = await self._records(resources, history)
        now = datetime.now(UTC)
        released: list[tuple[dict[str, Any], ImageRecord, DisclosureDecision]] = []
        for resource, record in zip(resources, found, strict=True):
            if record is None or record.image.subject is None:
                continue
            if caller.patient_only(self.client.version.image_type, "r") and (
                record.image.subject != caller.patient
            ):
                continue
            decision = await self._decide_one(record, req, now)
            if decision[1].verdict is Verdict.RELEASE:
                released.append((resource, decision[0], decision[1]))
        if released:
            await self._audit(released, req)
        return [(r, record) for r, record, _ in released]

    async def _decide_one(
        self, record: ImageRecord, req: DisclosureRequest, now: datetime
    ) -> tuple[ImageRecord, DisclosureDecision]:
        decision = decide_one(record, req, now=now)
        if decision.verdict is Verdict.APPROVE:
            approvals = await asyncio.to_thread(approvals_for, self.client, record.ref)
            record = replace(record, approvals=approvals)
            decision = decide_one(record, req, now=now)
        return record, decision

    async def _audit(
        self,
        released: list[tuple[dict[str, Any], ImageRecord, DisclosureDecision]],
        req: DisclosureRequest,
    ) -> None:
        """Audit the release before anything goes out, with the AuditEvents ``disclose`` writes:
        per patient, one naming every image released without an approval (BALP allows several
        entities), and one per approved image, its approval marked used as ``disclose`` does."""
        assert self._trail is not None
        by_patient: dict[str, list[tuple[ImageRecord, DisclosureDecision]]] = {}
        seen: set[str] = set()
        for _, record, decision in released:
            if record.ref in seen:
                continue  # an image and its Binary in one answer: one release
            seen.add(record.ref)
            by_patient.setdefault(str(record.image.subject), []).append((record, decision))
        trail = self._trail
        try:
            for patient, items in by_patient.items():
                plain = [(r, d) for r, d in items if d.approval is None]
                approved = [(r, d) for r, d in items if d.approval is not None]
                if plain:  # one AuditEvent naming every image released to this patient's record
                    events = [
                        disclosure_audit(r, req, patient, client=self.client, validate=i == 0)
                        for i, (r, _) in enumerate(plain)
                    ]
                    await asyncio.to_thread(trail.record, [_merged(events)])
                if approved:  # each with its approver, and the approval marked used
                    await asyncio.to_thread(
                        _audit_release, self.client, trail, approved, req, patient
                    )
        except FhirImagesError as exc:
            log.error("gateway: release not audited, so not made (%s)", type(exc).__name__)
            known = await asyncio.to_thread(_exists, self.records, req.requester)
            if known is False:  # the audit names the requester: a server may insist they exist
                raise _Problem(
                    403,
                    "forbidden",
                    "fhirUser: the requester the token names is not on the server, so a release "
                    "to them cannot be audited: record them first",
                ) from None
            raise _Problem(
                503, "transient", "the release could not be audited, so nothing was released"
            ) from None

    # --------------------------------------------------------------- Binaries

    async def _binary_read(self, request: Request, caller: Caller, route: Route) -> Response:
        ref = f"Binary/{route.id}"
        try:
            meta = await asyncio.to_thread(self.client.binary_meta, ref)
        except ResourceNotFound:
            raise _withheld() from None
        meta["id"] = route.id
        released = await self._decide(caller, [meta], history=route.interaction == "vread")
        if not released:
            raise _withheld()
        view = self.client.version.binary(meta)
        ctype = view.content_type or released[0][1].image.content_type
        accept = request.headers.get("accept", "").lower()
        if "json" in accept or route.interaction == "vread":
            response = await self._send("GET", route, params=route.params)
            return StreamingResponse(
                _closing(response),
                status_code=response.status_code,
                headers=self._response_headers(response),
                media_type=FHIR_JSON,
            )
        return self._raw_bytes(ref, ctype)

    def _raw_bytes(self, ref: str, ctype: str | None) -> Response:
        ctype = ctype or "application/octet-stream"
        # the client's own reader: raw where the server gives raw bytes, decoded from FHIR
        # JSON as it streams where it does not; a sync iterator, run in a worker thread
        return StreamingResponse(self.client.iter_binary(ref, ctype), media_type=ctype)

    async def _image_bytes(self, caller: Caller, route: Route) -> Response:
        ref = f"{route.resource_type}/{route.id}"
        try:
            image = await asyncio.to_thread(self.records.image, ref)
        except ResourceNotFound:
            raise _withheld() from None
        released = await self._decide(caller, [image.raw])
        binary = self.records.binary_of(image)
        if not released or binary is None:
            raise _withheld()
        return self._raw_bytes(binary, image.content_type)

    # ------------------------------------------------------------------ explain

    async def _explain(self, caller: Caller, route: Route) -> Response:
        params = dict(route.params)
        try:
            req = DisclosureRequest(
                purpose=params.get("purpose", ""),
                requester=params.get("requester", ""),
                role=params.get("role", ""),
                clearance=params.get("clearance", "N"),
            )
        except ValidationError as exc:
            fields = ", ".join(sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]}))
            raise _Problem(
                400, "invalid", f"$explain needs purpose, requester, role (and clearance): {fields}"
            ) from None
        ref = f"{route.resource_type}/{route.id}"
        try:
            image = await asyncio.to_thread(self.records.image, ref)
        except ResourceNotFound:
            raise _Problem(404, "not-found", "no such image") from None
        record = await asyncio.to_thread(_record, self.records, image)
        record, decision = await self._decide_one(record, req, datetime.now(UTC))
        parameter: list[dict[str, Any]] = [
            {"name": "verdict", "valueCode": decision.verdict.value},
            {"name": "confidentiality", "valueCode": decision.confidentiality},
        ]
        parameter += [{"name": "reason", "valueString": r} for r in decision.reasons]
        parameter += [
            {"name": "label", "valueCoding": {"system": s, "code": code}}
            for s, code in record.labels
        ]
        parameter += [
            {"name": "consent", "valueReference": {"reference": x.ref}} for x in record.consents
        ]
        return self._json({"resourceType": "Parameters", "parameter": parameter}, 200, {})

    # ------------------------------------------------------------------- writes

    async def _pass_write(
        self, request: Request, route: Route, body: bytes | None = None
    ) -> Response:
        """Another resource type: forwarded as it came (streamed, bounded), or ``body``."""
        headers = {k: v for k, v in request.headers.items() if k in _FORWARD_REQUEST}
        ctype = request.headers.get("content-type")
        if ctype:
            headers["Content-Type"] = ctype
        if "if-none-exist" in request.headers:
            assert self._screen is not None
            clean, _ = screen_params(
                route.resource_type,
                parse_query(request.headers["if-none-exist"].encode()),
                self._screen,
                images_possible=False,
            )
            headers["If-None-Exist"] = urlencode(clean)  # re-encoded: no '&' smuggled in
        content: bytes | AsyncIterator[bytes] | None = body
        if body is None and request.method != "DELETE":
            content = self._bounded(request)
        response = await self._send(
            request.method, route, params=route.params, headers=headers, content=content
        )
        return StreamingResponse(
            _closing(response),
            status_code=response.status_code,
            headers=self._response_headers(response),
            media_type=response.headers.get("content-type", FHIR_JSON),
        )

    async def _bounded(self, request: Request) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > self.limits.max_binary:
                raise _Problem(413, "too-long", "the request body is over the gateway's limit")
            yield chunk

    async def _write_hidden(self, request: Request, caller: Caller, route: Route) -> Response:
        assert self._screen is not None
        rtype = str(route.resource_type)
        if "if-none-exist" in request.headers:
            raise _Problem(403, "forbidden", f"conditional create of {rtype} is not offered")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if rtype == "Binary" and ctype not in (FHIR_JSON, "application/json"):
            return await self._raw_binary(request, caller, route)
        resource = await self._json_body(request)
        if resource.get("resourceType") != rtype:
            raise _Problem(400, "invalid", "resourceType: must be the type the path names")
        if route.id is not None and resource.get("id") != route.id:
            raise _Problem(400, "invalid", "id: must be the id the path names")
        if caller.patient_only(rtype, str(route.permission)) and not _of_patient(
            resource, caller.patient
        ):
            raise _Problem(403, "forbidden", "patient/ scopes allow writes of that patient only")
        kept: list[dict[str, str]] = []
        if route.id is not None and rtype in self._screen.hidden:
            kept = await self._may_overwrite(caller, f"{rtype}/{route.id}")
        labels: list[dict[str, str]] = []
        if rtype == self._screen.image_type:
            labels = await asyncio.to_thread(self._label_image, resource, {}, [], route.id)
        elif rtype == "Binary":
            labels = await asyncio.to_thread(self._label_binary, resource, {}, kept)
        headers = {k: v for k, v in request.headers.items() if k in _FORWARD_REQUEST}
        headers["Content-Type"] = FHIR_JSON
        method = "PUT" if route.id else "POST"
        response = await self._send(
            method, route, headers=headers, content=json.dumps(resource).encode()
        )
        body = await self._answer_json(response)
        out = self._response_headers(response)
        if response.status_code < 300:
            ref = _written_ref(response, body, rtype)
            after = await self._after_write(rtype, ref)
            labels = after or labels
        if labels:
            out[LABELS_HEADER] = _label_header(labels)
        return self._json(body, response.status_code, out)

    async def _may_overwrite(self, caller: Caller, ref: str) -> list[dict[str, str]]:
        """An update must not write over (and so learn the labels of, or replace the bytes of)
        an image or Binary the caller may not see; a new id is fine. The labels the server's
        copy has (a Binary's are kept: they are only ever raised)."""
        try:
            if ref.startswith("Binary/"):
                current = await asyncio.to_thread(self.client.binary_meta, ref)
                current["id"] = ref.split("/", 1)[1]
            else:
                current = await asyncio.to_thread(self.client.read, ref)
        except ResourceNotFound:
            return []
        if not await self._decide(caller, [current]):
            raise _withheld()
        return Labels.of(_security(current)).codings()

    async def _after_write(self, rtype: str, ref: str | None) -> list[dict[str, str]]:
        """After the server took it: the hook's labelling, run now, so that the image's Binary
        and review Task follow before the answer goes back (labels only ever rise)."""
        if ref is None or rtype == "Binary":
            return []
        try:
            found = await asyncio.to_thread(self.labeller.process, rtype, ref.split("/", 1)[1])
        except FhirImagesError as exc:
            log.warning("gateway: labelling after a write failed (%s)", type(exc).__name__)
            return []
        return [x for a in found for x in a.labels]

    def _label_image(
        self,
        resource: dict[str, Any],
        patients: dict[str, PatientView],
        consents: list[ConsentView],
        rid: str | None,
    ) -> list[dict[str, str]]:
        """Label an image resource before it is sent, as the hook would once it arrived: the
        pack's labels for what the record says (failing closed), never lower than the labels
        it carries or the server's copy has."""
        version = self.client.version
        view = version.image(resource)
        patient: PatientView | None = None
        if view.subject is not None:
            patient = patients.get(view.subject) or self.records.patient(view.subject)
        current = list(view.labels.codings())
        found = list(consents)
        if rid is not None:
            ref = f"{version.image_type}/{rid}"
            found += self.records.consents_for_image(ref)
            with contextlib.suppress(ResourceNotFound):
                current += self.records.labels(ref)
        assessment = self.policy.assess(view, patient, found)
        return _set_labels(resource, current, assessment.labels)

    def _label_binary(
        self,
        resource: dict[str, Any],
        images: dict[str, list[dict[str, str]]],
        kept: list[dict[str, str]] | None = None,
    ) -> list[dict[str, str]]:
        """A Binary takes the labels of the image it names as its securityContext (in the same
        transaction or on the server), or restrictive ones when it names none."""
        version = self.client.version
        view = version.binary(resource)
        current = list(view.labels.codings()) + list(kept or [])
        context = view.security_context
        wanted = list(_RESTRICTIVE)
        if context is not None and context in images:
            wanted = images[context]
        elif context is not None and context.startswith(version.image_type + "/"):
            with contextlib.suppress(ResourceNotFound):
                wanted = self.records.labels(context) or wanted
        return _set_labels(resource, current, wanted)

    async def _raw_binary(self, request: Request, caller: Caller, route: Route) -> Response:
        """A raw upload becomes a FHIR Binary, labelled, its bytes base64-encoded as they stream
        through (never whole in memory)."""
        ctype = request.headers.get("content-type", "application/octet-stream")
        context = request.headers.get(CONTEXT_HEADER)
        resource: dict[str, Any] = {"resourceType": "Binary", "contentType": ctype}
        if route.id:
            resource["id"] = route.id
        if context:
            resource["securityContext"] = {"reference": context.strip()}
        kept = await self._may_overwrite(caller, f"Binary/{route.id}") if route.id else []
        labels = await asyncio.to_thread(self._label_binary, resource, {}, kept)
        head = json.dumps(resource)[:-1].encode() + b', "data": "'
        limit = self.limits.max_binary

        async def body() -> AsyncIterator[bytes]:
            yield head
            pending = b""
            seen = 0
            async for chunk in request.stream():
                seen += len(chunk)
                if seen > limit:
                    raise _Problem(413, "too-long", "the Binary is over the gateway's limit")
                pending += chunk
                cut = len(pending) - len(pending) % 3
                yield base64.b64encode(pending[:cut])
                pending = pending[cut:]
            yield base64.b64encode(pending) + b'"}'

        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _Problem(413, "too-long", "the Binary is over the gateway's limit")
        method = "PUT" if route.id else "POST"
        response = await self._send(
            method, route, headers={"Content-Type": FHIR_JSON}, content=body()
        )
        answer = await self._answer_json(response)
        out = self._response_headers(response)
        out[LABELS_HEADER] = _label_header(labels)
        return self._json(answer, response.status_code, out)

    async def _transaction(self, request: Request, caller: Caller) -> Response:
        assert self._screen is not None
        bundle = await self._json_body(request)
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") not in (
            "transaction",
            "batch",
        ):
            raise _Problem(400, "invalid", "POST to the base takes a transaction or batch Bundle")
        entries = bundle.get("entry", []) or []
        if not isinstance(entries, list):
            raise _Problem(400, "invalid", "entry: must be a list")
        image_type = self._screen.image_type
        patients: dict[str, PatientView] = {}
        kept: dict[str, list[dict[str, str]]] = {}
        consents: dict[str, list[ConsentView]] = {}
        version = self.client.version
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
                raise _Problem(400, "invalid", "entry.request: every entry needs a request")
            method = str(entry["request"].get("method", "")).upper()
            url = str(entry["request"].get("url", ""))
            rtype = url.split("?")[0].split("/")[0]
            if method not in _WRITE_LETTER:
                raise _Problem(
                    403, "forbidden", "entry.request.method: reads go as their own requests"
                )
            if rtype not in self._screen.resource_types:
                raise _Problem(400, "invalid", "entry.request.url: no resource type of this server")
            if not caller.allowed(rtype, _WRITE_LETTER[method]):
                raise _Problem(403, "forbidden", f"no scope allows this on {rtype}")
            hidden = rtype in self._screen.hidden or rtype == "Consent"
            if hidden and (method in ("DELETE", "PATCH") or "?" in url):
                raise _Problem(
                    403,
                    "forbidden",
                    f"entry.request: {method} or a conditional URL is not offered on {rtype}",
                )
            if hidden and entry["request"].get("ifNoneExist"):
                raise _Problem(403, "forbidden", f"ifNoneExist is not offered on {rtype}")
            if "?" in url:
                screen_params(
                    rtype,
                    parse_query(url.split("?", 1)[1].encode()),
                    self._screen,
                    images_possible=False,
                )
            if entry["request"].get("ifNoneExist"):
                screen_params(
                    rtype,
                    parse_query(str(entry["request"]["ifNoneExist"]).encode()),
                    self._screen,
                    images_possible=False,
                )
            resource = entry.get("resource")
            if method == "DELETE" and caller.patient_only(rtype, "d"):
                raise _Problem(
                    403, "forbidden", "patient/ scopes: delete one resource at a time, not here"
                )
            if method in ("POST", "PUT"):
                if not isinstance(resource, dict) or resource.get("resourceType") != rtype:
                    raise _Problem(
                        400, "invalid", "entry.resource: must be of the type its url names"
                    )
                if caller.patient_only(rtype, _WRITE_LETTER[method]) and not _of_patient(
                    resource, caller.patient
                ):
                    raise _Problem(
                        403, "forbidden", "patient/ scopes allow writes of that patient only"
                    )
                full = str(entry.get("fullUrl", ""))
                if rtype == "Patient" and full:
                    patients[full] = version.patient(resource)
                if rtype == "Consent":
                    view = version.consent(resource)
                    for named in _named_images(resource):
                        consents.setdefault(named, []).append(view)
                if rtype in self._screen.hidden and method == "PUT":
                    kept[url] = await self._may_overwrite(caller, url)
        labelled: dict[str, list[dict[str, str]]] = {}
        for entry in entries:
            resource = entry.get("resource")
            if isinstance(resource, dict) and resource.get("resourceType") == image_type:
                full = str(entry.get("fullUrl", ""))
                rid = resource.get("id") if entry["request"]["method"].upper() == "PUT" else None
                labels = await asyncio.to_thread(
                    self._label_image,
                    resource,
                    patients,
                    consents.get(full, []),
                    str(rid) if rid else None,
                )
                labelled[full or f"{image_type}/{rid}"] = labels
        for entry in entries:
            resource = entry.get("resource")
            if isinstance(resource, dict) and resource.get("resourceType") == "Binary":
                url = str(entry["request"].get("url", ""))
                await asyncio.to_thread(self._label_binary, resource, labelled, kept.get(url))
        response = await self._send(
            "POST",
            Route("transaction"),
            headers={"Content-Type": FHIR_JSON},
            content=json.dumps(bundle).encode(),
        )
        body = await self._answer_json(response)
        out = self._response_headers(response)
        if response.status_code < 300 and isinstance(body, dict):
            applied: list[dict[str, str]] = []
            for item in body.get("entry", []) or []:
                location = str((item.get("response") or {}).get("location", ""))
                ref = "/".join(location.replace(self.upstream + "/", "").split("/")[:2])
                rtype = ref.split("/")[0]
                if rtype in (image_type, "Consent"):
                    applied += await self._after_write(rtype, ref)
                if "location" in (item.get("response") or {}):
                    item["response"]["location"] = self._public(location)
            labels = applied or [x for v in labelled.values() for x in v]
            if labels:
                out[LABELS_HEADER] = _label_header(labels)
        return self._json(body, response.status_code, out)


# ---------------------------------------------------------------------------- helpers


async def _closing(response: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_bytes():  # decoded: Content-Encoding is not passed on
            yield chunk
    finally:
        await response.aclose()


def _parse_json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body, object_pairs_hook=_no_duplicate_keys)
    except (ValueError, RecursionError):
        raise _Problem(
            400, "invalid", f"{what or 'the request body'} is not JSON (or repeats a key)"
        ) from None


def _rewrite_links(bundle: dict[str, Any], public: Any) -> None:
    """Links and fullUrls that name the server name the gateway instead."""
    for link in bundle.get("link", []) or []:
        if isinstance(link, dict) and isinstance(link.get("url"), str):
            link["url"] = public(link["url"])
    for entry in bundle.get("entry", []) or []:
        if isinstance(entry, dict) and isinstance(entry.get("fullUrl"), str):
            entry["fullUrl"] = public(entry["fullUrl"])


def _merged(events: list[dict[str, Any]]) -> dict[str, Any]:
    """One AuditEvent of several built for the same patient, requester and purpose: every
    entity of each, once; labelled with the highest confidentiality of them."""
    merged: dict[str, Any] = json.loads(json.dumps(events[0]))
    seen = {json.dumps(e, sort_keys=True) for e in merged.get("entity", [])}
    for event in events[1:]:
        for entity in event.get("entity", []):
            key = json.dumps(entity, sort_keys=True)
            if key not in seen:
                seen.add(key)
                merged["entity"].append(entity)
    levels = [
        x["code"]
        for e in events
        for x in e.get("meta", {}).get("security", [])
        if x.get("system") == c.V3_CONFIDENTIALITY
    ]
    if levels:
        top = max(levels, key=lambda code: c.Confidentiality[code])
        merged["meta"]["security"] = [
            x for x in merged["meta"]["security"] if x.get("system") != c.V3_CONFIDENTIALITY
        ] + [{"system": c.V3_CONFIDENTIALITY, "code": top}]
    return merged


def _split(refs: list[str], searches: int, least: int, most: int = 50) -> list[list[str]]:
    """``refs`` in about ``searches`` parts of at least ``least`` and at most ``most`` each
    (more parts only when ``most`` needs them)."""
    size = min(most, max(least, 1, -(-len(refs) // max(1, searches))))
    return [refs[i : i + size] for i in range(0, len(refs), size)]


def _with_labels(binary: BinaryView, labels: Labels) -> BinaryView:
    return replace(binary, labels=binary.labels | labels)


def _set_labels(
    resource: dict[str, Any], current: list[dict[str, Any]], wanted: list[dict[str, str]]
) -> list[dict[str, str]]:
    """Put the labels on the resource: everything it and the server's copy carry, the wanted
    ones added, the confidentiality the highest of them."""
    try:
        delta = plan_label_change(current, wanted, keep_higher=True)
        keys = delta.result({(str(x.get("system", "")), str(x.get("code", ""))) for x in current})
    except LabelError:
        raise _Problem(422, "invalid", "meta.security: labels that cannot be combined") from None
    confs = [k for k in keys if k[0] == c.V3_CONFIDENTIALITY]
    if len(confs) > 1:  # more than one in what was sent: the highest stays
        top = max(confs, key=lambda k: c.Confidentiality[k[1]])
        keys = {k for k in keys if k[0] != c.V3_CONFIDENTIALITY or k == top}
    codings = [{"system": s, "code": code} for s, code in sorted(keys)]
    meta = resource.get("meta") if isinstance(resource.get("meta"), dict) else {}
    assert isinstance(meta, dict)
    meta["security"] = codings
    resource["meta"] = meta
    return codings


def _exists(records: Repository, ref: str) -> bool | None:
    """Whether the server has it; None when that cannot be told now."""
    try:
        return records.exists(ref)
    except FhirImagesError:
        return None


def _security(resource: dict[str, Any]) -> list[dict[str, Any]]:
    meta = resource.get("meta")
    found = meta.get("security") if isinstance(meta, dict) else None
    return [x for x in found if isinstance(x, dict)] if isinstance(found, list) else []


def _label_header(labels: list[dict[str, str]]) -> str:
    keys = sorted({(x["system"], x["code"]) for x in labels})
    return ", ".join(f"{s}|{code}" for s, code in keys)


def _written_ref(response: httpx.Response, body: Any, rtype: str) -> str | None:
    if isinstance(body, dict) and body.get("resourceType") == rtype and body.get("id"):
        return f"{rtype}/{body['id']}"
    location = response.headers.get("location") or response.headers.get("content-location")
    if location:
        parts = location.split("/_history")[0].rstrip("/").split("/")
        return "/".join(parts[-2:])
    return None


def _named_images(consent: dict[str, Any]) -> list[str]:
    provision = consent.get("provision") if isinstance(consent.get("provision"), dict) else {}
    assert isinstance(provision, dict)
    out = []
    for data in provision.get("data", []) or []:
        if isinstance(data, dict) and isinstance(data.get("reference"), dict):
            out.append(str(data["reference"].get("reference", "")))
    return out


def _of_patient(resource: dict[str, Any], patient: str | None) -> bool:
    """Whether a resource is plainly the patient's (their Patient, or a resource whose subject
    or patient is them); anything unclear is not."""
    if patient is None:
        return False
    if resource.get("resourceType") == "Patient":
        return f"Patient/{resource.get('id')}" == patient
    for name in ("subject", "patient"):
        value = resource.get(name)
        if isinstance(value, dict) and value.get("reference") == patient:
            return True
    return False
