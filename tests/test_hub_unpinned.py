"""URL files with no published hash (`sha256: unpublished`): the first download's sha256 is
recorded and every later use is checked against it (most GitHub release checkpoints)."""

from __future__ import annotations

import os

import pytest
import yaml

from test_hub_urls import bag_files, server, url_cache  # noqa: F401 - fixtures
from unmixcli import hub
from unmixcli.errors import DownloadError, RegistryError
from unmixcli.registry import load_registry


def _registry(tmp_path, urls: dict, files: dict):
    items = [{"name": n, "url": urls[n], "sha256": "unpublished"} for n in files]
    entry = {"family": "demucs", "description": "test model", "files": items, "bag": "umx.yaml",
             "stems": ["drums", "bass", "other", "vocals"], "sample_rate": 44100, "licence": "test only"}
    reg = tmp_path / "reg.yaml"
    reg.write_text(yaml.safe_dump({"version": 1, "models": {"umx": entry}}))
    return load_registry([reg]).get("umx")


def _damage(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    st = os.stat(path)
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_first_download_is_recorded_and_checked_after(server, tmp_path):  # noqa: F811
    files = bag_files()
    urls = {n: server.publish(f"/rel/{n}", d) for n, d in files.items()}
    spec = _registry(tmp_path, urls, files)
    assert all(f.trust_first and f.sha256 is None for f in spec.files)
    folder = hub.fetch(spec)
    weights = folder / "0a1b2c3d.safetensors"
    assert weights.read_bytes() == files["0a1b2c3d.safetensors"]
    # Damaged in the cache: found (its hash is not the first download's) and fetched again.
    _damage(weights)
    assert "first download" in hub.verify_file(weights, spec.files[1])
    hub.fetch(spec)
    assert weights.read_bytes() == files["0a1b2c3d.safetensors"]
    # The file at the URL changed since: refused in one line, not silently used.
    _damage(weights)
    server.publish("/rel/0a1b2c3d.safetensors", bag_files(seed=1)["0a1b2c3d.safetensors"])
    with pytest.raises(DownloadError, match="first download"):
        hub.fetch(spec)


def test_unpublished_is_only_for_url_files(tmp_path, hf_env):
    reg = tmp_path / "reg.yaml"
    reg.write_text(yaml.safe_dump({"version": 1, "models": {"m": {
        "family": "demucs", "description": "d", "repo": "a/b", "bag": "m.yaml",
        "files": ["m.yaml", {"name": "x.safetensors", "sha256": "unpublished"}],
        "stems": ["vocals"], "sample_rate": 44100}}}))
    with pytest.raises(RegistryError, match="'unpublished' is for URL files"):
        load_registry([reg])
