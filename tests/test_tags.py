"""Tags and cover art on every stem (tags.py): the input's tags, the stem's name, in each output format.

Inputs are tagged, and outputs read back, with mutagen's own API here, never with tags.py,
so a mapping mistake in tags.py shows up as a difference.
"""

import base64
import sys

import numpy as np
import pytest

mutagen = pytest.importorskip("mutagen")

from mutagen import id3  # noqa: E402
from mutagen.flac import FLAC, Picture  # noqa: E402
from mutagen.mp4 import MP4, MP4Cover, MP4FreeForm  # noqa: E402
from mutagen.oggopus import OggOpus  # noqa: E402
from mutagen.wave import WAVE  # noqa: E402

from conftest import run_unmix  # noqa: E402
from unmixcli import audio, tags  # noqa: E402

OUTPUTS = ["wav", "flac", "mp3", "opus", "m4a"]
INPUTS = ["mp3", "flac", "m4a"]
RATE = 8000  # the tiny test model's rate

# What every tagged input holds, whatever its tag format.
SONG = {"title": "Song Title", "artist": "The Artist", "album": "The Album", "albumartist": "Various",
        "track": "3/12", "disc": "1/2", "date": "2021-05-04", "genre": "Rock", "comment": "a comment",
        "composer": "Someone", "bpm": "128", "custom": "custom value"}
COVER = b"\x89PNG\r\n\x1a\n" + bytes(np.random.default_rng(7).integers(0, 256, 300, dtype=np.uint8))


def _noise(seconds=1.0):
    rng = np.random.default_rng(0)
    return (0.2 * rng.standard_normal((2, int(seconds * RATE)))).astype(np.float32)


def make_input(path, kind):
    """An audio file of `kind` with SONG's tags, a ReplayGain field (not to be copied) and COVER."""
    audio.encode(path, _noise(), RATE, fmt=kind)
    if kind == "mp3":
        t = id3.ID3()
        for frame, key in (("TIT2", "title"), ("TPE1", "artist"), ("TALB", "album"), ("TPE2", "albumartist"),
                           ("TRCK", "track"), ("TPOS", "disc"), ("TDRC", "date"), ("TCON", "genre"),
                           ("TCOM", "composer"), ("TBPM", "bpm")):
            t.add(getattr(id3, frame)(encoding=3, text=SONG[key]))
        t.add(id3.COMM(encoding=3, lang="eng", desc="", text=SONG["comment"]))
        t.add(id3.TXXX(encoding=3, desc="CUSTOMFIELD", text=SONG["custom"]))
        t.add(id3.TXXX(encoding=3, desc="REPLAYGAIN_TRACK_GAIN", text="-6.00 dB"))
        t.add(id3.APIC(encoding=3, mime="image/png", type=3, desc="cover", data=COVER))
        t.save(path)
    elif kind == "flac":
        f = FLAC(path)
        number, total = SONG["track"].split("/")
        disc, discs = SONG["disc"].split("/")
        for key, value in (("TITLE", SONG["title"]), ("ARTIST", SONG["artist"]), ("ALBUM", SONG["album"]),
                           ("ALBUMARTIST", SONG["albumartist"]), ("TRACKNUMBER", number), ("TRACKTOTAL", total),
                           ("DISCNUMBER", disc), ("DISCTOTAL", discs), ("DATE", SONG["date"]),
                           ("GENRE", SONG["genre"]), ("COMMENT", SONG["comment"]), ("COMPOSER", SONG["composer"]),
                           ("BPM", SONG["bpm"]), ("CUSTOMFIELD", SONG["custom"]),
                           ("REPLAYGAIN_TRACK_GAIN", "-6.00 dB")):
            f[key] = value
        pic = Picture()
        pic.data, pic.mime, pic.type = COVER, "image/png", 3
        f.add_picture(pic)
        f.save()
    else:
        f = MP4(path)
        f.add_tags() if f.tags is None else None
        for atom, key in (("\xa9nam", "title"), ("\xa9ART", "artist"), ("\xa9alb", "album"), ("aART", "albumartist"),
                          ("\xa9day", "date"), ("\xa9gen", "genre"), ("\xa9cmt", "comment"), ("\xa9wrt", "composer")):
            f[atom] = [SONG[key]]
        f["trkn"] = [tuple(int(v) for v in SONG["track"].split("/"))]
        f["disk"] = [tuple(int(v) for v in SONG["disc"].split("/"))]
        f["tmpo"] = [int(SONG["bpm"])]
        f["----:com.apple.iTunes:CUSTOMFIELD"] = [MP4FreeForm(SONG["custom"].encode())]
        f["----:com.apple.iTunes:replaygain_track_gain"] = [MP4FreeForm(b"-6.00 dB")]
        f["covr"] = [MP4Cover(COVER, imageformat=MP4Cover.FORMAT_PNG)]
        f.save()
    return path


