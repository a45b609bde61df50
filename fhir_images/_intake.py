"""Intake: bytes in, facts out, through one input gate.

Every image, recording and file that fhir-images reads passes the same gate:

* **Regular files only.** A pipe, device, socket or folder is refused at once (opened
  non-blocking, so a FIFO with no writer cannot hang the process).
* **The real type from the content**, checked against any claimed type.
* **Limits from headers, before any decoding**: bytes; width, height and pixels of every page
  of a multi-page TIFF; animations are refused (a moving image is sent as a video). The
  limits are configurable (:class:`Limits`, ``FHIR_IMAGES_MAX_*``).
* **Decoded at most once, and only where it must be**: JPEG is checked at 1/8 scale (1/64 of
  the memory) after its container has been rewritten; PNG is never decoded: its compressed data
  is inflated as a stream and must produce exactly the bytes its header promises; WebP, TIFF and
  HEIC are decoded once, bounded by ``max_decode_pixels``.
* **Structure against the bytes present**: a JPEG whose entropy-coded data is too short for its
  declared size, a cut PNG or WebP chunk, a recording whose boxes or chunks claim more than the
  file holds (see :mod:`fhir_images._avcheck`) are refused.

Location and device metadata are stripped from images *losslessly* (JPEG, PNG and WebP are
rewritten at the container level; pixels are not re-encoded). HEIC/HEIF is converted to a JPEG
rendition, because browsers and most viewers cannot show HEIC. Recordings are streamed in
fixed-size chunks and never held whole. No network access happens here.

Memory: with the default limits, peak resident memory stays under 256 MB for any input,
accepted or refused (measured by ``tests/hostile``; figures in the README).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import logging
import os
import stat
import struct
import tempfile
import threading
import warnings
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import filetype
from PIL import Image, UnidentifiedImageError

from ._exceptions import (
    ContentTypeMismatch,
    CorruptMedia,
    FhirImagesError,
    InputTooLarge,
    InvalidSetting,
    UnsupportedMediaType,
)

log = logging.getLogger("fhir_images.intake")

Category = Literal["image", "video", "audio"]

#: Accepted media types (as sniffed) and their category.
ACCEPTED: dict[str, Category] = {
    "image/jpeg": "image",
    "image/png": "image",
    "image/webp": "image",
    "image/tiff": "image",
    "image/heic": "image",
    "image/heif": "image",
    "video/mp4": "video",
    "video/quicktime": "video",
    "audio/mp4": "audio",
    "audio/mpeg": "audio",
    "audio/wav": "audio",
}

# Names that mean the same format; a claim in one group matches content in the same group.
_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/heif": "image/heic",
    "image/heic-sequence": "image/heic",
    "image/heif-sequence": "image/heic",
    "video/quicktime": "video/mp4",
    "audio/x-m4a": "audio/mp4",
    "audio/m4a": "audio/mp4",
    "audio/x-wav": "audio/wav",
    "audio/wave": "audio/wav",
    "audio/vnd.wave": "audio/wav",
    "audio/mp3": "audio/mpeg",
}

_EXTENSIONS = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".jpe": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".heic": "image/heic",
    ".heif": "image/heif",
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".mov": "video/quicktime",
    ".m4a": "audio/mp4",
    ".mp3": "audio/mpeg",
    ".wav": "audio/wav",
    ".pdf": "application/pdf",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
}

_CHUNK = 1 << 20

# EXIF tags
_ORIENTATION = 0x0112
_GPS_IFD = 0x8825
_EXIF_IFD = 0x8769
_DEVICE_TAGS = {
    0x010F: "make",
    0x0110: "model",
    0xA430: "camera owner",
    0xA431: "body serial number",
    0xA433: "lens make",
    0xA434: "lens model",
    0xA435: "lens serial number",
    0x013B: "artist",
    0xA420: "image unique id",
}

_ENV = {
    "max_image_bytes": "FHIR_IMAGES_MAX_IMAGE_BYTES",
    "max_av_bytes": "FHIR_IMAGES_MAX_AV_BYTES",
    "max_pixels": "FHIR_IMAGES_MAX_PIXELS",
    "max_decode_pixels": "FHIR_IMAGES_MAX_DECODE_PIXELS",
    "max_pages": "FHIR_IMAGES_MAX_PAGES",
}


@dataclass(frozen=True)
class Limits:
    """Input limits. Defaults suit phone photos and consultation recordings.

    ``max_pixels`` bounds JPEG and PNG, which are checked without being decoded in full;
    ``max_decode_pixels`` bounds HEIC and the sum of all pages of a TIFF, which are decoded in
    full (about 8 bytes a pixel at the peak), and WebP at half of it (its decoder takes twice
    as much). With the defaults, no input takes more than 256 MB resident.
    """

    max_image_bytes: int = 50 * 1024 * 1024
    max_av_bytes: int = 4 * 1024 * 1024 * 1024
    max_pixels: int = 100_000_000
    max_decode_pixels: int = 24_000_000
    max_side: int = 30_000
    max_pages: int = 32

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Limits:
        """The limits, with any ``FHIR_IMAGES_MAX_*`` variable of ``environ`` (default: the
        process environment) applied."""
        env = os.environ if environ is None else environ
        values: dict[str, int] = {}
        for name, var in _ENV.items():
            raw = env.get(var)
            if raw is None:
                continue
            if not raw.strip().isdigit() or int(raw) <= 0:
                raise InvalidSetting(f"{var} must be a positive whole number")
            values[name] = int(raw)
        return cls(**values)


@dataclass(frozen=True)
class ImageFacts:
    """What intake learned about one image or recording.

    ``size``, ``sha1_b64`` and ``sha256_hex`` describe the *stored* bytes
    (after metadata stripping or HEIC conversion); ``original_*`` describe
    what was received.
    """

    media_type: str
    category: Category
    size: int
    sha1_b64: str
    sha256_hex: str
    original_media_type: str
    original_size: int
    original_sha256_hex: str
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    duration_s: float | None = None
    orientation: int | None = None
    icc_profile_kept: bool = False
    metadata_removed: tuple[str, ...] = ()
    metadata_checked: bool = True
    converted_from: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def extension(self) -> str:
        return {
            "image/jpeg": ".jpg",
            "image/png": ".png",
            "image/webp": ".webp",
            "image/tiff": ".tif",
            "video/mp4": ".mp4",
            "video/quicktime": ".mov",
            "audio/mp4": ".m4a",
            "audio/mpeg": ".mp3",
            "audio/wav": ".wav",
        }.get(self.media_type, ".bin")


@dataclass(frozen=True)
class IntakeResult:
    facts: ImageFacts
    path: Path
    """The stored bytes, in a file the caller now owns (move it, or delete it)."""


def canonical_type(media_type: str) -> str:
    t = media_type.split(";")[0].strip().lower()
    return _ALIASES.get(t, t)


def claimed_type_from_name(name: str) -> str | None:
    """The media type a file name claims, or None when its extension says nothing."""
    return _EXTENSIONS.get(Path(name).suffix.lower())


def sniff(head: bytes) -> str:
    """The media type of content, from its first bytes. Raises UnsupportedMediaType."""
    kind = filetype.guess(head)
    if kind is None:
        raise UnsupportedMediaType(
            "content is not a recognised image, video or audio format "
            "(accepted: JPEG, PNG, WebP, TIFF, HEIC/HEIF, MP4/QuickTime, M4A, MP3, WAV)"
        )
    mime = str(kind.mime)
    if mime == "audio/x-wav":
        mime = "audio/wav"
    if mime == "image/heif" or mime.startswith("image/heic"):
        mime = "image/heic"
    if mime not in ACCEPTED:
        raise UnsupportedMediaType(
            f"content is {mime}, which is not an accepted image, video or audio format"
        )
    return mime


def _check_claim(sniffed: str, claimed: str | None) -> None:
    if claimed is None:
        return
    if canonical_type(claimed) != canonical_type(sniffed):
        raise ContentTypeMismatch(
            f"content is {sniffed} but was presented as {claimed}; "
            "check the file: it may have been renamed or mislabelled"
        )


def open_regular(path: Path, what: str = "input file") -> IO[bytes]:
    """Open a file for reading only if it is a regular file (never blocks on a FIFO).

    Raises UnsupportedMediaType naming ``what`` and the rule; never the path.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise UnsupportedMediaType(
            f"the {what} cannot be read ({exc.strerror or type(exc).__name__})"
        ) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnsupportedMediaType(
                f"the {what} is not a regular file (a pipe, device, socket or folder)"
            )
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def intake(
    source: Path | bytes,
    *,
    claimed_type: str | None = None,
    limits: Limits | None = None,
    workdir: Path | None = None,
) -> IntakeResult:
    """Sniff, check, strip and hash one image or recording.

    ``source`` is a path (streamed) or bytes. ``claimed_type`` is what the
    sender said it is (a Content-Type, or derived from the file name); content
    that contradicts it is refused. The stored bytes are written to a new file
    in ``workdir`` (default: the system temporary folder). Raises
    :class:`BadInput` subclasses; leaves nothing behind when it does.
    """
    limits = limits or Limits()
    workdir = Path(workdir) if workdir else Path(tempfile.gettempdir())
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise UnsupportedMediaType("content is empty")
        sniffed = sniff(data[:8192])
        _check_claim(sniffed, claimed_type)
        if ACCEPTED[sniffed] == "image":
            return _image(data, sniffed, limits, workdir)
        with io.BytesIO(data) as buffer:
            return _av(buffer, len(data), sniffed, limits, workdir)

    with open_regular(Path(source)) as f:
        head = f.read(8192)
        if not head:
            raise UnsupportedMediaType("content is empty")
        sniffed = sniff(head)
        _check_claim(sniffed, claimed_type)
        f.seek(0)
        size = os.fstat(f.fileno()).st_size
        if ACCEPTED[sniffed] == "image":
            if size > limits.max_image_bytes:
                raise InputTooLarge(
                    f"image is {size} bytes; the limit is {limits.max_image_bytes} "
                    "(FHIR_IMAGES_MAX_IMAGE_BYTES)"
                )
            return _image(f.read(limits.max_image_bytes + 1), sniffed, limits, workdir)
        return _av(f, size, sniffed, limits, workdir)


