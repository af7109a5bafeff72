"""Reliability (issue 8), part 1: hostile inputs through the real command line.

A corpus of files a real music library can contain (broken, odd, huge-rate,
surround, video, weird names, junk beside the music) is generated here and fed
to `unmix` in one batch. Every input must either separate correctly (stems of
the input's length at the output rate, finite samples) or fail with exactly one
`error:` line naming it and the cause, leave no output for it, and not stop
the batch: the good files are all separated, the exit code is 1, no traceback.

What "correct" is, case by case, is the `Case.expect` of each entry below; the
choices that are not obvious are explained next to the case.

Also here (part 5): stems never hold NaN/inf, `--clip none` with float output
alters nothing (checked against the API's in-memory result), integer output
never wraps; and (part 3) a nasty file name cannot put output outside `-o`.
"""

from __future__ import annotations

import json
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import pytest
import soundfile as sf

from typer.testing import CliRunner

from demucs_export import export_tiny
from media import pyav_write
from unmixcli import audio, cli

MODEL_RATE = 8000  # the tiny test model's rate (= the default output rate)
STEMS = ("drums", "bass", "other", "vocals")
SECONDS = 0.6  # short: the whole corpus must separate in a few seconds


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-model")
    export_tiny(folder, "tiny")
    return folder


def signal(frames: int, rate: int, channels: int = 2, gain: float = 0.3, seed: int = 0) -> np.ndarray:
    """Tones plus noise, float32 [C, frames]; each channel different."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / rate
    rows = [gain * (np.sin(2 * np.pi * (180 + 70 * c) * t) + 0.2 * rng.standard_normal(frames)) for c in range(channels)]
    return np.asarray(rows, dtype=np.float32).reshape(channels, frames)


def write_wav(path: Path, x: np.ndarray, rate: int, subtype: str = "FLOAT") -> Path:
    """x: [C, T]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x.T, rate, subtype=subtype, format="WAV")
    return path


def write_pyav(path: Path, x: np.ndarray, rate: int, codec: str, sample_fmt: str, *,
               muxer: Optional[str] = None, video: Optional[str] = None, audio_track: bool = True) -> Path:
    """Encode [C, T] stereo audio (and optionally a small video track) as another program would."""
    # FFmpeg's own Vorbis encoder is flagged experimental; allow it like `ffmpeg -strict -2`.
    return pyav_write(path, x, rate, codec, sample_fmt, muxer=muxer, video=video, layout="stereo",
                      codec_options={"strict": "experimental"}, audio_track=audio_track)


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


# --------------------------------------------------------------------------- the corpus


@dataclass
class Case:
    """One hostile input: how to make it, and what must happen.

    expect "ok": separated; stems hold `frames` samples at the model rate (None:
    as many as our decoder reads from the file, for files whose length is only
    known by decoding them, e.g. truncated ones). expect "fail": one error line
    naming the file and matching `cause`.
    """

    name: str
    make: Callable[[Path], object]
    expect: str = "ok"
    frames: Optional[int] = None
    cause: str = ""


def at_model_rate(frames: int, rate: int) -> int:
    return round(frames * MODEL_RATE / rate)


N44 = int(SECONDS * 44100)
N48 = int(SECONDS * 48000)


def _nan_wav(path: Path) -> None:
    x = signal(N44, 44100)
    x[0, 100] = np.nan
    write_wav(path, x, 44100)


def _inf_wav(path: Path) -> None:
    x = signal(N44, 44100)
    x[1, 2000] = -np.inf
    write_wav(path, x, 44100)


def _fifo(path: Path) -> None:
    os.mkfifo(path)


