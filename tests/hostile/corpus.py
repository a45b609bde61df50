"""A corpus of hostile inputs for ``fhir-images ingest``, generated (no binary blobs committed).

Each :class:`Case` writes its files into a folder of its own and says what must come out:
the exit code, and the error class (or the decision, for inputs that are rightly accepted).
``python -m tests.hostile.corpus DIR`` writes the whole corpus to DIR for a look.
"""

from __future__ import annotations

import io
import os
import random
import struct
import sys
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from fhir_images import synthetic

CONSENT = """\
given_by: patient
date: 2026-11-20T09:55:00Z
taken_by: Practitioner/gp1
method: verbal
confirmed: true
explained: {why: true, form: true, secure_storage: true, secondary_uses: true}
permissions: {view: true, store: true, second_opinion: true}
discussion: Explained why, the form and secure storage; agreed.
"""

CONTEXT = {
    "patient": "Patient/p1",
    "birth_date": "1980-01-15",
    "captured": "2026-11-20T10:00:00Z",
    "made_by": "patient",
    "operator": "Patient/p1",
    "solicited": "true",
    "intimate": "false",
    "remote": "true",
    "purpose": "Rash on forearm; baseline to judge treatment.",
}


def case_yaml(
    image: str = "image.bin", *, context: dict[str, str] | None = None, extra: str = ""
) -> str:
    ctx = {**CONTEXT, **(context or {})}
    lines = [f"image: {image}", "context:"]
    lines += [f"  {k}: {v}" for k, v in ctx.items()]
    lines.append("consent: consent.yaml")
    return "\n".join(lines) + "\n" + extra


Data = bytes | str | Callable[[], bytes]


@dataclass
class Case:
    name: str
    files: dict[str, Data] = field(default_factory=dict)
    entry: str = "case.yaml"
    exit_code: int = 2
    error: str | tuple[str, ...] | None = None  # error class; None: an accepted input
    decision: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    setup: Callable[[Path], Callable[[], None] | None] | None = None

    def write(self, folder: Path) -> Callable[[], None] | None:
        folder.mkdir(parents=True, exist_ok=True)
        files = {"consent.yaml": CONSENT, **self.files}
        for name, made in files.items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            data = made() if callable(made) else made
            if isinstance(data, str):
                path.write_text(data)
            else:
                path.write_bytes(data)
        return self.setup(folder) if self.setup else None


def image_case(
    name: str, data: Callable[[], bytes], error: str | tuple[str, ...] | None, **kw: object
) -> Case:
    """An image or recording in a case file; ``data`` is made only when the case is written."""
    ext = kw.pop("ext", "bin")
    files: dict[str, Data] = {f"image.{ext}": data, "case.yaml": case_yaml(f"image.{ext}")}
    if error is None:
        return Case(name, files, exit_code=0, decision="store", **kw)  # type: ignore[arg-type]
    return Case(name, files, error=error, **kw)  # type: ignore[arg-type]


def context_case(name: str, context: dict[str, str], error: str = "InvalidContext") -> Case:
    files: dict[str, Data] = {
        "image.jpg": lambda: synthetic.jpeg(64, 48),
        "case.yaml": case_yaml("image.jpg", context=context),
    }
    return Case(name, files, error=error)


def text_case(
    name: str, text: str | bytes, error: str = "InvalidContext", entry: str = "case.yaml"
) -> Case:
    return Case(
        name, {"image.jpg": lambda: synthetic.jpeg(64, 48), entry: text}, entry=entry, error=error
    )


# ---------------------------------------------------------------------------- builders


def _jpeg(w: int = 320, h: int = 240, **kw: object) -> bytes:
    return synthetic.jpeg(w, h, **kw)  # type: ignore[arg-type]


def _jpeg_flat(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (120, 80, 60)).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def _heic_flat(w: int, h: int) -> bytes:
    import pillow_heif

    pillow_heif.register_heif_opener()
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (120, 80, 60)).save(buf, "HEIF", quality=50)
    return buf.getvalue()


def _sof_size(data: bytes, w: int, h: int) -> bytes:
    out = bytearray(data)
    i = out.find(b"\xff\xc0")
    if i < 0:
        i = out.find(b"\xff\xc2")
    out[i + 5 : i + 9] = struct.pack(">HH", h, w)
    return bytes(out)


