"""Native Instruments Stems files (`-f stems`): one `<track>.stem.mp4` holding the whole song.

The layout Traktor and the NI Stems players read, as NI's stem specification and
the public `stempeg` writer give it:

* an MP4 file with five stereo audio tracks: the mix first (the only *enabled*
  track, so every ordinary player plays the song), then drums, bass, other and
  vocals, in that order; AAC (FFmpeg's native `aac` encoder, through PyAV) or
  ALAC, all at one rate and of one length;
* a `stem` box in `moov/udta` whose payload is the JSON manifest: format
  version, the (disabled) mastering compressor and limiter, and a name and
  colour for each of the four stems;
* iTunes-style tags and cover art (tags.py, MP4 atoms).

PyAV muxes the five tracks; the small MP4 box editor below adds the `stem` box,
moving chunk offsets (`stco`/`co64`) when `moov` comes before `mdat`. Any stem
set maps onto the four slots: drums, bass and vocals by name, every other stem
(other, guitar, piano, an instrumental, ...) summed into "other"; a slot with
nothing in it is silent, with a warning.
"""

from __future__ import annotations

import json
import os
import struct
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np

from . import atomic
from .errors import AudioEncodeError

__all__ = ["FORMAT", "ALIASES", "EXTENSION", "OUTPUT_KEY", "SLOTS", "slot_map", "compose", "manifest",
           "StemsWriter", "add_stem_box", "read_stem_box"]

FORMAT = "stems"
ALIASES = ("stem.mp4",)
EXTENSION = "stem.mp4"
OUTPUT_KEY = "stems"  # the one entry of a track's outputs
SLOTS = ("drums", "bass", "other", "vocals")
CODECS = ("aac", "alac")
DEFAULT_BITRATE = 256_000
# Stream 0 is the mix; streams 1..4 are SLOTS. Channels of the composed blocks: 5 streams x stereo.
STREAMS = 1 + len(SLOTS)
CHANNELS = 2 * STREAMS

_DISPLAY = {"drums": ("Drums", "#FF0000"), "bass": ("Bass", "#FFA500"), "other": ("Other", "#00A2FF"),
            "vocals": ("Vocals", "#00C853")}
_AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)


# --------------------------------------------------------------------------- stems -> slots


def slot_map(stems: Sequence[str]) -> Dict[str, str]:
    """{stem: slot} for the stems a track writes; warns about slots left silent."""
    mapping = {s: (s if s in ("drums", "bass", "vocals") else "other") for s in stems}
    silent = [slot for slot in SLOTS if slot not in mapping.values()]
    if silent:
        merged = [s for s, slot in mapping.items() if slot == "other" and s != "other"]
        note = f"; {', '.join(merged)} went into 'other'" if merged else ""
        warnings.warn(f"NI Stems file: no {', '.join(silent)} stem from this model, so "
                      f"{'that slot is' if len(silent) == 1 else 'those slots are'} silent{note}",
                      RuntimeWarning, stacklevel=2)
    return mapping


def compose(mix: Iterator[np.ndarray], stems: Dict[str, Iterator[np.ndarray]], mapping: Dict[str, str],
            channels: int) -> Iterator[np.ndarray]:
    """Zip the mix and the stems' blocks into [10, t] blocks: (mix, drums, bass, other, vocals) x stereo.

    Every input iterator yields [C, t] blocks of the same sizes (scratch files of one length).
    """
    names = list(stems)
    for blocks in zip(mix, *(stems[n] for n in names)):
        n = blocks[0].shape[1]
        out = np.zeros((STREAMS, 2, n), dtype=np.float32)  # [S, 2, t]
        out[0] = _stereo(blocks[0], channels)
        for name, block in zip(names, blocks[1:]):
            out[1 + SLOTS.index(mapping[name])] += _stereo(block, channels)
        yield out.reshape(CHANNELS, n)  # [S, 2, t] -> [S*2, t]


def _stereo(block: np.ndarray, channels: int) -> np.ndarray:
    if channels == 1:
        return np.repeat(block, 2, axis=0)
    if channels == 2:
        return block
    raise AudioEncodeError(f"NI Stems files are stereo; this model gives {channels} channels")


