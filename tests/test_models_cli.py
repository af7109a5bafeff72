"""`unmix models list | info | download | remove`: output, errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import run_unmix as _run, stderr_of as _stderr
from fakehub import write_registry
from unmixcli import hub

PUBLISHED = ["htdemucs", "htdemucs_ft", "htdemucs_6s", "hdemucs_mmi", "mdx", "mdx_extra", "mdx_q", "mdx_extra_q"]


def test_list_json_parses_and_reports_the_cache(published_model):
    result = _run("models", "list", "--json", "--registry", str(published_model.registry))
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    by_name = {r["name"]: r for r in rows}
    assert [r["name"] for r in rows][: len(PUBLISHED)] == PUBLISHED
    assert by_name["htdemucs"]["default"] is True and by_name["mdx"]["default"] is False
    assert by_name["htdemucs_6s"]["stems"][-2:] == ["guitar", "piano"]
    assert by_name["mdx_q"]["quantized"] == "diffq"
    assert by_name["tiny"]["cached"] == "no"
    hub.fetch(published_model.spec)
    rows = json.loads(_run("models", "list", "--json", "--registry", str(published_model.registry)).stdout)
    assert {r["name"]: r["cached"] for r in rows}["tiny"] == "yes"


def test_list_table_shows_the_columns_users_need(hf_env):
    result = _run("models", "list")
    assert result.exit_code == 0
    out = result.stdout
    # (quantization and where a score comes from moved to `models info` to fit 80 columns)
    for header in ("name", "stems", "size", "SDR", "licence", "cached"):
        assert header in out
    for name in PUBLISHED:
        assert name in out
    assert "research" in out and "84 MB" in out and "9.16" in out


def test_models_list_does_not_import_torch(hf_env):
    code = (
        "import sys\n"
        "from unmixcli import cli\n"
        "try:\n"
        "    cli.app(['models', 'list'])\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules, 'torch imported by models list'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "htdemucs" in proc.stdout


def test_user_registry_from_the_environment_is_listed(published_model, monkeypatch):
    monkeypatch.setenv("UNMIX_REGISTRY", str(published_model.registry))
    names = [r["name"] for r in json.loads(_run("models", "list", "--json").stdout)]
    assert "tiny" in names


def test_info_shows_licence_and_sdr_source(hf_env):
    result = _run("models", "info", "mdx_extra")
    assert result.exit_code == 0
    assert "research purposes only" in result.stdout
    assert "test set" in result.stdout
    info = json.loads(_run("models", "info", "htdemucs", "--json").stdout)
    assert info["repo"] == "adefossez/HTDemucs" and info["cached"] == "no"


def test_info_of_a_url_model_names_its_urls_and_url_cache(hf_env, tmp_path, monkeypatch):
    """Open-Unmix is on Zenodo, not the Hub: info names the URLs and the URL cache, not a Hub repo."""
    monkeypatch.setenv("UNMIX_CACHE", str(tmp_path / "cache"))
    result = _run("models", "info", "umxhq")
    assert result.exit_code == 0
    assert "huggingface.co" not in result.stdout
    assert "https://zenodo.org/records/3370489/files/vocals-b62c91ce.pth" in result.stdout
    info = json.loads(_run("models", "info", "umxhq", "--json").stdout)
    assert info["cache_dirs"] == [str(tmp_path / "cache" / "urls" / "umxhq")]


def test_unknown_name_suggests_close_names(hf_env):
    result = _run("models", "info", "htdemcus")
    assert result.exit_code == 1
    err = _stderr(result)
    assert "error: unknown model 'htdemcus'" in err
    assert "did you mean htdemucs" in err
    result = _run("models", "download", "mdx_extra", "mdx_exta_q")
    assert result.exit_code == 1 and "did you mean mdx_extra_q" in _stderr(result)


def test_download_then_remove(published_model):
    reg = str(published_model.registry)
    result = _run("models", "download", "tiny", "--registry", reg)
    assert result.exit_code == 0, _stderr(result)
    assert "tiny: ready in" in _stderr(result)
    assert hub.cache_state(published_model.spec) == "yes"
    result = _run("models", "remove", "tiny", "--registry", reg)
    assert result.exit_code == 0 and "removed" in _stderr(result)
    assert hub.cache_state(published_model.spec) == "no"
    result = _run("models", "remove", "tiny", "--registry", reg)
    assert "not cached" in _stderr(result)


def test_download_offline_says_which_command_fetches_it(published_model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = _run("models", "download", "tiny", "--registry", str(published_model.registry))
    assert result.exit_code == 1
    assert "hint: run `unmix models download tiny`" in _stderr(result)
    assert published_model.hub.requests == []


def test_download_http_errors_name_repo_and_file(published_model, tmp_path):
    m = published_model
    m.hub.fail(m.repo, "4e5f6a7b.safetensors", status=502)
    result = _run("models", "download", "tiny", "--registry", str(m.registry), "-q")
    assert result.exit_code == 1
    assert "test-owner/Tiny@main/4e5f6a7b.safetensors" in _stderr(result) and "HTTP 502" in _stderr(result)
    m.hub.stop()
    result = _run("models", "download", "tiny", "--registry", str(m.registry), "-q")
    assert result.exit_code == 1 and "Connection refused" in _stderr(result)


def test_invalid_registry_file_is_one_line_error(hf_env, tmp_path):
    bad = write_registry(tmp_path / "bad.yaml", {"x": {"description": "d"}})
    result = _run("models", "list", "--registry", str(bad))
    assert result.exit_code == 1
    err = _stderr(result)
    assert err.startswith("error: ") and "model 'x': field 'repo'" in err and str(bad) in err
    assert "Traceback" not in err


def test_list_groups_models_by_purpose_within_80_columns(hf_env, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    result = subprocess.run([sys.executable, "-m", "unmixcli", "models", "list"], capture_output=True, text=True,
                            env={**__import__("os").environ, "COLUMNS": "80"}, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    titles = [line for line in lines if line and not line.startswith((" ", "name", "*")) and "  " not in line]
    assert titles[:2] == ["4 stems (drums, bass, other, vocals)", "6 stems (+ guitar, piano)"]
    assert "karaoke (lead / backing vocals)" in titles and titles.index("speech") > titles.index("vocals / instrumental")
    karaoke = lines.index("karaoke (lead / backing vocals)")
    assert lines[karaoke + 2].startswith("bs-karaoke")
    # Names are what -m takes: UVR's long ones (up to 26 characters) stay whole on one line.
    from unmixcli.registry import load_registry

    firsts = {line.split("  ")[0].removesuffix(" *") for line in lines}
    long_names = [spec.name for spec in load_registry([]) if 20 < len(spec.name) <= 26]
    assert long_names and all(name in firsts for name in long_names)
    info = json.loads(_run("models", "info", "bs-karaoke", "--json").stdout)
    assert info["purpose"] == "karaoke"