# --------------------------------------------------------------------------- images

_pillow_lock = threading.Lock()


@contextlib.contextmanager
def _pillow_limits(limits: Limits) -> Iterator[None]:
    """Pillow's own decompression-bomb ceiling moved to ours while we open an image (our limits
    are checked from the header before anything is decoded); its warnings become errors."""
    with _pillow_lock:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max(limits.max_pixels, limits.max_decode_pixels)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                yield
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise InputTooLarge(
                "image refused as a decompression bomb: its header declares more pixels than "
                "the limit (FHIR_IMAGES_MAX_PIXELS)"
            ) from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved


_FORMAT = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/webp": "WEBP",
    "image/tiff": "TIFF",
    "image/heic": "HEIF",
}
_DECODED = {"image/webp", "image/tiff", "image/heic"}
#: How much heavier than HEIC or TIFF decoding is, per pixel (Pillow's WebP decoder holds a
#: canvas, a frame and the image: about twice the memory), so the pixel limit is divided by it
_DECODE_COST = {"image/webp": 2}


def _decode_errors(sniffed: str) -> contextlib.AbstractContextManager[None]:
    @contextlib.contextmanager
    def guard() -> Iterator[None]:
        try:
            yield
        except (FhirImagesError, Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise
        except UnidentifiedImageError:
            raise CorruptMedia(f"content looks like {sniffed} but cannot be decoded") from None
        except Exception as exc:  # a decoder's error on hostile content: it is damaged
            raise CorruptMedia(
                f"content looks like {sniffed} but is damaged ({type(exc).__name__})"
            ) from None

    return guard()


def _too_large(w: int, h: int, limit: int, var: str) -> InputTooLarge:
    return InputTooLarge(f"image is {w}x{h} pixels; the limit is {limit} pixels ({var})")


def _check_header(im: Image.Image, sniffed: str, limits: Limits) -> int:
    """Every page's size against the limits, from headers only; returns the page count."""
    fmt = (im.format or "").upper()
    if fmt != _FORMAT[sniffed]:
        raise ContentTypeMismatch(
            f"content starts like {sniffed} but decodes as {fmt or 'unknown'}"
        )
    decoded = sniffed in _DECODED
    limit = (
        limits.max_decode_pixels // _DECODE_COST.get(sniffed, 1) if decoded else limits.max_pixels
    )
    var = "FHIR_IMAGES_MAX_DECODE_PIXELS" if decoded else "FHIR_IMAGES_MAX_PIXELS"
    if sniffed in ("image/png", "image/webp") and (
        getattr(im, "is_animated", False) or getattr(im, "n_frames", 1) > 1
    ):
        raise UnsupportedMediaType(
            "animated images are not accepted: send a moving image as a video"
        )
    pages, total = 0, 0
    while True:
        w, h = im.size
        if w <= 0 or h <= 0:
            raise CorruptMedia(f"{sniffed} content has no pixels")
        if w > limits.max_side or h > limits.max_side:
            raise InputTooLarge(
                f"image is {w}x{h} pixels; the limit is {limits.max_side} pixels a side"
            )
        pages += 1
        total += w * h
        if total > limit:
            raise _too_large(w, h, limit, var)
        if sniffed != "image/tiff":
            return 1
        if pages > limits.max_pages:
            raise InputTooLarge(
                f"the TIFF has more than {limits.max_pages} pages (FHIR_IMAGES_MAX_PAGES)"
            )
        try:
            im.seek(pages)
        except EOFError:
            im.seek(0)
            return pages


def _image(data: bytes, sniffed: str, limits: Limits, workdir: Path) -> IntakeResult:
    if len(data) > limits.max_image_bytes:
        raise InputTooLarge(
            f"image is over {limits.max_image_bytes} bytes (FHIR_IMAGES_MAX_IMAGE_BYTES)"
        )
    if sniffed == "image/heic":
        _register_heif()
    with _pillow_limits(limits), _decode_errors(sniffed):
        im = Image.open(io.BytesIO(data))
        pages = _check_header(im, sniffed, limits)
        width, height = im.size
        # PNG keeps its EXIF anywhere in the file and Pillow decodes the whole image to find
        # it: read the eXIf chunk ourselves instead
        exif = _png_exif(data) if sniffed == "image/png" else im.getexif()
        removed = _sensitive_metadata(exif, im.info, data)
        if sniffed == "image/png" and _png_has_text(data):
            removed.add("comments")
        orientation = _orientation(exif)
        icc = im.info.get("icc_profile")
        notes: list[str] = []
        converted_from = None
        stored_type = sniffed
        if sniffed == "image/jpeg":
            stored = _strip_jpeg(data, orientation, width, height)
            _verify_jpeg(stored, width, height)
        elif sniffed == "image/png":
            stored = _strip_png(data, orientation)
        elif sniffed == "image/webp":
            stored = _strip_webp(data, orientation)
            _verify_decoded(stored, width, height)
        elif sniffed == "image/tiff":
            stored = _resave(
                im, "TIFF", orientation, icc, compression=im.info.get("compression", "raw")
            )
        else:  # HEIC/HEIF: a JPEG rendition; libheif has already applied the stored rotation
            im.load()
            if im.size != (width, height):
                raise CorruptMedia("image/heic: the decoded size differs from the header")
            rgb = im if im.mode == "RGB" else im.convert("RGB")
            stored = _resave(rgb, "JPEG", None, icc, quality=92)
            del rgb
            stored_type = "image/jpeg"
            converted_from = sniffed
            orientation = 1
            notes.append("converted from HEIC to JPEG for viewing; the HEIC original is not kept")
        im.close()
    out = _write_new(workdir, stored)
    facts = ImageFacts(
        media_type=stored_type,
        category="image",
        size=len(stored),
        sha1_b64=base64.b64encode(hashlib.sha1(stored).digest()).decode(),
        sha256_hex=hashlib.sha256(stored).hexdigest(),
        original_media_type=sniffed,
        original_size=len(data),
        original_sha256_hex=hashlib.sha256(data).hexdigest(),
        width=width,
        height=height,
        frames=pages,
        orientation=orientation,
        icc_profile_kept=bool(icc),
        metadata_removed=tuple(sorted(removed)),
        converted_from=converted_from,
        notes=tuple(notes),
    )
    log.info(
        "intake image type=%s bytes=%d stripped=%s",
        stored_type,
        len(stored),
        ",".join(facts.metadata_removed) or "none",
    )
    return IntakeResult(facts, out)


_heif_registered = False


def _register_heif() -> None:
    global _heif_registered
    if not _heif_registered:
        import pillow_heif

        pillow_heif.register_heif_opener()
        _heif_registered = True


def _orientation(exif: Image.Exif) -> int | None:
    value = exif.get(_ORIENTATION)
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else None


def _png_chunk_types(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(type, start of payload, length) of each PNG chunk, without checking them."""
    pos = 8
    while pos + 8 <= len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        yield data[pos + 4 : pos + 8], pos + 8, length
        pos += 12 + length


def _png_exif(data: bytes) -> Image.Exif:
    exif = Image.Exif()
    for kind, start, length in _png_chunk_types(data):
        if kind == b"eXIf":
            with contextlib.suppress(Exception):  # unreadable EXIF is dropped all the same
                exif.load(b"Exif\x00\x00" + data[start : start + length])
            break
    return exif


def _png_has_text(data: bytes) -> bool:
    return any(k in (b"tEXt", b"zTXt", b"iTXt") for k, _, _ in _png_chunk_types(data))


def _verify_jpeg(stored: bytes, width: int, height: int) -> None:
    """Decode the rewritten JPEG at 1/8 scale: proves the stream, costs 1/64 of the memory."""
    im = Image.open(io.BytesIO(stored))
    im.draft("RGB", (max(1, width // 8), max(1, height // 8)))
    im.load()
    if im.size[0] * 8 < width or im.size[1] * 8 < height:
        raise CorruptMedia("image/jpeg: the decoded size differs from the header")


def _verify_decoded(stored: bytes, width: int, height: int) -> None:
    im = Image.open(io.BytesIO(stored))
    im.load()
    if im.size != (width, height):
        raise CorruptMedia("the decoded size differs from the header")
    im.close()


def _sensitive_metadata(exif: Image.Exif, info: Mapping[Any, Any], data: bytes) -> set[str]:
    """Names of the identifying metadata present (all of it is removed)."""
    found: set[str] = set()
    if exif.get_ifd(_GPS_IFD) or _GPS_IFD in exif:
        found.add("GPS location")
    sub = exif.get_ifd(_EXIF_IFD)
    for tag in _DEVICE_TAGS:
        if tag in exif or tag in sub:
            found.add("device identifiers")
    if any(k for k in exif if k not in (_ORIENTATION, _GPS_IFD, _EXIF_IFD)) or sub:
        found.add("other EXIF")
    if "xmp" in info or b"http://ns.adobe.com/xap/1.0/" in data[:_CHUNK]:
        found.add("XMP")
    if any(k in info for k in ("comment", "Comment", "Description", "Author", "Title")):
        found.add("comments")
    if "photoshop" in info or b"Photoshop 3.0" in data[:_CHUNK]:
        found.add("IPTC")
    return found


def _exif_orientation_only(orientation: int | None) -> bytes | None:
    if orientation is None or orientation == 1:
        return None
    exif = Image.Exif()
    exif[_ORIENTATION] = orientation
    blob = exif.tobytes()
    return blob if blob.startswith(b"Exif\x00\x00") else b"Exif\x00\x00" + blob


def _strip_jpeg(data: bytes, orientation: int | None, width: int, height: int) -> bytes:
    """Rewrite a JPEG's segments: keep JFIF, ICC, Adobe and the image; drop everything else.

    The entropy-coded data is copied byte for byte, so no quality is lost. Anything after the
    end-of-image marker (multi-picture secondary images, vendor trailers) is dropped too. The
    entropy-coded data must be long enough for the declared size: every 8x8 block of the
    picture costs at least one bit, so a header that promises more pixels than the data can
    hold (a small picture relabelled as a large one) is refused.
    """
    if data[:2] != b"\xff\xd8":
        raise CorruptMedia("JPEG does not start with SOI")
    out = bytearray(b"\xff\xd8")
    exif = _exif_orientation_only(orientation)
    inserted = False
    pos = 2
    n = len(data)
    scan_bytes = 0
    ended = False
    while pos < n:
        if data[pos] != 0xFF:
            raise CorruptMedia("JPEG segment structure is damaged")
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            break
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            ended = True
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            out += bytes([0xFF, marker])
            continue
        if pos + 2 > n:
            raise CorruptMedia("JPEG segment is truncated")
        length = struct.unpack(">H", data[pos : pos + 2])[0]
        segment = data[pos + 2 : pos + length]
        if length < 2 or len(segment) != length - 2:
            raise CorruptMedia("JPEG segment is truncated")
        keep = (
            marker in (0xE0, 0xEE)
            or (marker == 0xE2 and segment.startswith(b"ICC_PROFILE\x00"))
            or not (0xE0 <= marker <= 0xEF or marker == 0xFE)
        )
        if not inserted and marker not in (0xE0,) and exif is not None:
            out += b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif
            inserted = True
        if keep:
            out += bytes([0xFF, marker]) + data[pos : pos + length]
        pos += length
        if marker == 0xDA:  # start of scan: copy entropy data up to the next real marker
            end = _scan_end(data, pos)
            out += data[pos:end]
            scan_bytes += end - pos
            pos = end
    if not ended:
        raise CorruptMedia("JPEG image data is truncated (no end-of-image marker)")
    blocks = ((width + 7) // 8) * ((height + 7) // 8)
    if scan_bytes * 8 < blocks:
        raise CorruptMedia(
            "JPEG image data is too short for the size its header declares "
            "(the header may have been altered)"
        )
    out += b"\xff\xd9"
    return bytes(out)


def _scan_end(data: bytes, pos: int) -> int:
    """Offset of the first marker after entropy-coded data (not stuffing, not RSTn)."""
    n = len(data)
    while True:
        i = data.find(b"\xff", pos)
        if i < 0 or i + 1 >= n:
            raise CorruptMedia("JPEG image data is truncated (no end-of-image marker)")
        nxt = data[i + 1]
        if nxt == 0x00 or 0xD0 <= nxt <= 0xD7 or nxt == 0xFF:
            pos = i + 1 if nxt == 0xFF else i + 2
            continue
        return i


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    pos = 8
    while pos + 8 <= len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        kind = data[pos + 4 : pos + 8]
        chunk = data[pos : pos + 12 + length]
        if len(chunk) != 12 + length:
            raise CorruptMedia("PNG chunk is truncated")
        if zlib.crc32(chunk[4:-4]) & 0xFFFFFFFF != struct.unpack(">I", chunk[-4:])[0]:
            raise CorruptMedia("PNG chunk is damaged (checksum)")
        yield kind, chunk
        pos += 12 + length
        if kind == b"IEND":
            return
    raise CorruptMedia("PNG has no IEND chunk")


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


def _png_raw_size(ihdr: bytes) -> int:
    """The number of bytes the image data must inflate to, from the header (interlacing too)."""
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", ihdr)
    if color not in _PNG_CHANNELS or depth not in _PNG_DEPTHS[color] or interlace > 1:
        raise CorruptMedia("PNG header describes no valid image")
    bits = depth * _PNG_CHANNELS[color]

    def rows(w: int, h: int) -> int:
        return 0 if w == 0 or h == 0 else h * (1 + (w * bits + 7) // 8)

    if not interlace:
        return rows(width, height)
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2))
    total = sum(
        rows((width - x + dx - 1) // dx, (height - y + dy - 1) // dy)
        for x, y, dx, dy in (*passes, (0, 1, 1, 2))
    )
    return total


def _strip_png(data: bytes, orientation: int | None) -> bytes:
    """Drop text, time and EXIF chunks from a PNG; keep every pixel and colour chunk.

    The image data is inflated as a stream (never held decoded) and must produce exactly the
    number of bytes the header promises: a cut or padded image is refused.
    """
    drop = {b"tEXt", b"zTXt", b"iTXt", b"tIME", b"eXIf"}
    exif = _exif_orientation_only(orientation)
    out = bytearray(data[:8])
    inflater = zlib.decompressobj()
    produced, expected = 0, None
    for kind, chunk in _png_chunks(data):
        if kind == b"IHDR":
            expected = _png_raw_size(chunk[8:-4])
        elif kind in (b"acTL", b"fcTL", b"fdAT"):
            raise UnsupportedMediaType(
                "animated images are not accepted: send a moving image as a video"
            )
        elif kind == b"IDAT":
            if expected is None:
                raise CorruptMedia("PNG image data comes before its header")
            pending = chunk[8:-4]
            while pending:
                try:
                    produced += len(inflater.decompress(pending, _CHUNK))
                except zlib.error:
                    raise CorruptMedia("PNG image data is damaged") from None
                if produced > expected:
                    raise CorruptMedia("PNG image data is larger than its header declares")
                pending = inflater.unconsumed_tail
            if exif is not None:
                out += _png_chunk(b"eXIf", exif[6:])
                exif = None
        if kind not in drop:
            out += chunk
    try:
        produced += len(inflater.flush())
    except zlib.error:
        raise CorruptMedia("PNG image data is damaged") from None
    if expected is None or produced != expected or not inflater.eof:
        raise CorruptMedia("PNG image data is cut short or does not match its header")
    return bytes(out)


def _strip_webp(data: bytes, orientation: int | None) -> bytes:
    """Drop the EXIF and XMP chunks of a WebP (RIFF) file and fix the header flags."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise CorruptMedia("WebP header is damaged")
    if struct.unpack("<I", data[4:8])[0] + 8 > len(data):
        raise CorruptMedia("WebP is cut short: its header claims more data than there is")
    chunks: list[tuple[bytes, bytes]] = []
    pos = 12
    while pos + 8 <= len(data):
        kind = data[pos : pos + 4]
        size = struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = data[pos + 8 : pos + 8 + size]
        if len(body) != size:
            raise CorruptMedia("WebP chunk is truncated")
        if kind in (b"ANIM", b"ANMF"):
            raise UnsupportedMediaType(
                "animated images are not accepted: send a moving image as a video"
            )
        chunks.append((kind, body))
        pos += 8 + size + (size & 1)
    if not chunks:
        raise CorruptMedia("WebP holds no image")
    exif = _exif_orientation_only(orientation)
    kept = [(k, b) for k, b in chunks if k not in (b"EXIF", b"XMP ")]
    if exif is not None:
        if kept[0][0] != b"VP8X":
            exif = None  # a simple-format WebP cannot carry EXIF; orientation tag was not present
        else:
            kept.append((b"EXIF", exif[6:]))
    out = bytearray()
    for kind, body in kept:
        if kind == b"VP8X":
            flags = body[0] & ~0x0C  # clear EXIF (0x08) and XMP (0x04)
            if exif is not None:
                flags |= 0x08
            body = bytes([flags]) + body[1:]
        out += kind + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) & 1 else b"")
    return b"RIFF" + struct.pack("<I", 4 + len(out)) + b"WEBP" + bytes(out)


