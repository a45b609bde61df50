"""The rules for an image that answers a clinician's request (W5), in every policy pack.

W5 (CQC GP mythbuster 100 on online consultations and intimate images; NHS England / RCPCH
principles for intimate assessments undertaken remotely): images, intimate ones above all, are
received only on a clinician's express request that says what and where on the body; what
arrives outside that request (another body site or kind of image, after the request expired,
from someone the request does not name) is not simply stored; and no intimate image of anyone
under 18 is stored: the clinician records a description instead.

Pure; they find nothing when the image is not linked to a request.
"""

from __future__ import annotations

from collections.abc import Iterable

from .._context import Coded
from .._exceptions import InvalidContext
from .ingest import HOLD, REFUSE, STORE, Reason, Situation, _r

#: The findings after which the image is discarded at once, leaving a record (no image) and a
#: note for the clinician's description (see :data:`NOTE_TEMPLATES`)
DISCARD_RECORDED = frozenset({"request-intimate-under-18"})

#: A note to complete in the record instead of storing the image, by finding
NOTE_TEMPLATES = {
    "request-intimate-under-18": (
        "Image received in answer to a request and not stored (intimate image of a patient "
        "under 18: W5, NHS England / RCPCH principles for remote intimate assessments). "
        "Received on: [date]. Sent by: [who]. Clinician's description of what the image "
        "showed: [description]. Action taken (face-to-face assessment arranged, safeguarding "
        "considered): [action]. The sender was asked to delete the image from their device: "
        "[yes/no]."
    )
}


_INTIMATE_CHILD = (
    "An intimate image (or one not stated not to be) of a patient under 18, sent in answer to "
    "a request: it is not stored under any policy. It is discarded now; record your "
    "description of it in the notes (a template is given), arrange a face-to-face "
    "assessment, and consider safeguarding."
)


def _same_site(wanted: Coded, given: Coded | None) -> bool:
    if given is None:
        return False
    if wanted.code and given.code:
        return (wanted.system, wanted.code) == (given.system, given.code)
    return bool(wanted.display and given.display) and (
        (wanted.display or "").casefold() == (given.display or "").casefold()
    )


def check_request_intimate_child(s: Situation) -> Iterable[Reason]:
    request = s.request
    if request is None or not s.child or s.implicit_kind:
        return
    if s.intimate or request.intimate:
        yield _r("request-intimate-under-18", REFUSE, "W5", _INTIMATE_CHILD)


def check_request_scope(s: Situation) -> Iterable[Reason]:
    request = s.request
    if request is None:
        return
    if request.patient != s.ctx.patient:
        raise InvalidContext("request: the request is for another patient than the context")
    if request.birth_date != s.ctx.birth_date:
        raise InvalidContext("request: birth_date differs from the context's")
    if s.ctx.request is not None and request.id is not None and s.ctx.request != request.id:
        raise InvalidContext("request: context.request names another request")
    findings = []
    if request.status != "active":
        findings.append(
            (
                "request-not-active",
                f"The request is {request.status}: it no longer asks for an image. Make a new "
                "request if another image is needed.",
            )
        )
    if s.ctx.kind is not request.kind:
        findings.append(
            (
                "request-other-kind",
                f"The request asked for a {request.kind.value.replace('_', ' ')}; this is a "
                f"{s.ctx.kind.value.replace('_', ' ')}. Record what was received, and ask "
                "again if it is needed.",
            )
        )
    if not _same_site(request.body_site, s.ctx.body_site):
        findings.append(
            (
                "request-other-body-site",
                "The image's body site (context.body_site) is not the one requested, or is not "
                "stated. Record what was received; store it only after a new request or consent "
                "that covers it.",
            )
        )
    if s.ctx.captured > request.valid_until:
        findings.append(
            (
                "request-expired",
                "The image was made after the request expired (valid_until). Confirm with the "
                "clinician that it is still needed, and record a new request.",
            )
        )
    if s.ctx.operator not in request.senders:
        findings.append(
            (
                "request-sender-not-named",
                "The image was not sent by someone the request names (context.operator is not "
                "among its senders). Confirm who made it and record consent from the right "
                "person.",
            )
        )
    for code, text in findings:
        yield _r(code, HOLD, "W5", text)
    if not findings:
        yield _r(
            "request-answered",
            STORE,
            "W5",
            "Made and sent as the clinician's request asked (kind, body site, sender, in time).",
        )


REQUEST_CHECKS = (check_request_intimate_child, check_request_scope)
