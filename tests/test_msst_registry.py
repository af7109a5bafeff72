"""Every MSST family from a registry entry: files on the loopback URL server (sha256-pinned),
`unmix song.wav -m NAME --registry FILE`, stems equal to MSST's `demix` on the same weights.

The networks are MSST's own classes (msst 0.1.0, built by its `get_model_from_config` from the
shrunk configs in tests/data/msst) with random weights, saved as MSST saves them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

import test_bandit_v2  # noqa: F401 - imports msst's BandIt v2 with its torchaudio stand-in
from conftest import run_unmix
from test_scnet import maudio, msettings, mutils  # msst's modules, imported as that test does
from unmixcli import families
from urlserver import FileServer

DATA = Path(__file__).parent / "data" / "msst"
TOL = 1e-5  # of MSST's peak

CASES = [  # (family, arch, config)
    ("mdx23c", "mdx23c", "config_vocals_mdx23c.yaml"),
    ("scnet", "scnet", "config_musdb18_scnet.yaml"),
    ("conformer", "bs_conformer", "config_vocals_bs_conformer.yaml"),
    ("bandit_v2", "bandit_v2", "config_dnr_bandit_v2_mus64_tiny.yaml"),
]

pytestmark = pytest.mark.filterwarnings("ignore:A window was not provided")


def random_msst_model(model_type: str, config: Path, tmp_path: Path):
    # msst 0.1.0 refuses `sage_attention`, which MSST's published conformer configs still carry
    # (a no-op since it left the constructors): its side gets the config without it.
    data = yaml.load(config.read_text(), Loader=yaml.FullLoader)
    data.get("model", {}).pop("sage_attention", None)
    own = tmp_path / "msst_side.yaml"
    own.write_text(yaml.dump(data))
    model, cfg = msettings.get_model_from_config(model_type, str(own))
    gen = torch.Generator().manual_seed(7)
    state = {k: (v + 0.1 * torch.randn(v.shape, generator=gen, dtype=v.dtype) if v.is_floating_point() else v)
             for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    return model.eval(), cfg


@pytest.mark.parametrize("family, arch, config_name", CASES, ids=[c[0] for c in CASES])
def test_a_registry_entry_separates_as_msst_does(tmp_path, hf_env, monkeypatch, family, arch, config_name):
    monkeypatch.setenv("UNMIX_CACHE", str(tmp_path / "cache"))
    config = DATA / config_name
    model, cfg = random_msst_model(arch, config, tmp_path)
    ckpt = tmp_path / "model.ckpt"
    torch.save(model.state_dict(), ckpt)
    (tmp_path / "model.yaml").write_bytes(config.read_bytes())
    stems = families.load_local(ckpt).sources  # the names the entry must list
    rate, chunk = int(cfg.audio.sample_rate), int(cfg.audio.chunk_size)
    mix = (0.3 * np.random.default_rng(1).standard_normal((2, 3 * chunk + 777))).astype(np.float32)
    song = tmp_path / "song.wav"
    sf.write(song, mix.T, rate, subtype="FLOAT")
    with FileServer(lifetime=120) as server:
        files = []
        for name, path in (("model.ckpt", ckpt), ("model.yaml", tmp_path / "model.yaml")):
            data = path.read_bytes()
            files.append({"name": name, "url": server.publish(f"/rel/{name}", data),
                          "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})
        entry = {"family": family, "arch": arch, "description": f"tiny {arch}", "files": files,
                 "config": "model.yaml", "checkpoint": "model.ckpt", "stems": list(stems),
                 "sample_rate": rate, "licence": "test only"}
        reg = tmp_path / "registry.yaml"
        reg.write_text(yaml.safe_dump({"version": 1, "models": {"tiny": entry}}, sort_keys=False))
        result = run_unmix(str(song), "-m", "tiny", "--registry", str(reg), "-o", str(tmp_path / "out"), "-q",
                           "--precision", "fp32", "--bit-depth", "32", "--clip", "none")
    assert result.exit_code == 0, result.output
    # As MSST's inference runs demix: standardised first when the config says so.
    normalise = bool(cfg.inference.get("normalize", False))
    prepared, params = maudio.normalize_audio(mix) if normalise else (mix, None)
    with torch.inference_mode():
        expected = mutils.demix(cfg, model, prepared, torch.device("cpu"), model_type=arch)
    if normalise:
        expected = {k: maudio.denormalize_audio(np.asarray(v), params) for k, v in expected.items()}
    assert sorted(expected) == sorted(stems)
    for stem in stems:
        got, got_rate = sf.read(tmp_path / "out" / "tiny" / "song" / f"{stem}.wav", dtype="float32", always_2d=True)
        want = np.asarray(expected[stem])
        assert got_rate == rate
        assert float(np.abs(got.T - want).max()) <= TOL * float(np.abs(want).max()), stem
