"""`--report`: one self-contained `report.html` to look at and listen to a separation or an evaluation.

Self-contained means the page needs nothing but the files beside it: no network, no CDN; the
script, the style sheet and every image (PNG waveforms and spectrograms as `data:` URIs, SVG box
plots inline) are in the one file. Audio is not embedded: each stem's `<audio>` points at the
stem file unmix wrote, by a path relative to the report, so the page stays small and plays the
exact files on disk.

The mix is the input file, referenced by a relative path too, rather than an embedded preview:
it costs nothing, plays full length and bit-exact, and so stays in step with the stems for the
whole track (a short preview would stop being comparable after its first seconds). Only when the
input's container is one browsers do not play (e.g. .wma, .ape, .mkv) is the mix embedded instead,
as a 96 kbit/s Opus `data:` URI of the whole track. Moving the report folder away from the input
breaks the mix's link, not the stems' (they move with it).

Per track the page shows one transport (play/pause, position, a cursor over the images); every
player runs together and switching between the mix and the stems, or soloing/muting stems, only
changes which elements are muted, so the position is kept by construction. Loudness is the
integrated loudness of ITU-R BS.1770-4 / EBU R128 (gated, LUFS), implemented here in numpy
(K-weighting as an FFT convolution, vectorised gating) so that the report needs no extra
package; the tests hold it to pyloudnorm and to the EBU Tech 3341 test signals. Peaks are
sample peaks in dBFS. Images are PNGs made by a small encoder here (zlib), plots inline SVG.

`unmix eval --report` writes the same kind of page for one or several result folders of `unmix
eval` (read from their `summary.json`, so any metrics evaluate.py stores appear): the summary
table, per-track tables and a per-stem SDR box plot, result folders side by side.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import quote

import numpy as np

from .errors import EvaluationError

REPORT_NAME = "report.html"
# Containers Chromium, Firefox and Safari play from an <audio> element (Safari: not Ogg before 17).
PLAYABLE = frozenset(".wav .wave .flac .mp3 .ogg .oga .opus .m4a .mp4 .aac .webm".split())
IMAGE_WIDTH = 1200  # px of every time-axis image (the CSS scales them to the page's width)
WAVE_HEIGHT = 64
SPEC_HEIGHT = 128
SPEC_FLOOR_DB = -90.0


# --------------------------------------------------------------------------- measurements


def k_weighting(rate: int) -> Tuple[Tuple[np.ndarray, np.ndarray], ...]:
    """BS.1770's two K-weighting biquads, (b, a) each, at any rate: the high shelf (+4 dB above
    ~1.7 kHz, the head's effect) and the RLB high pass (~38 Hz). The analogue prototypes mapped
    by the bilinear transform as libebur128 does; at 48 kHz they equal the coefficients printed
    in BS.1770-4 to the last digit the standard gives."""
    f0, gain_db, q = 1681.974450955533, 3.999843853973347, 0.7071752369554196
    k = math.tan(math.pi * f0 / rate)
    vh = 10 ** (gain_db / 20)
    vb = vh ** 0.4996667741545416
    a0 = 1 + k / q + k * k
    shelf = (np.array([(vh + vb * k / q + k * k) / a0, 2 * (k * k - vh) / a0, (vh - vb * k / q + k * k) / a0]),
             np.array([1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0]))
    f0, q = 38.13547087602444, 0.5003270373238773
    k = math.tan(math.pi * f0 / rate)
    a0 = 1 + k / q + k * k
    high_pass = (np.array([1.0, -2.0, 1.0]), np.array([1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0]))
    return shelf, high_pass


def _k_weighted(data: np.ndarray, rate: int) -> np.ndarray:
    """[C, T] -> [C, T] through the K-weighting filters, as an FFT convolution with their impulse
    response (numpy has no IIR filter; the response dies out within ~0.1 s, so one taken over
    ~0.17 s equals the recursive filter to float64 precision)."""
    m = 1 << max(int(math.ceil(math.log2(0.17 * rate))), 10)  # impulse response length (8192 at 48 kHz)
    grid = np.exp(-1j * np.pi * np.arange(m + 1) / m)  # z^-1 on 2m points of the unit circle
    response = np.ones(m + 1, dtype=np.complex128)
    for b, a in k_weighting(rate):
        response *= np.polyval(b[::-1], grid) / np.polyval(a[::-1], grid)
    h = np.fft.irfft(response, 2 * m)[:m]  # [m]; the aliased tail beyond m is below 1e-13
    n_fft = max(1 << 18, 4 * m)
    block = n_fft - m + 1  # input samples per FFT: the whole transform is used
    h_f = np.fft.rfft(h, n_fft)
    channels, frames = data.shape
    out = np.zeros((channels, frames + m - 1))
    for start in range(0, frames, block):  # overlap-add: memory bounded by the block, not the track
        seg = data[:, start:start + block]
        y = np.fft.irfft(np.fft.rfft(seg, n_fft, axis=1) * h_f, n_fft, axis=1)[:, :seg.shape[1] + m - 1]
        out[:, start:start + y.shape[1]] += y
    return out[:, :frames]


# BS.1770-4 channel weights: L, R, C 1.0; the surrounds 1.41 (an LFE channel is not measured).
_CHANNEL_WEIGHTS = (1.0, 1.0, 1.0, 1.41, 1.41)


def integrated_loudness(audio: np.ndarray, rate: int) -> float:
    """Integrated loudness in LUFS (ITU-R BS.1770-4 / EBU R128) of [C, T] audio, C <= 5 in
    BS.1770's order (L, R, C, Ls, Rs): K-weighted mean squares over 400 ms blocks with 75 %
    overlap, the -70 LUFS absolute gate, then the gate 10 LU below the loudness of the blocks
    that passed it. -inf for silence, or for audio shorter than one block."""
    data = np.asarray(audio, dtype=np.float64)
    if data.ndim == 1:
        data = data[None, :]
    data = data[:len(_CHANNEL_WEIGHTS)]
    block = 0.4 * rate
    frames = data.shape[1]
    if frames < block or not np.any(data):
        return float("-inf")
    y = _k_weighted(data, rate)
    energy = np.concatenate([np.zeros((y.shape[0], 1)), np.cumsum(y * y, axis=1)], axis=1)  # [C, T + 1]
    count = int(round((frames / rate - 0.4) / 0.1)) + 1  # blocks that start every 100 ms
    lower = (0.4 * 0.25 * np.arange(count) * rate).astype(np.int64)
    upper = np.minimum((0.4 * (0.25 * np.arange(count) + 1) * rate).astype(np.int64), frames)
    z = (energy[:, upper] - energy[:, lower]) / block  # [C, J] mean square per block
    weights = np.asarray(_CHANNEL_WEIGHTS[:z.shape[0]])[:, None]

    def lufs(power):
        with np.errstate(divide="ignore"):
            return -0.691 + 10 * np.log10(power)

    loudness = lufs((weights * z).sum(axis=0))  # [J]
    gated = loudness >= -70.0
    if not gated.any():
        return float("-inf")
    relative = lufs((weights * z[:, gated].mean(axis=1, keepdims=True)).sum()) - 10.0
    final = (loudness > relative) & (loudness > -70.0)
    if not final.any():
        return float("-inf")
    value = float(lufs((weights * z[:, final].mean(axis=1, keepdims=True)).sum()))
    return value if math.isfinite(value) else float("-inf")


def peak_dbfs(audio: np.ndarray) -> float:
    peak = float(np.abs(audio).max(initial=0.0))
    return 20 * math.log10(peak) if peak > 0 else float("-inf")


# --------------------------------------------------------------------------- PNG


def png_bytes(rgb: np.ndarray) -> bytes:
    """A PNG file of an [H, W, 3] uint8 image (no filtering, zlib level 9)."""
    img = np.ascontiguousarray(rgb, dtype=np.uint8)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an [H, W, 3] image, got {img.shape}")
    h, w, _ = img.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), img.reshape(h, w * 3)], axis=1)  # filter byte 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, deflate, no filter set, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 9))
            + chunk(b"IEND", b""))


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


# Anchors of a perceptually ordered dark-to-bright colour map (close to matplotlib's magma).
_CMAP = np.array([(0, 0, 4), (28, 16, 68), (79, 18, 123), (129, 37, 129), (181, 54, 122),
                  (229, 80, 100), (251, 135, 97), (254, 194, 135), (252, 253, 191)], dtype=np.float64)


def colormap(values: np.ndarray) -> np.ndarray:
    """[...] values in 0..1 -> [..., 3] uint8 colours."""
    v = np.clip(np.nan_to_num(values), 0.0, 1.0) * (len(_CMAP) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_CMAP) - 2)
    frac = (v - lo)[..., None]
    return (_CMAP[lo] * (1 - frac) + _CMAP[lo + 1] * frac).round().astype(np.uint8)


def waveform_image(audio: np.ndarray, width: int = IMAGE_WIDTH, height: int = WAVE_HEIGHT,
                   color: Tuple[int, int, int] = (64, 160, 255)) -> np.ndarray:
    """[H, W, 3]: the min/max envelope of the mono mix of [C, T] audio per pixel column, full
    scale = the image's height (so quiet stems look quiet next to loud ones)."""
    mono = np.asarray(audio, dtype=np.float32).mean(axis=0) if np.ndim(audio) == 2 else np.asarray(audio, np.float32)
    img = np.full((height, width, 3), 24, dtype=np.uint8)
    img[height // 2] = (70, 70, 70)  # the zero line
    n = mono.size
    if n == 0:
        return img
    edges = np.linspace(0, n, width + 1).astype(np.int64)
    edges[1:] = np.maximum(edges[1:], edges[:-1] + 1).clip(max=n)  # every column sees >= 1 sample
    starts = np.minimum(edges[:-1], n - 1)
    hi = np.maximum.reduceat(mono, starts)  # [W]
    lo = np.minimum.reduceat(mono, starts)
    rows = np.arange(height)[:, None]  # row 0 is +1.0, the last row -1.0
    top = np.round((1 - np.clip(hi, -1, 1)) * (height - 1) / 2)[None, :]
    bottom = np.round((1 - np.clip(lo, -1, 1)) * (height - 1) / 2)[None, :]
    img[(rows >= top) & (rows <= bottom)] = color
    return img


def spectrogram_image(audio: np.ndarray, rate: int, width: int = IMAGE_WIDTH, height: int = SPEC_HEIGHT,
                      n_fft: Optional[int] = None) -> np.ndarray:
    """[H, W, 3]: a log-frequency (30 Hz .. Nyquist) magnitude spectrogram in dB, one Hann
    window (`n_fft` samples, default ~46 ms) per pixel column centred on it; 0 dBFS at the top
    of the colour map, -90 at the bottom."""
    mono = np.asarray(audio, dtype=np.float32).mean(axis=0) if np.ndim(audio) == 2 else np.asarray(audio, np.float32)
    n = mono.size
    if n_fft is None:  # about 46 ms, whatever the rate (2048 at 44.1 kHz)
        n_fft = 1 << max(int(round(math.log2(0.0464 * rate))), 6)
    padded = np.pad(mono, (0, max(n_fft - n, 0)))  # a track shorter than one window
    # Windows stay inside the track: one across its edge would draw the cut to silence as a click.
    centres = ((np.arange(width) + 0.5) * n / width).astype(np.int64)  # [W] sample at each column
    starts = np.clip(centres - n_fft // 2, 0, padded.size - n_fft)
    idx = starts[:, None] + np.arange(n_fft)[None, :]  # [W, n_fft]
    window = np.hanning(n_fft).astype(np.float32)
    frames = padded[idx] * window  # [W, n_fft]
    mag = np.abs(np.fft.rfft(frames, axis=1)) / (window.sum() / 2)  # [W, F] (a full-scale sine reads 0 dB)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / rate)  # [F]
    targets = np.geomspace(30.0, rate / 2, height)[::-1]  # [H], top row = highest frequency
    bins = np.clip(np.searchsorted(freqs, targets), 1, freqs.size - 1)
    # The strongest bin between neighbouring rows, so that narrow high partials do not vanish.
    upper = np.concatenate([[freqs.size], bins[:-1]])
    spec = np.stack([mag[:, b:max(u, b + 1)].max(axis=1) for b, u in zip(bins, upper)])  # [H, W]
    db = 20 * np.log10(np.maximum(spec, 1e-9))
    return colormap((db - SPEC_FLOOR_DB) / -SPEC_FLOOR_DB)


# --------------------------------------------------------------------------- SVG box plots


_PALETTE = ("#4c9be8", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7")


def box_stats(values: Sequence[float]) -> Optional[Dict[str, Any]]:
    """Tukey box: quartiles (linear interpolation), whiskers at the furthest points within 1.5 IQR."""
    v = np.sort(np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64))
    if v.size == 0:
        return None
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    iqr = q3 - q1
    inside = v[(v >= q1 - 1.5 * iqr) & (v <= q3 + 1.5 * iqr)]
    return {"q1": float(q1), "median": float(med), "q3": float(q3), "low": float(inside.min()),
            "high": float(inside.max()), "outliers": [float(x) for x in v if x < inside.min() or x > inside.max()],
            "n": int(v.size)}


def box_plot_svg(groups: Mapping[str, Mapping[str, Sequence[float]]], series: Sequence[str],
                 metric: str = "SDR", width: int = 900, height: int = 320, unit: str = "dB") -> str:
    """An inline SVG: one group of boxes per stem (`groups[stem][series] = values`), one box per
    series (model or result folder) in each group, a shared y axis in dB."""
    stats = {g: {s: box_stats(vals.get(s, ())) for s in series} for g, vals in groups.items()}
    every = [x for g in stats.values() for b in g.values() if b for x in (b["low"], b["high"], *b["outliers"])]
    lo, hi = (min(every), max(every)) if every else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    left, right, top, bottom = 50, 10, 10, 40
    plot_w, plot_h = width - left - right, height - top - bottom

    def y(v: float) -> float:
        return top + (hi - v) / (hi - lo) * plot_h

    out = [f'<svg class="boxplot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(metric)} per stem">']
    for t in _ticks(lo, hi):
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(t):.1f}" y2="{y(t):.1f}" class="grid"/>'
                   f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    out.append(f'<text x="12" y="{top + plot_h / 2:.0f}" transform="rotate(-90 12 {top + plot_h / 2:.0f})" '
               f'text-anchor="middle">{_e(metric)}{f" ({_e(unit)})" if unit else ""}</text>')
    group_w = plot_w / max(len(stats), 1)
    box_w = min(40.0, 0.8 * group_w / max(len(series), 1))
    for gi, (stem, boxes) in enumerate(stats.items()):
        x0 = left + gi * group_w + (group_w - box_w * len(series)) / 2
        out.append(f'<text x="{left + (gi + 0.5) * group_w:.1f}" y="{height - 14}" text-anchor="middle">{_e(stem)}</text>')
        for si, name in enumerate(series):
            b = boxes[name]
            if b is None:
                continue
            colour = _PALETTE[si % len(_PALETTE)]
            x, cx = x0 + si * box_w + 2, x0 + (si + 0.5) * box_w
            w = box_w - 4
            tip = (f"{name} · {stem}: median {b['median']:.2f}, quartiles {b['q1']:.2f}..{b['q3']:.2f}, "
                   f"n={b['n']}")
            out.append(f'<g class="box"><title>{_e(tip)}</title>'
                       f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(b["high"]):.1f}" y2="{y(b["low"]):.1f}" stroke="{colour}"/>'
                       f'<rect x="{x:.1f}" y="{y(b["q3"]):.1f}" width="{w:.1f}" height="{max(y(b["q1"]) - y(b["q3"]), 1):.1f}" '
                       f'fill="{colour}" fill-opacity="0.45" stroke="{colour}"/>'
                       f'<line x1="{x:.1f}" x2="{x + w:.1f}" y1="{y(b["median"]):.1f}" y2="{y(b["median"]):.1f}" '
                       f'stroke="#fff" stroke-width="2"/>')
            for o in b["outliers"]:
                out.append(f'<circle cx="{cx:.1f}" cy="{y(o):.1f}" r="2.5" fill="none" stroke="{colour}"/>')
            out.append("</g>")
    out.append("</svg>")
    return "".join(out)


