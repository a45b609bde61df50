"""Delivery: ready outbox entries to a FHIR server, read back and verified.

An image is either fully in the record (Binary, Media, Consent, Provenance,
labels intact on the Media *and* its Binary, bytes matching the hash) or still
in the outbox with the reason it is not. No upload happens outside what the
outbox knows about:

1. Before anything is sent, the attempt is recorded in the entry (write-ahead).
2. Every resource of the image goes in **one transaction** of conditional
   creates keyed on record keys (see :mod:`fhir_images._mapping`): the server
   stores all of them or none, and sending it again after a lost reply or a
   killed process matches what is there instead of duplicating it. The Binary
   is created with the Media's labels and a ``securityContext`` naming the
   Media, so its bytes are never on the server without them.
3. The bytes travel with the Binary: base64 inside the transaction, streamed
   from disk (any server), or, where the server has an operation for it
   (HAPI's ``$binary-access-write``), streamed raw into the Binary the
   transaction has just created, labels already in place. If that write fails
   for good, the resources this transaction created are deleted again.
4. If the server already has this image for this patient (a Media with the
   same SHA-256 and subject), its Binary is reused and brought up to the
   Media's labels; a Binary that names another resource as its securityContext
   is refused.
5. A newer consent act for the image supersedes older active Consents
   (recorded with a Provenance); a consent act older than what the server
   already records for the image (a later consent, or a withdrawal) is stored
   as inactive, so a stale outbox can never revive a withdrawn consent.
6. Read back: the Media's labels, the Binary's labels (the same as the
   Media's) and securityContext, the Media's link to the Binary, the Consent's
   link to the Media, and every byte against ``Media.content.hash``. Labels a
   server lost are restored through :func:`label_image` (never lowered).
7. A receipt (server ids and what was checked, no image) replaces the entry.

A failure is recorded in the entry (error class, HTTP status, time, attempt).
Failures that may pass (server down, 429/503) are retried by the next push
for as long as it takes; an entry the server refuses for good
(``max_permanent_failures`` times) moves to the ``failed`` state, where a
person retries it after fixing the cause, or discards it with a record.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import _codes as c
from ._exceptions import AuthenticationFailed, BadResponse, FhirImagesError, ServerError
from ._labels import label_image
from ._outbox import DeliveryError, Entry, Outbox
from ._records import (
    binary_reference,
    consents_for_image,
    parse_instant,
    record_consent_change,
)
from ._transport import FhirClient, relative_reference

log = logging.getLogger("fhir_images.delivery")


@dataclass
class DeliveryResult:
    entry_id: str
    delivered: bool
    media: str | None = None
    consent: str | None = None
    binary: str | None = None
    binary_reused: bool = False
    labels: list[dict[str, str]] = field(default_factory=list)
    state: str = "ready"
    error: str | None = None
    error_type: str | None = None
    status: int | None = None
    retry_safe: bool | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _key(coding: dict[str, Any]) -> tuple[str, str]:
    return (str(coding.get("system", "")), str(coding.get("code", "")))


def _label_set(security: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {_key(x) for x in security}


def _labels_hold(held: list[dict[str, Any]], wanted: list[dict[str, Any]]) -> bool:
    """Every wanted label is there and the confidentiality code is the one wanted."""
    have, want = _label_set(held), _label_set(wanted)
    conf = {k for k in have if k[0] == c.V3_CONFIDENTIALITY}
    return want <= have and conf == {k for k in want if k[0] == c.V3_CONFIDENTIALITY}


# ------------------------------------------------------------------------ the streamed body


class _StreamedTransaction:
    """A transaction's JSON with the Binary's ``data`` streamed from a file, base64-encoded.

    Iterable (requests sends it as it goes) with a known length (no chunked encoding).
    """

    _CHUNK = 3 * (1 << 18)  # a multiple of 3: no base64 padding mid-way

    def __init__(self, bundle: dict[str, Any], binary_url: str, content: Path) -> None:
        token = f"@@data-{uuid.uuid4().hex}@@"
        for e in bundle["entry"]:
            if e.get("fullUrl") == binary_url:
                e["resource"]["data"] = token
        head, _, tail = json.dumps(bundle).partition(json.dumps(token))
        self._head = (head + '"').encode()
        self._tail = ('"' + tail).encode()
        self._content = content
        size = content.stat().st_size
        self._length = len(self._head) + len(self._tail) + 4 * ((size + 2) // 3)

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[bytes]:
        yield self._head
        with self._content.open("rb") as f:
            while chunk := f.read(self._CHUNK):
                yield base64.b64encode(chunk)
        yield self._tail


# ----------------------------------------------------------------------------- the deliverer


class Deliverer:
    """Delivers outbox entries with one client; safe to use from several threads."""

    def __init__(
        self, client: FhirClient, outbox: Outbox, *, max_permanent_failures: int = 3
    ) -> None:
        self.client = client
        self.outbox = outbox
        self.max_permanent_failures = max_permanent_failures
        self._lock = threading.Lock()

    # ----------------------------------------------------------- bookkeeping in the entry

    def begin(self, entry: Entry) -> Entry:
        """Record the attempt before anything is sent (write-ahead)."""
        d = entry.meta.delivery
        meta = entry.meta.model_copy(
            update={
                "delivery": d.model_copy(
                    update={"attempts": d.attempts + 1, "last_attempt": _now()}
                )
            }
        )
        with self._lock:
            return self.outbox.update_meta(entry, meta)

    def record_failure(self, entry: Entry, exc: FhirImagesError) -> Entry:
        """Write why the attempt failed into the entry; move it to ``failed`` when it never can."""
        status = getattr(exc, "status", None)
        retry_safe = getattr(exc, "retry_safe", None)
        d = entry.meta.delivery
        error = DeliveryError(
            type=type(exc).__name__,
            message=str(exc),
            status=status,
            retry_safe=retry_safe,
            at=_now(),
            attempt=d.attempts,
        )
        permanent = not retry_safe and not isinstance(exc, AuthenticationFailed)
        failures = d.permanent_failures + (1 if permanent else 0)
        update: dict[str, Any] = {"last_error": error, "permanent_failures": failures}
        give_up = permanent and failures >= self.max_permanent_failures
        if give_up:
            update["failed_at"] = _now()
        meta = entry.meta.model_copy(update={"delivery": d.model_copy(update=update)})
        with self._lock:
            if give_up and entry.state == "ready":
                return self.outbox.transition(entry, "failed", meta=meta, files={})
            return self.outbox.update_meta(entry, meta)

    # ---------------------------------------------------------------------- one entry

    def deliver(self, entry: Entry) -> DeliveryResult:
        result = DeliveryResult(entry.id, delivered=False)
        with self.outbox.claim(entry.id) as mine:
            if not mine:
                result.notes.append("being delivered by another push at the same time")
                result.error_type = "InProgress"
                return result
            return self._attempt(entry, result)

    def _attempt(self, entry: Entry, result: DeliveryResult) -> DeliveryResult:
        try:
            entry = self.outbox.get(entry.id)  # as it is now, not as listed before the claim
            if entry.state != "ready":
                result.state = entry.state
                result.notes.append(f"the entry is {entry.state}: not sent")
                return result
            entry = self.begin(entry)
            self._deliver(entry, result)
        except FhirImagesError as exc:
            result.error = str(exc)
            result.error_type = type(exc).__name__
            result.status = getattr(exc, "status", None)
            result.retry_safe = getattr(exc, "retry_safe", None)
            try:
                kept = self.record_failure(self.outbox.get(entry.id), exc)
                result.state = kept.state
            except FhirImagesError:
                pass
            log.warning("delivery of entry %s failed: %s", entry.id, result.error_type)
        return result

    def _deliver(self, entry: Entry, result: DeliveryResult) -> None:
        client = self.client
        client.capabilities()
        bundle = entry.read_json("bundle.json")
        by_type = {e["resource"]["resourceType"]: e for e in bundle["entry"]}
        media_entry, binary_entry = by_type["Media"], by_type.get("Binary")
        consent_entry = by_type.get("Consent")
        if binary_entry is None:
            raise BadResponse("the outbox entry has no Binary: ingest it again")
        wanted = media_entry["resource"]["meta"]["security"]
        patient, sha256 = entry.meta.patient, entry.meta.sha256

        existing = next(
            client.search(
                "Media",
                {"identifier": f"{c.SID_SHA256}|{sha256}", "subject": patient, "_count": "1"},
            ),
            None,
        )
        inline = client.profile.binary_write_operation is None
        reused: str | None = None
        rewrite_bytes = False
        if existing is not None:
            media_ref = f"Media/{existing['id']}"
            reused, ours = self._reusable_binary(existing, media_ref, entry.meta.image_key)
            result.binary_reused = True
            if ours:
                result.notes.append("completing an earlier attempt at this image")
                rewrite_bytes = not inline  # the bytes may not have followed the transaction
            else:
                result.notes.append("image already on the server for this patient; reused")
            # the Media is matched, not created: the Binary entry would be an orphan
            bundle["entry"] = [e for e in bundle["entry"] if e is not binary_entry]
            media_entry["resource"]["content"]["url"] = reused
            if consent_entry is not None:
                self._date_consent(consent_entry["resource"], media_ref, result)

        idempotent = True  # every entry is a conditional create
        if reused is None and inline:
            response = client.transaction_stream(
                lambda: _StreamedTransaction(
                    json.loads(json.dumps(bundle)), binary_entry["fullUrl"], entry.content_path
                ),
                idempotent=idempotent,
            )
        else:
            response = client.transaction(bundle, idempotent=idempotent)
        answers = response.get("entry", [])
        if len(answers) != len(bundle["entry"]):
            raise BadResponse("the transaction answer does not have one entry per request")
        refs: dict[str, str] = {}
        created: list[str] = []
        for sent, answer in zip(bundle["entry"], answers, strict=True):
            resp = answer.get("response", {})
            ref = relative_reference(resp.get("location", ""))
            if not ref.startswith(sent["resource"]["resourceType"] + "/"):
                raise BadResponse("the transaction answer does not say where it stored a resource")
            refs[sent["fullUrl"]] = ref
            if str(resp.get("status", "")).startswith("201"):
                created.append(ref)
        media_ref = refs[media_entry["fullUrl"]]
        binary_ref = reused or refs[binary_entry["fullUrl"]]
        result.media, result.binary = media_ref, binary_ref
        if consent_entry is not None:
            result.consent = refs[consent_entry["fullUrl"]]

        if rewrite_bytes:
            client.write_binary(binary_ref, entry.content_path, entry.meta.media_type)
        elif reused is None and not inline:
            try:
                client.write_binary(binary_ref, entry.content_path, entry.meta.media_type)
            except ServerError as exc:
                if not exc.retry_safe and binary_ref in created:
                    self._undo(created, result)
                raise
        if result.consent is not None:
            self._supersede(result.consent, media_ref, result)
        self._verify(entry, result, wanted)
        receipt = {
            "id": entry.id,
            "delivered_at": _iso(_now()),
            "server": client.base_url,
            "resources": {
                sent["resource"]["resourceType"]: refs[sent["fullUrl"]] for sent in bundle["entry"]
            },
            "binary": binary_ref,
            "binary_reused": result.binary_reused,
            "sha256": sha256,
            "decision": entry.meta.decision.get("outcome"),
            "labels": result.labels,
            "attempts": entry.meta.delivery.attempts,
            "verified": [
                "media labels",
                "binary labels (the same as the media's)",
                "binary securityContext",
                "binary link",
                *(["consent link"] if result.consent else []),
                "bytes (size and SHA-1 of every byte)",
            ],
        }
        with self._lock:
            self.outbox.mark_sent(self.outbox.get(entry.id), receipt)
        result.delivered = True
        result.state = "sent"

    def _reusable_binary(
        self, media: dict[str, Any], media_ref: str, image_key: str
    ) -> tuple[str, bool]:
        """The Binary of a Media already on the server, if it is that Media's and only its,
        and whether fhir-images wrote it for this image. A Binary without a securityContext
        (written by another route) is given one."""
        ref = binary_reference(media.get("content", {}).get("url"), self.client.base_url)
        if ref is None:
            raise BadResponse(f"{media_ref} has no Binary on this server")
        meta = self.client.binary_meta(ref)
        context = meta.get("securityContext", {}).get("reference")
        if context is None:
            self.client.patch(
                ref,
                [{"op": "add", "path": "/securityContext", "value": {"reference": media_ref}}],
                if_match=meta.get("meta", {}).get("versionId"),
            )
        elif context != media_ref:
            raise BadResponse(f"{ref} names another resource as its securityContext")
        ours = {"system": c.SID_RECORD, "code": f"{image_key}.binary"} in [
            {"system": t.get("system"), "code": t.get("code")}
            for t in meta.get("meta", {}).get("tag", [])
        ]
        return ref, ours

    def _date_consent(
        self, consent: dict[str, Any], media_ref: str, result: DeliveryResult
    ) -> None:
        """A consent act older than what the server records for the image goes in as inactive."""
        ours = parse_instant(consent.get("dateTime"))
        record = next(
            (i["value"] for i in consent.get("identifier", []) if i.get("system") == c.SID_RECORD),
            None,
        )
        latest: datetime | None = None
        for other in consents_for_image(self.client, media_ref):
            ids = {i.get("value") for i in other.get("identifier", [])}
            if record is not None and record in ids:
                continue  # this very consent act, stored by an earlier attempt
            for stamp in (
                other.get("dateTime"),
                (other.get("provision") or {}).get("period", {}).get("end"),
            ):
                at = parse_instant(stamp)
                if at is not None and (latest is None or at > latest):
                    latest = at
        if ours is not None and latest is not None and ours < latest:
            consent["status"] = "inactive"
            result.notes.append(
                "the server records a later consent or withdrawal for this image: "
                "this older consent is stored as inactive"
            )

    def _supersede(self, consent_ref: str, media_ref: str, result: DeliveryResult) -> None:
        """Older active Consents of the image give way to this consent act."""
        client = self.client
        consents = consents_for_image(client, media_ref)
        ours = next((x for x in consents if f"Consent/{x.get('id')}" == consent_ref), None)
        if ours is None or ours.get("status") != "active":
            return
        ours_at = parse_instant(ours.get("dateTime"))
        for other in consents:
            other_ref = f"Consent/{other.get('id')}"
            other_at = parse_instant(other.get("dateTime"))
            if (
                other_ref == consent_ref
                or other.get("status") != "active"
                or ours_at is None
                or other_at is None
                or other_at >= ours_at
            ):
                continue
            other["status"] = "inactive"
            updated = client.update(other, if_match=other.get("meta", {}).get("versionId"))
            record_consent_change(
                client,
                updated,
                by=None,
                reason=f"superseded by {consent_ref}",
                activity="superseded",
            )
            result.notes.append(f"{other_ref} superseded by {consent_ref}")

    def _undo(self, created: list[str], result: DeliveryResult) -> None:
        """Delete what this attempt's transaction created (the bytes could not follow)."""
        try:
            self.client.transaction(
                {
                    "resourceType": "Bundle",
                    "type": "transaction",
                    "entry": [
                        {"request": {"method": "DELETE", "url": ref}} for ref in reversed(created)
                    ],
                },
                idempotent=True,
            )
            result.notes.append("the resources created for it were removed again")
        except ServerError:
            result.notes.append(
                "the resources created for it could not be removed; the next push completes them"
            )

    def _verify(self, entry: Entry, result: DeliveryResult, wanted: list[dict[str, Any]]) -> None:
        client = self.client
        assert result.media and result.binary
        media = client.read(result.media)
        if media.get("subject", {}).get("reference") != entry.meta.patient:
            raise BadResponse(f"{result.media} is not of the entry's patient")
        if binary_reference(media.get("content", {}).get("url"), client.base_url) != result.binary:
            raise BadResponse(f"{result.media} does not point at {result.binary}")
        binary = client.binary_meta(result.binary)
        if binary.get("securityContext", {}).get("reference") != result.media:
            raise BadResponse(
                f"{result.binary} does not name {result.media} as its securityContext"
            )
        media_labels = media.get("meta", {}).get("security", [])
        binary_labels = binary.get("meta", {}).get("security", [])
        if not _labels_hold(media_labels, wanted) or _label_set(media_labels) != _label_set(
            binary_labels
        ):
            # a server that dropped labels, a Media matched from an earlier submission, or a
            # Binary behind its Media: bring both up to everything either should carry
            result.labels = label_image(
                client,
                result.media,
                [*wanted, *media_labels, *binary_labels],
                binary=result.binary,
                current=media_labels,
                binary_current=binary_labels,
            )
        else:
            result.labels = sorted(
                ({"system": s, "code": k} for s, k in _label_set(media_labels)),
                key=lambda x: (x["system"], x["code"]),
            )
        if result.consent:
            consent = client.read(result.consent)
            refs = [
                d.get("reference", {}).get("reference")
                for d in (consent.get("provision") or {}).get("data", [])
            ]
            if result.media not in refs:
                raise BadResponse(f"{result.consent} does not reference {result.media}")
        sha1 = hashlib.sha1()
        size = 0
        for chunk in client.iter_binary(result.binary, entry.meta.media_type):
            sha1.update(chunk)
            size += len(chunk)
        content = media.get("content", {})
        if base64.b64encode(sha1.digest()).decode() != content.get("hash") or (
            content.get("size") is not None and size != content.get("size")
        ):
            raise BadResponse(f"the bytes of {result.binary} do not match the Media's hash")


