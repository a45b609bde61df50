"""Streaming decoder for a ``Binary`` that a FHIR server answers only as FHIR JSON.

Some servers answer a read of a ``Binary`` only with the resource as FHIR JSON, whatever the
``Accept`` header asks for::

    {"resourceType": "Binary", "id": "x", "contentType": "video/mp4",
     "securityContext": {"reference": "Media/1"}, "data": "<base64, maybe 400 MB>"}

``json.loads`` on such an answer holds the body, the base64 string and the decoded bytes at
once: more than three times the size of the video. :class:`BinaryJson` instead reads the body
as a stream of byte chunks and yields the decoded bytes of ``data`` as they come, so memory
stays bounded (a few chunks, plus the limits below) whatever the size of ``data``.

How: a small incremental scanner of the top-level JSON object, standard library only. The
``data`` string is scanned with ``bytes.find`` (escapes, which an encoder may use for ``/`` or
any character, are undone in bulk) and decoded a piece at a time with :mod:`binascii`, whole
base64 quads only, the fewer than four characters left over kept for the next piece. Every
other member's raw JSON text is collected, up to ``max_field_bytes`` a member, and parsed with
:func:`json.loads`; they end up in :attr:`BinaryJson.fields`.

Errors are :class:`~fhir_images._exceptions.BadResponse`, whose message never quotes the body.
An error is raised as soon as it is detected, so some decoded bytes may already have been
yielded: **on any exception the caller must treat the whole read as failed** and discard what
it received (write to a temporary file, for example, and keep it only once iteration ended).
"""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any, NoReturn

from .._exceptions import BadResponse

__all__ = ["BinaryJson", "iter_binary_json"]

_NOT_WS = re.compile(rb"[^ \t\n\r]")
_STRING_STOP = re.compile(rb'["\\]')
_CONTAINER_STOP = re.compile(rb'["\[\]{}]')
_SCALAR_END = re.compile(rb"[^A-Za-z0-9+\-.]")
_NOT_B64 = re.compile(rb"[^A-Za-z0-9+/=]")
_B64_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_ESCAPE = re.compile(rb'\\(?:u([0-9A-Fa-f]{4})|(["\\/bfnrt]))')
_PARTIAL_ESCAPE = re.compile(rb"\\(?:u[0-9A-Fa-f]{0,3})?")
_SIMPLE_ESCAPES = {
    b'"': b'"',
    b"\\": b"\\",
    b"/": b"/",
    b"b": b"\b",
    b"f": b"\f",
    b"n": b"\n",
    b"r": b"\r",
    b"t": b"\t",
}
_VALUE_START = frozenset(b'[{"-0123456789tfn')
_BOM = b"\xef\xbb\xbf"
_QUOTE, _BACKSLASH, _PAD = 0x22, 0x5C, 0x3D
_OPEN = frozenset(b"[{")
# Base64 characters of ``data`` handled at a time (a multiple of 4): about 64 KiB decoded.
_STEP = 87_384

_PREFIX = "Binary JSON answer: "


def _fail(message: str) -> NoReturn:
    raise BadResponse(_PREFIX + message)


def _truncated() -> NoReturn:
    _fail("the body is truncated")


def _bad_base64(reason: str) -> NoReturn:
    _fail(f"data is not valid base64 ({reason})")


def _no_constant(name: str) -> NoReturn:
    raise ValueError("NaN and Infinity are not JSON")


def _parse(raw: bytearray, what: str) -> Any:
    """The JSON value ``raw`` holds (strict UTF-8, RFC 8259: no NaN or Infinity)."""
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError):
        pass  # raised outside the handler: the exception (and the body text it holds) is dropped
    _fail(f"not valid JSON ({what})")