def _ticks(lo: float, hi: float, count: int = 6) -> List[float]:
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step) + 1)]


# --------------------------------------------------------------------------- separation report


@dataclass
class StemView:
    name: str
    src: str  # the <audio> src: a relative URL or a data: URI
    rate: int
    frames: int
    peak_db: float
    lufs: float
    wave_png: str
    spec_png: str


@dataclass
class TrackView:
    name: str
    input: str
    status: str
    duration: float
    elapsed: float
    mix: Optional[StemView]
    stems: List[StemView] = field(default_factory=list)
    note: str = ""


def _relative_url(target: Path, base_dir: Path) -> str:
    try:
        rel = os.path.relpath(os.path.abspath(target), os.path.abspath(base_dir))
    except ValueError:  # another drive on Windows: no relative path exists
        return Path(os.path.abspath(target)).as_uri()
    return quote(rel.replace(os.sep, "/"), safe="/")


def _analyse(name: str, audio_data: np.ndarray, rate: int, src: str, colour) -> StemView:
    return StemView(name=name, src=src, rate=rate, frames=int(audio_data.shape[1]), peak_db=peak_dbfs(audio_data),
                    lufs=integrated_loudness(audio_data, rate),
                    wave_png=data_uri(png_bytes(waveform_image(audio_data, color=colour)), "image/png"),
                    spec_png=data_uri(png_bytes(spectrogram_image(audio_data, rate)), "image/png"))


