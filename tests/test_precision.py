"""`--precision auto` and bf16 where the hardware has no native bf16.

The decision is a pure function of the device's bf16 support, so both kinds of CPU are
covered here whatever this machine has; the probe itself is checked against this
machine's /proc/cpuinfo where there is one.
"""

from __future__ import annotations

import platform
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from demucs_export import export_tiny
from unmixcli import cli, engine
from unmixcli.engine import (BF16_EMULATED, BF16_FAST, BF16_NATIVE, EngineOptions, choose_precision,
                             cpu_bf16_support, effective_precision)

CPU = torch.device("cpu")


@pytest.mark.parametrize("requested, device, support, expected", [
    ("auto", "cpu", BF16_FAST, "bf16"),  # AVX-512 BF16 / AMX: measured ~1.8x faster
    ("auto", "cpu", BF16_NATIVE, "fp32"),  # native but not measured faster (arm64 BF16)
    ("auto", "cpu", BF16_EMULATED, "fp32"),  # AVX2-only: ~20x slower in bf16
    ("auto", "cuda", BF16_NATIVE, "fp32"),  # not measured on a GPU yet
    ("auto", "cuda", BF16_FAST, "bf16"),
    ("auto", "mps", BF16_NATIVE, "fp32"),
    ("fp32", "cpu", BF16_FAST, "fp32"),
    ("fp32", "cuda", BF16_FAST, "fp32"),
    ("bf16", "cpu", BF16_FAST, "bf16"),
    ("bf16", "cpu", BF16_NATIVE, "bf16"),
    ("bf16", "cpu", BF16_EMULATED, "bf16"),  # honoured, with a warning
    ("bf16", "cuda", BF16_EMULATED, "bf16"),
    ("bf16", "mps", BF16_NATIVE, "bf16"),  # float16 autocast, as before
])
def test_choose_precision(requested, device, support, expected):
    chosen, warning = choose_precision(requested, device, support)
    assert chosen == expected
    if requested == "bf16" and support == BF16_EMULATED:
        assert warning and "fp32" in warning and "native" in warning and "\n" not in warning
    else:
        assert warning is None


@pytest.mark.parametrize("machine, flags, expected", [
    ("x86_64", {"sse4_2", "avx2", "fma"}, BF16_EMULATED),  # most desktop and laptop chips
    ("x86_64", {"avx2", "avx512f", "avx512bw"}, BF16_EMULATED),  # AVX-512 without BF16 (Skylake-X)
    ("x86_64", {"avx512f", "avx512_bf16"}, BF16_FAST),  # Zen 4, Cooper Lake
    ("x86_64", {"avx512f", "amx_bf16", "amx_tile"}, BF16_FAST),  # Sapphire Rapids
    ("AMD64", {"avx512_bf16"}, BF16_FAST),  # Windows spells it so
    ("aarch64", {"fp", "asimd", "bf16"}, BF16_NATIVE),  # Graviton 3, Neoverse V1
    ("arm64", {"fp", "asimd"}, BF16_EMULATED),
    ("riscv64", {"bf16"}, BF16_EMULATED),
])
def test_cpu_bf16_support_from_flags(machine, flags, expected):
    assert cpu_bf16_support(machine, flags) == expected


def test_this_machine_is_probed_by_capability():
    """The probe agrees with /proc/cpuinfo's flags (Linux x86), and auto follows the probe."""
    support = engine.bf16_support(CPU)
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = None
    if text is not None and platform.machine().lower() in ("x86_64", "amd64"):
        native = "avx512_bf16" in text.split() or "amx_bf16" in text.split()
        assert support == (BF16_FAST if native else BF16_EMULATED)
    assert effective_precision("auto", CPU) == ("bf16" if support == BF16_FAST else "fp32")
    assert effective_precision("fp32", CPU) == "fp32"
    assert effective_precision("auto", CPU, auto_bf16=False) == "fp32"


@pytest.fixture
def emulated_cpu(monkeypatch):
    """Pretend this CPU has no native bf16 (its probed support is passed in, not its code paths)."""
    monkeypatch.setitem(engine._BF16_SUPPORT, "cpu", BF16_EMULATED)
    monkeypatch.setattr(engine, "_WARNED", set())


class Scale(torch.nn.Module):
    """[B, C, T] -> [B, 1, C, T] through a matmul, so that autocast changes the result."""

    def __init__(self):
        super().__init__()
        self.sources = ["a"]
        self.samplerate = 1000
        self.audio_channels = 2
        self.segment = 1.0
        self.w = torch.nn.Parameter(torch.eye(2) * 0.5 + 0.01)

    def forward(self, x):
        return torch.einsum("dc,bct->bdt", self.w, x)[:, None]


