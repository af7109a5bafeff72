"""Tests for unmixcli.audio: decoding, channel mapping, resampling, encoding, errors.

Every fixture is generated here: short tones and noise, encoded with PyAV in
each format (as another program would have written them), plus files written
by our own AudioWriter for the round-trip tests.
"""

from __future__ import annotations

import os
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from media import pyav_write
from unmixcli import audio as A
from unmixcli.errors import AudioDecodeError, AudioEncodeError

SR = 44100


def tone_noise(n: int, sr: int = SR, channels: int = 2, seed: int = 0) -> np.ndarray:
    """A different tone per channel plus a little noise, float32 [C, n], peak < 0.5."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    rows = [0.3 * np.sin(2 * np.pi * (440.0 + 110.0 * c) * t) + 0.05 * rng.standard_normal(n)
            for c in range(channels)]
    return np.asarray(rows, dtype=np.float32)


def quantise16(x: np.ndarray) -> np.ndarray:
    return (np.round(x * 32768.0) / 32768.0).astype(np.float32)




def best_lag(ref: np.ndarray, y: np.ndarray, max_lag: int = 2500) -> int:
    """Lag of the cross-correlation peak between mono signals (positive: y is late)."""
    n = min(ref.shape[-1], y.shape[-1])
    size = 1 << int(np.ceil(np.log2(2 * n)))
    spec = np.fft.rfft(y[:n], size) * np.conj(np.fft.rfft(ref[:n], size))
    corr = np.fft.irfft(spec, size)  # corr[k] = sum_i ref[i] * y[i + k], negative k wrapped
    lags = np.r_[corr[: max_lag + 1], corr[-max_lag:]]
    best = int(np.argmax(lags))
    return best if best <= max_lag else best - 2 * max_lag - 1


def snr_db(ref: np.ndarray, y: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    return float(10 * np.log10(np.sum(ref ** 2) / np.sum((ref - y) ** 2)))


# ---------------------------------------------------------------- formats

N = 12345  # deliberately not a multiple of any codec frame size

LOSSLESS = {
    "wav": dict(codec="pcm_s16le", sample_fmt="s16"),
    "aiff": dict(codec="pcm_s16be", sample_fmt="s16"),
    "flac": dict(codec="flac", sample_fmt="s16"),
}


@pytest.mark.parametrize("ext", sorted(LOSSLESS))
def test_lossless_files_decode_exactly(tmp_path, ext):
    x = quantise16(tone_noise(N))
    path = tmp_path / f"in.{ext}"
    pyav_write(path, x, SR, **LOSSLESS[ext])
    info = A.probe(path)
    assert (info.frames, info.sample_rate, info.channels) == (N, SR, 2)
    assert info.duration == pytest.approx(N / SR)
    y = A.decode(path)
    assert y.dtype == np.float32 and y.shape == (2, N)
    np.testing.assert_array_equal(y, x)


# extension: (pyav_write arguments, allowed extra samples at the end, minimum SNR in dB)
LOSSY = {
    "mp3": (dict(codec="libmp3lame", sample_fmt="fltp", bit_rate=192_000), 0, 15),
    "m4a": (dict(codec="aac", sample_fmt="fltp", bit_rate=192_000), 0, 10),
    "opus": (dict(codec="libopus", sample_fmt="flt", bit_rate=128_000, muxer="ogg"), 0, 10),
    # FFmpeg's experimental native Vorbis encoder writes a bogus final granule
    # position, so the file itself does not record the true end (up to one frame).
    # It is also a weak encoder, hence the low SNR bar (alignment is what we check).
    "ogg": (dict(codec="vorbis", sample_fmt="fltp", codec_options={"strict": "experimental"}), 1024, 4),
    # ASF records no encoder delay: WMA cannot be sample-exact (checked separately).
    "wma": (dict(codec="wmav2", sample_fmt="fltp", bit_rate=128_000), None, 10),
}


@pytest.mark.parametrize("ext", sorted(LOSSY))
def test_lossy_files_decode_aligned(tmp_path, ext):
    kwargs, extra, min_snr = LOSSY[ext]
    sr = 48000 if ext == "opus" else SR
    n = 3 * 4800 + 77
    x = tone_noise(n, sr=sr)
    path = tmp_path / f"in.{ext}"
    pyav_write(path, x, sr, **kwargs)
    y = A.decode(path)
    lag = best_lag(x[0], y[0])
    if extra is None:
        # Same audio, shifted by at most one codec frame.
        assert abs(lag) <= 2048 and abs(y.shape[1] - n) <= 4096
    else:
        assert lag == 0
        assert n <= y.shape[1] <= n + extra
    if extra == 0:
        # Header-only estimate: exact, except m4a from other muxers (1 ms edit-list ticks).
        assert abs(A.probe(path).frames - n) <= (SR // 1000 if ext == "m4a" else 0)
    # y[k + lag] matches x[k]; compare away from the edges.
    lo, hi = 2500, min(n, y.shape[1] - lag) - 2500
    assert snr_db(x[:, lo:hi], y[:, lo + lag:hi + lag]) > min_snr


VIDEO = {
    "mp4": dict(codec="aac", sample_fmt="fltp", video="mpeg4"),
    "mkv": dict(codec="flac", sample_fmt="s16", video="mpeg4"),
    "webm": dict(codec="libopus", sample_fmt="flt", video="libvpx"),
}


@pytest.mark.parametrize("ext", sorted(VIDEO))
def test_video_containers_decode_their_audio(tmp_path, ext):
    sr = 48000
    n = 9600 + 31
    x = quantise16(tone_noise(n, sr=sr))
    path = tmp_path / f"clip.{ext}"
    pyav_write(path, x, sr, **VIDEO[ext])
    y = A.decode(path)
    assert y.shape[1] == n
    if ext == "mkv":
        np.testing.assert_array_equal(y, x)  # lossless track in a video container
    else:
        assert best_lag(x[0], y[0], max_lag=1000) == 0
        assert snr_db(x[:, 1000:n - 1000], y[:, 1000:n - 1000]) > 10


def raw_pyav_length(path: Path) -> int:
    with av.open(os.fspath(path)) as container:
        return sum(frame.samples for frame in container.decode(audio=0))


def test_which_trimming_ffmpeg_does_and_which_we_add(tmp_path):
    """FFmpeg trims MP3 (LAME header) and Opus (pre-skip, end granule) itself,
    but leaves the AAC end padding of MP4/M4A in; our decoder removes it."""
    x = tone_noise(20017)
    for fmt in ("mp3", "opus", "m4a"):
        path = tmp_path / f"t.{fmt}"
        A.encode(path, x, SR)
        expected = round(20017 * 48000 / SR) if fmt == "opus" else 20017
        raw = raw_pyav_length(path)
        if fmt == "m4a":
            assert raw > expected  # whole AAC frames
        else:
            assert raw == expected
        assert A.decode(path, channels=None).shape[1] == expected


@pytest.mark.parametrize("editlist", ["0", "1"])
def test_itunes_gapless_tag_is_honoured(tmp_path, editlist):
    """An M4A with Apple's iTunSMPB tag (priming, padding, length): with or
    without an edit list, we decode exactly the tagged length, aligned."""
    n, priming = 20017, 1024
    padding = (-(n + priming)) % 1024
    x = tone_noise(n)
    path = tmp_path / "itunes.m4a"
    out = av.open(os.fspath(path), "w", format="ipod",
                  options={"use_editlist": editlist, "movflags": "use_metadata_tags"})
    out.metadata["iTunSMPB"] = f" 00000000 {priming:08X} {padding:08X} {n:016X} 00000000 00000000"
    stream = out.add_stream("aac", rate=SR)
    stream.layout, stream.format = "stereo", "fltp"
    for start in range(0, n, 1024):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[:, start:start + 1024]), format="fltp",
                                           layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = SR, start, Fraction(1, SR)
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    out.close()
    assert raw_pyav_length(path) > n
    assert A.probe(path).frames == n
    y = A.decode(path)
    assert y.shape == (2, n)
    assert best_lag(x[0], y[0]) == 0


def test_video_without_audio_is_rejected(tmp_path):
    path = tmp_path / "silent_film.mp4"
    out = av.open(os.fspath(path), "w")
    stream = out.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    for i in range(3):
        frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
        frame.pts = i
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    out.close()
    with pytest.raises(AudioDecodeError, match="no audio stream") as err:
        A.decode(path)
    assert err.value.path == os.fspath(path) and err.value.hint
    with pytest.raises(AudioDecodeError):
        A.probe(path)


def test_probe_reports_codec_container_and_tags(tmp_path):
    path = tmp_path / "tagged.flac"
    pyav_write(path, tone_noise(4000), SR, codec="flac", sample_fmt="s16",
               metadata={"title": "Test Song", "artist": "Nobody"})
    info = A.probe(path)
    assert info.codec == "flac" and "flac" in info.container
    assert info.tags.get("title") == "Test Song" and info.tags.get("artist") == "Nobody"
    assert info.path == os.fspath(path)


# ---------------------------------------------------------------- channels


def test_mono_is_duplicated_and_stereo_averaged(tmp_path):
    x = quantise16(tone_noise(3000, channels=1))
    path = tmp_path / "mono.wav"
    pyav_write(path, x, SR, codec="pcm_s16le", sample_fmt="s16")
    assert A.probe(path).channels == 1
    y = A.decode(path)
    assert y.shape == (2, 3000)
    np.testing.assert_array_equal(y[0], x[0])
    np.testing.assert_array_equal(y[1], x[0])
    np.testing.assert_array_equal(A.decode(path, channels=None), x)

    st = quantise16(tone_noise(3000))
    spath = tmp_path / "stereo.wav"
    pyav_write(spath, st, SR, codec="pcm_s16le", sample_fmt="s16")
    np.testing.assert_allclose(A.decode(spath, channels=1)[0], st.mean(axis=0), atol=1e-7)


@pytest.mark.parametrize("layout", ["5.1", "5.1(side)"])
def test_surround_downmix_uses_itu_coefficients(tmp_path, layout):
    names = [ch.name for ch in av.AudioLayout(layout).channels]
    x = quantise16(tone_noise(2000, channels=6, seed=3))
    path = tmp_path / "surround.wav"
    pyav_write(path, x, SR, codec="pcm_s16le", sample_fmt="s16", layout=layout)
    assert A.probe(path).channels == 6
    y = A.decode(path)
    ch = {name: x[i].astype(np.float64) for i, name in enumerate(names)}
    back = "BL" if "BL" in ch else "SL"
    g = np.sqrt(0.5)
    left = ch["FL"] + g * ch["FC"] + g * ch[back]  # LFE is dropped
    right = ch["FR"] + g * ch["FC"] + g * ch[back.replace("L", "R")]
    np.testing.assert_allclose(y[0], left, atol=1e-6)
    np.testing.assert_allclose(y[1], right, atol=1e-6)


# ---------------------------------------------------------------- resampling


def test_resampling_is_accurate_and_has_the_right_length():
    n = 48000
    x = np.sin(2 * np.pi * 997 * np.arange(n) / 48000)[None].astype(np.float32)
    y = A.resample(x, 48000, 44100)
    assert y.shape == (1, 44100)
    ref = np.sin(2 * np.pi * 997 * np.arange(44100) / 44100)
    assert snr_db(ref[1000:-1000], y[0, 1000:-1000]) >= 80
    # Upsampling, and lengths that need rounding.
    up = A.resample(x[:, :1001], 48000, 44100)
    assert up.shape[1] == round(1001 * 44100 / 48000)
    z = A.resample(A.resample(x, 48000, 44100), 44100, 48000)
    assert z.shape == x.shape
    assert snr_db(x[0, 1000:-1000], z[0, 1000:-1000]) >= 80


def test_resampling_removes_content_above_the_new_nyquist():
    n = 48000
    t = np.arange(n) / 48000
    x = np.sin(2 * np.pi * 23000 * t)[None].astype(np.float32)  # above 22.05 kHz
    y = A.resample(x, 48000, 44100)
    assert np.sqrt(np.mean(y[0, 1000:-1000] ** 2)) < 1e-3


@pytest.mark.parametrize("rates", [(48000, 44100), (22050, 44100), (44100, 32000)])
def test_streaming_resampler_is_bit_identical(rates):
    x = tone_noise(20000, sr=rates[0])
    whole = A.resample(x, *rates)
    rng = np.random.default_rng(1)
    for sizes in ([1000] * 20, rng.integers(1, 5000, size=40).tolist()):
        rs = A.Resampler(rates[0], rates[1], 2)
        parts, start = [], 0
        for size in sizes:
            parts.append(rs.process(x[:, start:start + size]))
            start += size
        parts.append(rs.process(x[:, start:]))
        parts.append(rs.flush())
        np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)


def test_reader_blocks_match_whole_decode(tmp_path):
    x = tone_noise(30011, sr=48000)
    path = tmp_path / "long.flac"
    pyav_write(path, x, 48000, codec="flac", sample_fmt="s16")
    whole = A.decode(path, sample_rate=SR)
    assert whole.shape == (2, round(30011 * SR / 48000))
    for block in (997, 4096, 1 << 16):
        with A.AudioReader(path, sample_rate=SR, block_frames=block) as reader:
            assert reader.sample_rate == SR and reader.frames == whole.shape[1]
            blocks = list(reader)
        assert all(b.shape[1] == block for b in blocks[:-1]) and 0 < blocks[-1].shape[1] <= block
        np.testing.assert_array_equal(np.concatenate(blocks, axis=1), whole)
    # Native rate, too, and the resampled content is right.
    np.testing.assert_array_equal(A.decode(path), quantise16(x))
    ref = A.resample(quantise16(x), 48000, SR)
    np.testing.assert_array_equal(whole, ref)


# ---------------------------------------------------------------- encoding


@pytest.mark.parametrize("fmt,depth,subtype", [
    ("wav", 16, "PCM_16"), ("wav", 24, "PCM_24"), ("wav", 32, "FLOAT"),
    ("flac", 16, "PCM_16"), ("flac", 24, "PCM_24"),
])
def test_pcm_encoding_round_trips(tmp_path, fmt, depth, subtype):
    x = tone_noise(5000)
    if depth == 16:
        x = quantise16(x)
    elif depth == 24:
        x = (np.round(x.astype(np.float64) * 2 ** 23) / 2 ** 23).astype(np.float32)
    path = tmp_path / f"out.{fmt}"
    A.encode(path, x, SR, bit_depth=depth)
    assert sf.info(os.fspath(path)).subtype == subtype
    np.testing.assert_array_equal(A.decode(path), x)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


@pytest.mark.parametrize("fmt,depth", [("wav", 16), ("wav", 24), ("flac", 24)])
def test_integer_output_clips_instead_of_wrapping(tmp_path, fmt, depth):
    x = np.array([[1.5, -1.5, 1.0, -1.0, 0.25]], dtype=np.float32)
    path = tmp_path / f"loud.{fmt}"
    A.encode(path, x, SR, bit_depth=depth)
    full = 2 ** (depth - 1)
    ints = sf.read(os.fspath(path), dtype="int32")[0] >> (32 - depth)
    assert ints.tolist() == [full - 1, -full, full - 1, -full, full // 4]


def test_nan_raises_and_writes_nothing(tmp_path):
    x = tone_noise(3000)
    x[1, 1234] = np.nan
    for fmt in ("wav", "mp3"):
        path = tmp_path / f"bad.{fmt}"
        with pytest.raises(AudioEncodeError, match="NaN") as err:
            A.encode(path, x, SR)
        assert err.value.path == os.fspath(path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["mp3", "opus", "m4a"])
def test_lossy_round_trip_is_aligned_and_same_length(tmp_path, fmt):
    n = 20000 + 17
    x = tone_noise(n)
    path = tmp_path / f"stem.{fmt}"
    with A.AudioWriter(path, SR, 2) as writer:
        for start in range(0, n, 3000):  # blocks that do not match any codec frame size
            writer.write(x[:, start:start + 3000])
    y = A.decode(path, sample_rate=SR)
    assert y.shape == (2, n)
    assert best_lag(x[0], y[0]) == 0 and best_lag(x[1], y[1]) == 0
    assert snr_db(x[:, 2000:-2000], y[:, 2000:-2000]) > 12
    if fmt == "opus":
        assert A.probe(path).sample_rate == 48000  # resampled internally, documented


def test_lossy_mono_and_bitrate(tmp_path):
    x = tone_noise(30000, channels=1)
    small, big = tmp_path / "small.mp3", tmp_path / "big.mp3"
    A.encode(small, x, SR, bitrate=64_000)
    A.encode(big, x, SR, bitrate=320_000)
    assert small.stat().st_size < big.stat().st_size
    info = A.probe(small)
    assert info.channels == 1 and info.frames == 30000
    assert A.decode(small, channels=None).shape == (1, 30000)


def test_writer_is_atomic_on_exception(tmp_path):
    target = tmp_path / "stem.flac"
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with A.AudioWriter(target, SR, 2) as writer:
                writer.write(tone_noise(2000))
                assert [p.name for p in tmp_path.iterdir()] != []  # the temporary file exists meanwhile
                assert not target.exists()
                raise exc
        assert list(tmp_path.iterdir()) == []
    # A failed rewrite leaves an existing file untouched.
    A.encode(target, np.zeros((2, 100), np.float32), SR)
    before = target.read_bytes()
    with pytest.raises(RuntimeError):
        with A.AudioWriter(target, SR, 2, fmt="flac") as writer:
            writer.write(tone_noise(500))
            raise RuntimeError("interrupted")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["stem.flac"]


def test_writer_rejects_bad_arguments(tmp_path):
    with pytest.raises(AudioEncodeError, match="unsupported output format"):
        A.AudioWriter(tmp_path / "x.xyz", SR, 2)
    with pytest.raises(AudioEncodeError, match="bit"):
        A.AudioWriter(tmp_path / "x.flac", SR, 2, bit_depth=32)
    with A.AudioWriter(tmp_path / "x.wav", SR, 2) as writer:
        with pytest.raises(AudioEncodeError, match=r"\[2, t\]"):
            writer.write(np.zeros((3, 10), np.float32))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- bad input


def test_bad_inputs_raise_decode_errors(tmp_path):
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    noise = tmp_path / "noise.wav"
    noise.write_bytes(np.random.default_rng(0).bytes(5000))
    folder = tmp_path / "folder.wav"
    folder.mkdir()
    cases = {
        tmp_path / "missing.flac": "not found",
        empty: "empty",
        noise: "not a readable",
        folder: "folder",
    }
    for path, cause in cases.items():
        for call in (A.probe, A.decode):
            with pytest.raises(AudioDecodeError, match=cause) as err:
                call(path)
            assert err.value.path == os.fspath(path)
            assert err.value.hint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.mp3", "folder.wav", "noise.wav"]


def test_unreadable_file_raises_decode_error(tmp_path, monkeypatch):
    path = tmp_path / "locked.wav"
    pyav_write(path, tone_noise(1000), SR, codec="pcm_s16le", sample_fmt="s16")
    if os.geteuid() == 0:
        # root reads anything: simulate what chmod 000 does for a normal user.
        def denied(*args, **kwargs):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr(A, "open", denied, raising=False)
    else:
        path.chmod(0)
    with pytest.raises(AudioDecodeError, match="permission denied") as err:
        A.decode(path)
    assert err.value.path == os.fspath(path)


def test_truncated_file_decodes_what_is_there_with_a_warning(tmp_path):
    x = quantise16(tone_noise(20000))
    path = tmp_path / "full.wav"
    pyav_write(path, x, SR, codec="pcm_s16le", sample_fmt="s16")
    data = path.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2])
    # FFmpeg sizes a WAV's data by the file, so a cut WAV is just shorter.
    y = A.decode(cut)
    assert 0 < y.shape[1] < 20000
    np.testing.assert_array_equal(y, x[:, : y.shape[1]])
    # FLAC's header records the length: the cut is noticed and reported.
    flac = tmp_path / "full.flac"
    A.encode(flac, x, SR)
    data_flac = flac.read_bytes()
    cut_flac = tmp_path / "cut.flac"
    cut_flac.write_bytes(data_flac[: len(data_flac) // 2])
    with pytest.warns(A.AudioTruncatedWarning, match="cut.flac"):
        y = A.decode(cut_flac)
    assert 0 < y.shape[1] < 20000
    np.testing.assert_array_equal(y, x[:, : y.shape[1]])
    # Nothing decodable left at all: a clean error.
    stub = tmp_path / "stub.wav"
    stub.write_bytes(data[:44])
    with pytest.raises(AudioDecodeError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        A.decode(stub)


def test_truncated_compressed_file(tmp_path):
    x = tone_noise(30000)
    path = tmp_path / "full.mp3"
    A.encode(path, x, SR)
    data = path.read_bytes()
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.warns(A.AudioTruncatedWarning):
        y = A.decode(cut)
    assert 0 < y.shape[1] < 30000
    assert best_lag(x[0, :y.shape[1]], y[0]) == 0