def _png(im: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kw)  # type: ignore[arg-type]
    return buf.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def _png_raw(
    w: int, h: int, color: int, depth: int, raw: bytes, extra: list[bytes] | None = None
) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0)
    parts = [b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", ihdr), *(extra or [])]
    parts += [_chunk(b"IDAT", zlib.compress(raw, 9)), _chunk(b"IEND", b"")]
    return b"".join(parts)


def _tiff_pages(
    sizes: list[tuple[int, int]], compression: str = "tiff_deflate", mode: str = "L"
) -> bytes:
    frames = [Image.new(mode, s, 7) for s in sizes]
    buf = io.BytesIO()
    frames[0].save(buf, "TIFF", save_all=True, append_images=frames[1:], compression=compression)
    return buf.getvalue()


def _webp(im: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "WEBP", **kw)  # type: ignore[arg-type]
    return buf.getvalue()


def _box(kind: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _mp4_with(moov: bytes, tail: bytes = b"") -> bytes:
    return _box(b"ftyp", b"mp42\x00\x00\x00\x00mp42isom") + moov + tail


def _mvhd(timescale: int, duration: int) -> bytes:
    return _box(
        b"mvhd",
        b"\x00\x00\x00\x00" + struct.pack(">IIII", 0, 0, timescale, duration) + b"\x00" * 80,
    )


def _wav_header(data_size: int, channels: int = 1, rate: int = 8000, bits: int = 16) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * block, block, bits)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_size)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", data_size)
    )


def _fifo(name: str, writer: bool = False) -> Callable[[Path], Callable[[], None] | None]:
    def setup(folder: Path) -> Callable[[], None] | None:
        path = folder / name
        if path.exists():
            path.unlink()
        os.mkfifo(path)
        if not writer:
            return None
        stop = threading.Event()

        def write() -> None:
            try:
                fd = os.open(path, os.O_WRONLY)
                with os.fdopen(fd, "wb") as f:
                    while not stop.is_set():
                        f.write(synthetic.jpeg(32, 32))
                        f.flush()
                        stop.wait(0.05)
            except OSError:  # the reader went away: that is the point
                return

        t = threading.Thread(target=write, daemon=True)
        t.start()

        def done() -> None:
            stop.set()
            try:  # unblock a writer still waiting for a reader
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
                os.close(fd)
            except OSError:
                pass
            t.join(timeout=2)

        return done

    return setup


def _symlink(name: str, target: str) -> Callable[[Path], None]:
    def setup(folder: Path) -> None:
        path = folder / name
        if path.exists() or path.is_symlink():
            path.unlink()
        path.symlink_to(target)

    return setup


def _mkdir(name: str) -> Callable[[Path], None]:
    def setup(folder: Path) -> None:
        p = folder / name
        if p.exists() and not p.is_dir():
            p.unlink()
        p.mkdir(exist_ok=True)

    return setup


# ------------------------------------------------------------------------------- corpus


