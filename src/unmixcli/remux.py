"""`--remux`: a copy of a video file with one separated stem in place of its audio track.

The video (and the other video, audio and subtitle streams; data and attachment streams, which
most muxers cannot take by copy, are left out) is copied packet by packet, never re-encoded, with
its timestamps; only the first audio stream is replaced, by the stem encoded with the original
track's codec where PyAV can encode it into that container (else the container's usual one: AAC,
Opus for WebM, MP3 for AVI), at the original's sample rate, mono or stereo as the original (5.1
and up become stereo), starting where the original audio started and as long as it. Copied
packets and new audio packets are muxed in time order as the input is read, so memory does not
grow with the length of the video. Which stem replaces the audio: `remux_stem`.

The file is written atomically (temporary file beside it, then rename), like the stems.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np

from . import atomic
from .errors import AudioDecodeError, AudioEncodeError

PathLike = Union[str, "os.PathLike[str]"]

REMUX_KEY = "remux"
"""The key of the remuxed video among a job's outputs (beside its stems)."""

# Muxer of each video suffix we can write (the temporary file's name says nothing).
MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm",
          ".avi": "avi", ".3gp": "3gp"}
VIDEO_SUFFIXES = frozenset(MUXERS)

# Encoder for the original track's codec (decoder name -> encoder name) where they differ.
_ENCODERS = {"mp3": "libmp3lame", "mp3float": "libmp3lame", "opus": "libopus", "vorbis": "libvorbis"}
# What to encode when the original codec cannot be (e.g. no encoder in PyAV's FFmpeg).
_FALLBACK = {"webm": "libopus", "avi": "libmp3lame"}
_DEFAULT_BITRATE = 192_000
# Audio is encoded this far (seconds) ahead of the copied packets, so the muxer always has
# audio to interleave with them.
_LEAD_S = 0.5

# Stems preferred for the remux when the user names none: the clean one of speech models, the
# instrumental of --karaoke (a karaoke video), then the vocals of music models.
_PREFERRED = ("speech", "instrumental", "vocals")


def _av():
    import av

    return av


def video_stream_count(path: PathLike) -> int:
    """How many real video streams (cover art excluded) a file holds; 0 if it cannot be opened."""
    av = _av()
    try:
        with av.open(os.fspath(path)) as container:
            return sum(1 for s in container.streams.video if not _is_cover(s))
    except (av.FFmpegError, OSError, ValueError):
        return 0


