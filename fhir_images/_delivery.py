"""Delivery: ready outbox entries to a FHIR server, read back and verified.

An image is either fully in the record (Binary, Media, Consent, Provenance,
labels intact, bytes matching the hash) or still in the outbox with the
reason it is not. For each entry:

1. If the server already has this image for this patient (Media with the same
   SHA-256 identifier and subject), its Binary is reused: nothing is uploaded.
   Otherwise a Binary uploaded by an earlier attempt (recorded in the entry) is
   reused if it still exists; otherwise the bytes are uploaded raw, streamed
   from disk, labelled at once with the Media's labels, and recorded in the
   entry before anything else happens.
2. The placeholder in the Bundle becomes ``Binary/{id}``; the transaction is
   posted. Its entries are conditional creates, so a repeat stores nothing twice.
3. If the transaction is rejected for good (not retry-safe), a Binary uploaded
   for it is deleted and the deletion recorded; if it may succeed later, the
   Binary is kept and recorded so the next attempt reuses it.
4. Read back: the Media's labels (fixed through :func:`apply_labels` if the
   server dropped any, never lowered), its link to the Binary, the Consent's
   link to the Media, and the Binary's bytes against Media.content.hash.
5. A receipt (server ids and checks, no image) replaces the entry.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import _codes as c
from ._exceptions import BadResponse, FhirImagesError, ServerError
from ._labels import apply_labels
from ._outbox import Entry, Outbox
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
    error: str | None = None
    error_type: str | None = None
    retry_safe: bool | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _sha1_b64(path: Path) -> str:
    h = hashlib.sha1()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return base64.b64encode(h.digest()).decode()


def _labels_hold(held: list[dict[str, Any]], wanted: list[dict[str, Any]]) -> bool:
    """Every wanted label is there and the confidentiality code is the one wanted."""
    have = {(x.get("system"), x.get("code")) for x in held}
    want = {(x.get("system"), x.get("code")) for x in wanted}
    conf = {k for k in have if k[0] == c.V3_CONFIDENTIALITY}
    return want <= have and conf == {k for k in want if k[0] == c.V3_CONFIDENTIALITY}


class Deliverer:
    """Delivers outbox entries with one client; safe to use from several threads."""

    def __init__(self, client: FhirClient, outbox: Outbox) -> None:
        self.client = client
        self.outbox = outbox
        self._lock = threading.Lock()

    def _record(self, entry: Entry, **delivery: Any) -> Entry:
        meta = dict(entry.meta)
        meta["delivery"] = {**meta.get("delivery", {}), **delivery}
        with self._lock:
            return self.outbox.update_meta(entry, meta)

    def deliver(self, entry: Entry) -> DeliveryResult:
        result = DeliveryResult(entry.id, delivered=False)
        try:
            self._deliver(entry, result)
        except FhirImagesError as exc:
            result.error = str(exc)
            result.error_type = type(exc).__name__
            result.retry_safe = getattr(exc, "retry_safe", None)
            attempts = int(entry.meta.get("delivery", {}).get("attempts", 0)) + 1
            try:
                current = self.outbox.get(entry.id)
                self._record(
                    current,
                    attempts=attempts,
                    last_error=result.error,
                    last_error_type=result.error_type,
                    last_attempt=_now(),
                )
            except FhirImagesError:
                pass
            log.warning("delivery of entry %s failed: %s", entry.id, result.error_type)
        return result

    def _deliver(self, entry: Entry, result: DeliveryResult) -> None:
        client = self.client
        client.capabilities()
        bundle = json.loads(entry.bundle_path.read_text())
        media_index = next(
            i for i, e in enumerate(bundle["entry"]) if e["resource"]["resourceType"] == "Media"
        )
        media_res = bundle["entry"][media_index]["resource"]
        labels = media_res["meta"]["security"]
        patient = entry.meta["patient"]
        sha256 = entry.meta["sha256"]

        binary, uploaded_now = self._binary_for(entry, patient, sha256, labels, result)
        result.binary = binary
        text = entry.bundle_path.read_text().replace(entry.meta["binary_placeholder"], binary)
        try:
            response = client.transaction(json.loads(text))
        except ServerError as exc:
            if not exc.retry_safe and uploaded_now:
                client.delete(binary)
                self._record(self.outbox.get(entry.id), binary=None, binary_removed=binary)
                result.notes.append(f"{binary} removed after the transaction was rejected")
                result.binary = None
            elif uploaded_now or result.binary_reused:
                result.notes.append(f"{binary} kept for the next attempt")
            raise
        locations = [
            relative_reference(e.get("response", {}).get("location", ""))
            for e in response.get("entry", [])
        ]
        if len(locations) != len(bundle["entry"]):
            raise BadResponse("the transaction answer does not have one entry per request")
        result.media = locations[media_index]
        consent_index = next(
            (
                i
                for i, e in enumerate(bundle["entry"])
                if e["resource"]["resourceType"] == "Consent"
            ),
            None,
        )
        if consent_index is not None:
            result.consent = locations[consent_index]
        self._verify(entry, result, labels)
        receipt = {
            "id": entry.id,
            "delivered_at": _now(),
            "server": client.base_url,
            "resources": dict(
                zip(
                    [e["resource"]["resourceType"] for e in bundle["entry"]], locations, strict=True
                )
            ),
            "binary": result.binary,
            "binary_reused": result.binary_reused,
            "sha256": sha256,
            "decision": entry.meta.get("decision", {}).get("outcome"),
            "verified": ["labels", "binary link", "consent link", "bytes"],
        }
        self.outbox.mark_sent(self.outbox.get(entry.id), receipt)
        result.delivered = True

    def _binary_for(
        self,
        entry: Entry,
        patient: str,
        sha256: str,
        labels: list[dict[str, Any]],
        result: DeliveryResult,
    ) -> tuple[str, bool]:
        client = self.client
        existing = next(
            client.search(
                "Media",
                {
                    "identifier": f"{c.SID_SHA256}|{sha256}",
                    "subject": patient,
                    "_count": "1",
                    "_elements": "content",
                },
            ),
            None,
        )
        if existing is not None:
            url = existing.get("content", {}).get("url", "")
            if url.startswith("Binary/") and client.binary_exists(url):
                result.binary_reused = True
                result.notes.append("image already on the server for this patient; reused")
                return url, False
        earlier = entry.meta.get("delivery", {}).get("binary")
        if earlier and client.binary_exists(earlier):
            result.binary_reused = True
            result.notes.append("Binary from an earlier attempt reused")
            return str(earlier), False
        binary = client.upload_binary(entry.content_path, entry.meta["media_type"])
        self._record(self.outbox.get(entry.id), binary=binary, binary_uploaded_at=_now())
        apply_labels(client, binary, labels, current=[])  # just created: no labels yet
        return binary, True

    def _verify(self, entry: Entry, result: DeliveryResult, labels: list[dict[str, Any]]) -> None:
        client = self.client
        assert result.media and result.binary
        media = client.read(result.media)
        held = media.get("meta", {}).get("security", [])
        if not _labels_hold(held, labels):
            # a server that dropped labels, or a Media matched from an earlier submission
            apply_labels(client, result.media, labels, current=held)
        if media.get("content", {}).get("url") != result.binary:
            raise BadResponse(f"{result.media} does not point at {result.binary}")
        if result.consent:
            consent = client.read(result.consent)
            refs = [
                d.get("reference", {}).get("reference")
                for d in consent.get("provision", {}).get("data", [])
            ]
            if result.media not in refs:
                raise BadResponse(f"{result.consent} does not reference {result.media}")
        with tempfile.TemporaryDirectory(dir=self.outbox.root / ".tmp") as d:
            copy = Path(d) / "binary"
            client.download_binary(result.binary, copy, entry.meta["media_type"])
            if _sha1_b64(copy) != media["content"].get("hash"):
                raise BadResponse(f"the bytes of {result.binary} do not match the Media's hash")


def push(
    client: FhirClient,
    outbox: Outbox,
    *,
    workers: int = 4,
    entries: list[Entry] | None = None,
    on_done: Callable[[DeliveryResult], None] | None = None,
) -> list[DeliveryResult]:
    """Deliver ready entries (all, or those given) with a bounded worker pool.

    Results come back in the entries' order. Held entries are never sent.
    """
    todo = [
        e
        for e in (entries if entries is not None else outbox.entries("ready"))
        if e.state == "ready"
    ]
    deliverer = Deliverer(client, outbox)
    client.capabilities()  # one check up front, not one per worker

    def one(entry: Entry) -> DeliveryResult:
        r = deliverer.deliver(entry)
        if on_done:
            on_done(r)
        return r

    if workers <= 1 or len(todo) <= 1:
        return [one(e) for e in todo]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deliver") as pool:
        return list(pool.map(one, todo))


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
        consents = list(client.search("Consent", {"data": ref, "_count": "20"}))
        implicit = any("implicit" in n.get("text", "") for n in media.get("note", []))
        if consents:
            state = ", ".join(f"{c['status']} (Consent/{c['id']})" for c in consents)
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
