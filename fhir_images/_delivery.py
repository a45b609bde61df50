"""Delivery: ready outbox entries to a FHIR server, read back and verified.

An image is either fully in the record (Binary, Media, Consent, Provenance,
labels intact on the Media *and* its Binary, bytes matching the hash) or still
in the outbox with the reason it is not. No upload happens outside what the
outbox knows about:

1. Before anything is sent, the attempt is recorded in the entry (write-ahead).
2. Every resource of the image goes in **one transaction** of conditional
   creates keyed on record keys (see :mod:`fhir_images.fhir.keys`): the server
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
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field

from . import _codes as c
from ._exceptions import (
    AuthenticationFailed,
    BadResponse,
    FhirImagesError,
    IncompatibleServer,
    ServerError,
    UnsafeServer,
)
from ._outbox import DeliveryError, Entry, Outbox
from ._requests import complete_request
from ._result import Result
from .fhir import FhirClient, Labels, Repository, get_version, label_image
from .fhir.client import WrittenBinary
from .fhir.keys import record_key
from .fhir.labels import sync_declared_labels
from .fhir.views import ImageView

log = logging.getLogger("fhir_images.delivery")


class DeliveryResult(Result):
    """What happened to one outbox entry: the server ids of what it became, the labels the
    server holds on the image (read back), and, when it was not delivered, why."""

    entry_id: str
    delivered: bool
    media: str | None = None
    consent: str | None = None
    binary: str | None = None
    binary_reused: bool = False
    labels: list[dict[str, str]] = Field(default_factory=list)
    state: Literal["ready", "held", "failed", "sent"] = "ready"
    error: str | None = None
    error_type: str | None = None
    status: int | None = None
    retry_safe: bool | None = None
    notes: list[str] = Field(default_factory=list)
    #: the server stated the SHA-256 of the bytes it stored, and it was the image's
    server_hash_checked: bool = False

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _labels_hold(held: Labels, wanted: Labels) -> bool:
    """Every wanted label is there and the confidentiality code is the one wanted."""
    return wanted.keys <= held.keys and held.confidentiality == wanted.confidentiality


# ----------------------------------------------------------------------------- the deliverer


Verification = Literal["full", "links"]
#: What push can read back after a delivery: everything but the bytes (the default), or every
#: byte as well.
VERIFICATIONS: tuple[Verification, ...] = ("full", "links")


class Deliverer:
    """Delivers outbox entries with one client; safe to use from several threads."""

    def __init__(
        self,
        client: FhirClient,
        outbox: Outbox,
        *,
        max_permanent_failures: int = 3,
        verify: Verification = "links",
    ) -> None:
        if verify not in VERIFICATIONS:
            raise ValueError(f"verify must be one of {', '.join(VERIFICATIONS)}")
        self.client = client
        self.records = Repository(client)
        self.outbox = outbox
        self.max_permanent_failures = max_permanent_failures
        self.verify = verify
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
        # a refusal of the server as a whole is not the entry's fault: it does not count
        server_wide = (AuthenticationFailed, UnsafeServer, IncompatibleServer)
        permanent = not retry_safe and not isinstance(exc, server_wide)
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
        result = DeliveryResult(entry_id=entry.id, delivered=False)
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
        client, records = self.client, self.records
        client.capabilities()
        if get_version(entry.meta.fhir_version) is not client.version:
            entry = self._remap(entry, result)
            if entry.state != "ready":
                return
        submission = client.version.submission(entry.read_json("bundle.json"))
        wanted = submission.wanted_labels
        patient, sha256 = entry.meta.patient, entry.meta.sha256

        inline = client.profile.binary_write.inline
        reused: str | None = None
        rewrite_bytes = False
        existing = records.image_by_hash(sha256, patient)
        if existing is not None:
            reused, ours = self._reusable_binary(existing, entry.meta.image_key)
            result.binary_reused = True
            if ours:
                result.notes.append("completing an earlier attempt at this image")
                rewrite_bytes = not inline  # the bytes may not have followed the transaction
            else:
                result.notes.append("image already on the server for this patient; reused")
            # the image is matched, not created: a Binary entry would be an orphan
            submission.reuse_binary(reused)
            if submission.has_consent:
                self._date_consent(submission, existing.ref, result)

        idempotent = True  # every entry is a conditional create (or a PUT of a fixed id)
        if reused is None and inline:
            response = client.transaction_stream(
                lambda: submission.streamed(entry.content_path), idempotent=idempotent
            )
        else:
            response = client.transaction(submission.json(), idempotent=idempotent)
        stored = submission.stored(response)
        result.media, result.consent = stored.image, stored.consent
        binary_ref = reused or stored.binary
        if binary_ref is None:
            raise BadResponse("the transaction answer names no Binary")
        result.binary = binary_ref

        written: WrittenBinary | None = None
        if rewrite_bytes:
            written = client.write_binary(binary_ref, entry.content_path, entry.meta.media_type)
        elif reused is None and not inline:
            try:
                written = client.write_binary(binary_ref, entry.content_path, entry.meta.media_type)
            except ServerError as exc:
                if not exc.retry_safe and binary_ref in stored.created:
                    self._undo(list(stored.created), result)
                raise
        if result.consent is not None and stored.image not in stored.created:
            # a Consent can only have gone before for an image that was already there: a new
            # image has no older Consents to supersede (one search per image saved)
            self._supersede(result.consent, stored.image, result)
        self._verify(entry, result, wanted, written)
        request = entry.read_json("context.json").get("request")
        if isinstance(request, str) and complete_request(client, request):
            result.notes.append("the request it answers is now completed")
        receipt = {
            "id": entry.id,
            "delivered_at": _iso(_now()),
            "server": client.base_url,
            "resources": stored.refs,
            "binary": binary_ref,
            "binary_reused": result.binary_reused,
            **({"request": request} if isinstance(request, str) else {}),
            "sha256": sha256,
            "decision": entry.meta.decision.get("outcome"),
            "labels": result.labels,
            "attempts": entry.meta.delivery.attempts,
            "verified": [
                "image labels",
                "binary labels (the same as the image's)",
                "binary securityContext",
                "binary link",
                *(["consent link"] if result.consent else []),
                *(["bytes (size and SHA-1 of every byte)"] if self.verify == "full" else []),
                *(
                    ["bytes (the SHA-256 the server stated for what it stored)"]
                    if result.server_hash_checked
                    else []
                ),
            ],
            "verification": self.verify,
        }
        with self._lock:
            self.outbox.mark_sent(self.outbox.get(entry.id), receipt)
        result.delivered = True
        result.state = "sent"

    def _remap(self, entry: Entry, result: DeliveryResult) -> Entry:
        """An entry mapped for another FHIR version is mapped again for this server's (not
        sent in the other version's shapes, which the server would reject or misread)."""
        from ._ingest import remap

        before = get_version(entry.meta.fhir_version).name
        with self._lock:
            entry = remap(self.outbox, entry, self.client.version.release)
        result.notes.append(f"mapped again for FHIR {self.client.version.name} (was {before})")
        if entry.state != "ready":
            result.state = entry.state
            result.notes.append("held: the rules, run again, no longer store it")
        return entry

    def _reusable_binary(self, image: ImageView, image_key: str) -> tuple[str, bool]:
        """The Binary of an image already on the server, if it is that image's and only its,
        and whether fhir-images wrote it for this image. A Binary without a securityContext
        (written by another route) is given one."""
        records = self.records
        ref = records.binary_of(image)
        if ref is None:
            raise BadResponse(f"{image.ref} has no Binary on this server")
        binary = records.binary(ref)
        if binary.security_context is None:
            self.client.patch(
                ref,
                [{"op": "add", "path": "/securityContext", "value": {"reference": image.ref}}],
                if_match=binary.version_id,
            )
        elif binary.security_context != image.ref:
            raise BadResponse(f"{ref} names another resource as its securityContext")
        ours = (c.SID_RECORD, record_key(image_key, "binary")) in binary.tags
        return ref, ours

    def _date_consent(self, submission: Any, image_ref: str, result: DeliveryResult) -> None:
        """A consent act older than what the server records for the image goes in as inactive."""
        ours, record = submission.consent_date, submission.consent_record
        latest: datetime | None = None
        for other in self.records.consents_for_image(image_ref):
            if record is not None and record in other.record_keys:
                continue  # this very consent act, stored by an earlier attempt
            moment = other.latest_moment
            if moment is not None and (latest is None or moment > latest):
                latest = moment
        if ours is not None and latest is not None and ours < latest:
            submission.consent_inactive()
            result.notes.append(
                "the server records a later consent or withdrawal for this image: "
                "this older consent is stored as inactive"
            )

    def _supersede(self, consent_ref: str, image_ref: str, result: DeliveryResult) -> None:
        """Older active Consents of the image give way to this consent act."""
        records = self.records
        consents = records.consents_for_image(image_ref)
        ours = next((x for x in consents if x.ref == consent_ref), None)
        if ours is None or not ours.active or ours.date_time is None:
            return
        for other in consents:
            if (
                other.ref == consent_ref
                or not other.active
                or other.date_time is None
                or other.date_time >= ours.date_time
            ):
                continue
            updated = records.update(records.version.superseded(other), other.version_id)
            records.record_consent_change(
                records.version.consent(updated),
                by=None,
                reason=f"superseded by {consent_ref}",
                activity="superseded",
            )
            result.notes.append(f"{other.ref} superseded by {consent_ref}")

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

    def _verify(
        self,
        entry: Entry,
        result: DeliveryResult,
        wanted: Labels,
        written: WrittenBinary | None = None,
    ) -> None:
        client, records = self.client, self.records
        assert result.media and result.binary
        # the image and its Consent in one request where the server takes a batch of reads
        read = client.read_many([result.media, *([result.consent] if result.consent else [])])
        image = records.version.image(read[result.media])
        if image.subject != entry.meta.patient:
            raise BadResponse(f"{result.media} is not of the entry's patient")
        if records.binary_of(image) != result.binary:
            raise BadResponse(f"{result.media} does not point at {result.binary}")
        if written is not None and f"Binary/{written.resource.get('id')}" != result.binary:
            written = None  # an answer about another resource is not used
        if written is not None and written.sha256 is not None:
            # the server says what it stored (HAPI hashes the bytes as it stores them): bytes
            # other than the image's are found here, without reading them back
            if written.sha256 != entry.meta.sha256:
                raise BadResponse(
                    f"the bytes of {result.binary} do not match the image's hash "
                    "(the SHA-256 the server stated for what it stored)"
                )
            result.server_hash_checked = True
        sha1, size = hashlib.sha1(), 0
        if self.verify == "full" and client.profile.binary_read.json_only:
            # a server that answers only FHIR JSON sends the bytes with the labels and the
            # securityContext: one read for all three (elsewhere a raw read of the bytes is
            # cheaper than their base64 in JSON: HAPI's JSON read costs more than both reads)

            def take(piece: bytes) -> None:
                nonlocal size
                sha1.update(piece)
                size += len(piece)

            raw, with_bytes = client.binary_whole(result.binary, take)
            binary = records.version.binary(raw)
        elif written is not None and self.verify != "full":
            # the Binary as the server answered the write of its bytes: its labels and
            # securityContext after the write, without another read
            binary, with_bytes = records.version.binary(written.resource), False
        else:
            binary, with_bytes = records.binary(result.binary), False
        if binary.security_context != result.media:
            raise BadResponse(
                f"{result.binary} does not name {result.media} as its securityContext"
            )
        if not _labels_hold(image.labels, wanted) or image.labels != binary.labels:
            # a server that dropped labels, an image matched from an earlier submission, or a
            # Binary behind its image: bring both up to everything either should carry
            result.labels = label_image(
                client,
                result.media,
                [*wanted.codings(), *image.labels.codings(), *binary.labels.codings()],
                binary=result.binary,
                current=image.labels.codings(),
                binary_current=binary.labels.codings(),
            )
        else:
            result.labels = image.labels.codings()
            if (
                image.declared_confidentiality is not None
                and image.declared_confidentiality != image.labels.confidentiality
            ):
                sync_declared_labels(client, result.media, result.labels)
        if result.consent:
            consent = records.version.consent(read[result.consent])
            if result.media not in consent.images:
                raise BadResponse(f"{result.consent} does not reference {result.media}")
        if self.verify == "full":
            if not with_bytes:
                for chunk in client.iter_binary(result.binary, entry.meta.media_type):
                    sha1.update(chunk)
                    size += len(chunk)
            self._check_bytes(result, image, sha1, size)

    @staticmethod
    def _check_bytes(result: DeliveryResult, image: ImageView, sha1: Any, size: int) -> None:
        """Every byte read back: size and SHA-1 as the image states them."""
        if base64.b64encode(sha1.digest()).decode() != image.content_hash or (
            image.content_size is not None and size != image.content_size
        ):
            raise BadResponse(f"the bytes of {result.binary} do not match the image's hash")


