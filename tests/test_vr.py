"""VR architecture (UVR's `.pth` CascadedNet models): our torch port against audio-separator's VR separator.

The reference is audio-separator 0.47.1 (installed with --no-deps, test-only): its
`uvr_lib_v5.vr_network` networks (`nets.CascadedASPPNet`, the v5 "HP"/"SP" files such as
5_HP-Karaoke-UVR / 6_HP-Karaoke-UVR; `nets_new.CascadedNet`, the v5.1 files such as
UVR-DeEcho-DeReverb) draw random weights and BatchNorm statistics; their state dicts are
saved with torch.save as UVR's files are, and our family reads the same file. The widths are
shrunk (ch 8 instead of 16/32/64; nout 16, nout_lstm 32 instead of 48/64, 128) keeping every
layer and key of the published layouts (five- and seven-branch ASPP, the five-level 129605
U-Net, the BiLSTM decoders).

The whole-track tests run `VRSeparator.loading_mix`, `inference_vr` and `spec_to_wav` (what its
`separate` does before writing files) beside the engine running our bag. Its band recombination
resamples with the module-level `spec_utils.wav_resolution`: "polyphase" on Apple silicon,
libsamplerate's "sinc_fastest" elsewhere. Ours is the polyphase one, so the reference is run
with that setting (the figure against sinc_fastest is in the report, not asserted).

audio-separator's package `__init__` imports its whole separator; its modules are loaded from its
files under namespace stand-ins for its packages (pydub, six: stand-ins when not installed).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from unmixcli import cli
from unmixcli.errors import CheckpointError
from unmixcli.families import vr as family
from unmixcli.models.vr import merge_artifacts

import uvr_oracle

TOL_NET = 1e-5  # of the reference's peak
TOL_TRACK = 1e-4
RATE = 44100
CH = 8  # v5 width (published: 16 SP, 32 HP, 64 HP2)
NOUT, NOUT_LSTM = 16, 32  # v5.1 widths (published: 32/48/64, 128)


@pytest.fixture(scope="module")
def ref():
    """audio-separator's VR networks, spec_utils, model parameters and VRSeparator class."""
    mods, saved = uvr_oracle.load(uvr_oracle.VR_MODULES)
    yield mods
    uvr_oracle.unload(saved)


def reference_net(ref, arch, bins: int, seed: int) -> torch.nn.Module:
    """audio-separator's network for `arch` (a v5 size UVR names: 31191 five ASPP branches, 33966
    seven, 129605 five levels and six branches; or "v51"), random weights and BatchNorm statistics.

    The draws are mild (default init, BatchNorm near identity) so that the mask stays inside (0, 1):
    a saturated mask would hide the aggression exponent, and a chaotic deep net would turn float
    rounding into different masks."""
    torch.manual_seed(seed)
    if arch == "v51":
        net = ref.nets_new.CascadedNet(bins * 2, nout=NOUT, nout_lstm=NOUT_LSTM)
    else:
        c = CH
        capacity = [(2, c), (2, c), (c + 2, c // 2, 1, 1, 0), (c // 2, c), (2 * c + 2, c, 1, 1, 0), (c, 2 * c),
                    (2 * c, 2, 1), (c, 2, 1), (c, 2, 1)]
        net = ref.nets.CascadedASPPNet(bins * 2, capacity, arch)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, value in net.state_dict().items():
            if not value.is_floating_point():
                continue
            noise = torch.randn(value.shape, generator=gen)
            if name.endswith("running_var"):
                value.copy_(0.8 + 0.4 * noise.abs())
            elif name.endswith("running_mean"):
                value.copy_(0.05 * noise)
            elif name.endswith("bias"):
                value.copy_(0.05 * noise)
            elif value.ndim == 1:  # BatchNorm scale
                value.copy_(1 + 0.1 * noise)
    net.eval()
    # Default draws leave the logits near 0 (a mask of 0.5 everywhere, which would hide the
    # aggression exponent): on a probe, the output conv's weights are made orthogonal to the
    # mean feature (logits centred on 0; the features are ReLU outputs, all of one sign) and
    # scaled to logits of std 1.5.
    seen = []
    hook = net.out.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    probe = torch.rand(1, 2, bins + 1, 2 * net.offset + 64, generator=gen)
    with torch.no_grad():
        net(probe)
        hook.remove()
        w = net.out.weight  # [2, K, 1, 1]
        mu = seen[0].mean(dim=(0, 2, 3))  # [K]
        w[:, :, 0, 0] -= (w[:, :, 0, 0] @ mu)[:, None] * mu / (mu @ mu)
        logits = torch.nn.functional.conv2d(seen[0], w)
        w.mul_(1.5 / logits.std())
    return net


def save(net: torch.nn.Module, path: Path) -> Path:
    torch.save(net.state_dict(), path)
    return path


def rel_err(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def write_song(path: Path, seconds: float, seed: int = 0, rate: int = RATE) -> np.ndarray:
    """Noise plus tones, written as float WAV (read back bit-exact by both sides). [2, T]"""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    mix = np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 3300 * t)]) * 0.3
    mix = (mix + 0.1 * rng.standard_normal((2, n))).astype(np.float32)
    sf.write(path, mix.T, rate, subtype="FLOAT")
    return mix