def _mix_src(path: Path, base_dir: Path, audio_data: np.ndarray, rate: int) -> str:
    """The input by relative path when browsers play its container, else an embedded Opus copy."""
    if path.suffix.lower() in PLAYABLE:
        return _relative_url(path, base_dir)
    from . import audio

    with tempfile.TemporaryDirectory(prefix="unmix-report-") as tmp:
        preview = Path(tmp) / "mix.opus"
        audio.encode(preview, audio_data, rate, fmt="opus", bitrate=96_000)
        return data_uri(preview.read_bytes(), "audio/ogg")


def _stem_colour(i: int) -> Tuple[int, int, int]:
    c = _PALETTE[(i + 1) % len(_PALETTE)]
    return tuple(int(c[k:k + 2], 16) for k in (1, 3, 5))


def track_view(result, base_dir: Path) -> TrackView:
    """Measure one TrackResult of `separate.run_batch` (done or skipped) for the page."""
    from . import audio, nistems

    job = result.job
    view = TrackView(name=job.track, input=str(job.input), status=result.status, duration=result.duration,
                     elapsed=result.elapsed, mix=None)
    mix = audio.decode(job.input, sample_rate=None, channels=2)
    mix_rate = audio.probe(job.input).sample_rate
    view.mix = _analyse("mix", mix, mix_rate, _mix_src(Path(job.input), base_dir, mix, mix_rate), (200, 200, 200))
    if not view.duration:
        view.duration = mix.shape[1] / mix_rate
    del mix
    outputs = dict(result.outputs)
    if set(outputs) == {nistems.OUTPUT_KEY}:
        view.note = (f"NI Stems file {outputs[nistems.OUTPUT_KEY].name}: its stems are streams of one file, "
                     "which an <audio> element cannot pick; write one file per stem (e.g. -f flac) to hear them here.")
        return view
    for i, (stem, path) in enumerate(outputs.items()):
        data = audio.decode(path, sample_rate=None, channels=2)
        rate = audio.probe(path).sample_rate
        view.stems.append(_analyse(stem, data, rate, _relative_url(Path(path), base_dir), _stem_colour(i)))
    return view


