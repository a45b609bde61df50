"""Synthetic media for examples, tests and benchmarks: never real patients.

Each function returns bytes (or writes a file for large media) that are
structurally real: JPEGs with EXIF GPS and device tags, PNG, WebP, TIFF,
HEIC, minimal MP4/QuickTime and M4A containers, WAV, MP3 frames and a PDF
(for the "renamed file" case). Interoperability test suites can use them to
exercise a deployment without touching patient data.
"""

from __future__ import annotations

import io
import struct
import wave
from pathlib import Path

from PIL import Image, ImageDraw

# EXIF tag numbers used below (EXIF 2.32)
TAG_ORIENTATION = 0x0112
TAG_MAKE = 0x010F
TAG_MODEL = 0x0110
TAG_GPS_IFD = 0x8825
TAG_EXIF_IFD = 0x8769
TAG_BODY_SERIAL = 0xA431


def picture(width: int = 640, height: int = 480, *, seed: int = 0) -> Image.Image:
    """An RGB test card: an asymmetric pattern, so rotation and flips are detectable."""
    im = Image.new("RGB", (width, height), (230 - seed % 50, 200, 180))
    draw = ImageDraw.Draw(im)
    # a red block in the top-left corner marks "up" and "left"
    draw.rectangle((0, 0, width // 4, height // 4), fill=(220, 30, 30))
    # a soft "lesion" shape off centre
    cx, cy = width // 2 + seed % 37, height // 2
    draw.ellipse(
        (cx - width // 8, cy - height // 10, cx + width // 8, cy + height // 10), fill=(190, 90, 90)
    )
    return im


def _exif(*, gps: bool, orientation: int | None, device: bool) -> Image.Exif:
    exif = Image.Exif()
    if orientation is not None:
        exif[TAG_ORIENTATION] = orientation
    if device:
        exif[TAG_MAKE] = "ExamplePhone"
        exif[TAG_MODEL] = "Model X1"
        exif.get_ifd(TAG_EXIF_IFD)[TAG_BODY_SERIAL] = "SN-000-TEST"
    if gps:
        gps_ifd = exif.get_ifd(TAG_GPS_IFD)
        gps_ifd[1] = "N"
        gps_ifd[2] = (51.0, 30.0, 12.0)
        gps_ifd[3] = "W"
        gps_ifd[4] = (0.0, 7.0, 40.0)
    return exif


def jpeg(
    width: int = 640,
    height: int = 480,
    *,
    gps: bool = False,
    orientation: int | None = None,
    device: bool = False,
    icc: bytes | None = None,
    quality: int = 90,
    seed: int = 0,
) -> bytes:
    """A JPEG, optionally with GPS, device identifiers, an orientation tag and an ICC profile."""
    out = io.BytesIO()
    kwargs: dict[str, object] = {"quality": quality}
    exif = _exif(gps=gps, orientation=orientation, device=device)
    if len(exif) or gps or device:
        kwargs["exif"] = exif
    if icc is not None:
        kwargs["icc_profile"] = icc
    picture(width, height, seed=seed).save(out, "JPEG", **kwargs)
    return out.getvalue()


def srgb_icc() -> bytes:
    """A real sRGB ICC profile (from Pillow's ImageCms)."""
    from PIL import ImageCms

    profile = ImageCms.createProfile("sRGB")
    return ImageCms.ImageCmsProfile(profile).tobytes()


def png(
    width: int = 320,
    height: int = 240,
    *,
    gps: bool = False,
    orientation: int | None = None,
    text: bool = False,
) -> bytes:
    from PIL import PngImagePlugin

    out = io.BytesIO()
    kwargs: dict[str, object] = {}
    exif = _exif(gps=gps, orientation=orientation, device=False)
    if len(exif) or gps:
        kwargs["exif"] = exif
    if text:
        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", "taken at home")
        kwargs["pnginfo"] = info
    picture(width, height).save(out, "PNG", **kwargs)
    return out.getvalue()


def webp(
    width: int = 320, height: int = 240, *, gps: bool = False, orientation: int | None = None
) -> bytes:
    out = io.BytesIO()
    kwargs: dict[str, object] = {"quality": 90}
    exif = _exif(gps=gps, orientation=orientation, device=False)
    if len(exif) or gps:
        kwargs["exif"] = exif
    picture(width, height).save(out, "WEBP", **kwargs)
    return out.getvalue()


def tiff(width: int = 320, height: int = 240, *, gps: bool = False) -> bytes:
    out = io.BytesIO()
    kwargs: dict[str, object] = {"compression": "tiff_lzw"}
    if gps:
        kwargs["exif"] = _exif(gps=True, orientation=None, device=True)
    picture(width, height).save(out, "TIFF", **kwargs)
    return out.getvalue()


def heic(width: int = 320, height: int = 240, *, gps: bool = False) -> bytes:
    import pillow_heif

    pillow_heif.register_heif_opener()
    out = io.BytesIO()
    kwargs: dict[str, object] = {"quality": 80}
    if gps:
        kwargs["exif"] = _exif(gps=True, orientation=None, device=True).tobytes()
    picture(width, height).save(out, "HEIF", **kwargs)
    return out.getvalue()


def wav(seconds: float = 1.0, rate: int = 8000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * int(seconds * rate))
    return out.getvalue()


def mp3(frames: int = 40) -> bytes:
    """MPEG-1 Layer III frames of silence (128 kbit/s, 44.1 kHz), about 26 ms each."""
    header = bytes([0xFF, 0xFB, 0x90, 0x64])
    frame = header + b"\x00" * (417 - len(header))
    return frame * frames


def pdf() -> bytes:
    return (
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
        b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
    )


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _full_box(kind: bytes, version: int, flags: int, payload: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags) + payload)


_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def _moov(*, duration_s: float, width: int, height: int, video: bool) -> bytes:
    timescale = 1000
    duration = int(duration_s * timescale)
    mvhd = _full_box(
        b"mvhd",
        0,
        0,
        struct.pack(">IIIIIH10x", 0, 0, timescale, duration, 0x10000, 0x0100)
        + _MATRIX
        + b"\x00" * 24
        + struct.pack(">I", 2),
    )
    tkhd = _full_box(
        b"tkhd",
        0,
        3,
        struct.pack(">III4xI8xHHH2x", 0, 0, 1, duration, 0, 0, 0 if video else 0x0100)
        + _MATRIX
        + struct.pack(">II", width << 16 if video else 0, height << 16 if video else 0),
    )
    mdhd = _full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, timescale, duration, 0x55C4, 0))
    handler = b"vide" if video else b"soun"
    hdlr = _full_box(b"hdlr", 0, 0, struct.pack(">I", 0) + handler + b"\x00" * 12 + b"media\x00")
    mdia = _box(b"mdia", mdhd + hdlr)
    trak = _box(b"trak", tkhd + mdia)
    return _box(b"moov", mvhd + trak)