def test_explicit_bf16_without_native_support_warns_once_and_is_honoured(emulated_cpu):
    from unmixcli.models.bag import ModelBag

    bag = ModelBag.single(Scale(), normalize=False)
    mix = torch.randn(2, 5000, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        low = engine.separate_tensor(bag, mix, None, EngineOptions(precision="bf16", segment=0.5), CPU)
        engine.separate_tensor(bag, mix, None, EngineOptions(precision="bf16", segment=0.5), CPU)
    mine = [w for w in caught if "bfloat16" in str(w.message)]
    assert len(mine) == 1, [str(w.message) for w in caught]
    assert "fp32" in str(mine[0].message)
    full = engine.separate_tensor(bag, mix, None, EngineOptions(precision="fp32", segment=0.5), CPU)
    assert not torch.equal(low[bag.sources[0]], full[bag.sources[0]])  # bf16 really ran


def test_auto_on_a_cpu_without_native_bf16_runs_fp32_silently(emulated_cpu):
    from unmixcli.models.bag import ModelBag

    bag = ModelBag.single(Scale(), normalize=False)
    mix = torch.randn(2, 3000, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        auto = engine.separate_tensor(bag, mix, None, EngineOptions(precision="auto", segment=0.5), CPU)
    assert not [w for w in caught if "bfloat16" in str(w.message)]
    full = engine.separate_tensor(bag, mix, None, EngineOptions(precision="fp32", segment=0.5), CPU)
    assert torch.equal(auto[bag.sources[0]], full[bag.sources[0]])


def test_auto_on_a_cpu_with_fast_bf16_runs_bf16_only_for_models_measured_faster(monkeypatch):
    """A model opts in through its contract (`auto_bf16`, passed to the runner per forward):
    RoFormers, for one, were never measured in bf16 (and their STFT does not run in it)."""
    monkeypatch.setitem(engine._BF16_SUPPORT, "cpu", BF16_FAST)
    runner = engine._Runner(CPU, "auto", 1)
    assert runner.precision_for(auto_bf16=True) == "bf16"
    assert runner.precision_for(auto_bf16=False) == "fp32"
    model = Scale()
    batch = torch.randn(1, 2, 500, generator=torch.Generator().manual_seed(2))
    opted_in = runner.forward(model, batch, auto_bf16=True)
    not_opted = runner.forward(model, batch)
    assert torch.equal(opted_in, engine._Runner(CPU, "bf16", 1).forward(model, batch))
    assert torch.equal(not_opted, engine._Runner(CPU, "fp32", 1).forward(model, batch))
    assert not torch.equal(opted_in, not_opted)
    # An explicit choice is honoured whatever the model says.
    assert engine._Runner(CPU, "bf16", 1).precision_for(auto_bf16=False) == "bf16"
    assert engine._Runner(CPU, "fp32", 1).precision_for(auto_bf16=True) == "fp32"
    assert effective_precision("auto", CPU, auto_bf16=True) == "bf16"
    assert effective_precision("auto", CPU, auto_bf16=False) == "fp32"


def test_auto_never_picks_bf16_on_an_emulating_cpu(emulated_cpu):
    runner = engine._Runner(CPU, "auto", 1)
    assert runner.precision_for(auto_bf16=True) == "fp32"
    assert effective_precision("auto", CPU, auto_bf16=True) == "fp32"


def test_cli_warns_in_one_line_once_per_batch(tmp_path, emulated_cpu):
    model = tmp_path / "model"
    export_tiny(model, "tiny")
    songs = []
    for i in range(2):
        path = tmp_path / f"s{i}.wav"
        sf.write(path, (0.1 * np.random.default_rng(i).standard_normal((4000, 2))).astype(np.float32), 8000)
        songs.append(path)
    result = CliRunner().invoke(cli.app, [*map(str, songs), "-m", str(model), "-o", str(tmp_path / "out"), "-q",
                                          "--precision", "bf16"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if "bfloat16" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: --precision bf16:"), result.stderr
    assert "Warning" not in result.stderr and ".py:" not in result.stderr
    assert len(list((tmp_path / "out").rglob("*.wav"))) == 8


def test_default_is_auto_everywhere_users_meet_it():
    import inspect

    from unmixcli import Separator

    assert inspect.signature(Separator).parameters["precision"].default == "auto"
    for command in ("separate", "eval"):
        result = CliRunner().invoke(cli.app, [command, "--help"])
        assert "auto (default" in result.output, result.output



def test_auto_runs_htdemucs_in_bf16_where_bf16_is_fast(tmp_path, monkeypatch):
    """HTDemucs' contract opts in (its family says bf16 measured faster for it), so on a CPU
    with fast bf16 `auto` gives exactly the bf16 result through the whole engine."""
    from unmixcli import families

    bag = families.load_local(export_tiny(tmp_path / "m"))
    assert all(c.auto_bf16 and c.bf16 for c in bag.contracts)
    monkeypatch.setitem(engine._BF16_SUPPORT, "cpu", BF16_FAST)
    mix = torch.randn(bag.audio_channels, 4000, generator=torch.Generator().manual_seed(4))
    run = {p: engine.separate_tensor(bag, mix, None, EngineOptions(precision=p), CPU)
           for p in ("auto", "bf16", "fp32")}
    assert all(torch.equal(run["auto"][s], run["bf16"][s]) for s in bag.sources)
    assert not all(torch.equal(run["auto"][s], run["fp32"][s]) for s in bag.sources)
