"""The streaming decoder of FHIR JSON Binaries (fhir_images.fhir.jsonbinary)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import random
import tracemalloc
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fhir_images import BadResponse
from fhir_images.fhir.jsonbinary import BinaryJson, iter_binary_json

BOM = b"\xef\xbb\xbf"


# -- helpers ----------------------------------------------------------------------------------


def split(body: bytes, sizes: Iterable[int]) -> Iterator[bytes]:
    """``body`` in chunks of the given sizes (cycled), so a boundary can fall anywhere."""
    sizes = list(sizes)
    i = k = 0
    while i < len(body):
        n = sizes[k % len(sizes)]
        yield body[i : i + n]
        i += n
        k += 1


CHUNKINGS = {
    "whole": [1 << 30],
    "bytes": [1],
    "odd": [3, 1, 7, 2, 5, 11, 4],
}


def decode(chunks: Iterable[bytes], **kw: Any) -> tuple[bytes, dict[str, Any]]:
    binary = BinaryJson(chunks, **kw)
    out = b"".join(binary)
    return out, binary.fields


def outcome(chunks: Iterable[bytes], **kw: Any) -> tuple[bytes, dict[str, Any]] | str:
    """The decoded bytes and fields, or the BadResponse message."""
    try:
        return decode(chunks, **kw)
    except BadResponse as exc:
        return "BadResponse: " + str(exc)


def error(body: bytes, **kw: Any) -> str:
    """The BadResponse message for ``body``, the same for every chunking."""
    messages = set()
    for sizes in CHUNKINGS.values():
        with pytest.raises(BadResponse) as info:
            decode(split(body, sizes), **kw)
        messages.add(str(info.value))
    assert len(messages) == 1, messages
    return messages.pop()


def binary(data: str, **extra: Any) -> bytes:
    return json.dumps({"resourceType": "Binary", **extra, "data": data}).encode()


def reference(body: bytes) -> tuple[bytes, dict[str, Any]] | None:
    """What a strict non-streaming decoder makes of ``body``: None when it must be refused."""
    if body.startswith(BOM):
        body = body[len(BOM) :]
    objects: list[list[tuple[str, Any]]] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        objects.append(pairs)
        return dict(pairs)

    def no_constant(name: str) -> Any:
        raise ValueError(name)

    try:
        doc = json.loads(body.decode("utf-8"), object_pairs_hook=hook, parse_constant=no_constant)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    keys = [k for k, _ in objects[-1]]  # the top-level object is the last one completed
    if len(keys) != len(set(keys)) or doc.get("resourceType") != "Binary":
        return None
    data = doc.pop("data", None)
    if not isinstance(data, str) or len(data) % 4:
        return None
    try:
        return base64.b64decode(data, validate=True), doc
    except (ValueError, binascii.Error):
        return None


# -- JSON writing with random whitespace and escapes, for the round trips ----------------------


class Writer:
    def __init__(self, rnd: random.Random, slash: bool) -> None:
        self.rnd = rnd
        self.slash = slash

    def ws(self) -> str:
        return self.rnd.choice(["", "", "", " ", "\n", "\t", "\r\n  ", "    "])

    def string(self, s: str) -> str:
        """``s`` as a JSON string: raw UTF-8 or escaped, some characters as \\u escapes."""
        ascii_only = self.rnd.random() < 0.5
        out = []
        for ch in s:
            if ch in '"\\' or ch < " " or (ascii_only and not ch.isascii()):
                out.append(json.dumps(ch)[1:-1])
            elif self.rnd.random() < 0.1:
                out.append(self.hex_escape(ch))
            elif ch == "/" and self.slash:
                out.append("\\/")
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'

    def hex_escape(self, ch: str) -> str:
        """``ch`` as \\uXXXX (a surrogate pair beyond the BMP), hex digits in either case."""
        text = json.dumps(ch)[1:-1] if ord(ch) > 0xFFFF else f"\\u{ord(ch):04x}"
        return text.upper().replace("\\U", "\\u") if self.rnd.random() < 0.5 else text

    def value(self, v: Any) -> str:
        if isinstance(v, dict):
            members = [
                self.ws() + self.string(k) + self.ws() + ":" + self.ws() + self.value(x) + self.ws()
                for k, x in v.items()
            ]
            return "{" + (",".join(members) or self.ws()) + "}"
        if isinstance(v, list):
            items = [self.ws() + self.value(x) + self.ws() for x in v]
            return "[" + (",".join(items) or self.ws()) + "]"
        if isinstance(v, str):
            return self.string(v)
        return json.dumps(v)

    def data(self, b64: str) -> str:
        out = []
        for ch in b64:
            if self.rnd.random() < 0.05:
                out.append(self.hex_escape(ch))
            elif ch == "/" and self.slash:
                out.append("\\/")
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
extra_members = st.dictionaries(
    st.text(max_size=10).filter(lambda k: k not in ("data", "resourceType")),
    json_values,
    max_size=5,
)


def random_chunks(body: bytes, rnd: random.Random) -> list[int]:
    mode = rnd.choice(["whole", "bytes", "small", "large"])
    if mode == "whole":
        return [len(body) + 1]
    if mode == "bytes":
        return [1]
    top = 16 if mode == "small" else 4096
    return [rnd.randint(1, top) for _ in range(50)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payload=st.binary(max_size=3000),
    extras=extra_members,
    rnd=st.randoms(use_true_random=False),
    slash=st.booleans(),
)
def test_round_trip(
    payload: bytes, extras: dict[str, Any], rnd: random.Random, slash: bool
) -> None:
    w = Writer(rnd, slash)
    b64 = base64.b64encode(payload).decode()
    members = [
        (w.string("resourceType"), w.value("Binary")),
        (w.string("data") if rnd.random() < 0.8 else '"d\\u0061ta"', w.data(b64)),
        *((w.string(k), w.value(v)) for k, v in extras.items()),
    ]
    rnd.shuffle(members)
    text = (
        w.ws() + "{" + ",".join(w.ws() + k + w.ws() + ":" + w.ws() + v + w.ws() for k, v in members)
    )
    text += "}" + w.ws()
    body = text.encode()

    got = decode(split(body, random_chunks(body, rnd)))
    assert got == (payload, {"resourceType": "Binary", **extras})
    assert got == reference(body)


def test_a_simple_body() -> None:
    payload = bytes(range(256)) * 3
    body = json.dumps(
        {
            "resourceType": "Binary",
            "id": "x",
            "meta": {"versionId": "2", "security": [{"code": "R"}]},
            "contentType": "video/mp4",
            "securityContext": {"reference": "Media/1"},
            "data": base64.b64encode(payload).decode(),
        }
    ).encode()
    for sizes in CHUNKINGS.values():
        out, fields = decode(split(body, sizes))
        assert out == payload
        assert fields == {
            "resourceType": "Binary",
            "id": "x",
            "meta": {"versionId": "2", "security": [{"code": "R"}]},
            "contentType": "video/mp4",
            "securityContext": {"reference": "Media/1"},
        }
    assert b"".join(iter_binary_json(split(body, [5]))) == payload


def test_fields_keep_every_json_type_and_unicode() -> None:
    body = (
        '{"data":"QUJD","resourceType":"Binary","n":-1.5e3,"i":12345678901234567890,"t":true,'
        '"f":false,"z":null,"e":[],"o":{},"s":"\\ud83d\\ude00 \\u00e9 é 😀 \\"q\\" \\\\ \\/ \\n",'
        '"deep":[[[{"a":[1,{"b":null}]}]]]}'
    ).encode()
    for sizes in CHUNKINGS.values():
        out, fields = decode(split(body, sizes))
        assert out == b"ABC"
        assert fields == {k: v for k, v in json.loads(body).items() if k != "data"}
    assert fields["s"] == '😀 é é 😀 "q" \\ / \n'


def test_escapes_inside_data() -> None:
    payload = bytes(range(256)) * 50
    b64 = base64.b64encode(payload).decode()
    all_escaped = "".join(f"\\u{ord(c):04x}" for c in b64)
    slashes = b64.replace("/", "\\/")
    upper = "".join(f"\\u{ord(c):04X}" if i % 3 else c for i, c in enumerate(b64))
    for data in (all_escaped, slashes, upper):
        body = ('{"resourceType":"Binary","data":"' + data + '"}').encode()
        for sizes in CHUNKINGS.values():
            assert decode(split(body, sizes))[0] == payload


def test_large_data_in_one_chunk_and_odd_chunks() -> None:
    """Pieces of data are decoded a step at a time: steps end inside escapes and quads."""
    payload = random.Random(1).randbytes(300_001)
    b64 = base64.b64encode(payload).decode()
    for data in (b64, b64.replace("/", "\\/"), "".join(f"\\u{ord(c):04x}" for c in b64)):
        body = ('{"resourceType":"Binary","data":"' + data + '","id":"1"}').encode()
        for sizes in ([len(body)], [65_536], [100_003, 7], [87_383, 87_385]):
            out, fields = decode(split(body, sizes))
            assert out == payload
            assert fields == {"resourceType": "Binary", "id": "1"}


def test_pieces_are_bounded_and_come_before_the_end() -> None:
    payload = random.Random(2).randbytes(1_000_000)
    body = binary(base64.b64encode(payload).decode())
    pieces = list(BinaryJson([body]))
    assert b"".join(pieces) == payload
    assert len(pieces) > 10
    assert max(len(p) for p in pieces) <= 70_000


def test_bom_whitespace_and_empty_data() -> None:
    body = BOM + b' \r\n\t{ "data" : "" ,\n"resourceType"\t:\r"Binary" } \n\t '
    for sizes in CHUNKINGS.values():
        assert decode(split(body, sizes)) == (b"", {"resourceType": "Binary"})


def test_chunks_of_any_bytes_like_type() -> None:
    body = binary("QUJD")
    chunks = [bytearray(body[:5]), memoryview(body[5:20]), b"", body[20:]]
    assert decode(chunks)[0] == b"ABC"  # type: ignore[arg-type]


def test_iterates_once_and_checks_its_limits() -> None:
    b = BinaryJson([binary("QUJD")])
    assert b"".join(b) == b"ABC"
    with pytest.raises(RuntimeError):
        iter(b)
    with pytest.raises(ValueError):
        BinaryJson([], max_field_bytes=0)
    with pytest.raises(ValueError):
        BinaryJson([], max_depth=0)


# -- errors -----------------------------------------------------------------------------------

OK_DATA = '"data":"QUJD"'
RT = '"resourceType":"Binary"'


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "the body is empty"),
        (" \n ", "the body is empty"),
        ("<html>", "not JSON"),
        ("[1, 2]", "top level is not a JSON object"),
        ('"Binary"', "top level is not a JSON object"),
        ("null", "top level is not a JSON object"),
        ("{" + RT + "," + OK_DATA, "truncated"),
        ("{" + RT + ',"data":"QUJD', "truncated"),
        ("{" + RT + ',"data"', "truncated"),
        ('{"resourceType":"Bin', "truncated"),
        ("{" + RT + ',"meta":{"a":[1,', "truncated"),
        ("{" + RT + ',"n":12', "truncated"),
        ("{" + RT + "," + OK_DATA + ",", "truncated"),
        ("{" + RT + "," + OK_DATA + ",}", "a member name expected"),
        ("{" + RT + "," + OK_DATA + "  x", "',' or '}' expected"),
        ("{" + RT + " " + OK_DATA + "}", "',' or '}' expected"),
        ("{" + RT + ',"data" "QUJD"}', "':' expected"),
        ("{'resourceType':'Binary'}", "a member name expected"),
        ("{" + RT + "," + OK_DATA + ',"n":01}', "not valid JSON (a member value)"),
        ("{" + RT + "," + OK_DATA + ',"n":NaN}', "not valid JSON (a member value)"),
        ("{" + RT + "," + OK_DATA + ',"n":-Infinity}', "not valid JSON (a member value)"),
        ("{" + RT + "," + OK_DATA + ',"n":tru}', "not valid JSON (a member value)"),
        ("{" + RT + "," + OK_DATA + ',"n":}', "not valid JSON (a member value)"),
        ("{" + RT + "," + OK_DATA + ',"s":"a\\x"}', "not valid JSON (a member value)"),
        ("{" + RT + "," + OK_DATA + ',"s":"a\tb"}', "not valid JSON (a member value)"),
        ("{" + RT + "," + OK_DATA + ',"a":[1,}', "not valid JSON (a member value)"),
        ("{" + RT + "," + OK_DATA + ',"a":{"x" 1}}', "not valid JSON (a member value)"),
        ("{" + RT + "," + OK_DATA + ',"a\\q":1}', "not valid JSON (a member name)"),
        ('{"resourceType":"Patient",' + OK_DATA + "}", 'resourceType is not "Binary"'),
        (f'{{{OK_DATA},"resourceType":"Patient"}}', 'resourceType is not "Binary"'),
        ('{"resourceType":null,' + OK_DATA + "}", 'resourceType is not "Binary"'),
        ("{" + OK_DATA + "}", "no resourceType member"),
        ("{" + RT + "}", "no data member"),
        ("{}", "no resourceType member"),
        ("{" + RT + ',"Data":"QUJD"}', "no data member"),
        ("{" + RT + ',"data":null}', "data is not a string"),
        ("{" + RT + ',"data":["QUJD"]}', "data is not a string"),
        ("{" + RT + ',"data":1234}', "data is not a string"),
        ("{" + RT + "," + OK_DATA + "," + OK_DATA + "}", 'member "data" given twice'),
        ("{" + RT + "," + OK_DATA + ',"d\\u0061ta":"QUJD"}', 'member "data" given twice'),
        ("{" + RT + "," + RT + "," + OK_DATA + "}", 'member "resourceType" given twice'),
        ("{" + RT + "," + OK_DATA + ',"id":"1","id":"2"}', "a top-level member given twice"),
        ("{" + RT + ',"data":"QU JD"}', "a character outside the base64 alphabet"),
        ("{" + RT + ',"data":"QUJD\\n"}', "a character outside the base64 alphabet"),
        ("{" + RT + ',"data":"QUJD\n"}', "a character outside the base64 alphabet"),
        ("{" + RT + ',"data":"QU\\"JD"}', "a character outside the base64 alphabet"),
        ("{" + RT + ',"data":"QU\\\\JD"}', "a character outside the base64 alphabet"),
        ("{" + RT + ',"data":"QUJ\\u00e9"}', "a character outside the base64 alphabet"),
        ("{" + RT + ',"data":"QUJDé"}', "a character outside the base64 alphabet"),
        ("{" + RT + ',"data":"QUJD-_"}', "a character outside the base64 alphabet"),
        ("{" + RT + ',"data":"QUJ\\x"}', "a bad escape in data"),
        ("{" + RT + ',"data":"QUJ\\u00"}', "a bad escape in data"),
        ("{" + RT + ',"data":"QUJ\\u00G1"}', "a bad escape in data"),
        ("{" + RT + ',"data":"QUJ\\U0041"}', "a bad escape in data"),
        ("{" + RT + ',"data":"QQ==QUJD"}', "data after the padding"),
        ("{" + RT + ',"data":"QUI=QUJD"}', "data after the padding"),
        ("{" + RT + ',"data":"QQ==Q"}', "data after the padding"),
        ("{" + RT + ',"data":"QUI=="}', "too much padding"),
        ("{" + RT + ',"data":"QUJD===="}', "bad padding"),
        ("{" + RT + ',"data":"Q==="}', "bad padding"),
        ("{" + RT + ',"data":"QQ=A"}', "bad padding"),
        ("{" + RT + ',"data":"=QUJ"}', "bad padding"),
        ("{" + RT + ',"data":"QUJDQ"}', "length is not a multiple of 4"),
        ("{" + RT + ',"data":"QUI"}', "length is not a multiple of 4"),
        ("{" + RT + ',"data":"QQ="}', "length is not a multiple of 4"),
        ("{" + RT + "," + OK_DATA + "} x", "trailing data after the JSON object"),
        ("{" + RT + "," + OK_DATA + "}{}", "trailing data after the JSON object"),
        ("{" + RT + "," + OK_DATA + "}\x00", "trailing data after the JSON object"),
    ],
)
def test_errors(body: str, message: str) -> None:
    text = error(body.encode())
    assert text.startswith("Binary JSON answer: ")
    assert message in text


def test_invalid_utf8_is_refused() -> None:
    assert "not valid JSON" in error(b'{"resourceType":"Binary","data":"QUJD","s":"\xff"}')
    assert "not valid JSON" in error(b'{"resourceType":"Binary","data":"QUJD","s":"\xed\xa0\x80"}')
    assert "not valid JSON" in error(b'{"resourceType":"Binary","data":"QUJD","\xc3":1}')
    assert "base64 alphabet" in error(b'{"resourceType":"Binary","data":"QUJD\xc3"}')
    assert "a member name expected" in error(b'{"resourceType":"Binary",\xff"data":"QUJD"}')


def test_messages_never_quote_the_body() -> None:
    secret = "Jane Doe 1970-01-01"
    bodies = [
        f'{{"resourceType":"{secret}","data":"QUJD"}}',
        f'{{"resourceType":"Binary","data":"QUJD","{secret}":1,"{secret}":2}}',
        f'{{"resourceType":"Binary","data":"QUJD","x":"{secret}\\q"}}',
        f'{{"resourceType":"Binary","data":"{secret}"}}',
        f'{{"resourceType":"Binary","data":"QUJD","x":"{secret * 100}"}}',
    ]
    for body in bodies:
        with pytest.raises(BadResponse) as info:
            decode([body.encode()], max_field_bytes=1000)
        assert "Jane" not in str(info.value)
        assert info.value.__context__ is None
        assert info.value.__cause__ is None


def test_every_truncation_is_refused() -> None:
    body = (
        BOM + b'{ "resourceType" : "Binary", "meta": {"tag": [{"code": "x\\u00e9\\"", "v": -1.5e+3}'
        b', true, null]}, "data": "QUJD\\/\\u0041Q=" }'
    )
    assert decode([body]) == reference(body)
    assert decode([body])[0] == b"ABC\xfc\x04"
    for n in range(len(body)):
        with pytest.raises(BadResponse):
            decode(split(body[:n], [1]))
        with pytest.raises(BadResponse):
            decode([body[:n]])


# -- limits -----------------------------------------------------------------------------------


def test_member_size_limit() -> None:
    limit = 100
    # "id" (4 bytes with its quotes) and the value (2 quotes + n) count
    fits = binary("QUJD", id="x" * (limit - 6))
    assert decode([fits], max_field_bytes=limit)[0] == b"ABC"
    over = binary("QUJD", id="x" * (limit - 5))
    assert "a member other than data is over 100 bytes" in error(over, max_field_bytes=limit)
    nested = binary("QUJD", meta={"tag": ["y" * 50] * 10})
    assert "over 100 bytes" in error(nested, max_field_bytes=limit)
    long_name = binary("QUJD", **{"k" * 200: 1})
    assert "over 100 bytes" in error(long_name, max_field_bytes=limit)
    number = binary("QUJD", n=10**150)
    assert "over 100 bytes" in error(number, max_field_bytes=limit)
    no_strings: list[list[Any]] = [[0] * 1000, [[]] * 1000, [{}] * 1000]
    for array in no_strings:  # counted between brackets too
        assert "over 100 bytes" in error(binary("QUJD", a=array), max_field_bytes=limit)
    # the data member is not limited
    big = binary(base64.b64encode(b"z" * 10_000).decode())
    assert decode([big], max_field_bytes=limit)[0] == b"z" * 10_000


def test_total_size_of_the_other_members_is_limited() -> None:
    many = binary("QUJD", **{f"k{i}": "v" * 50 for i in range(100)})
    assert "together" in error(many, max_field_bytes=1000)  # about 6 KB > 2 * 1000
    assert decode([many], max_field_bytes=1000, max_total_field_bytes=10_000)[0] == b"ABC"
    assert "together" in error(many, max_total_field_bytes=5000)


def test_depth_limit() -> None:
    def nested(levels: int) -> bytes:
        # the top-level object is level 1
        inner = "[" * (levels - 1) + "]" * (levels - 1)
        return ('{"resourceType":"Binary","a":' + inner + ',"data":"QUJD"}').encode()

    assert decode([nested(32)])[0] == b"ABC"
    assert "nested deeper than 32 levels" in error(nested(33))
    assert "nested deeper than 32 levels" in error(nested(100_000))
    assert "nested deeper than 3 levels" in error(nested(4), max_depth=3)
    assert decode([nested(3)], max_depth=3)[0] == b"ABC"
    assert "nested deeper than 1 levels" in error(nested(2), max_depth=1)
    # brackets inside strings do not count
    body = binary("QUJD", s="[[[[{{{{" * 20)
    assert decode([body], max_depth=2)[1]["s"] == "[[[[{{{{" * 20


# -- errors come when they are detected -------------------------------------------------------


class Counting:
    """Chunks that count how many were read."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = iter(chunks)
        self.read = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.read += 1
            yield chunk