run_reference = uvr_oracle.run_vr_reference


# --------------------------------------------------------------------------- the networks


@pytest.mark.parametrize("arch, param_name, about", [
    (31191, "4band_v2", "5 ASPP branches"),
    (33966, "1band_sr44100_hl512", "7 ASPP branches"),
    (129605, "4band_44100", "6 ASPP branches, 5 levels"),
    ("v51", "4band_v3", "nout 16, nout_lstm 32"),
])
def test_network_matches_reference(ref, tmp_path, arch, param_name, about):
    """The layout is read from the saved state dict's keys; the mask equals the reference's."""
    bins = family.param_set(param_name).bins
    net = reference_net(ref, arch, bins, seed=1)
    path = save(net, tmp_path / "m.pth")
    assert family.accepts(path)
    ours, described = family.network_from_state(family.read_state(path), bins, path)
    assert about in described
    x = torch.rand(2, 2, bins + 1, 512, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = net.predict_mask(x).numpy()
        mine = ours.predict_mask(x).numpy()
    assert mine.shape == theirs.shape == (2, 2, bins + 1, 512 - 2 * net.offset)
    assert 0.05 < theirs.std()  # a mask inside (0, 1), not saturated
    assert rel_err(mine, theirs) < TOL_NET


# --------------------------------------------------------------------------- whole tracks

CASES = {
    # UVR-DeEcho-DeReverb style: v5.1, 4band_v3, "No Echo" (an accompaniment-type stem).
    "deecho": ("v51", "4band_v3", "No Echo", dict()),
    # 5_HP-Karaoke-UVR style: v5 HP layout on 4band_v2, aggression, the high end mirrored.
    "karaoke-v5": (31191, "4band_v2", "Instrumental", dict(aggression=10, high_end_process=True)),
    # 1-band v5 seven-branch, vocals primary (the aggression exponent mirrored), 320-frame windows.
    "1band": (33966, "1band_sr44100_hl512", "Vocals", dict(aggression=-20, window_size=320, batch_size=3)),
    # five-level v5, test-time augmentation, 1024-frame windows, high end.
    "deep-tta": pytest.param((129605, "4band_44100", "Vocals", dict(enable_tta=True, window_size=1024,
                                                                      high_end_process=True)),
                             marks=pytest.mark.slow),
    # v5.1 mid/side full band ("Dry"), strong aggression, post-processing, high end.
    "ms-fullband": ("v51", "4band_v4_ms_fullband", "Dry",
                    dict(aggression=30, enable_post_process=True, post_process_threshold=0.1,
                         high_end_process=True)),
}


def _case(name):
    value = CASES[name]
    return value.values[0] if hasattr(value, "values") else value


@pytest.mark.parametrize("case", [pytest.param(k, marks=v.marks) if hasattr(v, "marks") else k
                                  for k, v in sorted(CASES.items())])
def test_whole_track_matches_vr_separator(ref, tmp_path, monkeypatch, case):
    """A local .pth with its parameters in a <name>.json beside it, separated by the engine, against
    audio-separator's VR separator on the same file and song."""
    from unmixcli.engine import EngineOptions, separate_tensor

    arch, param_name, primary, options = _case(case)
    monkeypatch.setattr(ref.spec_utils, "wav_resolution", "polyphase")
    bins = family.param_set(param_name).bins
    net = reference_net(ref, arch, bins, seed=3)
    path = save(net, tmp_path / f"{case}.pth")
    (tmp_path / f"{case}.json").write_text(json.dumps({"vr_model_param": param_name, "primary_stem": primary,
                                                       **options}))
    # 480 * k samples: every band of the 4-band sets then has as many frames as the combined
    # spectrogram, which the reference's high-end mirroring needs.
    song = tmp_path / "song.wav"
    mix = write_song(song, seconds=480 * 230 / RATE, seed=4)
    bag = family.load_local(path)
    names = [family.stem_name(primary), family.stem_name(family.secondary_stem(primary))]
    assert bag.sources == names
    out = separate_tensor(bag, torch.from_numpy(mix), None, EngineOptions(precision="fp32"), torch.device("cpu"))
    theirs = run_reference(ref, net, param_name, song, primary, arch == "v51", **options)
    for name, expected in zip(names, theirs):
        mine = out[name].numpy()
        n = expected.shape[1]
        assert mine.shape == mix.shape and n <= mix.shape[1]
        assert rel_err(mine[:, :n], expected) < TOL_TRACK, name
        assert np.abs(mine[:, n:]).max(initial=0) == 0  # the samples the reference's iSTFT drops
    if case == "ms-fullband":
        # --precision bf16: the network under bf16 autocast, the spectrogram maths in float32;
        # close to the float32 result, not equal to it. auto keeps float32.
        for precision, low, high in (("bf16", TOL_TRACK, 3e-2), ("auto", 0, TOL_TRACK)):
            again = separate_tensor(bag, torch.from_numpy(mix), None, EngineOptions(precision=precision),
                                    torch.device("cpu"))
            n = theirs[0].shape[1]
            err = rel_err(again[names[0]].numpy()[:, :n], theirs[0])
            assert low <= err < high, (precision, err)


def test_aggression_changes_the_stems(ref, tmp_path):
    """The aggression option reaches the mask (the parity test above would pass without it if
    the mask were saturated)."""
    bins = family.param_set("1band_sr44100_hl512").bins
    path = save(reference_net(ref, 31191, bins, seed=5), tmp_path / "m.pth")
    mix = torch.from_numpy(write_song(tmp_path / "s.wav", seconds=1.0))
    outs = []
    for aggression in (0, 50):
        data = family.ModelData(params=family.param_set("1band_sr44100_hl512"), primary_stem="Instrumental")
        bag = family.load_vr(path, data, family.options_from({"aggression": aggression}, "t"))
        with torch.no_grad():
            outs.append(bag.models[0](mix[None])[0, 0].numpy())
    assert rel_err(outs[0], outs[1]) > 1e-2


@pytest.mark.parametrize("threshold, runs", [
    (0.2, [(0, 100), (130, 150), (170, 400)]),  # a run at the start, a gap shorter than a fade
    (0.3, [(40, 120), (300, 500)]),  # a run reaching the end
    (0.2, [(10, 30)]),  # too short to merge
])
def test_post_process_matches_merge_artifacts(ref, threshold, runs):
    """UVR's artifact merging (enable_post_process) on masks with runs above the threshold."""
    rng = np.random.default_rng(6)
    mask = rng.uniform(0.0, threshold * 0.9, size=(2, 40, 500)).astype(np.float32)
    for start, stop in runs:
        mask[:, :, start:stop] = rng.uniform(threshold * 1.1, 1.0, size=(2, 40, stop - start))
    expected = ref.spec_utils.merge_artifacts(mask.copy(), thres=threshold)
    mine = merge_artifacts(torch.from_numpy(mask), threshold).numpy()
    np.testing.assert_allclose(mine, expected, atol=1e-6)


# --------------------------------------------------------------------------- files and errors


def test_model_data_from_uvr_table(ref, tmp_path, monkeypatch):
    """A file whose hash UVR's table knows needs no parameters; one it does not know is refused
    with one line asking for them."""
    bins = family.param_set("4band_v3").bins
    path = save(reference_net(ref, "v51", bins, seed=7), tmp_path / "UVR-DeEcho-Tiny.pth")
    with pytest.raises(CheckpointError, match="no model with hash") as info:
        family.load_local(path)
    assert "--model-params" in info.value.hint and "\n" not in str(info.value)
    table = dict(family._table())
    table[family.uvr_hash(path)] = {"vr_model_param": "4band_v3", "primary_stem": "No Echo",
                                    "nout": NOUT, "nout_lstm": NOUT_LSTM}
    monkeypatch.setattr(family, "_table", lambda: table)
    bag = family.load_local(path)
    assert bag.sources == ["no_echo", "echo"]
    table[family.uvr_hash(path)] = {"vr_model_param": "4band_v3", "primary_stem": "No Echo", "nout": 48}
    with pytest.raises(CheckpointError, match="nout 48"):
        family.load_local(path)
    # The table's rows name parameter sets that ship with us.
    for row in family._table().values():
        assert row["vr_model_param"] in family.param_set_names()


def test_bad_files_and_options(ref, tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a state dict")
    assert not family.accepts(junk)
    with pytest.raises(CheckpointError, match="junk.pth"):
        family.load_local(junk)
    other = tmp_path / "other.pth"
    torch.save({"layer.weight": torch.zeros(3)}, other)
    assert not family.accepts(other)
    with pytest.raises(CheckpointError, match="not a UVR VR-architecture"):
        family.load_local(other)
    bins = family.param_set("4band_v2").bins
    path = save(reference_net(ref, 31191, bins, seed=8), tmp_path / "m.pth")
    side = tmp_path / "m.json"
    for row, message in [({"vr_model_param": "4band_v2", "primary_stem": "Vocals", "window_size": 100},
                          "window_size"),
                         ({"vr_model_param": "4band_v2", "primary_stem": "Vocals", "aggression": 200}, "aggression"),
                         ({"vr_model_param": "nope", "primary_stem": "Vocals"}, "no VR parameter set"),
                         ({"vr_model_param": "4band_v2"}, "lacks primary_stem"),
                         ({"vr_model_param": "4band_v2", "primary_stem": "Vocals", "agression": 5}, "unknown keys"),
                         ({"vr_model_param": "4band_v2", "primary_stem": "Vocals", "enable_tta": "yes"}, "enable_tta"),
                         ({"vr_model_param": "4band_v2", "primary_stem": "Vocals", "post_process_threshold": 1.5},
                          "post_process_threshold")]:
        side.write_text(json.dumps(row))
        with pytest.raises(CheckpointError, match=message):
            family.load_local(path)
    side.write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable model parameters"):
        family.load_local(path)
    # A v5.1 network's BiLSTMs fix its bins: parameters of another network (1band: 1024 bins,
    # 4band_v3: 672) are refused, naming both.
    v51 = save(reference_net(ref, "v51", family.param_set("4band_v3").bins, seed=8), tmp_path / "n.pth")
    (tmp_path / "n.json").write_text(json.dumps({"vr_model_param": "1band_sr44100_hl512", "primary_stem": "Vocals"}))
    with pytest.raises(CheckpointError, match="trained on 672 bins.*1024"):
        family.load_local(v51)


# --------------------------------------------------------------------------- the CLI and the registry


def cli_run(args):
    return CliRunner().invoke(cli.app, [str(a) for a in args], catch_exceptions=False)


def test_cli_separates_a_local_pth(ref, tmp_path):
    """`unmix song.wav -m FILE.pth --config params.json`, and the one-line refusal without it."""
    bins = family.param_set("4band_v3").bins
    path = save(reference_net(ref, "v51", bins, seed=9), tmp_path / "DeEcho-Tiny.pth")
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"vr_model_param": "4band_v3", "primary_stem": "No Echo", "aggression": 10}))
    song = tmp_path / "My Song.wav"
    mix = write_song(song, seconds=1.0, seed=10)
    out = tmp_path / "out"
    result = cli_run([song, "-m", path, "--model-params", params, "-o", out, "-q", "-f", "wav", "--bit-depth", "32",
                      "--clip", "none"])
    assert result.exit_code == 0, result.output
    track = out / "DeEcho-Tiny" / "My Song"
    assert sorted(p.name for p in track.iterdir()) == ["echo.wav", "no_echo.wav"]
    # What the CLI wrote is what the family's model computes (the parameters and aggression
    # reached it). The stems do not sum to the mix: the bands drop what lies above their crops.
    bag = family.load_local(path, config=params)
    assert bag.extra["aggression"] == 10
    with torch.no_grad():
        expected = bag.models[0](torch.from_numpy(mix)[None])[0].numpy()  # [2, C, T]
    for name, want in zip(("no_echo", "echo"), expected):
        data, rate = sf.read(track / f"{name}.wav", dtype="float32", always_2d=True)
        assert rate == RATE and data.shape == (mix.shape[1], 2)
        assert rel_err(data.T, want) < 1e-5, name

    result = cli_run([song, "-m", path, "-o", tmp_path / "out2", "-q"])
    assert result.exit_code != 0
    assert "DeEcho-Tiny.pth" in result.output and "no model with hash" in result.output
    assert "--model-params" in result.output


