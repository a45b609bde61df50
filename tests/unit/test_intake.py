from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from fhir_images import (
    ContentTypeMismatch,
    CorruptMedia,
    InputTooLarge,
    InvalidSetting,
    Limits,
    UnsupportedMediaType,
    synthetic,
)
from fhir_images._intake import intake

GPS_IFD, ORIENTATION = 0x8825, 0x0112


def _open(path: Path) -> Image.Image:
    return Image.open(io.BytesIO(path.read_bytes()))


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: synthetic.jpeg(), "image/jpeg"),
        (lambda: synthetic.png(), "image/png"),
        (lambda: synthetic.webp(), "image/webp"),
        (lambda: synthetic.tiff(), "image/tiff"),
        (lambda: synthetic.wav(), "audio/wav"),
        (lambda: synthetic.mp3(), "audio/mpeg"),
        (lambda: synthetic.mp4(), "video/mp4"),
        (lambda: synthetic.mp4(brand=b"qt  "), "video/quicktime"),
        (lambda: synthetic.mp4(brand=b"M4A "), "audio/mp4"),
    ],
)
def test_sniffs_the_real_type(make, expected, workdir):
    facts = intake(make(), workdir=workdir).facts
    assert facts.media_type == expected


def test_hashes_describe_the_stored_bytes(workdir):
    import base64
    import hashlib

    result = intake(synthetic.jpeg(gps=True), workdir=workdir)
    stored = result.path.read_bytes()
    assert result.facts.size == len(stored)
    assert result.facts.sha1_b64 == base64.b64encode(hashlib.sha1(stored).digest()).decode()
    assert result.facts.sha256_hex == hashlib.sha256(stored).hexdigest()
    assert result.facts.original_sha256_hex != result.facts.sha256_hex  # GPS was removed


@pytest.mark.parametrize(
    "make",
    [
        lambda: synthetic.jpeg(gps=True, device=True, orientation=6, icc=synthetic.srgb_icc()),
        lambda: synthetic.png(gps=True, orientation=3, text=True),
        lambda: synthetic.webp(gps=True, orientation=6),
    ],
)
def test_gps_removed_orientation_and_pixels_kept(make, workdir):
    original = make()
    before = Image.open(io.BytesIO(original))
    assert before.getexif().get_ifd(GPS_IFD), "fixture must carry GPS"
    result = intake(original, workdir=workdir)
    after = _open(result.path)
    exif = after.getexif()
    assert not exif.get_ifd(GPS_IFD)
    assert set(exif) <= {ORIENTATION}
    assert exif.get(ORIENTATION) == before.getexif().get(ORIENTATION)
    assert after.info.get("icc_profile") == before.info.get("icc_profile")
    assert ImageChops.difference(before.convert("RGB"), after.convert("RGB")).getbbox() is None
    assert "GPS location" in result.facts.metadata_removed


def test_jpeg_device_serial_and_trailing_data_removed(workdir):
    data = synthetic.jpeg(device=True) + b"TRAILER-WITH-SERIAL-SN-000-TEST"
    result = intake(data, workdir=workdir)
    stored = result.path.read_bytes()
    assert b"SN-000-TEST" not in stored
    assert b"ExamplePhone" not in stored
    assert stored.endswith(b"\xff\xd9")
    assert "device identifiers" in result.facts.metadata_removed


def test_png_text_chunks_removed(workdir):
    result = intake(synthetic.png(text=True), workdir=workdir)
    assert b"taken at home" not in result.path.read_bytes()


def test_tiff_device_tags_removed(workdir):
    result = intake(synthetic.tiff(gps=True), workdir=workdir)
    tags = _open(result.path).getexif()
    assert 0x010F not in tags and 0x0110 not in tags


def test_heic_becomes_a_viewable_jpeg_without_gps(workdir):
    result = intake(synthetic.heic(gps=True), workdir=workdir)
    assert result.facts.media_type == "image/jpeg"
    assert result.facts.converted_from == "image/heic"
    assert result.facts.original_media_type == "image/heic"
    im = _open(result.path)
    assert im.format == "JPEG" and im.size == (320, 240)
    assert not im.getexif().get_ifd(GPS_IFD)


