"""Separating a batch as a Ray Data job: `unmix INPUT... --ray auto|ADDRESS` (extra `unmixcli[ray]`).

The driver plans the batch exactly as a local run does (`separate.plan`: the same
output names, the same resume rule), then hands the tracks still to do to Ray:

    ray.data.from_items(one row per track)               # one block per track
      .map_batches(_TrackWorker, batch_size=1,           # an actor pool; each actor loads
                   compute=ActorPoolStrategy(...),       # the model once
                   num_gpus=1 | num_cpus=threads,
                   max_restarts=-1, max_task_retries=N)

Each actor runs `separate.run_job`, the local batch's own per-track function, so
stems are written by the same atomic writer and a bad file comes back as a
"failed" record instead of an exception (the job goes on, Ray retries nothing).
Only a worker that dies (killed, out of memory, node lost) makes Ray restart the
actor and run the track again, up to `task_retries` times; a track that exhausts
them is dropped by Ray (`DataContext.max_errored_blocks = -1`) and recorded here
as failed. There is no scheduler or retry loop of our own.

Inputs and outputs must be on a filesystem every node sees at the same path
(NFS, a mounted bucket); paths are made absolute before they are shipped.
One record per track (status, outputs, duration, seconds, error) is written to
`<out>/manifest.jsonl` when the job ends, whether it ends well or not.

Ray is imported only here, and only when a Ray batch runs.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from . import atomic, errors
from .errors import UnmixError, UsageError
from .separate import Event, Job, OutputOptions, StemRequest, TrackResult, _discard_partial_track

MANIFEST = "manifest.jsonl"
# Attempts after the first when the worker running a track dies. A track that kills its worker
# every time (it runs out of memory, say) must not be tried forever, as Ray's default would.
TASK_RETRIES = 2
RAY_HINT = 'install the Ray extra: pip install "unmixcli[ray]"'
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class RayOptions:
    """How the batch runs on Ray; checked when made (`UsageError`).

    `address` "auto" connects to the cluster Ray finds (RAY_ADDRESS, or one started with
    `ray start` on this machine) and starts a local one when there is none; anything else is
    given to `ray.init(address=...)` (`host:6379`, `ray://host:10001`). `workers` fixes the
    number of actors (default: an autoscaling pool from one to one per GPU, or per `threads`
    CPUs). `threads` is torch's thread count in each actor and the CPUs each one reserves.
    """

    address: str = "auto"
    workers: Optional[int] = None
    threads: Optional[int] = None
    task_retries: int = TASK_RETRIES
    progress: bool = True  # Ray Data's own progress bars (off for --quiet / --json)
    scratch_root: Optional[str] = None  # workers' scratch folder (default: their temporary folder)

    def __post_init__(self) -> None:
        if not isinstance(self.address, str) or not self.address.strip():
            raise UsageError("--ray needs 'auto' or a cluster address", hint="e.g. --ray auto, --ray ray://head:10001")
        for name, value, low in (("--workers", self.workers, 1), ("--threads", self.threads, 1),
                                 ("task_retries", self.task_retries, 0)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise UsageError(f"{name} must be a whole number of at least {low}, got {value!r}")


def separate_on_ray(
    inputs: Sequence[str],
    separator_kwargs: Dict[str, object],
    request: StemRequest,
    output: OutputOptions,
    options: RayOptions = RayOptions(),
    on_event: Callable[[Event], None] = lambda e: None,
    download_progress: Optional[Callable] = None,
) -> List[TrackResult]:
    """Plan on this machine, separate on the Ray cluster; results in plan order.

    `separator_kwargs` are `api.Separator`'s keyword arguments (model, device, engine
    options, offline, registry_files, stems, config): each actor builds its Separator
    from them. Events: "failed"/"skipped" for tracks settled by the plan, then "done" or
    "failed" for each track as it finishes (no "start"/"progress": Ray shows progress).
    """
    for item in [*inputs, str(output.out_dir)]:
        if _URL.match(str(item)):
            raise UsageError(f"{item}: object-store and other URLs are not supported with --ray",
                             hint="mount the bucket (e.g. mountpoint-s3, gcsfuse) on every node and give its path")
    ray = _import_ray()
    from .api import Separator

    # The plan needs the model's name and stems, as a local run has them: load it here once,
    # on the CPU (this also fills the model cache before the actors start).
    planner = Separator(**{**separator_kwargs, "device": "cpu"}, download_progress=download_progress)
    jobs = planner.plan(inputs, output, request)
    model_name = planner.display_name
    del planner
    if not jobs:
        raise UsageError("no audio or video files found in the inputs")
    started = _connect(ray, options.address)
    try:
        return _run(ray, jobs, model_name, separator_kwargs, request, output, options, on_event)
    finally:
        if started:
            ray.shutdown()


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - the Data library is a part of the extra
    except ImportError as exc:
        raise UsageError(f"--ray needs Ray Data, which is not installed ({exc})", hint=RAY_HINT) from None
    return ray


def _connect(ray, address: str) -> bool:
    """Join (or start) the cluster; True when this call did, so that the caller shuts it down."""
    if ray.is_initialized():  # an API caller (or a test) has set Ray up already
        return False
    import logging

    try:
        ray.init(address=None if address == "auto" else address, logging_level=logging.WARNING,
                 configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UnmixError(f"cannot connect to the Ray cluster at {address} ({exc})",
                         hint="start one with `ray start --head`, or check the address and RAY_ADDRESS") from None
    return True


def _run(ray, jobs: List[Job], model_name: str, separator_kwargs, request, output, options, on_event):
    count = len(jobs)
    results: Dict[int, TrackResult] = {}

    def settle(index: int, res: TrackResult) -> None:
        results[index] = res
        on_event(Event(res.status, res.job, index, count, result=res))

    todo = []
    for index, job in enumerate(jobs):
        if job.error is not None:
            settle(index, TrackResult(job, "failed", error=job.error))
        elif job.skip:
            settle(index, TrackResult(job, "skipped", dict(job.outputs)))
        else:
            todo.append(index)
    # Stems already there before this run: the clean-up of a track that never finished keeps them.
    before = {i: {p for p in jobs[i].outputs.values() if p.is_file()} for i in todo}
    try:
        if todo:
            for record in _execute(ray, jobs, todo, separator_kwargs, request, output, options):
                index = record["index"]
                settle(index, _result(jobs[index], record))
        for index in todo:
            if index not in results:
                # Ray dropped the track: every attempt ended with its worker dead.
                err = UnmixError(
                    f"the Ray worker died on each of {options.task_retries + 1} attempts to separate this track",
                    path=jobs[index].input,
                    hint="it may need more memory than a worker has (try a smaller --segment); the Ray logs say more")
                settle(index, TrackResult(jobs[index], "failed", error=err))
    finally:
        for index in todo:
            if index not in results or results[index].status != "done":
                _clean_unfinished(jobs[index], before[index])
        _write_manifest(output.out_dir, model_name, jobs, results)
    return [results[i] for i in sorted(results)]


def _execute(ray, jobs, todo, separator_kwargs, request, output, options) -> Iterable[dict]:
    """Run the Ray Data job; yields one record per track as tracks finish (in any order)."""
    from ray.data import ActorPoolStrategy, DataContext

    resources = ray.cluster_resources()
    device = str(separator_kwargs.get("device", "auto"))
    gpus = int(resources.get("GPU", 0))
    # One actor per GPU when there are GPUs (or one is asked for); CPU actors otherwise.
    use_gpu = device.startswith("cuda") or (device == "auto" and gpus > 0)
    cpus = options.threads or 1
    if options.workers:
        workers = min(options.workers, len(todo))
        compute = ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1)
    else:
        most = gpus if use_gpu and gpus else max(1, int(resources.get("CPU", 1)) // cpus)
        compute = ActorPoolStrategy(min_size=1, max_size=max(1, min(most, len(todo))),
                                    max_tasks_in_flight_per_actor=1)
    worker_kwargs = dict(separator_kwargs)
    if use_gpu:
        worker_kwargs["device"] = "cuda"  # Ray makes the actor's own GPU its only visible one
    rows = [_row(jobs[i], i) for i in todo]
    context = DataContext.get_current()
    saved = (context.max_errored_blocks, context.enable_progress_bars)
    context.max_errored_blocks = -1  # a track whose retries ran out is dropped, the job goes on
    context.enable_progress_bars = options.progress
    try:
        with warnings.catch_warnings():
            # max_restarts / max_task_retries are taken only as "ray_remote_args" keyword arguments,
            # which Ray 2.60 marks as deprecated while naming no replacement for these two.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            ds = _build(ray, rows, compute, worker_kwargs, request, output, options, cpus, use_gpu)
        for row in ds.iter_rows():
            yield json.loads(row["record"])
    except UnmixError:
        raise
    except Exception as exc:  # e.g. every actor failed to load the model
        raise UnmixError(f"the Ray job failed ({type(exc).__name__}: {_first_line(exc)})",
                         hint="run with --verbose, or look at the Ray logs of the workers") from exc
    finally:
        context.max_errored_blocks, context.enable_progress_bars = saved


def _build(ray, rows, compute, worker_kwargs, request, output, options, cpus, use_gpu):
    """rows -> the lazy dataset of records (one block, so one Ray task, per track)."""
    return ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        _TrackWorker,
        batch_size=1,
        compute=compute,
        fn_constructor_kwargs=dict(separator_kwargs=worker_kwargs, request=request,
                                   output=_absolute_output(output), threads=options.threads,
                                   scratch_root=options.scratch_root),
        num_cpus=cpus,
        num_gpus=1 if use_gpu else None,
        # Ray's own fault tolerance: a dead actor is restarted and its track run again.
        max_restarts=-1,
        max_task_retries=options.task_retries,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _absolute_output(output: OutputOptions) -> OutputOptions:
    import dataclasses

    return dataclasses.replace(output, out_dir=Path(os.path.abspath(output.out_dir)))


def _row(job: Job, index: int) -> dict:
    """What a worker needs to rebuild the job; absolute paths, as the worker's folder is not ours."""
    return {
        "index": index,
        "input": os.path.abspath(job.input),
        "track": job.track,
        "rel_dir": job.rel_dir,
        "outputs": json.dumps({s: os.path.abspath(p) for s, p in job.outputs.items()}),
    }


