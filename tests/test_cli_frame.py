"""The CLI frame: version, help, error mapping, and a torch-free start-up path."""

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

import unmixcli
from unmixcli import cli
from unmixcli.errors import AudioDecodeError, UsageError


def test_version_prints_package_version():
    result = CliRunner().invoke(cli.app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"unmix {unmixcli.__version__}"


def test_help_and_version_do_not_import_torch():
    code = (
        "import sys\n"
        "from unmixcli import cli\n"
        "for args in (['--help'], ['--version']):\n"
        "    try:\n"
        "        cli.app(args)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert 'torch' not in sys.modules, 'torch imported on the fast path'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "err, code",
    [
        (AudioDecodeError("not an audio file", path="x.mp3", hint="check the file"), 1),
        (UsageError("--stems: unknown stem 'flute'"), 2),
    ],
)
def test_errors_become_one_line_and_exit_code(err, code, capsys):
    with pytest.raises(typer.Exit) as exc:
        with cli.handle_errors():
            raise err
    assert exc.value.exit_code == code
    captured = capsys.readouterr()
    lines = [l for l in captured.err.splitlines() if l.strip()]
    assert lines[0] == f"error: {err.one_line()}"
    assert "Traceback" not in captured.err
    if err.hint:
        assert lines[1] == f"hint: {err.hint}"


def test_keyboard_interrupt_exits_130():
    with pytest.raises(typer.Exit) as exc:
        with cli.handle_errors():
            raise KeyboardInterrupt
    assert exc.value.exit_code == 130


def test_python_dash_m_runs():
    proc = subprocess.run([sys.executable, "-m", "unmixcli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert unmixcli.__version__ in proc.stdout