def test_a_wrong_resource_type_before_data_stops_before_any_byte() -> None:
    data = base64.b64encode(b"x" * 100_000)
    body = b'{"resourceType":"OperationOutcome","data":"' + data + b'"}'
    chunks = Counting(split(body, [100]))
    got: list[bytes] = []
    with pytest.raises(BadResponse, match="resourceType"):
        got.extend(BinaryJson(chunks))
    assert got == []
    assert chunks.read == 1


def test_a_wrong_resource_type_after_data_is_found_at_the_end() -> None:
    data = base64.b64encode(b"x" * 100_000)
    body = b'{"data":"' + data + b'","resourceType":"Patient"}'
    got: list[bytes] = []
    with pytest.raises(BadResponse, match="resourceType"):
        got.extend(BinaryJson(split(body, [1000])))
    assert b"".join(got) == b"x" * 100_000  # yielded, and the caller's to discard


def test_bad_base64_is_found_where_it_is() -> None:
    data = base64.b64encode(b"x" * 300_000)
    body = b'{"resourceType":"Binary","data":"' + data[:200_000] + b"*" + data[200_000:] + b'"}'
    chunks = Counting(split(body, [1000]))
    got: list[bytes] = []
    with pytest.raises(BadResponse, match="base64 alphabet"):
        got.extend(BinaryJson(chunks))
    assert chunks.read == 201
    assert 100_000 < len(b"".join(got)) <= 150_000