def _resave(
    im: Image.Image, fmt: str, orientation: int | None, icc: bytes | None, **kwargs: object
) -> bytes:
    out = io.BytesIO()
    if fmt == "TIFF":
        # plain Images: none of the source's TIFF tags (make, model, ...) carry over; the
        # pages' total is bounded by max_decode_pixels, checked from their headers
        from PIL import ImageSequence

        frames = [frame.copy() for frame in ImageSequence.Iterator(im)]
        for frame in frames:
            frame.info = {}
        im = frames[0]
        if len(frames) > 1:
            kwargs = {**kwargs, "save_all": True, "append_images": frames[1:]}
    exif = Image.Exif()
    if orientation and orientation != 1:
        exif[_ORIENTATION] = orientation
    params: dict[str, object] = dict(kwargs)
    if len(exif):
        params["exif"] = exif
    if icc:
        params["icc_profile"] = icc
    im.save(out, fmt, **params)
    return out.getvalue()


def _write_new(workdir: Path, data: bytes) -> Path:
    fd, name = tempfile.mkstemp(prefix="intake-", dir=workdir)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(name)


def decode_for_copy(data: bytes, limits: Limits) -> Image.Image:
    """Decode an image read back from a server through the same gate as intake, upright and as
    RGB pixels (for an anonymised copy). Raises BadInput subclasses."""
    from PIL import ImageOps

    sniffed = sniff(data[:8192])
    if ACCEPTED[sniffed] != "image":
        raise UnsupportedMediaType(f"content is {sniffed}, not a still image")
    if sniffed == "image/heic":
        _register_heif()
    with _pillow_limits(limits), _decode_errors(sniffed):
        im = Image.open(io.BytesIO(data))
        _check_header(im, sniffed, limits)
        w, h = im.size
        limit = limits.max_decode_pixels // _DECODE_COST.get(sniffed, 1)
        if w * h > limit:
            raise _too_large(w, h, limit, "FHIR_IMAGES_MAX_DECODE_PIXELS")
        im.load()
        return ImageOps.exif_transpose(im).convert("RGB")