class BinaryJson:
    """Decodes a FHIR JSON Binary from a stream of byte chunks.

    Iterating yields the decoded bytes of the top-level ``data`` member, in pieces (about
    64 KiB each, or what the chunks allow); once iteration has ended without an exception,
    :attr:`fields` holds every other top-level member, parsed. A ``BinaryJson`` can be
    iterated once.

    Any JSON object (RFC 8259) is accepted, members in any order, chunks split anywhere. It is
    refused with :class:`BadResponse` when it is not JSON or is truncated, is not an object,
    has a ``resourceType`` other than ``"Binary"`` (or none), has no ``data`` or a ``data``
    that is not a base64 string, has a top-level member twice, nests deeper than
    ``max_depth`` (the top-level object counts as 1), or has a member other than ``data``
    whose raw JSON (name and value) is over ``max_field_bytes``, or such members together over
    ``max_total_field_bytes`` (``2 * max_field_bytes`` unless given). ``require_data=False``
    accepts a Binary without ``data`` (a read of its other elements only).

    Memory: the current chunk, a few pieces of about 64 KiB, and the other members (their
    parsed values can take several times their raw size: ``[{},{},...]`` about 20 times).

    The error is raised as soon as it is detected: bytes yielded before it are not valid
    content, and the caller must treat the whole read as failed on any exception.
    """

    def __init__(
        self,
        chunks: Iterable[bytes],
        *,
        max_field_bytes: int = 1 << 20,
        max_depth: int = 32,
        max_total_field_bytes: int | None = None,
        require_data: bool = True,
    ) -> None:
        if max_field_bytes < 1 or max_depth < 1:
            raise ValueError("max_field_bytes and max_depth must be at least 1")
        if max_total_field_bytes is None:
            max_total_field_bytes = 2 * max_field_bytes
        elif max_total_field_bytes < 1:
            raise ValueError("max_total_field_bytes must be at least 1")
        self.max_field_bytes = max_field_bytes
        self.max_depth = max_depth
        self.max_total_field_bytes = max_total_field_bytes
        self.require_data = require_data
        self.fields: dict[str, Any] = {}
        #: once iteration has ended: whether the Binary had a ``data`` member
        self.has_data = False
        self._chunks = iter(chunks)
        self._started = False
        self._buf = b""  # the chunk being read
        self._pos = 0  # the next unread byte of _buf
        self._other = 0  # raw bytes of the members other than data so far
        self._left = b""  # base64 characters of data not yet decoded (fewer than 4)
        self._padded = False  # data's base64 ended with padding

    def __iter__(self) -> Iterator[bytes]:
        if self._started:
            raise RuntimeError("a BinaryJson can be iterated only once")
        self._started = True
        return self._members()

    # -- reading ------------------------------------------------------------------------------

    def _fill(self) -> bool:
        """Whether an unread byte is buffered, reading chunks as needed (False at the end)."""
        if self._pos < len(self._buf):
            return True
        for chunk in self._chunks:
            if chunk:
                self._buf = chunk if type(chunk) is bytes else bytes(chunk)
                self._pos = 0
                return True
        self._buf, self._pos = b"", 0
        return False

    def _skip_ws(self) -> int:
        """The next byte that is not whitespace, left unread; -1 at the end of the body."""
        while self._fill():
            m = _NOT_WS.search(self._buf, self._pos)
            if m is not None:
                self._pos = m.start()
                return self._buf[self._pos]
            self._pos = len(self._buf)
        return -1

    def _skip_bom(self) -> None:
        """Skips a UTF-8 byte order mark at the start (RFC 8259 allows ignoring it)."""
        if not self._fill():
            return
        while len(self._buf) - self._pos < len(_BOM):
            rest = self._buf[self._pos :]
            self._pos = len(self._buf)
            if not self._fill():
                self._buf, self._pos = rest, 0
                break
            self._buf = rest + self._buf
        if self._buf.startswith(_BOM, self._pos):
            self._pos += len(_BOM)

    @staticmethod
    def _take(acc: bytearray, buf: bytes, start: int, end: int, limit: int, too_big: str) -> None:
        if len(acc) + end - start > limit:
            _fail(too_big)
        acc += memoryview(buf)[start:end]

    def _scan_string(self, acc: bytearray, limit: int, too_big: str) -> None:
        """Appends the raw JSON string at the current byte (its opening quote) to ``acc``."""
        buf, start = self._buf, self._pos
        i = start + 1
        while True:
            m = _STRING_STOP.search(buf, i)
            if m is not None and buf[m.start()] == _QUOTE:
                end = m.start() + 1
                self._take(acc, buf, start, end, limit, too_big)
                self._pos = end
                return
            if m is not None and m.end() < len(buf):  # a backslash: skip the byte it escapes
                i = m.end() + 1
                continue
            self._take(acc, buf, start, len(buf), limit, too_big)
            self._pos = len(buf)
            if not self._fill():
                _truncated()
            buf, start = self._buf, 0
            i = 1 if m is not None else 0  # after a chunk ending with a backslash, skip one more

    def _scan_container(self, acc: bytearray, limit: int, too_big: str) -> None:
        """Appends the raw JSON array or object at the current byte to ``acc``."""
        depth = 1  # the top-level object
        buf, start = self._buf, self._pos
        while True:
            m = _CONTAINER_STOP.search(buf, start)
            if m is None:
                self._take(acc, buf, start, len(buf), limit, too_big)
                self._pos = len(buf)
                if not self._fill():
                    _truncated()
                buf, start = self._buf, 0
                continue
            j = m.start()
            if buf[j] == _QUOTE:
                self._take(acc, buf, start, j, limit, too_big)
                self._pos = j
                self._scan_string(acc, limit, too_big)
                buf, start = self._buf, self._pos
                continue
            self._take(acc, buf, start, j + 1, limit, too_big)
            start = self._pos = j + 1
            if buf[j] in _OPEN:
                depth += 1
                if depth > self.max_depth:
                    _fail(f"nested deeper than {self.max_depth} levels")
            else:
                depth -= 1
                if depth == 1:
                    return

    def _scan_scalar(self, acc: bytearray, limit: int, too_big: str) -> None:
        """Appends the characters of a number, true, false or null to ``acc``."""
        while self._fill():
            buf, start = self._buf, self._pos
            m = _SCALAR_END.search(buf, start)
            end = len(buf) if m is None else m.start()
            self._take(acc, buf, start, end, limit, too_big)
            self._pos = end
            if m is not None:
                return

    def _room(self) -> tuple[int, str]:
        """How many raw bytes the current member (name and value) may have, and the error after."""
        field = self.max_field_bytes
        total = self.max_total_field_bytes - self._other
        if total < field:
            return total, (
                f"the members other than data are over {self.max_total_field_bytes} bytes together"
            )
        return field, f"a member other than data is over {self.max_field_bytes} bytes"

    # -- the top-level object -----------------------------------------------------------------

    def _members(self) -> Iterator[bytes]:
        self._skip_bom()
        c = self._skip_ws()
        if c == -1:
            _fail("the body is empty")
        if c != ord("{"):
            _fail("the top level is not a JSON object" if c in _VALUE_START else "not JSON")
        self._pos += 1
        seen: set[str] = set()
        c = self._skip_ws()
        if c == ord("}"):
            self._pos += 1
        else:
            while True:
                if c == -1:
                    _truncated()
                if c != _QUOTE:
                    _fail("not valid JSON (a member name expected)")
                raw_key = bytearray()
                self._scan_string(raw_key, *self._room())
                key = _parse(raw_key, "a member name")
                if key in seen:
                    _fail(
                        f'top-level member "{key}" given twice'
                        if key in ("data", "resourceType")
                        else "a top-level member given twice"
                    )
                seen.add(key)
                c = self._skip_ws()
                if c == -1:
                    _truncated()
                if c != ord(":"):
                    _fail("not valid JSON (':' expected after a member name)")
                self._pos += 1
                c = self._skip_ws()
                if c == -1:
                    _truncated()
                if key == "data":
                    self._other += len(raw_key)
                    if c != _QUOTE:
                        _fail("data is not a string")
                    self._pos += 1
                    yield from self._data()
                else:
                    key_size = len(raw_key)
                    raw = raw_key  # the value is appended to the name, for the size limits
                    if c == _QUOTE:
                        self._scan_string(raw, *self._room())
                    elif c in _OPEN:
                        self._scan_container(raw, *self._room())
                    else:
                        self._scan_scalar(raw, *self._room())
                    self._other += len(raw)
                    value = _parse(raw[key_size:], "a member value")
                    self.fields[key] = value
                    if key == "resourceType" and value != "Binary":
                        _fail('resourceType is not "Binary"')
                c = self._skip_ws()
                if c == ord(","):
                    self._pos += 1
                    c = self._skip_ws()
                    continue
                if c == ord("}"):
                    self._pos += 1
                    break
                if c == -1:
                    _truncated()
                _fail("not valid JSON (',' or '}' expected after a member)")
        if self._skip_ws() != -1:
            _fail("trailing data after the JSON object")
        if "resourceType" not in self.fields:
            _fail("no resourceType member")
        self.has_data = "data" in seen
        if not self.has_data and self.require_data:
            _fail("no data member")

    # -- data ---------------------------------------------------------------------------------

    def _data(self) -> Iterator[bytes]:
        """Yields the decoded bytes of the data string, whose opening quote has been read."""
        carry = b""  # an escape cut by the end of a piece
        while True:
            if not self._fill():
                _truncated()
            buf, pos = self._buf, self._pos
            stop = min(len(buf), pos + _STEP)
            quote = buf.find(b'"', pos, stop)
            end = stop if quote == -1 else quote
            self._pos = end if quote == -1 else quote + 1
            text = buf[pos:end]
            if carry:
                text, carry = carry + text, b""
            bad_escape = False
            if b"\\" in text:
                text, carry, bad_escape = _unescape(text)
                if quote != -1 and carry:
                    if carry == b"\\":  # the quote is escaped: a '"', which is not base64
                        text += b'"'
                    else:  # a \u escape cut by the quote
                        bad_escape = True
                    carry = b""
            out = self._decode(text)
            if out:
                yield out
            if bad_escape:
                _fail("not valid JSON (a bad escape in data)")
            if quote != -1:
                break
        if self._left:
            _bad_base64("its length is not a multiple of 4")

    def _decode(self, text: bytes) -> bytes:
        """The bytes the next base64 characters ``text`` decode to (whole quads only)."""
        if text.translate(None, _B64_CHARS):
            m = _NOT_B64.search(text)
            assert m is not None
            self._decode_valid(text[: m.start()])  # errors before it come first
            _bad_base64("a character outside the base64 alphabet")
        return self._decode_valid(text)

    def _decode_valid(self, text: bytes) -> bytes:
        """Like :meth:`_decode`, for ``text`` made only of base64 characters and '='."""
        if not text:
            return b""
        if self._padded:
            _after_padding(text)
        block = self._left + text if self._left else text
        n = len(block) & ~3
        self._left = block[n:]
        if not n:
            return b""
        p = block.find(b"=", 0, n)
        if p != -1:
            r = p % 4
            if r < 2 or (r == 2 and block[p + 1] != _PAD):
                _bad_base64("bad padding")
            end = p + 4 - r
            if end < n:
                _after_padding(block[end:])
            self._padded = True
        try:
            out = binascii.a2b_base64(block if n == len(block) else block[:n], strict_mode=True)
        except binascii.Error:
            out = None  # raised outside the handler, which holds the text
        if out is None:
            _bad_base64("bad encoding")
        if self._padded and self._left:
            _after_padding(self._left)
        return out