def write_separation_report(results: Sequence, out_dir: Path, *, model: str,
                            settings: Mapping[str, Any], total_elapsed: Optional[float] = None) -> Optional[Path]:
    """Write `<out_dir>/report.html` for a finished batch; None when no track has stems to show.

    `results` are `separate.TrackResult`s (failed ones are listed with their error);
    `settings` is shown as given (option name -> value)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tracks, failed = [], []
    for r in results:
        if r.status == "failed":
            failed.append((str(r.job.input), r.error.one_line() if r.error is not None else "failed"))
        else:
            tracks.append(track_view(r, out_dir))
    if not tracks and not failed:
        return None
    total = total_elapsed if total_elapsed is not None else sum(t.elapsed for t in tracks)
    body = [f"<h1>unmix: {_e(model)}</h1>", _settings_table(model, settings, total, len(tracks))]
    for i, t in enumerate(tracks):
        body.append(_track_html(i, t))
    if failed:
        body.append("<h2>Failed</h2><ul>" + "".join(f"<li>{_e(p)}: {_e(m)}</li>" for p, m in failed) + "</ul>")
    path = out_dir / REPORT_NAME
    _write_page(path, f"unmix report: {model}", "".join(body), script=_PLAYER_JS)
    return path


def _settings_table(model: str, settings: Mapping[str, Any], total: float, count: int) -> str:
    rows = [("model", model), *settings.items(), ("tracks", count), ("time taken", f"{total:.1f} s (the whole run, model loading included)")]
    return ('<table class="settings"><tbody>'
            + "".join(f"<tr><th>{_e(k)}</th><td>{_e(_show(v))}</td></tr>" for k, v in rows)
            + "</tbody></table>")


def _show(v: Any) -> str:
    if v is None:
        return "default"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    return str(v)


def _db(v: float, unit: str) -> str:
    return "−∞" if not math.isfinite(v) else f"{v:.1f} {unit}"


def _track_html(index: int, t: TrackView) -> str:
    dur = t.duration or 0.0
    head = (f'<section class="track" id="track-{index}" data-duration="{dur:.6f}">'
            f"<h2>{_e(t.name)}</h2><p class=\"meta\">{_e(t.input)} · {dur:.2f} s · "
            + (f"separated in {t.elapsed:.2f} s ({dur / t.elapsed:.1f}× real-time speed)" if t.elapsed and dur
               else "already separated (skipped)" if t.status == "skipped" else "")
            + "</p>")
    transport = ('<div class="transport"><button class="play" type="button">▶ play</button>'
                 '<input class="seek" type="range" min="0" max="1000" value="0" aria-label="position">'
                 '<span class="time">0:00.0</span>'
                 '<label><input type="radio" class="mode" name="mode-%d" value="mix" checked> mix</label>'
                 '<label><input type="radio" class="mode" name="mode-%d" value="stems"> stems</label></div>'
                 % (index, index))
    rows = [_axis_html(dur)]
    rows += [_row_html(t.mix, "mix")] if t.mix else []
    rows += [_row_html(s, "stem") for s in t.stems]
    note = f'<p class="note">{_e(t.note)}</p>' if t.note else ""
    return head + transport + note + '<div class="rows">' + "".join(rows) + '<div class="cursor"></div></div></section>'


def _axis_html(duration: float) -> str:
    """The shared time axis above the images: tick labels at their share of the track's length."""
    ticks = [t for t in _ticks(0.0, duration, 8) if 0 <= t < duration] if duration > 0 else []
    marks = "".join(f'<span style="left:{100 * t / duration:.3f}%">{_clock(t)}</span>' for t in ticks)
    return f'<div class="axis"><div class="label"></div><div class="ticks">{marks}</div></div>'