def test_registry_entry_from_the_hub(ref, fake_hub, tmp_path):
    """An UVR-DeEcho-DeReverb-style registry entry (checkpoint + inline config) served by the fake Hub,
    loaded by name and separated through the CLI."""
    from fakehub import registry_entry, write_registry

    bins = family.param_set("4band_v3").bins
    path = save(reference_net(ref, "v51", bins, seed=11), tmp_path / "UVR-DeEcho-DeReverb.pth")
    files = {path.name: path.read_bytes()}
    fake_hub.add_repo("test-owner/VR", files)
    entry = registry_entry("UVR-DeEcho-DeReverb", "test-owner/VR", files, pin_sha256=True, stems=["no_echo", "echo"],
                           family="vr", checkpoint=path.name, bag=None,
                           config={"vr_model_param": "4band_v3", "primary_stem": "No Echo", "nout": NOUT,
                                   "nout_lstm": NOUT_LSTM, "window_size": 320})
    entry.pop("bag")
    registry = write_registry(tmp_path / "reg.yaml", {"UVR-DeEcho-DeReverb": entry})

    from unmixcli.families import load_model

    bag = load_model("UVR-DeEcho-DeReverb", registry_files=[registry])
    assert bag.sources == ["no_echo", "echo"]
    assert bag.extra["window_size"] == 320

    song = tmp_path / "a.wav"
    write_song(song, seconds=0.8, seed=12)
    out = tmp_path / "out"
    result = cli_run([song, "-m", "UVR-DeEcho-DeReverb", "--registry", registry, "-o", out, "-q"])
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (out / "UVR-DeEcho-DeReverb" / "a").iterdir())
    assert len(written) == 2 and all(name.endswith(".wav") for name in written)


