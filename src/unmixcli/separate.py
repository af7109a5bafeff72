"""Separating files: plan the outputs, decode, run the engine, write the stems.

One track goes through three passes so that memory stays flat and nothing that
looks finished is written before the track is done:

1. decode the input once at the model's rate into a float32 scratch file, and
   gather the whole-track statistics the engine normalises with (a file that
   cannot be decoded fails here, before any model work);
2. stream the scratch mix through the engine; separated stems go to scratch
   files while the peak is tracked;
3. encode each stem from scratch with one gain shared by all stems (so they
   still sum to the mix), each written atomically by `audio.AudioWriter`.

Scratch files live in a private temporary folder that is removed whatever
happens. This module knows nothing about the command line: it reports through
an event callback and raises `UnmixError`s.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from . import audio, nistems
from . import remux as remuxing
from . import tags as tagging
from .checks import is_whole
from .errors import AudioDecodeError, AudioEncodeError, UnmixError, UsageError

DEFAULT_TEMPLATE = "{model}/{dir}/{track}/{stem}.{ext}"
TEMPLATE_FIELDS = ("track", "stem", "model", "ext", "dir")
CLIP_MODES = ("rescale", "clamp", "none")
INSTRUMENTAL_MODES = ("residual", "sum")
INSTRUMENTAL = "instrumental"

# Extensions picked up when walking a folder. Files named explicitly are always tried.
MEDIA_EXTENSIONS = frozenset(
    ".wav .wave .aif .aiff .aifc .flac .mp3 .mp2 .ogg .oga .opus .m4a .aac .alac .wma .wv .ape "
    ".mka .mp4 .m4v .mkv .webm .mov .avi .caf .ac3 .dts .amr .3gp".split()
)

# Frames per block when moving audio between scratch files and encoders.
IO_BLOCK = 1 << 16


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class OutputOptions:
    """Where and how stems are written; checked when made (`UsageError`).

    `sample_rate` is "model" (the model's rate), "keep" (the input's rate) or a
    number of Hz (an int, or a string of digits as the command line gives it).
    `bit_depth` None means 24 for WAV/FLAC (the stems are float inside; 24 bits
    keeps their quality, 32 writes float WAV). `bitrate` is in bits per second,
    for the lossy formats only. `fmt` "stems" (alias "stem.mp4") writes one NI Stems
    file per track (nistems.py): AAC at `bitrate`, or ALAC when `bit_depth` is given.
    `tags` copies the input's tags and cover art onto every stem (tags.py).
    `remux` also writes, for each video input, a copy of the video with one stem in place of
    its audio track (remux.py; which stem: `remux.remux_stem`), beside the stems as
    `<track>.<the input's extension>` (with a custom --filename, the template with stem "remux").
    """

    out_dir: Path = Path("separated")
    template: str = DEFAULT_TEMPLATE
    fmt: str = "wav"
    bit_depth: Optional[int] = None
    bitrate: Optional[int] = None
    sample_rate: object = "model"
    clip: str = "rescale"
    overwrite: bool = False
    tags: bool = True
    remux: bool = False

    def __post_init__(self) -> None:
        # Accept str paths from API users; everything below relies on Path.
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        if self.fmt in nistems.ALIASES:
            object.__setattr__(self, "fmt", nistems.FORMAT)
        object.__setattr__(self, "sample_rate", _parse_rate(self.sample_rate))
        self._check()

    def validate(self) -> None:
        """Check the options again (they were checked when made); kept for API callers."""
        self._check()

    def _check(self) -> None:
        if self.fmt not in audio.FORMATS + (nistems.FORMAT,):
            raise UsageError(f"unknown output format {self.fmt!r}",
                             hint=f"use one of: {', '.join(audio.FORMATS + (nistems.FORMAT,))}")
        if self.clip not in CLIP_MODES:
            raise UsageError(f"unknown clip mode {self.clip!r}", hint=f"use one of: {', '.join(CLIP_MODES)}")
        check_template(self.template)
        if self.remux and self.fmt == nistems.FORMAT:
            raise UsageError("--remux cannot be combined with -f stems",
                             hint="write the stems in another format (-f wav) to remux a video")
        depths = {"wav": (16, 24, 32), "flac": (16, 24), nistems.FORMAT: (16, 24)}.get(self.fmt, ())
        if self.bit_depth is not None and (not is_whole(self.bit_depth) or self.bit_depth not in depths):
            raise UsageError(
                f"{self.fmt} cannot be written with --bit-depth {self.bit_depth}",
                hint=f"use one of {', '.join(map(str, depths))}" if depths else "use --bitrate for lossy formats",
            )
        if self.bitrate is not None:
            if self.fmt == nistems.FORMAT and self.bit_depth is not None:
                raise UsageError("--bitrate and --bit-depth cannot be combined for stems",
                                 hint="--bit-depth writes ALAC (lossless); --bitrate sets the AAC bitrate")
            if depths and self.fmt != nistems.FORMAT:
                raise UsageError(f"--bitrate does not apply to {self.fmt}", hint="use --bit-depth for wav/flac")
            if not is_whole(self.bitrate) or not MIN_BITRATE <= self.bitrate <= MAX_BITRATE:
                shown = f"{self.bitrate / 1000:g} kbit/s" if is_whole(self.bitrate) else repr(self.bitrate)
                raise UsageError(f"invalid bitrate {shown}",
                                 hint=f"use {MIN_BITRATE // 1000} to {MAX_BITRATE // 1000} kbit/s, e.g. --bitrate 320")

    @property
    def effective_bit_depth(self) -> Optional[int]:
        if self.bit_depth is None and self.fmt in ("wav", "flac"):
            return 24
        return self.bit_depth


# Bitrates (bits per second) the lossy encoders take: Opus 6-510 kbit/s is the widest
# range of the three; an encoder picks its nearest supported rate inside it.
MIN_BITRATE = 6_000
MAX_BITRATE = 510_000


def _parse_rate(value):
    """'model', 'keep', or a positive whole number of Hz (int or digits) -> 'model' | 'keep' | int."""
    if value in ("model", "keep"):
        return value
    rate = value
    if isinstance(value, str) and value.strip().isdigit():
        rate = int(value.strip())
    if not is_whole(rate) or not MIN_RATE <= rate <= MAX_RATE:
        raise UsageError(f"invalid sample rate {str(value)!r}",
                         hint=f"use 'model', 'keep' or a rate from {MIN_RATE} to {MAX_RATE} Hz such as 48000")
    return int(rate)


# Output rates in Hz: nothing below 1 kHz is useful audio; 768 kHz is the highest rate of common converters.
MIN_RATE = 1_000
MAX_RATE = 768_000


@dataclass(frozen=True)
class StemRequest:
    """Which stems to write. `stems` None = all of the model's stems.

    With `karaoke`, the outputs are vocals and an instrumental: the mix minus
    the vocals ("residual", only the vocals are computed) or the sum of the
    other stems ("sum").
    """

    stems: Optional[Tuple[str, ...]] = None
    karaoke: bool = False
    instrumental: str = "residual"

    def __post_init__(self) -> None:
        if self.instrumental not in INSTRUMENTAL_MODES:
            raise UsageError(f"unknown instrumental mode {self.instrumental!r}", hint="use 'residual' or 'sum'")

    def needed(self) -> Optional[Tuple[str, ...]]:
        """The stems the model must give, where that is known before it is loaded (None: all).

        Passed to `families.load_model`, so that a family whose stems are separate networks
        (Open-Unmix) loads only those, as `umx --targets` does.
        """
        if self.karaoke:
            return ("vocals",) if self.instrumental == "residual" else None
        return tuple(dict.fromkeys(self.stems)) if self.stems else None

    def resolve(self, model_stems: Sequence[str]) -> Tuple[List[str], List[str]]:
        """(stems the engine must compute, stems written to disk), validated against the model."""
        model_stems = list(model_stems)
        if self.karaoke:
            if self.stems:
                raise UsageError("--karaoke and --stems cannot be combined", hint="--karaoke writes vocals + instrumental")
            if "vocals" not in model_stems:
                raise UsageError(
                    f"--karaoke needs a model with a 'vocals' stem; this one has {', '.join(model_stems)}"
                )
            if self.instrumental == "sum" and len(model_stems) < 2:
                # A vocals-only model has no other stems to add up.
                raise UsageError("--instrumental sum needs a model with stems besides vocals",
                                 hint="use --instrumental residual (mix minus vocals) with this model")
            compute = ["vocals"] if self.instrumental == "residual" else model_stems
            return compute, ["vocals", INSTRUMENTAL]
        if not self.stems:
            return model_stems, model_stems
        unknown = [s for s in self.stems if s not in model_stems]
        if unknown:
            raise UsageError(
                f"unknown stem {', '.join(map(repr, unknown))}",
                hint=f"this model produces: {', '.join(model_stems)}",
            )
        wanted = list(dict.fromkeys(self.stems))  # de-duplicated, in the order asked
        return wanted, wanted


# --------------------------------------------------------------------------- planning


@dataclass
class Job:
    """One input file and the stem files it will produce."""

    input: Path
    track: str
    rel_dir: str
    outputs: Dict[str, Path]
    skip: bool = False
    error: Optional[UnmixError] = None  # known to fail before any work (e.g. the path does not exist)

    @property
    def display(self) -> str:
        return str(self.input)


def check_template(template: str) -> None:
    names = set(re.findall(r"{(\w*)[^}]*}", template))
    unknown = names - set(TEMPLATE_FIELDS)
    if unknown:
        raise UsageError(
            f"unknown field {{{sorted(unknown)[0]}}} in --filename template",
            hint=f"fields: {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}",
        )
    if "stem" not in names:
        raise UsageError("the --filename template must contain {stem}", hint=f"default: {DEFAULT_TEMPLATE}")
    if os.path.isabs(template) or ".." in Path(template).parts:
        raise UsageError("the --filename template must be a relative path inside the output folder")
    try:  # what the regular expression cannot see: a lone brace, a bad conversion or format spec
        template.format(**{name: "x" for name in TEMPLATE_FIELDS})
    except (ValueError, IndexError, KeyError, AttributeError) as exc:
        raise UsageError(f"the --filename template is not valid ({exc})",
                         hint="write fields as {track}, {stem}, ...; a literal brace as {{ or }}") from None


_UNSAFE = re.compile(r"[\x00-\x1f/\\]")


def safe_component(name: str) -> str:
    """A file-name component that cannot leave its folder: no separators, no '..', not empty."""
    name = _UNSAFE.sub("_", name).strip()
    if name in ("", ".", ".."):
        name = name.replace(".", "_") or "_"
    return name


def render_output(template: str, out_dir: Path, *, track: str, stem: str, model: str, ext: str, rel_dir: str) -> Path:
    """The output path for one stem; every value is sanitised, and the result stays inside out_dir."""
    dir_value = "/".join(safe_component(p) for p in Path(rel_dir).parts) if rel_dir else ""
    text = template.format(
        track=safe_component(track),
        stem=safe_component(stem),
        model=safe_component(model),
        ext=ext,
        dir=dir_value,
    )
    parts = [p for p in text.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise UsageError(f"--filename template gives an invalid path {text!r}")
    path = out_dir.joinpath(*parts)
    root = os.path.abspath(out_dir)
    if os.path.commonpath([root, os.path.abspath(path)]) != root:  # belt and braces
        raise UsageError(f"output path {path} would leave the output folder {out_dir}")
    return path


def expand_inputs(inputs: Sequence[str], missing: Optional[List[str]] = None,
                  exclude: Optional[Path] = None) -> List[Tuple[Path, str]]:
    """Files to process, each with its folder relative to the input folder it came from ('' for files).

    Folders are walked recursively (symbolic-link loops are cut); only media
    extensions are taken from folders; globs are expanded; a path that does not
    exist raises AudioDecodeError, or is appended to `missing` when a list is
    given (so that one mistyped path does not stop a batch). A walk does not
    enter `exclude` (the output folder, when it lies inside an input folder:
    stems written there are not inputs of the next run).
    """
    found: List[Tuple[Path, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.extend(_walk_media(path, exclude))
        elif path.exists() or os.path.islink(item):
            found.append((path, ""))
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise UsageError(f"{item}: no file matches this pattern")
            for m in matches:
                mp = Path(m)
                found.extend(_walk_media(mp, exclude) if mp.is_dir() else [(mp, "")])
        elif missing is not None:
            missing.append(item)
        else:
            raise AudioDecodeError("no such file or folder", path=item, hint="check the path")
    # The same file given twice (e.g. a file and its folder) is processed once.
    seen, unique = set(), []
    for path, rel in found:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            unique.append((path, rel))
    return unique


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _walk_media(root: Path, exclude: Optional[Path] = None) -> List[Tuple[Path, str]]:
    """Media files under `root`, never outside it.

    Folder links are followed only when they lead to a folder inside `root` (each folder is
    visited once, whichever way it is reached). A link out of the tree (e.g. `..` at the top,
    which would separate the whole parent tree) is skipped with a warning naming it; a loop
    back up to a folder inside the tree that is being walked is cut quietly.
    """
    out: List[Tuple[Path, str]] = []
    visited = set()
    top = os.path.realpath(root)
    skip = os.path.realpath(exclude) if exclude is not None else None
    if skip is not None and _inside(top, skip):
        skip = None  # the user pointed into the output tree on purpose
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited or (skip is not None and _inside(real, skip)):
            # A folder reached twice (two links to it), or our own output folder.
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = [d for d in sorted(dirnames) if _may_enter(Path(dirpath) / d, real, top, root)]
        rel = os.path.relpath(dirpath, root)
        rel = "" if rel == "." else rel
        for name in sorted(filenames):
            if Path(name).suffix.lower() in MEDIA_EXTENSIONS and not name.startswith("."):
                out.append((Path(dirpath) / name, rel))
    return out


def _may_enter(folder: Path, parent_real: str, top: str, root: Path) -> bool:
    """Whether the walk goes into `folder` (a sub-folder of one being walked, `parent_real`)."""
    if not os.path.islink(folder):
        return True  # a plain sub-folder is inside the tree by construction
    target = os.path.realpath(folder)
    if not _inside(target, top):
        # Up past the top (e.g. `..` at the top: the whole parent tree) or elsewhere.
        warnings.warn(f"{folder}: folder link skipped: it leads outside {root} (to {target})",
                      RuntimeWarning, stacklevel=2)
        return False
    # Inside the tree. A loop back up to a folder being walked adds nothing (its files are
    # being collected already): cut quietly. Any other linked folder is visited once.
    return not _inside(parent_real, target)


def plan(
    inputs: Sequence[str],
    *,
    model_name: str,
    output_stems: Sequence[str],
    output: OutputOptions,
) -> List[Job]:
    """Expand inputs and decide every output path; mark tracks whose stems all exist as skipped.

    Two inputs that would write the same file (e.g. `song.mp3` and `song.wav`)
    are told apart by adding the input's extension to the later track's name,
    so nothing is ever overwritten by another input of the same run.
    """
    jobs: List[Job] = []
    missing: List[str] = []
    expanded = expand_inputs(inputs, missing, exclude=Path(output.out_dir))
    if output.remux:
        # Said before any work: remuxing an audio file has no meaning, in a batch as alone.
        for path, _ in expanded:
            if not remuxing.can_remux(path):
                raise UsageError(f"--remux needs a video input: {path} has no video stream, or is not one of "
                                 f"{', '.join(sorted(remuxing.VIDEO_SUFFIXES))}",
                                 hint="drop --remux for audio files, or give only video files")
    # Paths that do not exist fail on their own, first (a typo is reported at once), and the batch goes on.
    for item in missing:
        error = AudioDecodeError("no such file or folder", path=item, hint="check the path")
        jobs.append(Job(input=Path(item), track=Path(item).stem, rel_dir="", outputs={}, error=error))
    assigned = _assign_outputs(expanded, output, model_name, output_stems)
    # Stems of an earlier run found among the inputs (e.g. `-o` is the input folder itself)
    # are outputs of this run, never inputs: drop them and plan again without them.
    produced = {os.path.realpath(p) for _, _, _, outputs in assigned for p in outputs.values()}
    kept = [(path, rel) for path, rel in expanded if os.path.realpath(path) not in produced]
    if len(kept) != len(expanded):
        assigned = _assign_outputs(kept, output, model_name, output_stems)
    for path, rel, track, outputs in assigned:
        skip = not output.overwrite and all(p.is_file() and p.stat().st_size > 0 for p in outputs.values())
        jobs.append(Job(input=path, track=track, rel_dir=rel, outputs=outputs, skip=skip))
    return jobs


def plan_request(
    inputs: Sequence[str], *, model_name: str, sources: Sequence[str], request: StemRequest, output: OutputOptions
) -> List[Job]:
    """`plan` for what a stem request writes with a model producing `sources`."""
    _, written = request.resolve(sources)
    return plan(list(inputs), model_name=model_name, output_stems=written, output=output)


def _assign_outputs(
    expanded: Sequence[Tuple[Path, str]], output: OutputOptions, model_name: str, output_stems: Sequence[str]
) -> List[Tuple[Path, str, str, Dict[str, Path]]]:
    """(input, rel_dir, track name, {stem: output path}) for each input, collisions resolved in order."""
    taken: Dict[Path, Path] = {}
    assigned = []
    for path, rel in expanded:
        track = path.stem if path.suffix else path.name
        suffix = path.suffix.lower()
        outputs = _outputs_for(output, model_name, output_stems, track, rel, suffix)
        if any(p in taken for p in outputs.values()):
            track = f"{track}_{path.suffix.lstrip('.') or 'file'}"
            outputs = _outputs_for(output, model_name, output_stems, track, rel, suffix)
            n = 2
            while any(p in taken for p in outputs.values()):
                outputs = _outputs_for(output, model_name, output_stems, f"{track}_{n}", rel, suffix)
                n += 1
        for p in outputs.values():
            taken[p] = path
        if len(set(outputs.values())) != len(outputs):
            raise UsageError("the --filename template gives every stem the same file name", hint="include {stem}")
        assigned.append((path, rel, track, outputs))
    return assigned


def _outputs_for(output: OutputOptions, model: str, stems: Sequence[str], track: str, rel: str,
                 suffix: str = "") -> Dict[str, Path]:
    if output.remux and suffix in remuxing.VIDEO_SUFFIXES:
        outputs = _outputs_for(dataclasses.replace(output, remux=False), model, stems, track, rel)
        # Beside the stems: `<track>/<track>.mp4` by default.
        template = "{model}/{dir}/{track}/{track}.{ext}" if output.template == DEFAULT_TEMPLATE else output.template
        outputs[remuxing.REMUX_KEY] = render_output(template, output.out_dir, track=track, stem=remuxing.REMUX_KEY,
                                                    model=model, ext=suffix.lstrip("."), rel_dir=rel)
        return outputs
    if output.fmt == nistems.FORMAT:
        # One file holds every stem: by default `<track>.stem.mp4` where the track's folder would be.
        template = "{model}/{dir}/{track}.{ext}" if output.template == DEFAULT_TEMPLATE else output.template
        return {nistems.OUTPUT_KEY: render_output(template, output.out_dir, track=track, stem=nistems.OUTPUT_KEY,
                                                  model=model, ext=nistems.EXTENSION, rel_dir=rel)}
    return {
        s: render_output(output.template, output.out_dir, track=track, stem=s, model=model, ext=output.fmt, rel_dir=rel)
        for s in stems
    }


# --------------------------------------------------------------------------- scratch audio


class _Scratch:
    """An append-only float32 audio file `[C, T]` in a scratch folder, read back block by block."""

    def __init__(self, path: Path, channels: int):
        self.path = path
        self.channels = channels
        self.frames = 0
        self._fh = open(path, "wb")

    def append(self, block: np.ndarray) -> None:
        """block: [C, t]; stored interleaved ([t, C] rows)."""
        block = np.asarray(block, dtype=np.float32)
        self._fh.write(np.ascontiguousarray(block.T).tobytes())
        self.frames += block.shape[1]

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def blocks(self, size: int = IO_BLOCK) -> Iterator[np.ndarray]:
        """Yields [C, t] blocks, in order."""
        self.close()
        with open(self.path, "rb") as fh:
            while True:
                raw = np.fromfile(fh, dtype=np.float32, count=size * self.channels)
                if raw.size == 0:
                    return
                yield raw.reshape(-1, self.channels).T  # [t, C] -> [C, t]


class _Cursor:
    """Reads exactly n frames at a time from a block iterator (aligns the mix with engine output)."""

    def __init__(self, blocks: Iterator[np.ndarray], channels: int):
        self._it = blocks
        self._buf = np.zeros((channels, 0), dtype=np.float32)

    def read(self, n: int) -> np.ndarray:
        while self._buf.shape[1] < n:
            nxt = next(self._it, None)
            if nxt is None:
                raise RuntimeError("mix scratch ended before the separated output")  # a bug, not a user error
            self._buf = np.concatenate([self._buf, nxt], axis=1)
        out, self._buf = self._buf[:, :n], self._buf[:, n:]
        return out


@dataclass
class MixStats:
    """Whole-track statistics of the mono mix, as the reference command line normalises with."""

    frames: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    finite: bool = True

    def update(self, block: np.ndarray) -> None:
        if not np.isfinite(block).all():
            self.finite = False  # the caller gives up on the track; sums of inf would only warn
            return
        mono = block.mean(axis=0, dtype=np.float64)
        self.frames += mono.size
        self.total += float(mono.sum())
        self.total_sq += float(np.dot(mono, mono))

    def mean_std(self, rule: str = "demucs") -> Tuple[float, float]:
        """As `engine.mix_stats` with `rule`: the Demucs recipe takes the unbiased std, MSST's the
        population std (`engine.std_by_rule` then adds its guard)."""
        from . import engine  # torch is imported only when work is done

        if self.frames == 0:
            return 0.0, 1.0
        mean = self.total / self.frames
        dof = max(self.frames - 1, 1) if rule == "demucs" else self.frames
        var = (self.total_sq - self.frames * mean * mean) / dof
        return mean, engine.std_by_rule(math.sqrt(max(var, 0.0)), rule)


# --------------------------------------------------------------------------- one track


@dataclass(frozen=True)
class Runtime:
    """What separating needs besides the file: the model bag, device and engine options."""

    bag: object  # models.bag.ModelBag
    device: object  # torch.device
    options: object  # engine.EngineOptions
    model_name: str


ProgressFn = Callable[[str, float, Optional[float]], None]  # (stage, done seconds, total seconds)


@dataclass
class TrackResult:
    job: Job
    status: str  # "done", "skipped", "failed"
    outputs: Dict[str, Path] = field(default_factory=dict)
    duration: float = 0.0  # seconds of audio
    elapsed: float = 0.0  # wall seconds
    error: Optional[UnmixError] = None


def separate_track(
    job: Job,
    runtime: Runtime,
    request: StemRequest,
    output: OutputOptions,
    progress: Optional[ProgressFn] = None,
    scratch_root: Optional[str] = None,
) -> TrackResult:
    """Separate one input file into its stem files (see the module docstring for the passes)."""
    from . import engine  # torch is imported only when work is done

    bag = runtime.bag
    model_sr, channels = bag.samplerate, bag.audio_channels
    compute, written = request.resolve(bag.sources)
    t0 = time.monotonic()
    report = progress or (lambda stage, done, total: None)
    scratch = _new_scratch(scratch_root)
    finished = False
    written_now: List[Path] = []  # stems this call put in place: a failed track keeps none of them
    try:
        # Pass 1: decode at the model's rate; statistics for normalisation; exact length.
        stats = MixStats()
        mix = _Scratch(scratch / "mix.f32", channels)
        with audio.AudioReader(job.input, sample_rate=model_sr, channels=channels) as reader:
            info = reader.info
            in_rate = info.sample_rate
            total_s = info.duration if info.duration and info.duration > 0 else None
            for block in reader:
                stats.update(block)
                if not stats.finite:  # no need to decode the rest of a long file
                    raise AudioDecodeError(
                        "the audio contains NaN or infinite samples", path=job.input,
                        hint="the file is damaged or was written by a faulty program; re-export it")
                mix.append(block)
                report("decode", mix.frames / model_sr, total_s)
        mix.close()
        if mix.frames == 0:
            raise AudioDecodeError("the file contains no audio samples", path=job.input)
        duration = mix.frames / model_sr

        # Pass 2: separate, streaming; keep each written stem in scratch and track the peak.
        stem_files = {s: _Scratch(scratch / f"{i}.f32", channels) for i, s in enumerate(written)}
        peak = 0.0
        cursor = _Cursor(mix.blocks(), channels) if request.karaoke else None
        done = 0

        def on_progress(done_frames: int, total_frames: Optional[int]) -> None:
            report("separate", done_frames / model_sr, duration)

        stream = engine.separate_stream(
            bag,
            mix.blocks(),
            total_frames=mix.frames,
            stems=compute,
            options=runtime.options,
            device=runtime.device,
            progress=on_progress,
            stats=stats.mean_std,
        )
        for out in stream:
            parts = {s: _to_numpy(t) for s, t in out.items()}
            n = next(iter(parts.values())).shape[1]
            if request.karaoke:
                mix_block = cursor.read(n)
                if request.instrumental == "residual":
                    inst = mix_block - parts["vocals"]
                else:
                    inst = sum(v for s, v in parts.items() if s != "vocals")
                parts = {"vocals": parts["vocals"], INSTRUMENTAL: inst}
            for s in written:
                block = parts[s]
                if not np.isfinite(block).all():
                    raise UnmixError(
                        "the model produced NaN or infinite samples",
                        path=job.input,
                        hint="try --precision fp32, or report the model and file",
                    )
                peak = max(peak, float(np.abs(block).max(initial=0.0)))
                stem_files[s].append(block)
            done += n
        if done != mix.frames:
            raise RuntimeError(f"engine returned {done} frames for {mix.frames}")  # a bug, not a user error

        # Pass 3: encode with one shared gain, each stem written atomically (tagged before its rename).
        gain = 1.0 / peak if (output.clip == "rescale" and peak > 1.0) else 1.0
        out_rate = _output_rate(output.sample_rate, model_sr, in_rate)
        target_frames = _target_frames(mix.frames, model_sr, out_rate, info)
        total_write = len(written) * duration
        track_tags = tagging.read_tags(job.input) if output.tags else None  # None: untagged
        if output.fmt == nistems.FORMAT:
            _write_ni_stems(job, mix, stem_files, written, output, model_sr, out_rate, target_frames, channels,
                            None if track_tags is None else track_tags.for_stem(None, job.track))
            written_now.append(job.outputs[nistems.OUTPUT_KEY])
            report("write", total_write, total_write)
        per_file = [] if output.fmt == nistems.FORMAT else written  # stems written one file each
        for i, stem in enumerate(per_file):
            path = job.outputs[stem]
            path.parent.mkdir(parents=True, exist_ok=True)
            blocks = _finalise_blocks(stem_files[stem].blocks(), gain, output.clip)
            if out_rate != model_sr:
                blocks = _resampled(blocks, model_sr, out_rate, channels, target_frames)
            finish = None
            if track_tags is not None:
                stem_tags = track_tags.for_stem(stem, job.track)
                finish = lambda tmp, t=stem_tags: tagging.write_tags(tmp, output.fmt, t)  # noqa: E731
            with audio.AudioWriter(
                path, out_rate, channels, fmt=output.fmt, bit_depth=output.effective_bit_depth, bitrate=output.bitrate,
                finish=finish,
            ) as writer:
                for block in blocks:
                    writer.write(block)
            written_now.append(path)
            report("write", (i + 1) * duration, total_write)
        if remuxing.REMUX_KEY in job.outputs:
            # The video with the chosen stem as its audio, at the stems' gain (atomic, like them).
            stem = remuxing.remux_stem(written, request.stems, request.karaoke)
            remux_path = job.outputs[remuxing.REMUX_KEY]
            remuxing.remux(job.input, remux_path, _finalise_blocks(stem_files[stem].blocks(), gain, output.clip),
                           model_sr, frames=mix.frames, bitrate=output.bitrate)
            written_now.append(remux_path)
        # "done" promises every stem is on disk: the output folder may have been moved or deleted meanwhile.
        gone = [p for p in job.outputs.values() if not p.is_file()]
        if gone:
            raise AudioEncodeError("stem file disappeared while the track was being written", path=gone[0],
                                   hint="was the output folder moved or deleted? run again to redo the track")
        finished = True
        return TrackResult(job, "done", dict(job.outputs), duration, time.monotonic() - t0)
    except OSError as err:
        # Disk full, folder vanished, permission denied... while writing scratch or output.
        raise AudioEncodeError(f"cannot write: {err.strerror or err}", path=getattr(err, "filename", None) or job.input)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if not finished:
            _discard_partial_track(written_now, {p.parent for p in job.outputs.values()})


def _write_ni_stems(job: Job, mix: "_Scratch", stem_files: Dict[str, "_Scratch"], written: Sequence[str],
                    output: OutputOptions, model_sr: int, out_rate: int, target_frames: int, channels: int,
                    track_tags) -> None:
    """The track's one NI Stems file: the mix and the four slots, AAC or ALAC (nistems.py)."""
    path = job.outputs[nistems.OUTPUT_KEY]
    path.parent.mkdir(parents=True, exist_ok=True)
    mapping = nistems.slot_map(written)

    def composed() -> Iterator[np.ndarray]:  # [10, t] blocks: (mix, drums, bass, other, vocals) x stereo
        return nistems.compose(mix.blocks(), {s: stem_files[s].blocks() for s in written}, mapping, channels)

    # One gain for all five streams (the mix and a summed 'other' slot included), so the stems still add up
    # to the master; a pre-pass over the scratch files finds their peak.
    peak = max((float(np.abs(b).max(initial=0.0)) for b in composed()), default=0.0)
    gain = 1.0 / peak if (output.clip == "rescale" and peak > 1.0) else 1.0
    blocks = _finalise_blocks(composed(), gain, output.clip)
    if out_rate != model_sr:
        blocks = _resampled(blocks, model_sr, out_rate, nistems.CHANNELS, target_frames)
    codec = "alac" if output.bit_depth is not None else "aac"
    with nistems.StemsWriter(path, out_rate, codec=codec, bitrate=output.bitrate, bit_depth=output.bit_depth,
                             tags=track_tags) as writer:
        for block in blocks:
            writer.write(block)


