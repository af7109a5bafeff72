"""Shared pytest fixtures. Keep each group together, under its own heading."""

from __future__ import annotations

import os

import pytest

# ============================================================================
# Threads: the test models are tiny, and with two or more intra-op threads on a
# busy 2-core machine every forward waits on spinning threads (1.5 s instead of
# 15 ms measured here). One thread everywhere, subprocesses included.
# ============================================================================

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _cli_state_reset():
    """`unmix -v ...` sets a module-level flag; each test starts without it."""
    from unmixcli import cli

    cli.state.verbose = False
    yield
    cli.state.verbose = False

# ============================================================================
# Hugging Face Hub / model registry (issue 5): an isolated cache and config dir,
# and a loopback fake Hub (tests/fakehub.py) that huggingface_hub talks to.
# ============================================================================

from fakehub import FakeHub  # noqa: E402  (tests/ is on sys.path: rootdir-relative conftest)

_HF_VARS = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN",
            "HF_ENDPOINT", "UNMIX_REGISTRY")


@pytest.fixture
def hf_env(tmp_path, monkeypatch):
    """A private HF cache (HF_HOME), config dir (XDG_CONFIG_HOME) and no user registry.

    Also patches huggingface_hub's import-time constants, so code that calls
    huggingface_hub without our hub.py helpers sees the same settings.
    Returns the HF_HOME path.
    """
    home = tmp_path / "hf_home"
    home.mkdir()
    for var in _HF_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return home


def point_hf_at(monkeypatch, url: str) -> None:
    """Make huggingface_hub (and subprocesses) use `url` as the Hub endpoint."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")


@pytest.fixture
def fake_hub(hf_env, monkeypatch):
    """A started FakeHub, with HF_ENDPOINT pointing at it and HF_HOME isolated.

    Publish repos with `fake_hub.add_repo(repo_id, {name: bytes})` or
    `fakehub.publish_bag(...)`; inject faults with `.fail()`, `.cut()`; stop it
    with `.stop()` to simulate a Hub that is down.
    """
    hub = FakeHub().start()
    point_hf_at(monkeypatch, hub.url)
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture
def runnable_hub_model(fake_hub, tmp_path):
    """A tiny *runnable* HTDemucs (tests/demucs_export.py, official format) published on the
    fake Hub as `test-owner/TinyHub`, and a registry file naming it `tinyhub`.

    Returns a namespace: `.name`, `.repo`, `.registry` (the file's path), `.files` ({name: bytes}).
    """
    from types import SimpleNamespace

    from demucs_export import export_tiny
    from fakehub import registry_entry, write_registry

    folder = tmp_path / "publish"
    export_tiny(folder, "tinyhub")
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    repo = "test-owner/TinyHub"
    fake_hub.add_repo(repo, files)
    registry = write_registry(tmp_path / "reg.yaml", {"tinyhub": registry_entry("tinyhub", repo, files)})
    return SimpleNamespace(name="tinyhub", repo=repo, registry=registry, files=files)


@pytest.fixture
def published_model(fake_hub, tmp_path):
    """A Demucs-layout repo `test-owner/Tiny` (bag yaml + 2 random safetensors) on the
    fake Hub, and a registry file with an entry `tiny` for it.

    Returns a namespace: `.spec` (ModelSpec), `.files` ({name: bytes}),
    `.registry` (the registry file's path), `.repo`, `.hub`.
    """
    from types import SimpleNamespace

    from fakehub import publish_bag, registry_entry, write_registry
    from unmixcli.registry import load_registry

    repo = "test-owner/Tiny"
    files = publish_bag(fake_hub, repo, "tiny", sigs=("0a1b2c3d", "4e5f6a7b"), n_values=64 * 1024)
    reg_file = write_registry(tmp_path / "test-registry.yaml", {"tiny": registry_entry("tiny", repo, files)})
    spec = load_registry([reg_file]).get("tiny")
    return SimpleNamespace(spec=spec, files=files, registry=reg_file, repo=repo, hub=fake_hub)

# ============================================================================
# A tiny runnable model for CLI and API runs (tests/demucs_export.py): one per
# test module, like the modules that define their own.
# ============================================================================


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A bag of one tiny HTDemucs (8 kHz) in the published layout: tiny.yaml + <sig>.safetensors."""
    from demucs_export import export_tiny

    folder = tmp_path_factory.mktemp("tiny-model")
    export_tiny(folder, "tiny")
    return folder

# ============================================================================
# Plain helpers that test modules import (`from conftest import run_unmix`):
# `unmix` runs in-process, and a progress class of the kind hub.fetch takes.
# ============================================================================


def run_unmix(*args):
    """`unmix <args>` through Click's runner; an exception other than SystemExit fails the test."""
    from typer.testing import CliRunner

    from unmixcli import cli

    result = CliRunner().invoke(cli.app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def stderr_of(result) -> str:
    try:
        return result.stderr
    except ValueError:  # older Click mixes the streams
        return result.output


def tqdm_like():
    """A tqdm-like class (what `hub.fetch(progress=...)` accepts besides a callback) and the list
    that collects its instances, each with `.total` and the `.n` it reached."""
    made = []

    class Bar:
        def __init__(self, *args, total=None, initial=0, **kwargs):
            self.total, self.n = total, initial
            made.append(self)

        def update(self, n=1):
            self.n += n

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    return Bar, made
