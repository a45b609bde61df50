"""What differs between FHIR servers, as behaviour objects chosen per server.

A :class:`ServerProfile` is made of strategies:

* :class:`LabelUpdate`: how a resource's security labels are read and changed
  (:class:`MetaOperations`: ``$meta``/``$meta-add``/``$meta-delete``; :class:`ReplaceByUpdate`:
  a full update with If-Match, asking servers that merge labels to replace them;
  :class:`JsonPatchLabels`: a JSON Patch of ``/meta/security`` with If-Match). A Binary's labels
  never go by a full update (that would send its bytes again): by ``$meta-*`` or JSON Patch.
* :class:`BinaryWrite`: how an image's bytes reach its labelled Binary (inside the transaction,
  base64 and streamed; or raw into the Binary right after it, by an operation).
* :class:`BinaryRead`: how the bytes come back (a plain read, or an operation).
* :class:`~.subscriptions.SubscriptionStyle`: how the hook service is subscribed to changes.

The strategies a server gets come from probing it (:mod:`.probe`); a named profile here is
used only when forced (``FHIR_SERVER_PROFILE``, or for tests). A server that behaves
differently again is a new strategy, and a profile made of it registered with
:func:`register_server`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .subscriptions import RestHook, SubscriptionStyle, TopicBased

if TYPE_CHECKING:
    from .client import FhirClient


class LabelUpdate(Protocol):
    """How a server's labels are read and written."""

    @property
    def replace_header(self) -> dict[str, str]:
        """A header that makes an update replace labels on a server that merges them."""
        ...

    def read(self, client: FhirClient, ref: str) -> list[dict[str, Any]]: ...

    def write(
        self,
        client: FhirClient,
        ref: str,
        add: list[dict[str, Any]],
        delete: list[dict[str, str]],
        expected: list[dict[str, Any]],
    ) -> Written:
        """Apply the change; the labels and version afterwards, as far as the server said."""
        ...


@dataclass(frozen=True)
class Written:
    """What a server answered to a change of labels: the labels afterwards and the resource's
    version afterwards (each None where the answer did not say)."""

    labels: list[dict[str, Any]] | None = None
    version: str | None = None

    @classmethod
    def from_answer(cls, ref: str, answer: Any) -> Written:
        """From the resource a write answered with, if it is the resource written."""
        rtype, rid = ref.split("/", 1)
        if (
            not isinstance(answer, dict)
            or answer.get("resourceType") != rtype
            or str(answer.get("id")) != rid
        ):
            return cls()
        meta = answer.get("meta")
        meta = meta if isinstance(meta, dict) else {}
        labels = meta.get("security", [])
        version = meta.get("versionId")
        return cls(
            list(labels) if isinstance(labels, list) else None,
            str(version) if version is not None else None,
        )


def _read_meta(client: FhirClient, ref: str) -> dict[str, Any]:
    resource = client.binary_meta(ref) if ref.startswith("Binary/") else client.read(ref)
    meta = resource.get("meta")
    return dict(meta) if isinstance(meta, dict) else {}


def _read_plain(client: FhirClient, ref: str) -> tuple[list[dict[str, Any]], str | None]:
    meta = _read_meta(client, ref)
    return list(meta.get("security", [])), meta.get("versionId")