def _clock(t: float) -> str:
    m, s = divmod(t, 60)
    return f"{int(m)}:{s:04.1f}" if t != int(t) else f"{int(m)}:{int(s):02d}"


def _row_html(s: StemView, kind: str) -> str:
    buttons = ('<button type="button" class="solo" title="solo">S</button>'
               '<button type="button" class="mute" title="mute">M</button>') if kind == "stem" else ""
    return (f'<div class="row {kind}" data-stem="{_e(s.name)}">'
            f'<div class="label"><button type="button" class="name" title="listen to this alone">{_e(s.name)}</button>'
            f'{buttons}<div class="levels">peak {_db(s.peak_db, "dBFS")}<br>{_db(s.lufs, "LUFS")}</div>'
            f'<audio preload="auto" src="{_e(s.src)}" data-stem="{_e(s.name)}"></audio></div>'
            f'<div class="images"><img class="wave" alt="waveform of {_e(s.name)}" src="{s.wave_png}">'
            f'<img class="spec" alt="spectrogram of {_e(s.name)}" src="{s.spec_png}"></div></div>')


# --------------------------------------------------------------------------- eval report


@dataclass
class EvalResults:
    name: str
    folder: Path
    label: str
    dataset: str
    stems: List[str]
    metrics: List[str]
    per_track: Dict[str, Dict[str, Dict[str, Optional[float]]]]  # track -> stem -> metric -> value
    aggregate: Dict[str, Dict[str, Dict[str, Optional[float]]]]


