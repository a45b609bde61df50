"""Intake: bytes in, facts out.

Sniffs the real media type from the content, checks it against any claimed
type, hashes it, reads dimensions and durations, and strips location and
device metadata from images *losslessly* (JPEG, PNG and WebP are rewritten at
the container level; pixels are not re-encoded). HEIC/HEIF is converted to a
JPEG rendition, because browsers and most viewers cannot show HEIC.

Images are processed in memory (bounded by ``Limits.max_image_bytes``);
video and audio are streamed in fixed-size chunks and never held whole.
No network access happens here.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import struct
import tempfile
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import filetype
from PIL import Image, UnidentifiedImageError

from ._exceptions import (
    ContentTypeMismatch,
    CorruptMedia,
    InputTooLarge,
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


@dataclass(frozen=True)
class Limits:
    """Input limits. Defaults suit phone photos and consultation recordings."""

    max_image_bytes: int = 64 * 1024 * 1024
    max_av_bytes: int = 4 * 1024 * 1024 * 1024
    max_pixels: int = 100_000_000
    max_side: int = 30_000

    @classmethod
    def from_env(cls) -> Limits:
        def get(name: str, default: int) -> int:
            raw = os.environ.get(name)
            if raw is None:
                return default
            try:
                value = int(raw)
            except ValueError as exc:
                raise ValueError(f"{name} must be a whole number of bytes or pixels") from exc
            if value <= 0:
                raise ValueError(f"{name} must be positive")
            return value

        d = cls()
        return cls(
            max_image_bytes=get("FHIR_IMAGES_MAX_IMAGE_BYTES", d.max_image_bytes),
            max_av_bytes=get("FHIR_IMAGES_MAX_AV_BYTES", d.max_av_bytes),
            max_pixels=get("FHIR_IMAGES_MAX_PIXELS", d.max_pixels),
            max_side=d.max_side,
        )


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
    in ``workdir`` (default: the system temporary folder).
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
            return _av(buffer, sniffed, limits, workdir)

    path = Path(source)
    try:
        f = path.open("rb")
    except OSError as exc:
        raise UnsupportedMediaType(f"cannot read the input file: {exc.strerror}") from exc
    with f:
        head = f.read(8192)
        if not head:
            raise UnsupportedMediaType("content is empty")
        sniffed = sniff(head)
        _check_claim(sniffed, claimed_type)
        f.seek(0)
        if ACCEPTED[sniffed] == "image":
            size = os.fstat(f.fileno()).st_size
            if size > limits.max_image_bytes:
                raise InputTooLarge(
                    f"image is {size} bytes; the limit is {limits.max_image_bytes} "
                    "(FHIR_IMAGES_MAX_IMAGE_BYTES)"
                )
            return _image(f.read(), sniffed, limits, workdir)
        return _av(f, sniffed, limits, workdir)


# --------------------------------------------------------------------------- images


def _image(data: bytes, sniffed: str, limits: Limits, workdir: Path) -> IntakeResult:
    if len(data) > limits.max_image_bytes:
        raise InputTooLarge(
            f"image is {len(data)} bytes; the limit is {limits.max_image_bytes} "
            "(FHIR_IMAGES_MAX_IMAGE_BYTES)"
        )
    if sniffed == "image/heic":
        _register_heif()
    im = _open_checked(data, sniffed, limits)
    removed = _sensitive_metadata(im, data)
    orientation = _orientation(im)
    icc = im.info.get("icc_profile")
    notes: list[str] = []
    converted_from = None
    if sniffed == "image/jpeg":
        stored = _strip_jpeg(data, orientation)
        stored_type = sniffed
    elif sniffed == "image/png":
        stored = _strip_png(data, orientation)
        stored_type = sniffed
    elif sniffed == "image/webp":
        stored = _strip_webp(data, orientation)
        stored_type = sniffed
    elif sniffed == "image/tiff":
        stored = _resave(
            im, "TIFF", orientation, icc, compression=im.info.get("compression", "raw")
        )
        stored_type = sniffed
    else:  # HEIC/HEIF: a JPEG rendition; libheif has already applied the stored rotation
        stored = _resave(im.convert("RGB"), "JPEG", None, icc, quality=92)
        stored_type = "image/jpeg"
        converted_from = sniffed
        orientation = 1
        notes.append("converted from HEIC to JPEG for viewing; the HEIC original is not kept")
    _verify_stored(stored, stored_type)
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
        width=im.width,
        height=im.height,
        frames=getattr(im, "n_frames", 1),
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


def _open_checked(data: bytes, sniffed: str, limits: Limits) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w <= 0 or h <= 0:
                raise CorruptMedia(f"{sniffed} content has no pixels")
            if w > limits.max_side or h > limits.max_side or w * h > limits.max_pixels:
                raise InputTooLarge(
                    f"image is {w}x{h} pixels; the limit is {limits.max_pixels} pixels and "
                    f"{limits.max_side} per side (FHIR_IMAGES_MAX_PIXELS)"
                )
            if sniffed == "image/jpeg":
                # decode a reduced-scale version: proves the stream, costs 1/64 of the memory
                im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
                im.load()
                im = Image.open(io.BytesIO(data))
            else:
                im.load()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise InputTooLarge(f"image refused as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise CorruptMedia(f"content looks like {sniffed} but cannot be decoded") from exc
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        raise CorruptMedia(f"content looks like {sniffed} but is damaged: {exc}") from exc
    fmt = (im.format or "").upper()
    expected = {
        "image/jpeg": "JPEG",
        "image/png": "PNG",
        "image/webp": "WEBP",
        "image/tiff": "TIFF",
        "image/heic": "HEIF",
    }[sniffed]
    if fmt != expected:
        raise ContentTypeMismatch(
            f"content starts like {sniffed} but decodes as {fmt or 'unknown'}"
        )
    return im


def _orientation(im: Image.Image) -> int | None:
    value = im.getexif().get(_ORIENTATION)
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else None


def _sensitive_metadata(im: Image.Image, data: bytes) -> set[str]:
    """Names of the identifying metadata present (all of it is removed)."""
    found: set[str] = set()
    exif = im.getexif()
    if exif.get_ifd(_GPS_IFD) or _GPS_IFD in exif:
        found.add("GPS location")
    sub = exif.get_ifd(_EXIF_IFD)
    for tag in _DEVICE_TAGS:
        if tag in exif or tag in sub:
            found.add("device identifiers")
    if any(k for k in exif if k not in (_ORIENTATION, _GPS_IFD, _EXIF_IFD)) or sub:
        found.add("other EXIF")
    info = im.info
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


def _strip_jpeg(data: bytes, orientation: int | None) -> bytes:
    """Rewrite a JPEG's segments: keep JFIF, ICC, Adobe and the image; drop everything else.

    The entropy-coded data is copied byte for byte, so no quality is lost.
    Anything after the end-of-image marker (multi-picture secondary images,
    vendor trailers) is dropped too.
    """
    if data[:2] != b"\xff\xd8":
        raise CorruptMedia("JPEG does not start with SOI")
    out = bytearray(b"\xff\xd8")
    exif = _exif_orientation_only(orientation)
    inserted = False
    pos = 2
    n = len(data)
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
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            out += bytes([0xFF, marker])
            continue
        if pos + 2 > n:
            raise CorruptMedia("JPEG segment is truncated")
        length = struct.unpack(">H", data[pos : pos + 2])[0]
        segment = data[pos + 2 : pos + length]
        if len(segment) != length - 2:
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
            pos = end
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


def _strip_png(data: bytes, orientation: int | None) -> bytes:
    """Drop text, time and EXIF chunks from a PNG; keep every pixel and colour chunk."""
    drop = {b"tEXt", b"zTXt", b"iTXt", b"tIME", b"eXIf"}
    exif = _exif_orientation_only(orientation)
    out = bytearray(data[:8])
    for kind, chunk in _png_chunks(data):
        if kind == b"IDAT" and exif is not None:
            out += _png_chunk(b"eXIf", exif[6:])
            exif = None
        if kind not in drop:
            out += chunk
    return bytes(out)


def _strip_webp(data: bytes, orientation: int | None) -> bytes:
    """Drop the EXIF and XMP chunks of a WebP (RIFF) file and fix the header flags."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise CorruptMedia("WebP header is damaged")
    chunks: list[tuple[bytes, bytes]] = []
    pos = 12
    while pos + 8 <= len(data):
        kind = data[pos : pos + 4]
        size = struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = data[pos + 8 : pos + 8 + size]
        if len(body) != size:
            raise CorruptMedia("WebP chunk is truncated")
        chunks.append((kind, body))
        pos += 8 + size + (size & 1)
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
        # plain Images: none of the source's TIFF tags (make, model, ...) carry over
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


