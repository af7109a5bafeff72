"""The real download path (huggingface_hub) against a loopback fake Hub: cache, offline,
damaged files, resumed downloads, HTTP errors, a Hub that is down, concurrent processes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import tqdm_like
from fakehub import fake_safetensors, publish_bag, registry_entry, write_registry
from unmixcli import hub
from unmixcli.errors import DownloadError, ModelNotFoundError, OfflineError
from unmixcli.registry import load_registry


def _blob(folder: Path, name: str) -> Path:
    return Path(os.path.realpath(folder / name))


def _assert_files(folder: Path, files: dict) -> None:
    for name, data in files.items():
        assert (folder / name).read_bytes() == data, name


# --------------------------------------------------------------------------- happy path


def test_first_download_then_offline_reuse(published_model, hf_env, monkeypatch):
    m = published_model
    events = []
    folder = hub.fetch(m.spec, progress=lambda name, done, total: events.append((name, done, total)))
    _assert_files(folder, m.files)
    # Standard HF cache layout under HF_HOME, at the commit the Hub reported.
    assert folder == hf_env / "hub" / "models--test-owner--Tiny" / "snapshots" / m.hub.commit(m.repo)
    assert (folder / "0a1b2c3d.safetensors").is_symlink()
    # Progress reached each file's full size.
    last = {name: (done, total) for name, done, total in events}
    assert last == {name: (len(data), len(data)) for name, data in m.files.items()}
    assert hub.cache_state(m.spec) == "yes"

    m.hub.requests.clear()
    assert hub.fetch(m.spec, offline=True) == folder
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.fetch(m.spec) == folder
    assert m.hub.requests == []  # offline means no request at all


def test_online_reuse_downloads_nothing_again(published_model):
    m = published_model
    hub.fetch(m.spec)
    hub.fetch(m.spec)
    for name in m.files:
        assert m.hub.count("GET", name) == 1


def test_tqdm_like_class_is_accepted(published_model):
    Bar, made = tqdm_like()
    hub.fetch(published_model.spec, progress=Bar)
    assert sorted(b.n for b in made) == sorted(len(d) for d in published_model.files.values())


def test_snapshot_download_works_against_the_fake_hub(published_model, hf_env):
    # The fake Hub also serves the repo-info and tree APIs, for code that uses snapshot_download.
    from huggingface_hub import snapshot_download

    folder = Path(snapshot_download(published_model.repo, cache_dir=str(hf_env / "hub")))
    _assert_files(folder, published_model.files)


# --------------------------------------------------------------------------- damaged cache


def test_corrupted_cached_file_is_detected_and_fetched_again(published_model):
    m = published_model
    folder = hub.fetch(m.spec)
    blob = _blob(folder, "0a1b2c3d.safetensors")
    with open(blob, "r+b") as fh:  # same size, different bytes: only the hash can tell
        fh.seek(len(m.files["0a1b2c3d.safetensors"]) // 2)
        fh.write(b"\x00\x01\x02\x03")
    folder = hub.fetch(m.spec)
    _assert_files(folder, m.files)
    assert m.hub.count("GET", "0a1b2c3d.safetensors") == 2
    assert m.hub.count("GET", "4e5f6a7b.safetensors") == 1


def test_truncated_cached_file_is_refetched_and_yaml_is_checked_too(published_model):
    m = published_model
    folder = hub.fetch(m.spec)
    blob = _blob(folder, "4e5f6a7b.safetensors")
    data = blob.read_bytes()
    blob.write_bytes(data[: len(data) // 3])
    _blob(folder, "tiny.yaml").write_bytes(b"models: ['ffffffff']\n")
    folder = hub.fetch(m.spec)
    _assert_files(folder, m.files)


def test_corrupted_cache_offline_is_a_clear_error(published_model):
    m = published_model
    folder = hub.fetch(m.spec)
    blob = _blob(folder, "0a1b2c3d.safetensors")
    blob.write_bytes(blob.read_bytes()[:-10])
    with pytest.raises(OfflineError) as exc:
        hub.fetch(m.spec, offline=True)
    assert "damaged" in str(exc.value)
    assert "unmix models download tiny" in exc.value.hint


def test_verification_is_remembered_until_the_file_changes(published_model):
    m = published_model
    folder = hub.fetch(m.spec)
    blob = _blob(folder, "0a1b2c3d.safetensors")
    stamps = json.loads((blob.parent.parent / ".unmix-verified.json").read_text())
    assert blob.name in stamps
    spec_file = m.spec.file("0a1b2c3d.safetensors")
    assert hub.verify_file(folder / spec_file.name, spec_file) is None
    with open(blob, "r+b") as fh:
        fh.seek(100)
        fh.write(b"zz")
    assert "sha256" in hub.verify_file(folder / spec_file.name, spec_file)


# --------------------------------------------------------------------------- interrupted download


def test_download_cut_in_the_middle_resumes_with_a_range_request(fake_hub, tmp_path):
    # huggingface_hub writes to disk in 10 MiB chunks: cut past the first one so that the
    # retry has something to resume from.
    big = fake_safetensors(6 * 1024 * 1024, seed=3)  # ~12 MiB
    files = publish_bag(fake_hub, "test-owner/Big", "big", sigs=("b16b16b1",),
                        files={"b16b16b1.safetensors": big})
    spec = load_registry([write_registry(tmp_path / "r.yaml", {"big": registry_entry("big", "test-owner/Big", files)})]).get("big")
    cut_at = 10 * 1024 * 1024 + 12345
    fake_hub.cut("test-owner/Big", "b16b16b1.safetensors", after=cut_at)

    folder = hub.fetch(spec)
    assert hashlib.sha256((folder / "b16b16b1.safetensors").read_bytes()).digest() == hashlib.sha256(big).digest()
    gets = [r for m, p, r in fake_hub.requests if m == "GET" and p.endswith("b16b16b1.safetensors")]
    assert gets[0] is None
    assert len(gets) == 2 and gets[1] is not None
    resumed_from = int(gets[1].split("=")[1].rstrip("-"))
    assert 0 < resumed_from <= cut_at  # the second request did not start over


# --------------------------------------------------------------------------- registry pins


def test_sha256_pin_mismatch_fails_before_downloading(fake_hub, tmp_path):
    files = publish_bag(fake_hub, "test-owner/Pinned", "pinned")
    entry = registry_entry("pinned", "test-owner/Pinned", files, pin_sha256=True)
    entry["files"][1]["sha256"] = "0" * 64
    spec = load_registry([write_registry(tmp_path / "r.yaml", {"pinned": entry})]).get("pinned")
    with pytest.raises(DownloadError) as exc:
        hub.fetch(spec)
    assert "test-owner/Pinned@main/0a1b2c3d.safetensors" in str(exc.value)
    assert "sha256" in str(exc.value)
    assert fake_hub.count("GET", "0a1b2c3d.safetensors") == 0


def test_correct_pins_pass_and_a_wrong_size_pin_is_an_error(fake_hub, tmp_path):
    files = publish_bag(fake_hub, "test-owner/Pinned", "pinned")
    good = registry_entry("pinned", "test-owner/Pinned", files, pin_sha256=True, pin_size=True)
    bad = registry_entry("pinned", "test-owner/Pinned", files, pin_size=True)
    bad["files"][1]["size"] += 1
    reg = write_registry(tmp_path / "r.yaml", {"pinned": good})
    _assert_files(hub.fetch(load_registry([reg]).get("pinned")), files)
    reg = write_registry(tmp_path / "r2.yaml", {"pinned": bad})
    with pytest.raises(DownloadError, match="size"):
        hub.fetch(load_registry([reg]).get("pinned"))


# --------------------------------------------------------------------------- HTTP errors


def _spec(tmp_path, name, repo, files, **fields):
    entry = registry_entry(name, repo, files, **fields)
    return load_registry([write_registry(tmp_path / f"{name}.yaml", {name: entry})]).get(name)


def test_404_repo_and_404_file_name_what_is_missing(published_model, tmp_path):
    missing_repo = _spec(tmp_path, "ghost", "test-owner/Ghost", published_model.files, bag="tiny.yaml")
    with pytest.raises(DownloadError) as exc:
        hub.fetch(missing_repo)
    assert "test-owner/Ghost" in str(exc.value) and "repository not found" in str(exc.value)
    assert "HTTP 404" in str(exc.value)

    files = dict(published_model.files, **{"99999999.safetensors": b""})
    missing_file = _spec(tmp_path, "tiny", published_model.repo, files)
    with pytest.raises(DownloadError) as exc:
        hub.fetch(missing_file)
    assert "test-owner/Tiny@main/99999999.safetensors: file not found" in str(exc.value)


def test_server_error_without_cache_fails_fast_and_names_the_file(published_model):
    m = published_model
    m.hub.fail(m.repo, "0a1b2c3d.safetensors", status=503)
    with pytest.raises(DownloadError) as exc:
        hub.fetch(m.spec)
    assert "test-owner/Tiny@main/0a1b2c3d.safetensors" in str(exc.value)
    assert "HTTP 503" in str(exc.value)


def test_server_error_with_a_cache_uses_the_cache(published_model):
    m = published_model
    folder = hub.fetch(m.spec)
    m.hub.fail(m.repo, status=500)
    assert hub.fetch(m.spec) == folder


def test_hub_down_with_and_without_cache(published_model):
    m = published_model
    folder = hub.fetch(m.spec)
    m.hub.stop()
    assert hub.fetch(m.spec) == folder  # connection refused: the verified cache is used
    hub.remove(m.spec)
    with pytest.raises(DownloadError) as exc:
        hub.fetch(m.spec)
    assert "test-owner/Tiny@main/tiny.yaml" in str(exc.value)
    assert "Connect" in str(exc.value) and "no cached copy" in str(exc.value)
    assert not isinstance(exc.value, OfflineError)


def test_offline_and_not_cached_says_which_command_fetches_it(published_model):
    with pytest.raises(OfflineError) as exc:
        hub.fetch(published_model.spec, offline=True)
    assert "not cached" in str(exc.value)
    assert "`unmix models download tiny`" in exc.value.hint
    assert published_model.hub.requests == []


# --------------------------------------------------------------------------- concurrency


@pytest.mark.slow
def test_two_processes_fetching_the_same_model_both_succeed(published_model):
    m = published_model
    m.hub.chunk_delay = 0.03  # ~1 MiB at 64 KiB per 30 ms: long enough for the two to overlap
    big = fake_safetensors(512 * 1024, seed=7)
    m.hub.set_file(m.repo, "0a1b2c3d.safetensors", big)
    files = dict(m.files, **{"0a1b2c3d.safetensors": big})
    code = textwrap.dedent(f"""
        from unmixcli import hub
        from unmixcli.registry import load_registry
        spec = load_registry([{str(m.registry)!r}]).get("tiny")
        print(hub.fetch(spec))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    folders = {out.strip() for out, _ in outs}
    assert len(folders) == 1
    _assert_files(Path(folders.pop()), files)
    # The per-file lock let one process download while the other waited, then reused the blob.
    assert m.hub.count("GET", "0a1b2c3d.safetensors") == 1


