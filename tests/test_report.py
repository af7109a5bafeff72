"""`--report`: the self-contained report.html of `unmix separate` and `unmix eval`.

The measurements and images are unit-tested here (loudness against pyloudnorm, a test-only
oracle, and the EBU Tech 3341 test signals; PNG and SVG structure); the pages are opened from disk in a real headless Chromium
(Playwright driving Debian's /usr/bin/chromium; `playwright install` is never run).
"""

import json
import math
import os
import shutil
import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

import toy_family
from unmixcli import cli, families, report

CHROMIUM = os.environ.get("UNMIX_TEST_CHROMIUM", "/usr/bin/chromium")
NOTES = Path("/work/notes")  # where the lead looks at the screenshots, when it exists
RATE = 8000
GAINS = {"drums": 0.1, "bass": 0.2, "other": 0.3, "vocals": 0.4}


def run(args):
    return CliRunner().invoke(cli.app, [str(a) for a in args], catch_exceptions=False)


# --------------------------------------------------------------------------- loudness


def tone(db: float, seconds: float, rate: int = 48000, freq: float = 1000.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (10 ** (db / 20) * np.sin(2 * np.pi * freq * t)).astype(np.float64)


@pytest.mark.parametrize("rate", [44100, 48000])
@pytest.mark.parametrize("level", [-23.0, -33.0])
def test_integrated_loudness_of_the_ebu_3341_stereo_tones(rate, level):
    # EBU Tech 3341 cases 1 and 2: a 1 kHz sine at `level` dBFS in both channels reads `level` LUFS.
    x = tone(level, 20, rate)
    assert report.integrated_loudness(np.stack([x, x]), rate) == pytest.approx(level, abs=0.1)
    # One channel carries half the power of two: 3 dB less (a transposed [T, C] would read wrong).
    assert report.integrated_loudness(x[None], rate) == pytest.approx(level - 3.01, abs=0.1)


def test_integrated_loudness_gates_quiet_passages():
    # EBU Tech 3341 case 3: -36, -23, -36 dBFS for 10, 60, 10 s reads -23 LUFS (relative gate).
    x = np.concatenate([tone(-36, 10), tone(-23, 60), tone(-36, 10)])
    assert report.integrated_loudness(np.stack([x, x]), 48000) == pytest.approx(-23.0, abs=0.1)
    # Case 5-like absolute gate: silence around the tone does not lower its loudness.
    y = np.concatenate([np.zeros(48000 * 5), tone(-23, 20), np.zeros(48000 * 5)])
    assert report.integrated_loudness(np.stack([y, y]), 48000) == pytest.approx(-23.0, abs=0.1)


@pytest.mark.parametrize("rate", [44100, 48000, 96000])
def test_integrated_loudness_agrees_with_pyloudnorm(rate):
    pyloudnorm = pytest.importorskip("pyloudnorm")
    rng = np.random.default_rng(rate)
    t = np.arange(12 * rate) / rate
    signals = {
        "noise": 0.1 * rng.standard_normal((2, t.size)),
        "tones": np.stack([0.3 * np.sin(2 * np.pi * 60 * t) * (t < 6), 0.2 * np.sin(2 * np.pi * 5000 * t)]),
        # Loud bursts over a near-silent floor: both gates decide what counts.
        "bursts": 0.3 * rng.standard_normal((2, t.size)) * (np.sin(2 * np.pi * 0.3 * t) > 0.5)
        + 1e-3 * rng.standard_normal((2, t.size)),
        "5.0": 0.1 * rng.standard_normal((5, t.size)) * np.array([1, 1, 0.5, 0.3, 0.3])[:, None],
    }
    for name, x in signals.items():
        ours = report.integrated_loudness(x, rate)
        theirs = pyloudnorm.Meter(rate).integrated_loudness(x.T)
        # pyloudnorm designs its shelf from rounded parameters (1.5 kHz, +4 dB), not from BS.1770's
        # published 48 kHz coefficients as ours does: a few hundredths of an LU apart.
        assert ours == pytest.approx(theirs, abs=0.06), name


def test_k_weighting_by_fft_equals_the_recursive_filters():
    signal = pytest.importorskip("scipy.signal")
    rng = np.random.default_rng(0)
    for rate in (8000, 44100, 48000):
        x = rng.standard_normal((2, 3 * rate))
        expected = x
        for b, a in report.k_weighting(rate):
            expected = signal.lfilter(b, a, expected, axis=1)
        np.testing.assert_allclose(report._k_weighted(x, rate), expected, atol=1e-9)


def test_loudness_of_silence_and_of_a_too_short_signal_is_minus_infinity():
    assert report.integrated_loudness(np.zeros((2, 48000)), 48000) == float("-inf")
    assert report.integrated_loudness(np.stack([tone(-20, 0.2)] * 2), 48000) == float("-inf")
    assert report.peak_dbfs(np.zeros((2, 10))) == float("-inf")
    assert report.peak_dbfs(np.array([[0.5, -0.25]])) == pytest.approx(20 * math.log10(0.5))


# --------------------------------------------------------------------------- PNG / SVG


def read_png(data: bytes):
    """Our own small reader of what png_bytes writes: [H, W, 3] uint8 (filter 0 rows only)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks.append((kind, body))
        pos += 12 + length
    assert [k for k, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, interlace) == (8, 2, 0)
    raw = np.frombuffer(zlib.decompress(chunks[1][1]), np.uint8).reshape(h, 1 + 3 * w)
    assert not raw[:, 0].any()
    return raw[:, 1:].reshape(h, w, 3)


def test_png_round_trips_pixels_and_dimensions():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (7, 13, 3), dtype=np.uint8)
    data = report.png_bytes(img)
    np.testing.assert_array_equal(read_png(data), img)
    with pytest.raises(ValueError):
        report.png_bytes(np.zeros((4, 4)))


def test_waveform_image_draws_the_envelope_at_full_scale():
    x = np.zeros((2, 1000), np.float32)
    x[:, 500:] = 1.0  # silence, then full scale
    img = report.waveform_image(x, width=100, height=21, color=(255, 0, 0))
    assert img.shape == (21, 100, 3)
    red = (img == (255, 0, 0)).all(axis=2)  # [H, W]
    assert red[0, 60] and not red[0, 20]  # the top row is +1.0
    assert red[10, 20] and red[:, 20].sum() == 1  # silence: the zero line only


def test_spectrogram_puts_a_sine_on_its_row():
    rate = 16000
    for freq in (200.0, 3000.0):
        img = report.spectrogram_image(tone(-6, 2, rate, freq)[None], rate, width=50, height=64).astype(float)
        rows = img.sum(axis=(1, 2))  # brightness per row, top = highest frequency
        expected = np.geomspace(30.0, rate / 2, 64)[::-1]
        assert abs(math.log(expected[int(rows.argmax())] / freq)) < 0.1
    data = report.png_bytes(img.astype(np.uint8))
    assert struct.unpack(">II", data[16:24]) == (50, 64)


def test_box_stats_and_the_svg_box_plot():
    values = [1.0, 2.0, 3.0, 4.0, 100.0]
    b = report.box_stats(values + [float("nan"), None])
    assert (b["q1"], b["median"], b["q3"]) == tuple(np.percentile(values, [25, 50, 75]))
    assert b["outliers"] == [100.0] and b["high"] == 4.0 and b["n"] == 5
    svg = report.box_plot_svg({"vocals": {"a": values, "b": [5, 6]}, "drums": {"a": [0, 1], "b": []}}, ["a", "b"])
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f".//{ns}rect")) == 3  # drums/b has no values, so no box
    assert len(root.findall(f".//{ns}circle")) == 1
    assert {t.text for t in root.iter(f"{ns}text")} >= {"vocals", "drums", "SDR (dB)"}


# --------------------------------------------------------------------------- the pages in Chromium


@pytest.fixture
def toy_model(tmp_path):
    families.register(toy_family.ROW)
    path = tmp_path / "gains.toy"
    path.write_text(json.dumps({"stems": GAINS, "rate": RATE}))
    try:
        yield path
    finally:
        families.unregister("toy")


def write_song(path: Path, seconds: float, seed: int = 0, fmt=None) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    burst = (np.sin(2 * np.pi * 1.5 * t) > 0).astype(float)
    left = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * burst * rng.standard_normal(t.size)
    right = 0.3 * np.sin(2 * np.pi * 330 * t) + 0.1 * burst * rng.standard_normal(t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.stack([left, right], 1).astype(np.float32), RATE, format=fmt)
    return path


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through Playwright; skipped (with the install steps) where either is missing."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (do not run playwright install)")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set UNMIX_TEST_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--autoplay-policy=no-user-gesture-required"])
        try:
            yield b
        finally:
            b.close()


def open_page(browser, path: Path):
    """The page and the list its console errors and uncaught exceptions go to."""
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    problems = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.goto(path.resolve().as_uri())
    return page, problems


def keep_screenshot(page, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if NOTES.is_dir():
        shutil.copy(shot, NOTES / name)
    return shot


def wait_for(page, expression: str, timeout: float = 20.0) -> None:
    """Poll `expression` until true. (Playwright's wait_for_function evaluates its predicate with
    eval(), which the report's Content-Security-Policy rightly forbids.)"""
    import time

    end = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < end, f"timed out waiting for {expression}"
        page.wait_for_timeout(50)


def times(page, sel: str = "section.track:first-of-type audio"):
    return page.evaluate(f"Array.from(document.querySelectorAll({sel!r})).map(a => a.currentTime)")


def test_separate_report_plays_in_chromium(tmp_path, toy_model, browser):
    songs = tmp_path / "songs"
    write_song(songs / "My Song #1.wav", 3.0)
    write_song(songs / "Other [live].aiff", 2.0, seed=1, fmt="AIFF")  # browsers do not play AIFF: embedded mix
    out = tmp_path / "out"
    result = run([songs, "-m", toy_model, "-o", out, "-q", "--report"])
    assert result.exit_code == 0, result.output
    page_path = out / "report.html"
    text = page_path.read_text(encoding="utf-8")
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in text
    assert 'src="gains/My%20Song%20%231/vocals.wav"' in text and "data:audio/ogg;base64," in text

    page, problems = open_page(browser, page_path)
    wait_for(page, "Array.from(document.querySelectorAll('audio')).every(a => a.readyState >= 2)")
    assert page.locator("audio").count() == 2 * (1 + len(GAINS))
    assert page.locator("img.wave").count() == page.locator("img.spec").count() == 10
    assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth === 1200)")
    # Loudness shown per stem: the toy's stems are the mix scaled, so vocals (0.4) is 6 dB above drums (0.1)
    # and -8 dB from the mix (20 log10 0.4).
    levels = {r.get_attribute("data-stem"): r.locator(".levels").inner_text()
              for r in page.locator("section.track").first.locator(".row").all()}
    lufs = {k: float(v.split("\n")[1].split()[0]) for k, v in levels.items()}
    assert lufs["vocals"] - lufs["drums"] == pytest.approx(20 * math.log10(4), abs=0.15)
    assert lufs["mix"] - lufs["vocals"] == pytest.approx(-20 * math.log10(0.4), abs=0.15)

    track = page.locator("section.track").first
    assert track.get_attribute("data-audible") == "mix"
    track.locator(".play").click()
    wait_for(page, "document.querySelector('section.track audio').currentTime > 0.3")
    track.locator('.row[data-stem="vocals"] .name').click()  # switch to the vocals while playing
    assert track.get_attribute("data-audible") == "vocals"
    now = times(page)
    assert max(now) - min(now) < 0.1 and min(now) > 0.3  # every player kept the position
    track.locator(".play").click()  # pause
    before = times(page)[0]
    track.locator('.row[data-stem="drums"] .solo').click()
    assert track.get_attribute("data-audible") == "drums,vocals"
    track.locator('.row[data-stem="vocals"] .mute').click()
    assert track.get_attribute("data-audible") == "drums"
    track.locator('.row.mix .name').click()
    assert track.get_attribute("data-audible") == "mix"
    assert times(page) == pytest.approx([before] * 5, abs=1e-3)
    keep_screenshot(page, tmp_path, "report.png")
    assert problems == []


def musdb_like(root: Path, names, seconds: float = 2.0) -> Path:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * RATE)) / RATE
    for name in names:
        folder = root / "test" / name
        folder.mkdir(parents=True)
        stems = {}
        for i, stem in enumerate(GAINS):
            sine = np.sin(2 * np.pi * (110 * (i + 1) + rng.uniform(0, 20)) * t)
            stems[stem] = 0.2 * np.stack([sine, np.roll(sine, 3)]) + 0.02 * rng.standard_normal((2, t.size))
            sf.write(folder / f"{stem}.wav", stems[stem].T.astype(np.float32), RATE, subtype="FLOAT")
        sf.write(folder / "mixture.wav", sum(stems.values()).T.astype(np.float32), RATE, subtype="FLOAT")
    return root