CASES = [
    # Nothing in it, or not media at all.
    Case("empty.wav", lambda p: p.write_bytes(b""), "fail", cause="file is empty"),
    Case("random bytes.mp3", lambda p: p.write_bytes(np.random.default_rng(1).bytes(20000)), "fail",
         cause="not a readable audio or video file|no audio could be decoded"),
    Case("text pretending.flac", lambda p: p.write_text("hello, I am not a FLAC file\n" * 50), "fail",
         cause="not a readable audio or video file|declares no sample rate"),
    # Truncated compressed files: what can be decoded is separated (the decoder warns); the stems are
    # as long as what was decoded, which is what a listener of the damaged file hears.
    Case("cut short.mp3", lambda p: truncate(audio.encode(p, signal(N44, 44100), 44100) or p, 0.5)),
    Case("cut short too.flac", lambda p: truncate(audio.encode(p, signal(N44, 44100), 44100, bit_depth=16) or p, 0.6)),
    # Cut inside the header: nothing decodable at all.
    Case("stub.flac", lambda p: truncate(audio.encode(p, signal(N44, 44100), 44100) or p, 0.002), "fail",
         cause="no audio|not a readable"),
    # Samples the model cannot use: refused before any work, rather than writing NaN stems.
    Case("nan.wav", _nan_wav, "fail", cause="NaN or infinite"),
    Case("inf.wav", _inf_wav, "fail", cause="NaN or infinite"),
    # Extremes that are still audio.
    Case("clipping.wav", lambda p: write_wav(p, np.clip(signal(N44, 44100, gain=40.0), -8, 8), 44100),
         frames=at_model_rate(N44, 44100)),
    Case("silence.wav", lambda p: write_wav(p, np.zeros((2, N44), np.float32), 44100, "PCM_16"),
         frames=at_model_rate(N44, 44100)),
    # A 1-sample WAV at the model's rate is one sample of audio: it separates into 1-sample stems.
    Case("one sample.wav", lambda p: write_wav(p, np.full((2, 1), 0.25, np.float32), MODEL_RATE), frames=1),
    # One 44.1 kHz sample is 0.18 samples at 8 kHz: nothing is left at the model's rate, so it fails
    # cleanly (there is no honest 0-sample stem to write).
    Case("one sample 44k.wav", lambda p: write_wav(p, np.full((2, 1), 0.25, np.float32), 44100), "fail",
         cause="no audio"),
    Case("zero samples.wav", lambda p: write_wav(p, np.zeros((2, 0), np.float32), 44100, "PCM_16"), "fail",
         cause="no audio"),
    # Channel layouts: mono is duplicated, surround folded to stereo (the model's channels).
    Case("mono.wav", lambda p: write_wav(p, signal(N44, 44100, channels=1), 44100, "PCM_16"),
         frames=at_model_rate(N44, 44100)),
    Case("surround 5.1.wav", lambda p: write_wav(p, signal(N48, 48000, channels=6), 48000, "PCM_24"),
         frames=at_model_rate(N48, 48000)),
    Case("surround 7.1.wav", lambda p: write_wav(p, signal(N48, 48000, channels=8), 48000, "PCM_24"),
         frames=at_model_rate(N48, 48000)),
    # Rates and sample formats.
    Case("8k.wav", lambda p: write_wav(p, signal(int(SECONDS * 8000), 8000), 8000, "PCM_16"),
         frames=int(SECONDS * 8000)),
    Case("192k.wav", lambda p: write_wav(p, signal(int(SECONDS * 192000), 192000), 192000, "PCM_24"),
         frames=at_model_rate(int(SECONDS * 192000), 192000)),
    Case("24bit.wav", lambda p: write_wav(p, signal(N44, 44100), 44100, "PCM_24"), frames=at_model_rate(N44, 44100)),
    Case("32float.wav", lambda p: write_wav(p, signal(N44, 44100), 44100, "FLOAT"), frames=at_model_rate(N44, 44100)),
    # Containers and codecs another program wrote. Their lengths are exact where the container
    # records encoder delay and padding (Ogg, MP4 edit lists, WebM Opus).
    Case("vorbis.ogg", lambda p: write_pyav(p, signal(N44, 44100), 44100, "vorbis", "fltp", muxer="ogg")),
    Case("voice.opus", lambda p: write_pyav(p, signal(N48, 48000), 48000, "libopus", "flt", muxer="ogg"),
         frames=at_model_rate(N48, 48000)),
    Case("aac.m4a", lambda p: write_pyav(p, signal(N44, 44100), 44100, "aac", "fltp", muxer="ipod")),
    Case("clip.webm", lambda p: write_pyav(p, signal(N48, 48000), 48000, "libopus", "flt", video="libvpx")),
    Case("music video.mp4", lambda p: write_pyav(p, signal(N44, 44100), 44100, "aac", "fltp", video="mpeg4")),
    Case("silent film.mp4", lambda p: write_pyav(p, signal(N44, 44100), 44100, "aac", "fltp", video="mpeg4",
                                                 audio_track=False), "fail", cause="no audio stream"),
    # Names a shell or a naive path join would trip on.
    Case("it's \"quoted\" & spaced.wav", lambda p: write_wav(p, signal(N44, 44100), 44100, "PCM_16"),
         frames=at_model_rate(N44, 44100)),
    Case("Ünïcødé 日本語 Ελληνικά.flac", lambda p: audio.encode(p, signal(N44, 44100), 44100),
         frames=at_model_rate(N44, 44100)),
    # Brackets are Rich markup: a file name must never be read as markup (or crash the display).
    Case("Song [Live] [bold].wav", lambda p: write_wav(p, signal(N44, 44100), 44100, "PCM_16"),
         frames=at_model_rate(N44, 44100)),
    # In a folder named "Bootlegs [", this file's path reads "Bootlegs [/b] broken.mp3": a closing tag.
    Case("Bootlegs [/b] broken.mp3", lambda p: p.write_bytes(b"ID3" + bytes(300)), "fail",
         cause=r"Bootlegs \[/b\] broken\.mp3: .*(not a readable|no audio)"),
    # A long name (240 bytes): the output folder is named after it, and temporary files must fit too.
    Case("x" * 231 + " long.flac", lambda p: audio.encode(p, signal(N44, 44100), 44100),
         frames=at_model_rate(N44, 44100)),
    # A symbolic link whose target is gone (a moved library), and a folder named like audio.
    Case("dangling link.mp3", lambda p: os.symlink("moved away.mp3", p), "fail", cause="file not found"),
    # A FIFO named like audio: opening it would block forever waiting for a writer.
    Case("pipe.wav", _fifo, "fail", cause="not a regular file"),
]


