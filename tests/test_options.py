"""One validation per options type: EngineOptions, OutputOptions, StemRequest, EvalOptions.

Each bad value gives the same one-line message through `unmix`, `unmix eval` and the Python
API, and exit code 2 on the command line. The checks run before any model is looked up, so
the model named here does not exist: a bad option must be reported first, without a
download or a "model not found".
"""

from __future__ import annotations

import math

import pytest
from typer.testing import CliRunner

from unmixcli import cli
from unmixcli.engine import EngineOptions
from unmixcli.errors import EXIT_USAGE, UsageError
from unmixcli.evaluate import EvalOptions, evaluate
from unmixcli.separate import OutputOptions, StemRequest

NO_MODEL = "no-such-model-anywhere"


def cli_error(args) -> str:
    """Run `unmix ARGS`; assert a usage error; return the message after 'error: '."""
    result = CliRunner().invoke(cli.app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == EXIT_USAGE, (args, result.output)
    first = result.stderr.splitlines()[0]
    assert first.startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return first[len("error: "):]


def api_error(make) -> str:
    with pytest.raises(UsageError) as exc:
        make()
    assert exc.value.exit_code == EXIT_USAGE
    return exc.value.one_line()


# (CLI option arguments, EngineOptions keyword arguments), one per check.
ENGINE_CASES = [
    (["--segment", "-1"], dict(segment=-1.0)),
    (["--segment", "0"], dict(segment=0.0)),
    (["--segment", "nan"], dict(segment=math.nan)),
    (["--overlap", "1.5"], dict(overlap=1.5)),
    (["--overlap", "1"], dict(overlap=1.0)),
    (["--overlap", "-0.1"], dict(overlap=-0.1)),
    (["--shifts", "-1"], dict(shifts=-1)),
    (["--batch-size", "0"], dict(batch_size=0)),
    (["--precision", "fp8"], dict(precision="fp8")),
]


@pytest.mark.parametrize("args, kwargs", ENGINE_CASES, ids=[" ".join(a) for a, _ in ENGINE_CASES])
def test_engine_options_same_message_cli_api_eval(tmp_path, args, kwargs):
    from unmixcli import Separator

    expected = api_error(lambda: EngineOptions(**kwargs))
    assert cli_error([tmp_path / "song.wav", "-m", NO_MODEL, *args]) == expected
    assert api_error(lambda: Separator(NO_MODEL, **kwargs)) == expected
    if "--batch-size" not in args:  # eval has no --batch-size
        assert cli_error(["eval", tmp_path / "data", "-m", NO_MODEL, *args]) == expected
        # Estimates mode runs no model, but the options are still checked the same way.
        assert cli_error(["eval", tmp_path / "data", "--estimates", tmp_path / "est", *args]) == expected


def test_engine_option_messages_name_the_option_and_value():
    assert "overlap must be in [0, 1), got 1.5" == api_error(lambda: EngineOptions(overlap=1.5))
    assert "segment" in api_error(lambda: EngineOptions(segment=-2.0))
    assert "unknown precision 'fp8'" == api_error(lambda: EngineOptions(precision="fp8"))
    for bad in (1.5, True, "2"):
        assert "shifts" in api_error(lambda: EngineOptions(shifts=bad))
        assert "batch size" in api_error(lambda: EngineOptions(batch_size=bad))
    EngineOptions(segment=7.8, overlap=0.0, shifts=2, batch_size=4, precision="auto")  # fine


# (CLI option arguments, OutputOptions keyword arguments). The CLI's --bitrate is kbit/s.
OUTPUT_CASES = [
    (["-f", "ogg"], dict(fmt="ogg")),
    (["--clip", "soft"], dict(clip="soft")),
    (["--sample-rate", "fast"], dict(sample_rate="fast")),
    (["--sample-rate", "0"], dict(sample_rate=0)),
    (["--sample-rate", "-44100"], dict(sample_rate=-44100)),
    (["--sample-rate", "99999999"], dict(sample_rate=99999999)),
    (["--filename", "{track}.{ext}"], dict(template="{track}.{ext}")),
    (["--filename", "{model}/{nope}/{stem}.{ext}"], dict(template="{model}/{nope}/{stem}.{ext}")),
    (["--filename", "../{stem}.{ext}"], dict(template="../{stem}.{ext}")),
    (["--filename", "{stem}/{"], dict(template="{stem}/{")),
    (["--filename", "{stem!x}.{ext}"], dict(template="{stem!x}.{ext}")),
    (["--bit-depth", "20"], dict(bit_depth=20)),
    (["-f", "mp3", "--bit-depth", "24"], dict(fmt="mp3", bit_depth=24)),
    (["-f", "flac", "--bit-depth", "32"], dict(fmt="flac", bit_depth=32)),
    (["-f", "flac", "--bitrate", "320"], dict(fmt="flac", bitrate=320_000)),
    (["-f", "mp3", "--bitrate", "0"], dict(fmt="mp3", bitrate=0)),
    (["-f", "opus", "--bitrate", "-64"], dict(fmt="opus", bitrate=-64_000)),
    (["-f", "opus", "--bitrate", "2000"], dict(fmt="opus", bitrate=2_000_000)),
]


@pytest.mark.parametrize("args, kwargs", OUTPUT_CASES, ids=[" ".join(a) for a, _ in OUTPUT_CASES])
def test_output_options_same_message_cli_and_api(tmp_path, args, kwargs):
    expected = api_error(lambda: OutputOptions(out_dir=tmp_path / "out", **kwargs))
    assert cli_error([tmp_path / "song.wav", "-m", NO_MODEL, "-o", tmp_path / "out", *args]) == expected
    # --dry-run plans without running a model: the same check comes first there too.
    assert cli_error([tmp_path / "song.wav", "-m", NO_MODEL, "--dry-run", *args]) == expected


def test_output_option_values_that_are_fine(tmp_path):
    assert OutputOptions(sample_rate="48000").sample_rate == 48000  # digits, as the CLI gives them
    assert OutputOptions(sample_rate=22050).sample_rate == 22050
    assert OutputOptions(sample_rate="keep").sample_rate == "keep"
    assert OutputOptions(fmt="mp3", bitrate=128_000).bitrate == 128_000
    assert OutputOptions(fmt="flac", bit_depth=16).effective_bit_depth == 16
    OutputOptions(template="{dir}/{track} - {stem}.{ext}").validate()  # still callable


def test_bitrate_message_is_in_kbits_both_ways(tmp_path):
    msg = api_error(lambda: OutputOptions(fmt="mp3", bitrate=0))
    assert msg == "invalid bitrate 0 kbit/s"
    assert cli_error([tmp_path / "s.wav", "-m", NO_MODEL, "-f", "mp3", "--bitrate", "0"]) == msg


def test_stem_request_instrumental_mode(tmp_path):
    expected = api_error(lambda: StemRequest(karaoke=True, instrumental="louder"))
    assert expected == "unknown instrumental mode 'louder'"
    assert cli_error([tmp_path / "s.wav", "-m", NO_MODEL, "--karaoke", "--instrumental", "louder"]) == expected


EVAL_CASES = [
    (["--stems", "vocals"], dict(stems=("vocals",))),
    (["--stems", "vocals,vocals"], dict(stems=("vocals", "vocals"))),
    (["--subset", "../train"], dict(subset="../train")),
]


@pytest.mark.parametrize("args, kwargs", EVAL_CASES, ids=[" ".join(a) for a, _ in EVAL_CASES])
def test_eval_options_same_message_cli_and_api(tmp_path, args, kwargs):
    expected = api_error(lambda: EvalOptions(**kwargs))
    assert cli_error(["eval", tmp_path / "data", "--estimates", tmp_path / "est", *args]) == expected
    assert cli_error(["eval", tmp_path / "data", "-m", NO_MODEL, *args]) == expected
    # evaluate() checks its options before it looks at the (missing) folders.
    assert api_error(lambda: evaluate(tmp_path / "data", tmp_path / "out", estimates_dir=tmp_path / "est",
                                      **kwargs)) == expected


def test_eval_window_and_hop():
    for window, hop in ((0.0, 1.0), (1.0, -1.0), (math.inf, 1.0), (math.nan, 1.0)):
        assert "window and hop must be positive" in api_error(lambda: EvalOptions(window=window, hop=hop))
    assert EvalOptions(stems=["vocals", "drums"]).stems == ("drums", "vocals")  # display order


def test_threads_is_checked_by_the_command_line(tmp_path):
    assert cli_error([tmp_path / "s.wav", "-m", NO_MODEL, "--threads", "0"]) == "--threads must be at least 1, got 0"
