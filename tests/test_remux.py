"""`--remux`: a video written here with PyAV (tiny frames, an AAC track of speech-like signal plus
noise) goes through `unmix ... --remux`; the copy must hold the very same video packets (bytes
and timestamps), an audio track as long as the original, and audio that differs from it."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from conftest import run_unmix, stderr_of
from test_speech_metrics import noisy, speech_like
from unmixcli import remux as remuxing
from unmixcli.errors import UsageError
from unmixcli.separate import OutputOptions

RATE = 16000
FPS = 25


def make_video(path: Path, seconds: float = 1.5, vcodec: str = "mpeg4", subtitles: bool = False) -> np.ndarray:
    """A small video with one mono AAC track; returns the audio that was encoded ([T])."""
    clean = speech_like(RATE, seconds, seed=3)
    signal = noisy(clean, snr_db=5.0, seed=4).astype(np.float32)
    with av.open(str(path), "w") as out:
        video = out.add_stream(vcodec, rate=FPS)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("aac", rate=RATE)
        audio.layout = "mono"
        for i in range(int(seconds * FPS)):
            image = np.zeros((48, 64, 3), np.uint8)
            image[:, : (i * 3) % 64] = (40 * i) % 255  # moving content: frames differ
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            for packet in video.encode(frame):
                out.mux(packet)
        size = audio.codec_context.frame_size or 1024
        for start in range(0, signal.size, size):
            frame = av.AudioFrame.from_ndarray(signal[None, start:start + size], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = RATE, start
            for packet in audio.encode(frame):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        for packet in audio.encode(None):
            out.mux(packet)
    return signal


def video_packets(path: Path):
    with av.open(str(path)) as c:
        return [(bytes(p), p.pts, p.dts, p.is_keyframe) for p in c.demux(c.streams.video[0]) if p.size]


def audio_of(path: Path):
    """(decoded mono samples, where the track ends in samples (from its packets: Matroska keeps
    no stream duration), codec name, the first packet's time in seconds)."""
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        packets = [p for p in c.demux(stream) if p.size]
        first = min(p.pts for p in packets) * stream.time_base
        end = max(p.pts + p.duration for p in packets) * stream.time_base
    with av.open(str(path)) as c:
        samples = np.concatenate([f.to_ndarray().mean(axis=0) for f in c.decode(c.streams.audio[0])])
    return samples, float(end * RATE), stream.codec_context.name, float(first)


def check_remuxed(original: Path, copy: Path) -> None:
    assert copy.is_file()
    assert video_packets(copy) == video_packets(original)  # copied, not re-encoded
    old, old_len, _, old_start = audio_of(original)
    new, new_len, codec, new_start = audio_of(copy)
    assert codec == "aac" and abs(new_start - old_start) <= 1024 / RATE
    assert abs(new_len - old_len) <= 1024  # one AAC frame
    n = min(old.size, new.size)
    assert np.sqrt(np.mean((old[:n] - new[:n]) ** 2)) > 0.01  # the noise is gone: another audio
    assert not [p for p in copy.parent.iterdir() if p.name.startswith(".")]  # no temporary left


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    make_video(path)
    return path


@pytest.mark.parametrize("command", [["-m", "deepfilternet3"], ["denoise"]])
def test_cli_remux_replaces_the_audio_and_copies_the_video(clip, tmp_path, command):
    out = tmp_path / "out"
    args = [*command[:1], str(clip), *command[1:]] if command[0] == "denoise" else [str(clip), *command]
    result = run_unmix(*args, "--remux", "-o", str(out), "-q")
    assert result.exit_code == 0, result.output
    folder = out / "deepfilternet3" / "clip"
    assert sorted(p.name for p in folder.iterdir()) == ["clip.mp4", "noise.wav", "speech.wav"]
    check_remuxed(clip, folder / "clip.mp4")
    # The new audio is the speech stem (AAC, so within coding error of it).
    speech, rate = sf.read(folder / "speech.wav", dtype="float32")
    new, *_ = audio_of(folder / "clip.mp4")
    assert rate == 48000
    from unmixcli.audio import resample

    speech16 = resample(speech[None], 48000, RATE)[0]
    # AAC's priming delay of one frame: the decoder gives it back at the start.
    lag = int(np.argmax(np.correlate(new[:8000], speech16[:4000], "valid"))) if new.size > 8000 else 0
    seg = new[lag:lag + speech16.size][: speech16.size]
    assert np.corrcoef(seg, speech16[: seg.size])[0, 1] > 0.9
    # A second run finds the outputs and skips the track.
    again = run_unmix(*args, "--remux", "-o", str(out), "--json")
    assert any(json.loads(line).get("event") == "skipped" for line in again.stdout.splitlines() if line.strip())


def test_remux_api_into_matroska_with_h264(tmp_path):
    if "libx264" not in av.codecs_available:
        pytest.skip("no H.264 encoder in this PyAV")
    src = tmp_path / "in.mkv"
    signal = make_video(src, seconds=1.2, vcodec="libx264")
    target = tmp_path / "out.mkv"
    quiet = (0.1 * np.sin(2 * np.pi * 300 * np.arange(signal.size) / RATE)).astype(np.float32)[None]
    blocks = (quiet[:, i:i + 3000] for i in range(0, quiet.shape[1], 3000))
    remuxing.remux(src, target, blocks, RATE, frames=quiet.shape[1])
    check_remuxed(src, target)


def test_failed_remux_leaves_no_file(clip, tmp_path, monkeypatch):
    def broken(self):
        raise av.FFmpegError(1, "simulated failure")

    monkeypatch.setattr(remuxing._AudioTrack, "finish", broken)
    out = tmp_path / "out"
    result = run_unmix(str(clip), "-m", "deepfilternet3", "--remux", "-o", str(out), "-q")
    assert result.exit_code == 1
    assert "remuxing failed" in stderr_of(result)
    # The track is all or nothing: neither the video nor the stems stay, and no temporary file.
    assert not [p for p in out.rglob("*") if p.is_file()]


def test_remux_of_an_audio_file_is_a_usage_error(tmp_path):
    wav = tmp_path / "talk.wav"
    sf.write(wav, speech_like(RATE, 1.0), RATE)
    result = run_unmix(str(wav), "-m", "deepfilternet3", "--remux", "-o", str(tmp_path / "out"))
    assert result.exit_code == 2
    err = stderr_of(result)
    assert "--remux needs a video input" in err and "Traceback" not in result.output
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.wav"))
    with pytest.raises(UsageError, match="-f stems"):
        OutputOptions(fmt="stems", remux=True)


def test_the_stem_that_replaces_the_audio():
    assert remuxing.remux_stem(["speech", "noise"]) == "speech"
    assert remuxing.remux_stem(["drums", "bass", "other", "vocals"]) == "vocals"
    assert remuxing.remux_stem(["vocals", "instrumental"], karaoke=True) == "instrumental"
    assert remuxing.remux_stem(["drums", "bass"], requested=["bass", "drums"]) == "bass"
    assert remuxing.remux_stem(["speaker1", "speaker2"]) == "speaker1"
