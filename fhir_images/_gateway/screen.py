"""What a request asks for, screened before anything is forwarded (pure, no I/O).

A request becomes a :class:`Route` only when every part of it is understood and allowed; any
doubt is a :class:`Refused` with the status, the OperationOutcome code and a message that names
the part and the rule (never the value, which may carry patient data).

* **Paths** are read from the raw bytes the client sent and rebuilt from their parts: no
  percent-encoding at all (so no ``%2F``, ``%2e%2e`` or double encoding), no ``.`` or ``..``
  segments, no empty segments, backslashes or ``;``; a resource type must be one the server
  names, spelt exactly as it spells it (no case games); an id must be a FHIR id.
* **Interactions** are an allow-list: read, vread, search (GET, and POST ``_search``),
  history of a resource or a type, create, update, delete and patch, transactions and
  batches, the server's paging links, and two operations on images (``$binary-access-read``
  and the admin's ``$explain``). System-wide search and history and every other operation
  (``$everything``, ``$export``, ``$meta``, ...) are refused: their answers hold images this
  gateway would have to decide without the context to do so.
* **Search parameters** that could reveal hidden images are refused wherever they appear:
  ``_has`` (reverse chains), ``_filter``, ``_query``, ``_contained``, modifiers on ``_security``
  and ``_tag`` (``:not``, ``:missing``, ...), and chains unless every link is known not to lead
  to an image. On images and Binaries the parameters are an allow-list, with no modifiers.
  ``_elements`` and ``_summary`` are refused where images may be in the answer (a summary
  drops the labels the decision needs; ``_summary=count`` counts what is hidden); ``_total``
  is dropped there and the answer's ``total`` removed.
* **Writes** that could remove labels or bypass the lifecycle are refused on images, Binaries
  and Consents: PATCH, conditional update and delete, and DELETE (destruction goes through
  ``fhir-images destroy``, which applies retention and legal holds and audits it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

__all__ = ["Refused", "Route", "screen", "screen_params"]

_TYPE = re.compile(r"^[A-Z][A-Za-z]{0,63}$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_OP = re.compile(r"^\$[a-z][a-z\-]{0,63}$")
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-.:]{0,127}$")
_MAX_QUERY = 8 * 1024
_MAX_PARAMS = 100

#: never allowed anywhere: each can reveal or count what a search would hide
_REFUSED = {
    "_has": "reverse chains (_has) can reveal images the caller may not see",
    "_filter": "_filter can reach into images the caller may not see",
    "_query": "named queries are not screened, so not offered",
    "_contained": "contained resources carry no labels of their own, so cannot be decided",
    "_containedType": "contained resources carry no labels of their own, so cannot be decided",
}
#: dropped where images may be in the answer (the answer's total is removed too)
_DROPPED = {"_total", "_pretty", "_format"}
#: control parameters allowed on any search
_CONTROL = {
    "_count",
    "_sort",
    "_include",
    "_revinclude",
    "_id",
    "_lastUpdated",
    "_bundletype",
    "_since",
    "_at",
    "_cursor",
    "_offset",
}
_IMAGE_PARAMS = {
    "Media": {
        "subject",
        "patient",
        "identifier",
        "created",
        "status",
        "type",
        "modality",
        "encounter",
        "operator",
        "_security",
        "_tag",
        "_profile",
    },
    "DocumentReference": {
        "subject",
        "patient",
        "identifier",
        "date",
        "status",
        "type",
        "category",
        "modality",
        "encounter",
        "author",
        "_security",
        "_tag",
        "_profile",
    },
    "Binary": set(),
}
#: chain links that never lead to an image, Binary or Consent
_SAFE_LINKS = {
    "patient",
    "encounter",
    "organization",
    "practitioner",
    "location",
    "general-practitioner",
    "managing-organization",
}
_HIDDEN_TYPES = {"Media", "DocumentReference", "Binary", "Consent"}
_JSON_FORMATS = {"json", "application/json", "application/fhir+json"}
PAGING = {"_getpages", "_getpagesoffset", "_count", "_bundletype", "_offset", "_page", "_cursor"}


class Refused(Exception):
    """A request the gateway will not forward: HTTP ``status``, OperationOutcome ``code``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Route:
    """A screened request: the interaction, what it is on, and the parameters to forward."""

    interaction: str
    resource_type: str | None = None
    id: str | None = None
    version: str | None = None
    operation: str | None = None
    params: tuple[tuple[str, str], ...] = ()
    #: images (or Binaries) may be in the answer: decide each, remove ``total``
    involves_images: bool = False
    #: the SMART permission letter this needs (c, r, u, d, s); None: decided per entry
    permission: str | None = None

    @property
    def path(self) -> str:
        """The upstream path, rebuilt from the screened parts."""
        parts = [p for p in (self.resource_type, self.id) if p]
        if self.interaction in ("history-instance", "history-type", "vread"):
            parts.append("_history")
        if self.version:
            parts.append(self.version)
        if self.operation:
            parts.append(self.operation)
        return "/".join(parts)


