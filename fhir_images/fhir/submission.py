"""A stored submission (the transaction Bundle an outbox entry holds), as delivery uses it.

Entries are addressed by their resource type and ``fullUrl``, never by position or by text
replacement; the Binary's bytes are added to the JSON as it is sent, streamed from a file.
A FHIR version subclasses :class:`Submission` with where its image keeps the Binary's URL and
its Consent the moment it was given.
"""

from __future__ import annotations

import base64
import copy
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .. import _codes as c
from .._exceptions import BadResponse
from .client import relative_reference
from .views import Labels


class StreamedBody:
    """A transaction's JSON with the Binary's ``data`` streamed from a file, base64-encoded.

    Iterable (the client sends it as it goes) with a known length (no chunked encoding).
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


@dataclass(frozen=True)
class Stored:
    """Where the server stored each entry of a submission, and which it created just now."""

    refs: dict[str, str]
    created: tuple[str, ...]
    image_type: str

    @property
    def image(self) -> str:
        return self.refs[self.image_type]

    @property
    def binary(self) -> str | None:
        return self.refs.get("Binary")

    @property
    def consent(self) -> str | None:
        return self.refs.get("Consent")


class Submission:
    """One outbox entry's transaction, ready to be adjusted and sent."""

    image_type = ""  # the resource type of the image in this FHIR version

    def __init__(self, bundle: dict[str, Any]) -> None:
        self._bundle = copy.deepcopy(bundle)
        entries = self._bundle.get("entry", [])
        self._by_type = {e["resource"]["resourceType"]: e for e in entries}
        if self.image_type not in self._by_type or "Binary" not in self._by_type:
            raise BadResponse("the outbox entry is not a complete submission: ingest it again")

    def _set_content_url(self, image: dict[str, Any], url: str) -> None:
        raise NotImplementedError

    def _consent_moment(self, consent: dict[str, Any]) -> datetime | None:
        raise NotImplementedError

    @property
    def wanted_labels(self) -> Labels:
        return Labels.of(self._by_type[self.image_type]["resource"]["meta"]["security"])

    @property
    def has_binary(self) -> bool:
        return "Binary" in self._by_type and any(
            e is self._by_type["Binary"] for e in self._bundle["entry"]
        )

    @property
    def has_consent(self) -> bool:
        return "Consent" in self._by_type

    @property
    def consent_date(self) -> datetime | None:
        consent = self._by_type.get("Consent")
        return self._consent_moment(consent["resource"]) if consent else None

    @property
    def consent_record(self) -> str | None:
        consent = self._by_type.get("Consent")
        if consent is None:
            return None
        return next(
            (
                str(i["value"])
                for i in consent["resource"].get("identifier", [])
                if i.get("system") == c.SID_RECORD
            ),
            None,
        )

    def reuse_binary(self, binary_ref: str) -> None:
        """The image is already on the server: send no Binary, and point at the one there."""
        binary = self._by_type["Binary"]
        self._bundle["entry"] = [e for e in self._bundle["entry"] if e is not binary]
        self._set_content_url(self._by_type[self.image_type]["resource"], binary_ref)

    def consent_inactive(self) -> None:
        """Store this consent act as history: a later one already governs the image."""
        self._by_type["Consent"]["resource"]["status"] = "inactive"

    def json(self) -> dict[str, Any]:
        return copy.deepcopy(self._bundle)

    def streamed(self, content: Path) -> StreamedBody:
        """The transaction with the bytes inside its Binary, streamed from ``content``."""
        return StreamedBody(self.json(), self._by_type["Binary"]["fullUrl"], content)

    def stored(self, response: dict[str, Any]) -> Stored:
        """Where the server stored each entry, from the transaction's answer."""
        answers = response.get("entry", [])
        sent = self._bundle["entry"]
        if len(answers) != len(sent):
            raise BadResponse("the transaction answer does not have one entry per request")
        refs: dict[str, str] = {}
        created: list[str] = []
        for entry, answer in zip(sent, answers, strict=True):
            kind = entry["resource"]["resourceType"]
            resp = answer.get("response", {}) if isinstance(answer, dict) else {}
            ref = relative_reference(str(resp.get("location", "")))
            if not ref.startswith(kind + "/"):
                raise BadResponse("the transaction answer does not say where it stored a resource")
            refs[kind] = ref
            if str(resp.get("status", "")).startswith("201"):
                created.append(ref)
        return Stored(refs, tuple(created), self.image_type)