def _after_padding(text: bytes) -> NoReturn:
    """Fails for base64 characters ``text`` that follow the padding."""
    _bad_base64("too much padding" if text[0] == _PAD else "data after the padding")


def _unescape(text: bytes) -> tuple[bytes, bytes, bool]:
    """Undoes the JSON escapes in a piece of the data string.

    Returns the characters (each escape that does not stand for an ASCII character becomes
    '?', which is not base64), an escape cut by the end of the piece, to be completed by the
    next one, and whether the piece has a bad escape (the characters then stop before it).
    """
    carry = b""
    if b"\\\\" not in text:  # every backslash starts an escape
        k = text.rfind(b"\\", max(0, len(text) - 5))
        if k != -1 and _PARTIAL_ESCAPE.fullmatch(text, k):
            text, carry = text[:k], text[k:]
        text = text.replace(b"\\/", b"/")
        if b"\\" not in text:
            return text, carry, False
        if text.count(b"\\") == text.count(b"\\u"):  # only \uXXXX escapes left
            try:
                return text.decode("raw_unicode_escape").encode("ascii", "replace"), carry, False
            except UnicodeDecodeError:
                pass  # a bad \u escape: found below
    return _unescape_slowly(text, carry)


def _unescape_slowly(text: bytes, carry: bytes) -> tuple[bytes, bytes, bool]:
    """:func:`_unescape` for any text; ``carry`` is an escape already cut from its end."""
    out = bytearray()
    i = 0
    while True:
        j = text.find(b"\\", i)
        if j == -1:
            out += text[i:]
            return bytes(out), carry, False
        out += text[i:j]
        m = _ESCAPE.match(text, j)
        if m is None:
            if not carry and _PARTIAL_ESCAPE.fullmatch(text, j):
                return bytes(out), text[j:], False
            return bytes(out), b"", True
        hex_digits, char = m.groups()
        if hex_digits is not None:
            code = int(hex_digits, 16)
            out.append(code if code < 0x80 else ord("?"))
        else:
            out += _SIMPLE_ESCAPES[char]
        i = m.end()


def iter_binary_json(
    chunks: Iterable[bytes],
    *,
    max_field_bytes: int = 1 << 20,
    max_depth: int = 32,
    max_total_field_bytes: int | None = None,
) -> Iterator[bytes]:
    """The decoded bytes of a FHIR JSON Binary read as ``chunks`` (see :class:`BinaryJson`)."""
    return iter(
        BinaryJson(
            chunks,
            max_field_bytes=max_field_bytes,
            max_depth=max_depth,
            max_total_field_bytes=max_total_field_bytes,
        )
    )
