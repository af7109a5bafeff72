"""RoFormer models end to end: community checkpoint files, registry entries, the
fake Hub, the engine's MSST-style chunking and karaoke through the CLI.

Checkpoints are written the way the community publishes them: `torch.save` of a
model's state dict, beside a Music-Source-Separation-Training (MSST) YAML config
that uses `!!python/tuple`. Models are tiny (dim 32, depth 1, 512-point STFT).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from fakehub import registry_entry, write_registry
from unmixcli import cli, families as checkpoints
from unmixcli.engine import EngineOptions, separate_stream, separate_tensor
from unmixcli.errors import CheckpointError
from unmixcli.models.roformer import BSRoformer, MelBandRoformer
from unmixcli.families.roformer import load_roformer

RATE = 44100
CHUNK = 8192  # audio.chunk_size of the test configs (0.19 s)
CPU = torch.device("cpu")

MEL_MODEL = dict(dim=32, depth=1, stereo=True, num_stems=1, time_transformer_depth=1, freq_transformer_depth=1,
                 num_bands=8, dim_head=16, heads=2, sample_rate=RATE, stft_n_fft=512, stft_hop_length=128,
                 stft_win_length=512, mask_estimator_depth=1)
BS_BANDS = (8,) * 8 + (16,) * 4 + (32,) * 2 + (65,)  # 257 bins of a 512-point STFT
assert sum(BS_BANDS) == 257
BS_MODEL = dict(dim=32, depth=1, stereo=True, num_stems=2, time_transformer_depth=1, freq_transformer_depth=1,
                freqs_per_bands=BS_BANDS, dim_head=16, heads=2, stft_n_fft=512, stft_hop_length=128,
                stft_win_length=512, mask_estimator_depth=1)

MEL_YAML = f"""\
audio:
  chunk_size: {CHUNK}
  num_channels: 2
  sample_rate: {RATE}
model:
  dim: 32
  depth: 1
  stereo: true
  num_stems: 1
  time_transformer_depth: 1
  freq_transformer_depth: 1
  num_bands: 8
  dim_head: 16
  heads: 2
  attn_dropout: 0
  ff_dropout: 0
  flash_attn: true
  sample_rate: {RATE}
  stft_n_fft: 512
  stft_hop_length: 128
  stft_win_length: 512
  mask_estimator_depth: 1
  multi_stft_resolutions_window_sizes: !!python/tuple
  - 512
  - 256
training:
  instruments:
  - vocals
  - other
  target_instrument: vocals
inference:
  batch_size: 1
  num_overlap: 2
"""

BS_YAML = f"""\
audio:
  chunk_size: {CHUNK}
  sample_rate: {RATE}
model:
  dim: 32
  depth: 1
  stereo: true
  num_stems: 2
  time_transformer_depth: 1
  freq_transformer_depth: 1
  freqs_per_bands: !!python/tuple
{"".join(f"  - {b}{chr(10)}" for b in BS_BANDS)}  dim_head: 16
  heads: 2
  stft_n_fft: 512
  stft_hop_length: 128
  stft_win_length: 512
  mask_estimator_depth: 1
training:
  instruments: [Vocals, Instrumental]
  target_instrument: null
inference:
  num_overlap: 4
"""


def random_model(cls, cfg, seed):
    """A tiny model with random weights; norm gains perturbed so that they matter."""
    torch.manual_seed(seed)
    model = cls(**cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.mul_(1 + 0.2 * torch.randn_like(p))
    return model


def ckpt_bytes(model) -> bytes:
    """The checkpoint as the community writes it: torch.save of the plain state dict."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def mel_model():
    return random_model(MelBandRoformer, MEL_MODEL, seed=1)


@pytest.fixture(scope="module")
def mel_files(mel_model):
    return {"vocals_mel.ckpt": ckpt_bytes(mel_model), "config_vocals_mel.yaml": MEL_YAML.encode()}


@pytest.fixture(scope="module")
def mel_bag(tmp_path_factory, mel_files):
    folder = tmp_path_factory.mktemp("mel")
    for name, data in mel_files.items():
        (folder / name).write_bytes(data)
    return load_roformer(folder / "vocals_mel.ckpt", folder / "config_vocals_mel.yaml")