def estimates(musdb: Path, out: Path, noise: float) -> Path:
    rng = np.random.default_rng(1)
    for track in (musdb / "test").iterdir():
        (out / track.name).mkdir(parents=True)
        for stem in GAINS:
            data, rate = sf.read(track / f"{stem}.wav")
            sf.write(out / track.name / f"{stem}.wav", data + noise * rng.standard_normal(data.shape), rate)
    return out


def test_eval_report_compares_result_folders_in_chromium(tmp_path, browser):
    musdb = musdb_like(tmp_path / "musdb", ["Artist - One", "Artist - Two", "Artist - Three"])
    good = run(["eval", musdb, "--estimates", estimates(musdb, tmp_path / "clean", 0.002), "-o", tmp_path / "r-clean", "-q"])
    assert good.exit_code == 0, good.output
    assert run(["eval", musdb, "--estimates", tmp_path / "clean", "--compare", tmp_path / "r-clean"]).exit_code == 2
    bad = run(["eval", musdb, "--estimates", tmp_path / "clean", "--report", "--compare", tmp_path / "nothing"])
    assert bad.exit_code != 0 and "summary.json" in bad.output
    result = run(["eval", musdb, "--estimates", estimates(musdb, tmp_path / "noisy", 0.05), "-o", tmp_path / "r-noisy",
                  "-q", "--report", "--compare", tmp_path / "r-clean"])
    assert result.exit_code == 0, result.output
    page_path = tmp_path / "r-noisy" / "report.html"
    assert page_path.is_file()

    page, problems = open_page(browser, page_path)
    assert page.locator("svg.boxplot g.box").count() == 2 * len(GAINS)  # two result folders x four stems
    per_track = page.locator("table.per-track tbody tr")
    assert per_track.count() == 3
    first = [float(c) for c in per_track.first.locator("td").all_inner_texts()]
    summary = json.loads((tmp_path / "r-noisy" / "summary.json").read_text())["per_track"]["Artist - One"]
    clean = json.loads((tmp_path / "r-clean" / "summary.json").read_text())["per_track"]["Artist - One"]
    # Columns: for each stem, this run then the compared one.
    assert first[0] == pytest.approx(summary["drums"]["SDR"], abs=0.01)
    assert first[1] == pytest.approx(clean["drums"]["SDR"], abs=0.01)
    assert first[1] > first[0]  # less noise, higher SDR
    keep_screenshot(page, tmp_path, "report_eval.png")
    assert problems == []


