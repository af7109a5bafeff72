"""NI Stems output (`-f stems`, nistems.py): five streams, the manifest box, tags, and the box editor."""

import json
import struct
import warnings
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile as sf

from conftest import run_unmix, stderr_of
from unmixcli import nistems
from unmixcli.errors import UsageError
from unmixcli.separate import OutputOptions

RATE = 8000  # the tiny test model's rate: the output is not resampled, so the master is the input


def write_song(path, seconds=1.0, gain=0.3):
    rng = np.random.default_rng(1)
    t = np.arange(int(seconds * RATE)) / RATE
    x = gain * np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)])
    x = (x + 0.05 * rng.standard_normal(x.shape)).astype(np.float32)
    sf.write(path, x.T, RATE, subtype="FLOAT")
    return x  # [C, T]


def decode_streams(path):
    """[[2, T] float] for each audio stream, and the streams' declared lengths in samples."""
    out, lengths = [], []
    with av.open(str(path)) as c:
        for s in c.streams.audio:
            lengths.append(int(s.duration * s.time_base * s.codec_context.sample_rate))
    for i in range(len(lengths)):
        with av.open(str(path)) as c:
            frames = [f.to_ndarray() for f in c.decode(c.streams.audio[i])]
        x = np.concatenate(frames, axis=1)
        if x.dtype == np.int16:
            x = x / 32768.0
        elif x.dtype == np.int32:
            x = x / 2.0 ** 31
        out.append(x.astype(np.float32))
    return out, lengths


def top_level(path):
    data = open(path, "rb").read()
    pos, boxes = 0, []
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        boxes.append(kind)
        pos += size
    return boxes


@pytest.mark.parametrize("extra", [[], ["--bit-depth", "16"]], ids=["aac", "alac"])
def test_cli_writes_one_ni_stems_file(tmp_path, model_dir, extra):
    from mutagen.mp4 import MP4

    song = write_song(tmp_path / "Track.wav")
    out = tmp_path / "out"
    result = run_unmix(str(tmp_path / "Track.wav"), "-m", str(model_dir), "-o", str(out), "-q", "-f", "stems",
                       "--clip", "none", *extra)
    assert result.exit_code == 0, result.output
    path = out / "tiny" / "Track.stem.mp4"
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["Track.stem.mp4"]

    with av.open(str(path)) as c:
        streams = list(c.streams.audio)
        assert len(streams) == 5 and len(c.streams) == 5
        assert [s.codec_context.name for s in streams] == ["alac" if extra else "aac"] * 5
        assert [s.codec_context.channels for s in streams] == [2] * 5
        # Only the mix is enabled (FFmpeg reads tkhd's enabled flag as the default disposition).
        assert bool(streams[0].disposition & av.stream.Disposition.default)
        assert not any(s.disposition & av.stream.Disposition.default for s in streams[1:])
    decoded, lengths = decode_streams(path)
    assert lengths == [song.shape[1]] * 5
    for x in decoded:  # AAC keeps the padding of its last frame; ALAC is exact
        assert song.shape[1] <= x.shape[1] < song.shape[1] + 1024
    master = decoded[0][:, :song.shape[1]]
    if extra:
        assert np.abs(master - song).max() <= 1 / 32768 + 1e-7
    else:
        snr = 10 * np.log10(np.sum(song ** 2) / np.sum((master - song) ** 2))
        assert snr > 15, snr
    assert all(np.abs(x).max() > 0 for x in decoded[1:])  # a 4-stem model fills every slot

    meta = json.loads(nistems.read_stem_box(path))
    assert meta["version"] == 1
    assert [s["name"] for s in meta["stems"]] == ["Drums", "Bass", "Other", "Vocals"]
    assert all(s["color"].startswith("#") and len(s["color"]) == 7 for s in meta["stems"])
    assert meta["mastering_dsp"]["compressor"]["enabled"] is False
    assert meta["mastering_dsp"]["limiter"]["enabled"] is False
    tags = MP4(path).tags  # mutagen still opens the file after the box edit
    assert tags["\xa9nam"] == ["Track"]  # no title in the input: the track's name, no stem suffix


def test_tags_and_cover_reach_the_stems_file(tmp_path, model_dir):
    from mutagen.flac import FLAC, Picture
    from mutagen.mp4 import MP4

    x = write_song(tmp_path / "x.wav")
    src = tmp_path / "song.flac"
    sf.write(src, x.T, RATE, subtype="PCM_24")
    f = FLAC(src)
    f["TITLE"], f["ARTIST"], f["TRACKNUMBER"] = "Song", "Artist", "4"
    pic = Picture()
    pic.data, pic.mime, pic.type = b"\xff\xd8\xff\xe0" + b"jpegdata" * 20, "image/jpeg", 3
    f.add_picture(pic)
    f.save()
    out = tmp_path / "out"
    result = run_unmix(str(src), "-m", str(model_dir), "-o", str(out), "-q", "-f", "stem.mp4")
    assert result.exit_code == 0, result.output
    path = out / "tiny" / "song.stem.mp4"
    t = MP4(path).tags
    assert t["\xa9nam"] == ["Song"] and t["\xa9ART"] == ["Artist"] and t["trkn"] == [(4, 0)]
    assert [bytes(c) for c in t["covr"]] == [pic.data]
    assert json.loads(nistems.read_stem_box(path))["version"] == 1  # tagging kept the manifest