@dataclass(frozen=True)
class Screen:
    """What the screening knows of the server: its resource types and its image type."""

    resource_types: frozenset[str]
    image_type: str
    hidden: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", frozenset({self.image_type, "Binary"}))


def _segments(raw_path: bytes) -> list[str]:
    try:
        path = raw_path.decode("ascii")
    except UnicodeDecodeError:
        raise Refused(400, "invalid", "the path must be plain ASCII") from None
    if "%" in path:
        raise Refused(400, "invalid", "the path must not be percent-encoded")
    if "\\" in path or ";" in path or "//" in path or not path.startswith("/"):
        raise Refused(400, "invalid", "the path holds characters a FHIR path never has")
    segments = path[1:].split("/") if path != "/" else []
    if any(s in ("", ".", "..") for s in segments):
        raise Refused(400, "invalid", "the path must not hold empty, '.' or '..' segments")
    return segments


def _type(name: str, screen: Screen) -> str:
    if not _TYPE.match(name) or name not in screen.resource_types:
        raise Refused(404, "not-found", "the path names no resource type of this server")
    return name


def _id(value: str) -> str:
    if not _ID.match(value) or set(value) == {"."}:
        raise Refused(400, "invalid", "the path's id is not a FHIR id")
    return value


def parse_query(query: bytes) -> list[tuple[str, str]]:
    if len(query) > _MAX_QUERY:
        raise Refused(414, "too-long", "the query string is too long")
    try:
        text = query.decode("ascii")
    except UnicodeDecodeError:
        raise Refused(400, "invalid", "the query string must be ASCII (percent-encoded)") from None
    pairs = parse_qsl(text, keep_blank_values=True)
    if len(pairs) > _MAX_PARAMS:
        raise Refused(400, "too-costly", "too many search parameters")
    for name, value in pairs:
        if not _PARAM_NAME.match(name):
            raise Refused(400, "invalid", "a search parameter's name is not a FHIR name")
        if any(ord(ch) < 32 for ch in value):
            raise Refused(400, "invalid", "a search parameter's value holds control characters")
    return pairs


def _check_format(params: list[tuple[str, str]]) -> None:
    for name, value in params:
        if name == "_format" and value not in _JSON_FORMATS:
            raise Refused(406, "not-supported", "_format: only JSON is offered")


def screen_params(
    resource_type: str | None,
    params: list[tuple[str, str]],
    screen: Screen,
    *,
    images_possible: bool,
) -> tuple[tuple[tuple[str, str], ...], bool]:
    """The parameters to forward for a search on ``resource_type``, and whether images may be
    in its answer; Refused for any parameter that could reveal a hidden image."""
    _check_format(params)
    on_hidden = resource_type in screen.hidden
    includes = any(n.split(":")[0] in ("_include", "_revinclude") for n, _ in params)
    involves = images_possible or on_hidden or includes
    out: list[tuple[str, str]] = []
    for name, value in params:
        base, _, modifier = name.partition(":")
        link = base.split(".")[0]
        if link in _REFUSED:
            raise Refused(403, "forbidden", f"{link}: {_REFUSED[link]}")
        if base in ("_elements", "_summary") and involves:
            raise Refused(
                403,
                "forbidden",
                f"{base}: not offered where images may be in the answer (labels must be read, "
                "hidden images must not be counted)",
            )
        if base in ("_security", "_tag") and modifier:
            raise Refused(403, "forbidden", f"{base}: modifiers (such as :not) are not offered")
        if "." in name:
            _check_chain(name, screen)
        if on_hidden and base not in _CONTROL and base not in _DROPPED:
            allowed = _IMAGE_PARAMS.get(str(resource_type), set())
            if base not in allowed or (modifier and base not in ("_include", "_revinclude")):
                raise Refused(
                    403,
                    "forbidden",
                    f"{base}: not a search parameter offered on {resource_type} here",
                )
        if base in ("_include", "_revinclude") and modifier not in ("", "iterate"):
            raise Refused(400, "invalid", f"{base}: only the :iterate modifier is offered")
        if base in ("_text", "_content") and on_hidden:
            raise Refused(403, "forbidden", f"{base}: full-text search of images is not offered")
        if base in _DROPPED and (involves or base != "_total"):
            continue
        out.append((name, value))
    return tuple(out), involves


def _check_chain(name: str, screen: Screen) -> None:
    links = name.split(".")
    for link in links[:-1]:
        param, _, target = link.partition(":")
        if target:
            if target in _HIDDEN_TYPES or target == screen.image_type:
                raise Refused(403, "forbidden", "chained parameters through images are refused")
            continue
        if param not in _SAFE_LINKS:
            raise Refused(
                403,
                "forbidden",
                f"{param}: a chain must name the type it goes through (param:Type.name), "
                "and not an image, Binary or Consent",
            )