def test_denoise_has_the_report_option():
    assert "--report" in run(["denoise", "--help"]).output


def test_eval_report_of_speech_results_plots_si_sdr(tmp_path):
    """Results folders whose summary.json holds other metrics (the speech layouts): the page
    takes its metrics from the files, and plots SI-SDR when there is no SDR."""
    folders = []
    for name, shift in (("dfn3", 0.0), ("other", 3.0)):
        per_track = {f"p{i:03d}": {"speech": {"PESQ-wb": 2.0 + i / 10, "STOI": 0.9, "SI-SDR": 10.0 + i + shift}}
                     for i in range(5)}
        folder = tmp_path / name
        folder.mkdir()
        (folder / "summary.json").write_text(json.dumps({
            "format": 1, "dataset": "voicebank/test", "tracks": 5, "per_track": per_track,
            "settings": {"layout": "voicebank", "stems": ["speech"], "label": name},
            "aggregate": {"median": {"speech": {"PESQ-wb": 2.2, "STOI": 0.9, "SI-SDR": 12.0 + shift}}}}))
        folders.append(folder)
    page = report.write_eval_report(folders, tmp_path / "report.html").read_text(encoding="utf-8")
    svg = ET.fromstring(page[page.index("<svg"):page.index("</svg>") + 6])
    labels = {t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")}
    assert "SI-SDR (dB)" in labels and "speech" in labels
    assert len(svg.findall(".//{http://www.w3.org/2000/svg}rect")) == 2
    assert "<th>PESQ-wb</th>" in page and "<td>15.00</td>" in page  # p002 of "other": 10 + 2 + 3


def test_ni_stems_report_shows_the_mix_and_says_why_no_stems(tmp_path, toy_model):
    song = write_song(tmp_path / "a.wav", 1.0)
    result = run([song, "-m", toy_model, "-o", tmp_path / "out", "-q", "-f", "stems", "--report"])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert page.count("<audio ") == 1 and 'src="../a.wav"' in page and "NI Stems file a.stem.mp4" in page
