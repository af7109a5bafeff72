"""Planning a batch: inputs, output paths, collisions, resume, stem requests (no model needed)."""

import os
from pathlib import Path

import pytest

from unmixcli.errors import AudioDecodeError, UsageError
from unmixcli.separate import (
    INSTRUMENTAL,
    OutputOptions,
    StemRequest,
    expand_inputs,
    plan,
    render_output,
    safe_component,
)

STEMS = ["drums", "bass", "other", "vocals"]


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_default_layout_is_model_track_stem(tmp_path):
    song = touch(tmp_path / "in" / "My Song.mp3")
    jobs = plan([str(song)], model_name="htdemucs", output_stems=STEMS, output=OutputOptions(out_dir=tmp_path / "sep"))
    assert len(jobs) == 1
    assert jobs[0].outputs["vocals"] == tmp_path / "sep" / "htdemucs" / "My Song" / "vocals.wav"
    assert not jobs[0].skip


def test_folder_input_mirrors_tree_and_ignores_non_media(tmp_path):
    root = tmp_path / "music"
    touch(root / "a.flac")
    touch(root / "sub" / "deeper" / "b.mp3")
    touch(root / "cover.jpg")
    touch(root / "notes.txt")
    touch(root / ".hidden.mp3")
    jobs = plan([str(root)], model_name="m", output_stems=["vocals"], output=OutputOptions(out_dir=tmp_path / "o", fmt="flac"))
    got = sorted(str(j.outputs["vocals"].relative_to(tmp_path / "o")) for j in jobs)
    assert got == sorted(["m/a/vocals.flac", "m/sub/deeper/b/vocals.flac"])


def test_symlink_loop_is_cut(tmp_path):
    root = tmp_path / "music"
    touch(root / "a.wav")
    os.symlink(root, root / "loop")
    files = expand_inputs([str(root)])
    assert [p.name for p, _ in files] == ["a.wav"]


def test_missing_input_names_the_path(tmp_path):
    with pytest.raises(AudioDecodeError) as exc:
        expand_inputs([str(tmp_path / "nope.mp3")])
    assert "nope.mp3" in str(exc.value)


def test_glob_input(tmp_path):
    touch(tmp_path / "x1.wav")
    touch(tmp_path / "x2.wav")
    touch(tmp_path / "y.wav")
    files = expand_inputs([str(tmp_path / "x*.wav")])
    assert sorted(p.name for p, _ in files) == ["x1.wav", "x2.wav"]


def test_colliding_inputs_never_share_an_output(tmp_path):
    a = touch(tmp_path / "song.mp3")
    b = touch(tmp_path / "song.wav")
    c = touch(tmp_path / "other" / "song.mp3")
    jobs = plan([str(a), str(b), str(c)], model_name="m", output_stems=STEMS, output=OutputOptions(out_dir=tmp_path / "o"))
    all_paths = [p for j in jobs for p in j.outputs.values()]
    assert len(all_paths) == len(set(all_paths)) == 12
    # The first input keeps the plain name; planning is deterministic, so a re-run resumes.
    assert jobs[0].outputs["bass"].parent.name == "song"
    again = plan([str(a), str(b), str(c)], model_name="m", output_stems=STEMS, output=OutputOptions(out_dir=tmp_path / "o"))
    assert [j.outputs for j in again] == [j.outputs for j in jobs]


def test_resume_skips_finished_tracks_and_redoes_half_finished(tmp_path):
    a = touch(tmp_path / "a.wav")
    b = touch(tmp_path / "b.wav")
    out = OutputOptions(out_dir=tmp_path / "o")
    jobs = plan([str(a), str(b)], model_name="m", output_stems=["vocals", "drums"], output=out)
    for p in jobs[0].outputs.values():
        touch(p, b"RIFF")
    touch(jobs[1].outputs["vocals"], b"RIFF")  # b is half done: drums missing
    again = plan([str(a), str(b)], model_name="m", output_stems=["vocals", "drums"], output=out)
    assert [j.skip for j in again] == [True, False]
    forced = plan([str(a), str(b)], model_name="m", output_stems=["vocals", "drums"], output=OutputOptions(out_dir=tmp_path / "o", overwrite=True))
    assert [j.skip for j in forced] == [False, False]


