"""What a FHIR server really does, found by trying it: the source of its :class:`ServerProfile`.

Servers that all say "FHIR R4" differ in ordinary ways (see the README's compatibility table):
whether a Binary can be sent raw, whether ``$meta-add`` exists, whether a PUT merges or replaces
security labels, which status a stale ``If-Match`` gets, whether a ``_security`` search is
applied or silently dropped, which kind of Subscription fires. A software name says little about
any of that (versions and configurations differ), so :func:`probe` tries each on resources it
creates under a probe tag and deletes again. It never reads or writes patient data: the
resources are ``Basic``, ``DocumentReference`` and ``Binary`` holding the words "fhir-images
probe" and nothing else.

:func:`profile_from_report` turns a report into the strategies fhir-images writes with, and
:meth:`ServerReport.risks` names what makes a server unsafe for sensitive images:

* labels that cannot be set and read back (nothing can be stored: there is no override);
* a ``_security`` search the server does not apply (every client that filters by label on
  that server would see what it must not; refused unless the risk is accepted by name,
  ``no-security-search``).

Reports are cached per base URL (:class:`ProbeCache`) while the server's software, version and
FHIR version stay the same; ``fhir-images check-server`` probes again and replaces the entry.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .._exceptions import (
    ActionRefused,
    IncompatibleServer,
    RateLimited,
    ServerError,
    ServerUnavailable,
)
from . import ds4p
from .servers import (
    BinaryRead,
    BinaryWrite,
    JsonPatchLabels,
    LabelUpdate,
    MetaOperations,
    ReplaceByUpdate,
    ServerProfile,
)
from .subscriptions import NoSubscriptions, RestHook, SubscriptionStyle, TopicBased

if TYPE_CHECKING:
    import requests

    from .client import FhirClient

log = logging.getLogger("fhir_images.probe")

PROBE_TAG = "https://fhir-images.org/fhir/sid/probe"
PROBE_LABEL = "https://fhir-images.org/fhir/CodeSystem/probe-label"
#: Risks a user may accept by name (``FHIR_IMAGES_ACCEPT_RISK``); any other risk is final.
ACCEPTABLE_RISKS = ("no-security-search",)
HAPI_REPLACE_HEADER = {"X-Meta-Snapshot-Mode": "SECURITY_LABEL"}
_BINARY_OPERATION_WRITE = "$binary-access-write?path=Binary"
_BINARY_OPERATION_READ = "$binary-access-read?path=Binary"
_PROBE_BYTES = b"fhir-images probe: no patient data"
_REPRESENTATION = {"Prefer": "return=representation"}

PutLabels = Literal["merge", "replace", "unknown"]


@dataclass(frozen=True)
class ServerReport:
    """What one server did when tried. ``None`` means the check could not be run."""

    base_url: str
    software: str
    software_version: str
    fhir_version: str
    probed_at: str
    create_and_read: bool | None = None
    labels_kept_on_create: bool | None = None
    #: a label's extensions (HL7 DS4P classifier, basis, related artifact) are kept; they inform,
    #: never decide, so a server that drops them is still safe to use
    label_extensions_kept: bool | None = None
    meta_operations: bool | None = None
    put_labels: PutLabels = "unknown"
    put_replace_header: bool | None = None
    json_patch_labels: bool | None = None
    stale_if_match_status: int | None = None
    transaction: bool | None = None
    conditional_create: bool | None = None
    urn_in_reference: bool | None = None
    urn_in_attachment_url: bool | None = None
    security_search: bool | None = None
    total_by_default: bool | None = None
    binary_raw_upload: bool | None = None
    binary_raw_read: bool | None = None
    binary_json_read: bool | None = None
    binary_operations: bool | None = None
    subscriptions: tuple[str, ...] = ()
    audit_event_create: bool | None = None
    validate_operation: bool | None = None
    snapshot_operation: bool | None = None
    delete_missing_in_transaction: bool | None = None
    referential_integrity: bool | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    # ------------------------------------------------------------------ judgement

    @property
    def labels_work(self) -> bool:
        """Labels can be set at creation and changed afterwards, and read back."""
        return bool(self.labels_kept_on_create) and _label_strategy(self) is not None

    def risks(self) -> list[tuple[str, str]]:
        """(name, why) of each reason not to write sensitive images to this server."""
        out = []
        if not self.labels_work:
            out.append(
                (
                    "labels-unsupported",
                    "security labels cannot be set and read back on this server",
                )
            )
        if self.security_search is not True:
            out.append(
                (
                    "no-security-search",
                    "the server does not apply _security searches (a search for a label no "
                    "resource has did not come back empty, or could not be run)",
                )
            )
        if not self.transaction or not self.conditional_create:
            out.append(
                (
                    "no-atomic-transactions",
                    "transactions with conditional creates do not work, so an image could be "
                    "stored half or twice",
                )
            )
        return out

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["subscriptions"] = list(self.subscriptions)
        data["notes"] = list(self.notes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServerReport:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["subscriptions"] = tuple(values.get("subscriptions") or ())
        values["notes"] = tuple(values.get("notes") or ())
        return cls(**values)


def _label_strategy(report: ServerReport) -> LabelUpdate | None:
    if report.meta_operations:
        header = HAPI_REPLACE_HEADER if report.put_replace_header else {}
        return MetaOperations(replace_header=header)
    if report.json_patch_labels:
        return JsonPatchLabels()
    if report.put_labels == "replace":
        return ReplaceByUpdate()
    return None


def profile_from_report(report: ServerReport, name: str | None = None) -> ServerProfile:
    """The strategies to write with on a server that behaved as ``report`` says.

    Raises IncompatibleServer when labels cannot be changed and read back at all."""
    labels = _label_strategy(report)
    if labels is None or not report.labels_kept_on_create:
        raise IncompatibleServer(
            "security labels cannot be set and read back on this server: nothing can be stored"
        )
    subscriptions: SubscriptionStyle
    if "rest-hook" in report.subscriptions:
        subscriptions = RestHook()
    elif {"topic-based", "backport-topic"} & set(report.subscriptions):
        subscriptions = TopicBased()
    else:
        subscriptions = NoSubscriptions()
    ops = bool(report.binary_operations)
    return ServerProfile(
        name or f"probed:{report.software or 'unknown'}",
        labels=labels,
        binary_write=BinaryWrite(_BINARY_OPERATION_WRITE if ops else None),
        binary_read=BinaryRead(
            _BINARY_OPERATION_READ if ops else None,
            json_only=not ops and report.binary_raw_read is False and bool(report.binary_json_read),
        ),
        subscriptions=subscriptions,
        extra_headers={"Cache-Control": "no-cache"},
        audit_on_server=bool(report.audit_event_create),
        search_total={} if report.total_by_default else {"_total": "accurate"},
    )


# -------------------------------------------------------------------------------- the probe


class _Run:
    """One probe run: its tag, the resources it made (deleted at the end) and its notes."""

    def __init__(self, client: FhirClient, code: str | None = None) -> None:
        self.client = client
        self.code = code or f"probe-{uuid.uuid4().hex[:16]}"
        self.created: list[str] = []
        self.notes: list[str] = []
        self.headers = {"Cache-Control": "no-cache"}

    @property
    def tag(self) -> dict[str, str]:
        return {"system": PROBE_TAG, "code": self.code}

    def label(self, n: int) -> dict[str, str]:
        return {"system": PROBE_LABEL, "code": f"{self.code}-{n}"}

    def req(self, method: str, path: str, **kw: Any) -> requests.Response:
        """A request whose HTTP status is the answer (no retries beyond the client's own)."""
        headers = {**self.headers, **kw.pop("headers", {})}
        return self.client.request(method, path, headers=headers, ok=tuple(range(400, 600)), **kw)

    def json(self, response: requests.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            return None

    def basic(self, labels: list[dict[str, Any]]) -> dict[str, Any]:
        resource = {
            "resourceType": "Basic",
            "meta": {"tag": [self.tag], **({"security": labels} if labels else {})},
            "code": {"coding": [{"system": PROBE_TAG, "code": self.code}]},
        }
        r = self.req(
            "POST", "Basic", json_body=resource, headers={"Prefer": "return=representation"}
        )
        body = self.json(r)
        if r.status_code not in (200, 201) or not isinstance(body, dict) or not body.get("id"):
            raise _Skip(f"creating a Basic resource answered HTTP {r.status_code}")
        self.created.append(f"Basic/{body['id']}")
        return body

    def read(self, ref: str) -> dict[str, Any]:
        r = self.req("GET", ref)
        body = self.json(r)
        if r.status_code != 200 or not isinstance(body, dict):
            raise _Skip(f"reading {ref.split('/')[0]} back answered HTTP {r.status_code}")
        return body

    def labels_of(self, ref: str) -> set[tuple[str, str]]:
        meta = self.read(ref).get("meta") or {}
        return {(x.get("system"), x.get("code")) for x in meta.get("security") or []}

    def check(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run one check; what it could not find out goes in the notes. A server that is
        unavailable or busy makes the whole probe fail (to be run again later): a report made
        through a bad network would be wrong, and would be kept."""
        for attempt in (1, 2):
            try:
                return fn()
            except _Skip as exc:
                self.notes.append(f"{name}: {exc}")
            except (ServerUnavailable, RateLimited):
                raise
            except ServerError as exc:
                if attempt == 1:
                    # a busy server can answer one request with an error (a conflict with
                    # its own background work): asked once more before it is written down,
                    # as the report is kept
                    time.sleep(0.5)
                    continue
                self.notes.append(f"{name}: {type(exc).__name__} ({exc})")
            break
        return None

    def cleanup(self) -> None:
        for ref in reversed(self.created):
            with suppress(ServerError):
                self.req("DELETE", ref)


class _Skip(Exception):
    """A check could not be run; the reason goes in the report's notes."""


def _key(c: dict[str, str]) -> tuple[str, str]:
    return (c["system"], c["code"])


def probe(
    client: FhirClient, *, subscription_wait: float = 5.0, code: str | None = None
) -> ServerReport:
    """Try the server (see the module docstring) and report what it did. ``code`` names the
    probe's tag (a fresh random one by default)."""
    cs = client.capabilities()
    software = cs.get("software") or {}
    run = _Run(client, code)
    values: dict[str, Any] = {}
    try:
        values.update(_capabilities(cs))
        basic = run.check("create and read", lambda: run.basic([run.label(1)]))
        values["create_and_read"] = basic is not None
        if basic is not None:
            ref = f"Basic/{basic['id']}"
            kept = run.check("labels on create", lambda: _key(run.label(1)) in run.labels_of(ref))
            values["labels_kept_on_create"] = kept
            values["label_extensions_kept"] = run.check(
                "label extensions", lambda: _label_extensions(run)
            )
            values["meta_operations"] = run.check("$meta-add", lambda: _meta_ops(run, ref))
            put = run.check("PUT labels", lambda: _put_labels(run, ref))
            if put is not None:
                values["put_labels"], values["put_replace_header"] = put
            values["json_patch_labels"] = run.check("JSON Patch", lambda: _json_patch(run, ref))
            values["stale_if_match_status"] = run.check("If-Match", lambda: _stale(run, ref))
            search = run.check("_security search", lambda: _security_search(run))
            if search is not None:
                values["security_search"], values["total_by_default"] = search
        tx = run.check("transaction", lambda: _transaction(run))
        if tx is not None:
            values.update(tx)
        values.update(run.check("Binary", lambda: _binary(run)) or {})
        values["delete_missing_in_transaction"] = run.check(
            "DELETE in a transaction", lambda: _delete_missing(run)
        )
        values["referential_integrity"] = run.check(
            "references", lambda: _referential_integrity(run)
        )
        values["subscriptions"] = tuple(
            run.check("subscriptions", lambda: _subscriptions(run, subscription_wait)) or ()
        )
    finally:
        run.cleanup()
    return ServerReport(
        base_url=client.base_url,
        software=str(software.get("name") or ""),
        software_version=str(software.get("version") or ""),
        fhir_version=str(cs.get("fhirVersion") or ""),
        probed_at=datetime.now(UTC).isoformat(timespec="seconds"),
        notes=tuple(run.notes),
        **values,
    )


def _capabilities(cs: dict[str, Any]) -> dict[str, Any]:
    """What is only declared: AuditEvent create (a probe must not write to an audit trail),
    ``$validate`` and ``$snapshot``."""
    rest: dict[str, Any] = next((r for r in cs.get("rest", []) if r.get("mode") == "server"), {})
    audit: dict[str, Any] = next(
        (r for r in rest.get("resource", []) if r.get("type") == "AuditEvent"), {}
    )
    ops = {o.get("name") for o in rest.get("operation", []) or []}
    for r in rest.get("resource", []) or []:
        ops |= {o.get("name") for o in r.get("operation", []) or []}
    return {
        "audit_event_create": any(i.get("code") == "create" for i in audit.get("interaction", [])),
        "validate_operation": "validate" in ops,
        "snapshot_operation": "snapshot" in ops,
    }


def _label_extensions(run: _Run) -> bool:
    label = {
        **run.label(3),
        "extension": [
            {"url": ds4p.EXT_CLASSIFIER, "valueReference": {"display": "fhir-images probe"}}
        ],
    }
    basic = run.basic([label])
    meta = run.read(f"Basic/{basic['id']}").get("meta") or {}
    return any(
        x.get("extension") for x in meta.get("security") or [] if _key(x) == _key(run.label(3))
    )


def _meta_ops(run: _Run, ref: str) -> bool:
    r = run.req(
        "POST",
        f"{ref}/$meta-add",
        json_body={
            "resourceType": "Parameters",
            "parameter": [{"name": "meta", "valueMeta": {"security": [run.label(2)]}}],
        },
    )
    if r.status_code != 200 or _key(run.label(2)) not in run.labels_of(ref):
        return False
    r = run.req(
        "POST",
        f"{ref}/$meta-delete",
        json_body={
            "resourceType": "Parameters",
            "parameter": [{"name": "meta", "valueMeta": {"security": [run.label(2)]}}],
        },
    )
    return r.status_code == 200 and _key(run.label(2)) not in run.labels_of(ref)


def _put(run: _Run, ref: str, labels: list[dict[str, str]], headers: dict[str, str]) -> int:
    resource = run.read(ref)
    resource["meta"] = {"tag": [run.tag], "security": labels}
    return int(run.req("PUT", ref, json_body=resource, headers=headers).status_code)


def _put_labels(run: _Run, ref: str) -> tuple[PutLabels, bool | None]:
    before = run.labels_of(ref)
    status = _put(run, ref, [run.label(3)], {})
    if status not in (200, 201):
        raise _Skip(f"PUT answered HTTP {status}")
    after = run.labels_of(ref)
    if after == {_key(run.label(3))}:
        return "replace", None
    if after == before | {_key(run.label(3))}:
        # a server that merges; does it take a header that makes a PUT replace them?
        status = _put(run, ref, [run.label(1)], HAPI_REPLACE_HEADER)
        replaced = status in (200, 201) and run.labels_of(ref) == {_key(run.label(1))}
        if not replaced:  # leave the resource as the other checks expect it
            for label in (run.label(3),):
                run.req(
                    "POST",
                    f"{ref}/$meta-delete",
                    json_body={
                        "resourceType": "Parameters",
                        "parameter": [{"name": "meta", "valueMeta": {"security": [label]}}],
                    },
                )
        return "merge", replaced
    return "unknown", None


def _json_patch(run: _Run, ref: str) -> bool:
    """The JSON Patch strategy, exactly as it is used, adds and removes labels, on a resource
    created with labels and on one created without (a server that merges labels on every
    write can only add; one that holds no stored ``meta`` needs the whole ``meta`` patched)."""
    bare = run.basic([])
    strategy = JsonPatchLabels()
    for target in (ref, f"Basic/{bare['id']}"):
        for wanted in ([run.label(1), run.label(4)], [run.label(4)]):
            try:
                strategy.write(run.client, target, [], [], wanted)
            except ServerError:
                return False
            if run.labels_of(target) != {_key(x) for x in wanted}:
                return False
    return True


def _stale(run: _Run, ref: str) -> int:
    resource = run.read(ref)
    version = (resource.get("meta") or {}).get("versionId")
    if not version or version == "1":
        raise _Skip("the resource has no version to be stale against")
    r = run.req("PUT", ref, json_body=resource, headers={"If-Match": 'W/"1"'})
    return int(r.status_code)


def _search(run: _Run, params: dict[str, str]) -> dict[str, Any]:
    r = run.req("GET", "Basic", params=params)
    body = run.json(r)
    if r.status_code != 200 or not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise _Skip(f"a search answered HTTP {r.status_code}")
    return body


def _ids(bundle: dict[str, Any]) -> set[str]:
    return {
        str((e.get("resource") or {}).get("id"))
        for e in bundle.get("entry") or []
        if (e.get("search") or {}).get("mode", "match") == "match"
    }


def _security_search(run: _Run) -> tuple[bool, bool]:
    """A search by a label must find what has it, and a search by a label nothing has must come
    back empty (a server that drops the parameter returns everything the tag matches)."""
    labelled = run.basic([run.label(7)])
    other = run.basic([run.label(5)])
    rid, oid = labelled["id"], other["id"]
    tag = f"{PROBE_TAG}|{run.code}"
    have = _search(run, {"_tag": tag, "_security": f"{PROBE_LABEL}|{run.code}-7"})
    none = _search(run, {"_tag": tag, "_security": f"{PROBE_LABEL}|{run.code}-absent"})
    unlabelled = _search(run, {"_tag": tag, "_security:not": f"{PROBE_LABEL}|{run.code}-7"})
    applied = (
        _ids(have) == {rid} and not _ids(none) and rid not in _ids(unlabelled)
    ) and oid in _ids(unlabelled)
    return applied, "total" in have


def _transaction(run: _Run) -> dict[str, Any]:
    """Binary + DocumentReference in one transaction, with urn:uuid references both ways and
    conditional creates, sent twice."""

    def bundle() -> dict[str, Any]:
        binary_url, doc_url = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"
        return {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": binary_url,
                    "resource": {
                        "resourceType": "Binary",
                        "meta": {
                            "tag": [run.tag, {"system": PROBE_TAG, "code": f"{run.code}-binary"}],
                            "security": [run.label(6)],
                        },
                        "contentType": "application/octet-stream",
                        "securityContext": {"reference": doc_url},
                        "data": base64.b64encode(_PROBE_BYTES).decode(),
                    },
                    "request": {
                        "method": "POST",
                        "url": "Binary",
                        "ifNoneExist": f"_tag={PROBE_TAG}|{run.code}-binary",
                    },
                },
                {
                    "fullUrl": doc_url,
                    "resource": {
                        "resourceType": "DocumentReference",
                        "meta": {"tag": [run.tag], "security": [run.label(6)]},
                        "identifier": [{"system": PROBE_TAG, "value": run.code}],
                        "status": "current",
                        "content": [
                            {
                                "attachment": {
                                    "contentType": "application/octet-stream",
                                    "url": binary_url,
                                }
                            }
                        ],
                    },
                    "request": {
                        "method": "POST",
                        "url": "DocumentReference",
                        "ifNoneExist": f"identifier={PROBE_TAG}|{run.code}",
                    },
                },
            ],
        }

    first = bundle()
    first["entry"][0]["resource"]["meta"]["tag"].append(
        {"system": PROBE_TAG, "code": f"{run.code}-binary"}
    )
    r = run.req("POST", "", json_body=first)
    body = run.json(r)
    if r.status_code != 200 or not isinstance(body, dict):
        return {"transaction": False}
    refs = [
        str(((e or {}).get("response") or {}).get("location") or "").split("/_history")[0]
        for e in body.get("entry") or []
    ]
    refs = ["/".join(x.split("/")[-2:]) for x in refs]
    if len(refs) != 2 or not refs[0].startswith("Binary/"):
        return {"transaction": False}
    binary_ref, doc_ref = refs
    run.created += [binary_ref, doc_ref]
    binary = run.read(f"{binary_ref}?_elements=securityContext")
    doc = run.read(doc_ref)
    url = ((doc.get("content") or [{}])[0].get("attachment") or {}).get("url") or ""
    again = bundle()
    again["entry"][0]["resource"]["meta"]["tag"].append(
        {"system": PROBE_TAG, "code": f"{run.code}-binary"}
    )
    r2 = run.req("POST", "", json_body=again)
    body2 = run.json(r2)
    refs2 = [
        "/".join(
            str(((e or {}).get("response") or {}).get("location") or "")
            .split("/_history")[0]
            .split("/")[-2:]
        )
        for e in (body2 or {}).get("entry") or []
    ]
    for extra in set(refs2) - {binary_ref, doc_ref}:
        if extra:
            run.created.append(extra)
    return {
        "transaction": True,
        "conditional_create": r2.status_code == 200 and refs2 == refs,
        "urn_in_reference": (binary.get("securityContext") or {}).get("reference") == doc_ref,
        "urn_in_attachment_url": url.endswith(binary_ref),
    }


def _binary(run: _Run) -> dict[str, Any]:
    out: dict[str, Any] = {}
    r = run.req(
        "POST",
        "Binary",
        data_factory=lambda: _PROBE_BYTES,
        headers={"Content-Type": "application/octet-stream"},
    )
    raw_ref = None
    if r.status_code in (200, 201):
        location = r.headers.get("Location") or r.headers.get("Content-Location") or ""
        body = run.json(r)
        rid = (body or {}).get("id") if isinstance(body, dict) else None
        raw_ref = (
            f"Binary/{rid}" if rid else "/".join(location.split("/_history")[0].split("/")[-2:])
        )
        if raw_ref.startswith("Binary/"):
            run.created.append(raw_ref)
    out["binary_raw_upload"] = r.status_code in (200, 201)
    # a JSON-created Binary, read back raw and as JSON
    b = run.req(
        "POST",
        "Binary",
        json_body={
            "resourceType": "Binary",
            "meta": {"tag": [run.tag]},
            "contentType": "application/octet-stream",
            "data": base64.b64encode(_PROBE_BYTES).decode(),
        },
        headers={"Prefer": "return=representation"},
    )
    body = run.json(b)
    if b.status_code not in (200, 201) or not isinstance(body, dict) or not body.get("id"):
        raise _Skip(f"creating a Binary as FHIR JSON answered HTTP {b.status_code}")
    ref = f"Binary/{body['id']}"
    run.created.append(ref)
    raw = run.req("GET", ref, headers={"Accept": "application/octet-stream"})
    out["binary_raw_read"] = raw.status_code == 200 and raw.content == _PROBE_BYTES
    as_json = run.json(run.req("GET", ref, headers={"Accept": "application/fhir+json"}))
    out["binary_json_read"] = isinstance(as_json, dict) and (
        base64.b64decode(str(as_json.get("data") or "")) == _PROBE_BYTES
    )
    w = run.req(
        "POST",
        f"{ref}/{_BINARY_OPERATION_WRITE}",
        data_factory=lambda: _PROBE_BYTES[::-1],
        headers={"Content-Type": "application/octet-stream"},
    )
    ops = False
    if w.status_code == 200:
        back = run.req(
            "GET", f"{ref}/{_BINARY_OPERATION_READ}", headers={"Accept": "application/octet-stream"}
        )
        ops = back.status_code == 200 and back.content == _PROBE_BYTES[::-1]
    out["binary_operations"] = ops
    return out


def _delete_missing(run: _Run) -> bool:
    r = run.req(
        "POST",
        "",
        json_body={
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"request": {"method": "DELETE", "url": f"Basic/{run.code}-never"}}],
        },
    )
    return r.status_code == 200