AS_PREFIX = "https://github.com/TRvlvr/model_repo/releases/download/all_public_uvr_models/"


def _as_scores() -> dict:
    """audio-separator's own list of the models it runs, with their stems (its package data)."""
    from importlib import metadata

    # From the installed distribution: the `ref` fixture may hold a stand-in package meanwhile.
    return json.loads(Path(metadata.distribution("audio-separator").locate_file(
        "audio_separator/models-scores.json")).read_text())


def test_registry_entries_are_the_files_audio_separator_downloads():
    """Every vr entry names a file audio-separator knows, at the URL it downloads from, with its
    stems (primary first) and its published median SDR."""
    from unmixcli.registry import load_registry

    scores = _as_scores()
    entries = [s for s in load_registry(include_user=False) if s.family == "vr"]
    assert {"5_HP-Karaoke-UVR", "6_HP-Karaoke-UVR", "UVR-DeEcho-DeReverb", "UVR-De-Echo-Normal",
            "UVR-De-Echo-Aggressive"} <= {s.name for s in entries}
    for spec in entries:
        (file,) = spec.files
        assert file.name == spec.checkpoint == f"{spec.name}.pth"
        assert file.url == AS_PREFIX + file.name and file.trust_first
        theirs = scores[file.name]
        assert list(spec.stems) == [s.replace(" ", "_") for s in theirs["stems"]]
        assert spec.stems[0] == theirs["target_stem"].replace(" ", "_")
        if theirs.get("median_scores"):
            assert spec.sdr.stems == {k.replace(" ", "_"): round(v["SDR"], 2)
                                      for k, v in theirs["median_scores"].items()}
        family.options_from(spec.config, spec.name)  # the options it sets are valid