def build_corpus(folder: Path) -> Dict[str, Case]:
    folder.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        (folder / case.name).parent.mkdir(parents=True, exist_ok=True)
        case.make(folder / case.name)
    # Junk beside the music, and subfolders: only media files are picked up from a folder.
    (folder / "cover.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(500))
    (folder / "notes.txt").write_text("tracklist\n")
    (folder / ".DS_Store").write_bytes(bytes(64))
    sub = folder / "Disc 2"
    sub.mkdir()
    write_wav(sub / "bonus.wav", signal(N44, 44100, seed=4), 44100, "PCM_16")
    (sub / "folder.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    (sub / "empty subfolder").mkdir()
    (sub / "not a song.mp3").mkdir()  # a folder named like audio is walked, not decoded
    os.symlink("..", sub / "loop")  # a symbolic-link loop back to the top
    return {c.name: c for c in CASES}


def track_of(name: str) -> str:
    """Where a case's stems go under <out>/<model>/: its folder in the library, then its name without suffix."""
    return str(Path(name).with_suffix(""))


def run_cli(args, **kw):
    return CliRunner().invoke(cli.app, [str(a) for a in args], catch_exceptions=False, **kw)


def error_lines(stderr: str):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def read_stems(folder: Path):
    out = {}
    for stem in STEMS:
        data, rate = sf.read(folder / f"{stem}.wav", dtype="float32", always_2d=True)
        out[stem] = (data.T, rate)
    return out


def decoded_frames(path: Path) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return audio.decode(path, sample_rate=MODEL_RATE).shape[1]


# --------------------------------------------------------------------------- the batch


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory, model_dir):
    """The whole corpus folder, plus a path that does not exist, in one real CLI batch."""
    root = tmp_path_factory.mktemp("corpus")
    library = root / "library"
    cases = build_corpus(library)
    out = root / "out"
    missing = root / "no such album" / "ghost.mp3"
    # Not quiet: the progress display and the summary table show every hostile name too.
    result = run_cli([library, missing, "-m", model_dir, "-o", out, "--bit-depth", "32"])
    return library, cases, out, missing, result


def test_batch_exit_code_and_no_traceback(corpus_run):
    _, _, _, _, result = corpus_run
    assert result.exit_code == 1, result.output  # some inputs failed, the batch went on
    assert "Traceback" not in result.output
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name", [c.name for c in CASES if c.expect == "ok"])
def test_good_inputs_separate_with_the_right_length(corpus_run, name):
    library, cases, out, _, result = corpus_run
    case = cases[name]
    folder = out / "tiny" / track_of(name)
    assert folder.is_dir(), result.stderr
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{s}.wav" for s in STEMS)
    want = case.frames if case.frames is not None else decoded_frames(library / name)
    assert want > 0
    for stem, (data, rate) in read_stems(folder).items():
        assert rate == MODEL_RATE
        assert data.shape == (2, want), (stem, data.shape, want)
        assert np.isfinite(data).all()
        assert np.abs(data).max() <= 1.0 + 1e-6  # --clip rescale (the default) keeps float output in range
    assert not any(name in line for line in error_lines(result.stderr))


@pytest.mark.parametrize("name", [c.name for c in CASES if c.expect == "fail"])
def test_bad_inputs_fail_with_one_line_and_no_output(corpus_run, name):
    library, cases, out, _, result = corpus_run
    case = cases[name]
    mine = [line for line in error_lines(result.stderr) if f"{library / name}:" in line]
    assert len(mine) == 1, result.stderr
    assert re.search(case.cause, mine[0]), mine[0]
    assert not (out / "tiny" / track_of(name)).exists()


def test_missing_path_fails_alone_and_the_rest_is_separated(corpus_run):
    _, _, out, missing, result = corpus_run
    mine = [line for line in error_lines(result.stderr) if str(missing) in line]
    assert len(mine) == 1 and "no such file" in mine[0]
    assert (out / "tiny" / "ghost").exists() is False
    assert (out / "tiny" / "8k" / "vocals.wav").is_file()


def test_folder_junk_is_ignored_and_subfolders_and_links_are_walked_once(corpus_run):
    library, cases, out, _, result = corpus_run
    # The subfolder's track keeps its folder; the link loop adds nothing; images and text are not tried.
    assert sorted(p.name for p in (out / "tiny" / "Disc 2" / "bonus").iterdir()) == sorted(f"{s}.wav" for s in STEMS)
    assert not (out / "tiny" / "Disc 2" / "loop").exists()
    for junk in ("cover", "notes", ".DS_Store", "folder"):
        assert not any(p.name == junk for p in out.rglob("*"))
    assert not any(w in result.stderr for w in ("cover.jpg", "notes.txt", "folder.png", "DS_Store"))
    # Exactly one error line per failed input (and the missing path), nothing else.
    n_failed = sum(c.expect == "fail" for c in cases.values()) + 1
    assert len(error_lines(result.stderr)) == n_failed


def test_no_temporary_files_are_left(corpus_run):
    _, _, out, _, _ = corpus_run
    leftovers = [p for p in out.rglob("*") if p.is_file() and (p.name.startswith(".") or p.suffix != ".wav")]
    assert leftovers == []


def test_a_rerun_skips_everything_good_and_reports_the_bad_again(corpus_run, model_dir):
    library, cases, out, _, _ = corpus_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.wav")}
    result = run_cli([library, "-m", model_dir, "-o", out, "-q", "--bit-depth", "32"])
    assert result.exit_code == 1
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.wav")} == before
    assert len(error_lines(result.stderr)) == sum(c.expect == "fail" for c in cases.values())


def test_stderr_has_one_plain_line_per_problem(corpus_run):
    library, cases, _, _, result = corpus_run
    lines = result.stderr.splitlines()
    # Truncated inputs separate with one `warning:` line each, not Python's two-line warning with source code.
    warned = sorted(line.split(": ")[1] for line in lines if line.startswith("warning:"))
    assert warned == sorted(str(library / n) for n in ("cut short.mp3", "cut short too.flac"))
    assert not [line for line in lines if ".py:" in line or "Warning:" in line]
    # Names with brackets are printed as they are, not eaten as Rich markup.
    assert f"done {library / 'Song [Live] [bold].wav'} ->" in result.stderr


# --------------------------------------------------------------------------- output safety (parts 3 and 5)


NASTY_NAMES = ["...wav", "..\\..\\escape.wav", "-rf.wav", " .wav", "con:nul?*.wav"]


@pytest.mark.parametrize("template", ["{model}/{dir}/{track}/{stem}.{ext}", "{track}/{stem}.{ext}", "{track}{stem}.{ext}"])
def test_nasty_file_names_cannot_write_outside_the_output_folder(tmp_path, model_dir, template):
    library = tmp_path / "in" / "lib"
    library.mkdir(parents=True)
    for i, name in enumerate(NASTY_NAMES):
        write_wav(library / name, signal(int(0.2 * 8000), 8000, seed=i), 8000, "PCM_16")
    out = tmp_path / "in" / "out"
    before = {p for p in tmp_path.rglob("*")}
    # Names starting with a dot are hidden files, skipped when walking a folder: name them explicitly.
    explicit = [library / n for n in NASTY_NAMES if n.startswith(".")]
    result = run_cli([library, *explicit, "-m", model_dir, "-o", out, "-q", "--stems", "vocals", "--filename", template])
    assert result.exit_code == 0, result.output
    created = {p for p in tmp_path.rglob("*")} - before
    files = [p for p in created if p.is_file()]
    assert len(files) == len(NASTY_NAMES)  # one stem per input, none lost to a clash
    for p in created - {out}:
        assert os.path.realpath(p).startswith(os.path.realpath(out) + os.sep), p
        assert ".." not in p.relative_to(out).parts


def loud_song(path: Path, rate: int = MODEL_RATE) -> Path:
    return write_wav(path, signal(int(0.8 * rate), rate, gain=3.0, seed=7), rate)  # peaks near 4x full scale


def test_clip_none_with_float_output_alters_nothing(tmp_path, model_dir):
    from unmixcli import Separator

    song = loud_song(tmp_path / "loud.wav")
    out = tmp_path / "out"
    # The random model's stems are quiet; the karaoke instrumental (mix - vocals) is as loud as the mix.
    result = run_cli([song, "-m", model_dir, "-o", out, "-q", "--clip", "none", "--bit-depth", "32", "--karaoke"])
    assert result.exit_code == 0, result.output
    vocals = Separator(str(model_dir), device="cpu").separate_file(song, stems=["vocals"])["vocals"].numpy()
    mix, _ = sf.read(song, dtype="float32", always_2d=True)
    got_vocals, _ = sf.read(out / "tiny" / "loud" / "vocals.wav", dtype="float32", always_2d=True)
    got_inst, _ = sf.read(out / "tiny" / "loud" / "instrumental.wav", dtype="float32", always_2d=True)
    np.testing.assert_allclose(got_vocals.T, vocals, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got_inst.T, mix.T - vocals, rtol=0, atol=1e-5)
    assert np.abs(got_inst).max() > 2.0  # values far beyond full scale came through untouched


@pytest.mark.parametrize("fmt,depth", [("wav", 16), ("wav", 24), ("flac", 16), ("flac", 24)])
def test_integer_output_saturates_instead_of_wrapping(tmp_path, model_dir, fmt, depth):
    song = loud_song(tmp_path / "loud.wav")
    base = ["-m", model_dir, "-q", "--clip", "none", "--karaoke"]
    assert run_cli([song, *base, "-o", tmp_path / "f", "--bit-depth", "32"]).exit_code == 0
    assert run_cli([song, *base, "-o", tmp_path / "i", "-f", fmt, "--bit-depth", str(depth)]).exit_code == 0
    for stem in ("vocals", "instrumental"):
        ref, _ = sf.read(tmp_path / "f" / "tiny" / "loud" / f"{stem}.wav", dtype="float64", always_2d=True)
        got, _ = sf.read(tmp_path / "i" / "tiny" / "loud" / f"{stem}.{fmt}", dtype="float64", always_2d=True)
        if stem == "instrumental":
            assert np.abs(ref).max() > 2.0  # the test means something: samples are beyond full scale
        # Saturated at full scale; a wrapped sample would be off by about 2.
        np.testing.assert_allclose(got, np.clip(ref, -1, 1), atol=2.0 ** (1 - depth) + 1e-9)


def test_a_model_that_produces_nan_leaves_no_stem(tmp_path, model_dir, monkeypatch):
    import torch

    from unmixcli import engine

    real = engine.separate_stream

    def poisoned(*args, **kwargs):
        for i, out in enumerate(real(*args, **kwargs)):
            if i == 0:
                out = {s: torch.full_like(t, float("nan")) for s, t in out.items()}
            yield out

    monkeypatch.setattr(engine, "separate_stream", poisoned)
    song = write_wav(tmp_path / "s.wav", signal(4000, MODEL_RATE), MODEL_RATE)
    out = tmp_path / "out"
    result = run_cli([song, "-m", model_dir, "-o", out, "-q"])
    assert result.exit_code == 1
    [line] = error_lines(result.stderr)
    assert str(song) in line and "NaN" in line
    assert not out.exists() or [p for p in out.rglob("*") if p.is_file()] == []


def test_dry_run_shows_each_input_status_and_the_missing_one(tmp_path, model_dir):
    song = write_wav(tmp_path / "Song [Live].wav", signal(800, MODEL_RATE), MODEL_RATE)
    result = run_cli([song, tmp_path / "typo.wav", "-m", model_dir, "-o", tmp_path / "out", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert f"{song}  [separate]" in result.stdout  # brackets printed, not taken as markup
    assert f"{tmp_path / 'typo.wav'}  [error: no such file or folder]" in result.stdout
    assert not (tmp_path / "out").exists()


def test_output_folder_inside_the_library_is_not_walked_as_input(tmp_path, model_dir):
    library = tmp_path / "Music"
    write_wav(library / "Album" / "song.wav", signal(1600, MODEL_RATE), MODEL_RATE, "PCM_16")
    out = library / "stems"  # `unmix ~/Music -o ~/Music/stems`, run twice
    first = run_cli([library, "-m", model_dir, "-o", out, "-q"])
    assert first.exit_code == 0, first.output
    stems = sorted(out.rglob("*.wav"))
    assert len(stems) == 4
    again = run_cli([library, "-m", model_dir, "-o", out, "--json"])
    assert again.exit_code == 0, again.output
    started = [json.loads(l) for l in again.stdout.splitlines() if '"event": "start"' in l]
    assert started == []  # the song is skipped, and its stems are not separated in turn
    assert sorted(out.rglob("*.wav")) == stems


def test_an_input_we_may_not_read_fails_alone(tmp_path, model_dir, monkeypatch):
    library = tmp_path / "lib"
    good = write_wav(library / "good.wav", signal(1600, MODEL_RATE), MODEL_RATE, "PCM_16")
    locked = write_wav(library / "locked.wav", signal(1600, MODEL_RATE), MODEL_RATE, "PCM_16")
    if os.geteuid() == 0:
        # root reads anything: make opening this one file fail as chmod 000 would for a user.
        import builtins

        real_open = builtins.open

        def guarded(file, *args, **kwargs):
            if os.fspath(file) == os.fspath(locked):
                raise PermissionError(13, "Permission denied", os.fspath(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(audio, "open", guarded, raising=False)
    else:
        locked.chmod(0)
    result = run_cli([library, "-m", model_dir, "-o", tmp_path / "out", "-q"])
    assert result.exit_code == 1
    [line] = error_lines(result.stderr)
    assert str(locked) in line and "permission denied" in line
    assert not (tmp_path / "out" / "tiny" / "locked").exists()
    assert len(list((tmp_path / "out" / "tiny" / "good").iterdir())) == 4
    assert good.exists()


def test_stem_names_near_the_file_name_limit(tmp_path, model_dir):
    # 236-byte track name + "_vocals.wav" = 247 bytes: legal, though the temporary file's would not be.
    name = "ü" * 110 + "y" * 16
    assert len((name + "_vocals.wav").encode()) < 256
    song = write_wav(tmp_path / f"{name}.wav", signal(1600, MODEL_RATE), MODEL_RATE, "PCM_16")
    out = tmp_path / "out"
    result = run_cli([song, "-m", model_dir, "-o", out, "-q", "--filename", "{track}_{stem}.{ext}"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{name}_{s}.wav" for s in STEMS)


@pytest.mark.skipif(sys.platform != "linux", reason="only Linux file systems take names that are not UTF-8")
@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3"])
def test_a_file_name_that_is_not_utf8(tmp_path, model_dir, fmt):
    # Old libraries copied from Latin-1 systems: Python sees such names with surrogate escapes.
    folder = tmp_path / "in"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/caf\xe9 latin-1.wav"
    tmp = write_wav(tmp_path / "tmp.wav", signal(1600, MODEL_RATE), MODEL_RATE, "PCM_16")
    os.rename(os.fsencode(tmp), raw)
    out = tmp_path / "out"
    result = run_cli([folder, "-m", model_dir, "-o", out, "-q", "-f", fmt])
    assert result.exit_code == 0, result.output
    [track] = os.listdir(os.fsencode(out / "tiny"))
    assert track == b"caf\xe9 latin-1"  # the name's bytes are kept as they were
    assert len(os.listdir(os.fsencode(out / "tiny") + b"/" + track)) == 4
