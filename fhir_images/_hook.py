"""The server hook: label images that reach the FHIR server by other routes.

A FHIR server calls this ASGI service through a REST-hook Subscription when a
Media or Consent is created or updated: a classic one sends the resource to
``/hook/{type}/{id}`` (HAPI); a topic-based one (the R4 Subscriptions Backport)
POSTs a small history Bundle naming what changed to ``/hook`` (HFS), after a
handshake that is answered 200. The service answers at once (202) and does the
work in the background, from a bounded queue:

* it re-reads the Media from the server (a notification's content is never
  trusted: only the type and id of what it names are used), with the Patient's
  birth date and the Consents that reference it. Of a classic notification's
  body only the version and labels it claims are kept, and used for one thing
  only: when they are exactly as the hook left that image, the notification is
  the echo of its own labelling and nothing is read or done (a claim that is
  false can only make the image be read and assessed, never skipped: a change
  since the hook's labelling notifies on its own, with its own state);
* it works out the labels with the same label function as ``ingest``, failing
  closed on what the server does not say (intimacy unknown counts as intimate,
  an unknown maker as someone without parental responsibility);
* it checks consent as far as the record shows it: implicit for G3 kinds,
  otherwise an active Consent that permits care must reference the Media, and a
  clinical purpose must be recorded;
* it raises labels through :func:`apply_labels` (only adding or raising, never
  lowering), adds restrictive handling labels when consent or purpose is
  missing, and then opens a Task for a clinician (closed again once the record
  is complete).

Notifications queued together (up to ``batch``) are handled together: their images, Patients,
Consents and Tasks are read in one search a kind (a search that fails is read one by one), then
each image is labelled, retried and reported on its own. An image whose version and labels are
exactly as the hook left them is not assessed again: the notification is the echo of its own
labelling.

Callers authenticate with a shared secret header set in the Subscription.
Requests without it get 401. A full queue answers 503 with Retry-After, so the
server retries later. Notifications for the same resource are coalesced while
queued. Logs carry resource ids, never patient identifiers or content.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._codes import SID_HOOK_TASK
from ._exceptions import FhirImagesError, ResourceNotFound
from ._inputs import reference_parts
from .fhir import FhirClient, ImageView, Labels, Repository, apply_labels, label_image
from .fhir.subscriptions import HOOK_SECRET_HEADER, hook_path_token
from .fhir.subscriptions import install_subscriptions as subscribe
from .fhir.views import ConsentView, PatientView, TaskView
from .policy import Assessment, Policy, get_policy

log = logging.getLogger("fhir_images.hook")

SECRET_HEADER = HOOK_SECRET_HEADER
_DRAIN_CHUNK = 1 << 16


@dataclass
class Known:
    """What was read for a batch of notifications, one search a kind: the images, their
    Patients (None: none on the server), the Consents naming each image and the hook's Tasks
    by identifier. What is not here is read one by one."""

    images: dict[str, ImageView] = field(default_factory=dict)
    patients: dict[str, PatientView | None] = field(default_factory=dict)
    consents: dict[str, list[ConsentView]] = field(default_factory=dict)
    tasks: dict[str, list[TaskView]] = field(default_factory=dict)
    #: Tasks to open for the batch's images, created together once they are all labelled:
    #: (image, Task, identifier)
    to_open: list[tuple[str, dict[str, Any], str]] | None = None


#: an image's version and its labels: as the labeller left it, or as a notification says it is
State = tuple[str | None, Labels]


def _task_identifier(image_ref: str) -> str:
    return f"{SID_HOOK_TASK}|{image_ref}"


class Labeller:
    """Reads an image with what it needs, labels it as the policy pack says, and reports what is
    missing."""

    #: how many images' state as last left is remembered (to know a notification of one's own
    #: labelling when it comes back)
    REMEMBERED = 10_000

    def __init__(
        self, client: FhirClient, policy: str | Policy = "default", *, parallel: int = 4
    ) -> None:
        self.client = client
        #: how many images are labelled at once, over all batches
        self.parallel = max(1, parallel)
        self.records = Repository(client)
        self.policy = get_policy(policy)
        self.unlabelled_binaries = 0
        self.echoes = 0
        self._left: OrderedDict[str, State] = OrderedDict()
        self._left_lock = threading.Lock()
        self._threads: dict[str, ThreadPoolExecutor] = {}

    def process_many(
        self, items: list[tuple[str, str]], claims: dict[str, State] | None = None
    ) -> list[list[Assessment] | Exception]:
        """:meth:`process` for several notifications, what their images need read in one
        search a kind (one by one where a search fails or leaves something out); each item's
        result, or the exception that stopped it (the others go on). ``claims``: the state
        (version and labels) a notification says an image is in; an image claimed to be
        exactly as this labeller left it is the echo of its labelling, and is not read."""
        claims = claims or {}
        echo = [
            t != "Consent" and self._left_as(f"{t}/{i}", claims.get(f"{t}/{i}")) for t, i in items
        ]
        images = [
            f"{t}/{i}" for (t, i), e in zip(items, echo, strict=True) if t != "Consent" and not e
        ]
        known = self.prefetch(images) if len(images) > 1 else Known()
        results = self._each(items, echo, known)
        if known.to_open:
            # an image whose Task could not be opened is not done: its notification is retried
            failed = self._open_tasks(known.to_open)
            for i, (rtype, rid) in enumerate(items):
                why = failed.get(f"{rtype}/{rid}")
                if why is not None and not isinstance(results[i], Exception):
                    results[i] = why
            with self._left_lock:  # assessed again when retried, not taken for an echo
                for ref in failed:
                    self._left.pop(ref, None)
        return results

    def _each(
        self, items: list[tuple[str, str]], echo: list[bool], known: Known
    ) -> list[list[Assessment] | Exception]:
        """Process a batch's items: different images side by side (up to ``parallel`` at once
        over all batches), the items about one image one after another, and Consents after the
        images (a Consent's images may be among them: never two writers of one image)."""
        results: list[list[Assessment] | Exception] = [[] for _ in items]
        lanes: dict[str, list[int]] = {}
        consents: list[int] = []
        for k, ((rtype, rid), is_echo) in enumerate(zip(items, echo, strict=True)):
            if is_echo:
                with self._left_lock:
                    self.echoes += 1
            elif rtype == "Consent":
                consents.append(k)
            else:
                lanes.setdefault(f"{rtype}/{rid}", []).append(k)

        def run(ks: list[int]) -> None:
            for k in ks:
                try:
                    results[k] = self.process(*items[k], known=known)
                except Exception as exc:  # reported per item by the caller
                    results[k] = exc

        if len(lanes) > 1 and self.parallel > 1:
            # kept threads, each with its connection to the server
            list(self._kept_threads("label", self.parallel).map(run, lanes.values()))
        else:
            for ks in lanes.values():
                run(ks)
        run(consents)
        return results

    def _open_tasks(
        self, to_open: list[tuple[str, dict[str, Any], str]]
    ) -> dict[str, FhirImagesError]:
        """Create the Tasks of a batch in one transaction of conditional creates (one by one
        if that fails); the images whose Task could not be created, with why."""
        records = self.records
        try:
            records.create_many([(task, f"identifier={ident}") for _, task, ident in to_open])
            return {}
        except FhirImagesError:
            pass
        failed: dict[str, FhirImagesError] = {}
        for image_ref, task, ident in to_open:
            try:
                records.create_once(task, f"identifier={ident}")
            except FhirImagesError as exc:
                failed[image_ref] = exc
        return failed

    def prefetch(self, refs: list[str]) -> Known:
        """Read what :meth:`label_image` needs for several images, one search a kind. A search
        that fails leaves its kind to be read one by one: nothing is decided on less than a
        read would give."""
        records, known = self.records, Known(to_open=[])
        try:
            known.images = records.images(refs)
        except FhirImagesError:
            return known
        # an image as this labeller left it is an echo (see label_image): nothing more to read
        found = sorted(r for r, image in known.images.items() if not self._as_left(image))
        if not found:
            return known
        subjects = sorted({s for r in found if (s := known.images[r].subject)})
        reads: dict[str, Callable[[], Any]] = {
            "patients": lambda: records.patients(subjects),
            "consents": lambda: records.consents_for_images(found),
            "tasks": lambda: records.tasks_with_identifiers([_task_identifier(r) for r in found]),
        }
        # the three searches at once: each waits on the server, not on the others
        pool = self._kept_threads("prefetch", 6)
        futures = {kind: pool.submit(read) for kind, read in reads.items()}
        for kind, future in futures.items():
            with contextlib.suppress(FhirImagesError):
                setattr(known, kind, future.result())
        return known

    def process(
        self, resource_type: str, resource_id: str, *, known: Known | None = None
    ) -> list[Assessment]:
        if resource_type == "Consent":
            try:
                consent = self.records.consent(f"Consent/{resource_id}")
            except ResourceNotFound:
                return []
            # a change of consent is news about every image it names, whatever their state
            found = (self.label_image(ref) for ref in consent.images)
            return [assessed for assessed in found if assessed is not None]
        assessed = self.label_image(
            f"{resource_type}/{resource_id}", skip_if_as_left=True, known=known
        )
        return [assessed] if assessed is not None else []

    def label_image(
        self, ref: str, *, skip_if_as_left: bool = False, known: Known | None = None
    ) -> Assessment | None:
        """Label one image (see the module). With ``skip_if_as_left``, an image whose version
        and labels are exactly as this labeller left them is not assessed again (None): the
        notification is the echo of its own labelling (a server that notifies label changes),
        not news of the image. Any other change (a new version, a label added or removed by
        anyone) is assessed in full."""
        client, records = self.client, self.records
        known = known or Known()
        image = known.images.get(ref) or records.image(ref)
        if skip_if_as_left and self._as_left(image):
            with self._left_lock:
                self.echoes += 1
            return None
        patient = None
        if image.subject in known.patients:
            patient = known.patients[image.subject]
        elif image.subject:
            patient = records.patient(image.subject)
        consents = known.consents.get(ref)
        if consents is None:
            consents = records.consents_for_image(ref)
        result = self.policy.assess(image, patient, consents)
        current = image.labels.codings()
        own = self._own_binary(image, result)
        left: list[dict[str, str]]
        # the image's version after its labels were written (a server where that makes a new
        # version): its echo is then known for one too
        versions: list[str] = []

        def image_only() -> list[dict[str, str]]:
            return apply_labels(
                client,
                result.media,
                result.labels,
                current=current,
                keep_higher=True,
                on_version=versions.append,
            )

        if own is None:
            left = image_only()
        else:
            binary, binary_current = own
            try:
                # the Binary's labels were just read with its securityContext: not read again
                left = label_image(
                    client,
                    result.media,
                    result.labels,
                    binary=binary,
                    current=current,
                    binary_current=binary_current,
                    on_version=versions.append,
                )
            except FhirImagesError as exc:
                # the image still gets its labels; the Binary is reported, not forgotten
                left = image_only()
                self._unlabelled_binary(result, f"{type(exc).__name__}")
        self._report(image, result, known.tasks.get(_task_identifier(image.ref)), known.to_open)
        self._remember(image, left, versions[-1] if versions else image.version_id)
        return result

    def _kept_threads(self, name: str, count: int) -> ThreadPoolExecutor:
        """Threads kept for the service's life (each keeps its connection to the server), by
        use: ``label`` labels the images of all batches side by side, ``prefetch`` runs a
        batch's reads that do not wait on each other."""
        with self._left_lock:
            pool = self._threads.get(name)
            if pool is None:
                pool = self._threads[name] = ThreadPoolExecutor(count, thread_name_prefix=name)
            return pool

    def _as_left(self, image: ImageView) -> bool:
        """The image's version and labels are exactly as this labeller left them."""
        return self._left_as(image.ref, (image.version_id, image.labels))

    def _left_as(self, ref: str, state: State | None) -> bool:
        """This labeller left the image ``ref`` in exactly this state."""
        if state is None:
            return False
        with self._left_lock:
            as_left = self._left.get(ref)
        return as_left is not None and as_left == state

    def _remember(
        self, image: ImageView, labels: list[dict[str, Any]], version: str | None
    ) -> None:
        """The image's state as left: its version (as read, or as the label write answered
        where that made one) and the labels read back after labelling."""
        with self._left_lock:
            self._left[image.ref] = (version, Labels.of(labels))
            self._left.move_to_end(image.ref)
            while len(self._left) > self.REMEMBERED:
                self._left.popitem(last=False)

    def _own_binary(
        self, image: ImageView, result: Assessment
    ) -> tuple[str, list[dict[str, Any]]] | None:
        """The image's Binary and its labels, given a securityContext naming the image if it has
        none; None (with the problem recorded) when the bytes are not a Binary this image may
        label."""
        records = self.records
        binary = records.binary_of(image)
        if binary is None:
            if image.content_url:
                result.problems.append("the image's bytes are not a Binary on this server (G11)")
                result.restrict()
            return None
        try:
            view = records.binary(binary)
            if view.security_context is None:
                self.client.patch(
                    binary,
                    [{"op": "add", "path": "/securityContext", "value": {"reference": image.ref}}],
                    if_match=view.version_id,
                )
            elif view.security_context != image.ref:
                result.problems.append(
                    "the image points at bytes (a Binary) that belong to another resource"
                )
                result.restrict()
                return None
        except FhirImagesError as exc:
            self._unlabelled_binary(result, type(exc).__name__)
            return None
        return binary, view.labels.codings()

    def _unlabelled_binary(self, result: Assessment, why: str) -> None:
        with self._left_lock:
            self.unlabelled_binaries += 1
        result.problems.append(f"the image's bytes (its Binary) could not be labelled ({why})")
        result.restrict()

    def _report(
        self,
        image: ImageView,
        result: Assessment,
        tasks: list[TaskView] | None = None,
        to_open: list[tuple[str, dict[str, Any], str]] | None = None,
    ) -> None:
        """Open (or close) a Task so a clinician sees an image whose record is incomplete
        (``tasks``: the hook's Tasks about the image, when already read; ``to_open``: where a
        new Task goes to be created with the rest of its batch)."""
        records = self.records
        identifier = _task_identifier(result.media)
        if tasks is None:
            tasks = records.tasks_with_identifier(identifier)
        existing = next(iter(tasks), None)
        if result.complete:
            if existing and existing.status == "requested":
                records.update(records.version.completed(existing), existing.version_id)
            return
        description = (
            "An image arrived without what the record needs: "
            + "; ".join(result.problems)
            + ". It is labelled restrictively until this is resolved."
        )
        conf = Labels.of(result.labels).confidentiality
        task = records.version.review_task(image, conf, description, None)
        if existing is None and to_open is not None:
            to_open.append((image.ref, task, identifier))
        elif existing is None:
            records.create_once(task, f"identifier={identifier}")
        elif existing.description != description or existing.status != "requested":
            task["id"] = existing.ref.split("/", 1)[1]
            records.update(task, existing.version_id)


# ------------------------------------------------------------------------------- service


@dataclass
class HookStats:
    received: int = 0
    rejected: int = 0
    processed: int = 0
    failed: int = 0
    coalesced: int = 0
    recent_failures: deque[str] = field(default_factory=lambda: deque(maxlen=50))
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=1000))