# -- differential fuzzing against json.loads ---------------------------------------------------

SEEDS = [
    b'{"resourceType":"Binary","id":"a1","data":"QUJDRA==","contentType":"image/png"}',
    b'{ "data" : "QU\\/D\\u0041AA" , "meta" : { "tag" : [ 1 , -2.5e3 , "x\\"y" , null ] } ,'
    b' "resourceType" : "Binary" }',
    b'{"resourceType":"Binary","securityContext":{"reference":"Media/1"},"data":"/+/+","n":[{}]}',
    b'{"resourceType":"Binary","t":true,"f":false,"data":"QQ==","s":"\\u00e9\\ud83d\\ude00"}',
]
ALPHABET = b' \t\n{}[]":,\\/=+-.0123456789eEabcdfnrtuQ\x00\x1f\x7f\xc3\xa9\xff'


@settings(max_examples=1500, deadline=None)
@given(
    seed=st.sampled_from(SEEDS),
    edits=st.lists(
        st.tuples(
            st.integers(0, 10_000),
            st.sampled_from(["insert", "delete", "replace"]),
            st.integers(0, len(ALPHABET) - 1),
        ),
        max_size=4,
    ),
)
@example(seed=SEEDS[0], edits=[])
def test_agrees_with_json_loads(seed: bytes, edits: list[tuple[int, str, int]]) -> None:
    body = bytearray(seed)
    for where, how, which in edits:
        i = where % (len(body) + 1)
        char = ALPHABET[which : which + 1]
        if how == "insert":
            body[i:i] = char
        elif how == "delete":
            del body[i : i + 1]
        else:
            body[i : i + 1] = char
    body_bytes = bytes(body)
    expected = reference(body_bytes)
    outcomes = [outcome(split(body_bytes, sizes)) for sizes in CHUNKINGS.values()]
    assert outcomes[0] == outcomes[1] == outcomes[2]  # the same, messages too
    if expected is None:
        assert isinstance(outcomes[0], str), body_bytes
    else:
        assert outcomes[0] == expected, body_bytes


