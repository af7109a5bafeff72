"""Audio input and output: decode anything FFmpeg reads, encode stems.

Everything here works on numpy float32 arrays shaped ``[C, T]`` (C channels,
T samples); torch is not needed.

Decoding (PyAV, FFmpeg bundled in its wheels):

* The first audio stream of any file FFmpeg can open is used, whether the file
  is audio-only or a video container.
* Channels: mono is duplicated to stereo; more than two channels are folded
  to stereo with the ITU-R BS.775 coefficients that FFmpeg's float downmix
  uses (centre and surrounds at -3 dB, LFE dropped, no renormalisation);
  stereo to mono is the mean of the two channels.
* Sample-exact: encoder delay and padding are removed wherever the container
  records them. FFmpeg itself applies the MP3 LAME/Xing gapless header, the
  Opus pre-skip and end trimming, and the start of an MP4 edit list. It does
  not cut the end padding of MP4/M4A (AAC) audio, so we stop where the last
  packet ends (or at the edit-list duration when the two disagree, see
  :class:`_Mp4Trim`; an iTunSMPB gapless tag is used
  when present). Files we write record these values exactly (our M4A
  movie timescale is the sample rate), so a round trip gives back the written
  length with no offset. Where a file records no delay at all (WMA in ASF,
  MP3 without a LAME/Xing header) there is nothing to trim by, and the audio
  comes out as FFmpeg decodes it (shifted by the codec's delay).
* Resampling uses our own windowed-sinc (Kaiser) polyphase resampler: a
  997 Hz tone resampled 48 kHz -> 44.1 kHz is within about -100 dB of the
  analytic tone (FFmpeg's default swr filter is far coarser and the bundled
  FFmpeg has no soxr). It streams, and streaming gives bit-identical samples
  to resampling the whole signal at once, because output is always computed in
  the same fixed, absolutely aligned chunks. The output length is
  ``round(T * sr_out / sr_in)``.
* Streaming: :class:`AudioReader` decodes, maps channels and resamples block by
  block, so memory does not grow with the length of the file.
* Truncated files: whatever FFmpeg can decode is returned, and an
  :class:`AudioTruncatedWarning` (a Python warning, not an error) says that the
  file ended before the length its header declares, or that packets were
  corrupt. A file from which no audio at all can be decoded raises
  :class:`AudioDecodeError`. Every other bad input (missing, a folder,
  unreadable, empty, not media, no audio stream) raises
  :class:`AudioDecodeError` naming the file, the cause and a hint.

Encoding (:class:`AudioWriter`, :func:`encode`):

* WAV 16/24-bit integer or 32-bit float, FLAC 16/24-bit (soundfile); MP3
  (libmp3lame), Opus (libopus in Ogg) and M4A (FFmpeg's AAC encoder) via PyAV.
* Integer formats clip to the representable range, never wrap.
* NaN or infinite samples raise :class:`AudioEncodeError` (we choose to fail
  loudly rather than hide a model or numerical bug by silently patching it).
* Opus is always written at 48 kHz (the only rate every Opus decoder returns);
  other rates are resampled internally. MP3 and AAC rates they cannot encode
  are resampled to the nearest rate they can. A decoded round trip at the
  original rate (``decode(path, sample_rate=sr)``) gives back the written
  length.
* Writes are atomic: samples go to a hidden temporary file in the target folder
  that is renamed onto the target only when the writer closes cleanly; on any
  exception (KeyboardInterrupt included) the temporary file is removed and the
  target is left untouched.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile  # noqa: F401 - atomic.py makes the temporary files; tests patch audio.tempfile.mkstemp
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from . import atomic
from .errors import AudioDecodeError, AudioEncodeError, PathLike

__all__ = [
    "FORMATS",
    "AudioInfo",
    "AudioReader",
    "AudioWriter",
    "AudioTruncatedWarning",
    "Resampler",
    "probe",
    "decode",
    "encode",
    "resample",
    "downmix_matrix",
]

FORMATS = ("wav", "flac", "mp3", "opus", "m4a")

# Bit depths per format; the first is the default.
_BIT_DEPTHS = {"wav": (16, 24, 32), "flac": (16, 24)}
_DEFAULT_BITRATE = {"mp3": 320_000, "opus": 192_000, "m4a": 256_000}
# Rates each lossy encoder accepts (ascending). Opus is pinned to 48 kHz.
_ENCODER_RATES = {
    "mp3": (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000),
    "m4a": (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000),
    "opus": (48000,),
}
# (PyAV codec, sample format, muxer) for the lossy formats.
_LOSSY = {
    "mp3": ("libmp3lame", "fltp", "mp3"),
    "opus": ("libopus", "flt", "ogg"),
    "m4a": ("aac", "fltp", "ipod"),
}
# Other names for the same output: Ogg Opus in .ogg, AAC in an .mp4 file.
_SUFFIX_ALIASES = {"wave": "wav", "fla": "flac", "ogg": "opus", "mp4": "m4a"}

DEFAULT_BLOCK_FRAMES = 1 << 16


class AudioTruncatedWarning(UserWarning):
    """A file decoded only partly (it ends early or has corrupt packets)."""


@dataclass(frozen=True)
class AudioInfo:
    """What a media file holds, read from its headers without decoding.

    ``frames`` is the number of samples per channel after encoder delay and
    padding are removed, at ``sample_rate``. It is exact for WAV, AIFF, FLAC,
    MP3 with a LAME/Xing header, Ogg Opus/Vorbis, M4A with an iTunSMPB tag
    and the M4A files we write; other M4A files are within one movie-timescale
    tick (usually 1 ms); for
    other files it is estimated from the container duration (0 when the
    container declares none). Decoding gives the true length.
    """

    path: str
    duration: float
    sample_rate: int
    channels: int
    frames: int
    codec: str
    container: str
    tags: dict = field(default_factory=dict, hash=False)


# --------------------------------------------------------------------------
# Opening files
# --------------------------------------------------------------------------


def _av():
    # Imported lazily so that importing this module stays cheap.
    import av

    return av


def _check_readable(path: Path) -> None:
    """Raise AudioDecodeError for the failures we can name before FFmpeg runs."""
    if not path.exists():
        raise AudioDecodeError("file not found", path=path, hint="check the path and spelling")
    if path.is_dir():
        raise AudioDecodeError(
            "is a folder, not an audio file", path=path, hint="pass the files inside it, or the folder to the CLI"
        )
    if not path.is_file():
        # A FIFO, socket or device: opening it could block forever (a FIFO waits for a writer).
        raise AudioDecodeError(
            "not a regular file (a FIFO, socket or device)", path=path, hint="copy the audio to a file first"
        )
    try:
        with open(path, "rb") as fh:
            first = fh.read(1)
    except PermissionError:
        raise AudioDecodeError(
            "permission denied", path=path, hint="check that you may read this file (chmod / ownership)"
        ) from None
    except OSError as exc:
        raise AudioDecodeError(f"cannot read file ({exc.strerror or exc})", path=path) from None
    if not first:
        raise AudioDecodeError("file is empty", path=path, hint="re-export or re-download it")


def _open_audio(path: Path):
    """Open `path` with PyAV; return (container, first audio stream)."""
    _check_readable(path)
    av = _av()
    try:
        container = av.open(os.fspath(path), mode="r")
    except av.error.PermissionError:
        raise AudioDecodeError("permission denied", path=path, hint="check that you may read this file") from None
    except av.FFmpegError as exc:
        raise AudioDecodeError(
            f"not a readable audio or video file ({_ffmpeg_reason(exc)})",
            path=path,
            hint="the file may be corrupt, incomplete, or not media at all",
        ) from None
    if not container.streams.audio:
        kinds = sorted({s.type for s in container.streams})
        container.close()
        what = f"only {', '.join(kinds)} streams" if kinds else "no streams"
        raise AudioDecodeError(
            f"no audio stream (the file has {what})", path=path, hint="pick a file that has a sound track"
        )
    stream = container.streams.audio[0]
    if not stream.codec_context.sample_rate:
        container.close()
        raise AudioDecodeError("audio stream declares no sample rate", path=path, hint="the file may be corrupt")
    return container, stream


def _ffmpeg_reason(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).strip().rstrip(".") or type(exc).__name__


def _declared_frames(container, stream) -> tuple[int, bool]:
    """Samples per channel the file declares, delay/padding excluded (0 if unknown).

    The flag says whether the count comes from the audio stream itself (else it
    is the container's overall duration, which may include a longer video).
    """
    rate = stream.codec_context.sample_rate
    fmt = container.format.name
    if stream.duration is not None and stream.time_base and fmt != "asf":
        # (ASF/WMA durations include the muxer's preroll: not a sample count.)
        frames = int(round(stream.duration * stream.time_base * rate))
        if fmt == "ogg" and stream.codec_context.name == "opus":
            # Ogg Opus granule positions count the pre-skip, which the decoder drops.
            frames -= int(stream.codec_context.delay or 0)
        return max(frames, 0), True
    if container.duration:
        # Container duration is in microseconds (AV_TIME_BASE); an estimate only.
        return int(round(container.duration * rate / 1_000_000)), False
    return 0, False


def _is_mp4_family(container) -> bool:
    return "mp4" in container.format.name or "mov" in container.format.name


def _itunes_gapless(tags) -> Optional[tuple[int, int, int]]:
    """(priming, padding, length) from an iTunSMPB tag, or None.

    iTunes and Apple's encoders record gapless info as hex words:
    `` 00000000 <priming> <padding> <length> ...``.
    """
    value = None
    for key, item in (tags or {}).items():
        if str(key).lower() == "itunsmpb":
            value = item
    if not value:
        return None
    try:
        words = [int(word, 16) for word in str(value).split()]
    except ValueError:
        return None
    if len(words) < 4 or words[3] <= 0:
        return None
    return words[1], words[2], words[3]


class _Mp4Trim:
    """Encoder delay and padding of MP4/MOV audio that FFmpeg leaves in.

    FFmpeg drops the priming samples an MP4 edit list marks but keeps the end
    padding of the last AAC frame. What we use, best record first:

    * an iTunSMPB tag (iTunes, Apple encoders): exact priming and length; the
      priming is ours to drop only when no edit list made FFmpeg do it (then
      the first packet has pts >= 0);
    * the last packet's pts + duration, exact when the muxer stored the real
      length of the last frame (FFmpeg does), if it agrees with the edit-list
      duration to within one movie tick;
    * the edit-list duration (rounded to the movie timescale, often 1 ms).
    """

    def __init__(self, container, stream, tags):
        self.active = _is_mp4_family(container) and bool(stream.time_base)
        self.skip = 0  # samples to drop at the start, decided on the first packet
        if not self.active:
            return
        rate = stream.codec_context.sample_rate
        self._scale = stream.time_base * rate  # time base -> samples
        self._origin = max(stream.start_time or 0, 0)
        self._edit = stream.duration * self._scale if stream.duration else None
        self._tick = rate / 600 + 1  # QuickTime's coarsest common timescale
        self._gapless = _itunes_gapless(tags)
        self._packet_end = None
        self._first = True

    def see(self, packet) -> None:
        if not self.active or packet.pts is None:
            return
        if self._first:
            self._first = False
            if self._gapless is not None and packet.pts >= 0:
                self.skip = self._gapless[0]
        if packet.duration:
            end = (packet.pts + packet.duration - self._origin) * self._scale
            self._packet_end = end if self._packet_end is None else max(self._packet_end, end)

    def limit(self) -> Optional[int]:
        if not self.active:
            return None
        if self._gapless is not None:
            return self._gapless[2]
        end, edit = self._packet_end, self._edit
        if end is not None and (edit is None or abs(end - edit) <= self._tick):
            return int(round(end))
        return None if edit is None else int(round(edit))


def _info(path: Path, container, stream) -> AudioInfo:
    cc = stream.codec_context
    rate = int(cc.sample_rate)
    frames, _ = _declared_frames(container, stream)
    tags = {}
    for meta in (stream.metadata, container.metadata):
        for key, value in (meta or {}).items():
            tags.setdefault(str(key).lower(), value)
    gapless = _itunes_gapless(tags) if _is_mp4_family(container) else None
    if gapless is not None:
        frames = gapless[2]
    codec = getattr(cc.codec, "canonical_name", None) or cc.name
    return AudioInfo(
        path=os.fspath(path),
        duration=frames / rate,
        sample_rate=rate,
        channels=int(cc.channels or len(cc.layout.channels)),
        frames=frames,
        codec=str(codec),
        container=str(container.format.name),
        tags=tags,
    )


def probe(path: PathLike) -> AudioInfo:
    """Read a file's audio properties from its headers (no full decode).

    Raises:
        AudioDecodeError: the file is missing, unreadable, not media, or has no audio.
    """
    p = Path(path)
    container, stream = _open_audio(p)
    try:
        return _info(p, container, stream)
    finally:
        container.close()


# --------------------------------------------------------------------------
# Sample formats and channel mapping
# --------------------------------------------------------------------------


def _frame_to_float(frame) -> np.ndarray:
    """An AVFrame's samples as float32 [C, n] in [-1, 1)."""
    data = frame.to_ndarray()
    n_ch = len(frame.layout.channels)
    if not frame.format.is_planar:
        # Packed audio comes as [1, n * C], interleaved: -> [n, C] -> [C, n].
        data = data.reshape(-1, n_ch).T
    kind = data.dtype
    if kind == np.float32:
        return np.ascontiguousarray(data)
    if kind == np.float64:
        return data.astype(np.float32)
    if kind == np.int16:
        return data.astype(np.float32) / np.float32(1 << 15)
    if kind == np.int32:
        # float64 first: an int32 can carry more bits than float32 holds.
        return (data.astype(np.float64) / float(1 << 31)).astype(np.float32)
    if kind == np.int64:
        return (data.astype(np.float64) / float(1 << 63)).astype(np.float32)
    if kind == np.uint8:
        return (data.astype(np.float32) - 128.0) / np.float32(128.0)
    raise AudioDecodeError(f"unsupported sample format {frame.format.name}")


_SQRT1_2 = math.sqrt(0.5)
# Where each named channel goes in a stereo downmix: (to left, to right).
_STEREO_GAINS = {
    "FL": (1.0, 0.0),
    "FR": (0.0, 1.0),
    "FC": (_SQRT1_2, _SQRT1_2),
    "LFE": (0.0, 0.0),
    "LFE2": (0.0, 0.0),
    "BL": (_SQRT1_2, 0.0),
    "BR": (0.0, _SQRT1_2),
    "SL": (_SQRT1_2, 0.0),
    "SR": (0.0, _SQRT1_2),
    "BC": (0.5, 0.5),
    "FLC": (1.0, 0.0),
    "FRC": (0.0, 1.0),
    "TC": (0.5, 0.5),
    "TFL": (_SQRT1_2, 0.0),
    "TFR": (0.0, _SQRT1_2),
    "TFC": (0.5, 0.5),
    "TBL": (0.5, 0.0),
    "TBR": (0.0, 0.5),
    "TBC": (_SQRT1_2 * 0.5, _SQRT1_2 * 0.5),
    "WL": (1.0, 0.0),
    "WR": (0.0, 1.0),
    "SDL": (_SQRT1_2, 0.0),
    "SDR": (0.0, _SQRT1_2),
    "DL": (1.0, 0.0),
    "DR": (0.0, 1.0),
}


def downmix_matrix(names: list[str], channels: int) -> Optional[np.ndarray]:
    """Matrix [channels, len(names)] mapping source channels to `channels`, or None for identity.

    `names` are FFmpeg channel names (``FL``, ``FR``, ``FC``, ``LFE``, ...).
    Mono -> stereo duplicates; stereo -> mono averages; anything wider -> stereo
    uses the ITU-R BS.775 / FFmpeg float coefficients (centre and surrounds
    -3 dB, LFE dropped); channels without a known position feed both sides at
    -3 dB.
    """
    n_src = len(names)
    if n_src == channels:
        return None
    if channels == 2 and n_src == 1:
        return np.ones((2, 1), dtype=np.float32)
    if channels == 1:
        if n_src == 2:
            return np.full((1, 2), 0.5, dtype=np.float32)
        stereo = downmix_matrix(names, 2)
        return (0.5 * stereo.sum(axis=0, keepdims=True)).astype(np.float32)
    if channels == 2:
        matrix = np.zeros((2, n_src), dtype=np.float64)
        for i, name in enumerate(names):
            matrix[:, i] = _STEREO_GAINS.get(name.upper(), (_SQRT1_2, _SQRT1_2))
        return matrix.astype(np.float32)
    raise AudioDecodeError(f"cannot map {n_src} channels to {channels}; ask for 1 or 2 channels")


# --------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------


class Resampler:
    """Band-limited streaming resampler (Kaiser-windowed sinc, polyphase).

    Output sample n sits at input position ``t = n * sr_in / sr_out`` and is
    ``sum_k x[k] * h(t - k)``, with ``h`` a low-pass sinc cut a little below
    the lower of the two Nyquist frequencies, tapered by a Kaiser window of
    `zeros` zero crossings per side. Samples outside the signal are zero. The
    signal's total length T is only known at :meth:`flush`, which pads the
    output to exactly ``round(T * sr_out / sr_in)`` samples.

    Output is computed in chunks of `chunk` samples aligned on absolute output
    positions, so any way of cutting the input into blocks yields bit-identical
    output.

    Args:
        sr_in, sr_out: sample rates (Hz).
        channels: C of the ``[C, t]`` blocks fed to :meth:`process`.
        zeros: zero crossings of the sinc on each side (filter length).
        rolloff: cutoff as a fraction of the lower Nyquist frequency.
        beta: Kaiser window shape (stop-band attenuation about 8.7 + beta / 0.11 dB).
    """

    _MAX_TABLE_PHASES = 4096

    def __init__(self, sr_in: int, sr_out: int, channels: int, *, zeros: int = 32,
                 rolloff: float = 0.95, beta: float = 10.0, chunk: int = 8192):
        if sr_in <= 0 or sr_out <= 0:
            raise ValueError("sample rates must be positive")
        g = math.gcd(int(sr_in), int(sr_out))
        self.sr_in, self.sr_out = int(sr_in), int(sr_out)
        self.up, self.down = self.sr_out // g, self.sr_in // g  # L, M: t_n = n * M / L
        self.channels = channels
        self.chunk = chunk
        # Cutoff in cycles per input sample, and the kernel's half-width in input samples.
        self._fc = 0.5 * rolloff * min(1.0, self.up / self.down)
        self._width = zeros / (2.0 * self._fc)
        self._half = int(math.ceil(self._width)) + 1  # taps j = -half+1 .. half around floor(t)
        self._offsets = np.arange(-self._half + 1, self._half + 1)
        self._beta = beta
        self._table = None
        if self.up <= self._MAX_TABLE_PHASES:
            self._table = self._coefficients(np.arange(self.up) / self.up)  # [L, K]
        # Streaming state: `_buf` [C, n] holds input from absolute index `_start`
        # (negative indices are the zeros before the signal).
        self._buf = np.zeros((channels, self._half), dtype=np.float32)
        self._start = -self._half
        self._n_in = 0
        self._n_out = 0
        self._done = False

    def _coefficients(self, frac: np.ndarray) -> np.ndarray:
        """Kernel rows [len(frac), K] for output positions floor(t) + frac."""
        u = frac[:, None] - self._offsets[None, :]  # distance t - k, in input samples
        ratio = np.clip(u / self._width, -1.0, 1.0)
        window = np.i0(self._beta * np.sqrt(1.0 - ratio * ratio)) / np.i0(self._beta)
        window[np.abs(u) > self._width] = 0.0
        h = 2.0 * self._fc * np.sinc(2.0 * self._fc * u) * window
        return h.astype(np.float32)

    def out_length(self, n_in: int) -> int:
        """round(n_in * sr_out / sr_in), halves rounded up."""
        return (2 * n_in * self.up + self.down) // (2 * self.down)

    def _compute(self, n0: int, n1: int) -> np.ndarray:
        """Output samples [n0, n1) as [C, n1 - n0]; their inputs must be in the buffer."""
        n = np.arange(n0, n1, dtype=np.int64)
        pos = n * self.down
        base = pos // self.up  # floor(t_n)
        phase = pos - base * self.up
        if self._table is not None:
            coefs = self._table[phase]
        else:
            coefs = self._coefficients(phase / self.up)
        first = base - self._half + 1 - self._start  # buffer index of each row's first tap
        windows = np.lib.stride_tricks.sliding_window_view(self._buf, 2 * self._half, axis=-1)
        rows = windows[:, first]  # [C, n, K]
        return np.einsum("cnk,nk->cn", rows, coefs).astype(np.float32, copy=False)

    def _last_input_needed(self, n: int) -> int:
        return (n * self.down) // self.up + self._half

    def _emit(self, final: bool) -> np.ndarray:
        total = self.out_length(self._n_in) if final else None
        pieces = []
        while True:
            n0 = self._n_out
            n1 = (n0 // self.chunk + 1) * self.chunk  # next absolute chunk boundary
            if final:
                n1 = min(n1, total)
                if n1 <= n0:
                    break
            elif self._last_input_needed(n1 - 1) >= self._n_in:
                break
            pieces.append(self._compute(n0, n1))
            self._n_out = n1
        # Drop input no later output needs.
        keep_from = (self._n_out * self.down) // self.up - self._half + 1
        cut = keep_from - self._start
        if cut > 0:
            self._buf = self._buf[:, cut:]
            self._start += cut
        if not pieces:
            return np.zeros((self.channels, 0), dtype=np.float32)
        return np.concatenate(pieces, axis=1) if len(pieces) > 1 else pieces[0]

    def process(self, block: np.ndarray) -> np.ndarray:
        """Feed input [C, t]; return whatever output [C, t'] is now complete."""
        if self._done:
            raise RuntimeError("Resampler already flushed")
        block = np.asarray(block, dtype=np.float32)
        if block.shape[1]:
            self._buf = np.concatenate([self._buf, block], axis=1)
            self._n_in += block.shape[1]
        return self._emit(final=False)

    def flush(self) -> np.ndarray:
        """End of input: return the remaining output [C, t'] (zeros assumed past the end)."""
        if self._done:
            return np.zeros((self.channels, 0), dtype=np.float32)
        self._done = True
        # Zeros after the signal, enough for the last output's taps.
        needed = self._last_input_needed(max(self.out_length(self._n_in) - 1, 0)) + 1
        pad = needed - (self._start + self._buf.shape[1])
        if pad > 0:
            self._buf = np.concatenate([self._buf, np.zeros((self.channels, pad), np.float32)], axis=1)
        return self._emit(final=True)


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample a whole signal [C, T] -> [C, round(T * sr_out / sr_in)] (float32)."""
    audio = np.asarray(audio, dtype=np.float32)
    if sr_in == sr_out:
        return audio
    rs = Resampler(sr_in, sr_out, audio.shape[0])
    head = rs.process(audio)
    return np.concatenate([head, rs.flush()], axis=1)


# --------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------


class AudioReader:
    """Streaming decoder: iterate to get float32 blocks [C, block_frames] (the last may be shorter).

    Args:
        path: any file FFmpeg reads; its first audio stream is used.
        sample_rate: output rate in Hz (None keeps the file's rate).
        channels: 1 or 2 (None keeps the file's channel count).
        block_frames: samples per channel in each yielded block.

    Attributes:
        info: the file's :class:`AudioInfo`.
        sample_rate: the output rate.
        channels: the output channel count.
        frames: expected output length (from the header; exact where ``info.frames`` is).

    Use as a context manager (or call :meth:`close`). One pass only.
    """

    def __init__(self, path: PathLike, sample_rate: Optional[int] = None, channels: Optional[int] = 2,
                 block_frames: int = DEFAULT_BLOCK_FRAMES):
        if block_frames <= 0:
            raise ValueError("block_frames must be positive")
        if channels is not None and channels not in (1, 2):
            raise ValueError("channels must be 1, 2 or None")
        self.path = Path(path)
        self._container, self._stream = _open_audio(self.path)
        self.info = _info(self.path, self._container, self._stream)
        self.sample_rate = int(sample_rate or self.info.sample_rate)
        self.channels = int(channels or self.info.channels)
        self.block_frames = int(block_frames)
        if self.sample_rate == self.info.sample_rate:
            self.frames = self.info.frames
        else:
            self.frames = (2 * self.info.frames * self.sample_rate + self.info.sample_rate) // (
                2 * self.info.sample_rate)
        self._used = False

    def __enter__(self) -> "AudioReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def _source_chunks(self) -> Iterator[np.ndarray]:
        """Decoded, channel-mapped audio at the file's rate, as [C, n] arrays."""
        av = _av()
        trim = _Mp4Trim(self._container, self._stream, self.info.tags)
        emitted = 0
        skipped = 0
        problem = None
        matrices: dict = {}
        try:
            packets = self._container.demux(self._stream)
            for packet in packets:
                trim.see(packet)
                try:
                    frames = packet.decode()
                except av.FFmpegError as exc:
                    # A corrupt packet: skip it, as FFmpeg's own tools do, and report it.
                    problem = problem or f"corrupt data ({_ffmpeg_reason(exc)})"
                    continue
                for frame in frames:
                    if frame.sample_rate and frame.sample_rate != self.info.sample_rate:
                        raise AudioDecodeError(
                            f"sample rate changes mid-stream ({self.info.sample_rate} -> {frame.sample_rate} Hz)",
                            path=self.path, hint="convert the file to one rate first")
                    data = _frame_to_float(frame)
                    if skipped < trim.skip:
                        drop = min(trim.skip - skipped, data.shape[1])
                        data = data[:, drop:]
                        skipped += drop
                    cap = trim.limit()
                    if cap is not None and emitted + data.shape[1] > cap:
                        data = data[:, : max(cap - emitted, 0)]
                    if not data.shape[1]:
                        continue
                    names = tuple(ch.name for ch in frame.layout.channels)
                    if names not in matrices:
                        matrices[names] = downmix_matrix(list(names), self.channels)
                    matrix = matrices[names]
                    if matrix is not None:
                        data = matrix @ data  # [C_out, C_src] @ [C_src, n] -> [C_out, n]
                    emitted += data.shape[1]
                    yield data
        except AudioDecodeError:
            raise
        except av.FFmpegError as exc:
            problem = f"reading stopped early ({_ffmpeg_reason(exc)})"
        if emitted == 0:
            raise AudioDecodeError(
                "no audio could be decoded" + (f": {problem}" if problem else ""),
                path=self.path, hint="the file may be truncated or corrupt")
        declared, from_stream = self.info.frames, _declared_frames(self._container, self._stream)[1]
        if problem is None and from_stream and emitted < declared - max(64, declared // 200):
            problem = f"file ends after {emitted / self.info.sample_rate:.2f} s of the " \
                      f"{declared / self.info.sample_rate:.2f} s its header declares (truncated?)"
        if problem:
            warnings.warn(f"{self.path}: {problem}; using the {emitted / self.info.sample_rate:.2f} s decoded",
                          AudioTruncatedWarning, stacklevel=3)

    def _target_chunks(self) -> Iterator[np.ndarray]:
        if self.sample_rate == self.info.sample_rate:
            yield from self._source_chunks()
            return
        rs = Resampler(self.info.sample_rate, self.sample_rate, self.channels)
        for chunk in self._source_chunks():
            out = rs.process(chunk)
            if out.shape[1]:
                yield out
        out = rs.flush()
        if out.shape[1]:
            yield out

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._used:
            raise RuntimeError("an AudioReader can be iterated only once")
        if self._container is None:
            raise RuntimeError("AudioReader is closed")
        self._used = True
        pending: list[np.ndarray] = []
        n_pending = 0
        try:
            for chunk in self._target_chunks():
                pending.append(chunk)
                n_pending += chunk.shape[1]
                while n_pending >= self.block_frames:
                    joined = np.concatenate(pending, axis=1) if len(pending) > 1 else pending[0]
                    yield np.ascontiguousarray(joined[:, : self.block_frames])
                    rest = joined[:, self.block_frames:]
                    pending, n_pending = ([rest], rest.shape[1]) if rest.shape[1] else ([], 0)
            if n_pending:
                yield np.ascontiguousarray(np.concatenate(pending, axis=1))
        finally:
            self.close()


def decode(path: PathLike, sample_rate: Optional[int] = None, channels: Optional[int] = 2) -> np.ndarray:
    """Decode a whole file to float32 [C, T] (see :class:`AudioReader` for the arguments)."""
    with AudioReader(path, sample_rate=sample_rate, channels=channels) as reader:
        blocks = list(reader)
        n_ch = reader.channels
    if not blocks:
        return np.zeros((n_ch, 0), dtype=np.float32)
    return np.concatenate(blocks, axis=1)


# --------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------


def _format_for(path: Path, fmt: Optional[str]) -> str:
    name = (fmt or path.suffix.lstrip(".")).lower()
    name = _SUFFIX_ALIASES.get(name, name)
    if name not in FORMATS:
        raise AudioEncodeError(
            f"unsupported output format {name or '(none)'!r}", path=path,
            hint=f"use one of: {', '.join(FORMATS)}")
    return name


class AudioWriter:
    """Streaming, atomic encoder: ``with AudioWriter(...) as w: w.write(block)``.

    Args:
        path: the target file; its folder is created if missing.
        sample_rate: rate of the blocks given to :meth:`write`.
        channels: C of the blocks (1 or 2 for the lossy formats).
        fmt: one of :data:`FORMATS` (default: from the suffix).
        bit_depth: WAV 16, 24 or 32 (float); FLAC 16 or 24. Default 16.
        bitrate: bits per second for MP3 / Opus / M4A (defaults 320k / 192k / 256k).
        finish: called with the temporary file once it is complete, before it is renamed
            onto `path` (tags.py writes the stem's tags there, so no untagged stem appears).

    Blocks are float32 [C, t] (a 1-D array is accepted for mono). Nothing
    appears at `path` until the writer closes cleanly.
    """

    def __init__(self, path: PathLike, sample_rate: int, channels: int, fmt: Optional[str] = None,
                 bit_depth: Optional[int] = None, bitrate: Optional[int] = None,
                 finish: Optional[Callable[[Path], None]] = None):
        self.path = Path(path)
        self._finish = finish
        self.format = _format_for(self.path, fmt)
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        if self.sample_rate <= 0 or self.channels <= 0:
            raise AudioEncodeError("sample rate and channel count must be positive", path=self.path)
        depths = _BIT_DEPTHS.get(self.format)
        if depths is None:
            if bit_depth is not None:
                raise AudioEncodeError(f"{self.format} has no bit depth setting", path=self.path,
                                       hint="use --bitrate for lossy formats")
        elif bit_depth is None:
            bit_depth = depths[0]
        elif bit_depth not in depths:
            raise AudioEncodeError(f"{self.format} cannot be written with {bit_depth}-bit samples",
                                   path=self.path, hint=f"use one of {', '.join(map(str, depths))}")
        self.bit_depth = bit_depth
        if self.format in _LOSSY:
            self.bitrate = int(bitrate or _DEFAULT_BITRATE[self.format])
            if self.channels > 2:
                raise AudioEncodeError(f"{self.format} output supports 1 or 2 channels, not {self.channels}",
                                       path=self.path)
        else:
            self.bitrate = None
        self.frames_written = 0
        self._tmp: Optional[Path] = None
        self._sf = None  # soundfile handle (wav/flac)
        self._av = None  # (container, stream) for lossy formats
        self._pending: list[np.ndarray] = []
        self._n_pending = 0
        self._codec_rate = self.sample_rate
        self._resampler: Optional[Resampler] = None
        self._pts = 0
        self._closed = False
        self._open()

    # -- life cycle --------------------------------------------------------

    def __enter__(self) -> "AudioWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _open(self) -> None:
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = atomic.temporary_beside(self.path, ".part")
        except OSError as exc:
            raise AudioEncodeError(f"cannot create a file in {folder} ({exc.strerror or exc})",
                                   path=self.path, hint="check the output folder and its permissions") from None
        self._tmp = tmp
        try:
            if self.format in _LOSSY:
                self._open_lossy()
            else:
                self._open_soundfile()
        except BaseException:
            self.abort()
            raise

    def _open_soundfile(self) -> None:
        import soundfile as sf

        subtype = {16: "PCM_16", 24: "PCM_24", 32: "FLOAT"}[self.bit_depth]
        container = {"wav": "WAV", "flac": "FLAC"}[self.format]
        try:
            self._sf = sf.SoundFile(_native_name(self._tmp), mode="w", samplerate=self.sample_rate,
                                    channels=self.channels, subtype=subtype, format=container)
        except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
            raise AudioEncodeError(f"cannot open {self.format} encoder ({exc})", path=self.path) from None

    def _open_lossy(self) -> None:
        av = _av()
        codec, sample_fmt, muxer = _LOSSY[self.format]
        rates = _ENCODER_RATES[self.format]
        if self.sample_rate not in rates:
            # Nearest rate the encoder takes, preferring a higher one.
            higher = [r for r in rates if r >= self.sample_rate]
            self._codec_rate = higher[0] if higher else rates[-1]
            self._resampler = Resampler(self.sample_rate, self._codec_rate, self.channels)
        options = {}
        if self.format == "m4a":
            # Edit-list durations are written in the movie timescale; at the
            # sample rate they are sample-exact, so the decoder can cut the padding.
            options["movie_timescale"] = str(self._codec_rate)
        try:
            container = av.open(os.fspath(self._tmp), mode="w", format=muxer, options=options)
            stream = container.add_stream(codec, rate=self._codec_rate)
            stream.layout = "mono" if self.channels == 1 else "stereo"
            stream.format = sample_fmt
            stream.bit_rate = self.bitrate
            stream.codec_context.open()
        except av.FFmpegError as exc:
            raise AudioEncodeError(f"cannot open {self.format} encoder ({_ffmpeg_reason(exc)})",
                                   path=self.path) from None
        self._av = (container, stream)
        self._frame_size = stream.codec_context.frame_size or 1024

    def abort(self) -> None:
        """Drop everything written so far; the target path is not touched."""
        self._closed = True
        if self._sf is not None:
            try:
                self._sf.close()
            except Exception:
                pass
            self._sf = None
        if self._av is not None:
            try:
                self._av[0].close()
            except Exception:
                pass
            self._av = None
        if self._tmp is not None:
            atomic.discard(self._tmp)
            self._tmp = None

    def close(self) -> None:
        """Finish encoding and move the file onto its target path."""
        if self._closed:
            return
        try:
            if self._sf is not None:
                self._sf.close()
                self._sf = None
            if self._av is not None:
                if self._resampler is not None:
                    self._queue(self._resampler.flush())
                self._encode_pending(final=True)
                container, stream = self._av
                for packet in stream.encode(None):
                    container.mux(packet)
                container.close()
                self._av = None
            if self._finish is not None:
                self._finish(self._tmp)
            atomic.commit(self._tmp, self.path)
            self._tmp = None
            self._closed = True
        except BaseException as exc:
            self.abort()
            if isinstance(exc, (AudioEncodeError, KeyboardInterrupt, SystemExit)):
                raise
            raise AudioEncodeError(f"could not finish writing ({exc})", path=self.path) from None

    # -- writing -----------------------------------------------------------

    def write(self, block: np.ndarray) -> None:
        """Append samples [C, t] (float, nominally in [-1, 1])."""
        if self._closed:
            raise AudioEncodeError("writer is already closed", path=self.path)
        try:
            self._write(block)
        except BaseException:
            self.abort()
            raise

    def _write(self, block) -> None:
        data = np.asarray(block, dtype=np.float32)
        if data.ndim == 1:
            data = data[None, :]
        if data.ndim != 2 or data.shape[0] != self.channels:
            raise AudioEncodeError(f"expected a block shaped [{self.channels}, t], got {list(data.shape)}",
                                   path=self.path)
        if not np.isfinite(data).all():
            raise AudioEncodeError("audio contains NaN or infinite samples", path=self.path,
                                   hint="the separation produced invalid values; try fp32 precision or the CPU")
        if not data.shape[1]:
            return
        self.frames_written += data.shape[1]
        if self._sf is not None:
            try:
                self._sf.write(self._to_pcm(data).T)  # soundfile takes [t, C]
            except RuntimeError as exc:  # soundfile.LibsndfileError: libsndfile keeps no errno
                raise AudioEncodeError(
                    f"writing failed ({exc}; disk full, file size limit, or the folder removed?)",
                    path=self.path, hint="check the free space and the output folder, then run again to resume",
                ) from None
        else:
            if self._resampler is not None:
                data = self._resampler.process(data)
            self._queue(data)
            self._encode_pending(final=False)

    def _to_pcm(self, data: np.ndarray) -> np.ndarray:
        """Float [C, t] -> what soundfile should store, clipped (never wrapped)."""
        if self.bit_depth == 32:
            return data
        if self.bit_depth == 16:
            # Scale by 2^15 so that 16-bit input round-trips exactly; clip to the int16 range.
            return np.clip(np.round(data * 32768.0), -32768, 32767).astype(np.int16)
        # 24-bit: soundfile keeps the top 24 bits of int32 samples.
        ints = np.clip(np.round(data.astype(np.float64) * 8388608.0), -8388608, 8388607).astype(np.int32)
        return ints << 8

    def _queue(self, data: np.ndarray) -> None:
        if data.shape[1]:
            self._pending.append(data)
            self._n_pending += data.shape[1]

    def _encode_pending(self, final: bool) -> None:
        av = _av()
        container, stream = self._av
        size = self._frame_size
        if not self._n_pending or (self._n_pending < size and not final):
            return
        joined = np.concatenate(self._pending, axis=1)
        n_full = (joined.shape[1] // size) * size
        stop = joined.shape[1] if final else n_full
        layout = "mono" if self.channels == 1 else "stereo"
        sample_fmt = _LOSSY[self.format][1]
        planar = sample_fmt.endswith("p")
        try:
            for start in range(0, stop, size):
                piece = joined[:, start:min(start + size, stop)]
                if planar:
                    arr = np.ascontiguousarray(piece)  # [C, n]
                else:
                    arr = np.ascontiguousarray(piece.T).reshape(1, -1)  # interleaved [1, n * C]
                frame = av.AudioFrame.from_ndarray(arr, format=sample_fmt, layout=layout)
                frame.sample_rate = self._codec_rate
                frame.pts = self._pts
                frame.time_base = Fraction(1, self._codec_rate)
                self._pts += piece.shape[1]
                for packet in stream.encode(frame):
                    container.mux(packet)
        except av.FFmpegError as exc:
            raise AudioEncodeError(f"{self.format} encoding failed ({_ffmpeg_reason(exc)})", path=self.path) from None
        rest = joined[:, stop:]
        self._pending = [rest] if rest.shape[1] else []
        self._n_pending = rest.shape[1]


def _native_name(path: Path):
    """`path` as soundfile can open it: str, or bytes when the name is not valid in the file-system
    encoding (a Latin-1 name on a UTF-8 system arrives with surrogate escapes, which soundfile
    cannot encode)."""
    name = os.fspath(path)
    try:
        name.encode(sys.getfilesystemencoding())
    except UnicodeEncodeError:
        return os.fsencode(name)
    return name


def encode(path: PathLike, audio: np.ndarray, sample_rate: int, fmt: Optional[str] = None,
           bit_depth: Optional[int] = None, bitrate: Optional[int] = None) -> None:
    """Write float32 audio [C, T] to `path` atomically (see :class:`AudioWriter`)."""
    data = np.asarray(audio, dtype=np.float32)
    if data.ndim == 1:
        data = data[None, :]
    with AudioWriter(path, sample_rate, data.shape[0], fmt=fmt, bit_depth=bit_depth, bitrate=bitrate) as writer:
        step = DEFAULT_BLOCK_FRAMES
        for start in range(0, data.shape[1], step):
            writer.write(data[:, start:start + step])
