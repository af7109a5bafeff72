"""SpeechBrain SepFormer against `speechbrain==1.1.2` itself, and `unmix` end to end.

A small random configuration is written in the layout of the published
`hyperparams.yaml` (speechbrain/sepformer-wsj02mix: Encoder, SBtfintra, SBtfinter,
MaskNet, Decoder, modules, pretrainer). HyperPyYAML builds SpeechBrain's own
classes from that very file (the oracle); their random weights are saved as the
published `encoder.ckpt` / `masknet.ckpt` / `decoder.ckpt` state dicts; our family
reads the same yaml as plain data and must give SpeechBrain's `separate_batch`
output within 1e-5 of its peak.

speechbrain is a test-only oracle, installed without its dependencies:
`pip install --no-deps speechbrain==1.1.2 hyperpyyaml==1.2.3 ruamel.yaml==0.19.1`.
Its package imports torchaudio at import time (only to check the audio backend;
the separation modules never call it), and no torchaudio wheel matches our torch,
so a stand-in module is used when torchaudio is not installed.
"""

from __future__ import annotations

import sys
import textwrap
import types

import numpy as np
import pytest
import soundfile as sf
import torch

from hyperpyyaml import load_hyperpyyaml  # a hard import: CI must not skip the oracle silently


def _import_oracle():
    """speechbrain's dual-path classes (what HyperPyYAML builds from the yaml), imported with an
    empty torchaudio stand-in when torchaudio is not installed, removed again afterwards."""
    stand_in = None
    if "torchaudio" not in sys.modules:
        try:
            import torchaudio  # noqa: F401
        except ImportError:
            stand_in = sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    try:
        import speechbrain.lobes.models.dual_path  # noqa: F401
        import speechbrain.utils.parameter_transfer  # noqa: F401  (the yaml's pretrainer)
    finally:
        if stand_in is not None and sys.modules.get("torchaudio") is stand_in:
            del sys.modules["torchaudio"]


_import_oracle()

from unmixcli import families  # noqa: E402
from unmixcli.errors import CheckpointError  # noqa: E402
from unmixcli.families import sepformer as family  # noqa: E402

TOL = 1e-5  # of the reference output's peak

#: The published layout (speechbrain/sepformer-wsj02mix hyperparams.yaml), with small sizes.
LAYOUT = """\
# ################################
# Model: Inference for source separation with SepFormer
# https://arxiv.org/abs/2010.13154
# Dataset : {dataset}
# ################################

sample_rate: {rate}
num_spks: {spks}

# Specifying the network
Encoder: !new:speechbrain.lobes.models.dual_path.Encoder
    kernel_size: {kernel}
    out_channels: {channels}

SBtfintra: !new:speechbrain.lobes.models.dual_path.SBTransformerBlock
    num_layers: {layers}
    d_model: {channels}
    nhead: {heads}
    d_ffn: {ffn}
    dropout: 0
    use_positional_encoding: {pos}
    norm_before: {norm_before}

SBtfinter: !new:speechbrain.lobes.models.dual_path.SBTransformerBlock
    num_layers: {layers}
    d_model: {channels}
    nhead: {heads}
    d_ffn: {ffn}
    dropout: 0
    use_positional_encoding: {pos}
    norm_before: {norm_before}

MaskNet: !new:speechbrain.lobes.models.dual_path.Dual_Path_Model
    num_spks: !ref <num_spks>
    in_channels: {channels}
    out_channels: {channels}
    num_layers: {blocks}
    K: {K}
    intra_model: !ref <SBtfintra>
    inter_model: !ref <SBtfinter>
    norm: ln
    linear_layer_after_inter_intra: {linear}
    skip_around_intra: True

Decoder: !new:speechbrain.lobes.models.dual_path.Decoder
    in_channels: {channels}
    out_channels: 1
    kernel_size: {kernel}
    stride: {stride}
    bias: False

modules:
    encoder: !ref <Encoder>
    decoder: !ref <Decoder>
    masknet: !ref <MaskNet>

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        masknet: !ref <MaskNet>
        encoder: !ref <Encoder>
        decoder: !ref <Decoder>
"""