# -- bounded memory ---------------------------------------------------------------------------

BLOCK = 48 * 1024  # raw bytes a block: 64 KiB of base64


def raw_blocks(count: int) -> Iterator[bytes]:
    for i in range(count):
        yield hashlib.shake_128(i.to_bytes(8, "big")).digest(BLOCK)


def big_body(count: int) -> Iterator[bytes]:
    yield b'{"resourceType":"Binary","id":"big","contentType":"video/mp4","data":"'
    for block in raw_blocks(count):
        yield base64.b64encode(block).replace(b"/", b"\\/")
    yield b'","meta":{"versionId":"1","security":[{"code":"R"}]}}'


def rechunk(pieces: Iterable[bytes], size: int) -> Iterator[bytes]:
    buf = bytearray()
    for piece in pieces:
        buf += piece
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


def test_sixty_megabytes_with_bounded_memory() -> None:
    count = 60 * 1024 * 1024 // BLOCK
    expected = hashlib.sha256()
    for block in raw_blocks(count):
        expected.update(block)

    got = hashlib.sha256()
    size = 0
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        decoder = BinaryJson(rechunk(big_body(count), 65_521))
        for piece in decoder:
            got.update(piece)
            size += len(piece)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert size == count * BLOCK
    assert got.hexdigest() == expected.hexdigest()
    assert decoder.fields["meta"] == {"versionId": "1", "security": [{"code": "R"}]}
    assert peak < 4 * 1024 * 1024, peak


def test_a_read_of_the_other_elements_only_needs_no_data() -> None:
    body = b'{"resourceType": "Binary", "securityContext": {"reference": "Media/1"}}'
    reader = BinaryJson([body], require_data=False)
    assert list(reader) == []
    assert reader.fields["securityContext"] == {"reference": "Media/1"}
    with pytest.raises(BadResponse, match="no data"):
        list(BinaryJson([body]))