def cases() -> list[Case]:
    rng = random.Random(2026)
    good = _jpeg()
    out: list[Case] = []
    add = out.append

    # JPEG
    add(image_case("jpeg-cut-10pc", lambda: good[: len(good) // 10], "CorruptMedia"))
    add(image_case("jpeg-cut-50pc", lambda: good[: len(good) // 2], "CorruptMedia"))
    add(image_case("jpeg-cut-before-eoi", lambda: good[:-2], "CorruptMedia"))
    add(
        image_case(
            "jpeg-header-lies-9000x9000", lambda: _sof_size(good, 9000, 9000), "CorruptMedia"
        )
    )
    add(
        image_case(
            "jpeg-zero-width", lambda: _sof_size(good, 0, 240), ("CorruptMedia", "InputTooLarge")
        )
    )
    add(image_case("jpeg-40000-a-side", lambda: _sof_size(good, 40000, 100), "InputTooLarge"))
    add(
        image_case(
            "jpeg-108-megapixels",
            lambda: _sof_size(good, 12000, 9000),
            ("InputTooLarge", "CorruptMedia"),
        )
    )
    add(
        image_case(
            "jpeg-no-scan", lambda: good[: good.find(b"\xff\xda")] + b"\xff\xd9", "CorruptMedia"
        )
    )
    bad_len = bytearray(good)
    bad_len[4:6] = b"\x00\x01"  # APP0 length 1
    add(image_case("jpeg-segment-length-1", lambda: bytes(bad_len), "CorruptMedia"))
    long_len = bytearray(good[:20])
    long_len[4:6] = b"\xff\xff"
    add(image_case("jpeg-segment-past-the-end", lambda: bytes(long_len), "CorruptMedia"))
    add(
        image_case(
            "jpeg-trailing-zip-polyglot", lambda: good + b"PK\x03\x04" + os.urandom(2000), None
        )
    )
    add(image_case("jpeg-trailing-html", lambda: good + b"<script>alert(1)</script>", None))
    com = b"".join(b"\xff\xfe" + struct.pack(">H", 65535) + b"C" * 65533 for _ in range(16))
    add(image_case("jpeg-one-megabyte-of-comments", lambda: good[:2] + com + good[2:], None))
    add(
        image_case("jpeg-gps-and-serial", lambda: _jpeg(gps=True, device=True, orientation=6), None)
    )
    prog = io.BytesIO()
    synthetic.picture(320, 240).save(prog, "JPEG", progressive=True)
    add(image_case("jpeg-progressive", lambda: prog.getvalue(), None))
    add(
        image_case(
            "jpeg-magic-then-random", lambda: b"\xff\xd8\xff\xe0" + os.urandom(5000), "CorruptMedia"
        )
    )
    add(
        image_case(
            "jpeg-fill-byte-flood",
            lambda: good[:2] + b"\xff" * 200_000 + good[2:],
            None,
        )
    )
    add(
        image_case(
            "jpeg-over-the-byte-limit",
            good,
            "InputTooLarge",
            env={"FHIR_IMAGES_MAX_IMAGE_BYTES": "1000"},
        )
    )
    add(
        image_case(
            "jpeg-over-a-configured-pixel-limit",
            good,
            "InputTooLarge",
            env={"FHIR_IMAGES_MAX_PIXELS": "10000"},
        )
    )
    add(image_case("jpeg-exif-ifd-chain", lambda: _jpeg(gps=True) + b"", None))

    # PNG
    add(
        image_case(
            "png-9400-square-rgba-one-colour",
            lambda: _png(Image.new("RGBA", (9400, 9400), (1, 2, 3, 4))),
            None,
        )
    )
    add(
        image_case(
            "png-20000-square-bilevel",
            lambda: _png(Image.new("1", (20000, 20000))),
            "InputTooLarge",
        )
    )
    png = _png(synthetic.picture(200, 150))
    idat = png.find(b"IDAT")
    add(image_case("png-idat-cut", lambda: png[: idat + 40], "CorruptMedia"))
    crc = bytearray(png)
    crc[idat + 10] ^= 0xFF
    add(image_case("png-bad-checksum", lambda: bytes(crc), "CorruptMedia"))
    add(
        image_case(
            "png-data-larger-than-header",
            lambda: _png_raw(10, 10, 0, 8, b"\x00" * 5000),
            "CorruptMedia",
        )
    )
    add(
        image_case(
            "png-data-shorter-than-header",
            lambda: _png_raw(100, 100, 0, 8, b"\x00" * 50),
            "CorruptMedia",
        )
    )
    add(
        image_case(
            "png-header-lies",
            lambda: _png_raw(4000, 4000, 0, 8, (b"\x00" + b"\x07" * 10) * 10),
            "CorruptMedia",
        )
    )
    actl = _chunk(b"acTL", struct.pack(">II", 2, 0))
    add(
        image_case(
            "png-animated-apng",
            lambda: _png_raw(10, 10, 0, 8, (b"\x00" + b"\x01" * 10) * 10, [actl]),
            "UnsupportedMediaType",
        )
    )
    ztxt = _chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * (64 << 20), 9))
    add(
        image_case(
            "png-ztxt-bomb",
            lambda: _png_raw(10, 10, 0, 8, (b"\x00" + b"\x01" * 10) * 10, [ztxt]),
            ("CorruptMedia", None),
        )
    )
    add(
        image_case(
            "png-invalid-depth-for-colour",
            lambda: _png_raw(10, 10, 2, 4, b"\x00" * 200),
            "CorruptMedia",
        )
    )
    add(image_case("png-no-iend", lambda: png[: png.find(b"IEND") - 4], "CorruptMedia"))
    add(image_case("png-zero-size", lambda: _png_raw(0, 0, 0, 8, b""), "CorruptMedia"))
    add(image_case("png-16-bit-grey", lambda: _png(Image.new("I;16", (50, 40))), None))
    add(image_case("png-with-text-and-gps", lambda: synthetic.png(gps=True, text=True), None))
    add(
        image_case(
            "png-magic-then-random", lambda: b"\x89PNG\r\n\x1a\n" + os.urandom(3000), "CorruptMedia"
        )
    )

    # WebP
    webp = synthetic.webp()
    add(image_case("webp-cut", lambda: webp[: len(webp) // 2], "CorruptMedia"))
    anim = io.BytesIO()
    frames = [Image.new("RGB", (32, 32), (i * 40, 0, 0)) for i in range(3)]
    frames[0].save(anim, "WEBP", save_all=True, append_images=frames[1:])
    add(image_case("webp-animated", lambda: anim.getvalue(), "UnsupportedMediaType"))
    lie = bytearray(webp)
    lie[4:8] = struct.pack("<I", 10_000_000)
    add(image_case("webp-riff-size-lies", lambda: bytes(lie), "CorruptMedia"))
    add(
        image_case(
            "webp-16383-square",
            lambda: _webp(Image.new("RGB", (16383, 16383)), lossless=True),
            "InputTooLarge",
        )
    )
    add(image_case("webp-with-gps", lambda: synthetic.webp(gps=True, orientation=6), None))

    # TIFF
    add(
        image_case("tiff-five-9000-pages", lambda: _tiff_pages([(9000, 9000)] * 5), "InputTooLarge")
    )
    add(image_case("tiff-one-20000-page", lambda: _tiff_pages([(20000, 20000)]), "InputTooLarge"))
    add(image_case("tiff-40-pages", lambda: _tiff_pages([(16, 16)] * 40), "InputTooLarge"))
    tiff = _tiff_pages([(64, 64), (32, 32)], compression="raw")
    add(image_case("tiff-two-pages", lambda: tiff, None))
    add(
        image_case(
            "tiff-cut", lambda: tiff[: len(tiff) // 3], ("CorruptMedia", "UnsupportedMediaType")
        )
    )
    loop = bytearray(synthetic.tiff(64, 64))
    ifd = struct.unpack("<I", loop[4:8])[0]
    n = struct.unpack("<H", loop[ifd : ifd + 2])[0]
    loop[ifd + 2 + 12 * n : ifd + 6 + 12 * n] = struct.pack("<I", ifd)  # next IFD: itself
    add(image_case("tiff-ifd-loop", lambda: bytes(loop), None))

    # HEIC
    heic = synthetic.heic()
    add(
        image_case(
            "heic-cut", lambda: heic[: len(heic) // 2], ("CorruptMedia", "UnsupportedMediaType")
        )
    )
    add(
        image_case(
            "heic-over-a-configured-decode-limit",
            lambda: heic,
            "InputTooLarge",
            env={"FHIR_IMAGES_MAX_DECODE_PIXELS": "1000"},
        )
    )
    add(image_case("heic-with-gps", lambda: synthetic.heic(gps=True), None))

    # at the limits: accepted, within the stated memory bound
    add(image_case("jpeg-100-megapixels", lambda: _jpeg_flat(10000, 10000), None))
    add(
        image_case(
            "png-100-megapixels", lambda: _png(Image.new("RGB", (10000, 10000), (9, 9, 9))), None
        )
    )
    add(
        image_case(
            "webp-12-megapixels",
            lambda: _webp(Image.new("RGB", (4000, 3000), (9, 9, 9)), lossless=True),
            None,
        )
    )
    add(
        image_case(
            "webp-13-megapixels",
            lambda: _webp(Image.new("RGB", (4000, 3250), (9, 9, 9)), lossless=True),
            "InputTooLarge",
        )
    )
    add(
        image_case(
            "tiff-24-megapixels-rgb-in-3-pages",
            lambda: _tiff_pages([(4000, 2000)] * 3, mode="RGB"),
            None,
        )
    )
    add(image_case("heic-24-megapixels", lambda: _heic_flat(6000, 4000), None))

    # type confusion
    add(image_case("pdf-named-jpg", lambda: synthetic.pdf(), "UnsupportedMediaType", ext="jpg"))
    add(
        image_case(
            "gif", lambda: b"GIF89a" + b"\x01\x00\x01\x00\x00\x00\x00;", "UnsupportedMediaType"
        )
    )
    bmp = io.BytesIO()
    Image.new("RGB", (8, 8)).save(bmp, "BMP")
    add(image_case("bmp", lambda: bmp.getvalue(), "UnsupportedMediaType"))
    add(image_case("empty-file", lambda: b"", "UnsupportedMediaType"))
    add(image_case("png-named-jpg", lambda: png, "ContentTypeMismatch", ext="jpg"))
    add(image_case("mp4-named-jpg", lambda: synthetic.mp4(), "ContentTypeMismatch", ext="jpg"))
    add(
        image_case(
            "random-bytes",
            lambda: bytes(rng.getrandbits(8) for _ in range(4096)),
            "UnsupportedMediaType",
        )
    )
    add(
        image_case(
            "html",
            lambda: b"<!doctype html><html><script>x()</script></html>",
            "UnsupportedMediaType",
        )
    )
    add(
        image_case(
            "svg",
            lambda: b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>',
            "UnsupportedMediaType",
        )
    )
    add(image_case("zip", lambda: b"PK\x03\x04" + b"\x00" * 100, "UnsupportedMediaType"))

    # not regular files
    add(
        Case(
            "fifo-as-image-no-writer",
            {"case.yaml": case_yaml("image.fifo")},
            error="UnsupportedMediaType",
            setup=_fifo("image.fifo"),
        )
    )
    add(
        Case(
            "fifo-as-image-with-writer",
            {"case.yaml": case_yaml("image.fifo")},
            error="UnsupportedMediaType",
            setup=_fifo("image.fifo", writer=True),
        )
    )
    add(
        Case(
            "folder-as-image",
            {"case.yaml": case_yaml("image.dir")},
            error="UnsupportedMediaType",
            setup=_mkdir("image.dir"),
        )
    )
    add(
        Case(
            "dev-zero-as-image", {"case.yaml": case_yaml("/dev/zero")}, error="UnsupportedMediaType"
        )
    )
    add(
        Case(
            "symlink-to-dev-zero",
            {"case.yaml": case_yaml("image.lnk")},
            error="UnsupportedMediaType",
            setup=_symlink("image.lnk", "/dev/zero"),
        )
    )
    add(
        Case(
            "fifo-as-case-file",
            {},
            entry="case.yaml",
            error="InvalidContext",
            setup=_fifo("case.yaml"),
        )
    )
    add(
        Case(
            "folder-as-consent-file",
            {
                "image.jpg": good,
                "case.yaml": case_yaml("image.jpg").replace("consent.yaml", "consent.d"),
            },
            error="InvalidContext",
            setup=_mkdir("consent.d"),
        )
    )
    add(
        Case(
            "fifo-as-consent-file",
            {
                "image.jpg": good,
                "case.yaml": case_yaml("image.jpg").replace("consent.yaml", "consent.fifo"),
            },
            error="InvalidContext",
            setup=_fifo("consent.fifo", writer=True),
        )
    )

    # recordings
    mp4 = synthetic.mp4()
    add(image_case("mp4-cut-to-100-bytes", lambda: mp4[:100], "CorruptMedia"))
    add(
        image_case(
            "mp4-box-size-2-64",
            lambda: (
                _box(b"ftyp", b"mp42\x00\x00\x00\x00mp42isom")
                + struct.pack(">I", 1)
                + b"mdat"
                + struct.pack(">Q", 2**64 - 1)
                + b"\x00" * 64
            ),
            "CorruptMedia",
        )
    )
    add(
        image_case(
            "mp4-nested-size-zero",
            lambda: _mp4_with(_box(b"moov", struct.pack(">I", 0) + b"trak" + b"\x00" * 16)),
            "CorruptMedia",
        )
    )
    add(
        image_case(
            "mp4-no-moov",
            lambda: _box(b"ftyp", b"mp42\x00\x00\x00\x00mp42isom") + _box(b"mdat", b"\x00" * 100),
            "CorruptMedia",
        )
    )
    add(
        image_case(
            "mp4-no-mdat", lambda: _mp4_with(_box(b"moov", _mvhd(1000, 5000))), "CorruptMedia"
        )
    )
    add(
        image_case(
            "mp4-box-size-4",
            lambda: _mp4_with(struct.pack(">I", 4) + b"moov" + b"\x00" * 40),
            "CorruptMedia",
        )
    )
    deep = _mvhd(1000, 1000)
    for _ in range(30):
        deep = _box(b"trak", deep)
    add(
        image_case(
            "mp4-nested-30-deep",
            lambda: _mp4_with(_box(b"moov", deep), _box(b"mdat", b"\x00" * 16)),
            "CorruptMedia",
        )
    )
    add(
        image_case(
            "mp4-timescale-zero",
            lambda: _mp4_with(_box(b"moov", _mvhd(0, 5000)), _box(b"mdat", b"\x00" * 16)),
            "CorruptMedia",
        )
    )
    add(
        image_case(
            "mp4-lasts-a-century",
            lambda: _mp4_with(
                _box(b"moov", _mvhd(1, 100 * 365 * 86400)), _box(b"mdat", b"\x00" * 16)
            ),
            "CorruptMedia",
        )
    )
    tkhd = _box(
        b"tkhd", b"\x00\x00\x00\x00" + b"\x00" * 76 + struct.pack(">II", 20000 << 16, 20000 << 16)
    )
    add(
        image_case(
            "mp4-track-20000-square",
            lambda: _mp4_with(
                _box(b"moov", _mvhd(1000, 1000) + _box(b"trak", tkhd)), _box(b"mdat", b"\x00" * 16)
            ),
            "CorruptMedia",
        )
    )
    add(
        image_case(
            "mp4-300000-tiny-boxes",
            lambda: _mp4_with(_box(b"moov", _mvhd(1000, 1000)), _box(b"free") * 300_000),
            "CorruptMedia",
        )
    )
    add(image_case("mp4-valid", lambda: mp4, None))
    add(image_case("mov-valid", lambda: synthetic.mp4(brand=b"qt  "), None))
    add(image_case("m4a-valid", lambda: synthetic.mp4(brand=b"M4A "), None))
    add(image_case("wav-claims-1gb-no-data", lambda: _wav_header(1 << 30), "CorruptMedia"))
    add(
        image_case(
            "wav-zero-channels", lambda: _wav_header(16, channels=0) + b"\x00" * 16, "CorruptMedia"
        )
    )
    wav_nodata = _wav_header(0)[:-8]
    add(
        image_case(
            "wav-no-data-chunk",
            lambda: wav_nodata[:4] + struct.pack("<I", len(wav_nodata) - 8) + wav_nodata[8:],
            "CorruptMedia",
        )
    )
    add(
        image_case(
            "wav-chunk-past-the-end", lambda: _wav_header(100) + b"\x00" * 50, "CorruptMedia"
        )
    )
    add(image_case("wav-valid", lambda: synthetic.wav(), None))
    add(
        image_case(
            "mp3-id3-then-random",
            lambda: b"ID3\x03\x00\x00\x00\x00\x00\x00" + os.urandom(20000),
            "CorruptMedia",
        )
    )
    add(
        image_case(
            "mp3-id3-larger-than-file",
            lambda: b"ID3\x03\x00\x00\x7f\x7f\x7f\x7f" + synthetic.mp3(),
            "CorruptMedia",
        )
    )
    mp3 = synthetic.mp3()
    add(
        image_case(
            "mp3-one-frame-then-garbage", lambda: mp3[:417] + os.urandom(3000), "CorruptMedia"
        )
    )
    add(image_case("mp3-with-id3v1", lambda: mp3 + b"TAG" + b"\x00" * 125, None))
    add(image_case("mp3-valid", lambda: mp3, None))
    add(
        image_case(
            "recording-over-a-configured-limit",
            lambda: mp4,
            "InputTooLarge",
            env={"FHIR_IMAGES_MAX_AV_BYTES": "1000"},
        )
    )

    # case, context and consent files
    bomb = "a: &a [" + ",".join(["x"] * 10) + "]\n"
    for i in range(1, 9):
        bomb += f"{chr(97 + i)}: &{chr(97 + i)} [" + ",".join([f"*{chr(96 + i)}"] * 10) + "]\n"
    add(text_case("yaml-alias-bomb-in-image", bomb + "image: *i\ncontext: {}\n"))
    add(
        text_case(
            "yaml-alias-bomb-in-policy",
            case_yaml("image.jpg") + bomb.replace("a:", "zz:", 1) + "policy: *i\n",
        )
    )
    add(
        text_case(
            "yaml-anchor-on-context", case_yaml("image.jpg").replace("context:", "context: &ctx")
        )
    )
    add(text_case("yaml-duplicate-keys", case_yaml("image.jpg") + "image: other.jpg\n"))
    add(context_case("birth-date-zero", {"birth_date": "0"}))
    add(
        text_case(
            "yaml-syntax-error-with-a-name",
            case_yaml("image.jpg") + "purpose: John Smith [unclosed\n  - x: : y\n",
        )
    )
    add(context_case("patient-dot-dot", {"patient": "Patient/.."}))
    add(context_case("patient-id-65-long", {"patient": "Patient/" + "a" * 65}))
    add(context_case("operator-non-ascii", {"operator": "Patient/p\u00e9"}))
    add(
        text_case(
            "ten-megabyte-purpose", case_yaml("image.jpg", context={"purpose": "x" * (10 << 20)})
        )
    )
    add(context_case("seventy-thousand-character-purpose", {"purpose": "y" * 70_000}))
    add(context_case("nul-in-purpose", {"purpose": '"rash \\0 here"'}))
    add(context_case("escape-in-purpose", {"purpose": '"rash \\e[31m red"'}))
    add(context_case("bell-in-title", {"purpose": '"ok"', "title": '"ding \\a"'}))
    add(context_case("birth-date-year-1", {"birth_date": "0001-01-01"}))
    add(context_case("birth-date-in-the-future", {"birth_date": "2999-01-01"}))
    add(context_case("captured-before-birth", {"captured": "1970-01-01T00:00:00Z"}))
    add(text_case("consent-dated-3000", case_yaml("image.jpg"), entry="case.yaml"))
    out[-1].files["consent.yaml"] = CONSENT.replace("2026-11-20T09:55:00Z", "3000-01-01T00:00:00Z")
    add(text_case("consent-before-birth", case_yaml("image.jpg")))
    out[-1].files["consent.yaml"] = CONSENT.replace("2026-11-20T09:55:00Z", "1975-01-01T00:00:00Z")
    add(
        text_case(
            "unknown-policy",
            case_yaml("image.jpg", extra="policy: lenient\n"),
            error="PolicyNotFound",
        )
    )
    add(text_case("case-file-is-a-list", "- image.jpg\n- context\n"))
    add(text_case("case-file-unknown-key", case_yaml("image.jpg", extra="run: rm -rf /\n")))
    add(
        text_case(
            "yaml-python-tag", "image: !!python/object/apply:os.system ['true']\ncontext: {}\n"
        )
    )
    add(text_case("yaml-nested-1000-deep", "image: " + "[" * 1000 + "]" * 1000 + "\ncontext: {}\n"))
    add(text_case("yaml-merge-key", case_yaml("image.jpg") + "extra: {<<: {a: 1}}\n"))
    add(
        text_case(
            "json-duplicate-keys",
            '{"image": "image.jpg", "image": "x.jpg", "context": {}}',
            entry="case.json",
        )
    )
    add(
        text_case(
            "json-nested-100000-deep",
            '{"image": ' + "[" * 100_000 + "]" * 100_000 + "}",
            entry="case.json",
        )
    )
    add(text_case("case-file-not-utf8", b"image: \xff\xfe\xfa\ncontext: {}\n"))
    flag_as_string = (
        '{"image": "image.jpg", "context": {"patient": "Patient/p1", "birth_date": '
        '"1980-01-01", "made_by": "patient", "intimate": "yes", "purpose": "x"}}'
    )
    add(text_case("json-flag-as-string", flag_as_string, entry="case.json"))
    add(context_case("flag-as-number", {"solicited": "1"}))
    add(context_case("made-by-unknown", {"made_by": "neighbour"}))
    add(
        Case(
            "unusable-pixel-setting",
            {"image.jpg": good, "case.yaml": case_yaml("image.jpg")},
            error="InvalidSetting",
            env={"FHIR_IMAGES_MAX_PIXELS": "lots"},
        )
    )
    add(context_case("purpose-as-a-list", {"purpose": "[a, b]"}))
    add(context_case("birth-date-as-a-mapping", {"birth_date": "{year: 1980}"}))
    add(
        text_case(
            "case-file-two-megabytes", "image: image.jpg\ncontext: {}\n# " + "z" * (2 << 20) + "\n"
        )
    )
    return out


def main(argv: list[str]) -> int:
    folder = Path(argv[1]) if len(argv) > 1 else Path("hostile-corpus")
    for case in cases():
        done = case.write(folder / case.name)
        if done:
            done()
    print(f"wrote {len(cases())} cases to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
