"""The operations that talk to a FHIR server, for asyncio.

Each function here is the synchronous one of the same name in :mod:`fhir_images`, with the
same parameters and the same result, run in a worker thread (:func:`asyncio.to_thread`), so
that an async web backend can await it without blocking its event loop. They share one core:
the rules, the labels, the retries and the audits are the same code.

What stays synchronous: :func:`fhir_images.ingest` and :func:`fhir_images.recheck` read and
check a file on this machine and are CPU-bound; call them with ``asyncio.to_thread`` if the
loop must not wait for them.

A :class:`fhir_images.FhirClient` can be shared by many concurrent calls: it gives each
thread its own HTTP session. Cancelling an awaiting task does not stop the operation already
running in its thread; it runs to its end (so an upload is never left half-recorded) and its
result is dropped. ``push``'s ``on_done`` callback is called from worker threads.

Example::

    from fhir_images import FhirClient, Outbox, aio

    async def deliver(client: FhirClient, outbox: Outbox) -> None:
        for result in await aio.push(client, outbox):
            print(result.entry_id, result.state, result.media)
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from . import _approvals, _delivery, _lifecycle, _maturity, _requests

P = ParamSpec("P")
R = TypeVar("R")

__all__ = [
    "anonymise",
    "approve",
    "destroy",
    "disclose",
    "load_request",
    "maturity_review",
    "narrow_consent",
    "patient_records",
    "pending_approvals",
    "push",
    "read_record",
    "reconsent",
    "refuse_approval",
    "request_image",
    "withdraw_consent",
]


def _twin(fn: Callable[P, R]) -> Callable[P, Coroutine[Any, Any, R]]:
    @functools.wraps(fn)
    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return await asyncio.to_thread(fn, *args, **kwargs)

    run.__doc__ = f"Async: {fn.__doc__ or ''}"
    return run


push = _twin(_delivery.push)
disclose = _twin(_lifecycle.disclose)
read_record = _twin(_lifecycle.read_record)
patient_records = _twin(_lifecycle.patient_records)
withdraw_consent = _twin(_lifecycle.withdraw_consent)
narrow_consent = _twin(_lifecycle.narrow_consent)
destroy = _twin(_lifecycle.destroy)
anonymise = _twin(_lifecycle.anonymise)
approve = _twin(_approvals.approve)
refuse_approval = _twin(_approvals.refuse_approval)
pending_approvals = _twin(_approvals.pending_approvals)
request_image = _twin(_requests.request_image)
load_request = _twin(_requests.load_request)
maturity_review = _twin(_maturity.maturity_review)
reconsent = _twin(_maturity.reconsent)