def _discard_partial_track(stems: Sequence[Path], folders) -> None:
    """A track that failed or was interrupted is all or nothing: remove the stems written for it
    in this run, then its output folders if that leaves them empty (best effort)."""
    for path in stems:
        try:
            path.unlink()
        except OSError:
            pass
    for folder in folders:
        try:
            folder.rmdir()  # fails unless empty: finished stems of an earlier run are never touched
        except OSError:
            pass


# Scratch folders record who made them, so that a later run can remove those of a
# process that was killed outright (SIGKILL, the OOM killer, a power cut), which
# had no chance to clean up; a long track leaves gigabytes there.
_SCRATCH_PREFIX = "unmix-"
_SCRATCH_OWNER = "owner"


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return "-"


def _new_scratch(root: Optional[str]) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=_SCRATCH_PREFIX, dir=root))
    (folder / _SCRATCH_OWNER).write_text(f"{os.getpid()} {_boot_id()}\n")
    return folder


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, under another user
        return True
    return True


def remove_stale_scratch(root: Optional[str] = None) -> int:
    """Delete scratch folders left by runs that died without cleaning up; returns how many.

    Only folders with an owner record are touched, and only when that process no
    longer runs (or ran before the last reboot). Best effort: errors are ignored.
    """
    base = Path(root or tempfile.gettempdir())
    removed = 0
    boot = _boot_id()
    try:
        candidates = list(base.glob(_SCRATCH_PREFIX + "*"))
    except OSError:
        return 0
    for folder in candidates:
        try:
            pid_text, owner_boot = (folder / _SCRATCH_OWNER).read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            continue  # not ours, or being created right now
        if owner_boot == boot and _process_alive(pid):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed += not folder.exists()
    return removed