def read_eval_results(folder: Path) -> EvalResults:
    """One `unmix eval` results folder, from its summary.json (metrics as stored there)."""
    folder = Path(folder)
    path = folder / "summary.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        per_track = data["per_track"]
        stems = list(data.get("settings", {}).get("stems") or next(iter(per_track.values()), {}).keys())
    except FileNotFoundError:
        raise EvaluationError("no summary.json: not an unmix eval results folder", path=path,
                              hint="give folders written by unmix eval -o") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, StopIteration) as exc:
        raise EvaluationError(f"cannot read the eval summary ({exc})", path=path) from None
    metrics: List[str] = []
    for stems_scores in per_track.values():
        for scores in stems_scores.values():
            metrics.extend(m for m in scores if m not in metrics)
    return EvalResults(name=folder.resolve().name, folder=folder, label=str(data.get("settings", {}).get("label", "")),
                       dataset=str(data.get("dataset", "")), stems=stems, metrics=metrics, per_track=per_track,
                       aggregate=data.get("aggregate", {}))


# The metric the box plot shows, the first of these that the results hold (music, then speech).
PLOT_METRICS = ("SDR", "SI-SDR", "PESQ-wb", "STOI")


def write_eval_report(folders: Sequence[Path], out_path: Path, metric: Optional[str] = None) -> Path:
    """`report.html` comparing one or several eval results folders (the first is the main one);
    the box plot and the per-track table show `metric` (default: see PLOT_METRICS)."""
    runs = [read_eval_results(f) for f in folders]
    names = _unique_names([r.name for r in runs])
    for r, n in zip(runs, names):
        r.name = n
    stems = list(dict.fromkeys(s for r in runs for s in r.stems))
    metrics = list(dict.fromkeys(m for r in runs for m in r.metrics))
    if metric is None:
        metric = next((m for m in PLOT_METRICS if m in metrics), metrics[0] if metrics else "SDR")
    windowed = metric in ("SDR", "SIR", "ISR", "SAR")
    body = [f"<h1>unmix eval: {_e(', '.join(names))}</h1>",
            '<table class="settings"><thead><tr><th>results</th><th>dataset</th><th>tracks</th><th>made by</th>'
            "</tr></thead><tbody>"
            + "".join(f'<tr><th><span class="swatch" style="background:{_PALETTE[i % len(_PALETTE)]}"></span>'
                      f"{_e(r.name)}</th><td>{_e(r.dataset)}</td><td>{len(r.per_track)}</td><td>{_e(r.label)}</td></tr>"
                      for i, r in enumerate(runs))
            + "</tbody></table>"]
    groups = {s: {r.name: [r.per_track[t].get(s, {}).get(metric) for t in r.per_track] for r in runs} for s in stems}
    body.append(f"<h2>{_e(metric)} per stem" + (" (per-track medians over 1 s windows)" if windowed else " (per track)")
                + "</h2>")
    body.append(box_plot_svg(groups, names, metric, unit="dB" if "SDR" in metric or windowed else ""))
    body.append("<h2>Summary: median over tracks</h2>")
    head = "".join(f"<th>{_e(m)}</th>" for m in metrics)
    rows = []
    for s in (*stems, "overall"):
        for r in runs:
            values = r.aggregate.get("median", {}).get(s, {})
            rows.append(f"<tr><th>{_e(s)}</th><td>{_e(r.name)}</td>" + "".join(f"<td>{_num(values.get(m))}</td>" for m in metrics)
                        + "</tr>")
    body.append(f'<table class="scores"><thead><tr><th>stem</th><th>results</th>{head}</tr></thead><tbody>'
                + "".join(rows) + "</tbody></table>")
    body.append(f"<h2>Per track: {_e(metric)}</h2>")
    tracks = list(dict.fromkeys(t for r in runs for t in r.per_track))
    head = "".join(f"<th>{_e(s)}<br><small>{_e(r.name)}</small></th>" for s in stems for r in runs)
    rows = ["<tr><th>" + _e(t) + "</th>" + "".join(
        f"<td>{_num(r.per_track.get(t, {}).get(s, {}).get(metric))}</td>" for s in stems for r in runs) + "</tr>"
        for t in tracks]
    body.append(f'<table class="scores per-track"><thead><tr><th>track</th>{head}</tr></thead><tbody>'
                + "".join(rows) + "</tbody></table>")
    for r in runs:
        head = "".join(f"<th>{_e(m)}</th>" for m in r.metrics)
        rows = [f"<tr><th>{_e(t)}</th><td>{_e(s)}</td>" + "".join(f"<td>{_num(v.get(m))}</td>" for m in r.metrics) + "</tr>"
                for t, by_stem in r.per_track.items() for s, v in by_stem.items()]
        body.append(f"<details><summary>{_e(r.name)}: every metric per track</summary>"
                    f'<table class="scores"><thead><tr><th>track</th><th>stem</th>{head}</tr></thead><tbody>'
                    + "".join(rows) + "</tbody></table></details>")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _write_page(out_path, f"unmix eval: {', '.join(names)}", "".join(body), script="")
    return out_path