def test_empty_existing_stem_is_not_finished(tmp_path):
    a = touch(tmp_path / "a.wav")
    out = OutputOptions(out_dir=tmp_path / "o")
    (job,) = plan([str(a)], model_name="m", output_stems=["vocals"], output=out)
    touch(job.outputs["vocals"], b"")
    (job,) = plan([str(a)], model_name="m", output_stems=["vocals"], output=out)
    assert not job.skip


@pytest.mark.parametrize("evil", ["../../etc/passwd", "/abs/x", "a/b\\c", "..", "", "\x00nul"])
def test_names_cannot_escape_the_output_folder(tmp_path, evil):
    out = tmp_path / "o"
    p = render_output("{model}/{track}/{stem}.{ext}", out, track=evil, stem="vocals", model=evil, ext="wav", rel_dir="")
    assert os.path.commonpath([out, p]) == str(out)
    assert safe_component(evil) not in ("", ".", "..")
    assert "/" not in safe_component(evil) and "\\" not in safe_component(evil)


@pytest.mark.parametrize(
    "template, msg",
    [("{track}.{ext}", "{stem}"), ("{model}/{nope}/{stem}.{ext}", "unknown field"), ("../{stem}.{ext}", "relative"), ("/x/{stem}", "relative")],
)
def test_bad_templates_are_usage_errors(tmp_path, template, msg):
    with pytest.raises(UsageError) as exc:
        OutputOptions(out_dir=tmp_path, template=template).validate()
    assert msg in str(exc.value)


def test_custom_template_with_dir(tmp_path):
    root = tmp_path / "lib"
    touch(root / "Artist" / "x.mp3")
    (job,) = plan([str(root)], model_name="m", output_stems=["vocals"], output=OutputOptions(out_dir=tmp_path / "o", template="{dir}/{track}-{stem}.{ext}", fmt="mp3"))
    assert job.outputs["vocals"] == tmp_path / "o" / "Artist" / "x-vocals.mp3"


def test_stem_requests():
    assert StemRequest().resolve(STEMS) == (STEMS, STEMS)
    assert StemRequest(stems=("vocals", "drums", "vocals")).resolve(STEMS) == (["vocals", "drums"], ["vocals", "drums"])
    assert StemRequest(karaoke=True).resolve(STEMS) == (["vocals"], ["vocals", INSTRUMENTAL])
    assert StemRequest(karaoke=True, instrumental="sum").resolve(STEMS) == (STEMS, ["vocals", INSTRUMENTAL])
    with pytest.raises(UsageError) as exc:
        StemRequest(stems=("flute",)).resolve(STEMS)
    assert "flute" in str(exc.value) and "vocals" in exc.value.hint
    with pytest.raises(UsageError):
        StemRequest(karaoke=True).resolve(["drums", "bass"])
    with pytest.raises(UsageError):
        StemRequest(karaoke=True, stems=("vocals",)).resolve(STEMS)


def test_stems_of_an_earlier_run_are_never_inputs_even_when_out_is_the_input_folder(tmp_path):
    music = tmp_path / "music"
    touch(music / "song.wav")
    out = OutputOptions(out_dir=music)  # -o is the input folder itself
    (job,) = plan([str(music)], model_name="m", output_stems=STEMS, output=out)
    for p in job.outputs.values():
        touch(p, b"RIFF")  # the first run wrote its stems inside the input tree
    jobs = plan([str(music)], model_name="m", output_stems=STEMS, output=out)
    assert [j.input.name for j in jobs] == ["song.wav"]
    assert jobs[0].skip and jobs[0].outputs == job.outputs