# --------------------------------------------------------------------------- remove


def test_remove_frees_the_files_and_keeps_other_entries_of_a_shared_repo(fake_hub, tmp_path):
    shared = {"a.yaml": b"models: ['aaaaaaaa']\n", "aaaaaaaa.safetensors": fake_safetensors(1000, 1),
              "b.yaml": b"models: ['bbbbbbbb']\n", "bbbbbbbb.safetensors": fake_safetensors(1000, 2)}
    fake_hub.add_repo("test-owner/Shared", shared)
    reg = write_registry(tmp_path / "r.yaml", {
        "a": registry_entry("a", "test-owner/Shared", {k: v for k, v in shared.items() if k.startswith("a")}),
        "b": registry_entry("b", "test-owner/Shared", {k: v for k, v in shared.items() if k.startswith("b")}),
    })
    registry = load_registry([reg])
    a, b = registry.get("a"), registry.get("b")
    hub.fetch(a)
    folder = hub.fetch(b)
    freed = hub.remove(a)
    assert freed == len(shared["a.yaml"]) + len(shared["aaaaaaaa.safetensors"])
    assert hub.cache_state(a) == "no" and hub.cache_state(b) == "yes"
    _assert_files(folder, {k: v for k, v in shared.items() if k.startswith("b")})
    hub.remove(b)
    assert not (hub.cache_dir() / "models--test-owner--Shared").exists()