def _result(job: Job, record: dict) -> TrackResult:
    """The driver's TrackResult for a worker's record, with the paths as planned here."""
    error = None
    if record["status"] == "failed":
        # Only our own error classes, looked up in errors.py; anything else is a plain UnmixError.
        cls = getattr(errors, record.get("kind") or "", None)
        if not (isinstance(cls, type) and issubclass(cls, UnmixError)):
            cls = UnmixError
        path = record.get("path")
        if path == os.path.abspath(job.input):
            path = job.input  # as the user gave it, as a local run names it
        error = cls(record["error"], path=path, hint=record.get("hint"))
    outputs = dict(job.outputs) if record["status"] == "done" else {}
    return TrackResult(job, record["status"], outputs, record.get("duration", 0.0), record.get("seconds", 0.0), error)


class _TrackWorker:
    """A Ray Data actor: loads the model once, then separates one track per call."""

    def __init__(self, separator_kwargs, request: StemRequest, output: OutputOptions,
                 threads: Optional[int] = None, scratch_root: Optional[str] = None):
        import torch

        from .api import Separator
        from .separate import remove_stale_scratch

        if threads:
            torch.set_num_threads(threads)
        # A restarted actor's predecessor was killed without cleaning up: its scratch goes here.
        remove_stale_scratch(scratch_root)
        self._sep = Separator(**separator_kwargs)
        self._runtime = self._sep.runtime
        self._request = request
        self._output = output
        self._scratch = scratch_root

    def __call__(self, batch):
        from .separate import run_job

        records = []
        for i in range(len(batch["index"])):
            outputs = {s: Path(p) for s, p in json.loads(str(batch["outputs"][i])).items()}
            job = Job(input=Path(str(batch["input"][i])), track=str(batch["track"][i]),
                      rel_dir=str(batch["rel_dir"][i]), outputs=outputs)
            _remove_temporaries(outputs.values())
            res = run_job(job, self._runtime, self._request, self._output, scratch_root=self._scratch)
            record = {"index": int(batch["index"][i]), "status": res.status, "duration": res.duration,
                      "seconds": res.elapsed}
            if res.error is not None:
                record.update(kind=type(res.error).__name__, error=res.error.message, path=res.error.path,
                              hint=res.error.hint)
            records.append(json.dumps(record))
        return {"record": records}


