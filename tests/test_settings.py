"""The settings file (issue 21): new option defaults from config.toml, flags win, errors
name file:line, `unmix config` shows every effective default and where it comes from."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from unmixcli import cli, settings


@pytest.fixture
def cfg_env(tmp_path, monkeypatch):
    """XDG_CONFIG_HOME in tmp, no UNMIX_CONFIG; returns the default settings file path."""
    monkeypatch.delenv(settings.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    path = tmp_path / "xdg" / "unmix" / "config.toml"
    path.parent.mkdir(parents=True)
    return path


def run(args):
    return CliRunner().invoke(cli.app, [str(a) for a in args], catch_exceptions=False)


def config_lines(result, section):
    """{option: (value, source)} of one `[section]` of `unmix config`'s output."""
    out, current = {}, None
    for line in result.output.splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section and " = " in line:
            key, rest = line.split(" = ", 1)
            value, source = rest.rsplit("  # ", 1)
            out[key] = (value, source)
    return out


def capture(monkeypatch):
    """Replace the body of `unmix separate` with one that records the options it gets."""
    seen = {}

    def fake_batch(jobs, runtime, request, output, on_event):
        seen["output"] = output
        return []

    return seen, fake_batch


def test_xdg_file_changes_defaults_and_flags_win(cfg_env, tmp_path):
    cfg_env.write_text('# my settings\nbit-depth = 16\n\n[separate]\nformat = "flac"\nout = "~/stems"\n'
                       '[eval]\nsubset = "valid"\n')
    result = run(["config"])
    assert result.exit_code == 0, result.output
    assert f"# settings file: {cfg_env} (XDG_CONFIG_HOME; found)" in result.output
    sep = config_lines(result, "separate")
    assert sep["bit-depth"] == ("16", f"{cfg_env}:2")
    assert sep["format"] == ('"flac"', f"{cfg_env}:5")
    assert sep["out"] == (f'"{Path("~/stems").expanduser()}"', f"{cfg_env}:6")
    assert sep["device"] == ('"auto"', "default")
    ev = config_lines(result, "eval")
    assert ev["subset"] == ('"valid"', f"{cfg_env}:8")
    assert "bit-depth" not in ev  # eval has no --bit-depth: the top-level key skips it
    assert config_lines(result, "denoise")["bit-depth"] == ("16", f"{cfg_env}:2")


def _options_seen(args, monkeypatch):
    """The OutputOptions `unmix separate` builds (stopped before any model loads)."""
    from unmixcli import separate

    seen = {}
    real = getattr(separate.OutputOptions, "real", separate.OutputOptions)  # not an earlier call's spy

    class Stop(Exception):
        pass

    def spy(**kw):
        seen.update(kw)
        real(**kw)  # its own checks still run
        raise Stop

    spy.real = real
    monkeypatch.setattr(separate, "OutputOptions", spy)
    with pytest.raises(Stop):
        CliRunner().invoke(cli.app, [str(a) for a in args], catch_exceptions=False)
    return seen


def test_separate_gets_file_values_and_flag_wins(cfg_env, tmp_path, monkeypatch):
    cfg_env.write_text('bit_depth = 16\n[separate]\nformat = "flac"\nfilename = "{track}/{stem}.{ext}"\n')
    seen = _options_seen(["separate", tmp_path / "a.wav"], monkeypatch)
    assert (seen["fmt"], seen["bit_depth"], seen["template"]) == ("flac", 16, "{track}/{stem}.{ext}")
    seen = _options_seen(["separate", tmp_path / "a.wav", "-f", "wav", "--bit-depth", "32"], monkeypatch)
    assert (seen["fmt"], seen["bit_depth"], seen["template"]) == ("wav", 32, "{track}/{stem}.{ext}")


def test_env_var_path_wins_over_xdg(cfg_env, tmp_path, monkeypatch):
    cfg_env.write_text('device = "cpu"\n')
    other = tmp_path / "elsewhere.toml"
    other.write_text('\n\ndevice = "cuda:1"\nmodel = ["a", "b"]\n')
    monkeypatch.setenv(settings.ENV_VAR, str(other))
    result = run(["config", "separate"])
    assert result.exit_code == 0, result.output
    assert f"({settings.ENV_VAR}; found)" in result.output
    sep = config_lines(result, "separate")
    assert sep["device"] == ('"cuda:1"', f"{other}:3")
    assert sep["model"] == ('["a", "b"]', f"{other}:4")
    assert "[eval]" not in result.output