def can_remux(path: PathLike) -> bool:
    """Whether `--remux` applies to this input: a video container we can write, with a video stream."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES and video_stream_count(path) > 0


def remux_stem(written: Sequence[str], requested: Optional[Sequence[str]] = None, karaoke: bool = False) -> str:
    """The stem that replaces the video's audio.

    The rule: the first stem of `requested` (--stems) when given; else the first of "speech"
    (enhancement models), "instrumental" (--karaoke: the video becomes a karaoke video) and
    "vocals" (music models) that was written; else the first written stem.
    """
    if requested:
        return list(requested)[0]
    for stem in _PREFERRED:
        if stem in written and (stem != "instrumental" or karaoke):
            return stem
    return list(written)[0]


def _is_cover(stream) -> bool:
    return bool(stream.disposition & _av().stream.Disposition.attached_pic) if hasattr(stream, "disposition") else False


def _encoder_candidates(original: str, muxer: str) -> List[str]:
    names = [_ENCODERS.get(original, original), _FALLBACK.get(muxer, "aac")]
    return list(dict.fromkeys(names))


def _pick_rate(codec, rate: int) -> int:
    rates = codec.audio_rates
    if not rates or rate in rates:
        return rate
    higher = sorted(r for r in rates if r >= rate)
    return higher[0] if higher else max(rates)


def _fit_channels(block: np.ndarray, channels: int) -> np.ndarray:
    """[C, t] -> [channels, t]: average to mono, or repeat a mono stem on every channel."""
    if block.shape[0] == channels:
        return block
    mono = block.mean(axis=0, keepdims=True)
    return np.repeat(mono, channels, axis=0)


class _AudioTrack:
    """The replacement audio: blocks in, encoded packets muxed into `container` in time order."""

    def __init__(self, container, template, blocks: Iterator[np.ndarray], rate_in: int, muxer: str,
                 bitrate: Optional[int], frames: Optional[int], path: Path):
        from .audio import Resampler

        av = _av()
        self.container, self.path = container, path
        channels = 1 if template.codec_context.layout.nb_channels == 1 else 2  # 5.1 and up: stereo
        original = template.codec_context.name
        self.stream = None
        errors = []
        for name in _encoder_candidates(original, muxer):
            try:
                codec = av.Codec(name, "w")
                rate = _pick_rate(codec, int(template.codec_context.sample_rate or rate_in))
                stream = container.add_stream(name, rate=rate)
                stream.layout = "mono" if channels == 1 else "stereo"
                stream.format = codec.audio_formats[0].name if codec.audio_formats else "fltp"
                if not name.startswith("pcm_") and name != "flac":
                    stream.bit_rate = int(bitrate or template.codec_context.bit_rate or _DEFAULT_BITRATE)
                stream.codec_context.open()
            except (av.FFmpegError, ValueError) as exc:
                errors.append(f"{name}: {exc}")
                continue
            self.stream = stream
            break
        if self.stream is None:
            raise AudioEncodeError(f"cannot encode the new audio track into {muxer} ({'; '.join(errors)})",
                                   path=path, hint="remux into .mp4 or .mkv instead")
        self.rate, self.channels = rate, channels
        self.format = self.stream.format.name
        self.frame_size = self.stream.codec_context.frame_size or 1024
        # Where the original audio started, in our samples: the new track starts there too.
        start = template.start_time
        start_s = float(start * template.time_base) if start is not None and template.time_base else 0.0
        self.pts = max(int(round(start_s * rate)), 0)
        self.start_s = self.pts / rate
        self._resampler = Resampler(rate_in, rate, channels) if rate_in != rate else None
        self._frames_target = None if frames is None else int(round(frames * rate / rate_in))
        self._blocks = iter(blocks)
        self._pending = np.zeros((channels, 0), dtype=np.float32)
        self._sent = 0  # samples handed to the encoder
        self._exhausted = False

    def _next_block(self) -> bool:
        block = next(self._blocks, None)
        if block is None:
            if self._exhausted:
                return False
            self._exhausted = True
            tail = self._resampler.flush() if self._resampler is not None else np.zeros((self.channels, 0), np.float32)
            self._append(tail, final=True)
            return True
        block = _fit_channels(np.asarray(block, dtype=np.float32), self.channels)
        if self._resampler is not None:
            block = self._resampler.process(block)
        self._append(block, final=False)
        return True

    def _append(self, block: np.ndarray, final: bool) -> None:
        buffered = self._sent + self._pending.shape[1]
        if self._frames_target is not None:
            block = block[:, : max(self._frames_target - buffered, 0)]
            if final and buffered + block.shape[1] < self._frames_target:
                # The resampler's round trip can come out a sample short of the track's length.
                block = np.concatenate(
                    [block, np.zeros((self.channels, self._frames_target - buffered - block.shape[1]), np.float32)],
                    axis=1)
        self._pending = np.concatenate([self._pending, block], axis=1)

    def _encode(self, final: bool) -> None:
        av = _av()
        size = self.frame_size
        stop = self._pending.shape[1] if final else (self._pending.shape[1] // size) * size
        planar = self.format.endswith("p")
        layout = "mono" if self.channels == 1 else "stereo"
        for first in range(0, stop, size):
            piece = self._pending[:, first:min(first + size, stop)]
            data = _to_format(piece, self.format)
            arr = np.ascontiguousarray(data) if planar else np.ascontiguousarray(data.T).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(arr, format=self.format, layout=layout)
            frame.sample_rate = self.rate
            frame.time_base = Fraction(1, self.rate)
            frame.pts = self.pts
            self.pts += piece.shape[1]
            self._sent += piece.shape[1]
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
        self._pending = self._pending[:, stop:]

    def until(self, seconds: float) -> None:
        """Encode and mux the new audio up to `seconds` (+ a lead) of presentation time."""
        while self.start_s + (self._sent + self._pending.shape[1]) / self.rate < seconds + _LEAD_S:
            if not self._next_block():
                break
        self._encode(final=False)

    def finish(self) -> None:
        while self._next_block():
            pass
        self._encode(final=True)
        for packet in self.stream.encode(None):
            self.container.mux(packet)


def _to_format(piece: np.ndarray, fmt: str) -> np.ndarray:
    """Float [C, t] -> the sample values `fmt` stores (integers clipped, never wrapped)."""
    base = fmt.rstrip("p")
    if base == "s16":
        return np.clip(np.round(piece * 32768.0), -32768, 32767).astype(np.int16)
    if base == "s32":
        return np.clip(np.round(piece.astype(np.float64) * 2147483648.0), -2147483648, 2147483647).astype(np.int32)
    if base == "dbl":
        return piece.astype(np.float64)
    return piece.astype(np.float32)


def remux(source: PathLike, target: PathLike, blocks: Iterable[np.ndarray], sample_rate: int, *,
          frames: Optional[int] = None, bitrate: Optional[int] = None) -> Path:
    """Write `target`: `source` with its first audio stream replaced by `blocks`.

    Args:
        source: the input video.
        target: the file to write (its suffix picks the container, see `MUXERS`).
        blocks: the new audio, float32 `[C, t]` blocks at `sample_rate` (1 or 2 channels; mapped
            onto the original track's channel count, mono or stereo).
        frames: the new audio's length in samples at `sample_rate` (default: as many as given).
        bitrate: of the new track, bits per second (default: the original track's, else 192k).
    Returns:
        `target`.
    Raises:
        AudioDecodeError: the source cannot be read or has no video / no audio stream.
        AudioEncodeError: the result cannot be written.
    """
    av = _av()
    source, target = Path(source), Path(target)
    muxer = MUXERS.get(target.suffix.lower())
    if muxer is None:
        raise AudioEncodeError(f"cannot remux into a {target.suffix or 'suffix-less'} file", path=target,
                               hint=f"use one of: {', '.join(sorted(VIDEO_SUFFIXES))}")
    try:
        src = av.open(os.fspath(source))
    except (av.FFmpegError, OSError) as exc:
        raise AudioDecodeError(f"cannot open for remuxing ({exc})", path=source) from None
    tmp = None
    try:
        audio_in = next(iter(src.streams.audio), None)
        if audio_in is None or not src.streams.video:
            raise AudioDecodeError("--remux needs a video file with an audio track", path=source,
                                   hint="drop --remux for audio-only inputs")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = atomic.temporary_beside(target, ".part")
        with av.open(os.fspath(tmp), mode="w", format=muxer) as out:
            copied = {}
            track = None
            for stream in src.streams:
                if stream is audio_in:
                    track = _AudioTrack(out, audio_in, blocks, int(sample_rate), muxer, bitrate, frames, target)
                    continue
                if stream.type not in ("video", "audio", "subtitle"):
                    continue  # data/attachment streams: most muxers cannot take them by copy
                try:
                    copied[stream.index] = out.add_stream_from_template(stream)
                except (av.FFmpegError, ValueError):
                    continue  # a stream this container cannot hold is left out, as ffmpeg -map 0 would fail
            if not any(src.streams[i].type == "video" for i in copied):
                raise AudioEncodeError(f"the video stream cannot be copied into {muxer}", path=target,
                                       hint="remux into the input's own container type")
            for key, value in src.metadata.items():
                out.metadata[key] = value
            for packet in src.demux(*[src.streams[i] for i in copied]):
                if packet.dts is None and packet.pts is None:
                    continue  # the demuxer's end-of-stream marker
                ts = packet.dts if packet.dts is not None else packet.pts
                track.until(float(ts * packet.time_base))
                packet.stream = copied[packet.stream.index]
                out.mux(packet)
            track.finish()
        atomic.commit(tmp, target)
        tmp = None
    except av.FFmpegError as exc:
        raise AudioEncodeError(f"remuxing failed ({exc})", path=target) from None
    finally:
        src.close()
        if tmp is not None:
            atomic.discard(tmp)
    return target


__all__ = ["MUXERS", "REMUX_KEY", "VIDEO_SUFFIXES", "can_remux", "remux", "remux_stem", "video_stream_count"]