def test_pdf_renamed_jpg_is_refused(tmp_path, workdir):
    path = tmp_path / "photo.jpg"
    path.write_bytes(synthetic.pdf())
    with pytest.raises(UnsupportedMediaType, match="application/pdf"):
        intake(path, claimed_type="image/jpeg", workdir=workdir)


def test_content_contradicting_the_claim_is_refused(workdir):
    with pytest.raises(ContentTypeMismatch, match="image/png"):
        intake(synthetic.png(), claimed_type="image/jpeg", workdir=workdir)


def test_equivalent_claims_are_accepted(workdir):
    assert intake(synthetic.heic(), claimed_type="image/heif", workdir=workdir)
    assert intake(synthetic.mp4(brand=b"qt  "), claimed_type="video/mp4", workdir=workdir)


@pytest.mark.parametrize("data", [b"", b"hello world, not an image", b"GIF89a" + b"\x00" * 64])
def test_unsupported_content_is_refused(data, workdir):
    with pytest.raises(UnsupportedMediaType):
        intake(data, workdir=workdir)


def test_truncated_jpeg_is_refused(workdir):
    data = synthetic.jpeg()
    with pytest.raises(CorruptMedia):
        intake(data[: len(data) // 2], workdir=workdir)


def test_byte_limit(workdir):
    with pytest.raises(InputTooLarge, match="FHIR_IMAGES_MAX_IMAGE_BYTES"):
        intake(synthetic.jpeg(), limits=Limits(max_image_bytes=1000), workdir=workdir)


def test_pixel_limit_checked_before_decoding(workdir):
    with pytest.raises(InputTooLarge, match="pixels"):
        intake(synthetic.png(200, 200), limits=Limits(max_pixels=10_000), workdir=workdir)


def test_decompression_bomb_refused(workdir):
    # a 20000x20000 PNG of one colour compresses to a few hundred kilobytes
    im = Image.new("1", (20_000, 20_000))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    with pytest.raises(InputTooLarge):
        intake(buf.getvalue(), workdir=workdir)


def test_av_limit_and_nothing_left_behind(tmp_path, workdir):
    path = synthetic.write_mp4(tmp_path / "v.mp4", 3 << 20)
    with pytest.raises(InputTooLarge, match="FHIR_IMAGES_MAX_AV_BYTES"):
        intake(path, limits=Limits(max_av_bytes=1 << 20), workdir=workdir)
    assert list(workdir.iterdir()) == []


def test_video_dimensions_and_duration(tmp_path, workdir):
    path = synthetic.write_mp4(tmp_path / "v.mp4", 10_000, duration_s=95.0, width=1280, height=720)
    facts = intake(path, workdir=workdir).facts
    assert (facts.width, facts.height, facts.duration_s) == (1280, 720, 95.0)
    assert facts.category == "video"


def test_audio_duration(workdir):
    facts = intake(synthetic.wav(seconds=2.0), workdir=workdir).facts
    assert facts.category == "audio" and facts.duration_s == pytest.approx(2.0)


def test_large_video_is_streamed_not_loaded(tmp_path, workdir):
    size = 64 << 20
    path = synthetic.write_mp4(tmp_path / "big.mp4", size)
    tracemalloc.start()
    try:
        result = intake(path, workdir=workdir)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.facts.size > size
    assert peak < 8 << 20, f"peak Python allocation {peak} bytes for a {size}-byte video"


def test_limits_from_env(monkeypatch):
    monkeypatch.setenv("FHIR_IMAGES_MAX_IMAGE_BYTES", "1234")
    assert Limits.from_env().max_image_bytes == 1234
    monkeypatch.setenv("FHIR_IMAGES_MAX_IMAGE_BYTES", "lots")
    with pytest.raises(InvalidSetting, match="FHIR_IMAGES_MAX_IMAGE_BYTES"):
        Limits.from_env()