def _unique_names(names: Sequence[str]) -> List[str]:
    seen: Dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n} ({seen[n]})")
    return out


def _num(v: Optional[float]) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.2f}"


# --------------------------------------------------------------------------- page


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _write_page(path: Path, title: str, body: str, script: str) -> None:
    """Write the page atomically: a half-written report never replaces a good one."""
    from .atomic import atomic_path

    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            # No network: every resource is inline; the policy makes the browser refuse anything else.
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            "media-src 'self' data: file:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
            f"<style>{_CSS}</style></head><body>{body}"
            + (f"<script>{script}</script>" if script else "") + "</body></html>")
    with atomic_path(path) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;background:#111;color:#ddd}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}th,td{padding:2px 10px;border-bottom:1px solid #333;text-align:left}
td{font-variant-numeric:tabular-nums}table.scores td{text-align:right}
.meta,.note{color:#999}.track{border-top:1px solid #333;margin-top:1em}
.transport{display:flex;gap:12px;align-items:center;margin:.5em 0}.transport .seek{flex:1}
button{background:#2a2a2a;color:#ddd;border:1px solid #444;border-radius:3px;padding:2px 8px;cursor:pointer}
button.on{background:#4c9be8;color:#000}.solo.on{background:#edc948}.mute.on{background:#e15759}
.rows{position:relative}.row{display:flex;gap:8px;margin:4px 0}.row.silent .images{opacity:.35}
.label{width:150px;flex:none}.label .name{width:100%;text-align:left;font-weight:600}
.levels{font-size:12px;color:#aaa;margin-top:2px}
.images{flex:1;display:flex;flex-direction:column;cursor:crosshair}.images img{width:100%;display:block;image-rendering:pixelated}
.wave{height:48px}.spec{height:96px}
.axis{display:flex;gap:8px;height:16px}.ticks{flex:1;position:relative;font-size:11px;color:#999}
.ticks span{position:absolute;top:0;border-left:1px solid #666;padding-left:3px}
.cursor{position:absolute;top:0;bottom:0;width:1px;background:#fff;pointer-events:none;left:158px}
.swatch{display:inline-block;width:10px;height:10px;margin-right:6px}
svg.boxplot{background:#181818;max-width:100%}svg text{fill:#ccc;font-size:12px}svg .grid{stroke:#333}
details{margin:.5em 0}
"""

# One transport per track. Every <audio> of a track plays together; "mix"/"stems", solo and mute
# only set `muted`, so a switch never moves the position. Elements that drift more than 40 ms
# from the first one are put back in step.
_PLAYER_JS = r"""
(function(){
"use strict";
function fmt(t){if(!isFinite(t))t=0;var m=Math.floor(t/60),s=t-60*m;return m+":"+(s<10?"0":"")+s.toFixed(1);}
document.querySelectorAll("section.track").forEach(function(sec){
  var audios=Array.prototype.slice.call(sec.querySelectorAll("audio"));
  var rows=Array.prototype.slice.call(sec.querySelectorAll(".row"));
  var mixRow=sec.querySelector(".row.mix"), stemRows=rows.filter(function(r){return r!==mixRow;});
  var play=sec.querySelector(".play"), seek=sec.querySelector(".seek"), time=sec.querySelector(".time");
  var cursor=sec.querySelector(".cursor"), firstImg=sec.querySelector(".images");
  var duration=parseFloat(sec.dataset.duration)||0, mode=mixRow?"mix":"stems", playing=false;
  function audioOf(r){return r.querySelector("audio");}
  function position(){return audios.length?audios[0].currentTime:0;}
  function apply(){
    var solos=stemRows.filter(function(r){return r.querySelector(".solo.on");});
    rows.forEach(function(r){
      var on;
      if(r===mixRow){on=mode==="mix";}
      else{on=mode==="stems"&&!r.querySelector(".mute.on")&&(!solos.length||solos.indexOf(r)>=0);}
      audioOf(r).muted=!on; r.classList.toggle("silent",!on);
      r.querySelector(".name").classList.toggle("on",on);
    });
    sec.querySelectorAll(".mode").forEach(function(m){m.checked=(m.value===mode);});
    sec.dataset.audible=rows.filter(function(r){return !audioOf(r).muted;}).map(function(r){return r.dataset.stem;}).join(",");
  }
  function setMode(m){mode=m;apply();}
  function seekTo(t){t=Math.max(0,Math.min(t,duration||t));audios.forEach(function(a){a.currentTime=t;});draw(t);}
  function draw(t){
    if(t===undefined)t=position();
    time.textContent=fmt(t)+" / "+fmt(duration);
    if(duration>0){seek.value=Math.round(1000*t/duration);
      var box=firstImg.getBoundingClientRect(),host=sec.querySelector(".rows").getBoundingClientRect();
      cursor.style.left=(box.left-host.left+box.width*Math.min(t/duration,1))+"px";}
  }
  function sync(){
    var t=position();
    audios.slice(1).forEach(function(a){if(Math.abs(a.currentTime-t)>0.04)a.currentTime=t;});
    draw(t);
  }
  play.addEventListener("click",function(){
    if(playing){audios.forEach(function(a){a.pause();});playing=false;play.textContent="▶ play";
      seekTo(position());return;}  // paused, every player stands on the same sample
    var t=position();audios.forEach(function(a){a.currentTime=t;});
    playing=true;play.textContent="❚❚ pause";
    audios.forEach(function(a){var p=a.play();if(p&&p.catch)p.catch(function(e){console.warn("playback: "+e);});});
  });
  if(audios.length)audios[0].addEventListener("timeupdate",sync);
  if(audios.length)audios[0].addEventListener("ended",function(){audios.forEach(function(a){a.pause();});playing=false;play.textContent="▶ play";});
  seek.addEventListener("input",function(){seekTo(seek.value/1000*duration);});
  sec.querySelectorAll(".mode").forEach(function(m){m.addEventListener("change",function(){setMode(m.value);});});
  rows.forEach(function(r){
    r.querySelector(".name").addEventListener("click",function(){
      if(r===mixRow){setMode("mix");return;}
      stemRows.forEach(function(o){o.querySelector(".solo").classList.toggle("on",o===r);o.querySelector(".mute").classList.remove("on");});
      setMode("stems");
    });
    var solo=r.querySelector(".solo"),mute=r.querySelector(".mute");
    if(solo)solo.addEventListener("click",function(){solo.classList.toggle("on");setMode("stems");});
    if(mute)mute.addEventListener("click",function(){mute.classList.toggle("on");setMode("stems");});
    r.querySelector(".images").addEventListener("click",function(ev){
      var b=ev.currentTarget.getBoundingClientRect();seekTo((ev.clientX-b.left)/b.width*duration);});
  });
  window.addEventListener("resize",function(){draw();});
  apply();draw(0);
});
})();
"""

__all__ = [
    "REPORT_NAME",
    "box_plot_svg",
    "box_stats",
    "k_weighting",
    "integrated_loudness",
    "peak_dbfs",
    "png_bytes",
    "read_eval_results",
    "spectrogram_image",
    "waveform_image",
    "write_eval_report",
    "write_separation_report",
]