# --------------------------------------------------------------------------- pretrained.load_model


def test_load_model_from_the_hub_and_from_a_local_path(fake_hub, tmp_path):
    torch = pytest.importorskip("torch")
    export = pytest.importorskip("demucs_export")
    from unmixcli import families as pretrained

    built = tmp_path / "built"
    built.mkdir()
    export.export_tiny(built, "tinyht")
    files = {p.name: p.read_bytes() for p in built.iterdir()}
    fake_hub.add_repo("test-owner/TinyHT", files)
    reg = write_registry(tmp_path / "r.yaml", {"tinyht": registry_entry("tinyht", "test-owner/TinyHT", files)})

    bag = pretrained.load_model("tinyht", registry_files=[reg], device="cpu")
    assert bag.sources == ["drums", "bass", "other", "vocals"] and len(bag.models) == 1
    assert bag.name == "tinyht"
    # Same weights from the cache offline, and from the local folder (a path wins over names).
    again = pretrained.load_model("tinyht", registry_files=[reg], offline=True)
    local = pretrained.load_model(str(built))
    x = torch.randn(1, 2, 4000)
    with torch.no_grad():
        ref = bag.models[0](x)
        assert torch.equal(again.models[0](x), ref)
        assert torch.equal(local.models[0](x), ref)
    with pytest.raises(ModelNotFoundError):
        pretrained.load_model("tinyth", registry_files=[reg])