WSJ = dict(dataset="wsj0-2mix", rate=8000, spks=2, kernel=16, stride=8, channels=16, layers=1, heads=2, ffn=24,
           pos="True", norm_before="True", blocks=2, K=20, linear="False")
DNS = dict(WSJ, dataset="DNS4", rate=16000, spks=1, kernel=8, stride=4, channels=8, heads=4, ffn=16, blocks=1,
           K=16, pos="False", norm_before="False", linear="True")


def write_model(folder, seed: int = 0, **config) -> dict:
    """hyperparams.yaml in the published layout and the three .ckpt state dicts of random weights.

    Returns the oracle's modules, built by HyperPyYAML from the written file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    text = LAYOUT.format(**config)
    (folder / "hyperparams.yaml").write_text(text)
    hp = load_hyperpyyaml(text)
    g = torch.Generator().manual_seed(seed)
    for part in ("encoder", "masknet", "decoder"):
        module = hp["modules"][part]
        with torch.no_grad():
            for name, p in module.named_parameters():
                scale = 0.5 if part == "encoder" else 0.2
                p.copy_(torch.randn(p.shape, generator=g) * scale + (1.0 if "norm" in name and "weight" in name else 0))
        module.eval()
        torch.save(module.state_dict(), folder / f"{part}.ckpt")
    return hp


def separate_batch(hp, mix: torch.Tensor) -> np.ndarray:
    """SpeechBrain's `SepformerSeparation.separate_batch` on its modules: [B, T] -> [B, spks, T]."""
    mods = hp["modules"]
    with torch.no_grad():
        w = mods["encoder"](mix)
        masks = mods["masknet"](w)
        sep = torch.stack([w] * hp["num_spks"]) * masks
        est = torch.cat([mods["decoder"](sep[i]).unsqueeze(-1) for i in range(hp["num_spks"])], dim=-1)
        t, t_est = mix.shape[1], est.shape[1]
        est = torch.nn.functional.pad(est, (0, 0, 0, t - t_est)) if t > t_est else est[:, :t]
    return est.permute(0, 2, 1).numpy()