def _verify_stored(stored: bytes, media_type: str) -> None:
    try:
        im = Image.open(io.BytesIO(stored))
        if media_type == "image/jpeg":
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
        im.load()
    except Exception as exc:  # the stripped result must decode, or nothing is stored
        raise CorruptMedia(f"image could not be rewritten without metadata: {exc}") from exc


def _write_new(workdir: Path, data: bytes) -> Path:
    fd, name = tempfile.mkstemp(prefix="intake-", dir=workdir)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(name)


# ------------------------------------------------------------------- video and audio


def _av(f: IO[bytes], sniffed: str, limits: Limits, workdir: Path) -> IntakeResult:
    """Stream a recording into a new file, hashing as it goes."""
    sha1 = hashlib.sha1()
    sha256 = hashlib.sha256()
    size = 0
    fd, name = tempfile.mkstemp(prefix="intake-", dir=workdir)
    out_path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := f.read(_CHUNK):
                size += len(chunk)
                if size > limits.max_av_bytes:
                    raise InputTooLarge(
                        f"recording is over the limit of {limits.max_av_bytes} bytes "
                        "(FHIR_IMAGES_MAX_AV_BYTES)"
                    )
                sha1.update(chunk)
                sha256.update(chunk)
                out.write(chunk)
        width, height, duration = _av_metadata(out_path, sniffed)
    except BaseException:
        out_path.unlink(missing_ok=True)
        raise
    category = ACCEPTED[sniffed]
    digest = sha256.hexdigest()
    facts = ImageFacts(
        media_type=sniffed,
        category=category,
        size=size,
        sha1_b64=base64.b64encode(sha1.digest()).decode(),
        sha256_hex=digest,
        original_media_type=sniffed,
        original_size=size,
        original_sha256_hex=digest,
        width=width,
        height=height,
        duration_s=duration,
        metadata_checked=False,
        notes=("container metadata of recordings is kept as received",),
    )
    log.info("intake %s type=%s bytes=%d", category, sniffed, size)
    return IntakeResult(facts, out_path)