def _to_numpy(t) -> np.ndarray:
    return t.detach().to("cpu").float().numpy() if hasattr(t, "detach") else np.asarray(t, dtype=np.float32)


def _finalise_blocks(blocks: Iterator[np.ndarray], gain: float, clip: str) -> Iterator[np.ndarray]:
    for block in blocks:
        if gain != 1.0:
            block = block * np.float32(gain)
        if clip == "clamp":
            block = np.clip(block, -1.0, 1.0)
        yield block


def _resampled(blocks: Iterator[np.ndarray], sr_in: int, sr_out: int, channels: int, frames: int) -> Iterator[np.ndarray]:
    """Stream [C, t] blocks through the band-limited resampler, giving exactly `frames` samples."""
    rs = audio.Resampler(sr_in, sr_out, channels)
    emitted = 0

    def fit(block: np.ndarray) -> np.ndarray:
        nonlocal emitted
        block = block[:, : max(frames - emitted, 0)]
        emitted += block.shape[1]
        return block

    for block in blocks:
        yield fit(rs.process(block))
    yield fit(rs.flush())
    if emitted < frames:  # the input's own length can exceed the round trip by a sample
        yield np.zeros((channels, frames - emitted), dtype=np.float32)


def _output_rate(choice, model_sr: int, in_rate: int) -> int:
    if choice == "model":
        return model_sr
    if choice == "keep":
        return int(in_rate)
    return int(choice)


