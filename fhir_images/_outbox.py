"""The outbox: a local store-and-forward folder, the embedded default.

Layout (every folder 0700, every file 0600: these are patient images)::

    OUTBOX/
      ready/<id>/    entry.json, bundle.json, context.json, [consent.json], content.<ext>
      held/<id>/     entry.json, context.json, [consent.json], content.<ext>
      failed/<id>/   a ready entry the server refused for good, until a person resolves it
      discarded/<id>.json   who discarded an entry, when and why (no image)
      sent/<id>.json        the receipt of a delivered entry: server ids, checks (no image)
      sent/keys/<key>       which receipt holds an image and consent act (the entry id)
      .tmp/<worker>/ one folder per live process, locked while it lives: entries being
                     written and intake's scratch files; a folder whose owner has died is
                     removed by the next process that opens the outbox, whatever its age
      .lock          taken while a new entry is checked for duplicates and written
      .locks/<id>    held by the process delivering that entry

An entry is written whole into the process's work folder and then renamed into
place, so a crash leaves either the complete entry or none. A ready entry is
exactly what will be sent: ``bundle.json`` (a transaction whose Binary has no
data) and ``content.<ext>``, the bytes the sender adds to that Binary.

``entry.json`` is an :class:`EntryMeta` (versioned). This module is the only
code that reads or writes the outbox's files.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import uuid
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._exceptions import EntryNotFound, OutboxError

log = logging.getLogger("fhir_images.outbox")

State = Literal["ready", "held", "failed"]
"""Where an outbox entry is: ``ready`` to send, ``held`` until what is missing is recorded, or
``failed`` (needs a person). Sent entries leave the outbox and leave a receipt."""
STATES: tuple[State, ...] = ("ready", "held", "failed")
ENTRY_SCHEMA = 2


def default_outbox() -> Path:
    """The outbox folder of the settings ($FHIR_IMAGES_OUTBOX or ./fhir-images-outbox)."""
    from ._settings import Settings

    return Settings.from_env().outbox


def _now() -> datetime:
    return datetime.now(UTC)


class DeliveryError(BaseModel):
    """Why the last delivery attempt failed: the error class, HTTP status, when, which attempt.

    ``message`` is fhir-images' own text; a server's diagnostics are never stored here.
    """

    model_config = ConfigDict(extra="forbid")
    type: str
    message: str
    status: int | None = None
    retry_safe: bool | None = None
    at: datetime
    attempt: int


class DeliveryState(BaseModel):
    """What delivery has done with an entry so far (written before and after every attempt)."""

    model_config = ConfigDict(extra="forbid")
    attempts: int = 0
    permanent_failures: int = 0
    last_attempt: datetime | None = None
    last_error: DeliveryError | None = None
    failed_at: datetime | None = None


class EntryMeta(BaseModel):
    """The typed content of ``entry.json``."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = ENTRY_SCHEMA
    id: str
    state: State
    content: str
    created: datetime
    patient: str
    sha256: str
    media_type: str
    size: int
    image_key: str
    consent_key: str
    fhir_version: str = "4.0"
    decision: dict[str, Any]
    facts: dict[str, Any]
    delivery: DeliveryState = Field(default_factory=DeliveryState)

    def summary(self) -> dict[str, Any]:
        """What ``outbox list`` shows: no patient identifiers."""
        last = self.delivery.last_error
        return {
            "id": self.id,
            "state": self.state,
            "media_type": self.media_type,
            "size": self.size,
            "decision": self.decision.get("outcome"),
            "blocking": [
                r["rule"] for r in self.decision.get("reasons", []) if r.get("outcome") != "store"
            ],
            "security": self.decision.get("security", []),
            "attempts": self.delivery.attempts,
            "last_error": last.model_dump(mode="json") if last else None,
        }