def _av_metadata(path: Path, sniffed: str) -> tuple[int | None, int | None, float | None]:
    from hachoir.core import config as hachoir_config
    from hachoir.metadata import extractMetadata
    from hachoir.parser import createParser

    hachoir_config.quiet = True
    try:
        parser = createParser(str(path))
        if parser is None:
            raise CorruptMedia(f"content looks like {sniffed} but its container cannot be read")
        with parser:
            md = extractMetadata(parser)
    except CorruptMedia:
        raise
    except Exception as exc:
        raise CorruptMedia(f"content looks like {sniffed} but its container is damaged") from exc
    if md is None:
        return None, None, None

    def get(key: str) -> object:
        return md.get(key) if md.has(key) else None

    width, height, duration = get("width"), get("height"), get("duration")
    seconds = duration.total_seconds() if duration is not None else None  # type: ignore[attr-defined]
    return (
        int(width) if isinstance(width, int) else None,
        int(height) if isinstance(height, int) else None,
        float(seconds) if seconds is not None else None,
    )


def decode_for_copy(data: bytes, limits: Limits) -> Image.Image:
    """Decode an image read back from a server, through the same checks as intake, upright and
    as RGB pixels (for an anonymised copy). Raises BadInput subclasses."""
    from PIL import ImageOps

    sniffed = sniff(data[:8192])
    if ACCEPTED[sniffed] != "image":
        raise UnsupportedMediaType(f"content is {sniffed}, not a still image")
    if sniffed == "image/heic":
        _register_heif()
    im = _open_checked(data, sniffed, limits)
    return ImageOps.exif_transpose(im).convert("RGB")