def write_song(path: Path, seconds: float = 0.6, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    left = 0.3 * (np.sin(2 * np.pi * 220 * t) + 0.3 * rng.standard_normal(t.size))
    right = 0.3 * (np.sin(2 * np.pi * 330 * t) + 0.3 * rng.standard_normal(t.size))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.stack([left, right], 1).astype(np.float32), RATE, subtype="FLOAT")
    return path


def read(path: Path) -> np.ndarray:
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    assert rate == RATE
    return data.T  # [C, T]


def run(args):
    return CliRunner().invoke(cli.app, [str(a) for a in args], catch_exceptions=False)


def noise(length: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(0.3 * np.random.default_rng(seed).standard_normal((2, length)).astype(np.float32))


# --------------------------------------------------------------------------- MSST chunking


def msst_demix(model, mix: torch.Tensor, chunk: int, num_overlap: int) -> torch.Tensor:
    """What MSST's `demix` computes for a RoFormer, written out plainly (batch size 1).

    mix [C, L] -> [S, C, L]. The track is mirrored by `chunk - step` samples at both
    ends when long enough, cut every `step` samples into chunks padded to full
    length (mirrored if over half full, zeros otherwise), and the outputs are
    blended with a flat window with linear fades of chunk // 10 (none at the start
    of the first chunk and the end of the last).
    """
    step = chunk // num_overlap
    border = chunk - step
    fade = chunk // 10
    length = mix.shape[-1]
    mirrored = length > 2 * border and border > 0
    x = F.pad(mix[None], (border, border), mode="reflect")[0] if mirrored else mix
    total = x.shape[-1]
    base = torch.ones(chunk)
    base[:fade] = torch.linspace(0, 1, fade)
    base[-fade:] = torch.linspace(1, 0, fade)
    acc = None
    weight = torch.zeros(total)
    for start in range(0, total, step):
        part = x[:, start:start + chunk]
        n = part.shape[-1]
        part = F.pad(part[None], (0, chunk - n), mode="reflect" if n > chunk // 2 else "constant")
        with torch.inference_mode():
            out = model(part)[0]  # [S, C, chunk]
        if acc is None:
            acc = torch.zeros(out.shape[0], out.shape[1], total)
        window = base.clone()
        if start == 0:
            window[:fade] = 1
        elif start + step >= total:
            window[-fade:] = 1
        acc[..., start:start + n] += out[..., :n] * window[:n]
        weight[start:start + n] += window[:n]
    est = acc / weight
    return est[..., border:border + length] if mirrored else est


@pytest.mark.parametrize("length, num_overlap", [
    (3 * CHUNK + 1234, 2),  # mirrored ends, a partial last chunk over half full
    (2 * CHUNK + 300, 4),   # step = chunk / 4: several chunks run past the end, some zero-filled
    (5000, 2),              # shorter than 2 * border: no mirroring, one chunk filled by reflection
    (3000, 2),              # one chunk under half full: filled with zeros
])
def test_engine_matches_msst_demix(mel_bag, length, num_overlap):
    mix = noise(length, seed=length)
    options = EngineOptions(overlap=1 - 1 / num_overlap)
    ours = separate_tensor(mel_bag, mix, None, options, CPU)["vocals"]
    expected = msst_demix(mel_bag.models[0], mix, CHUNK, num_overlap)[0]
    assert ours.shape == mix.shape
    scale = float(expected.abs().max())
    assert float((ours - expected).abs().max()) <= 1e-5 * scale


def test_batches_give_what_msst_gives_one_chunk_at_a_time(mel_bag):
    """MSST decides the first/last-chunk fades once per batch; we do it per chunk, which
    equals MSST with batch_size 1 whatever our batch size."""
    mix = noise(4 * CHUNK + 999, seed=11)
    expected = msst_demix(mel_bag.models[0], mix, CHUNK, 2)[0]
    ours = separate_tensor(mel_bag, mix, None, EngineOptions(batch_size=3), CPU)["vocals"]
    assert float((ours - expected).abs().max()) <= 1e-5 * float(expected.abs().max())


def test_streaming_in_small_blocks_is_the_same_and_starts_early(mel_bag):
    mix = noise(6 * CHUNK + 777, seed=7)
    whole = separate_tensor(mel_bag, mix, None, EngineOptions(), CPU)["vocals"]
    consumed = []

    def blocks():
        for i in range(0, mix.shape[1], 1000):
            consumed.append(i)
            yield mix[:, i:i + 1000].numpy()

    pieces, consumed_at_first_output = [], None
    for out in separate_stream(mel_bag, blocks(), mix.shape[1], None, EngineOptions(), CPU):
        if consumed_at_first_output is None:
            consumed_at_first_output = len(consumed)
        pieces.append(out["vocals"])
    streamed = torch.cat(pieces, dim=1)
    assert streamed.shape == mix.shape
    torch.testing.assert_close(streamed, whole, atol=1e-6, rtol=0)
    # Output starts long before the input ends: the stream holds a few chunks, not the track.
    assert consumed_at_first_output < len(consumed) // 2


def test_roformer_bag_recipe(mel_bag):
    assert mel_bag.sources == ["vocals"]
    assert (mel_bag.window, mel_bag.normalize, mel_bag.overlap) == ("fade", False, 0.5)
    assert mel_bag.extra["chunk_size"] == CHUNK and mel_bag.extra["num_overlap"] == 2
    assert round(mel_bag.models[0].segment * RATE) == CHUNK


# --------------------------------------------------------------------------- local paths


def test_local_folder_with_checkpoint_and_config(tmp_path, mel_files, mel_model):
    for name, data in mel_files.items():
        (tmp_path / name).write_bytes(data)
    bag = checkpoints.load_local(tmp_path)
    assert bag.sources == ["vocals"]
    state = bag.models[0].state_dict()
    for key, value in mel_model.state_dict().items():
        torch.testing.assert_close(state[key], value, atol=0, rtol=0)


def test_local_ckpt_path_finds_its_config_by_stem(tmp_path):
    bs = random_model(BSRoformer, BS_MODEL, seed=2)
    (tmp_path / "karaoke.ckpt").write_bytes(ckpt_bytes(bs))
    (tmp_path / "karaoke.yaml").write_text(BS_YAML)
    (tmp_path / "unrelated.yaml").write_text(MEL_YAML)  # another config beside it is ignored
    bag = checkpoints.load_local(tmp_path / "karaoke.ckpt")
    assert bag.sources == ["Vocals", "Instrumental"]
    assert isinstance(bag.models[0], BSRoformer)
    assert bag.overlap == 0.75 and bag.window == "fade"


def test_lone_checkpoint_names_the_missing_config(tmp_path, mel_files):
    (tmp_path / "vocals_mel.ckpt").write_bytes(mel_files["vocals_mel.ckpt"])
    with pytest.raises(CheckpointError) as err:
        checkpoints.load_local(tmp_path / "vocals_mel.ckpt")
    assert "config" in err.value.message and "vocals_mel.yaml" in err.value.hint
    with pytest.raises(CheckpointError):  # the folder form says the same
        checkpoints.load_local(tmp_path)


def test_ambiguous_configs_are_refused(tmp_path, mel_files):
    (tmp_path / "model.ckpt").write_bytes(mel_files["vocals_mel.ckpt"])
    (tmp_path / "a.yaml").write_text(MEL_YAML)
    (tmp_path / "b.yaml").write_text(BS_YAML)
    with pytest.raises(CheckpointError) as err:
        checkpoints.load_local(tmp_path / "model.ckpt")
    assert "a.yaml" in err.value.message and "model.yaml" in err.value.hint


# --------------------------------------------------------------------------- fake Hub + CLI


def roformer_entry(name, repo, files, pin_sha256=False, **fields):
    entry = registry_entry(name, repo, files, pin_sha256=pin_sha256, stems=["vocals"], family="roformer",
                           arch="MelBandRoformer", checkpoint="weights/vocals_mel.ckpt",
                           config="weights/config_vocals_mel.yaml")
    del entry["bag"]
    entry.update(fields)
    return entry


def test_registry_roformer_from_the_fake_hub_then_offline(tmp_path, fake_hub, mel_files, mel_bag):
    files = {f"weights/{k}": v for k, v in mel_files.items()}  # nested repo paths, as some repos have
    fake_hub.add_repo("someone/TinyMel", files)
    registry = write_registry(tmp_path / "reg.yaml",
                              {"tiny-mel": roformer_entry("tiny-mel", "someone/TinyMel", files, pin_sha256=True)})
    song = write_song(tmp_path / "s.wav")
    result = run([song, "-m", "tiny-mel", "--registry", registry, "-o", tmp_path / "out", "-q", "--bit-depth", "32"])
    assert result.exit_code == 0, result.output
    track = tmp_path / "out" / "tiny-mel" / "s"
    assert sorted(p.name for p in track.iterdir()) == ["vocals.wav"]  # a one-stem model writes its stem only
    vocals = read(track / "vocals.wav")
    mix = torch.from_numpy(read(song))
    expected = separate_tensor(mel_bag, mix, None, EngineOptions(), CPU)["vocals"].numpy()
    assert vocals.shape == mix.shape
    np.testing.assert_allclose(vocals, expected, atol=1e-5)

    fake_hub.stop()  # the cached copy must be enough
    result = run([song, "-m", "tiny-mel", "--registry", registry, "-o", tmp_path / "out2", "-q", "--offline",
                  "--bit-depth", "32"])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(read(tmp_path / "out2" / "tiny-mel" / "s" / "vocals.wav"), vocals)


def test_inline_config_and_registry_stem_spelling(tmp_path, fake_hub):
    bs = random_model(BSRoformer, BS_MODEL, seed=3)
    files = {"kara.ckpt": ckpt_bytes(bs)}
    fake_hub.add_repo("someone/Kara", files)
    import yaml

    inline = yaml.load(BS_YAML, Loader=__import__("unmixcli.families.msst", fromlist=["x"])._ConfigLoader)
    inline["model"]["freqs_per_bands"] = list(inline["model"]["freqs_per_bands"])  # registries are plain YAML
    entry = registry_entry("kara", "someone/Kara", files, stems=["vocals", "instrumental"], family="roformer",
                           arch="BSRoformer", checkpoint="kara.ckpt", config=inline)
    del entry["bag"]
    registry = write_registry(tmp_path / "reg.yaml", {"kara": entry})
    from unmixcli.families import load_model

    bag = load_model("kara", registry_files=[registry])
    assert bag.name == "kara" and bag.sources == ["vocals", "instrumental"]  # the registry's spelling
    assert bag.extra["num_overlap"] == 4

    wrong = dict(entry, stems=["lead", "backing"])
    registry = write_registry(tmp_path / "reg2.yaml", {"kara": wrong})
    with pytest.raises(CheckpointError) as err:
        load_model("kara", registry_files=[registry])
    assert "Vocals" in err.value.message and "lead" in err.value.message


def test_karaoke_with_a_vocals_only_model(tmp_path, mel_files):
    folder = tmp_path / "model"
    folder.mkdir()
    for name, data in mel_files.items():
        (folder / name).write_bytes(data)
    song = write_song(tmp_path / "k.wav", seed=3)
    out = tmp_path / "out"
    result = run([song, "-m", folder, "-o", out, "-q", "--karaoke", "--bit-depth", "32"])
    assert result.exit_code == 0, result.output
    track = out / "vocals_mel" / "k"
    assert sorted(p.name for p in track.iterdir()) == ["instrumental.wav", "vocals.wav"]
    mix, vocals, inst = read(song), read(track / "vocals.wav"), read(track / "instrumental.wav")
    assert float(np.abs(vocals).max()) > 1e-3  # the model did produce something
    np.testing.assert_allclose(vocals + inst, mix, atol=1e-5)  # instrumental = mix - vocals

    result = run([song, "-m", folder, "-o", out, "--karaoke", "--instrumental", "sum", "--overwrite"])
    assert result.exit_code == 2 and "residual" in result.output


def test_stems_validation_and_dry_run_for_a_one_stem_model(tmp_path, mel_files):
    folder = tmp_path / "model"
    folder.mkdir()
    for name, data in mel_files.items():
        (folder / name).write_bytes(data)
    song = write_song(tmp_path / "d.wav")
    result = run([song, "-m", folder, "-o", tmp_path / "out", "--stems", "drums"])
    assert result.exit_code == 2 and "vocals" in result.output  # the hint names what the model gives
    result = run([song, "-m", folder, "-o", tmp_path / "out", "--stems", "vocals", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "vocals" in result.output and "drums" not in result.output
    result = run([song, "-m", folder, "-o", tmp_path / "out", "--karaoke", "--dry-run", "--json"])
    plan = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert sorted(plan[0]["outputs"]) == ["instrumental", "vocals"]
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


# --------------------------------------------------------------------------- built-in registry


NEW_ENTRIES = ("kim-vocals", "bs-karaoke", "gabox-inst")


def test_builtin_roformer_entries_are_listed(hf_env):
    result = CliRunner().invoke(cli.app, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    for name in NEW_ENTRIES:
        assert rows[name]["family"] == "roformer"
        assert rows[name]["licence"] == "unknown"
    assert rows["kim-vocals"]["stems"] == ["vocals"]
    assert rows["bs-karaoke"]["stems"] == ["vocals", "instrumental"]
    assert rows["gabox-inst"]["stems"] == ["instrumental"]


def test_builtin_kim_inline_config_builds_the_published_architecture():
    """The inline config must describe a model whose keys and shapes are the released ones
    (checked on the meta device: no memory, no weights)."""
    from unmixcli.registry import load_registry
    from unmixcli.families.msst import config_from_mapping
    from unmixcli.families.roformer import model_kwargs

    spec = load_registry(include_user=False).get("kim-vocals")
    config = config_from_mapping(spec.config)
    kwargs = model_kwargs(config, "mel_band_roformer")
    with torch.device("meta"):
        model = MelBandRoformer(**kwargs)
    state = model.state_dict()
    # Layout facts of the released checkpoint: 6 layers of (time, freq) transformers, 60 mel
    # bands, 3-Linear mask MLPs (depth 2), per-transformer norms and no final norm.
    assert "layers.5.1.layers.0.0.to_qkv.weight" in state and "layers.6.0.norm.gamma" not in state
    assert tuple(state["layers.0.0.layers.0.0.to_qkv.weight"].shape) == (3 * 8 * 64, 384)
    assert "band_split.to_features.59.1.weight" in state and "band_split.to_features.60.1.weight" not in state
    assert "mask_estimators.0.to_freqs.0.0.4.weight" in state and "final_norm.gamma" not in state
    assert len(spec.config["training"]["instruments"]) == 2 and spec.stems == ("vocals",)


def test_bf16_request_runs_a_roformer_in_fp32_with_one_warning(mel_bag, monkeypatch):
    """RoFormers' fused kernels write into fp32 buffers, which bf16 autocast breaks
    ("Expected both inputs to be Half, Float or Double"): their contract says so and the
    engine runs them in fp32, saying why once, instead of failing mid-track."""
    import warnings

    from unmixcli import engine

    assert mel_bag.contracts[0].bf16 is False
    mix = torch.randn(2, CHUNK * 2, generator=torch.Generator().manual_seed(3))
    monkeypatch.setattr(engine, "_WARNED", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asked = separate_tensor(mel_bag, mix, None, EngineOptions(precision="bf16"), CPU)
    full = separate_tensor(mel_bag, mix, None, EngineOptions(precision="fp32"), CPU)
    assert all(torch.equal(asked[s], full[s]) for s in full)
    assert engine.effective_precision("bf16", CPU, bf16=False) == "fp32"
    assert len([w for w in caught if "fp32 only" in str(w.message)]) == 1
