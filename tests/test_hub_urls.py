"""hub.py's plain-URL path (GitHub releases, Zenodo) against a loopback file server
(tests/urlserver.py): cache, resume with Range, retries, HTTP errors, hash pins,
offline, damaged files, remove, concurrent processes, and `unmix models` through the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import run_unmix as _run, stderr_of as _stderr, tqdm_like
from fakehub import closed_port_url, fake_safetensors, publish_bag, write_registry
from unmixcli import hub
from unmixcli.errors import CacheError, DownloadError, OfflineError
from unmixcli.registry import load_registry
from urlserver import FileServer

BIG = 300 * 1024  # bytes: several 64 KiB chunks, so a cut lands mid-file
# Cuts fall on the client's read size: urllib3 drops the unfinished read when a connection breaks, so a
# cut elsewhere resumes from the chunk boundary below it (still right, only less exact to assert).
CUT = hub._URL_CHUNK


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def url_cache(hf_env, tmp_path, monkeypatch):
    """UNMIX_CACHE in tmp, HF isolated (hf_env), and short waits between retries (the count stays real)."""
    cache = tmp_path / "unmix_cache"
    monkeypatch.setenv("UNMIX_CACHE", str(cache))
    monkeypatch.setattr(hub, "_URL_RETRY_DELAYS", (0.01, 0.01, 0.01))
    return cache


@pytest.fixture
def server(url_cache):
    with FileServer(lifetime=120) as srv:
        yield srv


def url_entry(name: str, urls: dict, files: dict, *, pin: str = "sha256", size: bool = False, **fields) -> dict:
    """A demucs-family entry whose files come from `urls` ({file name: url}); `pin` is sha256 or hash_prefix."""
    items = []
    for fname, data in files.items():
        item = {"name": fname}
        if fname in urls:
            item["url"] = urls[fname]
            item["sha256" if pin == "sha256" else "hash_prefix"] = _sha(data) if pin == "sha256" else _sha(data)[:8]
            if size:
                item["size"] = len(data)
        items.append(item)
    entry = {"family": "demucs", "description": f"test model {name}", "files": items, "bag": f"{name}.yaml",
             "stems": ["drums", "bass", "other", "vocals"], "sample_rate": 44100,
             "download_size": sum(len(d) for d in files.values()), "licence": "test only"}
    entry.update(fields)
    return entry


def bag_files(name: str = "umx", seed: int = 0) -> dict:
    return {f"{name}.yaml": b"models: ['0a1b2c3d']\n",
            "0a1b2c3d.safetensors": fake_safetensors(BIG // 2, seed=seed)}  # float16: 2 bytes per value


def publish(server: FileServer, tmp_path: Path, name: str = "umx", files: dict = None, prefix: str = "/rel/v1",
            **kw):
    """Serve `files` under `prefix`, write a registry naming them; return (spec, files, {name: path}, registry)."""
    files = files or bag_files(name)
    paths = {fname: f"{prefix}/{fname}" for fname in files}
    urls = {fname: server.publish(path, data) for (fname, data), path in zip(files.items(), paths.values())}
    reg = write_registry(tmp_path / f"{name}-registry.yaml", {name: url_entry(name, urls, files, **kw)})
    return load_registry([reg]).get(name), files, paths, reg


def _assert_files(folder: Path, files: dict) -> None:
    for fname, data in files.items():
        assert (folder / fname).read_bytes() == data, fname


def _leftovers(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# --------------------------------------------------------------------------- happy path


def test_first_download_then_cached_use_makes_no_request(server, url_cache, tmp_path, monkeypatch):
    spec, files, paths, _ = publish(server, tmp_path)
    assert spec.repo is None
    events = []
    folder = hub.fetch(spec, progress=lambda name, done, total: events.append((name, done, total)))
    assert folder == url_cache / "urls" / "umx"
    _assert_files(folder, files)
    last = {name: (done, total) for name, done, total in events}
    assert last == {name: (len(data), len(data)) for name, data in files.items()}
    assert hub.cache_state(spec) == "yes"
    assert hub.cached_files(spec) == {name: folder / name for name in files}
    assert hub.cached_size(spec) == sum(len(d) for d in files.values())

    n = len(server.requests)
    assert hub.fetch(spec) == folder  # online, cached and verified: no request at all
    assert hub.fetch(spec, offline=True) == folder
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.fetch(spec) == folder
    assert len(server.requests) == n
    for path in paths.values():
        assert server.gets(path) == [None]


def test_verified_file_is_not_hashed_again_until_it_changes(server, tmp_path, monkeypatch):
    spec, files, _, _ = publish(server, tmp_path)
    folder = hub.fetch(spec)
    stamps = json.loads((folder / ".unmix-verified.json").read_text())
    assert set(stamps) == set(files)
    hashed = []
    real = hub._hash_file
    monkeypatch.setattr(hub, "_hash_file", lambda path, alg: hashed.append(Path(path).name) or real(path, alg))
    hub.fetch(spec)
    assert hashed == []  # the stamp (size, mtime, inode, pin) vouches for both files
    weights = folder / "0a1b2c3d.safetensors"
    with open(weights, "r+b") as fh:
        fh.seek(200)
        fh.write(b"zz")
    assert "sha256" in hub.verify_file(weights, spec.file(weights.name))
    assert hashed == [weights.name]


def test_tqdm_like_class_is_accepted(server, tmp_path):
    spec, files, _, _ = publish(server, tmp_path)
    Bar, made = tqdm_like()
    hub.fetch(spec, progress=Bar)
    assert sorted((b.n, b.total) for b in made) == sorted((len(d), len(d)) for d in files.values())


def test_hash_prefix_pins_torch_hub_style_names(server, tmp_path):
    data = fake_safetensors(1000, seed=4)
    prefix = _sha(data)[:8]
    files = {"umx.yaml": b"models: ['0a1b2c3d']\n", "0a1b2c3d.safetensors": data}
    # The URL carries the torch.hub name `<name>-<prefix>.<ext>`; the local name is what the loader opens.
    urls = {"umx.yaml": server.publish("/z/umx.yaml", files["umx.yaml"]),
            "0a1b2c3d.safetensors": server.publish(f"/z/vocals-{prefix}.safetensors", data)}
    reg = write_registry(tmp_path / "r.yaml", {"umx": url_entry("umx", urls, files, pin="hash_prefix")})
    spec = load_registry([reg]).get("umx")
    assert spec.file("0a1b2c3d.safetensors").hash_prefix == prefix
    _assert_files(hub.fetch(spec), files)

    wrong = dict(files, **{"0a1b2c3d.safetensors": fake_safetensors(1000, seed=5)})  # pins another file's prefix
    reg = write_registry(tmp_path / "r2.yaml", {"bad": url_entry("bad", urls, wrong, pin="hash_prefix",
                                                                 bag="umx.yaml")})
    with pytest.raises(DownloadError) as exc:
        hub.fetch(load_registry([reg]).get("bad"))
    assert urls["0a1b2c3d.safetensors"] in str(exc.value)
    assert f"expected {_sha(wrong['0a1b2c3d.safetensors'])[:8]}" in str(exc.value)
    assert f"sha256 is {prefix}" in str(exc.value)


def test_redirect_like_github_release_assets(server, tmp_path):
    files = bag_files()
    server.publish("/objects/weights.bin", files["0a1b2c3d.safetensors"])
    server.publish("/objects/umx.yaml", files["umx.yaml"])
    urls = {"0a1b2c3d.safetensors": server.redirect("/releases/download/v1/w.safetensors", "/objects/weights.bin"),
            "umx.yaml": server.redirect("/releases/download/v1/umx.yaml", "/objects/umx.yaml")}
    server.cut("/objects/weights.bin", after=CUT)
    reg = write_registry(tmp_path / "r.yaml", {"umx": url_entry("umx", urls, files)})
    _assert_files(hub.fetch(load_registry([reg]).get("umx")), files)
    # The retry went through the redirect again and kept its Range header.
    assert server.gets("/objects/weights.bin") == [None, f"bytes={CUT}-"]


# --------------------------------------------------------------------------- interrupted downloads


def test_cut_connection_is_resumed_with_a_range_request_in_the_same_call(server, tmp_path):
    spec, files, paths, _ = publish(server, tmp_path)
    weights = paths["0a1b2c3d.safetensors"]
    server.cut(weights, after=CUT)
    folder = hub.fetch(spec)
    _assert_files(folder, files)
    assert server.gets(weights) == [None, f"bytes={CUT}-"]
    assert not [n for n in _leftovers(folder) if n.endswith(".partial")]


def test_cut_on_every_try_keeps_the_bytes_and_the_next_run_continues_them(server, tmp_path):
    spec, files, paths, _ = publish(server, tmp_path)
    weights = paths["0a1b2c3d.safetensors"]
    tries = len(hub._URL_RETRY_DELAYS) + 1
    server.cut(weights, after=CUT, times=tries)  # each try gets one chunk more, then the line drops
    with pytest.raises(DownloadError) as exc:
        hub.fetch(spec)
    assert server.url + weights in str(exc.value) and "truncated body" in str(exc.value)
    assert f"after {tries} tries" in str(exc.value)
    folder = hub.url_cache_dir() / "urls" / "umx"
    assert not (folder / "0a1b2c3d.safetensors").exists()  # never a partial file under the final name
    partials = [n for n in _leftovers(folder) if n.endswith(".partial")]
    assert len(partials) == 1 and (folder / partials[0]).stat().st_size == tries * CUT
    assert server.gets(weights) == [None] + [f"bytes={k * CUT}-" for k in range(1, tries)]

    server.requests.clear()
    _assert_files(hub.fetch(spec), files)
    assert server.gets(weights) == [f"bytes={tries * CUT}-"]  # the next run did not start over
    assert not [n for n in _leftovers(folder) if n.endswith(".partial")]


def test_a_server_that_ignores_range_makes_the_download_start_over(server, tmp_path):
    spec, files, paths, _ = publish(server, tmp_path)
    weights = paths["0a1b2c3d.safetensors"]
    server.ignore_range(weights)
    server.cut(weights, after=CUT)
    _assert_files(hub.fetch(spec), files)  # the 200 after a Range request rewrote the file from byte 0
    assert server.gets(weights) == [None, f"bytes={CUT}-"]


def test_damaged_kept_partial_is_detected_and_the_file_fetched_whole(server, tmp_path):
    spec, files, paths, _ = publish(server, tmp_path)
    weights = paths["0a1b2c3d.safetensors"]
    server.cut(weights, after=CUT, times=len(hub._URL_RETRY_DELAYS) + 1)
    with pytest.raises(DownloadError):
        hub.fetch(spec)
    folder = hub.url_cache_dir() / "urls" / "umx"
    (partial,) = [folder / n for n in _leftovers(folder) if n.endswith(".partial")]
    with open(partial, "r+b") as fh:  # bit rot in the kept part: only the final hash can tell
        fh.write(b"\xff" * 16)
    server.clear_faults()
    server.requests.clear()
    _assert_files(hub.fetch(spec), files)
    assert server.gets(weights)[0] is not None and server.gets(weights)[-1] is None  # resumed, failed, restarted


# --------------------------------------------------------------------------- HTTP errors


@pytest.mark.parametrize("status", [404, 410])
def test_not_found_names_the_url(server, tmp_path, status):
    spec, _, paths, _ = publish(server, tmp_path)
    server.fail(paths["0a1b2c3d.safetensors"], status=status)
    with pytest.raises(DownloadError) as exc:
        hub.fetch(spec)
    msg = str(exc.value)
    assert msg.startswith(server.url + paths["0a1b2c3d.safetensors"]) and f"not found (HTTP {status})" in msg
    assert "\n" not in msg and "'url' of '0a1b2c3d.safetensors' in model 'umx'" in exc.value.hint
    assert len(server.gets(paths["0a1b2c3d.safetensors"])) == 1  # a 404 is not retried


def test_server_error_once_then_success_is_retried(server, tmp_path):
    spec, files, paths, _ = publish(server, tmp_path)
    server.fail(paths["0a1b2c3d.safetensors"], status=500, times=1)
    _assert_files(hub.fetch(spec), files)
    assert server.gets(paths["0a1b2c3d.safetensors"]) == [None, None]


def test_persistent_503_gives_up_after_a_few_tries_naming_the_url(server, tmp_path):
    spec, _, paths, _ = publish(server, tmp_path)
    server.fail(paths["0a1b2c3d.safetensors"], status=503)
    with pytest.raises(DownloadError) as exc:
        hub.fetch(spec)
    tries = len(hub._URL_RETRY_DELAYS) + 1
    assert str(exc.value) == (f"{server.url}{paths['0a1b2c3d.safetensors']}: server error (HTTP 503)"
                              f" (gave up after {tries} tries)")
    assert len(server.gets(paths["0a1b2c3d.safetensors"])) == tries
    assert not isinstance(exc.value, OfflineError)


def test_corrupt_bytes_fail_the_hash_check_and_leave_nothing_under_the_final_name(server, tmp_path):
    spec, files, paths, _ = publish(server, tmp_path)
    good = files["0a1b2c3d.safetensors"]
    bad = good[:1000] + bytes(b ^ 0xFF for b in good[1000:1010]) + good[1010:]
    server.publish(paths["0a1b2c3d.safetensors"], bad)
    with pytest.raises(DownloadError) as exc:
        hub.fetch(spec)
    msg = str(exc.value)
    assert server.url + paths["0a1b2c3d.safetensors"] in msg and "hash mismatch" in msg
    assert f"sha256 is {_sha(bad)[:12]}…, expected {_sha(good)[:12]}…" in msg
    folder = hub.url_cache_dir() / "urls" / "umx"
    assert _leftovers(folder) == [".unmix-verified.json", "umx.yaml"]  # no weights file, no partial, no temp
    assert hub.cache_state(spec) == "partial"


def test_a_size_pin_that_disagrees_with_the_server_fails_before_the_body(server, tmp_path):
    files = bag_files()
    spec, _, paths, _ = publish(server, tmp_path, files=files, size=True)
    server.publish(paths["0a1b2c3d.safetensors"], files["0a1b2c3d.safetensors"] + b"extra")
    with pytest.raises(DownloadError) as exc:
        hub.fetch(spec)
    assert f"the server's file has {len(files['0a1b2c3d.safetensors']) + 5} bytes" in str(exc.value)


def test_refused_port_is_a_download_error_naming_the_url(url_cache, tmp_path):
    files = bag_files()
    base = closed_port_url()
    urls = {name: f"{base}/rel/{name}" for name in files}
    reg = write_registry(tmp_path / "r.yaml", {"umx": url_entry("umx", urls, files)})
    with pytest.raises(DownloadError) as exc:
        hub.fetch(load_registry([reg]).get("umx"))
    assert str(exc.value) == f"{base}/rel/umx.yaml: cannot connect (Connection refused)"
    assert not isinstance(exc.value, OfflineError)


# --------------------------------------------------------------------------- damaged cache, offline


def test_damaged_cached_file_is_fetched_again_online_and_an_error_offline(server, tmp_path):
    spec, files, paths, _ = publish(server, tmp_path)
    folder = hub.fetch(spec)
    weights = folder / "0a1b2c3d.safetensors"
    with open(weights, "r+b") as fh:  # same size, other bytes: only the hash can tell
        fh.seek(len(files[weights.name]) // 2)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(OfflineError) as exc:
        hub.fetch(spec, offline=True)
    assert "damaged" in str(exc.value) and "sha256" in str(exc.value)
    assert "unmix models download umx" in exc.value.hint
    assert folder == hub.fetch(spec)
    _assert_files(folder, files)
    assert len(server.gets(paths[weights.name])) == 2 and len(server.gets(paths["umx.yaml"])) == 1

    weights.write_bytes(files[weights.name][:-10])  # truncated
    with pytest.raises(OfflineError, match="damaged"):
        hub.fetch(spec, offline=True)
    _assert_files(hub.fetch(spec), files)


def test_offline_without_cache_says_which_command_fetches_it(server, tmp_path, monkeypatch):
    spec, _, _, _ = publish(server, tmp_path)
    with pytest.raises(OfflineError) as exc:
        hub.fetch(spec, offline=True)
    assert "not cached" in str(exc.value) and "`unmix models download umx`" in exc.value.hint
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError):
        hub.fetch(spec)
    assert server.requests == []


def test_force_downloads_again_and_a_failed_force_keeps_the_old_copy(server, tmp_path):
    spec, files, paths, _ = publish(server, tmp_path)
    folder = hub.fetch(spec)
    hub.fetch(spec, force=True)
    assert len(server.gets(paths["umx.yaml"])) == 2
    server.fail(paths["0a1b2c3d.safetensors"], status=404)
    with pytest.raises(DownloadError):
        hub.fetch(spec, force=True)
    _assert_files(folder, files)
    assert hub.fetch(spec) == folder


# --------------------------------------------------------------------------- mixed entries, remove


def test_an_entry_mixing_hub_and_url_files_gets_one_folder(server, fake_hub, tmp_path):
    hub_files = publish_bag(fake_hub, "test-owner/Mixed", "mixed", sigs=("0a1b2c3d",), n_values=2000)
    extra = fake_safetensors(3000, seed=9)
    url = server.publish("/z/4e5f6a7b.safetensors", extra)
    entry = url_entry("mixed", {}, hub_files, repo="test-owner/Mixed")
    entry["files"].append({"name": "4e5f6a7b.safetensors", "url": url, "sha256": _sha(extra)})
    spec = load_registry([write_registry(tmp_path / "r.yaml", {"mixed": entry})]).get("mixed")
    folder = hub.fetch(spec)
    _assert_files(folder, dict(hub_files, **{"4e5f6a7b.safetensors": extra}))
    assert hub.cache_state(spec) == "yes"
    assert hub.fetch(spec, offline=True) == folder
    freed = hub.remove(spec)
    assert freed == sum(len(d) for d in hub_files.values()) + len(extra)
    assert hub.cache_state(spec) == "no" and not folder.exists()
    assert not (hub.cache_dir() / "models--test-owner--Mixed").exists()


def test_remove_frees_the_files_and_partials(server, tmp_path):
    spec, files, paths, _ = publish(server, tmp_path)
    assert hub.remove(spec) == 0
    server.cut(paths["0a1b2c3d.safetensors"], after=CUT // 2, times=len(hub._URL_RETRY_DELAYS) + 1)
    with pytest.raises(DownloadError):
        hub.fetch(spec)
    assert hub.cache_state(spec) == "partial"
    # the yaml and the kept partial of the weights
    assert hub.remove(spec) == len(files["umx.yaml"])  # a cut inside the first chunk keeps nothing
    server.cut(paths["0a1b2c3d.safetensors"], after=CUT, times=len(hub._URL_RETRY_DELAYS) + 1)
    with pytest.raises(DownloadError):
        hub.fetch(spec)
    assert hub.remove(spec) == len(files["umx.yaml"]) + CUT * (len(hub._URL_RETRY_DELAYS) + 1)
    folder = hub.fetch(spec)
    assert hub.remove(spec) == sum(len(d) for d in files.values())
    assert not folder.exists() and hub.cache_state(spec) == "no"
    assert not (hub.url_cache_dir() / "urls" / ".locks" / "umx").exists()


def test_remove_on_an_unwritable_cache_is_a_typed_error(server, tmp_path, published_model, monkeypatch):
    spec, _, _, _ = publish(server, tmp_path)
    folder = hub.fetch(spec)
    hub.fetch(published_model.spec)

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", os.fspath(path))

    monkeypatch.setattr(os, "unlink", refuse)  # as on a read-only cache (root ignores chmod)
    for s in (spec, published_model.spec):
        with pytest.raises(CacheError) as exc:
            hub.remove(s)
        assert f"cannot remove the cached files of model '{s.name}' (Permission denied)" in str(exc.value)
        assert exc.value.path
    monkeypatch.undo()
    assert folder.exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores file permissions")
def test_remove_on_a_read_only_folder_is_a_typed_error(server, tmp_path):
    spec, _, _, _ = publish(server, tmp_path)
    folder = hub.fetch(spec)
    os.chmod(folder, 0o555)
    try:
        with pytest.raises(DownloadError, match="Permission denied"):
            hub.remove(spec)
    finally:
        os.chmod(folder, 0o755)


# --------------------------------------------------------------------------- concurrency


def test_two_processes_fetching_the_same_url_file_download_it_once(server, tmp_path):
    spec, files, paths, reg = publish(server, tmp_path)
    server.chunk_delay = 0.3  # 5 chunks of 64 KiB in ~1.5 s: longer than a process start, so the two overlap
    code = textwrap.dedent(f"""
        from unmixcli import hub
        from unmixcli.registry import load_registry
        print(hub.fetch(load_registry([{str(reg)!r}]).get("umx")))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    folders = {out.strip() for out, _ in outs}
    assert len(folders) == 1
    _assert_files(Path(folders.pop()), files)
    assert len(server.gets(paths["0a1b2c3d.safetensors"])) == 1