class HookService:
    """The ASGI app plus its queue and workers."""

    def __init__(
        self,
        client: FhirClient,
        secret: str,
        *,
        queue_size: int = 1000,
        workers: int = 2,
        retries: int = 3,
        retry_delay: float = 5.0,
        max_body: int = 16 << 20,
        policy: str | Policy = "default",
        max_notification: int = 1 << 20,
        max_events: int = 1000,
        batch: int = 20,
        gather: float = 0.05,
        parallel: int = 4,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the hook secret must be at least 16 characters")
        self.labeller = Labeller(client, policy, parallel=parallel)
        self.secret = secret
        self.queue_size = queue_size
        self.workers = workers
        self.retries = retries
        self.retry_delay = retry_delay
        self.max_body = max_body
        self.max_notification = max_notification
        self.max_events = max_events
        #: at most this many queued notifications are taken at once (their reads batched)
        self.batch = max(1, batch)
        #: seconds a worker waits, after the first, for more notifications to batch with it
        #: (a burst arrives over time: without waiting, each worker takes one or two)
        self.gather = max(0.0, gather)
        self.stats = HookStats()
        self._path_token = hook_path_token(secret)
        self._queue: asyncio.Queue[tuple[str, str, int, float]] | None = None
        self._pending: set[tuple[str, str]] = set()
        #: what a queued notification's body says of its image's state (None: nothing usable)
        self._claims: dict[tuple[str, str], State | None] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.app = Starlette(
            routes=[
                Route("/health", self.health, methods=["GET"]),
                Route("/hook/t/{token}", self.bare_notify, methods=["PUT", "POST"]),
                Route("/hook/{rtype}/{rid}", self.notify, methods=["PUT", "POST"]),
                Route("/hook", self.bare_notify, methods=["PUT", "POST"]),
            ],
            lifespan=self._lifespan,
        )

    def _lifespan(self, app: Starlette) -> Any:
        service = self

        class _Ctx:
            async def __aenter__(self) -> None:
                service.start()

            async def __aexit__(self, *exc: object) -> None:
                await service.stop()

        return _Ctx()

    def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.queue_size)
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _authorised(self, request: Request) -> bool:
        """The shared secret in its header, or (for servers that send no headers of a
        topic-based Subscription) the token derived from it in the path."""
        token = request.path_params.get("token")
        if token is not None:
            return hmac.compare_digest(token.encode(), self._path_token.encode())
        given = request.headers.get(SECRET_HEADER, "")
        return hmac.compare_digest(given.encode(), self.secret.encode())

    async def _body(self, request: Request, limit: int, keep: int) -> tuple[bool, bytes | None]:
        """Read the body to its end: whether it is within ``limit`` bytes (False, without
        reading further, when it is not) and the body itself when it is within ``keep`` bytes
        (None when larger)."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return False, None
        kept: bytearray | None = bytearray()
        seen = 0
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > limit:
                return False, None
            if kept is not None:
                kept += chunk
                if len(kept) > keep:
                    kept = None
        return True, (bytes(kept) if kept is not None else None)

    async def notify(self, request: Request) -> Response:
        self.stats.received += 1
        if not self._authorised(request):
            self.stats.rejected += 1
            return _outcome("unauthorised", status_code=401)
        rtype, rid = request.path_params["rtype"], request.path_params["rid"]
        client = self.labeller.client
        try:
            image_type = await asyncio.to_thread(lambda: client.version.image_type)
        except FhirImagesError:
            self.stats.rejected += 1
            return _outcome("the FHIR server cannot be read now", status_code=503)
        if rtype not in (image_type, "Consent") or reference_parts(f"{rtype}/{rid}") is None:
            self.stats.rejected += 1
            return _outcome(
                f"only {image_type} and Consent notifications, with ids by FHIR's rules, "
                "are handled",
                status_code=400,
            )
        # the resource is re-read from the server: only what the body claims is kept
        fits, body = await self._body(request, self.max_body, keep=self.max_notification)
        if not fits:
            self.stats.rejected += 1
            return _outcome("the notification body is too large", status_code=413)
        return self._enqueue(rtype, rid, claim=_claimed_state(body, rtype, rid))

    async def bare_notify(self, request: Request) -> Response:
        """A topic-based notification (R4 Subscriptions Backport): a history Bundle naming what
        changed. Only the type and id of each event's focus are taken from it; the resources
        are re-read from the server. Handshakes and heartbeats are answered 200."""
        self.stats.received += 1
        if not self._authorised(request):
            self.stats.rejected += 1
            return _outcome("unauthorised", status_code=401)
        _, body = await self._body(request, self.max_notification, keep=self.max_notification)
        if body is None:
            self.stats.rejected += 1
            return _outcome("the notification body is too large", status_code=413)
        try:
            bundle = json.loads(body, object_pairs_hook=_no_duplicate_keys)
        except (ValueError, RecursionError):
            self.stats.rejected += 1
            return _outcome("the notification is not a JSON Bundle", status_code=400)
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            self.stats.rejected += 1
            return _outcome("the notification is not a Bundle", status_code=400)
        client = self.labeller.client
        try:
            version = await asyncio.to_thread(lambda: client.version)
        except FhirImagesError:
            self.stats.rejected += 1
            return _outcome("the FHIR server cannot be read now", status_code=503)
        kind = version.notification_type(bundle)
        if kind in ("handshake", "heartbeat"):
            return _received(200)
        wanted = {version.image_type, "Consent"}
        found: list[tuple[str, str]] = []
        for ref in version.notification_focus(bundle)[: self.max_events]:
            if ref.startswith(client.base_url):
                ref = ref[len(client.base_url) :]
            parts = reference_parts(ref.split("/_history")[0])
            if parts is not None and parts[0] in wanted and parts not in found:
                found.append(parts)
        if not found:
            return _received(200)
        answers = [self._enqueue(rtype, rid) for rtype, rid in found]
        busy = [a for a in answers if a.status_code == 503]
        return busy[0] if busy else _received(202)

    def _enqueue(
        self, rtype: str, rid: str, attempt: int = 0, *, claim: State | None = None
    ) -> Response:
        """Queue a notification (``claim``: the state its body says the image is in). One for
        a resource already queued is coalesced with it; if the two claim different states,
        neither claim is kept: the image is read."""
        assert self._queue is not None, "the service is not started"
        key = (rtype, rid)
        if key in self._pending and attempt == 0:
            self.stats.coalesced += 1
            if self._claims.get(key) != claim:
                self._claims[key] = None
            return _outcome("already queued", status_code=202)
        try:
            self._queue.put_nowait((rtype, rid, attempt, time.monotonic()))
        except asyncio.QueueFull:
            return _outcome("busy", status_code=503, headers={"Retry-After": "5"})
        self._pending.add(key)
        self._claims[key] = claim
        return _outcome("queued", status_code=202)

    async def _worker(self) -> None:
        """Takes what is queued, up to ``batch`` notifications at once, so that what their
        images need is read in one search a kind; each is then labelled, retried and
        reported on its own."""
        queue = self._queue
        assert queue is not None
        while True:
            batch = [await queue.get()]
            until = time.monotonic() + self.gather
            while len(batch) < self.batch:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                left = until - time.monotonic()
                if left <= 0:
                    break
                # a short sleep, not a get with a timeout: a get cancelled as it is answered
                # must never take an item off the queue and drop it
                await asyncio.sleep(min(left, 0.005))
            claims: dict[str, State] = {}
            for rtype, rid, _, _ in batch:
                self._pending.discard((rtype, rid))
                if (claim := self._claims.pop((rtype, rid), None)) is not None:
                    claims[f"{rtype}/{rid}"] = claim
            try:
                results = await asyncio.to_thread(
                    self.labeller.process_many,
                    [(rtype, rid) for rtype, rid, _, _ in batch],
                    claims,
                )
            except Exception as exc:  # a bug must not kill the worker
                results = [exc] * len(batch)
            for item, result in zip(batch, results, strict=True):
                try:
                    self._done(*item, result)
                finally:
                    queue.task_done()

    def _done(
        self,
        rtype: str,
        rid: str,
        attempt: int,
        queued_at: float,
        result: list[Assessment] | BaseException,
    ) -> None:
        """Count one notification handled, or retry it (a failure that is safe to repeat) or
        report it."""
        try:
            if isinstance(result, BaseException):
                raise result
            self.stats.processed += 1
            self.stats.latencies.append(time.monotonic() - queued_at)
        except FhirImagesError as exc:
            retry = getattr(exc, "retry_safe", False) and attempt < self.retries
            log.warning(
                "hook: %s/%s failed (%s)%s",
                rtype,
                rid,
                type(exc).__name__,
                "; will retry" if retry else "",
            )
            if retry:
                asyncio.get_running_loop().call_later(
                    self.retry_delay * (attempt + 1), self._enqueue, rtype, rid, attempt + 1
                )
            else:
                self.stats.failed += 1
                self.stats.recent_failures.append(f"{rtype}/{rid}: {type(exc).__name__}")
        except Exception as exc:  # a bug must not kill the worker
            log.exception("hook: %s/%s crashed: %s", rtype, rid, type(exc).__name__)
            self.stats.failed += 1
            self.stats.recent_failures.append(f"{rtype}/{rid}: {type(exc).__name__}")

    async def health(self, request: Request) -> Response:
        """Counts for anyone; the ids of recent failures only for callers with the secret."""
        q = self._queue
        s = self.stats
        body: dict[str, Any] = {
            "status": "ok",
            "queued": q.qsize() if q else 0,
            "queue_size": self.queue_size,
            "received": s.received,
            "rejected": s.rejected,
            "processed": s.processed,
            "failed": s.failed,
            "binaries_not_labelled": self.labeller.unlabelled_binaries,
            "coalesced": s.coalesced,
        }
        if self._authorised(request):
            body["recent_failures"] = list(s.recent_failures)
        return JSONResponse(body)


# ------------------------------------------------------------------------------- serving


def guarded_protocol(header_timeout: float = 10.0, max_idle: int = 256) -> type[Any]:
    """uvicorn's HTTP/1.1 protocol with two guards that idle clients cannot get round:

    * a connection must send a whole request head within ``header_timeout`` seconds of
      connecting, or it is closed (uvicorn's own keep-alive timeout only starts after a first
      request);
    * at most ``max_idle`` connections may be waiting for their first request; one more closes
      the oldest of them, so a crowd of idle connections never turns a real notification away.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    idle: dict[Any, float] = {}

    class GuardedH11(H11Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._head_timer = self.loop.call_later(header_timeout, self._no_head)
            idle[self] = self.loop.time()
            while len(idle) > max_idle:
                oldest = min(idle, key=idle.__getitem__)
                idle.pop(oldest, None)
                oldest.transport.close()

        def _no_head(self) -> None:
            if self in idle:
                idle.pop(self, None)
                self.transport.close()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and self in idle:
                idle.pop(self, None)
                self._head_timer.cancel()

        def connection_lost(self, exc: Exception | None) -> None:
            idle.pop(self, None)
            timer = getattr(self, "_head_timer", None)
            if timer is not None:
                timer.cancel()
            super().connection_lost(exc)

    return GuardedH11


def run_service(
    service: HookService, *, host: str, port: int, header_timeout: float = 10.0
) -> None:
    """Serve the hook with uvicorn, guarded against idle and slow clients."""
    import uvicorn

    uvicorn.run(
        service.app,
        host=host,
        port=port,
        log_level="warning",
        http=guarded_protocol(header_timeout),
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=16 * 1024,
    )


def _received(status_code: int) -> Response:
    """The answer to a topic-based notification that was taken: an empty Bundle. HAPI (R5)
    sends a notification as a transaction and reads the answer as a Bundle: anything else
    counts as a failed delivery, and it sends it again a dozen times."""
    return JSONResponse(
        {"resourceType": "Bundle", "type": "batch-response"},
        status_code=status_code,
        media_type="application/fhir+json",
    )


def _outcome(text: str, status_code: int, headers: dict[str, str] | None = None) -> Response:
    """Answers to the FHIR server are FHIR: HAPI parses them and retries on anything else."""
    severity = "information" if status_code < 400 else "error"
    code = {
        200: "informational",
        202: "informational",
        400: "not-supported",
        401: "security",
        413: "too-long",
        503: "transient",
    }.get(status_code, "processing")
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": text}],
    }
    return JSONResponse(
        body, status_code=status_code, headers=headers, media_type="application/fhir+json"
    )