def manifest() -> dict:
    """The NI manifest: version, mastering DSP (off, at NI's default settings), stem names and colours."""
    return {
        "version": 1,
        "mastering_dsp": {
            "compressor": {"enabled": False, "input_gain": 0.5, "output_gain": 0.5, "threshold": 0,
                           "dry_wet": 50, "attack": 0.003, "release": 0.3, "ratio": 3, "hp_cutoff": 300},
            "limiter": {"enabled": False, "threshold": 0, "ceiling": -0.35, "release": 0.05},
        },
        "stems": [{"name": _DISPLAY[s][0], "color": _DISPLAY[s][1]} for s in SLOTS],
    }


# --------------------------------------------------------------------------- writer


class StemsWriter:
    """Streaming, atomic NI Stems encoder: ``with StemsWriter(...) as w: w.write(block)``.

    Blocks are float32 [10, t] as `compose` gives them. `codec` "aac" (at `bitrate` bits per
    second, default 256 kbit/s) or "alac" (`bit_depth` 16 or 24). `tags` (a tags.Tags, or None)
    are written with the cover art after the manifest. Nothing appears at `path` until the
    writer closes cleanly.
    """

    def __init__(self, path, sample_rate: int, codec: str = "aac", bitrate: Optional[int] = None,
                 bit_depth: Optional[int] = None, tags=None):
        import av

        self.path = Path(path)
        self.codec = codec
        if codec not in CODECS:
            raise AudioEncodeError(f"NI Stems codec {codec!r} is not one of {', '.join(CODECS)}", path=self.path)
        self.sample_rate = int(sample_rate)
        self.tags = tags
        self._resampler = None
        self._rate = self.sample_rate
        if codec == "aac" and self._rate not in _AAC_RATES:
            from .audio import Resampler

            higher = [r for r in _AAC_RATES if r >= self._rate]
            self._rate = higher[0] if higher else _AAC_RATES[-1]
            self._resampler = Resampler(self.sample_rate, self._rate, CHANNELS)
        if codec == "alac":
            self._fmt, self._bits = ("s16p", 16) if (bit_depth or 16) == 16 else ("s32p", 24)
        else:
            self._fmt, self._bits = "fltp", None
        self._pending: List[np.ndarray] = []  # [10, n] blocks not yet encoded
        self._n_pending = 0
        self._pts = 0
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = atomic.temporary_beside(self.path, ".part")
        except OSError as exc:
            raise AudioEncodeError(f"cannot create a file in {self.path.parent} ({exc.strerror or exc})",
                                   path=self.path) from None
        try:
            # Edit lists in the sample rate's timescale are sample-exact (the AAC priming is cut on decode).
            self._container = av.open(os.fspath(self._tmp), mode="w", format="mp4",
                                      options={"movie_timescale": str(self._rate), "brand": "M4A "})
            self._streams = []
            for i in range(STREAMS):
                stream = self._container.add_stream(codec, rate=self._rate)
                stream.layout = "stereo"
                stream.format = self._fmt
                if codec == "aac":
                    stream.bit_rate = int(bitrate or DEFAULT_BITRATE)
                stream.metadata["handler_name"] = "Master" if i == 0 else _DISPLAY[SLOTS[i - 1]][0]
                # Only the mix is enabled: a player that knows nothing of stems plays the song.
                stream.disposition = av.stream.Disposition.default if i == 0 else av.stream.Disposition(0)
                stream.codec_context.open()
                self._streams.append(stream)
        except av.FFmpegError as exc:
            self.abort()
            raise AudioEncodeError(f"cannot open the NI Stems encoder ({exc})", path=self.path) from None
        self._frame = self._streams[0].codec_context.frame_size or 1024

    def __enter__(self) -> "StemsWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, block: np.ndarray) -> None:
        """Append samples [10, t] (float, nominally in [-1, 1])."""
        if self._closed:
            raise AudioEncodeError("writer is already closed", path=self.path)
        data = np.asarray(block, dtype=np.float32)
        if data.ndim != 2 or data.shape[0] != CHANNELS:
            raise AudioEncodeError(f"expected a block shaped [{CHANNELS}, t], got {list(data.shape)}", path=self.path)
        try:
            if self._resampler is not None:
                data = self._resampler.process(data)
            self._queue(data)
            self._encode(final=False)
        except BaseException:
            self.abort()
            raise

    def _queue(self, data: np.ndarray) -> None:
        if data.shape[1]:
            self._pending.append(data)
            self._n_pending += data.shape[1]

    def _encode(self, final: bool) -> None:
        import av

        size = self._frame
        if not self._n_pending or (self._n_pending < size and not final):
            return
        joined = np.concatenate(self._pending, axis=1)  # [10, n]
        stop = joined.shape[1] if final else (joined.shape[1] // size) * size
        try:
            for start in range(0, stop, size):
                piece = joined[:, start:min(start + size, stop)]
                for i, stream in enumerate(self._streams):
                    frame = av.AudioFrame.from_ndarray(self._samples(piece[2 * i:2 * i + 2]), format=self._fmt,
                                                       layout="stereo")
                    frame.sample_rate = self._rate
                    frame.pts = self._pts
                    frame.time_base = Fraction(1, self._rate)
                    for packet in stream.encode(frame):
                        self._container.mux(packet)
                self._pts += piece.shape[1]
        except av.FFmpegError as exc:
            raise AudioEncodeError(f"NI Stems encoding failed ({exc})", path=self.path) from None
        rest = joined[:, stop:]
        self._pending = [rest] if rest.shape[1] else []
        self._n_pending = rest.shape[1]

    def _samples(self, stereo: np.ndarray) -> np.ndarray:
        """[2, n] float -> the encoder's planar samples, integers clipped (never wrapped)."""
        if self._fmt == "fltp":
            return np.ascontiguousarray(stereo)
        if self._bits == 16:
            return np.clip(np.round(stereo * 32768.0), -32768, 32767).astype(np.int16)
        ints = np.clip(np.round(stereo.astype(np.float64) * 8388608.0), -8388608, 8388607).astype(np.int32)
        return ints << 8  # 24 significant bits at the top of s32, as FFmpeg's ALAC encoder reads them

    def abort(self) -> None:
        """Drop everything written so far; the target path is not touched."""
        self._closed = True
        container, self._container = getattr(self, "_container", None), None
        if container is not None:
            try:
                container.close()
            except Exception:  # noqa: BLE001 - the file is discarded anyway
                pass
        tmp = getattr(self, "_tmp", None)
        if tmp is not None:
            atomic.discard(tmp)
            self._tmp = None

    def close(self) -> None:
        """Finish encoding, add the manifest and tags, and move the file onto its target path."""
        if self._closed:
            return
        try:
            if self._resampler is not None:
                self._queue(self._resampler.flush())
            self._encode(final=True)
            for stream in self._streams:
                for packet in stream.encode(None):
                    self._container.mux(packet)
            self._container.close()
            self._container = None
            add_stem_box(self._tmp, json.dumps(manifest()).encode("utf-8"))
            if self.tags is not None:
                from . import tags as tagging

                tagging.write_tags(self._tmp, FORMAT, self.tags)
            atomic.commit(self._tmp, self.path)
            self._tmp = None
            self._closed = True
        except BaseException as exc:
            self.abort()
            if isinstance(exc, (AudioEncodeError, KeyboardInterrupt, SystemExit)):
                raise
            raise AudioEncodeError(f"could not finish writing ({exc})", path=self.path) from None


# --------------------------------------------------------------------------- MP4 boxes

# Boxes whose payload is a list of boxes, on the way from moov to the chunk offset tables.
_CONTAINERS = {b"trak", b"mdia", b"minf", b"stbl"}


def _boxes(data: bytes, start: int, end: int):
    """(offset, size, type, header length) of each box in data[start:end]."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        header = 8
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise AudioEncodeError(f"malformed MP4 box {kind!r} at byte {pos}")
        yield pos, size, kind, header
        pos += size


def _top_level(fh, length: int):
    """(offset, size, type) of each top-level box of an open file, reading headers only."""
    pos = 0
    while pos + 8 <= length:
        fh.seek(pos)
        head = fh.read(16)
        size, kind = struct.unpack(">I4s", head[:8])
        if size == 1:
            size = struct.unpack(">Q", head[8:16])[0]
        elif size == 0:
            size = length - pos
        if size < 8 or pos + size > length:
            raise AudioEncodeError(f"malformed MP4 box {kind!r} at byte {pos}")
        yield pos, size, kind
        pos += size


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def _with_stem(moov: bytes, payload: bytes) -> bytes:
    """moov (whole box) with `stem` set in its udta (replacing an old one, adding udta if missing)."""
    _, size, _, header = next(_boxes(moov, 0, len(moov)))
    children, found = [], False
    for off, sz, kind, hd in _boxes(moov, header, size):
        if kind == b"udta":
            inner = b"".join(moov[o:o + s] for o, s, k, _ in _boxes(moov, off + hd, off + sz) if k != b"stem")
            children.append(_box(b"udta", inner + _box(b"stem", payload)))
            found = True
        else:
            children.append(moov[off:off + sz])
    if not found:
        children.append(_box(b"udta", _box(b"stem", payload)))
    return _box(b"moov", b"".join(children))


def _shift_chunk_offsets(moov: bytearray, after: int, delta: int) -> None:
    """Add `delta` to every chunk offset in moov that points at or past byte `after` of the file."""
    def walk(start: int, end: int) -> None:
        for off, size, kind, header in _boxes(moov, start, end):
            if kind in _CONTAINERS:
                walk(off + header, off + size)
            elif kind in (b"stco", b"co64"):
                body = off + header + 4  # version + flags
                count = struct.unpack(">I", moov[body:body + 4])[0]
                width, fmt = (4, ">I") if kind == b"stco" else (8, ">Q")
                for i in range(count):
                    at = body + 4 + i * width
                    value = struct.unpack(fmt, moov[at:at + width])[0]
                    if value >= after:
                        value += delta
                        if kind == b"stco" and value >= 1 << 32:
                            raise AudioEncodeError("MP4 chunk offsets overflow 32 bits after adding the NI manifest")
                        struct.pack_into(fmt, moov, at, value)

    for off, sz, kind, hd in _boxes(moov, 8, len(moov)):  # built by _box: an 8-byte header
        if kind == b"trak":
            walk(off + hd, off + sz)


def add_stem_box(path, payload: bytes) -> None:
    """Put `payload` (the manifest's bytes) in a `stem` box in moov/udta of the MP4 file at `path`.

    When moov is the last box (how FFmpeg writes), it is rewritten in place. Otherwise
    everything after it moves by the growth, and so do the chunk offsets that point there.
    """
    path = Path(path)
    with open(path, "r+b") as fh:
        length = fh.seek(0, os.SEEK_END)
        top = list(_top_level(fh, length))
        moovs = [(o, s) for o, s, k in top if k == b"moov"]
        if len(moovs) != 1:
            raise AudioEncodeError("not an MP4 file with one moov box", path=path)
        moov_at, moov_size = moovs[0]
        fh.seek(moov_at)
        old = fh.read(moov_size)
        new = bytearray(_with_stem(old, payload))
        delta = len(new) - moov_size
        if moov_at + moov_size == length:
            fh.seek(moov_at)
            fh.write(new)
            fh.truncate()
            return
        _shift_chunk_offsets(new, moov_at + moov_size, delta)
    # moov has boxes after it (mdat of a "fast start" file): write the file anew beside it.
    tmp = atomic.temporary_beside(path, ".box")
    try:
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            dst.write(src.read(moov_at))
            dst.write(new)
            src.seek(moov_at + moov_size)
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                dst.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        atomic.discard(tmp)
        raise


def read_stem_box(path) -> Optional[bytes]:
    """The payload of moov/udta/stem of the MP4 file at `path` (None when it has none)."""
    with open(path, "rb") as fh:
        length = fh.seek(0, os.SEEK_END)
        for off, size, kind in list(_top_level(fh, length)):
            if kind != b"moov":
                continue
            fh.seek(off)
            moov = fh.read(size)
            _, msize, _, mh = next(_boxes(moov, 0, len(moov)))
            for o, s, k, h in _boxes(moov, mh, msize):
                if k == b"udta":
                    for o2, s2, k2, h2 in _boxes(moov, o + h, o + s):
                        if k2 == b"stem":
                            return moov[o2 + h2:o2 + s2]
    return None
