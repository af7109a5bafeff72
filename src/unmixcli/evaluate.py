"""Evaluate separations on a folder laid out like MUSDB18-HQ, with the scores the papers report.

Layout: `<root>/<track>/mixture.wav` plus one `<stem>.wav` per reference stem; `root` may
be the split folder itself (e.g. `musdb18hq/test`) or the folder that holds it.

Two ways to get the estimates:

* `estimates_dir`: separations that already exist, `<estimates_dir>/<track>/<stem>.wav`
  (written by us or by any other tool); no model runs.
* `separate_fn(mixture_path) -> {stem: array [C, T]}`: called once per track (the CLI
  builds it on the separation path; this module knows nothing about models).

Scores (see `metrics.py`): BSS Eval v4 SDR, SIR, ISR, SAR per 1 s window, summarised per
track by the median over windows (NaN windows ignored), as museval does; and the MDX
challenges' whole-track "new SDR" (uSDR). Aggregates: for each stem the median over tracks
of the per-track medians (what SiSEC 2018 and the Demucs papers report) and the mean over
tracks (the MDX convention for uSDR; Demucs' training logs also show it); "overall" is the
mean over stems of those per-stem aggregates (the papers' "All"/"Avg." column).

Files written to `output_dir`: `tracks/<track>.json` (per-window values, museval-like
schema, plus per-track medians), `scores.csv` (one row per track and stem),
`summary.json` and `summary.csv` (aggregates). A track whose JSON exists with the same
settings is not evaluated again (and not separated again), so an interrupted run resumes.

Speech folders are evaluated too; the layout is told from the folder (`detect_layout`):

* VoiceBank-DEMAND: `<root>/clean/<file>.wav` and `<root>/noisy/<file>.wav` (same names; the
  `clean_testset_wav` / `noisy_testset_wav` names of the published archive work too). The model
  enhances `noisy/<file>.wav`; its `speech` stem is scored against `clean/<file>.wav`.
* LibriMix: `<root>/mix_clean/` (or `mix_both/`, the noisy task, when there is no `mix_clean/`
  or when asked for with `mixture="mix_both"`), `<root>/s1/`, `<root>/s2/` (`s3/` for Libri3Mix),
  same file names. Stems `speaker1`, `speaker2`, ... Speech separation is permutation-invariant
  (nothing tells a model which talker is "speaker 1"), so the estimates are matched to the
  references by the permutation with the best mean SI-SDR, as utterance-level PIT scores them;
  the permutation used is kept in each file's JSON.

Speech scores, per file and stem (`SPEECH_METRICS`): PESQ wide band (P.862.2, at 16 kHz; NaN for
data below 16 kHz, which has no wide band) and narrow band (P.862, at 8 kHz) from the `pesq`
package, STOI and extended STOI from `pystoi`, SI-SDR and its improvement over the unprocessed
input (`metrics.py`); all on mono (channels averaged). Aggregates: mean over files (the speech
papers' convention) and median, with an "overall" row as for music. The same files are written
(`tracks/<file>.json` without per-window values, `scores.csv`, `summary.json`, `summary.csv`),
and the same resume applies.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .atomic import atomic_path
from .errors import EvaluationError, UsageError
from .metrics import METRICS, bss_eval_v4, mdx_sdr, track_median

PathLike = Union[str, "os.PathLike[str]"]
SeparateFn = Callable[[Path], Mapping[str, Any]]
"""`separate_fn(mixture_path) -> {stem: array-like [C, T]}` at the mixture's sample rate."""
ProgressFn = Callable[[int, int, str, str], None]
"""`progress(done, total, track, status)`, status "start" (about to evaluate), "scored" or
"skipped" (already in the output folder); `done` counts finished tracks."""

MIXTURE = "mixture"
ACCOMPANIMENT = "accompaniment"
VOCALS = "vocals"
TRACK_METRICS = METRICS + ("uSDR",)
# Demucs' stem order first (what models produce), anything else alphabetically after.
_STEM_ORDER = ("drums", "bass", "other", "vocals", ACCOMPANIMENT)
_FORMAT_VERSION = 1
_LAYOUT_HINT = ("expected <root>/<track>/mixture.wav and one <stem>.wav per stem (or <root>/test/<track>/...), "
                "clean/ + noisy/ (VoiceBank-DEMAND), or mix_clean/ + s1/ + s2/ (LibriMix)")

MUSDB, VOICEBANK, LIBRIMIX = "musdb", "voicebank", "librimix"
LAYOUTS = (MUSDB, VOICEBANK, LIBRIMIX)
SPEECH = "speech"
SPEECH_METRICS = ("PESQ-wb", "PESQ-nb", "STOI", "eSTOI", "SI-SDR", "SI-SDRi")
# (clean, noisy) folder names of VoiceBank-DEMAND: the plain ones, then the published archive's.
_VOICEBANK_DIRS = (("clean", "noisy"), ("clean_testset_wav", "noisy_testset_wav"))
_LIBRIMIX_MIXES = ("mix_clean", "mix_both")
_SPEECH_SUFFIXES = (".wav", ".flac")


@dataclass(frozen=True)
class EvalTrack:
    """One track folder of the dataset."""

    name: str
    folder: Path

    @property
    def mixture(self) -> Path:
        return self.folder / f"{MIXTURE}.wav"

    def stem_files(self) -> Dict[str, Path]:
        """Reference stems present in the folder: {stem: path}, mixture excluded."""
        return {p.stem: p for p in sorted(self.folder.glob("*.wav")) if p.stem != MIXTURE}