def install_subscriptions(
    client: FhirClient,
    endpoint: str,
    secret: str,
    *,
    resource_types: tuple[str, ...] | None = None,
    timeout: float = 60.0,
) -> list[str]:
    """Create (or reuse) the Subscriptions that call this service at ``endpoint``/hook with
    the shared secret, and wait until the server has activated them."""
    return subscribe(
        client,
        endpoint,
        secret,
        header_name=SECRET_HEADER,
        resource_types=resource_types,
        timeout=timeout,
    )


def _claimed_state(body: bytes | None, rtype: str, rid: str) -> State | None:
    """The version and labels a classic notification's body claims for the resource it is
    about; None when the body is not that resource or its meta is not well formed."""
    if not body:
        return None
    try:
        resource = json.loads(body, object_pairs_hook=_no_duplicate_keys)
    except (ValueError, RecursionError):
        return None
    if not isinstance(resource, dict):
        return None
    if resource.get("resourceType") != rtype or resource.get("id") != rid:
        return None
    meta = resource.get("meta", {})
    if not isinstance(meta, dict):
        return None
    version, security = meta.get("versionId"), meta.get("security", [])
    if not (version is None or isinstance(version, str)) or not isinstance(security, list):
        return None
    if not all(isinstance(x, dict) for x in security):
        return None
    return version, Labels.of(security)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError("duplicate key")
        out[key] = value
    return out
