"""MDX-Net (UVR's ConvTDFNet .onnx): our torch network read from the ONNX graph, against the reference.

The reference is audio-separator 0.47.1 (installed with --no-deps, test-only): its
`uvr_lib_v5.mdxnet.ConvTDFNet` (KUIELab's network, the class UVR's ONNX files were
exported from) draws random weights and BatchNorm statistics; torch.onnx.export writes
it as UVR's files are (input "input": the spectrogram [B, 4, dim_f, dim_t]); onnxruntime
runs that file beside our module loaded from the same file. Its `STFT` class and its
`MDXSeparator.demix` run beside ours on the same mix. Shapes are shrunk from UVR's
(num_blocks 11, l 3, g 48, k 3, bn 8, dim_f 2048/3072, n_fft 6144/7680, dim_t 256)
to num_blocks 5, l 2, g 8, dim_f 64, n_fft 128, dim_t 16, keeping the structure.

audio-separator's package `__init__` imports its whole separator (pydub, onnx2torch,
...); the reference modules are loaded from its files under namespace stand-ins for
its packages, with stand-ins for imports its MDX code does not use here (pytorch_lightning's
base class, pydub, onnx2torch, six) where they are not installed.
"""

from __future__ import annotations

import logging
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from unmixcli.errors import CheckpointError
from unmixcli.families import mdxnet as family
from unmixcli.models.mdxnet import MDXNet

import onnxruntime as ort  # a hard import: the oracles must not be skipped
import uvr_oracle

TOL = 1e-5  # of the reference's peak
SMALL = dict(dim_c=4, dim_f=64, dim_t=16, n_fft=128, hop_length=32, num_blocks=5, l=2, g=8, k=3)


@pytest.fixture(scope="module")
def ref():
    """audio-separator's uvr_lib_v5 modules (mdxnet, stft) and its MDXSeparator class."""
    mods, saved = uvr_oracle.load(uvr_oracle.MDX_MODULES)
    yield mods
    uvr_oracle.unload(saved)


def reference_net(ref, seed: int, *, bn: int = 4, bias: bool = False):
    """audio-separator's ConvTDFNet (BatchNorm: optimizer "rmsprop") with every float drawn at random."""
    torch.manual_seed(seed)
    net = ref.mdxnet.ConvTDFNet(target_name="vocals", lr=1e-4, optimizer="rmsprop", bn=bn, bias=bias,
                                overlap=0, **SMALL)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, value in net.state_dict().items():
            if not value.is_floating_point() or name in ("window", "freq_pad"):
                continue
            noise = torch.randn(value.shape, generator=gen)
            if name.endswith("running_var"):
                value.copy_(0.5 + noise.abs())
            elif name.endswith("weight") and value.ndim == 1:  # BatchNorm scale
                value.copy_(1 + 0.2 * noise)
            else:
                value.copy_(0.3 * noise)
    return net.eval()


def export(net, path: Path, **kwargs) -> Path:
    """As UVR's files: the spectrogram in, the spectrogram out, a free batch axis."""
    x = torch.randn(1, SMALL["dim_c"], SMALL["dim_f"], SMALL["dim_t"])
    torch.onnx.export(net, x, str(path), input_names=["input"], output_names=["output"], opset_version=13,
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, dynamo=False, **kwargs)
    return path