def screen(
    method: str,
    raw_path: bytes,
    query: bytes,
    screen: Screen,
) -> Route:
    """The route of a request, or Refused."""
    segments = _segments(raw_path)
    params = parse_query(query)
    method = method.upper()
    n = len(segments)
    if n == 0:
        if method == "POST":
            if params:
                raise Refused(400, "invalid", "a transaction or batch takes no parameters")
            return Route("transaction")
        if method == "GET" and params and {k for k, _ in params} <= PAGING | _DROPPED:
            _check_format(params)
            clean = tuple((k, v) for k, v in params if k not in _DROPPED)
            return Route("page", params=clean, involves_images=True, permission="s")
        raise Refused(403, "forbidden", "system-wide search is not offered through the gateway")
    if segments[0] == "metadata" and n == 1 and method == "GET":
        return Route("metadata")
    if segments[0].startswith(("_", "$")):
        raise Refused(403, "forbidden", "system-wide interactions are not offered")
    rtype = _type(segments[0], screen)
    hidden = rtype in screen.hidden or rtype == "Consent"
    names_images = rtype == "Consent"  # a Consent names images: decided with them
    if n == 1:
        if method == "GET":
            clean, involves = screen_params(rtype, params, screen, images_possible=names_images)
            return Route("search", rtype, params=clean, involves_images=involves, permission="s")
        if method == "POST":
            if params:
                raise Refused(400, "invalid", "a create takes no parameters")
            return Route("create", rtype, permission="c")
        if method in ("PUT", "DELETE", "PATCH"):
            if hidden:
                raise Refused(
                    405,
                    "not-supported",
                    f"conditional {method} of {rtype} is not offered: name the resource by id",
                )
            clean, _ = screen_params(rtype, params, screen, images_possible=False)
            letter = "d" if method == "DELETE" else "u"
            return Route(f"conditional-{method.lower()}", rtype, params=clean, permission=letter)
        raise Refused(405, "not-supported", f"{method} is not offered on a resource type")
    if n == 2 and segments[1] == "_search" and method == "POST":
        return Route("search-post", rtype, permission="s")
    if n == 2 and segments[1] == "_history" and method == "GET":
        clean, involves = screen_params(rtype, params, screen, images_possible=names_images)
        return Route("history-type", rtype, params=clean, involves_images=involves, permission="s")
    rid = _id(segments[1])
    if n == 2:
        if method == "GET":
            _check_format(params)
            if any(k not in _DROPPED for k, _ in params):
                raise Refused(400, "invalid", "a read takes no parameters but _format")
            involves = rtype in screen.hidden or names_images
            return Route("read", rtype, rid, involves_images=involves, permission="r")
        if method == "PUT":
            if params:
                raise Refused(400, "invalid", "an update takes no parameters")
            return Route("update", rtype, rid, permission="u")
        if method in ("DELETE", "PATCH"):
            if hidden:
                word = "deleted" if method == "DELETE" else "patched"
                why = (
                    "destruction goes through 'fhir-images destroy' (retention, legal hold, audit)"
                    if method == "DELETE"
                    else "a patch could remove security labels: PUT the whole resource"
                )
                raise Refused(405, "not-supported", f"{rtype} is not {word} here: {why}")
            return Route(method.lower(), rtype, rid, permission="d" if method == "DELETE" else "u")
        raise Refused(405, "not-supported", f"{method} is not offered on a resource")
    if method != "GET":
        raise Refused(405, "not-supported", f"{method} is not offered on this path")
    if n == 3 and segments[2] == "_history":
        clean, involves = screen_params(rtype, params, screen, images_possible=names_images)
        return Route(
            "history-instance", rtype, rid, params=clean, involves_images=involves, permission="s"
        )
    if n == 4 and segments[2] == "_history":
        _check_format(params)
        return Route(
            "vread",
            rtype,
            rid,
            version=_id(segments[3]),
            involves_images=rtype in screen.hidden or names_images,
            permission="r",
        )
    if n == 3 and _OP.match(segments[2]):
        op = segments[2]
        if rtype == screen.image_type and op == "$binary-access-read":
            if any(k != "path" for k, _ in params):
                raise Refused(400, "invalid", "$binary-access-read takes only 'path'")
            return Route(
                "binary-access-read", rtype, rid, operation=op, involves_images=True, permission="r"
            )
        if rtype == screen.image_type and op == "$explain":
            return Route("explain", rtype, rid, operation=op, params=tuple(params))
        raise Refused(403, "forbidden", "this operation is not offered through the gateway")
    raise Refused(404, "not-found", "no such interaction")