# ------------------------------------------------------------------------------ push


def push(
    client: FhirClient,
    outbox: Outbox,
    *,
    workers: int = 4,
    entries: list[Entry] | None = None,
    on_done: Callable[[DeliveryResult], None] | None = None,
    max_permanent_failures: int = 3,
    verify: Verification = "links",
) -> list[DeliveryResult]:
    """Deliver ready entries (all, or those given) with a bounded worker pool.

    Results come back in the entries' order; nothing is raised for a server
    that cannot be reached or used: every entry then carries the reason, in
    its result and in the outbox. Held and failed entries are never sent.

    ``verify`` is what is read back after each delivery (see :data:`VERIFICATIONS`):
    ``"links"`` (the default) the labels of the image and its Binary, their links and
    securityContext, and the Consent's link: what keeps the bytes as protected as the image;
    the bytes themselves are trusted to the server's acknowledgement of an upload whose length
    it was told, and are checked against the image's SHA-256 whenever they are released
    (``disclose``). ``"full"`` reads every byte back as well (size and SHA-1), catching a
    server that stores other bytes than it acknowledged, at about the cost of a second upload.
    """
    todo = [
        e
        for e in (entries if entries is not None else outbox.entries("ready"))
        if e.state == "ready"
    ]
    deliverer = Deliverer(
        client, outbox, max_permanent_failures=max_permanent_failures, verify=verify
    )
    if not todo:
        return []
    try:
        client.capabilities()  # one check up front, not one per worker
        client.require_safe()  # labels that stick, _security searches applied, atomicity
    except FhirImagesError as exc:
        results = []
        for e in todo:
            r = DeliveryResult(
                entry_id=e.id,
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
    """A patient's images on the server, each with its labels and consent state.

    ``labels`` keeps only images with any of these security label codes.
    """
    records = Repository(client)
    rows = []
    for image in records.images_of_patient(patient):
        if labels and not set(labels) & image.labels.codes:
            continue
        consents = records.consents_for_image(image.ref)
        if consents:
            state = ", ".join(f"{x.status} ({x.ref})" for x in consents)
        else:
            state = "implicit" if image.implicit_consent else "missing"
        rows.append(
            {
                "media": image.ref,
                "created": image.created.isoformat() if image.created else None,
                "type": image.content_type,
                "consent": state,
                "security": image.labels.codings(),
            }
        )
    return rows


__all__ = ["Deliverer", "DeliveryResult", "patient_images", "push", "retry_failed"]