def speechy(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    a = np.sin(2 * np.pi * (170 * t + 4 * np.sin(2 * np.pi * 3 * t))) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))
    b = np.sign(np.sin(2 * np.pi * 120 * t)) * 0.3 * (np.sin(2 * np.pi * 0.9 * t) > 0)
    return (0.4 * a + 0.3 * b + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    peak = np.abs(want).max()
    assert peak > 1e-3
    assert np.abs(got - want).max() <= TOL * peak, np.abs(got - want).max() / peak


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("config", [WSJ, DNS], ids=["wsj02mix", "dns4-enhancement"])
def test_matches_speechbrain(config, tmp_path):
    hp = write_model(tmp_path / "m", **config)
    bag = family.load_local(tmp_path / "m")
    spks = config["spks"]
    assert bag.sources == (["speech", "noise"] if spks == 1 else ["speaker1", "speaker2"])
    c = bag.contracts[0]
    assert c.samplerate == config["rate"] and c.channels == 1 and not c.normalize
    for n in (int(0.5 * config["rate"]), 3001):  # a multiple of the stride and not
        x = torch.from_numpy(speechy(n / config["rate"], config["rate"], seed=n))[None]  # [1, T]
        want = separate_batch(hp, x)[0]
        with torch.no_grad():
            got = bag.models[0](x[:, None]).numpy()[0, :, 0]  # [S, T]
        assert_close(got[:spks], want)
        if spks == 1:
            np.testing.assert_allclose(got[1], x[0].numpy() - got[0], atol=1e-6)


def test_a_batch_equals_one_by_one(tmp_path):
    write_model(tmp_path / "m", **WSJ)
    model = family.load_local(tmp_path / "m" / "hyperparams.yaml").models[0]
    x = torch.randn(2, 1, 2400, generator=torch.Generator().manual_seed(3)) * 0.3
    with torch.no_grad():
        both = model(x)
        one = torch.cat([model(x[i:i + 1]) for i in range(2)])
    torch.testing.assert_close(both, one, atol=1e-5, rtol=1e-4)



def test_the_hyperparams_file_loads_its_folder(tmp_path):
    """-m folder/hyperparams.yaml: the .yaml suffix alone would send it to Demucs' bag loader."""
    write_model(tmp_path / "m", **WSJ)
    by_file = families.load_local(tmp_path / "m" / "hyperparams.yaml")
    by_folder = families.load_local(tmp_path / "m")
    assert by_file.sources == by_folder.sources == ["speaker1", "speaker2"]
    x = torch.randn(1, 1, 2400, generator=torch.Generator().manual_seed(4)) * 0.3
    with torch.no_grad():
        torch.testing.assert_close(by_file.models[0](x), by_folder.models[0](x))

# --------------------------------------------------------------------------- hyperparams.yaml as data


def test_yaml_tags_are_data_never_objects(tmp_path, monkeypatch):
    """The loader records `!new:` / `!name:` / `!apply:` / `!ref` and constructs nothing."""
    import importlib

    calls = []
    monkeypatch.setattr(importlib, "import_module", lambda *a, **k: calls.append(a))
    path = tmp_path / "hyperparams.yaml"
    path.write_text(textwrap.dedent("""\
        a: !new:os.system {command: "touch HACKED"}
        b: !name:subprocess.call
        c: !apply:os.getcwd []
        d: !ref <a>
        e: !copy <b>
        """))
    data = family.read_hyperparams(path)
    assert isinstance(data["a"], family.Tagged) and data["a"].target == "os.system"
    assert data["b"].kind == "name" and data["c"].kind == "apply"
    assert isinstance(data["d"], family.Ref) and data["e"].copy
    assert not calls and not (tmp_path / "HACKED").exists()
    # PyYAML's own Python tags stay refused by the safe loader: one line, nothing run.
    path.write_text('f: !!python/object/apply:os.system ["touch HACKED"]\n')
    with pytest.raises(CheckpointError, match="not valid YAML"):
        family.read_hyperparams(path)
    assert not (tmp_path / "HACKED").exists()


def test_a_foreign_class_is_refused(tmp_path):
    write_model(tmp_path / "m", **WSJ)
    hp = tmp_path / "m" / "hyperparams.yaml"
    hp.write_text(hp.read_text().replace("speechbrain.lobes.models.dual_path.Decoder", "os.system"))
    with pytest.raises(CheckpointError, match="os.system, not a class this family builds") as info:
        family.load_local(tmp_path / "m")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("edit,match", [
    (("K: 20", "K: 21"), "must be even"),
    (("out_channels: 1", "out_channels: 2"), "out_channels"),
    (("norm: ln", "norm: gln"), "norm"),
    (("    bias: False", "    bias: False\n    frobnicate: 1"), "unsupported argument"),
    (("num_layers: 2", "num_layers: 3"), "do not fit|missing"),
    (("sample_rate: 8000", "sample_rate: fast"), "sample_rate"),
])
def test_bad_hyperparams_are_one_line_errors(tmp_path, edit, match):
    write_model(tmp_path / "m", **WSJ)
    hp = tmp_path / "m" / "hyperparams.yaml"
    text = hp.read_text()
    assert edit[0] in text
    hp.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(CheckpointError, match=match) as info:
        family.load_local(tmp_path / "m")
    assert "\n" not in str(info.value)


def test_pickled_objects_in_a_ckpt_are_refused(tmp_path):
    write_model(tmp_path / "m", **WSJ)
    torch.save({"weight": types.SimpleNamespace()}, tmp_path / "m" / "decoder.ckpt")
    with pytest.raises(CheckpointError, match="not plain data"):
        family.load_local(tmp_path / "m")
    (tmp_path / "m" / "decoder.ckpt").unlink()
    with pytest.raises(CheckpointError, match="lacks decoder.ckpt"):
        family.load_local(tmp_path / "m")


# --------------------------------------------------------------------------- registry and CLI


def _publish_builtin(fake_hub, tmp_path, name: str, config: dict) -> dict:
    """Random weights in the official layout, served as models.yaml's own entry `name`'s Hub repo."""
    from unmixcli.registry import load_registry

    spec = load_registry(include_user=False).get(name)
    assert spec.family == "sepformer" and spec.repo
    hp = write_model(tmp_path / "publish", **config)
    files = {p.name: p.read_bytes() for p in (tmp_path / "publish").iterdir()}
    assert {f.name for f in spec.files} == set(files)
    fake_hub.add_repo(spec.repo, files)
    return hp


def test_registry_entries():
    from unmixcli.registry import load_registry

    reg = load_registry(include_user=False)
    want = {"sepformer-wsj02mix": ("speechbrain/sepformer-wsj02mix", 8000, ["speaker1", "speaker2"]),
            "sepformer-whamr": ("speechbrain/sepformer-whamr", 8000, ["speaker1", "speaker2"]),
            "sepformer-dns4-16k-enhancement": ("speechbrain/sepformer-dns4-16k-enhancement", 16000,
                                               ["speech", "noise"])}
    for name, (repo, rate, stems) in want.items():
        spec = reg.get(name)
        assert (spec.family, spec.repo, spec.sample_rate, list(spec.stems)) == ("sepformer", repo, rate, stems)
        assert spec.licence == "Apache-2.0"
        assert {f.name for f in spec.files} == {"hyperparams.yaml", "encoder.ckpt", "masknet.ckpt", "decoder.ckpt"}


def test_cli_separates_speakers_from_the_fake_hub(fake_hub, tmp_path):
    """`unmix talk.wav -m sepformer-wsj02mix`: downloads the repo, writes speaker1/speaker2."""
    from conftest import run_unmix

    hp = _publish_builtin(fake_hub, tmp_path, "sepformer-wsj02mix", WSJ)
    rate = 8000
    x = speechy(1.5, rate) * 0.3  # quiet enough that no stem needs the anti-clipping gain
    talk = tmp_path / "talk.wav"
    sf.write(talk, x, rate, subtype="FLOAT")
    out = tmp_path / "out"
    result = run_unmix(str(talk), "-m", "sepformer-wsj02mix", "-o", str(out), "-q", "--device", "cpu")
    assert result.exit_code == 0, result.output
    stems = {p.stem: p for p in out.rglob("*.wav")}
    assert sorted(stems) == ["speaker1", "speaker2"]
    want = separate_batch(hp, torch.from_numpy(x)[None])[0]  # one segment: the whole file in one forward
    for i, name in enumerate(("speaker1", "speaker2")):
        got, got_rate = sf.read(stems[name], dtype="float32")
        assert got_rate == rate and got.shape == x.shape  # the input's rate (also the model's)
        assert np.abs(got - want[i]).max() <= 1e-4 * np.abs(want).max()  # after writing float WAV


def test_cli_resamples_and_downmixes_a_16k_stereo_input(fake_hub, tmp_path):
    """A 16 kHz stereo file into the 8 kHz mono model: `--sample-rate keep` writes 16 kHz."""
    from conftest import run_unmix

    _publish_builtin(fake_hub, tmp_path, "sepformer-wsj02mix", WSJ)
    rate = 16000
    x = np.stack([speechy(1.0, rate, seed=1), speechy(1.0, rate, seed=2)], 1)
    talk = tmp_path / "talk.wav"
    sf.write(talk, x, rate, subtype="FLOAT")
    for choice, want_rate in (("keep", 16000), ("model", 8000)):
        out = tmp_path / f"out-{choice}"
        result = run_unmix(str(talk), "-m", "sepformer-wsj02mix", "-o", str(out), "-q", "--sample-rate", choice)
        assert result.exit_code == 0, result.output
        data, got_rate = sf.read(next(out.rglob("speaker1.wav")), dtype="float32", always_2d=True)
        assert got_rate == want_rate and data.shape[1] == 1  # the model's mono
        assert abs(data.shape[0] - want_rate) <= 1  # the input's duration


def test_enhancement_entry_loads_as_speech_and_noise(fake_hub, tmp_path):
    _publish_builtin(fake_hub, tmp_path, "sepformer-dns4-16k-enhancement", DNS)
    bag = families.load_model("sepformer-dns4-16k-enhancement")
    assert bag.sources == ["speech", "noise"] and bag.contracts[0].samplerate == 16000


def test_inputs_shorter_than_one_frame_run(tmp_path):
    write_model(tmp_path / "m", **WSJ)
    model = family.load_local(tmp_path / "m").models[0]
    for n in (1, 9):
        with torch.no_grad():
            out = model(torch.randn(1, 1, n))
        assert out.shape == (1, 2, 1, n) and torch.isfinite(out).all()