def test_karaoke_puts_the_instrumental_in_other_and_warns(tmp_path, model_dir):
    song = write_song(tmp_path / "k.wav")
    out = tmp_path / "out"
    result = run_unmix(str(tmp_path / "k.wav"), "-m", str(model_dir), "-o", str(out), "-f", "stems", "--karaoke",
                       "--bit-depth", "24", "--clip", "none")
    assert result.exit_code == 0, result.output
    assert "drums, bass" in stderr_of(result) and "silent" in stderr_of(result)
    decoded, _ = decode_streams(out / "tiny" / "k.stem.mp4")
    n = song.shape[1]
    drums, bass, other, vocals = (d[:, :n] for d in decoded[1:])
    assert np.abs(drums).max() == 0 and np.abs(bass).max() == 0
    # residual instrumental: other + vocals is the mix, within 24-bit rounding of each stream
    assert np.abs(other + vocals - song).max() < 1e-5
    assert np.abs(decoded[0][:, :n] - song).max() < 1e-6


def test_slot_map_folds_extra_stems_into_other():
    with pytest.warns(RuntimeWarning, match="no drums"):
        mapping = nistems.slot_map(["vocals", "bass", "guitar", "piano", "other"])
    assert mapping == {"vocals": "vocals", "bass": "bass", "guitar": "other", "piano": "other", "other": "other"}
    blocks = {s: iter([np.full((2, 4), i + 1, np.float32)]) for i, s in enumerate(mapping)}
    mix = iter([np.zeros((2, 4), np.float32)])
    (out,) = list(nistems.compose(mix, blocks, mapping, 2))
    assert out.shape == (10, 4)
    assert out[2:4].max() == 0  # drums silent
    assert np.all(out[4:6] == 2) and np.all(out[6:8] == 3 + 4 + 5) and np.all(out[8:10] == 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nistems.slot_map(["drums", "bass", "other", "vocals"])  # a 4-stem model: no warning


def test_options():
    assert OutputOptions(fmt="stem.mp4").fmt == "stems"
    assert OutputOptions(fmt="stems", bit_depth=24).bit_depth == 24
    assert OutputOptions(fmt="stems", bitrate=128_000).bitrate == 128_000
    with pytest.raises(UsageError, match="cannot be combined"):
        OutputOptions(fmt="stems", bitrate=128_000, bit_depth=16)
    with pytest.raises(UsageError):
        OutputOptions(fmt="stems", bit_depth=32)


def _plain_mp4(path, faststart):
    c = av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"} if faststart else {})
    streams = []
    for _ in range(2):
        s = c.add_stream("aac", rate=RATE)
        s.layout, s.format = "stereo", "fltp"
        streams.append(s)
    rng = np.random.default_rng(3)
    for k in range(12):
        for s in streams:
            f = av.AudioFrame.from_ndarray((0.1 * rng.standard_normal((2, 1024))).astype(np.float32),
                                           format="fltp", layout="stereo")
            f.sample_rate, f.pts, f.time_base = RATE, k * 1024, Fraction(1, RATE)
            for p in s.encode(f):
                c.mux(p)
    for s in streams:
        for p in s.encode(None):
            c.mux(p)
    c.close()


@pytest.mark.parametrize("faststart", [False, True], ids=["moov-last", "moov-first"])
def test_box_editor_keeps_the_audio(tmp_path, faststart):
    from mutagen.mp4 import MP4

    path = tmp_path / "a.mp4"
    _plain_mp4(path, faststart)
    order = top_level(path)
    assert (order.index(b"moov") < order.index(b"mdat")) == faststart
    before, _ = decode_streams(path)
    payload = json.dumps(nistems.manifest()).encode()
    nistems.add_stem_box(path, payload)
    assert nistems.read_stem_box(path) == payload
    nistems.add_stem_box(path, b'{"version": 1}')  # replaced, not added twice
    assert nistems.read_stem_box(path) == b'{"version": 1}'
    after, _ = decode_streams(path)
    assert len(after) == len(before)
    for a, b in zip(before, after):
        assert np.array_equal(a, b)  # chunk offsets still point at the same samples
    assert top_level(path) == order
    MP4(path)  # mutagen parses the edited file