_SERVER_META = ("versionId", "lastUpdated")
_SUBSETTED = ("http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "SUBSETTED")


def _patch(client: FhirClient, ref: str, expected: list[dict[str, Any]]) -> dict[str, Any]:
    """JSON Patch the whole ``meta`` (with If-Match): a server may hold a resource without the
    ``meta`` it shows on reads, so a patch of ``/meta/security`` alone has no parent to add to.
    The tags and profiles read are kept, less what the read itself added (SUBSETTED)."""
    meta = _read_meta(client, ref)
    version = meta.get("versionId")
    value = {k: v for k, v in meta.items() if k not in _SERVER_META}
    tags = [t for t in value.get("tag", []) if (t.get("system"), t.get("code")) != _SUBSETTED]
    if tags:
        value["tag"] = tags
    else:
        value.pop("tag", None)
    value["security"] = expected
    return client.patch(ref, [{"op": "add", "path": "/meta", "value": value}], if_match=version)


@dataclass(frozen=True)
class MetaOperations:
    replace_header: dict[str, str] = field(default_factory=dict)

    def read(self, client: FhirClient, ref: str) -> list[dict[str, Any]]:
        return list(client.meta(ref).get("security", []))

    def write(
        self,
        client: FhirClient,
        ref: str,
        add: list[dict[str, Any]],
        delete: list[dict[str, str]],
        expected: list[dict[str, Any]],
    ) -> Written:
        after: list[dict[str, Any]] | None = None
        if add:
            after = client.meta_add(ref, add).get("security")
        if delete:
            after = client.meta_delete(ref, delete).get("security")
        return Written(after)  # a meta operation makes no new version


@dataclass(frozen=True)
class _ReadsResource:
    """Labels read from the resource itself (a Binary without its bytes)."""

    replace_header: dict[str, str] = field(default_factory=dict)

    def read(self, client: FhirClient, ref: str) -> list[dict[str, Any]]:
        return _read_plain(client, ref)[0]


@dataclass(frozen=True)
class ReplaceByUpdate(_ReadsResource):
    def write(
        self,
        client: FhirClient,
        ref: str,
        add: list[dict[str, Any]],
        delete: list[dict[str, str]],
        expected: list[dict[str, Any]],
    ) -> Written:
        if ref.startswith("Binary/"):  # never re-send a Binary's bytes to change its labels
            _patch(client, ref, expected)  # answered without the Binary: nothing said
            return Written()
        resource = client.read(ref)
        version = resource.get("meta", {}).get("versionId")
        resource.setdefault("meta", {})["security"] = expected
        answer = client.update(resource, if_match=version, replace_labels=True)
        # the labels are read back (an update answer may show them as sent, not as stored)
        return Written(version=Written.from_answer(ref, answer).version)


@dataclass(frozen=True)
class JsonPatchLabels(_ReadsResource):
    def write(
        self,
        client: FhirClient,
        ref: str,
        add: list[dict[str, Any]],
        delete: list[dict[str, str]],
        expected: list[dict[str, Any]],
    ) -> Written:
        # the labels are read back (a patch answer may show them as sent, not as stored)
        return Written(version=Written.from_answer(ref, _patch(client, ref, expected)).version)


@dataclass(frozen=True)
class BinaryWrite:
    """How the bytes reach the Binary: ``operation`` streams them raw into the Binary the
    transaction created (labels first); None sends them base64 inside the transaction."""

    operation: str | None = None

    @property
    def inline(self) -> bool:
        return self.operation is None


@dataclass(frozen=True)
class BinaryRead:
    """How the bytes come back: ``operation`` (HAPI answers a plain read of a large,
    externalised Binary with JSON, not bytes), else a plain read. ``json_only``: the server
    answers a read of a Binary only as FHIR JSON with its bytes in base64 (HFS), so one read
    gives the labels, the securityContext and the bytes together."""

    operation: str | None = None
    json_only: bool = False


@dataclass(frozen=True)
class ServerProfile:
    """One server's behaviour."""

    name: str
    labels: LabelUpdate = field(default_factory=MetaOperations)
    binary_write: BinaryWrite = field(default_factory=BinaryWrite)
    binary_read: BinaryRead = field(default_factory=BinaryRead)
    subscriptions: SubscriptionStyle = field(default_factory=RestHook)
    extra_headers: dict[str, str] = field(default_factory=dict)
    #: whether the server accepts AuditEvents from clients (else they go to an audit sink)
    audit_on_server: bool = True
    #: what a search needs to get a total (some servers give one only when asked)
    search_total: dict[str, str] = field(default_factory=dict)


PROFILES: dict[str, ServerProfile] = {
    "generic": ServerProfile("generic"),
    "hapi": ServerProfile(
        "hapi",
        labels=MetaOperations(replace_header={"X-Meta-Snapshot-Mode": "SECURITY_LABEL"}),
        binary_write=BinaryWrite("$binary-access-write?path=Binary"),
        binary_read=BinaryRead("$binary-access-read?path=Binary"),
        extra_headers={"Cache-Control": "no-cache"},
    ),
    "hfs": ServerProfile(
        "hfs",
        labels=JsonPatchLabels(),
        binary_read=BinaryRead(json_only=True),
        subscriptions=TopicBased(),
        audit_on_server=False,
        search_total={"_total": "accurate"},
    ),
    "medplum": ServerProfile("medplum", labels=ReplaceByUpdate()),
    "azure": ServerProfile("azure", labels=ReplaceByUpdate()),
}


def register_server(profile: ServerProfile) -> None:
    """Make a server profile available by name, to force with ``FHIR_SERVER_PROFILE`` (or
    ``FhirClient(profile=...)``) instead of the profile a probe of the server gives."""
    PROFILES[profile.name] = profile


_HINTS = {"hapi": "hapi", "helios": "hfs", "medplum": "medplum", "azure": "azure"}


def software_hint(capabilities: dict[str, Any]) -> str:
    """A short name for the server's software (for messages and the probed profile's name)."""
    software = str((capabilities.get("software") or {}).get("name", "")).lower()
    return next((n for key, n in _HINTS.items() if key in software), "generic")
