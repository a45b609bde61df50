"""Structural checks of recordings: the container must hold together against the file itself.

Every check reads headers with ``seek``/``read`` of a few bytes at a time, so time and memory
are bounded whatever the file claims; nothing is decoded.

* MP4, QuickTime and M4A (ISO base media): the box tree is walked, every box's size checked
  against its parent and the file (32-bit, 64-bit and "to the end" sizes), a movie header
  (``moov/mvhd``) with a sane duration and media data (``mdat``) required, track dimensions read
  from ``tkhd``.
* WAV: the RIFF chunks are walked; ``fmt`` must be sane (channels, rate, block alignment) and
  the ``data`` chunk must be present in full.
* MP3: MPEG audio frames are followed from the first one after any ID3v2 tag to the end of the
  file (an ID3v1 or APE tag may close it); the frames must cover the file.

The well-kept library *mutagen* then parses the same file as a second, independent reader
(codec headers, tags); a file it cannot read is refused too. These structural checks are our
own because no library compares a container's claims with the bytes actually present.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import IO

from ._exceptions import CorruptMedia, InputTooLarge

#: Containers whose children are boxes (ISO/IEC 14496-12 and QuickTime)
_CONTAINERS = {
    b"moov",
    b"trak",
    b"mdia",
    b"minf",
    b"stbl",
    b"edts",
    b"dinf",
    b"udta",
    b"mvex",
    b"moof",
    b"traf",
    b"mfra",
    b"tref",
    b"ilst",
}
MAX_BOXES = 200_000
MAX_DEPTH = 16
MAX_MOOV = 256 << 20
MAX_DURATION_S = 24 * 3600
MAX_DIMENSION = 16_384


@dataclass(frozen=True)
class AvFacts:
    width: int | None
    height: int | None
    duration_s: float | None


def _read_exact(f: IO[bytes], n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise CorruptMedia("the recording is cut short: a header runs past the end of the file")
    return data


# ------------------------------------------------------------------------ ISO base media


def check_isobmff(f: IO[bytes], size: int, what: str) -> AvFacts:
    """Walk the box tree of an MP4/QuickTime/M4A file of ``size`` bytes."""
    state = {"boxes": 0, "mdat": 0, "moov": 0}
    facts: dict[str, float | int | None] = {"width": None, "height": None, "duration": None}
    _walk(f, 0, size, 0, state, facts, what)
    if not state["moov"]:
        raise CorruptMedia(f"{what}: no movie header (moov box): not a playable recording")
    if not state["mdat"] and not state.get("moof"):
        raise CorruptMedia(f"{what}: no media data (mdat box)")
    duration = facts["duration"]
    if duration is None:
        raise CorruptMedia(f"{what}: the movie header (mvhd) is missing")
    w, h = facts["width"], facts["height"]
    return AvFacts(
        int(w) if w else None, int(h) if h else None, float(duration) if duration else None
    )


def _walk(
    f: IO[bytes],
    start: int,
    end: int,
    depth: int,
    state: dict[str, int],
    facts: dict[str, float | int | None],
    what: str,
) -> None:
    if depth > MAX_DEPTH:
        raise CorruptMedia(f"{what}: boxes nested deeper than {MAX_DEPTH} levels")
    pos = start
    while pos < end:
        if end - pos < 8:
            f.seek(pos)
            if depth > 0 and not any(_read_exact(f, end - pos)):
                break  # QuickTime ends some containers with a zero terminator
            raise CorruptMedia(f"{what}: a box header runs past the end of its container")
        state["boxes"] += 1
        if state["boxes"] > MAX_BOXES:
            raise CorruptMedia(f"{what}: more than {MAX_BOXES} boxes")
        f.seek(pos)
        box_size, kind = struct.unpack(">I4s", _read_exact(f, 8))
        header = 8
        if box_size == 1:
            box_size = struct.unpack(">Q", _read_exact(f, 8))[0]
            header = 16
        elif box_size == 0:
            if depth != 0:
                raise CorruptMedia(f"{what}: a nested box claims to run to the end of the file")
            box_size = end - pos
        if box_size < header or pos + box_size > end:
            raise CorruptMedia(
                f"{what}: a box ({kind.decode('latin-1')!r}) claims a size that does not fit "
                "the file"
            )
        body, body_end = pos + header, pos + box_size
        if kind == b"mdat":
            state["mdat"] += 1
        elif kind == b"moof":
            state["moof"] = state.get("moof", 0) + 1
        elif kind == b"moov":
            state["moov"] += 1
            if box_size > MAX_MOOV:
                raise InputTooLarge(f"{what}: the movie header box is over {MAX_MOOV} bytes")
        if kind == b"mvhd":
            facts["duration"] = _mvhd_duration(f, body, body_end, what)
        elif kind == b"tkhd":
            w, h = _tkhd_size(f, body, body_end, what)
            if w and h and facts["width"] is None:
                facts["width"], facts["height"] = w, h
        if kind in _CONTAINERS:
            _walk(f, body, body_end, depth + 1, state, facts, what)
        elif kind == b"meta" and body_end - body >= 4:
            f.seek(body)
            full = _read_exact(f, 4) == b"\x00\x00\x00\x00"  # MP4: a full box; QuickTime: not
            _walk(f, body + (4 if full else 0), body_end, depth + 1, state, facts, what)
        pos = body_end


def _mvhd_duration(f: IO[bytes], body: int, end: int, what: str) -> float:
    f.seek(body)
    version = _read_exact(f, 4)[0]
    need = 4 + (28 if version == 1 else 16)
    if end - body < need:
        raise CorruptMedia(f"{what}: the movie header (mvhd) is cut short")
    if version == 1:
        _, _, timescale, duration = struct.unpack(">QQIQ", _read_exact(f, 28))
    else:
        _, _, timescale, duration = struct.unpack(">IIII", _read_exact(f, 16))
    if timescale == 0:
        raise CorruptMedia(f"{what}: the movie header has a time scale of 0")
    seconds = float(duration) / float(timescale)
    if duration in (0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF):
        seconds = 0.0  # "unknown" (fragmented files); the fragments carry the time
    if seconds > MAX_DURATION_S:
        raise CorruptMedia(f"{what}: claims to last more than {MAX_DURATION_S // 3600} hours")
    return seconds


def _tkhd_size(f: IO[bytes], body: int, end: int, what: str) -> tuple[int, int]:
    f.seek(body)
    version = _read_exact(f, 4)[0]
    offset = 4 + (32 if version == 1 else 20) + 52  # times, ids, duration; layers ... matrix
    if end - body < offset + 8:
        raise CorruptMedia(f"{what}: a track header (tkhd) is cut short")
    f.seek(body + offset)
    w, h = struct.unpack(">II", _read_exact(f, 8))
    w, h = w >> 16, h >> 16
    if w > MAX_DIMENSION or h > MAX_DIMENSION:
        raise CorruptMedia(f"{what}: a track claims {w}x{h} pixels, over {MAX_DIMENSION} a side")
    return w, h


# ----------------------------------------------------------------------------------- WAV


def check_wav(f: IO[bytes], size: int) -> AvFacts:
    f.seek(0)
    riff, riff_size, wave = struct.unpack("<4sI4s", _read_exact(f, 12))
    if riff != b"RIFF" or wave != b"WAVE":
        raise CorruptMedia("WAV: the RIFF/WAVE header is damaged")
    if riff_size + 8 > size:
        raise CorruptMedia("WAV: the header claims more data than the file holds")
    pos, byte_rate, data_size, block = 12, 0, None, 0
    chunks = 0
    while pos + 8 <= size:
        chunks += 1
        if chunks > 10_000:
            raise CorruptMedia("WAV: too many chunks")
        f.seek(pos)
        kind, length = struct.unpack("<4sI", _read_exact(f, 8))
        if pos + 8 + length > size:
            raise CorruptMedia(
                f"WAV: the {kind.decode('latin-1')!r} chunk claims more data than the file holds"
            )
        if kind == b"fmt ":
            if length < 16:
                raise CorruptMedia("WAV: the format chunk is too short")
            fmt, channels, rate, byte_rate, block, bits = struct.unpack(
                "<HHIIHH", _read_exact(f, 16)
            )
            if not (1 <= channels <= 32 and 1_000 <= rate <= 768_000 and 1 <= bits <= 64):
                raise CorruptMedia("WAV: the format chunk describes no sane audio")
            inconsistent = block != channels * ((bits + 7) // 8) or byte_rate != rate * block
            if inconsistent and fmt == 1:  # plain PCM must be consistent
                raise CorruptMedia("WAV: the format chunk is inconsistent")
        elif kind == b"data":
            data_size = length
        pos += 8 + length + (length & 1)
    if byte_rate == 0:
        raise CorruptMedia("WAV: no format chunk")
    if data_size is None:
        raise CorruptMedia("WAV: no audio data chunk")
    if data_size == 0:
        raise CorruptMedia("WAV: the audio data chunk is empty")
    seconds = data_size / byte_rate
    if seconds > MAX_DURATION_S:
        raise CorruptMedia(f"WAV: claims to last more than {MAX_DURATION_S // 3600} hours")
    return AvFacts(None, None, seconds)


# ----------------------------------------------------------------------------------- MP3

_BITRATES = {
    (1, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (1, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (1, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (2, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (2, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (2, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_RATES = {1: (44100, 48000, 32000), 2: (22050, 24000, 16000), 25: (11025, 12000, 8000)}
MAX_MP3_FRAMES = 2_000_000


def _mp3_frame(header: bytes) -> tuple[int, int, int] | None:
    """(frame length, samples, sample rate) of an MPEG audio frame header, or None."""
    b1, b2, b3 = header[1], header[2], header[3]
    if header[0] != 0xFF or (b1 & 0xE0) != 0xE0:
        return None
    version_bits, layer_bits = (b1 >> 3) & 3, (b1 >> 1) & 3
    if version_bits == 1 or layer_bits == 0:
        return None
    version = {3: 1, 2: 2, 0: 25}[version_bits]
    layer = 4 - layer_bits
    bitrate_index, rate_index, padding = b2 >> 4, (b2 >> 2) & 3, (b2 >> 1) & 1
    if bitrate_index in (0, 15) or rate_index == 3 or (b3 & 3) == 2:
        return None
    bitrate = _BITRATES[(1 if version == 1 else 2, layer)][bitrate_index] * 1000
    rate = _RATES[version][rate_index]
    if layer == 1:
        return (12 * bitrate // rate + padding) * 4, 384, rate
    samples = 1152 if (layer == 2 or version == 1) else 576
    return samples // 8 * bitrate // rate + padding, samples, rate


def check_mp3(f: IO[bytes], size: int) -> AvFacts:
    f.seek(0)
    pos = 0
    head = f.read(10)
    if head[:3] == b"ID3" and len(head) == 10:
        tag = head[6:10]
        if any(b & 0x80 for b in tag):
            raise CorruptMedia("MP3: the ID3 tag's size is not valid")
        pos = 10 + ((tag[0] << 21) | (tag[1] << 14) | (tag[2] << 7) | tag[3])
        pos += 10 if head[5] & 0x10 else 0  # footer
        if pos >= size:
            raise CorruptMedia("MP3: the ID3 tag claims more than the file holds")
    frames, samples, rate = 0, 0, 0
    while pos + 4 <= size:
        f.seek(pos)
        header = f.read(4)
        frame = _mp3_frame(header)
        if frame is None:
            f.seek(pos)
            tail = f.read(8)
            if tail[:3] == b"TAG" and size - pos == 128:
                break  # ID3v1 closes the file
            if tail[:8] == b"APETAGEX" or tail[:3] == b"TAG" or tail[:6] == b"LYRICS":
                break  # trailing tags
            raise CorruptMedia("MP3: the audio frames do not run to the end of the file")
        length, n, r = frame
        if length < 4:
            raise CorruptMedia("MP3: an audio frame header is damaged")
        if pos + length > size and frames < 1:
            raise CorruptMedia("MP3: the first audio frame is cut short")
        frames += 1
        if frames > MAX_MP3_FRAMES:
            raise CorruptMedia("MP3: too many audio frames")
        samples += n
        rate = r
        pos += length
    if frames < 2:
        raise CorruptMedia("MP3: fewer than two audio frames")
    seconds = samples / rate
    if seconds > MAX_DURATION_S:
        raise CorruptMedia(f"MP3: claims to last more than {MAX_DURATION_S // 3600} hours")
    return AvFacts(None, None, seconds)


# --------------------------------------------------------------------------- the library


def check_with_mutagen(f: IO[bytes], media_type: str) -> None:
    """A second, independent parse by mutagen; refuse what it cannot read."""
    import mutagen
    from mutagen.mp3 import MP3
    from mutagen.mp4 import MP4
    from mutagen.wave import WAVE

    reader = {
        "video/mp4": MP4,
        "video/quicktime": MP4,
        "audio/mp4": MP4,
        "audio/mpeg": MP3,
        "audio/wav": WAVE,
    }[media_type]
    f.seek(0)
    try:
        parsed = reader(f)  # type: ignore[no-untyped-call]
    except (mutagen.MutagenError, struct.error, ValueError, EOFError, OverflowError) as exc:
        raise CorruptMedia(
            f"{media_type}: the container cannot be read ({type(exc).__name__})"
        ) from None
    length = getattr(parsed.info, "length", None)
    if length is not None and (length < 0 or length > MAX_DURATION_S):
        raise CorruptMedia(f"{media_type}: the recording's length is not sane")


def check_recording(f: IO[bytes], size: int, media_type: str) -> AvFacts:
    """Structural check of a recording; raises CorruptMedia or InputTooLarge, else its facts."""
    if media_type in ("video/mp4", "video/quicktime", "audio/mp4"):
        facts = check_isobmff(f, size, media_type)
    elif media_type == "audio/wav":
        facts = check_wav(f, size)
    elif media_type == "audio/mpeg":
        facts = check_mp3(f, size)
    else:  # pragma: no cover - intake only passes the types above
        raise CorruptMedia(f"{media_type}: no structural check")
    check_with_mutagen(f, media_type)
    return facts
