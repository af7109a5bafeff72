"""Ensembles run by the engine: members of two families (a Mel-Band RoFormer and an Open-Unmix)
on the same input, streamed, against combining the members' own whole-track stems with
`ensemble.combine` (whose algorithms are checked against MSST's and audio-separator's in
test_ensemble.py); presets from the registry, `-m auto`, the CLI end to end from the fake
Hub, and the errors that must come before anything downloads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import stderr_of
from fakehub import registry_entry
from test_openunmix import HIDDEN, MUSIC, NFFT, NHOP, write_umx_folder
from test_roformer_e2e import MEL_MODEL, RATE, ckpt_bytes, random_model, read, run, write_song
from unmixcli import families
from unmixcli.engine import EngineOptions, separate_stream, separate_tensor
from unmixcli.ensemble import ALGORITHMS, combine
from unmixcli.ensemble_bag import EnsembleBag, EnsembleOptions, common_stems, stem_plan
from unmixcli.errors import UsageError
from unmixcli.models.roformer import MelBandRoformer

CPU = torch.device("cpu")
MEL_YAML = """\
audio:
  chunk_size: 8192
  num_channels: 2
  sample_rate: 44100
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
  sample_rate: 44100
  stft_n_fft: 512
  stft_hop_length: 128
  stft_win_length: 512
  mask_estimator_depth: 1
training:
  instruments: [vocals, other]
  target_instrument: vocals
inference:
  num_overlap: 2