# --------------------------------------------------------------------------- CLI and loading


def test_models_download_list_and_remove_through_the_cli(server, tmp_path):
    spec, _, paths, reg = publish(server, tmp_path)
    rows = {r["name"]: r for r in json.loads(_run("models", "list", "--json", "--registry", str(reg)).stdout)}
    assert rows["umx"]["cached"] == "no" and rows["umx"]["repo"] is None
    result = _run("models", "download", "umx", "--registry", str(reg), "-q")
    assert result.exit_code == 0, _stderr(result)
    assert f"umx: ready in {hub.url_cache_dir() / 'urls' / 'umx'}" in _stderr(result)
    rows = {r["name"]: r for r in json.loads(_run("models", "list", "--json", "--registry", str(reg)).stdout)}
    assert rows["umx"]["cached"] == "yes"
    assert "umx" in _run("models", "list", "--registry", str(reg)).stdout

    server.fail(paths["umx.yaml"], status=404)
    result = _run("models", "download", "umx", "--registry", str(reg), "--force", "-q")
    assert result.exit_code == 1
    err = _stderr(result)
    assert err.startswith(f"error: {server.url}{paths['umx.yaml']}: not found (HTTP 404)") and "Traceback" not in err
    result = _run("models", "remove", "umx", "--registry", str(reg))
    assert result.exit_code == 0 and "removed" in _stderr(result)
    assert hub.cache_state(spec) == "no"


def test_load_model_from_urls(server, tmp_path):
    torch = pytest.importorskip("torch")
    export = pytest.importorskip("demucs_export")
    from unmixcli import families

    built = tmp_path / "built"
    built.mkdir()
    export.export_tiny(built, "tinyurl")
    files = {p.name: p.read_bytes() for p in built.iterdir()}
    _, _, _, reg = publish(server, tmp_path, name="tinyurl", files=files, prefix="/records/42/files")

    bag = families.load_model("tinyurl", registry_files=[reg], device="cpu")
    assert bag.sources == ["drums", "bass", "other", "vocals"] and len(bag.models) == 1
    local = families.load_model(str(built))
    x = torch.randn(1, 2, 4000)
    with torch.no_grad():
        assert torch.equal(bag.models[0](x), local.models[0](x))