def _target_frames(model_frames: int, model_sr: int, out_rate: int, info) -> int:
    """Stem length at the output rate: the input's own length when writing at its rate."""
    if out_rate == model_sr:
        return model_frames
    if info.sample_rate == out_rate and info.frames:
        return int(info.frames)
    return int(round(model_frames * out_rate / model_sr))


# --------------------------------------------------------------------------- batches


@dataclass
class Event:
    """What the batch runner reports: kind is start | progress | done | skipped | failed."""

    kind: str
    job: Job
    index: int
    count: int
    stage: str = ""
    done: float = 0.0
    total: Optional[float] = None
    result: Optional[TrackResult] = None


def run_batch(
    jobs: Sequence[Job],
    runtime: Runtime,
    request: StemRequest,
    output: OutputOptions,
    on_event: Callable[[Event], None] = lambda e: None,
) -> List[TrackResult]:
    """Separate every job; a bad file is reported and the batch goes on.

    KeyboardInterrupt (Ctrl-C, or SIGTERM turned into it by the CLI) stops the
    batch at once: the current track's scratch and temporary files, and the
    stems it had already written, are removed on the way out; finished tracks stay.
    """
    results: List[TrackResult] = []
    count = len(jobs)
    remove_stale_scratch()
    for index, job in enumerate(jobs):
        if job.error is not None:
            res = TrackResult(job, "failed", error=job.error)
            results.append(res)
            on_event(Event("failed", job, index, count, result=res))
            continue
        if job.skip:
            res = TrackResult(job, "skipped", dict(job.outputs))
            results.append(res)
            on_event(Event("skipped", job, index, count, result=res))
            continue
        on_event(Event("start", job, index, count))

        def progress(stage: str, done: float, total: Optional[float], job=job, index=index) -> None:
            on_event(Event("progress", job, index, count, stage=stage, done=done, total=total))

        res = run_job(job, runtime, request, output, progress)
        results.append(res)
        on_event(Event(res.status if res.status != "done" else "done", job, index, count, result=res))
    return results


def run_job(
    job: Job,
    runtime: Runtime,
    request: StemRequest,
    output: OutputOptions,
    progress: Optional[ProgressFn] = None,
    scratch_root: Optional[str] = None,
) -> TrackResult:
    """`separate_track` as a batch runs it (here and on Ray's workers, raybatch.py): a bad file
    or an unforeseen error becomes a "failed" result naming the file, so the batch goes on."""
    try:
        return separate_track(job, runtime, request, output, progress, scratch_root)
    except UnmixError as err:
        if err.path is None:
            err = type(err)(err.message, path=job.input, hint=err.hint)
        return TrackResult(job, "failed", error=err)
    except Exception as exc:  # noqa: BLE001 - a bug or an unforeseen failure must not end a long batch
        err = UnmixError(f"unexpected error ({type(exc).__name__}: {exc})", path=job.input,
                         hint="please report this, with the output of --verbose")
        err.__cause__ = exc
        return TrackResult(job, "failed", error=err)