"""


@pytest.fixture(scope="module")
def member_files(tmp_path_factory):
    """{entry name: (files {repo path: bytes}, registry entry)}: a vocals RoFormer and a 4-stem Open-Unmix."""
    mel = random_model(MelBandRoformer, MEL_MODEL, seed=5)
    mel_files = {"vocals_mel.ckpt": ckpt_bytes(mel), "config_vocals_mel.yaml": MEL_YAML.encode()}
    mel_entry = registry_entry("tiny-mel", "someone/TinyMel", mel_files, stems=["vocals"], family="roformer",
                               arch="MelBandRoformer", checkpoint="vocals_mel.ckpt", config="config_vocals_mel.yaml",
                               sdr={"value": 40.0, "dataset": "test set", "source": "this test",
                                    "stems": {"vocals": 40.0}})
    del mel_entry["bag"]
    folder = tmp_path_factory.mktemp("umx")
    names = write_umx_folder(folder, MUSIC, seed=3)
    umx_files = {n: (folder / n).read_bytes() for n in names.values()}
    umx_entry = registry_entry("tiny-umx", "someone/TinyUmx", umx_files, stems=list(names), family="openunmix",
                               config={"hidden_size": HIDDEN, "nb_channels": 2, "n_fft": NFFT, "n_hop": NHOP,
                                       "bandwidth": 16000},
                               sdr={"value": 30.0, "dataset": "test set", "source": "this test",
                                    "stems": {"vocals": 30.0, "drums": 30.0, "bass": 30.0, "other": 30.0}})
    del umx_entry["bag"]
    return {"tiny-mel": (mel_files, mel_entry), "tiny-umx": (umx_files, umx_entry)}


def write_reg(path: Path, member_files, ensembles=None) -> Path:
    data = {"version": 1, "models": {name: entry for name, (_, entry) in member_files.items()}}
    if ensembles:
        data["ensembles"] = ensembles
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


PRESET = {"tiny-vocals": {"description": "test preset", "models": ["tiny-mel", "tiny-umx"], "algorithm": "avg_fft",
                          "weights": [2, 1], "stems": ["vocals", "instrumental"]}}


@pytest.fixture
def served(fake_hub, tmp_path, member_files):
    for name, (files, entry) in member_files.items():
        fake_hub.add_repo(entry["repo"], files)
    return write_reg(tmp_path / "reg.yaml", member_files, PRESET)


@pytest.fixture(scope="module")
def bags(tmp_path_factory, member_files):
    """The members loaded from their registry entries, as the CLI loads them after a download."""
    from unmixcli.registry import load_registry

    reg = write_reg(tmp_path_factory.mktemp("reg") / "reg.yaml", member_files)
    out = {}
    for name, (files, _) in member_files.items():
        folder = tmp_path_factory.mktemp(name)
        for fname, data in files.items():
            (folder / fname).write_bytes(data)
        out[name] = families.load_spec(load_registry([reg], include_user=False).get(name), folder=folder)
    return out


def mix(seconds: float = 1.3, seed: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(2, int(seconds * RATE), generator=gen)  # [C, T]


def members_whole(bags, x: torch.Tensor) -> dict:
    """Each member's own whole-track stems, with the ensemble's derived ones."""
    mel = separate_tensor(bags["tiny-mel"], x, None, EngineOptions(), CPU)
    umx = separate_tensor(bags["tiny-umx"], x, None, EngineOptions(), CPU)
    return {
        "vocals": [mel["vocals"], umx["vocals"]],
        # a vocals model: mix minus vocals; a 4-stem model: the sum of its other stems
        "instrumental": [x - mel["vocals"], umx["drums"] + umx["bass"] + umx["other"]],
    }


# --------------------------------------------------------------------------- stems line up


def test_stem_rules():
    assert stem_plan(["Vocals"], "vocals") == ("native", ["Vocals"])
    assert stem_plan(["vocals"], "instrumental") == ("residual", ["vocals"])
    assert stem_plan(["vocals", "other"], "instrumental") == ("residual", ["vocals"])
    assert stem_plan(MUSIC, "instrumental") == ("sum", ["drums", "bass", "other"])
    assert stem_plan(MUSIC, "instrumental", "residual") == ("residual", ["vocals"])
    assert stem_plan(["Instrumental"], "vocals") == ("residual", ["Instrumental"])
    assert stem_plan(["speech", "noise"], "vocals") is None
    assert common_stems([["vocals"], MUSIC]) == ["vocals", "instrumental"]
    assert common_stems([["Vocals", "Instrumental"], MUSIC]) == ["vocals", "instrumental"]
    assert common_stems([MUSIC, list(reversed(MUSIC))]) == MUSIC + ["instrumental"]


# --------------------------------------------------------------------------- streaming equals whole tracks


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_streamed_ensemble_equals_combining_whole_track_stems(bags, algorithm):
    x = mix()
    weights = (2.0, 1.0) if algorithm in ("avg_wave", "avg_fft") else None
    bag = EnsembleBag([bags["tiny-mel"], bags["tiny-umx"]], EnsembleOptions(algorithm, 2, weights), name="e")
    assert bag.sources == ["vocals", "instrumental"]
    whole = members_whole(bags, x)
    # Blocks of odd sizes: members finish samples at different times; the result must not care.
    sizes = [1000, 7, 20000, 3333] * 20
    blocks, i = [], 0
    for n in sizes:
        if i >= x.shape[1]:
            break
        blocks.append(x[:, i:i + n])
        i += n
    out = {s: [] for s in bag.sources}
    stats = lambda rule: (x.mean(), x.std())  # noqa: E731  (no member normalises; never called)
    for piece in separate_stream(bag, blocks, x.shape[1], None, EngineOptions(), CPU, stats=stats):
        for s, w in piece.items():
            out[s].append(w)
    for stem in bag.sources:
        got = torch.cat(out[stem], dim=1)
        want = combine(algorithm, whole[stem], weights)
        assert got.shape == want.shape == x.shape
        peak = float(want.abs().max())
        assert float((got - want).abs().max()) <= 1e-6 * max(peak, 1e-3), (stem, algorithm)


def test_ensemble_differs_from_either_member(bags):
    x = mix(0.7)
    bag = EnsembleBag([bags["tiny-mel"], bags["tiny-umx"]], EnsembleOptions("avg_wave", 2), name="e")
    got = separate_tensor(bag, x, ["vocals"], EngineOptions(), CPU)["vocals"]
    whole = members_whole(bags, x)["vocals"]
    assert not torch.allclose(got, whole[0]) and not torch.allclose(got, whole[1])
    torch.testing.assert_close(got, (whole[0] + whole[1]) / 2, atol=1e-6, rtol=0)


def test_members_must_share_rate_and_channels(bags, tmp_path):
    from demucs_export import export_tiny

    export_tiny(tmp_path / "d", "tiny")  # 8 kHz
    demucs = families.load_model(str(tmp_path / "d"))
    with pytest.raises(UsageError, match="share sample rate"):
        EnsembleBag([bags["tiny-mel"], demucs], EnsembleOptions("avg_wave", 2), name="e")


@pytest.mark.parametrize("kwargs, message", [
    (dict(algorithm="avg_wav", members=2), "unknown ensemble algorithm"),
    (dict(algorithm="max_fft", members=2, weights=(1, 2)), "takes no weights"),
    (dict(algorithm="avg_fft", members=2, weights=(1, 2, 3)), "3 ensemble weights for 2 models"),
    (dict(algorithm="avg_wave", members=1), "two or more models"),
    (dict(algorithm="avg_wave", members=2, instrumental="mix"), "instrumental rule"),
])
def test_options_are_checked_once_where_defined(kwargs, message):
    with pytest.raises(UsageError, match=message):
        EnsembleOptions(**kwargs)


# --------------------------------------------------------------------------- CLI from the fake Hub


def test_cli_two_families_from_the_fake_hub(served, tmp_path, bags):
    song = write_song(tmp_path / "s.wav", seconds=1.1)
    out = tmp_path / "out"
    result = run([song, "-m", "tiny-mel", "-m", "tiny-umx", "--ensemble", "avg_fft", "--stems", "vocals",
                  "--registry", served, "-o", out, "-q", "--bit-depth", "32"])
    assert result.exit_code == 0, result.output
    track = out / "tiny-mel+tiny-umx" / "s"
    assert sorted(p.name for p in track.iterdir()) == ["vocals.wav"]
    x = torch.from_numpy(read(song))
    want = combine("avg_fft", members_whole(bags, x)["vocals"]).numpy()
    np.testing.assert_allclose(read(track / "vocals.wav"), want, atol=1e-5)


def test_preset_runs_with_its_algorithm_and_weights_and_karaoke(served, tmp_path, bags):
    song = write_song(tmp_path / "s.wav", seconds=0.9)
    result = run([song, "-m", "tiny-vocals", "--karaoke", "--registry", served, "-o", tmp_path / "o", "-q",
                  "--bit-depth", "32"])
    assert result.exit_code == 0, result.output
    track = tmp_path / "o" / "tiny-vocals" / "s"
    x = torch.from_numpy(read(song))
    vocals = combine("avg_fft", members_whole(bags, x)["vocals"], [2, 1]).numpy()
    np.testing.assert_allclose(read(track / "vocals.wav"), vocals, atol=1e-5)
    np.testing.assert_allclose(read(track / "instrumental.wav"), x.numpy() - vocals, atol=1e-5)


def test_models_list_shows_presets(served):
    result = run(["models", "list", "--registry", served])
    assert result.exit_code == 0, result.output
    assert "tiny-vocals" in result.output and "avg_fft: tiny-mel, tiny-umx" in result.output


def test_a_stem_a_member_cannot_give_fails_before_any_download(served, fake_hub, tmp_path):
    song = write_song(tmp_path / "s.wav", seconds=0.3)
    result = run([song, "-m", "tiny-mel", "-m", "tiny-umx", "--stems", "drums", "--registry", served,
                  "-o", tmp_path / "o"])
    assert result.exit_code == 2
    err = stderr_of(result)
    assert "cannot give drums: tiny-mel" in err and "vocals, instrumental" in err
    assert not [r for r in fake_hub.requests if r[0] == "GET"]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, message", [
    (["-m", "tiny-mel", "--weights", "1,2"], "need two or more models"),
    (["-m", "tiny-mel", "-m", "tiny-umx", "--ensemble", "uvr_max_spec", "--weights", "1,2"], "takes no weights"),
    (["-m", "tiny-mel", "-m", "tiny-umx", "--weights", "1,x"], "--weights must be numbers"),
    (["-m", "tiny-mel", "-m", "tiny-mel"], "named twice"),
    (["-m", "tiny-mel", "--quality", "best"], "--quality applies to -m auto"),
    (["-m", "auto", "--quality", "good"], "unknown --quality"),
])
def test_usage_errors_are_one_line(served, tmp_path, args, message):
    song = write_song(tmp_path / "s.wav", seconds=0.3)
    result = run([song, *args, "--registry", served, "-o", tmp_path / "o"])
    assert result.exit_code == 2, result.output
    err = stderr_of(result)
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_eval_scores_an_ensemble_like_a_model(served, tmp_path, bags):
    import json

    import soundfile as sf

    track = tmp_path / "ds" / "test" / "song"
    track.mkdir(parents=True)
    x = mix(0.8, seed=4).numpy()
    sf.write(track / "mixture.wav", x.T, RATE, subtype="FLOAT")
    sf.write(track / "vocals.wav", (0.5 * x).T, RATE, subtype="FLOAT")
    sf.write(track / "accompaniment.wav", (0.5 * x).T, RATE, subtype="FLOAT")
    result = run(["eval", tmp_path / "ds", "-m", "tiny-mel", "-m", "tiny-umx", "--ensemble", "avg_wave",
                  "--stems", "vocals,accompaniment", "--registry", served, "-o", tmp_path / "ev", "--json", "-q"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    # The same scores as evaluating the ensemble's stems given as estimates.
    est = tmp_path / "est" / "song"
    est.mkdir(parents=True)
    whole = members_whole(bags, torch.from_numpy(x))
    vocals = combine("avg_wave", whole["vocals"]).numpy()
    sf.write(est / "vocals.wav", vocals.T, RATE, subtype="FLOAT")
    sf.write(est / "accompaniment.wav", (x - vocals).T, RATE, subtype="FLOAT")
    again = run(["eval", tmp_path / "ds", "--estimates", tmp_path / "est", "--stems", "vocals,accompaniment",
                 "-o", tmp_path / "ev2", "--json", "-q"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["stems"] == pytest.approx(summary["stems"], abs=1e-3)


# --------------------------------------------------------------------------- -m auto


def test_auto_picks_the_best_scored_model_and_says_why(served, tmp_path):
    song = write_song(tmp_path / "s.wav", seconds=0.3)
    result = run([song, "-m", "auto", "--stems", "vocals", "--quality", "best", "--registry", served, "--dry-run"])
    assert result.exit_code == 0, result.output
    err = stderr_of(result) + result.output
    # tiny-mel's 40 dB beats every built-in vocals model and tiny-umx's 30 dB
    assert "-m auto picked tiny-mel for vocals" in err and "40.00 dB SDR on test set" in err
    assert "model: tiny-mel" in result.output


def test_auto_offline_only_picks_cached_models(served, tmp_path, fake_hub):
    song = write_song(tmp_path / "s.wav", seconds=0.3)
    result = run([song, "-m", "auto", "--stems", "drums", "--registry", served, "--offline", "-o", tmp_path / "o"])
    assert result.exit_code == 2
    assert "no cached model gives drums" in stderr_of(result)
    # Cache tiny-umx (the only test model with drums), then offline auto finds it.
    ok = run(["models", "download", "tiny-umx", "--registry", served])
    assert ok.exit_code == 0, ok.output
    fake_hub.stop()
    result = run([song, "-m", "auto", "--stems", "drums", "--registry", served, "--offline", "-o", tmp_path / "o",
                  "-q"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "tiny-umx" / "s" / "drums.wav").is_file()