def test_cli_deecho_dereverb_from_the_url_server(ref, tmp_path, monkeypatch, hf_env):
    """`unmix song.wav -m UVR-DeEcho-DeReverb`: models.yaml's own entry downloads its .pth (random
    weights in the published v5 layout) from loopback, finds its row in UVR's table by hash, and
    writes no_reverb and reverb equal to audio-separator's VR separator on the same file."""
    import yaml
    from urlserver import FileServer

    from conftest import run_unmix
    from unmixcli.registry import builtin_registry_path

    monkeypatch.setenv("UNMIX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ref.spec_utils, "wav_resolution", "polyphase")
    bins = family.param_set("4band_v3").bins
    net = reference_net(ref, 31191, bins, seed=13)
    path = save(net, tmp_path / "UVR-DeEcho-DeReverb.pth")
    table = dict(family._table())
    table[family.uvr_hash(path)] = {"vr_model_param": "4band_v3", "primary_stem": "No Reverb"}
    monkeypatch.setattr(family, "_table", lambda: table)
    song = tmp_path / "song.wav"
    mix = write_song(song, seconds=480 * 100 / RATE, seed=14)
    name = "UVR-DeEcho-DeReverb"
    entry = dict(yaml.safe_load(builtin_registry_path().read_text())["models"][name])
    with FileServer(lifetime=60) as server:
        entry["files"] = [{**entry["files"][0],
                           "url": server.publish(f"/all_public_uvr_models/{name}.pth", path.read_bytes())}]
        reg = tmp_path / "reg.yaml"
        reg.write_text(yaml.safe_dump({"version": 1, "models": {name: entry}}, sort_keys=False))
        result = run_unmix(str(song), "-m", name, "--registry", str(reg), "-o", str(tmp_path / "out"), "-f", "wav",
                           "--bit-depth", "32", "--clip", "none")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out" / name / "song"
    assert sorted(p.name for p in out.iterdir()) == ["no_reverb.wav", "reverb.wav"]
    theirs = run_reference(ref, net, "4band_v3", song, "No Reverb", False, window_size=512, aggression=5)
    for stem, expected in zip(("no_reverb", "reverb"), theirs):
        mine = sf.read(out / f"{stem}.wav", dtype="float32", always_2d=True)[0].T
        n = expected.shape[1]
        assert mine.shape == mix.shape
        assert rel_err(mine[:, :n], expected) < TOL_TRACK, stem


def test_cli_unknown_hash_is_one_line(ref, tmp_path):
    """A local .pth UVR's table does not know: one line naming the file, a hint naming
    --model-params, nothing written."""
    from conftest import run_unmix, stderr_of

    bins = family.param_set("4band_v2").bins
    path = save(reference_net(ref, 31191, bins, seed=15), tmp_path / "mystery.pth")
    song = tmp_path / "song.wav"
    write_song(song, seconds=0.5, seed=16)
    result = run_unmix(str(song), "-m", str(path), "-o", str(tmp_path / "out"))
    err = stderr_of(result).strip()
    lines = err.splitlines()  # the error, and its hint
    assert result.exit_code != 0 and len(lines) == 2 and lines[1].lstrip().startswith("hint:"), err
    assert "mystery.pth" in lines[0] and "--model-params" in lines[1] and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.wav"))