def write_mp4(
    path: Path,
    payload_bytes: int,
    *,
    duration_s: float = 10.0,
    width: int = 1280,
    height: int = 720,
    brand: bytes = b"mp42",
) -> Path:
    """Write an MP4 (or QuickTime with ``brand=b'qt  '``) of about ``payload_bytes``, streamed.

    The media data is zeros: the container is real (ftyp, moov with mvhd/tkhd/mdhd/hdlr, mdat),
    the frames are not decodable, which is all intake needs.
    """
    video = brand != b"M4A "
    ftyp = _box(
        b"ftyp", brand + struct.pack(">I", 0) + brand + (b"isom" if brand == b"mp42" else b"")
    )
    moov = _moov(duration_s=duration_s, width=width, height=height, video=video)
    chunk = b"\x00" * (1 << 20)
    with path.open("wb") as f:
        f.write(ftyp)
        f.write(moov)
        f.write(struct.pack(">I", 8 + payload_bytes) + b"mdat")
        left = payload_bytes
        while left > 0:
            n = min(left, len(chunk))
            f.write(chunk[:n])
            left -= n
    return path


def mp4(payload_bytes: int = 4096, **kwargs: object) -> bytes:
    """A small MP4 as bytes (see :func:`write_mp4`)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = write_mp4(Path(d) / "v.mp4", payload_bytes, **kwargs)  # type: ignore[arg-type]
        return p.read_bytes()