# ------------------------------------------------------------------------------ push


def push(
    client: FhirClient,
    outbox: Outbox,
    *,
    workers: int = 4,
    entries: list[Entry] | None = None,
    on_done: Callable[[DeliveryResult], None] | None = None,
    max_permanent_failures: int = 3,
) -> list[DeliveryResult]:
    """Deliver ready entries (all, or those given) with a bounded worker pool.

    Results come back in the entries' order; nothing is raised for a server
    that cannot be reached or used: every entry then carries the reason, in
    its result and in the outbox. Held and failed entries are never sent.
    """
    todo = [
        e
        for e in (entries if entries is not None else outbox.entries("ready"))
        if e.state == "ready"
    ]
    deliverer = Deliverer(client, outbox, max_permanent_failures=max_permanent_failures)
    if not todo:
        return []
    try:
        client.capabilities()  # one check up front, not one per worker
    except FhirImagesError as exc:
        results = []
        for e in todo:
            r = DeliveryResult(
                e.id,
                delivered=False,
                error=str(exc),
                error_type=type(exc).__name__,
                status=getattr(exc, "status", None),
                retry_safe=getattr(exc, "retry_safe", None),
            )
            with contextlib.suppress(FhirImagesError):
                r.state = deliverer.record_failure(deliverer.begin(e), exc).state
            if on_done:
                on_done(r)
            results.append(r)
        log.warning("push: the server cannot be used (%s)", type(exc).__name__)
        return results

    def one(entry: Entry) -> DeliveryResult:
        r = deliverer.deliver(entry)
        if on_done:
            on_done(r)
        return r

    if workers <= 1 or len(todo) <= 1:
        return [one(e) for e in todo]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deliver") as pool:
        return list(pool.map(one, todo))


