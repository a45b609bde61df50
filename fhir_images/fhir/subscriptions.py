"""Subscriptions that call the hook service when images or consents change.

How a server is subscribed to is a strategy of its :class:`~.servers.ServerProfile`, chosen by
probing (:mod:`.probe`):

* :class:`RestHook`: one classic rest-hook ``Subscription`` per resource type, its criteria a
  search; the server sends each changed resource (HAPI: ``PUT {endpoint}/{type}/{id}``).
* :class:`TopicBased`: one topic for the resource types and one topic-based ``Subscription``
  with id-only payloads; the server POSTs a notification Bundle naming what changed. In R4 it
  is the Subscriptions Backport (the topic a ``Basic``; HFS), in R5 the native
  ``SubscriptionTopic`` (HAPI R5). An R5 server need not send a Subscription's parameters as
  headers (HAPI 8.8 does not), so there the endpoint also carries a token derived from the
  secret (:func:`hook_path_token`), which the hook accepts instead of the header.
* :class:`NoSubscriptions`: the server acts on neither; installing the hook is refused.

Either way the channel carries the hook's shared secret as a header, and the hook re-reads
what a notification names from the server: a notification's content is never trusted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .._exceptions import FhirImagesError, IncompatibleServer

if TYPE_CHECKING:
    from .client import FhirClient

#: The header that carries the hook service's shared secret on every notification.
HOOK_SECRET_HEADER = "X-Fhir-Images-Hook-Secret"
TOPIC_URL = "https://fhir-images.org/fhir/SubscriptionTopic/image-and-consent-changes"
REASON = "fhir-images labels images and consents that arrive by other routes"


class SubscriptionStyle(Protocol):
    @property
    def name(self) -> str: ...

    def install(
        self,
        client: FhirClient,
        endpoint: str,
        header: str,
        resource_types: tuple[str, ...],
        *,
        narrow: str = "",
    ) -> list[str]:
        """Create or reuse what makes the server call ``endpoint``; return the references of
        what it made or reused, Subscriptions among them (not yet active). ``narrow``: a search
        that limits classic criteria, or a distinct topic URL (for probes)."""
        ...


def hook_path_token(secret: str) -> str:
    """The token a topic-based endpoint carries in its path, for servers that do not send a
    Subscription's headers: derived from the hook's secret (which it does not reveal)."""
    mac = hmac.new(secret.encode(), b"fhir-images hook endpoint", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def _ensure(
    client: FhirClient, criteria: str, endpoint: str, header: str, *, topic: bool = False
) -> str:
    """The Subscription to ``endpoint`` with these criteria (a search, or a topic's URL): reused
    when it has the header and is not off or in error, updated (If-Match) when it is, created
    when there is none."""
    version = client.version
    existing = [
        s
        for s in client.search("Subscription", {"url": endpoint})
        if version.subscription_target(s) == criteria
    ]
    if not existing:
        sub = client.create(
            version.subscription(criteria, endpoint, header, reason=REASON, topic=topic)
        )
        return f"Subscription/{sub['id']}"
    sub = existing[0]
    usable = sub.get("status") in ("active", "requested")
    if version.subscription_headers(sub) != [header] or not usable:
        wanted = version.subscription(
            criteria, endpoint, header, reason=REASON, topic=topic, sid=sub["id"]
        )
        sub = client.update(wanted, if_match=sub.get("meta", {}).get("versionId"))
    return f"Subscription/{sub['id']}"


@dataclass(frozen=True)
class RestHook:
    """Classic rest-hook Subscriptions, one per resource type."""

    name: str = "rest-hook"

    def install(
        self,
        client: FhirClient,
        endpoint: str,
        header: str,
        resource_types: tuple[str, ...],
        *,
        narrow: str = "",
    ) -> list[str]:
        return [_ensure(client, f"{rtype}?{narrow}", endpoint, header) for rtype in resource_types]


@dataclass(frozen=True)
class TopicBased:
    """A topic for the resource types and one topic-based Subscription (id-only)."""

    name: str = "topic-based"

    def install(
        self,
        client: FhirClient,
        endpoint: str,
        header: str,
        resource_types: tuple[str, ...],
        *,
        narrow: str = "",
    ) -> list[str]:
        version = client.version
        url = f"{TOPIC_URL}-{narrow}" if narrow else TOPIC_URL
        url = f"{url}-{'-'.join(sorted(t.lower() for t in resource_types))}"
        rtype, params = version.topic_search(url)
        topics = [t for t in client.search(rtype, params) if version.topic_url_of(t) == url]
        if topics:
            topic = topics[0]
        else:
            topic = client.create(
                version.subscription_topic(url, resource_types, "Images and consents changed")
            )
        if version.name == "R5":
            secret = header.split(":", 1)[1].strip()
            endpoint = f"{endpoint.rstrip('/')}/t/{hook_path_token(secret)}"
        return [f"{rtype}/{topic['id']}", _ensure(client, url, endpoint, header, topic=True)]


@dataclass(frozen=True)
class NoSubscriptions:
    """A server that acts on no kind of Subscription fhir-images can make."""

    name: str = "none"

    def install(
        self,
        client: FhirClient,
        endpoint: str,
        header: str,
        resource_types: tuple[str, ...],
        *,
        narrow: str = "",
    ) -> list[str]:
        raise IncompatibleServer(
            "the server acts on neither classic nor topic-based rest-hook Subscriptions: "
            "the hook cannot be installed on it"
        )


def wait_active(client: FhirClient, refs: list[str], timeout: float) -> None:
    """Wait until every Subscription among ``refs`` is active; fail on error or time-out."""
    deadline = time.monotonic() + timeout
    for ref in (r for r in refs if r.startswith("Subscription/")):
        while True:
            status = client.read(ref).get("status")
            if status == "active":
                break
            if status == "error" or time.monotonic() > deadline:
                raise FhirImagesError(
                    f"{ref} did not become active (status {status}) within {timeout:.0f} s"
                )
            time.sleep(0.5)


def install_subscriptions(
    client: FhirClient,
    endpoint: str,
    secret: str,
    *,
    header_name: str = HOOK_SECRET_HEADER,
    resource_types: tuple[str, ...] | None = None,
    timeout: float = 60.0,
) -> list[str]:
    """Subscribe ``endpoint``/hook to changes of images and consents, in the server's style,
    and wait until the server reports every subscription active. Returns the Subscriptions."""
    hook = endpoint.rstrip("/") + "/hook"
    header = f"{header_name}: {secret}"
    types = resource_types or (client.version.image_type, "Consent")
    refs = client.profile.subscriptions.install(client, hook, header, types)
    wait_active(client, refs, timeout)
    return [r for r in refs if r.startswith("Subscription/")]