def read_back(path, fmt):
    """(fields like SONG plus 'stem', the names of all fields, cover bytes) of an output file."""
    if fmt in ("mp3", "wav"):
        t = id3.ID3(path) if fmt == "mp3" else WAVE(path).tags
        if t is None:
            return {}, set(), []

        def text(fid):
            return str(t[fid].text[0]) if fid in t else None

        fields = {"title": text("TIT2"), "artist": text("TPE1"), "album": text("TALB"), "albumartist": text("TPE2"),
                  "track": text("TRCK"), "disc": text("TPOS"), "date": text("TDRC"), "genre": text("TCON"),
                  "composer": text("TCOM"), "bpm": text("TBPM"), "custom": text("TXXX:CUSTOMFIELD"),
                  "stem": text("TXXX:STEM"),
                  "comment": next((str(c.text[0]) for c in t.getall("COMM") if not c.desc), None)}
        return fields, {k.upper() for k in t.keys()}, [p.data for p in t.getall("APIC")]
    if fmt in ("flac", "opus"):
        f = FLAC(path) if fmt == "flac" else OggOpus(path)
        c = f.tags or {}

        def get(key):
            return c[key][0] if key in c else None

        def pair(a, b):
            return f"{get(a)}/{get(b)}" if get(b) else get(a)

        fields = {"title": get("TITLE"), "artist": get("ARTIST"), "album": get("ALBUM"),
                  "albumartist": get("ALBUMARTIST"), "track": pair("TRACKNUMBER", "TRACKTOTAL"),
                  "disc": pair("DISCNUMBER", "DISCTOTAL"), "date": get("DATE"), "genre": get("GENRE"),
                  "comment": get("COMMENT"), "composer": get("COMPOSER"), "bpm": get("BPM"),
                  "custom": get("CUSTOMFIELD"), "stem": get("STEM")}
        if fmt == "flac":
            covers = [p.data for p in f.pictures]
        else:
            covers = [Picture(base64.b64decode(v)).data for v in c.get("METADATA_BLOCK_PICTURE", [])]
        return fields, {k.upper() for k in c.keys()}, covers
    f = MP4(path)
    t = f.tags or {}
    free = {k.upper(): bytes(v[0]).decode() for k, v in t.items() if k.startswith("----")}

    def get(key):
        return str(t[key][0]) if key in t else None

    def pair(key):
        return "/".join(map(str, t[key][0])) if key in t else None

    fields = {"title": get("\xa9nam"), "artist": get("\xa9ART"), "album": get("\xa9alb"), "albumartist": get("aART"),
              "track": pair("trkn"), "disc": pair("disk"), "date": get("\xa9day"), "genre": get("\xa9gen"),
              "comment": get("\xa9cmt"), "composer": get("\xa9wrt"), "bpm": get("tmpo"),
              "custom": free.get("----:COM.APPLE.ITUNES:CUSTOMFIELD"), "stem": free.get("----:COM.APPLE.ITUNES:STEM")}
    return fields, {k.upper() for k in t.keys()}, [bytes(c) for c in t.get("covr", [])]


def expected(stem):
    return {**SONG, "title": f"{SONG['title']} ({stem})", "stem": stem}


@pytest.mark.parametrize("kind", INPUTS)
def test_read_tags_gives_one_neutral_form(tmp_path, kind):
    src = make_input(tmp_path / f"in.{kind}", kind)
    t = tags.read_tags(src)
    assert t.first("title") == SONG["title"] and t.first("artist") == SONG["artist"]
    assert (t.first("tracknumber"), t.first("tracktotal")) == tuple(SONG["track"].split("/"))
    assert (t.first("customfield") or t.first("CUSTOMFIELD")) == SONG["custom"]
    assert not [k for k in t.fields if "replaygain" in k.lower()]  # a stem is not as loud as the mix
    assert [p.data for p in t.pictures] == [COVER] and t.pictures[0].mime == "image/png"


