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

A server that behaves differently is a new profile, registered with :func:`register_server`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .subscriptions import RestHook, SubscriptionStyle

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
        add: list[dict[str, str]],
        delete: list[dict[str, str]],
        expected: list[dict[str, str]],
    ) -> list[dict[str, Any]] | None:
        """Apply the change; the labels afterwards if the server said, else None."""
        ...


def _read_plain(client: FhirClient, ref: str) -> tuple[list[dict[str, Any]], str | None]:
    resource = client.binary_meta(ref) if ref.startswith("Binary/") else client.read(ref)
    meta = resource.get("meta", {})
    return list(meta.get("security", [])), meta.get("versionId")


def _patch(client: FhirClient, ref: str, expected: list[dict[str, str]]) -> None:
    _, version = _read_plain(client, ref)
    client.patch(
        ref, [{"op": "add", "path": "/meta/security", "value": expected}], if_match=version
    )


@dataclass(frozen=True)
class MetaOperations:
    replace_header: dict[str, str] = field(default_factory=dict)

    def read(self, client: FhirClient, ref: str) -> list[dict[str, Any]]:
        return list(client.meta(ref).get("security", []))

    def write(
        self,
        client: FhirClient,
        ref: str,
        add: list[dict[str, str]],
        delete: list[dict[str, str]],
        expected: list[dict[str, str]],
    ) -> list[dict[str, Any]] | None:
        after: list[dict[str, Any]] | None = None
        if add:
            after = client.meta_add(ref, add).get("security")
        if delete:
            after = client.meta_delete(ref, delete).get("security")
        return after


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
        add: list[dict[str, str]],
        delete: list[dict[str, str]],
        expected: list[dict[str, str]],
    ) -> list[dict[str, Any]] | None:
        if ref.startswith("Binary/"):  # never re-send a Binary's bytes to change its labels
            _patch(client, ref, expected)
            return None
        resource = client.read(ref)
        version = resource.get("meta", {}).get("versionId")
        resource.setdefault("meta", {})["security"] = expected
        client.update(resource, if_match=version, replace_labels=True)
        return None


@dataclass(frozen=True)
class JsonPatchLabels(_ReadsResource):
    def write(
        self,
        client: FhirClient,
        ref: str,
        add: list[dict[str, str]],
        delete: list[dict[str, str]],
        expected: list[dict[str, str]],
    ) -> list[dict[str, Any]] | None:
        _patch(client, ref, expected)
        return None


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
    externalised Binary with JSON, not bytes), else a plain read."""

    operation: str | None = None


@dataclass(frozen=True)
class ServerProfile:
    """One server's behaviour."""

    name: str
    labels: LabelUpdate = field(default_factory=MetaOperations)
    binary_write: BinaryWrite = field(default_factory=BinaryWrite)
    binary_read: BinaryRead = field(default_factory=BinaryRead)
    subscriptions: SubscriptionStyle = field(default_factory=RestHook)
    extra_headers: dict[str, str] = field(default_factory=dict)


PROFILES: dict[str, ServerProfile] = {
    "generic": ServerProfile("generic"),
    "hapi": ServerProfile(
        "hapi",
        labels=MetaOperations(replace_header={"X-Meta-Snapshot-Mode": "SECURITY_LABEL"}),
        binary_write=BinaryWrite("$binary-access-write?path=Binary"),
        binary_read=BinaryRead("$binary-access-read?path=Binary"),
        extra_headers={"Cache-Control": "no-cache"},
    ),
    "medplum": ServerProfile("medplum", labels=ReplaceByUpdate()),
    "azure": ServerProfile("azure", labels=ReplaceByUpdate()),
}


def register_server(profile: ServerProfile, *, software: str | None = None) -> None:
    """Make a server profile available by name (``FHIR_SERVER_PROFILE``); ``software`` is the
    CapabilityStatement software name (lower case) that picks it when not forced."""
    PROFILES[profile.name] = profile
    if software:
        _BY_SOFTWARE[software] = profile.name


_BY_SOFTWARE: dict[str, str] = {"hapi": "hapi", "medplum": "medplum", "azure": "azure"}


def profile_for(capabilities: dict[str, Any]) -> ServerProfile:
    """The profile a CapabilityStatement's software name suggests (generic otherwise)."""
    software = str((capabilities.get("software") or {}).get("name", "")).lower()
    name = next((n for key, n in _BY_SOFTWARE.items() if key in software), "generic")
    return PROFILES[name]