# ------------------------------------------------------------------- video and audio


def _av(f: IO[bytes], size: int, sniffed: str, limits: Limits, workdir: Path) -> IntakeResult:
    """Stream a recording into a new file, hashing as it goes, then check its structure."""
    from ._avcheck import check_recording

    if size > limits.max_av_bytes:
        raise InputTooLarge(
            f"recording is over the limit of {limits.max_av_bytes} bytes (FHIR_IMAGES_MAX_AV_BYTES)"
        )
    sha1 = hashlib.sha1()
    sha256 = hashlib.sha256()
    copied = 0
    fd, name = tempfile.mkstemp(prefix="intake-", dir=workdir)
    out_path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := f.read(_CHUNK):
                copied += len(chunk)
                if copied > limits.max_av_bytes:
                    raise InputTooLarge(
                        f"recording is over the limit of {limits.max_av_bytes} bytes "
                        "(FHIR_IMAGES_MAX_AV_BYTES)"
                    )
                sha1.update(chunk)
                sha256.update(chunk)
                out.write(chunk)
        with out_path.open("rb") as stored:
            av = check_recording(stored, copied, sniffed)
    except BaseException:
        out_path.unlink(missing_ok=True)
        raise
    category = ACCEPTED[sniffed]
    digest = sha256.hexdigest()
    facts = ImageFacts(
        media_type=sniffed,
        category=category,
        size=copied,
        sha1_b64=base64.b64encode(sha1.digest()).decode(),
        sha256_hex=digest,
        original_media_type=sniffed,
        original_size=copied,
        original_sha256_hex=digest,
        width=av.width if category == "video" else None,
        height=av.height if category == "video" else None,
        duration_s=av.duration_s,
        metadata_checked=False,
        notes=("container metadata of recordings is kept as received",),
    )
    log.info("intake %s type=%s bytes=%d", category, sniffed, copied)
    return IntakeResult(facts, out_path)