@pytest.mark.parametrize("kind", INPUTS)
@pytest.mark.parametrize("fmt", OUTPUTS)
def test_every_output_format_round_trips_tags_and_cover(tmp_path, kind, fmt):
    src = make_input(tmp_path / f"in.{kind}", kind)
    stem_tags = tags.read_tags(src).for_stem("vocals", "in")
    out = tmp_path / f"vocals.{fmt}"
    seen = []

    def finish(tmp):
        assert not out.exists()  # tagged before the rename into place
        seen.append(tmp)
        assert tags.write_tags(tmp, fmt, stem_tags)

    with audio.AudioWriter(out, RATE, 2, fmt=fmt, finish=finish) as w:
        w.write(_noise(0.3))
    assert seen and not seen[0].exists()
    fields, names, covers = read_back(out, fmt)
    assert fields == expected("vocals")
    assert covers == [COVER]
    assert not [n for n in names if "REPLAYGAIN" in n]
    assert audio.decode(out).shape[1] > 0  # still a valid audio file


@pytest.mark.parametrize("fmt,kind", list(zip(OUTPUTS, INPUTS * 2)))
def test_cli_tags_every_stem(tmp_path, model_dir, fmt, kind):
    src = make_input(tmp_path / f"song.{kind}", kind)
    out = tmp_path / "out"
    result = run_unmix(str(src), "-m", str(model_dir), "-o", str(out), "-q", "-f", fmt, "--stems", "vocals,bass")
    assert result.exit_code == 0, result.output
    for stem in ("vocals", "bass"):
        fields, _, covers = read_back(out / "tiny" / "song" / f"{stem}.{fmt}", fmt)
        assert fields == expected(stem)
        assert covers == [COVER]


@pytest.mark.parametrize("fmt", ["mp3", "flac", "m4a"])
def test_no_tags_writes_none(tmp_path, model_dir, fmt):
    src = make_input(tmp_path / "song.flac", "flac")
    out = tmp_path / "out"
    result = run_unmix(str(src), "-m", str(model_dir), "-o", str(out), "-q", "-f", fmt, "--stems", "vocals",
                       "--no-tags")
    assert result.exit_code == 0, result.output
    path = out / "tiny" / "song" / f"vocals.{fmt}"
    fields, names, covers = read_back(path, fmt)
    assert not [v for v in fields.values() if v] and not covers
    assert not names - {"\xa9TOO", "TSSE"}  # only the muxer's own encoder tag (FFmpeg writes it)


def test_untagged_input_still_names_the_stem(tmp_path):
    src = tmp_path / "plain.wav"
    audio.encode(src, _noise(0.3), RATE)
    t = tags.read_tags(src)
    assert not t.fields and not t.pictures
    out = tmp_path / "drums.flac"
    with audio.AudioWriter(out, RATE, 2, fmt="flac",
                           finish=lambda tmp: tags.write_tags(tmp, "flac", t.for_stem("drums", "plain"))) as w:
        w.write(_noise(0.3))
    assert sorted(FLAC(out).tags) == [("STEM", "drums"), ("TITLE", "plain (drums)")]  # (key, value) as stored


def test_without_mutagen_stems_are_written_untagged_after_one_warning(tmp_path, monkeypatch):
    src = make_input(tmp_path / "in.flac", "flac")
    monkeypatch.setitem(sys.modules, "mutagen", None)  # `import mutagen` now raises ImportError
    monkeypatch.setattr(tags, "_warned_missing", False)
    with pytest.warns(RuntimeWarning, match="mutagen is not installed") as record:
        assert tags.read_tags(src) is None
        assert tags.write_tags(src, "flac", tags.Tags()) is False
    assert len([w for w in record if "mutagen" in str(w.message)]) == 1


def test_damaged_tags_warn_and_keep_the_audio(tmp_path):
    out = tmp_path / "x.flac"
    audio.encode(out, _noise(0.3), RATE, fmt="flac")
    with pytest.warns(RuntimeWarning, match="written without tags"):
        assert tags.write_tags(out, "m4a", tags.Tags({"title": ["t"]})) is False  # not an MP4 file
    assert audio.decode(out).shape[1] > 0