def _remove_temporaries(targets: Iterable[Path]) -> None:
    """Remove the writer's temporary files beside these stems (`atomic.temporary_beside` names).

    In a Ray job one track runs in one place at a time, so any found when a track starts are
    those of an attempt whose worker was killed mid-write (it had no chance to remove them).
    """
    for target in targets:
        stem = os.fsencode(target.name)[:96].decode(errors="ignore")
        try:
            found = list(target.parent.glob(f".{_glob_escape(stem)}.*.part"))
        except OSError:
            continue
        for tmp in found:
            atomic.discard(tmp)


def _glob_escape(text: str) -> str:
    import glob

    return glob.escape(text)


def _clean_unfinished(job: Job, before) -> None:
    """A track that did not finish is all or nothing, as in a local batch: the stems this run
    wrote for it go (those of an earlier run stay), and so do temporaries of a killed writer.
    A track whose stems are all there did finish (its record was lost): it stays."""
    _remove_temporaries(job.outputs.values())
    if all(p.is_file() for p in job.outputs.values()):
        return
    _discard_partial_track([p for p in job.outputs.values() if p not in before and p.is_file()],
                           {p.parent for p in job.outputs.values()})


def _write_manifest(out_dir: Path, model_name: str, jobs: List[Job], results: Dict[int, TrackResult]) -> None:
    """One JSON line per settled track, in plan order, written atomically (best effort: the
    stems are the batch's real output, a manifest that cannot be written must not hide them)."""
    lines = []
    for index in sorted(results):
        r = results[index]
        lines.append(json.dumps({
            "input": str(r.job.input), "track": r.job.track, "model": model_name, "status": r.status,
            "outputs": {s: str(p) for s, p in r.outputs.items()}, "duration": round(r.duration, 3),
            "seconds": round(r.elapsed, 3),
            "error": r.error.one_line() if r.error else None, "hint": r.error.hint if r.error else None,
        }))
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(Path(out_dir) / MANIFEST) as tmp:
            Path(tmp).write_text("".join(line + "\n" for line in lines))
    except OSError:
        warnings.warn(f"{Path(out_dir) / MANIFEST}: cannot write the manifest", stacklevel=2)


def manifest_path(output: OutputOptions) -> Path:
    return Path(output.out_dir) / MANIFEST


__all__ = ["RayOptions", "separate_on_ray", "MANIFEST", "TASK_RETRIES", "manifest_path"]
