"""Subscriptions that call the hook service when images or consents change.

How a server is subscribed to is a strategy of its :class:`~.servers.ServerProfile`:
:class:`RestHook` creates one classic rest-hook ``Subscription`` per resource type (its
criteria a search, the shared secret in a channel header). A server that only notifies through
another mechanism gets another strategy; :func:`install_subscriptions` asks the server's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .._exceptions import FhirImagesError

if TYPE_CHECKING:
    from .client import FhirClient


class SubscriptionStyle(Protocol):
    def install(
        self, client: FhirClient, endpoint: str, header: str, resource_types: tuple[str, ...]
    ) -> list[str]:
        """Create or reuse the subscriptions; return their references (not yet active)."""
        ...

    def status(self, client: FhirClient, ref: str) -> str | None:
        """A subscription's status: requested, active, error or off."""
        ...


@dataclass(frozen=True)
class RestHook:
    """Classic rest-hook Subscriptions, one per resource type."""

    def install(
        self, client: FhirClient, endpoint: str, header: str, resource_types: tuple[str, ...]
    ) -> list[str]:
        version = client.version
        refs = []
        for rtype in resource_types:
            wanted = version.subscription(rtype, endpoint, header)
            existing = [
                s
                for s in client.search("Subscription", {"url": endpoint + "/hook"})
                if s.get("criteria") == wanted["criteria"]
            ]
            if existing:
                sub = existing[0]
                if sub.get("channel", {}).get("header") != [header] or sub.get("status") not in (
                    "active",
                    "requested",
                ):
                    wanted = version.subscription(rtype, endpoint, header, sid=sub["id"])
                    sub = client.update(wanted, if_match=sub.get("meta", {}).get("versionId"))
            else:
                sub = client.create(wanted)
            refs.append(f"Subscription/{sub['id']}")
        return refs

    def status(self, client: FhirClient, ref: str) -> str | None:
        status = client.read(ref).get("status")
        return status if isinstance(status, str) else None


def install_subscriptions(
    client: FhirClient,
    endpoint: str,
    secret: str,
    *,
    header_name: str,
    resource_types: tuple[str, ...] | None = None,
    timeout: float = 60.0,
) -> list[str]:
    """Subscribe ``endpoint``/hook to changes of images and consents, in the server's style,
    and wait until the server reports every subscription active."""
    endpoint = endpoint.rstrip("/")
    header = f"{header_name}: {secret}"
    style = client.profile.subscriptions
    types = resource_types or (client.version.image_type, "Consent")
    refs = style.install(client, endpoint, header, types)
    deadline = time.monotonic() + timeout
    for ref in refs:
        while True:
            status = style.status(client, ref)
            if status == "active":
                break
            if status == "error" or time.monotonic() > deadline:
                raise FhirImagesError(
                    f"{ref} did not become active (status {status}) within {timeout:.0f} s"
                )
            time.sleep(0.5)
    return refs