@dataclass(frozen=True)
class EvalOptions:
    """What to score and how; checked when made (`UsageError`), for the API and `unmix eval` alike.

    Attributes:
        stems: stems to score, at least two (None: the reference stems of the first track).
        subset: split folder when the dataset folder holds several (`test`).
        track_names: only these tracks (None: all).
        window, hop: BSS Eval window and hop in seconds (museval: 1.0, 1.0).
        fit_length: pad with zeros / cut estimates to the reference length, as museval does,
            instead of rejecting a length mismatch.
        overwrite: evaluate again tracks already scored in the output folder.
        label: what produced the estimates (see `evaluate`).
        layout: "musdb", "voicebank" or "librimix" (None: told from the folder by `evaluate`);
            the two-stem minimum of BSS Eval applies unless the layout is a speech one.
        mixture: LibriMix only, the mixture folder: "mix_clean" or "mix_both" (None: mix_clean
            when present, else mix_both).
    """

    stems: Optional[Tuple[str, ...]] = None
    subset: str = "test"
    track_names: Optional[Tuple[str, ...]] = None
    window: float = 1.0
    hop: float = 1.0
    fit_length: bool = False
    overwrite: bool = False
    label: Optional[str] = None
    layout: Optional[str] = None
    mixture: Optional[str] = None

    def __post_init__(self) -> None:
        if self.layout is not None and self.layout not in LAYOUTS:
            raise UsageError(f"unknown dataset layout {self.layout!r}", hint=f"use one of: {', '.join(LAYOUTS)}")
        if self.mixture is not None and self.mixture not in _LIBRIMIX_MIXES:
            raise UsageError(f"unknown LibriMix mixture folder {self.mixture!r}",
                             hint=f"use one of: {', '.join(_LIBRIMIX_MIXES)}")
        if self.stems is not None:
            stems = order_stems(list(self.stems))
            if len(stems) < 2 and self.layout in (None, MUSDB):
                raise UsageError(f"BSS Eval needs at least two stems, got {list(stems)}",
                                 hint="evaluate two or more stems")
            object.__setattr__(self, "stems", stems)
        if self.track_names is not None:
            object.__setattr__(self, "track_names", tuple(self.track_names))
        if not all(_positive(v) for v in (self.window, self.hop)):
            raise UsageError(f"window and hop must be positive (got {self.window} s, {self.hop} s)")
        if not isinstance(self.subset, str) or not self.subset or os.sep in self.subset or self.subset in (".", ".."):
            raise UsageError(f"invalid subset {self.subset!r}", hint="the name of a split folder, e.g. test")


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@dataclass
class TrackScores:
    """Scores of one track.

    `frames[stem][metric]` holds per-window values (NaN where a window is not scored),
    `scores[stem][metric]` the track summary: median over windows for the BSS Eval metrics,
    the whole-track value for uSDR.
    """

    track: str
    stems: Tuple[str, ...]
    sample_rate: int
    frames: Dict[str, Dict[str, List[float]]]
    scores: Dict[str, Dict[str, float]]
    settings: Dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        hop = self.settings.get("hop", 1.0)
        win = self.settings.get("window", 1.0)
        targets = []
        for stem in self.stems:
            values = self.frames[stem]
            n = len(values["SDR"])
            targets.append(
                {
                    "name": stem,
                    "frames": [
                        {
                            "time": i * hop,
                            "duration": win,
                            "metrics": {m: _json_number(values[m][i], 5) for m in METRICS},
                        }
                        for i in range(n)
                    ],
                }
            )
        return {
            "format": _FORMAT_VERSION,
            "track": self.track,
            "sample_rate": self.sample_rate,
            "settings": self.settings,
            "scores": {s: {m: _json_number(v) for m, v in self.scores[s].items()} for s in self.stems},
            "targets": targets,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "TrackScores":
        frames: Dict[str, Dict[str, List[float]]] = {}
        for target in data["targets"]:
            frames[target["name"]] = {m: [_from_json_number(f["metrics"][m]) for f in target["frames"]] for m in METRICS}
        scores = {s: {m: _from_json_number(v) for m, v in ms.items()} for s, ms in data["scores"].items()}
        return cls(
            track=data["track"],
            stems=tuple(data["settings"]["stems"]),
            sample_rate=int(data["sample_rate"]),
            frames=frames,
            scores=scores,
            settings=dict(data["settings"]),
        )


@dataclass
class EvaluationReport:
    """What `evaluate` found; `aggregate` is the table the papers print.

    `aggregate["median"][stem][metric]`: median over tracks (papers' convention);
    `aggregate["mean"][stem][metric]`: mean over tracks (MDX convention for uSDR);
    both carry an "overall" row = mean over stems.
    """

    dataset: Path
    output_dir: Path
    stems: Tuple[str, ...]
    tracks: List[TrackScores]
    aggregate: Dict[str, Dict[str, Dict[str, float]]]
    skipped: List[str]
    files: Dict[str, Path]
    layout: str = MUSDB
    metrics: Tuple[str, ...] = TRACK_METRICS


def find_tracks(root: PathLike, subset: str = "test") -> Tuple[Path, List[EvalTrack]]:
    """Locate the split folder and its track folders.

    Args:
        root: the split folder (holding track folders) or a folder holding `<subset>/`.
    Returns:
        (split folder, tracks sorted by name).
    Raises:
        EvaluationError: missing folder, no track folders, or a folder without mixture.wav.
    """
    root = Path(root)
    if not root.is_dir():
        raise EvaluationError("dataset folder not found", path=root, hint=_LAYOUT_HINT)
    split = root / subset if (root / subset).is_dir() else root
    tracks = []
    try:
        folders = sorted(p for p in split.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise EvaluationError(f"cannot list the dataset folder ({exc.strerror or exc})", path=split) from exc
    for folder in folders:
        track = EvalTrack(folder.name, folder)
        if not track.mixture.is_file():
            raise EvaluationError(f"track folder has no {MIXTURE}.wav", path=folder, hint=_LAYOUT_HINT)
        tracks.append(track)
    if not tracks:
        raise EvaluationError("no track folders found", path=split, hint=_LAYOUT_HINT)
    return split, tracks


def read_wav(path: Path) -> Tuple[np.ndarray, int]:
    """`(audio [C, T] float64, sample rate)`; EvaluationError if the file is missing or unreadable."""
    import soundfile

    if not path.is_file():
        raise EvaluationError("file not found", path=path, hint=_LAYOUT_HINT)
    try:
        audio, rate = soundfile.read(str(path), dtype="float64", always_2d=True)  # [T, C]
    except Exception as exc:  # soundfile raises RuntimeError/LibsndfileError/TypeError
        raise EvaluationError(f"cannot read WAV file ({exc})", path=path) from exc
    return np.ascontiguousarray(audio.T), int(rate)


def order_stems(stems: Sequence[str]) -> Tuple[str, ...]:
    """Stems in the usual display order (drums, bass, other, vocals, accompaniment, others)."""
    known = [s for s in _STEM_ORDER if s in stems]
    return tuple(known + sorted(s for s in set(stems) if s not in _STEM_ORDER))


def load_references(track: EvalTrack, stems: Sequence[str]) -> Tuple[Dict[str, np.ndarray], int]:
    """Reference stems of a track, checked against its mixture.

    "accompaniment" without its own file is the sum of every stem file except vocals
    (as musdb defines it).

    Returns:
        ({stem: [C, T] float64}, sample rate).
    Raises:
        EvaluationError: a stem file is missing, or lengths / sample rates / channels differ.
    """
    mix, rate = read_wav(track.mixture)
    files = track.stem_files()
    refs: Dict[str, np.ndarray] = {}
    loaded: Dict[str, np.ndarray] = {}

    def load(stem: str) -> np.ndarray:
        if stem not in loaded:
            path = files.get(stem, track.folder / f"{stem}.wav")
            audio, stem_rate = read_wav(path)
            if stem_rate != rate:
                raise EvaluationError(f"sample rate {stem_rate} Hz differs from the mixture's {rate} Hz", path=path)
            if audio.shape != mix.shape:
                raise EvaluationError(
                    f"shape {_shape(audio)} differs from the mixture's {_shape(mix)}",
                    path=path,
                    hint="every stem must have the mixture's channels and length",
                )
            loaded[stem] = audio
        return loaded[stem]

    for stem in stems:
        if stem == ACCOMPANIMENT and stem not in files:
            parts = [s for s in files if s not in (VOCALS, ACCOMPANIMENT)]
            if not parts:
                raise EvaluationError("no stems to build the accompaniment from", path=track.folder, hint=_LAYOUT_HINT)
            refs[stem] = sum(load(s) for s in parts)
        else:
            if stem not in files:
                raise EvaluationError(
                    f"reference stem '{stem}' missing",
                    path=track.folder / f"{stem}.wav",
                    hint=f"stems in this track: {', '.join(sorted(files)) or 'none'}",
                )
            refs[stem] = load(stem)
    return refs, rate


def score_track(
    name: str,
    references: Mapping[str, np.ndarray],
    estimates: Mapping[str, np.ndarray],
    sample_rate: int,
    window: float = 1.0,
    hop: float = 1.0,
) -> TrackScores:
    """Score one track's estimates against its references (both `{stem: [C, T]}`, same keys).

    Follows museval's grouping: all stems are evaluated together (BSS Eval projects each
    estimate on every reference), except that when both vocals and accompaniment are
    present they form their own two-source evaluation and accompaniment is left out of
    the other group.
    """
    stems = order_stems(list(references))
    if len(stems) < 2:
        raise UsageError(
            "BSS Eval needs at least two stems to tell interference from the target", hint="evaluate two or more stems"
        )
    groups = [list(stems)]
    if VOCALS in stems and ACCOMPANIMENT in stems:
        rest = [s for s in stems if s != ACCOMPANIMENT]
        # The vocals score comes from the vocals/accompaniment pair, like museval.
        groups = ([rest] if len(rest) >= 2 else []) + [[VOCALS, ACCOMPANIMENT]]
    win, step = int(window * sample_rate), int(hop * sample_rate)
    frames: Dict[str, Dict[str, List[float]]] = {}
    for group in groups:
        refs = np.stack([references[s] for s in group])  # [S, C, T]
        ests = np.stack([estimates[s] for s in group])
        result = bss_eval_v4(refs, ests, window=win, hop=step).as_dict()
        for i, stem in enumerate(group):
            # museval stores +-inf as NaN; medians then ignore them.
            frames[stem] = {m: [float(v) if math.isfinite(v) else math.nan for v in result[m][i]] for m in METRICS}
    usdr = mdx_sdr(np.stack([references[s] for s in stems]), np.stack([estimates[s] for s in stems]))
    scores = {}
    for i, stem in enumerate(stems):
        scores[stem] = {m: float(track_median(np.asarray(frames[stem][m]))) for m in METRICS}
        scores[stem]["uSDR"] = float(usdr[i])
    settings = {"stems": list(stems), "window": window, "hop": hop}
    return TrackScores(name, stems, int(sample_rate), frames, scores, settings)


def aggregate(tracks: Sequence[TrackScores], stems: Sequence[str],
              metrics: Sequence[str] = TRACK_METRICS) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Median and mean over tracks of each stem's track scores, plus the "overall" mean over stems."""
    out: Dict[str, Dict[str, Dict[str, float]]] = {"median": {}, "mean": {}}
    for how, reduce in (("median", np.nanmedian), ("mean", np.nanmean)):
        for stem in stems:
            out[how][stem] = {}
            for metric in metrics:
                values = np.array([t.scores[stem][metric] for t in tracks], dtype=np.float64)
                out[how][stem][metric] = float(reduce(values)) if np.any(np.isfinite(values)) else math.nan
        out[how]["overall"] = {}
        for metric in metrics:
            per_stem = np.array([out[how][s][metric] for s in stems])
            out[how]["overall"][metric] = float(np.nanmean(per_stem)) if np.any(np.isfinite(per_stem)) else math.nan
    return out


def evaluate(
    dataset: PathLike,
    output_dir: PathLike,
    *,
    estimates_dir: Optional[PathLike] = None,
    separate_fn: Optional[SeparateFn] = None,
    stems: Optional[Sequence[str]] = None,
    subset: str = "test",
    track_names: Optional[Sequence[str]] = None,
    window: float = 1.0,
    hop: float = 1.0,
    fit_length: bool = False,
    overwrite: bool = False,
    label: Optional[str] = None,
    progress: Optional[ProgressFn] = None,
    layout: Optional[str] = None,
    mixture: Optional[str] = None,
) -> EvaluationReport:
    """Evaluate every track of a MUSDB18(-HQ)-layout folder, or every file of a speech folder
    (VoiceBank-DEMAND or LibriMix layout, see the module docstring).

    Args:
        dataset: split folder (`.../test`) or the folder holding `<subset>/`.
        output_dir: where the per-track JSON files and the summaries go (created).
        estimates_dir: existing separations, `<estimates_dir>/<track>/<stem>.wav`
            (`<estimates_dir>/<subset>/<track>/` also accepted). Exactly one of this and
            `separate_fn` must be given.
        separate_fn: `separate_fn(mixture_path) -> {stem: [C, T]}` at the mixture's rate.
        stems: stems to score (at least two); default: the reference stems of the first track.
        track_names: only these tracks (default all).
        window, hop: BSS Eval window and hop in seconds (museval: 1.0, 1.0).
        fit_length: pad with zeros / cut estimates to the reference length, as museval does,
            instead of rejecting a length mismatch.
        overwrite: evaluate again tracks already scored in `output_dir`.
        label: what produced the estimates (the CLI passes the model name and options); kept
            in every file, and a stored track made under another label is evaluated again.
            Default: the estimates folder, or "separate_fn".
        progress: see `ProgressFn`.
        layout: "musdb", "voicebank" or "librimix"; default: told from the folder (`detect_layout`).
            For speech, `window` and `hop` do not apply, `stems` may be one, and the speaker
            stems of LibriMix are matched to the references by the best permutation.
        mixture: LibriMix's mixture folder, "mix_clean" or "mix_both" (default: mix_clean if present).
    Returns:
        `EvaluationReport`.
    Raises:
        EvaluationError: bad layout (naming the missing file), mismatched lengths, sample
            rates or channels, stems the estimates / model do not provide.
        UsageError: both or neither of `estimates_dir` / `separate_fn`, fewer than two stems.
    """
    if (estimates_dir is None) == (separate_fn is None):
        raise UsageError("give exactly one of estimates_dir and separate_fn")
    if layout is None:
        EvalOptions(subset=subset)  # the subset is checked before it names a folder
        layout, _ = detect_layout(dataset, subset)
    opts = EvalOptions(stems=None if stems is None else tuple(stems), subset=subset,
                       track_names=None if track_names is None else tuple(track_names), window=window, hop=hop,
                       fit_length=fit_length, overwrite=overwrite, label=label, layout=layout, mixture=mixture)
    if layout != MUSDB:
        return _evaluate_speech(dataset, output_dir, opts, estimates_dir, separate_fn, progress)
    stems, subset, track_names = opts.stems, opts.subset, opts.track_names
    window, hop = float(opts.window), float(opts.hop)
    split, tracks = find_tracks(dataset, subset)
    if track_names is not None:
        by_name = {t.name: t for t in tracks}
        missing = [n for n in track_names if n not in by_name]
        if missing:
            raise EvaluationError(f"no track named '{missing[0]}'", path=split, hint=f"{len(tracks)} tracks are available")
        tracks = [by_name[n] for n in track_names]
    if stems is None:
        stems = order_stems(list(tracks[0].stem_files()))
        if len(stems) < 2:
            raise EvaluationError(
                f"fewer than two stem files beside {MIXTURE}.wav", path=tracks[0].folder, hint=_LAYOUT_HINT
            )
    est_root = Path(estimates_dir) if estimates_dir is not None else None
    if est_root is not None:
        if not est_root.is_dir():
            raise EvaluationError("estimates folder not found", path=est_root)
        if (est_root / subset).is_dir() and not any((est_root / t.name).is_dir() for t in tracks):
            est_root = est_root / subset
    # Check the whole layout before the slow part, so a typo fails at once.
    for track in tracks:
        files = track.stem_files()
        for stem in stems:
            if stem not in files and not (stem == ACCOMPANIMENT and any(s != VOCALS for s in files)):
                raise EvaluationError(
                    f"reference stem '{stem}' missing",
                    path=track.folder / f"{stem}.wav",
                    hint=f"stems in this track: {', '.join(sorted(files)) or 'none'}",
                )
            if est_root is not None and not (est_root / track.name / f"{stem}.wav").is_file():
                raise EvaluationError(
                    f"estimate of '{stem}' missing",
                    path=est_root / track.name / f"{stem}.wav",
                    hint="estimates must be laid out as <estimates>/<track>/<stem>.wav",
                )

    out = Path(output_dir)
    track_dir = out / "tracks"
    try:
        track_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvaluationError(f"cannot create the output folder ({exc.strerror})", path=out) from exc
    if label is None:
        label = str(est_root.resolve()) if est_root is not None else "separate_fn"
    settings = {"stems": list(stems), "window": float(window), "hop": float(hop), "label": label}

    def score(track: EvalTrack) -> TrackScores:
        refs, rate = load_references(track, stems)
        if est_root is not None:
            estimates = _load_estimates(est_root / track.name, stems, refs, rate, fit_length)
        else:
            estimates = _run_separation(separate_fn, track, stems, refs, fit_length)
        return score_track(track.name, refs, estimates, rate, window=float(window), hop=float(hop))

    results, skipped = _score_each(tracks, score, track_dir, settings, overwrite, progress)
    agg = aggregate(results, stems)
    files = _write_summaries(out, split, stems, results, agg, settings)
    return EvaluationReport(split, out, tuple(stems), results, agg, skipped, files)


# --- speech folders: VoiceBank-DEMAND and LibriMix -----------------------------------------


@dataclass(frozen=True)
class SpeechItem:
    """One file of a speech folder: the model's input and the reference of each stem."""

    name: str
    mixture: Path
    references: Dict[str, Path]


@dataclass
class SpeechScores(TrackScores):
    """Scores of one speech file: `scores[stem][metric]` over `SPEECH_METRICS` (no windows).

    `permutation[reference stem]` is the estimate stem scored against it (LibriMix: the best
    permutation; VoiceBank: the identity).
    """

    permutation: Dict[str, str] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        return {
            "format": _FORMAT_VERSION,
            "track": self.track,
            "sample_rate": self.sample_rate,
            "settings": self.settings,
            "permutation": dict(self.permutation),
            "scores": {s: {m: _json_number(v) for m, v in self.scores[s].items()} for s in self.stems},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "SpeechScores":
        scores = {s: {m: _from_json_number(v) for m, v in ms.items()} for s, ms in data["scores"].items()}
        return cls(track=data["track"], stems=tuple(data["settings"]["stems"]), sample_rate=int(data["sample_rate"]),
                   frames={}, scores=scores, settings=dict(data["settings"]),
                   permutation=dict(data.get("permutation") or {}))


def _voicebank_dirs(folder: Path) -> Optional[Tuple[Path, Path]]:
    for clean, noisy in _VOICEBANK_DIRS:
        if (folder / clean).is_dir() and (folder / noisy).is_dir():
            return folder / clean, folder / noisy
    return None


def _speaker_dirs(folder: Path) -> List[Path]:
    """`s1/`, `s2/`, ... in order, stopping at the first gap."""
    dirs, i = [], 1
    while (folder / f"s{i}").is_dir():
        dirs.append(folder / f"s{i}")
        i += 1
    return dirs


def _is_librimix(folder: Path) -> bool:
    return len(_speaker_dirs(folder)) >= 2 and any((folder / m).is_dir() for m in _LIBRIMIX_MIXES)


def detect_layout(root: PathLike, subset: str = "test") -> Tuple[str, Path]:
    """The layout of a dataset folder and the folder holding its data: (`layout`, folder).

    `root` or `root/<subset>` holding `clean/` + `noisy/` is VoiceBank-DEMAND, holding
    `mix_clean/` (or `mix_both/`) + `s1/` + `s2/` is LibriMix; anything else is MUSDB18-HQ
    (whose own checks then name what is missing).
    """
    root = Path(root)
    for folder in (root / subset, root):
        if not folder.is_dir():
            continue
        if _voicebank_dirs(folder) is not None:
            return VOICEBANK, folder
        if _is_librimix(folder):
            return LIBRIMIX, folder
    return MUSDB, root / subset if (root / subset).is_dir() else root


def _speech_files(folder: Path) -> List[Path]:
    try:
        return sorted(p for p in folder.iterdir()
                      if p.is_file() and p.suffix.lower() in _SPEECH_SUFFIXES and not p.name.startswith("."))
    except OSError as exc:
        raise EvaluationError(f"cannot list the folder ({exc.strerror or exc})", path=folder) from exc


def find_speech_items(root: PathLike, subset: str = "test", layout: Optional[str] = None,
                      mixture: Optional[str] = None) -> Tuple[Path, str, List[SpeechItem]]:
    """The files of a VoiceBank-DEMAND or LibriMix folder: (data folder, layout, items by name).

    Raises:
        EvaluationError: not a speech folder, no input files, or an input without its reference.
    """
    found, folder = detect_layout(root, subset)
    layout = layout or found
    if layout == VOICEBANK:
        dirs = _voicebank_dirs(folder)
        if dirs is None:
            raise EvaluationError("no clean/ and noisy/ folders", path=folder, hint=_LAYOUT_HINT)
        clean, inputs = dirs
        refs = {SPEECH: clean}
    elif layout == LIBRIMIX:
        if not _is_librimix(folder):
            raise EvaluationError("no mix_clean/ (or mix_both/), s1/ and s2/ folders", path=folder, hint=_LAYOUT_HINT)
        names = [mixture] if mixture else [m for m in _LIBRIMIX_MIXES if (folder / m).is_dir()][:1]
        inputs = folder / names[0]
        if not inputs.is_dir():
            raise EvaluationError(f"no {names[0]}/ folder", path=inputs, hint=_LAYOUT_HINT)
        refs = {f"speaker{i + 1}": d for i, d in enumerate(_speaker_dirs(folder))}
    else:
        raise EvaluationError("not a speech folder", path=folder, hint=_LAYOUT_HINT)
    items = []
    for path in _speech_files(inputs):
        references = {stem: d / path.name for stem, d in refs.items()}
        for ref in references.values():
            if not ref.is_file():
                raise EvaluationError(f"no reference for {inputs.name}/{path.name}", path=ref,
                                      hint="every input file needs a file of the same name in each reference folder")
        items.append(SpeechItem(path.stem, path, references))
    if not items:
        raise EvaluationError("no audio files found", path=inputs, hint=_LAYOUT_HINT)
    return folder, layout, items


def reference_stems(root: PathLike, subset: str = "test") -> Tuple[str, Tuple[str, ...]]:
    """(layout, the reference stems of the first track or file): what a model must produce."""
    layout, _ = detect_layout(root, subset)
    if layout == MUSDB:
        _, tracks = find_tracks(root, subset)
        return layout, order_stems(list(tracks[0].stem_files()))
    _, _, items = find_speech_items(root, subset, layout)
    return layout, tuple(items[0].references)


def _mono64(audio: np.ndarray) -> np.ndarray:
    """[C, T] -> [1, T] float64: the speech metrics are defined on one channel."""
    audio = np.asarray(audio, dtype=np.float64)
    return audio.mean(axis=0, keepdims=True) if audio.shape[0] != 1 else audio


def best_permutation(references: Mapping[str, np.ndarray], estimates: Mapping[str, np.ndarray]) -> Dict[str, str]:
    """{reference stem: estimate stem} maximising the mean SI-SDR (utterance-level PIT).

    Both are `{stem: [C, T]}` with the same number of stems; every permutation is tried
    (S! of them: 2 for Libri2Mix, 6 for Libri3Mix).
    """
    import itertools

    from .metrics import si_sdr

    ref_names, est_names = list(references), list(estimates)
    refs = np.stack([references[s] for s in ref_names])  # [S, C, T]
    ests = np.stack([estimates[s] for s in est_names])
    # pair[i, j]: SI-SDR of estimate j against reference i.
    pair = si_sdr(refs[:, None], ests[None, :])  # [S, S]
    best = max(itertools.permutations(range(len(est_names))),
               key=lambda perm: sum(pair[i, j] for i, j in enumerate(perm)))
    return {ref_names[i]: est_names[j] for i, j in enumerate(best)}


def score_speech(name: str, references: Mapping[str, np.ndarray], estimates: Mapping[str, np.ndarray],
                 mixture: np.ndarray, sample_rate: int, permute: bool = False) -> SpeechScores:
    """Score one speech file: `SPEECH_METRICS` for each reference stem.

    Args:
        references, estimates: `{stem: [C, T]}`, mixed down to mono here.
        mixture: `[C, T]`, the model's input (the baseline of SI-SDRi).
        permute: match estimates to references by the best permutation (speaker separation);
            else each stem is scored against its namesake.
    """
    from .metrics import pesq_score, si_sdr, si_sdr_improvement, stoi_score

    refs = {s: _mono64(v) for s, v in references.items()}
    ests = {s: _mono64(v) for s, v in estimates.items()}
    mix = _mono64(mixture)
    perm = best_permutation(refs, ests) if permute else {s: s for s in refs}
    scores: Dict[str, Dict[str, float]] = {}
    for stem, est_stem in perm.items():
        ref, est = refs[stem], ests[est_stem]
        scores[stem] = {
            # Below 16 kHz there is no wide band to score (upsampling would only make it up).
            "PESQ-wb": pesq_score(ref, est, sample_rate, "wb") if sample_rate >= 16000 else math.nan,
            "PESQ-nb": pesq_score(ref, est, sample_rate, "nb"),
            "STOI": stoi_score(ref, est, sample_rate),
            "eSTOI": stoi_score(ref, est, sample_rate, extended=True),
            "SI-SDR": float(si_sdr(ref[None], est[None])[0]),
            "SI-SDRi": float(si_sdr_improvement(ref[None], est[None], mix)[0]),
        }
    stems = tuple(refs)
    return SpeechScores(name, stems, int(sample_rate), {}, scores, {"stems": list(stems)}, permutation=perm)


def _evaluate_speech(dataset: PathLike, output_dir: PathLike, opts: EvalOptions, estimates_dir: Optional[PathLike],
                     separate_fn: Optional[SeparateFn], progress: Optional[ProgressFn]) -> EvaluationReport:
    """`evaluate` for a VoiceBank-DEMAND or LibriMix folder (see the module docstring)."""
    from .metrics import _import_speech_metric

    # A missing optional package is said before anything is separated.
    _import_speech_metric("pesq")
    _import_speech_metric("pystoi")
    folder, layout, items = find_speech_items(dataset, opts.subset, opts.layout, opts.mixture)
    if opts.track_names is not None:
        by_name = {t.name: t for t in items}
        missing = [n for n in opts.track_names if n not in by_name]
        if missing:
            raise EvaluationError(f"no file named '{missing[0]}'", path=folder, hint=f"{len(items)} files are available")
        items = [by_name[n] for n in opts.track_names]
    ref_stems = tuple(items[0].references)
    stems = opts.stems if opts.stems is not None else ref_stems
    unknown = [s for s in stems if s not in ref_stems]
    if unknown:
        raise UsageError(f"no reference for stem '{unknown[0]}' in a {layout} folder",
                         hint=f"its stems: {', '.join(ref_stems)}")
    permute = layout == LIBRIMIX
    if permute and set(stems) != set(ref_stems):
        raise UsageError("speaker separation is scored over all speakers at once (best permutation)",
                         hint=f"score {', '.join(ref_stems)} together, or drop --stems")
    est_root = Path(estimates_dir) if estimates_dir is not None else None
    if est_root is not None:
        if not est_root.is_dir():
            raise EvaluationError("estimates folder not found", path=est_root)
        for item in items:
            for stem in stems:
                if not (est_root / item.name / f"{stem}.wav").is_file():
                    raise EvaluationError(f"estimate of '{stem}' missing", path=est_root / item.name / f"{stem}.wav",
                                          hint="estimates must be laid out as <estimates>/<file>/<stem>.wav")

    out = Path(output_dir)
    track_dir = out / "tracks"
    try:
        track_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvaluationError(f"cannot create the output folder ({exc.strerror})", path=out) from exc
    label = opts.label
    if label is None:
        label = str(est_root.resolve()) if est_root is not None else "separate_fn"
    settings = {"layout": layout, "stems": list(stems), "metrics": list(SPEECH_METRICS), "label": label}
    if layout == LIBRIMIX:
        settings["mixture"] = items[0].mixture.parent.name

    def score(item) -> TrackScores:
        mix, rate = read_wav(item.mixture)
        refs = {}
        for stem in stems:
            audio, ref_rate = read_wav(item.references[stem])
            if ref_rate != rate:
                raise EvaluationError(f"sample rate {ref_rate} Hz differs from the input's {rate} Hz",
                                      path=item.references[stem])
            if audio.shape[1] != mix.shape[1]:
                raise EvaluationError(f"{audio.shape[1]} samples, the input {mix.shape[1]}", path=item.references[stem],
                                      hint="a reference must be as long as its input")
            refs[stem] = _mono64(audio)
        if est_root is not None:
            estimates = {}
            for stem in stems:
                path = est_root / item.name / f"{stem}.wav"
                audio, est_rate = read_wav(path)
                if est_rate != rate:
                    raise EvaluationError(f"sample rate {est_rate} Hz differs from the reference's {rate} Hz", path=path,
                                          hint="estimates must be at the dataset's sample rate")
                estimates[stem] = _fit(_mono64(audio), refs[stem], opts.fit_length, path, f"estimate of '{stem}'")
        else:
            produced = separate_fn(item.mixture)
            missing = [s for s in stems if s not in produced]
            if missing:
                raise EvaluationError(f"the model does not produce {', '.join(missing)}", path=item.mixture,
                                      hint=f"it produces: {', '.join(produced) or 'nothing'}")
            estimates = {s: _fit(_mono64(produced[s]), refs[s], opts.fit_length, item.mixture, f"separated '{s}'")
                         for s in stems}
        return score_speech(item.name, refs, estimates, mix, rate, permute=permute)

    results, skipped = _score_each(items, score, track_dir, settings, opts.overwrite, progress, SpeechScores)
    agg = aggregate(results, stems, SPEECH_METRICS)
    files = _write_summaries(out, folder, stems, results, agg, settings, SPEECH_METRICS)
    return EvaluationReport(folder, out, tuple(stems), results, agg, skipped, files, layout, SPEECH_METRICS)


# --- helpers -------------------------------------------------------------------------------


def _score_each(items: Sequence[Any], score: Callable[[Any], TrackScores], track_dir: Path,
                settings: Mapping[str, Any], overwrite: bool, progress: Optional[ProgressFn],
                cls: type = TrackScores) -> Tuple[List[TrackScores], List[str]]:
    """Score every item (a track, a speech file) in turn, each result written to
    <track_dir>/<name>.json as soon as it is known, so that an interrupted run resumes:
    an item whose file exists with the same settings is read back, not scored again.
    Returns (results in order, names of the items read back)."""
    results: List[TrackScores] = []
    skipped: List[str] = []
    total = len(items)
    for done, item in enumerate(items):
        json_path = track_dir / f"{item.name}.json"
        previous = None if overwrite else _load_previous(json_path, settings, cls)
        if previous is not None:
            results.append(previous)
            skipped.append(item.name)
            if progress is not None:
                progress(done + 1, total, item.name, "skipped")
            continue
        if progress is not None:
            progress(done, total, item.name, "start")
        scores = score(item)
        scores.settings = dict(settings)
        _write_json(json_path, scores.to_json())
        results.append(scores)
        if progress is not None:
            progress(done + 1, total, item.name, "scored")
    return results, skipped


def _shape(audio: np.ndarray) -> str:
    return f"{audio.shape[0]} ch x {audio.shape[1]} samples"


def _fit(est: np.ndarray, ref: np.ndarray, fit_length: bool, path: PathLike, what: str) -> np.ndarray:
    """Check an estimate `[C, T']` against its reference `[C, T]`; pad/cut T' if asked."""
    if est.ndim != 2 or est.shape[0] != ref.shape[0]:
        raise EvaluationError(
            f"{what} has shape {tuple(est.shape)}, expected {ref.shape[0]} channels x samples", path=path
        )
    if est.shape[1] != ref.shape[1]:
        if not fit_length:
            raise EvaluationError(
                f"{what} has {est.shape[1]} samples, the reference {ref.shape[1]}",
                path=path,
                hint="estimates must be as long as the references (fit_length pads or cuts them like museval)",
            )
        if est.shape[1] > ref.shape[1]:
            est = est[:, : ref.shape[1]]
        else:
            est = np.pad(est, ((0, 0), (0, ref.shape[1] - est.shape[1])))
    return est


def _load_estimates(folder: Path, stems: Sequence[str], refs: Mapping[str, np.ndarray], rate: int, fit_length: bool) -> Dict[str, np.ndarray]:
    estimates = {}
    for stem in stems:
        path = folder / f"{stem}.wav"
        audio, est_rate = read_wav(path)
        if est_rate != rate:
            raise EvaluationError(
                f"sample rate {est_rate} Hz differs from the reference's {rate} Hz",
                path=path,
                hint="estimates must be at the dataset's sample rate",
            )
        estimates[stem] = _fit(audio, refs[stem], fit_length, path, f"estimate of '{stem}'")
    return estimates


def _run_separation(separate_fn: SeparateFn, track: EvalTrack, stems: Sequence[str], refs: Mapping[str, np.ndarray], fit_length: bool) -> Dict[str, np.ndarray]:
    produced = separate_fn(track.mixture)
    missing = [s for s in stems if s not in produced]
    if missing:
        raise EvaluationError(
            f"the model does not produce stem{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
            path=track.mixture,
            hint=f"it produces: {', '.join(produced) or 'nothing'}; evaluate a subset of those stems",
        )
    return {
        s: _fit(np.asarray(produced[s], dtype=np.float64), refs[s], fit_length, track.mixture, f"separated '{s}'")
        for s in stems
    }


def _load_previous(path: Path, settings: Mapping[str, Any], cls: type = TrackScores) -> Optional[TrackScores]:
    """A track's earlier result if its file exists, parses and was made with the same settings."""
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("format") != _FORMAT_VERSION or data.get("settings") != dict(settings):
            return None
        return cls.from_json(data)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable or from another version: evaluate again


def _json_number(value: float, digits: Optional[int] = None) -> Optional[float]:
    """JSON has no NaN/inf: unscored values are written as null; optional rounding
    (museval keeps 5 decimals per window)."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits) if digits is not None else float(value)


def _from_json_number(value: Optional[float]) -> float:
    return math.nan if value is None else float(value)


def _write_atomic(path: Path, write: Callable[[Any], None], newline: Optional[str] = None) -> None:
    """Write through a temporary file in the same folder, then rename: never a half file.

    Raises EvaluationError when the file cannot be written (read-only or full disk, a folder
    in the way, ...); the results written before stay, so a later run resumes.
    """
    try:
        with atomic_path(path, suffix=".tmp") as tmp:
            with open(tmp, "w", encoding="utf-8", newline=newline) as f:
                write(f)
    except OSError as exc:
        raise EvaluationError(f"cannot write results ({exc.strerror or exc})", path=path,
                              hint="check that the output folder (-o) is writable and has free space") from exc


def _write_json(path: Path, data: Any) -> None:
    _write_atomic(path, lambda f: json.dump(data, f, indent=1, allow_nan=False))


def _write_summaries(
    out: Path,
    split: Path,
    stems: Sequence[str],
    tracks: Sequence[TrackScores],
    agg: Mapping[str, Mapping[str, Mapping[str, float]]],
    settings: Mapping[str, Any],
    metrics: Sequence[str] = TRACK_METRICS,
) -> Dict[str, Path]:
    files = {
        "summary_json": out / "summary.json",
        "summary_csv": out / "summary.csv",
        "scores_csv": out / "scores.csv",
        "tracks_dir": out / "tracks",
    }
    summary = {
        "format": _FORMAT_VERSION,
        "dataset": str(split),
        "settings": dict(settings),
        "tracks": len(tracks),
        "aggregate": {
            how: {row: {m: _json_number(v) for m, v in values.items()} for row, values in table.items()}
            for how, table in agg.items()
        },
        "per_track": {t.track: {s: {m: _json_number(v) for m, v in t.scores[s].items()} for s in stems} for t in tracks},
    }
    _write_json(files["summary_json"], summary)

    def write_scores(f: Any) -> None:
        w = csv.writer(f)
        w.writerow(["track", "stem", *metrics])
        for t in tracks:
            for s in stems:
                w.writerow([t.track, s, *(_csv_number(t.scores[s][m]) for m in metrics)])

    def write_summary(f: Any) -> None:
        w = csv.writer(f)
        w.writerow(["aggregate", "stem", *metrics])
        for how, table in agg.items():
            for row in (*stems, "overall"):
                w.writerow([how, row, *(_csv_number(table[row][m]) for m in metrics)])

    _write_atomic(files["scores_csv"], write_scores, newline="")
    _write_atomic(files["summary_csv"], write_summary, newline="")
    return files


def _csv_number(value: float) -> str:
    return "" if not math.isfinite(value) else f"{value:.4f}"


__all__ = [
    "LAYOUTS",
    "SPEECH_METRICS",
    "SpeechItem",
    "SpeechScores",
    "best_permutation",
    "detect_layout",
    "find_speech_items",
    "reference_stems",
    "score_speech",
    "EvalOptions",
    "EvalTrack",
    "EvaluationReport",
    "ProgressFn",
    "SeparateFn",
    "TrackScores",
    "aggregate",
    "evaluate",
    "find_tracks",
    "load_references",
    "read_wav",
    "score_track",
]