def run_onnx(path: Path, spec: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": spec})[0]


def rel_err(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.mark.parametrize("bn, bias, folding", [(4, False, True), (0, True, True), (2, True, False)])
def test_network_matches_onnxruntime(ref, tmp_path, bn, bias, folding):
    net = reference_net(ref, seed=bn + 10 * bias, bn=bn, bias=bias)
    path = export(net, tmp_path / "m.onnx", do_constant_folding=folding)
    ours, dims = family.load_network(path)
    cfg = ours.cfg
    assert (cfg.dim_c, cfg.dim_f, cfg.g, cfg.n, cfg.l, cfg.k, cfg.bn, cfg.bias) == (
        4, SMALL["dim_f"], SMALL["g"], SMALL["num_blocks"] // 2, SMALL["l"], SMALL["k"], bn, bias)
    assert dims == (None, 4, SMALL["dim_f"], SMALL["dim_t"])
    spec = torch.randn(2, 4, SMALL["dim_f"], SMALL["dim_t"], generator=torch.Generator().manual_seed(1))
    theirs = run_onnx(path, spec.numpy())
    with torch.no_grad():
        torch_ref = net(spec).numpy()
        # Both layouts: channels-last (the CPU's) and the plain one (CUDA's, MPS's).
        for channels_last in (True, False):
            ours.channels_last = channels_last
            mine = ours(spec).numpy()
            assert rel_err(mine, theirs) < TOL, channels_last
            assert rel_err(mine, torch_ref) < TOL, channels_last


def test_folded_and_unfolded_norms_are_read(ref, tmp_path):
    """The exporter folds the BatchNorm after each conv, but not after transposed convs
    and linear maps: both kinds must be read from the graph."""
    net = reference_net(ref, seed=3)
    layers, _ = family.read_graph_layers(export(net, tmp_path / "m.onnx"))
    kinds = {(layer.kind, layer.norm is not None) for layer in layers}
    assert ("conv", False) in kinds and ("convT", True) in kinds and ("linear", True) in kinds


def test_spectrogram_matches_reference_stft(ref):
    """Our front end and its inverse against audio-separator's STFT class."""
    n_fft, hop, dim_f = SMALL["n_fft"], SMALL["hop_length"], SMALL["dim_f"]
    theirs = ref.stft.STFT(logging.getLogger("t"), n_fft, hop, dim_f, torch.device("cpu"))
    model = MDXNet(torch.nn.Identity(), n_fft=n_fft, hop=hop, dim_f=dim_f, dim_t=SMALL["dim_t"])
    wave = torch.randn(3, 2, model.chunk_size, generator=torch.Generator().manual_seed(2))
    spec = model.spectrogram(wave)
    expected = theirs(wave)
    assert spec.shape == (3, 4, dim_f, SMALL["dim_t"])
    assert rel_err(spec.numpy(), expected.numpy()) < TOL
    assert rel_err(model.waveform(spec).numpy(), theirs.inverse(expected).numpy()) < TOL


@pytest.mark.parametrize("overlap, denoise", [(0.25, False), (0.5, True)])
def test_demix_matches_mdx_separator(ref, tmp_path, overlap, denoise):
    """The whole track: our chunking, STFT and network against MDXSeparator.demix running the
    same ONNX file in onnxruntime (its path when segment_size == dim_t)."""
    net = reference_net(ref, seed=5)
    path = export(net, tmp_path / "m.onnx")
    sep = reference_separator(ref, path, hop=SMALL["hop_length"], dim_t=SMALL["dim_t"], n_fft=SMALL["n_fft"],
                              dim_f=SMALL["dim_f"], overlap=overlap, denoise=denoise)
    mix = np.random.default_rng(0).standard_normal((2, 2000)).astype(np.float32) * 0.3
    theirs = sep.demix(mix.copy())

    ours_net, _ = family.load_network(path)
    model = MDXNet(ours_net, n_fft=SMALL["n_fft"], hop=SMALL["hop_length"], dim_f=SMALL["dim_f"],
                   dim_t=SMALL["dim_t"], denoise=denoise)
    mine = model.demix(torch.from_numpy(mix), overlap=overlap).numpy()
    assert mine.shape == theirs.shape == mix.shape
    assert rel_err(mine, theirs) < TOL


def test_not_a_convtdfnet(tmp_path):
    """An ONNX file of another network is refused with a CheckpointError naming the file."""
    other = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    path = tmp_path / "other.onnx"
    torch.onnx.export(other, torch.randn(1, 8), str(path), input_names=["input"], dynamo=False)
    with pytest.raises(CheckpointError, match="other.onnx"):
        family.load_network(path)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx at all")
    with pytest.raises(CheckpointError, match="junk.onnx"):
        family.load_network(junk)


def test_uvr_hash_and_table(tmp_path):
    small = tmp_path / "a.onnx"
    small.write_bytes(b"x" * 1000)
    import hashlib

    assert family.uvr_hash(small) == hashlib.md5(b"x" * 1000).hexdigest()
    big = tmp_path / "b.onnx"
    big.write_bytes(b"head" + b"y" * family.HASH_BYTES)
    assert family.uvr_hash(big) == hashlib.md5(b"y" * family.HASH_BYTES).hexdigest()
    # audio-separator's own row, merged over UVR's.
    row = family.model_data("cb790d0c913647ced70fc6b38f5bea1a")
    assert row is not None and row.dim_t == 256 and row.primary_stem == "Instrumental"
    assert row.secondary_stem == "Vocals"
    assert family.model_data("0" * 32) is None


def reference_separator(ref, path: Path, *, hop: int, dim_t: int, n_fft: int, dim_f: int, overlap: float,
                        denoise: bool = False):
    """audio-separator's MDXSeparator set up as its __init__ would for these model data, running the
    ONNX file in onnxruntime (its path when segment_size == dim_t); its __init__ also reads files."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sep = object.__new__(ref.separator.MDXSeparator)
    sep.logger = logging.getLogger("t")
    sep.hop_length, sep.segment_size, sep.dim_t = hop, dim_t, dim_t
    sep.n_fft, sep.dim_f = n_fft, dim_f
    sep.overlap, sep.batch_size, sep.enable_denoise = overlap, 1, denoise
    sep.torch_device = torch.device("cpu")
    sep.model_run = lambda spek: session.run(None, {"input": spek.cpu().numpy()})[0]
    return sep


def test_whole_track_through_the_engine(ref, tmp_path, monkeypatch):
    """A local .onnx found in UVR's table by its hash, run by the engine: the primary stem is
    compensate * MDXSeparator.demix (UVR's SeperateMDX), the secondary the mix minus it."""
    from unmixcli.engine import EngineOptions, separate_tensor

    net = reference_net(ref, seed=7)
    path = export(net, tmp_path / "UVR-MDX-NET-tiny.onnx")
    row = {"compensate": 1.035, "mdx_dim_f_set": SMALL["dim_f"], "mdx_dim_t_set": 4,
           "mdx_n_fft_scale_set": 2048, "primary_stem": "Vocals"}
    table = dict(family._table())
    table[family.uvr_hash(path)] = row
    monkeypatch.setattr(family, "_table", lambda: table)
    assert family.accepts(path)
    bag = family.load_local(path)
    assert bag.sources == ["vocals", "instrumental"]

    mix = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 40000)).astype(np.float32) * 0.2)
    out = separate_tensor(bag, mix, None, EngineOptions(precision="fp32"), torch.device("cpu"))
    sep = reference_separator(ref, path, hop=family.HOP, dim_t=16, n_fft=2048, dim_f=SMALL["dim_f"],
                              overlap=family.OVERLAP)
    primary = sep.demix(mix.numpy().copy()) * row["compensate"]
    assert rel_err(out["vocals"].numpy(), primary) < TOL
    assert rel_err(out["instrumental"].numpy(), mix.numpy() - primary) < TOL
    # --precision bf16 runs the network under bf16 autocast (the STFTs and the overlap-add stay
    # float32): close to the float32 result, not equal to it; auto keeps float32.
    bf16 = separate_tensor(bag, mix, None, EngineOptions(precision="bf16"), torch.device("cpu"))
    err = rel_err(bf16["vocals"].numpy(), primary)
    assert TOL < err < 3e-2, err
    auto = separate_tensor(bag, mix, None, EngineOptions(precision="auto"), torch.device("cpu"))
    assert rel_err(auto["vocals"].numpy(), primary) < TOL


def test_sidecar_model_data_and_mismatch(ref, tmp_path):
    net = reference_net(ref, seed=8)
    path = export(net, tmp_path / "custom.onnx")
    with pytest.raises(CheckpointError, match="no MDX-Net model with hash"):
        family.load_local(path)
    assert not family.accepts(path)
    side = tmp_path / "custom.json"
    side.write_text('{"compensate": 1.0, "mdx_dim_f_set": 64, "mdx_dim_t_set": 4, '
                    '"mdx_n_fft_scale_set": 2048, "primary_stem": "No Crowd"}')
    bag = family.load_local(path)
    assert bag.sources == ["no_crowd", "crowd"]
    side.write_text('{"compensate": 1.0, "mdx_dim_f_set": 128, "mdx_dim_t_set": 4, '
                    '"mdx_n_fft_scale_set": 2048, "primary_stem": "Vocals"}')
    with pytest.raises(CheckpointError, match="64 frequency bins"):
        family.load_local(path)
    side.write_text('{"compensate": 1.0}')
    with pytest.raises(CheckpointError, match="lacks mdx_dim_f_set"):
        family.load_local(path)
    # An n_fft no longer than UVR's hop of 1024 leaves samples no window covers (no inverse STFT).
    side.write_text('{"compensate": 1.0, "mdx_dim_f_set": 64, "mdx_dim_t_set": 4, '
                    '"mdx_n_fft_scale_set": 1024, "primary_stem": "Vocals"}')
    with pytest.raises(CheckpointError, match="n_fft 1024 must exceed the hop"):
        family.load_local(path)


def test_registry_entry_config(ref, tmp_path):
    """A registry entry's inline config supplies the row (UVR's keys) and the demix options."""
    net = reference_net(ref, seed=9)
    export(net, tmp_path / "entry.onnx")
    config = {"compensate": 1.02, "mdx_dim_f_set": 64, "mdx_dim_t_set": 4, "mdx_n_fft_scale_set": 2048,
              "primary_stem": "Instrumental", "overlap": 0.5, "denoise": True}
    spec = types.SimpleNamespace(name="tiny-mdx", checkpoint="entry.onnx", config=config,
                                 stems=("Vocals", "Instrumental"), source="models.yaml")
    bag = family.load_spec(spec, tmp_path)
    model = bag.models[0]
    assert bag.sources == ["instrumental", "vocals"]
    assert (model.overlap, model.model.denoise, model.compensate, model.model.n_fft) == (0.5, True, 1.02, 2048)
    spec.config = {**config, "overlap": 1.0}
    with pytest.raises(CheckpointError, match="overlap"):
        family.load_spec(spec, tmp_path)
    spec.config = "config.yaml"
    with pytest.raises(CheckpointError, match="inline mapping"):
        family.load_spec(spec, tmp_path)


@pytest.mark.slow
def test_released_size_network(ref, tmp_path):
    """UVR's usual shape (num_blocks 11, l 3, g 48, bn 8, dim_f 2048) against onnxruntime."""
    torch.manual_seed(0)
    net = ref.mdxnet.ConvTDFNet(target_name="vocals", lr=1e-4, optimizer="rmsprop", dim_c=4, dim_f=2048,
                                dim_t=32, n_fft=6144, hop_length=1024, num_blocks=11, l=3, g=48, k=3, bn=8,
                                bias=False, overlap=0).eval()
    x = torch.randn(1, 4, 2048, 32)
    path = tmp_path / "big.onnx"
    torch.onnx.export(net, x, str(path), input_names=["input"], output_names=["output"], opset_version=13,
                      dynamo=False)
    ours, _ = family.load_network(path)
    assert (ours.cfg.g, ours.cfg.n, ours.cfg.l, ours.cfg.bn) == (48, 5, 3, 8)
    with torch.no_grad():
        mine = ours(x).numpy()
    assert rel_err(mine, run_onnx(path, x.numpy())) < TOL


def test_local_file_routing(ref, tmp_path):
    """A local .onnx, and a folder holding it with its model data, load through the families
    table's `mdxnet` row."""
    from unmixcli import families

    assert families.FAMILIES["mdxnet"].suffixes == (".onnx",)
    folder = tmp_path / "model"
    folder.mkdir()
    path = export(reference_net(ref, seed=11), folder / "m.onnx")
    (folder / "m.json").write_text('{"compensate": 1.0, "mdx_dim_f_set": 64, "mdx_dim_t_set": 4, '
                                   '"mdx_n_fft_scale_set": 2048, "primary_stem": "Bass"}')
    assert families.load_local(path).sources == ["bass", "no_bass"]
    assert families.load_local(folder).sources == ["bass", "no_bass"]


# --------------------------------------------------------------------------- registry and CLI

AS_PREFIX = "https://github.com/TRvlvr/model_repo/releases/download/all_public_uvr_models/"


def _as_scores() -> dict:
    """audio-separator's own list of the models it runs, with their stems (its package data)."""
    import json
    from importlib import metadata

    # From the installed distribution: the `ref` fixture may hold a stand-in package meanwhile.
    return json.loads(Path(metadata.distribution("audio-separator").locate_file(
        "audio_separator/models-scores.json")).read_text())


def test_registry_entries_are_the_files_audio_separator_downloads():
    """Every mdxnet entry names a file audio-separator knows, at the URL it downloads from, with
    its stems (primary first, as UVR's table orders them) and its published median SDR."""
    from unmixcli.registry import load_registry

    scores = _as_scores()
    entries = [s for s in load_registry(include_user=False) if s.family == "mdxnet"]
    assert {"Kim_Vocal_2", "UVR-MDX-NET-Inst_HQ_3", "UVR-MDX-NET-Inst_HQ_4", "UVR-MDX-NET-Inst_HQ_5",
            "UVR-MDX-NET-Voc_FT", "UVR_MDXNET_KARA_2", "Reverb_HQ_By_FoxJoy"} <= {s.name for s in entries}
    for spec in entries:
        (file,) = spec.files
        assert file.name == spec.checkpoint == f"{spec.name}.onnx"
        assert file.url == AS_PREFIX + file.name and file.trust_first
        theirs = scores[file.name]
        assert list(spec.stems) == [s.replace(" ", "_") for s in theirs["stems"]]
        assert spec.stems[0] == theirs["target_stem"].replace(" ", "_")
        if theirs.get("median_scores"):
            assert spec.sdr.stems == {k.replace(" ", "_"): round(v["SDR"], 2)
                                      for k, v in theirs["median_scores"].items()}


def _served_entry(tmp_path, server, name: str, data: bytes) -> Path:
    """A user registry holding models.yaml's own entry `name`, its file served from loopback."""
    import yaml

    from unmixcli.registry import builtin_registry_path

    entry = dict(yaml.safe_load(builtin_registry_path().read_text())["models"][name])
    entry["files"] = [{**entry["files"][0], "url": server.publish(f"/all_public_uvr_models/{name}.onnx", data)}]
    reg = tmp_path / "reg.yaml"
    reg.write_text(yaml.safe_dump({"version": 1, "models": {name: entry}}, sort_keys=False))
    return reg


def test_cli_kim_vocal_2_karaoke_from_the_url_server(ref, tmp_path, monkeypatch, hf_env):
    """`unmix song.wav -m Kim_Vocal_2 --karaoke`: the registry entry downloads its .onnx (random
    weights in UVR's export layout), finds its row in UVR's table by hash, and writes vocals and
    instrumental equal to audio-separator's MDX demix on the same file."""
    import soundfile as sf
    from urlserver import FileServer

    from conftest import run_unmix

    monkeypatch.setenv("UNMIX_CACHE", str(tmp_path / "cache"))
    path = export(reference_net(ref, seed=21), tmp_path / "Kim_Vocal_2.onnx")
    row = {"compensate": 1.009, "mdx_dim_f_set": SMALL["dim_f"], "mdx_dim_t_set": 4,
           "mdx_n_fft_scale_set": 2048, "primary_stem": "Vocals"}
    table = dict(family._table())
    table[family.uvr_hash(path)] = row
    monkeypatch.setattr(family, "_table", lambda: table)
    mix = (np.random.default_rng(4).standard_normal((2, 30000)) * 0.2).astype(np.float32)
    song = tmp_path / "song.wav"
    sf.write(song, mix.T, 44100, subtype="FLOAT")
    with FileServer(lifetime=60) as server:
        reg = _served_entry(tmp_path, server, "Kim_Vocal_2", path.read_bytes())
        result = run_unmix(str(song), "-m", "Kim_Vocal_2", "--karaoke", "--registry", str(reg), "-o",
                           str(tmp_path / "out"), "-f", "wav", "--bit-depth", "32", "--clip", "none")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out" / "Kim_Vocal_2" / "song"
    assert sorted(p.name for p in out.iterdir()) == ["instrumental.wav", "vocals.wav"]
    vocals = sf.read(out / "vocals.wav", dtype="float32", always_2d=True)[0].T
    inst = sf.read(out / "instrumental.wav", dtype="float32", always_2d=True)[0].T
    sep = reference_separator(ref, path, hop=family.HOP, dim_t=16, n_fft=2048, dim_f=SMALL["dim_f"],
                              overlap=family.OVERLAP)
    primary = sep.demix(mix.copy()) * row["compensate"]
    assert rel_err(vocals, primary) < 1e-4
    assert rel_err(inst, mix - primary) < 1e-4


def test_cli_unknown_hash_asks_for_model_params_then_runs_with_them(ref, tmp_path):
    """A local .onnx UVR's table does not know: one line naming the file and --model-params; given
    the parameters as JSON, it runs."""
    import soundfile as sf

    from conftest import run_unmix, stderr_of

    path = export(reference_net(ref, seed=22), tmp_path / "mystery.onnx")
    song = tmp_path / "song.wav"
    sf.write(song, (np.random.default_rng(5).standard_normal((20000, 2)) * 0.2).astype(np.float32), 44100)
    result = run_unmix(str(song), "-m", str(path), "-o", str(tmp_path / "out"))
    err = stderr_of(result).strip()
    lines = err.splitlines()  # the error, and its hint
    assert result.exit_code != 0 and len(lines) == 2 and lines[1].lstrip().startswith("hint:"), err
    assert "mystery.onnx" in lines[0] and "--model-params" in lines[1] and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.wav"))
    params = tmp_path / "params.json"
    params.write_text('{"compensate": 1.0, "mdx_dim_f_set": 64, "mdx_dim_t_set": 4, '
                      '"mdx_n_fft_scale_set": 2048, "primary_stem": "Instrumental"}')
    result = run_unmix(str(song), "-m", str(path), "--model-params", str(params), "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out" / "mystery" / "song").iterdir()) == \
        ["instrumental.wav", "vocals.wav"]