def retry_failed(outbox: Outbox, entry_id: str) -> Entry:
    """Put a failed entry back in ``ready`` (after its cause was fixed), its count reset."""
    entry = outbox.get(entry_id)
    if entry.state != "failed":
        from ._exceptions import OutboxError

        raise OutboxError(f"entry {entry_id} is {entry.state}, not failed")
    d = entry.meta.delivery.model_copy(update={"permanent_failures": 0, "failed_at": None})
    return outbox.transition(
        entry, "ready", meta=entry.meta.model_copy(update={"delivery": d}), files={}
    )


def patient_images(
    client: FhirClient, patient: str, labels: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """A patient's Media on the server, each with its labels and consent state.

    ``labels`` filters by security label code (``_security``), any of them.
    """
    params = {"subject": patient, "_count": "100", "_sort": "-created"}
    if labels:
        params["_security"] = ",".join(labels)
    rows = []
    for media in client.search("Media", params):
        ref = f"Media/{media['id']}"
        consents = consents_for_image(client, ref)
        implicit = any("implicit" in n.get("text", "") for n in media.get("note", []))
        if consents:
            state = ", ".join(f"{x['status']} (Consent/{x['id']})" for x in consents)
        else:
            state = "implicit" if implicit else "missing"
        rows.append(
            {
                "media": ref,
                "created": media.get("createdDateTime"),
                "type": media.get("content", {}).get("contentType"),
                "consent": state,
                "security": media.get("meta", {}).get("security", []),
            }
        )
    return rows


__all__ = ["Deliverer", "DeliveryResult", "patient_images", "push", "retry_failed"]