def test_missing_env_file_is_an_error_missing_default_is_not(cfg_env, tmp_path, monkeypatch):
    result = run(["config"])
    assert result.exit_code == 0 and "not found: built-in defaults" in result.output
    assert config_lines(result, "separate")["format"] == ('"wav"', "default")
    monkeypatch.setenv(settings.ENV_VAR, str(tmp_path / "typo.toml"))
    result = run(["config"])
    assert result.exit_code == 2
    assert f"error: {tmp_path / 'typo.toml'}: settings file not found" in result.output


def test_xdg_rules(tmp_path, monkeypatch):
    monkeypatch.delenv(settings.ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/dir")  # not absolute: ignored, as the spec says
    assert settings.config_path() == (tmp_path / "home" / ".config" / "unmix" / "config.toml", "~/.config")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "x"))
    assert settings.config_path()[0] == tmp_path / "x" / "unmix" / "config.toml"


def _error_line(result):
    lines = [l for l in result.output.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("text, line, words", [
    ('format = "flac"\n\n[separate]\nbit-depth = 16\nmodle = "x"\n', 5, ["unknown setting 'modle'", "did you mean 'model'"]),
    ('colour = "red"\n', 1, ["unknown setting 'colour'"]),
    ('[eval]\nsubset = "test"\nbit-depth = 16\n', 3, ["unknown setting 'bit-depth' for `unmix eval`"]),
    ('[separate]\nbit-depth = 16\nbit_depth = 24\n', 3, ["set twice"]),
    ('[separate]\nstems = ["vocals", "drums"]\n', 2, ["takes one value, not a list"]),
    ('\n[separate]\nformat = "flac\n', 3, ["invalid TOML"]),
    ('[separate\nformat = "flac"\n', 1, ["invalid TOML"]),
])
def test_bad_file_is_one_line_with_file_and_line(cfg_env, tmp_path, text, line, words):
    cfg_env.write_text(text)
    result = run(["separate", tmp_path / "a.wav", "--dry-run"])
    assert result.exit_code == 2, result.output
    err = _error_line(result)
    assert err.startswith(f"error: {cfg_env}:{line}: "), err
    for w in words:
        assert w in result.output


@pytest.mark.parametrize("text, line, key", [
    ('[separate]\nformat = "flac"\nbit-depth = "deep"\n', 3, "bit-depth"),
    ('shifts = "many"\n', 1, "shifts"),
    ('verbose = "maybe"\n', 1, "verbose"),
])
def test_bad_value_names_file_and_line(cfg_env, tmp_path, text, line, key):
    cfg_env.write_text(text)
    result = run(["separate", tmp_path / "a.wav", "--dry-run"])
    assert result.exit_code == 2, result.output
    assert _error_line(result).startswith(f"error: {cfg_env}:{line}: bad value for '{key}'")


def test_bad_value_on_the_command_line_keeps_clicks_message(cfg_env, tmp_path):
    cfg_env.write_text('bit-depth = 16\n')
    result = run(["separate", tmp_path / "a.wav", "--dry-run", "--shifts", "many"])
    assert result.exit_code == 2
    assert str(cfg_env) not in result.output


def test_value_checked_in_the_command_body_notes_the_file(cfg_env, tmp_path):
    # --precision is checked by EngineOptions: its message has no line, so the CLI names the
    # settings that applied.
    cfg_env.write_text('\nprecision = "fp64"\n')
    result = run(["separate", tmp_path / "a.wav", "--dry-run"])
    assert result.exit_code == 2
    assert "unknown precision 'fp64'" in result.output
    assert f"note: from {cfg_env}: precision (line 2)" in result.output


def test_nested_group_section(cfg_env):
    cfg_env.write_text('[models.list]\njson = true\n')
    result = run(["config", "models", "list"])
    assert result.exit_code == 0, result.output
    assert config_lines(result, "models.list")["json"] == ("true", f"{cfg_env}:2")
    cfg_env.write_text('[models]\njson = true\n')
    result = run(["config"])
    assert result.exit_code == 2 and f"{cfg_env}:2" in _error_line(result)