def _upgrade(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """Read an entry written by an earlier version (schema 1: no keys, free-form delivery)."""
    if data.get("schema_version", 1) >= ENTRY_SCHEMA:
        return data
    from .fhir.keys import consent_key, image_key

    consent = None
    if (path / "consent.json").is_file():
        from ._ingest import parse_consent

        consent = parse_consent(json.loads((path / "consent.json").read_text()))
    old = data.get("delivery", {}) or {}
    return {
        "schema_version": ENTRY_SCHEMA,
        **{k: data[k] for k in ("id", "state", "content", "created", "patient", "sha256")},
        "media_type": data["media_type"],
        "size": data["size"],
        "image_key": image_key(data["patient"], data["sha256"]),
        "consent_key": consent_key(consent),
        "decision": data["decision"],
        "facts": data.get("facts", {}),
        "delivery": {"attempts": int(old.get("attempts", 0))},
    }


class Entry:
    """One outbox entry: its id, state, folder and metadata."""

    __slots__ = ("id", "meta", "path", "state")

    def __init__(self, entry_id: str, state: State, path: Path, meta: EntryMeta) -> None:
        self.id = entry_id
        self.state = state
        self.path = path
        self.meta = meta

    def __repr__(self) -> str:
        return f"Entry({self.id!r}, {self.state!r})"

    @property
    def content_path(self) -> Path:
        return self.path / self.meta.content

    @property
    def bundle_path(self) -> Path:
        return self.path / "bundle.json"

    def read_json(self, name: str) -> Any:
        try:
            return json.loads((self.path / name).read_text())
        except (OSError, ValueError) as exc:
            raise OutboxError(f"outbox entry {self.id}: cannot read {name}") from exc

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _replace(path: Path, data: bytes) -> None:
    """Write a file atomically (aside, then renamed over), owner-only."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        _write(tmp, data)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False).encode()


def _meta_bytes(meta: EntryMeta) -> bytes:
    return meta.model_dump_json(indent=2).encode()


def _release(fd: int, folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.close(fd)


class Outbox:
    """A local outbox folder. Several processes may use it at once."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_outbox()
        try:
            for sub in ("", "ready", "held", "failed", "discarded", "sent", "sent/keys", ".tmp"):
                d = self.root / sub
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chmod(d, 0o700)
            # under the outbox lock: nobody clears work between its creation and its lock
            with self.lock():
                self._clear_abandoned_work()
                self.work = self.root / ".tmp" / f"w-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                self.work.mkdir(mode=0o700)
                fd = os.open(self.work / ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise OutboxError(
                f"cannot use the outbox folder: {exc.strerror or type(exc).__name__}"
            ) from exc
        self._finalizer = weakref.finalize(self, _release, fd, self.work)

    def close(self) -> None:
        """Remove this process's work folder (also done when the Outbox is garbage collected)."""
        self._finalizer()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _clear_abandoned_work(self) -> None:
        """Remove work left by processes that died (their lock is free), whatever its age."""
        for d in (self.root / ".tmp").iterdir():
            if d.is_dir() and not d.is_symlink():
                lock = d / ".lock"
                try:
                    fd = os.open(lock, os.O_WRONLY)
                except OSError:
                    fd = -1  # no lock file: not a live worker's folder
                if fd >= 0:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError:
                        os.close(fd)
                        continue  # its owner is alive
                    os.close(fd)
                shutil.rmtree(d, ignore_errors=True)
                log.info("outbox: removed work left by an ended process")
            else:
                with contextlib.suppress(OSError):
                    d.unlink()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive across processes: check for a duplicate, then write, with nobody between."""
        fd = os.open(self.root / ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def scratch(self, prefix: str = "scratch-") -> Path:
        """A new, empty, owner-only file path in this process's work folder."""
        return self.work / f"{prefix}{uuid.uuid4().hex}"

    # ------------------------------------------------------------------ writing

    def write(
        self,
        state: State,
        *,
        meta: EntryMeta,
        files: dict[str, bytes],
        content_from: Path,
        entry_id: str | None = None,
    ) -> Entry:
        """Write a whole entry atomically. ``content_from`` is moved (not copied) into it."""
        eid = entry_id or str(uuid.uuid4())
        final = self.root / state / eid
        if final.exists():
            raise OutboxError(f"outbox entry {eid} already exists in {state}")
        tmp = self.work / f"entry-{eid}"
        meta = meta.model_copy(update={"id": eid, "state": state})
        try:
            tmp.mkdir(mode=0o700)
            for name, data in files.items():
                _write(tmp / name, data)
            target = tmp / meta.content
            shutil.move(str(content_from), target)
            os.chmod(target, 0o600)
            _write(tmp / "entry.json", _meta_bytes(meta))
            os.rename(tmp, final)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise OutboxError(
                f"could not write outbox entry: {exc.strerror or type(exc).__name__}"
            ) from exc
        log.info("outbox: wrote %s entry %s", state, eid)
        return Entry(eid, state, final, meta)

    def transition(
        self, entry: Entry, to: State, *, meta: EntryMeta | None = None, files: dict[str, bytes]
    ) -> Entry:
        """Move an entry to another state (held -> ready, ready -> failed, failed -> ready),
        writing new files into it first. The entry is never without its image."""
        meta = (meta or entry.meta).model_copy(update={"state": to})
        final = self.root / to / entry.id
        if final.exists():
            raise OutboxError(f"outbox entry {entry.id} already exists in {to}")
        try:
            for name, data in files.items():
                _replace(entry.path / name, data)
            if to == "held":
                (entry.path / "bundle.json").unlink(missing_ok=True)
            _replace(entry.path / "entry.json", _meta_bytes(meta))
            os.rename(entry.path, final)
        except OSError as exc:
            raise OutboxError(
                f"could not move outbox entry {entry.id}: {exc.strerror or type(exc).__name__}"
            ) from exc
        log.info("outbox: entry %s %s -> %s", entry.id, entry.state, to)
        return Entry(entry.id, to, final, meta)

    def rewrite(self, entry: Entry, *, meta: EntryMeta, files: dict[str, bytes]) -> Entry:
        """Replace some of an entry's files and its metadata in place, atomically per file."""
        try:
            for name, data in files.items():
                _replace(entry.path / name, data)
            _replace(entry.path / "entry.json", _meta_bytes(meta))
        except OSError as exc:
            raise OutboxError(
                f"could not update outbox entry {entry.id}: {exc.strerror or type(exc).__name__}"
            ) from exc
        return Entry(entry.id, entry.state, entry.path, meta)

    def update_meta(self, entry: Entry, meta: EntryMeta) -> Entry:
        """Replace an entry's entry.json atomically."""
        return self.rewrite(entry, meta=meta, files={})

    def discard(self, entry_id: str, *, by: str, reason: str) -> dict[str, Any]:
        """Discard an entry (held or failed), keeping a record of who, when and why."""
        if not by.strip() or not reason.strip():
            raise OutboxError("discarding an image needs who (by) and why (reason)")
        entry = self.get(entry_id)
        record = {
            "id": entry.id,
            "was": entry.state,
            "discarded_at": _now().isoformat(),
            "by": by,
            "reason": reason,
            "sha256": entry.meta.sha256,
            "decision": entry.meta.decision,
            "last_error": (
                entry.meta.delivery.last_error.model_dump(mode="json")
                if entry.meta.delivery.last_error
                else None
            ),
        }
        try:
            _replace(self.root / "discarded" / f"{entry.id}.json", _dump(record))
            self._remove(entry)
        except OSError as exc:
            raise OutboxError(
                f"could not discard entry {entry.id}: {exc.strerror or type(exc).__name__}"
            ) from exc
        log.info("outbox: discarded %s entry %s", entry.state, entry.id)
        return record

    def mark_sent(self, entry: Entry, receipt: dict[str, Any]) -> Path:
        """Record delivery (receipt without the image) and remove the entry and its bytes."""
        path = self.root / "sent" / f"{entry.id}.json"
        receipt = {
            **receipt,
            "image_key": entry.meta.image_key,
            "consent_key": entry.meta.consent_key,
        }
        _replace(path, _dump(receipt))
        _replace(self._key_path(entry.meta.image_key, entry.meta.consent_key), entry.id.encode())
        self._remove(entry)
        log.info("outbox: entry %s delivered", entry.id)
        return path

    def _remove(self, entry: Entry) -> None:
        """Take an entry out of its state folder in one step (a rename), then delete it: a
        crash leaves the whole entry in place, or a folder the next process clears."""
        gone = self.work / f"gone-{entry.id}-{uuid.uuid4().hex[:8]}"
        os.rename(entry.path, gone)
        shutil.rmtree(gone, ignore_errors=True)

    @contextlib.contextmanager
    def claim(self, entry_id: str) -> Iterator[bool]:
        """Hold an entry for delivery across processes: yields False when another has it."""
        locks = self.root / ".locks"
        locks.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(locks / entry_id, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def _key_path(self, image_key: str, consent_key: str) -> Path:
        return self.root / "sent" / "keys" / f"{image_key}.{consent_key}"

    def receipts(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted((self.root / "sent").glob("*.json"))]

    # ------------------------------------------------------------------ reading

    def _load(self, state: State, path: Path) -> Entry | None:
        meta_path = path / "entry.json"
        if not meta_path.is_file():
            return None
        try:
            data = _upgrade(json.loads(meta_path.read_text()), path)
            data["state"] = state  # the folder is the truth
            meta = EntryMeta.model_validate(data)
        except (OSError, ValueError, KeyError, ValidationError) as exc:
            raise OutboxError(
                f"outbox entry {path.name} is unreadable ({type(exc).__name__})"
            ) from exc
        return Entry(path.name, state, path, meta)

    def get(self, entry_id: str) -> Entry:
        if not entry_id or "/" in entry_id or entry_id.startswith("."):
            raise EntryNotFound("no outbox entry with that id")
        for state in STATES:
            entry = self._load(state, self.root / state / entry_id)
            if entry is not None:
                return entry
        raise EntryNotFound(f"no outbox entry {entry_id!r}")

    def entries(self, state: State | None = None) -> Iterator[Entry]:
        for st in (state,) if state else STATES:
            for path in sorted((self.root / st).iterdir()):
                entry = self._load(st, path)
                if entry is not None:
                    yield entry

    def find(
        self, *, image_key: str, consent_key: str, states: tuple[State, ...] = STATES
    ) -> Entry | None:
        """An entry (not yet sent) of the same image with the same consent act."""
        for state in states:
            for entry in self.entries(state):
                if entry.meta.image_key == image_key and entry.meta.consent_key == consent_key:
                    return entry
        return None

    def sent_receipt(self, *, image_key: str, consent_key: str) -> str | None:
        """The id of the receipt of an earlier delivery of this image and consent act."""
        path = self._key_path(image_key, consent_key)
        try:
            eid = path.read_text().strip()
        except OSError:
            return None
        return eid if (self.root / "sent" / f"{eid}.json").is_file() else None

    def discarded(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted((self.root / "discarded").glob("*.json"))]