def _referential_integrity(run: _Run) -> bool:
    """Whether a reference to a resource that does not exist is refused."""
    resource = {
        "resourceType": "Basic",
        "meta": {"tag": [run.tag]},
        "code": {"coding": [{"system": PROBE_TAG, "code": run.code}]},
        "subject": {"reference": f"Patient/{run.code}-missing"},
    }
    r = run.req("POST", "Basic", json_body=resource, headers=_REPRESENTATION)
    if r.status_code in (200, 201):
        body = run.json(r)
        if isinstance(body, dict) and body.get("id"):
            run.created.append(f"Basic/{body['id']}")
        return False
    return 400 <= r.status_code < 500


# ------------------------------------------------------------------------------ subscriptions


@contextmanager
def _listener() -> Iterator[str]:
    """A local endpoint that answers 200 to anything (handshakes, notifications)."""

    class Handler(BaseHTTPRequestHandler):
        def _ok(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if 0 < length <= 1 << 20:
                self.rfile.read(length)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_PUT = do_GET = _ok

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/probe"
    finally:
        server.shutdown()
        server.server_close()


def _wait_status(run: _Run, ref: str, wait: float) -> str | None:
    deadline = time.monotonic() + wait
    status = None
    while time.monotonic() < deadline:
        body = run.json(run.req("GET", ref))
        status = body.get("status") if isinstance(body, dict) else None
        if status in ("active", "error"):
            return str(status)
        time.sleep(0.25)
    return str(status) if status else None


def _subscriptions(run: _Run, wait: float) -> list[str]:
    """Which kind of Subscription the server acts on: a classic rest-hook with a search as its
    criteria, or a topic-based one (the R4 Subscriptions Backport, its topic a Basic). Acting
    on it means making it active (or error, when the endpoint did not answer)."""
    header = f"X-Fhir-Images-Probe: {run.code}"
    styles: list[str] = []
    with _listener() as endpoint:
        trials: list[tuple[SubscriptionStyle, str]] = [
            (RestHook(), f"_tag={PROBE_TAG}|{run.code}"),
            (TopicBased(), run.code),
        ]
        for style, narrow in trials:
            try:
                refs = style.install(run.client, endpoint, header, ("Basic",), narrow=narrow)
            except ServerError as exc:
                run.notes.append(f"{style.name} subscription: {type(exc).__name__}")
                continue
            except ActionRefused as exc:  # this FHIR version cannot write that subscription
                run.notes.append(f"{style.name} subscription: {exc}")
                continue
            run.created += refs
            subs = [r for r in refs if r.startswith("Subscription/")]
            if subs and all(_wait_status(run, r, wait) in ("active", "error") for r in subs):
                styles.append(style.name)
                break  # the first style that works is the one used
    return styles


# ---------------------------------------------------------------------------------- the cache


#: A cached report is used only if it has exactly the checks this version makes.
REPORT_SCHEMA = hashlib.sha256(
    ",".join(sorted(f.name for f in fields(ServerReport))).encode()
).hexdigest()[:16]

#: Reports made or read by this process, by base URL (one probe per server per process).
_MEMORY: dict[str, ServerReport] = {}


def _same_server(report: ServerReport, base_url: str, capabilities: dict[str, Any]) -> bool:
    software = capabilities.get("software") or {}
    return (
        report.base_url == base_url
        and report.software == str(software.get("name") or "")
        and report.software_version == str(software.get("version") or "")
        and report.fhir_version == str(capabilities.get("fhirVersion") or "")
    )


class ProbeCache:
    """Reports on disk, one file per base URL (named by a hash of it), private to the user."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _path(self, base_url: str) -> Path:
        name = hashlib.sha256(base_url.encode()).hexdigest()[:24]
        return self.folder / f"server-{name}.json"

    def get(self, base_url: str, capabilities: dict[str, Any]) -> ServerReport | None:
        """The cached report, if the server still names the same software, version and FHIR
        version."""
        try:
            data = json.loads(self._path(base_url).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("schema") != REPORT_SCHEMA:
            return None
        try:
            report = ServerReport.from_dict(data.get("report") or {})
        except (TypeError, ValueError):
            return None
        return report if _same_server(report, base_url, capabilities) else None

    def put(self, report: ServerReport) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(report.base_url)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"schema": REPORT_SCHEMA, "report": report.as_dict()}, f, indent=2)
        os.replace(tmp, path)


def report_for(
    client: FhirClient, cache: ProbeCache | None, *, fresh: bool = False
) -> ServerReport:
    """The server's report: from the cache when it is still valid, else by probing."""
    cs = client.capabilities()
    if not fresh:
        remembered = _MEMORY.get(client.base_url)
        if remembered is not None and _same_server(remembered, client.base_url, cs):
            return remembered
        cached = cache.get(client.base_url, cs) if cache is not None else None
        if cached is not None:
            _MEMORY[client.base_url] = cached
            return cached
    log.info("probing the FHIR server's behaviour")
    report = probe(client)
    _MEMORY[client.base_url] = report
    if cache is not None:
        try:
            cache.put(report)
        except OSError as exc:  # a cache that cannot be written only costs another probe
            log.warning("cannot cache the server report (%s)", type(exc).__name__)
    return report
