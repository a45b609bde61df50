"""The outbox: a local store-and-forward folder, the embedded default.

Layout (every folder 0700, every file 0600: these are patient images)::

    OUTBOX/
      ready/<id>/    entry.json, bundle.json, context.json, [consent.json], content.<ext>
      held/<id>/     entry.json, context.json, [consent.json], content.<ext>
      discarded/<id>.json   who discarded a held image, when and why (no image)
      sent/<id>.json        the receipt of a delivered entry: server ids, checks (no image)
      .tmp/          entries being written; never listed, cleared when found stale

An entry is written whole into ``.tmp`` and then renamed into place, so a
crash leaves either the complete entry or none. A ready entry is exactly what
will be sent: upload ``content.<ext>`` as a Binary, replace
``binary_placeholder`` in ``bundle.json`` with ``Binary/{id}``, post the
Bundle as a transaction.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from ._exceptions import EntryNotFound, OutboxError

log = logging.getLogger("fhir_images.outbox")

State = Literal["ready", "held"]
STATES: tuple[State, ...] = ("ready", "held")
_STALE_TMP_SECONDS = 3600


def default_outbox() -> Path:
    return Path(os.environ.get("FHIR_IMAGES_OUTBOX", "fhir-images-outbox"))


@dataclass(frozen=True)
class Entry:
    id: str
    state: State
    path: Path
    meta: dict[str, Any]

    @property
    def content_path(self) -> Path:
        return self.path / str(self.meta["content"])

    @property
    def bundle_path(self) -> Path:
        return self.path / "bundle.json"

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text())


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False).encode()


class Outbox:
    """A local outbox folder. Safe for one writer at a time per entry."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_outbox()
        try:
            for sub in ("", "ready", "held", "discarded", "sent", ".tmp"):
                d = self.root / sub
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chmod(d, 0o700)
        except OSError as exc:
            raise OutboxError(f"cannot use outbox folder {self.root}: {exc.strerror}") from exc
        self._clear_stale_tmp()

    def _clear_stale_tmp(self) -> None:
        now = time.time()
        for d in (self.root / ".tmp").iterdir():
            try:
                if now - d.stat().st_mtime > _STALE_TMP_SECONDS:
                    shutil.rmtree(d, ignore_errors=True)
            except FileNotFoundError:
                pass

    # ------------------------------------------------------------------ writing

    def write(
        self,
        state: State,
        *,
        meta: dict[str, Any],
        files: dict[str, bytes],
        content_from: Path,
        content_name: str,
        entry_id: str | None = None,
    ) -> Entry:
        """Write a whole entry atomically. ``content_from`` is moved (not copied) into it."""
        eid = entry_id or str(uuid.uuid4())
        final = self.root / state / eid
        if final.exists():
            raise OutboxError(f"outbox entry {eid} already exists in {state}")
        tmp = self.root / ".tmp" / f"{eid}.{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir(mode=0o700)
            meta = {**meta, "id": eid, "state": state, "content": content_name}
            for name, data in files.items():
                _write(tmp / name, data)
            target = tmp / content_name
            shutil.move(str(content_from), target)
            os.chmod(target, 0o600)
            _write(tmp / "entry.json", _dump(meta))
            os.rename(tmp, final)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise OutboxError(f"could not write outbox entry: {exc.strerror or exc}") from exc
        log.info("outbox: wrote %s entry %s", state, eid)
        return Entry(eid, state, final, meta)

    def move(
        self, entry: Entry, to: State, *, meta: dict[str, Any], files: dict[str, bytes]
    ) -> Entry:
        """Re-write an entry into another state (held -> ready), then remove the old one."""
        tmp_content = self.root / ".tmp" / f"content.{uuid.uuid4().hex}"
        shutil.copy2(entry.content_path, tmp_content)
        new = self.write(
            to,
            meta=meta,
            files=files,
            content_from=tmp_content,
            content_name=entry.meta["content"],
            entry_id=entry.id,
        )
        shutil.rmtree(entry.path, ignore_errors=True)
        return new

    def discard(self, entry_id: str, *, by: str, reason: str) -> dict[str, Any]:
        """Discard an entry (usually a held one), keeping a record of who, when and why."""
        if not by.strip() or not reason.strip():
            raise OutboxError("discarding an image needs who (by) and why (reason)")
        entry = self.get(entry_id)
        record = {
            "id": entry.id,
            "was": entry.state,
            "discarded_at": datetime.now(UTC).isoformat(),
            "by": by,
            "reason": reason,
            "sha256": entry.meta.get("sha256"),
            "decision": entry.meta.get("decision"),
        }
        _write(self.root / "discarded" / f"{entry.id}.json", _dump(record))
        shutil.rmtree(entry.path)
        log.info("outbox: discarded %s entry %s", entry.state, entry.id)
        return record

    def update_meta(self, entry: Entry, meta: dict[str, Any]) -> Entry:
        """Replace an entry's entry.json atomically (write aside, then rename over)."""
        tmp = entry.path / f".entry.json.{uuid.uuid4().hex[:8]}"
        try:
            _write(tmp, _dump(meta))
            os.replace(tmp, entry.path / "entry.json")
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise OutboxError(f"could not update outbox entry: {exc.strerror or exc}") from exc
        return Entry(entry.id, entry.state, entry.path, meta)

    def mark_sent(self, entry: Entry, receipt: dict[str, Any]) -> Path:
        """Record delivery (receipt without the image) and remove the entry and its bytes."""
        path = self.root / "sent" / f"{entry.id}.json"
        tmp = self.root / ".tmp" / f"{entry.id}.sent.{uuid.uuid4().hex[:8]}"
        _write(tmp, _dump(receipt))
        os.replace(tmp, path)
        shutil.rmtree(entry.path)
        log.info("outbox: entry %s delivered", entry.id)
        return path

    def receipts(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted((self.root / "sent").glob("*.json"))]

    # ------------------------------------------------------------------ reading

    def get(self, entry_id: str) -> Entry:
        for state in STATES:
            path = self.root / state / entry_id
            if (path / "entry.json").is_file():
                return Entry(entry_id, state, path, json.loads((path / "entry.json").read_text()))
        raise EntryNotFound(f"no outbox entry {entry_id!r} in {self.root}")

    def entries(self, state: State | None = None) -> Iterator[Entry]:
        for st in (state,) if state else STATES:
            folder = self.root / st
            for path in sorted(folder.iterdir()):
                meta_path = path / "entry.json"
                if meta_path.is_file():
                    yield Entry(path.name, st, path, json.loads(meta_path.read_text()))

    def find(self, *, sha256: str, patient: str, state: State = "ready") -> Entry | None:
        for entry in self.entries(state):
            if entry.meta.get("sha256") == sha256 and entry.meta.get("patient") == patient:
                return entry
        return None

    def discarded(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted((self.root / "discarded").glob("*.json"))]
