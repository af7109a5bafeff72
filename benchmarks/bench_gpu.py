"""GPU speed and precision of the engine, side by side with the reference implementations.

What it measures, on one CUDA device, for three networks with random weights:

* HTDemucs in its released configuration (4 stems, 7.8 s segment, dconv_mode 3,
  bottom_channels 512): the reference `demucs.htdemucs.HTDemucs` is built, and our
  `unmixcli.models.htdemucs.HTDemucs` loads its state dict;
* a four-member bag like htdemucs_ft: four such HTDemucs (seeds 0-3), member i weighted
  1 for stem i and 0 elsewhere;
* a Mel-Band RoFormer of the released Kim vocals size (dim 384, depth 6, 60 bands,
  n_fft 2048, hop 441; chunk 352800 samples, num_overlap 2), the reference
  `bs_roformer.MelBandRoformer` (0.3.10) with the same state dict in ours.

Each of ours runs through `engine.separate_tensor` at fp32, bf16 and fp16 with batch
sizes 1, 4 and 8. The references run as their users run them: Demucs through
`demucs.apply.apply_model` (shifts 0, overlap 0.25, one segment per forward: it cannot
batch), the RoFormer through an MSST-style chunked loop (`msst_demix` below: mirrored
ends, fade window, batch as given), each at fp32 and under `torch.autocast` for bf16 and
fp16 (MSST's `use_amp` is fp16 autocast). Neither side normalises the mix (apply_model
does not). Per case it prints:

* x real time: audio seconds / wall seconds of the separation (mix on the CPU in,
  stems on the CPU out), after a warm-up, with `torch.cuda.synchronize()` either side;
* the speed-up against the reference at the same precision (and the same batch size
  for the RoFormer, batch 1 for Demucs), and against the reference at fp32;
* the SNR in dB of the output against our fp32 output at the first batch size (1 unless
  --batches/--quick say otherwise; all stems together, and the worst stem); the
  reference's fp32 line is then the parity check on this GPU;
* the peak GPU memory allocated and the segments per forward actually used (the engine
  halves the batch after an out-of-memory error).

fp16: if `EngineOptions(precision="fp16")` is refused, ours runs its fp32 options inside
`torch.autocast("cuda", dtype=torch.float16)`, and the output says so. TF32 stays at
torch's defaults (matmul off, cuDNN on) unless `--tf32`. A failing case prints one line
and the rest go on; past `--budget` seconds the remaining cases are skipped.

Run (on the GPU machine; the references are test-only oracles that must be installed,
e.g. from wheels: demucs 4.1.0, julius, BS-RoFormer 0.3.10, rotary-embedding-torch,
beartype, librosa, pooch, decorator, platformdirs):

    PYTHONPATH=src python3 benchmarks/bench_gpu.py                 # all cases, 60 s of audio
    PYTHONPATH=src python3 benchmarks/bench_gpu.py --quick         # batch 4 only, 20 s
    PYTHONPATH=src python3 benchmarks/bench_gpu.py --models roformer --precisions fp32 fp16
    python benchmarks/bench_gpu.py --allow-cpu --quick --seconds 1 # smoke run of the script itself

Without CUDA it stops at once with one line (exit status 1); `--allow-cpu` instead runs
a tiny-model smoke version on the CPU (exit status 0), whose numbers mean nothing.

Figures (H200, to be filled in by the lead from a run's output):

    not yet measured: no GPU has been lent
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Dict, List, Optional

STEMS = ["drums", "bass", "other", "vocals"]
PRECISIONS = ("fp32", "bf16", "fp16")

# The published htdemucs (955717e8) is not the class defaults (tests/test_models_htdemucs.py).
HT_RELEASED = dict(segment=Fraction(39, 5), dconv_mode=3, bottom_channels=512, t_dropout=0.02)
# Smoke size (tests/demucs_export.tiny_htdemucs): 8 kHz, 0.5 s segment.
HT_TINY = dict(channels=4, depth=2, nfft=256, t_layers=1, t_heads=2, t_hidden_scale=1.0, dconv_comp=2,
               freq_emb=0.0, samplerate=8000, segment=Fraction(1, 2))

# MSST's configs/KimberleyJensen/config_vocals_mel_band_roformer_kj.yaml (models.yaml: kim-vocals).
MEL_RELEASED = dict(dim=384, depth=6, stereo=True, num_stems=1, time_transformer_depth=1,
                    freq_transformer_depth=1, num_bands=60, dim_head=64, heads=8, stft_n_fft=2048,
                    stft_hop_length=441, stft_win_length=2048, mask_estimator_depth=2, sample_rate=44100)
MEL_RELEASED_CHUNK, MEL_RELEASED_OVERLAP = 352800, 2
MEL_TINY = dict(dim=32, depth=1, stereo=True, num_stems=1, time_transformer_depth=1, freq_transformer_depth=1,
                num_bands=8, dim_head=16, heads=2, stft_n_fft=512, stft_hop_length=128, stft_win_length=512,
                mask_estimator_depth=1, sample_rate=44100)
MEL_TINY_CHUNK, MEL_TINY_OVERLAP = 8192, 2


def _import_ours():
    """unmixcli from the environment, else from this checkout's src/ (the GPU machine has no install)."""
    try:
        import unmixcli.engine
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
        import unmixcli.engine  # noqa: F401


# ----------------------------------------------------------------------------- timing helpers


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device) -> Optional[float]:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


def _autocast(device, precision: str):
    """The reference's (and, for an fp16 the engine refuses, our) mixed precision."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def snr_db(estimate, reference) -> Optional[float]:
    """10 log10(|ref|^2 / |est - ref|^2) in float64; None when the estimate is not finite."""
    import torch

    est, ref = estimate.double(), reference.double()
    if not bool(torch.isfinite(est).all()):
        return None
    err = (est - ref).pow(2).sum().item()
    if err == 0:
        return math.inf
    return 10 * math.log10(ref.pow(2).sum().item() / err)


def _fmt_snr(estimate, reference) -> str:
    """Joint SNR over all stems, and the worst stem's, of [S, C, T] outputs."""
    joint = snr_db(estimate, reference)
    if joint is None:
        return "non-finite output"
    if estimate.shape[0] == 1:
        return f"{joint:6.1f} dB"
    worst = min(snr_db(e, r) for e, r in zip(estimate, reference))
    return f"{joint:6.1f} dB (worst stem {worst:.1f})"


# ----------------------------------------------------------------------------- references


def msst_demix(model, mix, chunk: int, num_overlap: int, batch: int, device):
    """MSST's `demix` for a RoFormer, written out (as tests/test_roformer_e2e.py does).

    mix [C, L] on the CPU -> [S, C, L] on the CPU. The track is mirrored by `chunk - step`
    samples at both ends when long enough, cut every `step` samples into chunks padded to
    full length (mirrored if over half full, zeros otherwise), run `batch` chunks per
    forward on `device`, and blended on the CPU (as MSST accumulates) with a flat window
    faded over chunk // 10 samples (no fade at the track's first start and last end).
    """
    import torch
    import torch.nn.functional as F

    step = chunk // num_overlap
    border = chunk - step
    fade = chunk // 10
    length = mix.shape[-1]
    mirrored = length > 2 * border and border > 0
    x = F.pad(mix[None], (border, border), mode="reflect")[0] if mirrored else mix  # [C, L']
    total = x.shape[-1]
    base = torch.ones(chunk)
    base[:fade] = torch.linspace(0, 1, fade)
    base[-fade:] = torch.linspace(1, 0, fade)
    starts = list(range(0, total, step))
    acc = None
    weight = torch.zeros(total)
    for i in range(0, len(starts), batch):
        group = starts[i:i + batch]
        parts = []
        for start in group:
            part = x[:, start:start + chunk]
            n = part.shape[-1]
            parts.append(F.pad(part[None], (0, chunk - n), mode="reflect" if n > chunk // 2 else "constant")[0])
        with torch.inference_mode():
            out = model(torch.stack(parts).to(device))  # [B, C, chunk] (one stem) or [B, S, C, chunk]
        if out.dim() == 3:
            out = out[:, None]
        out = out.float().cpu()
        if acc is None:
            acc = torch.zeros(out.shape[1], out.shape[2], total)
        for j, start in enumerate(group):
            n = min(chunk, total - start, out.shape[-1])
            window = base.clone()
            if start == 0:
                window[:fade] = 1
            elif start + step >= total:
                window[-fade:] = 1
            acc[..., start:start + n] += out[j, ..., :n] * window[:n]
            weight[start:start + n] += window[:n]
    est = acc / weight
    return est[..., border:border + length] if mirrored else est


# ----------------------------------------------------------------------------- the cases


@dataclass
class Case:
    key: str  # --models name
    title: str
    samplerate: int
    bag: object  # our ModelBag
    members: list  # our modules (hooked to count segments per forward)
    reference: Optional[Callable] = None  # (mix [C, T], batch) -> [S, C, T]; under autocast by the caller
    reference_batches: bool = False  # the reference can batch (else it runs batch 1 only)
    reference_note: str = ""
    cleanup: List[object] = field(default_factory=list)


def _htdemucs_pair(kwargs: dict, seed: int, device):
    """(reference or None, ours, note): the same random weights in both."""
    import torch

    from unmixcli.models.htdemucs import HTDemucs

    torch.manual_seed(seed)
    try:
        from demucs.htdemucs import HTDemucs as RefHTDemucs  # test-only oracle
    except ImportError as exc:
        ours = HTDemucs(sources=STEMS, **kwargs).eval()
        return None, ours.to(device), f"reference not importable ({exc}); ours has its own random init"
    ref = RefHTDemucs(sources=STEMS, **kwargs).eval()
    ours = HTDemucs(sources=STEMS, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref.to(device), ours.eval().to(device), ""


def build_htdemucs(device, tiny: bool, seed: int) -> Case:
    from unmixcli.models.bag import ModelBag

    kwargs = HT_TINY if tiny else HT_RELEASED
    ref, ours, note = _htdemucs_pair(kwargs, seed, device)
    reference = _apply_model_runner(ref, device) if ref is not None else None
    bag = ModelBag.single(ours, normalize=False)  # apply_model does not normalise either
    size = "tiny (smoke)" if tiny else "released size"
    return Case("htdemucs", f"HTDemucs, {size}, random weights", int(ours.samplerate), bag, [ours],
                reference, False, note or "demucs.apply.apply_model(shifts=0, overlap=0.25)", [ref, ours])


def build_bag(device, tiny: bool, seed: int) -> Case:
    import torch

    from unmixcli.models.bag import ModelBag

    kwargs = HT_TINY if tiny else HT_RELEASED
    pairs = [_htdemucs_pair(kwargs, seed + i, device) for i in range(len(STEMS))]
    refs, ours = [p[0] for p in pairs], [p[1] for p in pairs]
    weights = torch.eye(len(STEMS))  # [M, S]: member i gives stem i (htdemucs_ft's layout)
    bag = ModelBag(models=ours, weights=weights, normalize=False, name="htdemucs_ft-like")
    reference, note = None, pairs[0][2]
    if refs[0] is not None:
        from demucs.apply import BagOfModels

        reference = _apply_model_runner(BagOfModels(refs, weights=weights.tolist()), device)
        note = "demucs.apply.BagOfModels + apply_model(shifts=0, overlap=0.25)"
    size = "tiny (smoke)" if tiny else "released size"
    return Case("bag", f"Bag of 4 HTDemucs (htdemucs_ft-like, one stem each), {size}, random weights",
                int(ours[0].samplerate), bag, ours, reference, False, note, refs + ours)


def _apply_model_runner(model, device):
    """(mix [C, T] on the CPU, batch) -> [S, C, T] on the CPU through apply_model (batch unused: it
    runs one segment per forward)."""
    import torch
    from demucs.apply import apply_model

    def run(mix, batch):
        del batch
        with torch.inference_mode():
            out = apply_model(model, mix[None].to(device), shifts=0, split=True, overlap=0.25, device=device)
        return out[0].float().cpu()  # [S, C, T]
    return run


def build_roformer(device, tiny: bool, seed: int) -> Case:
    import torch

    from unmixcli.models.bag import Contract, ModelBag
    from unmixcli.models.roformer import MelBandRoformer

    cfg = MEL_TINY if tiny else MEL_RELEASED
    chunk, num_overlap = (MEL_TINY_CHUNK, MEL_TINY_OVERLAP) if tiny else (MEL_RELEASED_CHUNK, MEL_RELEASED_OVERLAP)
    rate = cfg["sample_rate"]
    torch.manual_seed(seed)
    ref, note = None, f"MSST-style chunked loop over bs_roformer.MelBandRoformer (chunk {chunk}, num_overlap {num_overlap})"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from bs_roformer import MelBandRoformer as RefMel  # test-only oracle
        ref = RefMel(**cfg).eval()
    except ImportError as exc:
        note = f"reference not importable ({exc}); ours has its own random init"
    ours = MelBandRoformer(**cfg, sources=["vocals"], segment=chunk / rate)
    if ref is not None:
        ours.load_state_dict(ref.state_dict(), strict=True)
        ref = ref.to(device)
    ours = ours.float().eval().to(device)
    # What families/roformer.py states for an MSST checkpoint of this config.
    contract = Contract(samplerate=rate, channels=2, sources=("vocals",), segment=chunk / rate,
                        segment_rule="fixed", window="fade", normalize=False, overlap=1.0 - 1.0 / num_overlap)
    bag = ModelBag.single(ours, name="mel-roformer", contracts=[contract])
    reference = None
    if ref is not None:
        reference = lambda mix, batch: msst_demix(ref, mix, chunk, num_overlap, batch, device)  # noqa: E731
    size = "tiny (smoke)" if tiny else "released size (Kim vocals)"
    return Case("roformer", f"Mel-Band RoFormer, {size}, random weights", rate, bag, [ours], reference, True,
                note, [ref, ours])


BUILDERS = {"htdemucs": build_htdemucs, "bag": build_bag, "roformer": build_roformer}


# ----------------------------------------------------------------------------- running


def engine_precision(name: str):
    """(EngineOptions precision, extra autocast precision or None, note) for one of PRECISIONS."""
    from unmixcli.engine import EngineOptions
    from unmixcli.errors import UsageError

    try:
        EngineOptions(precision=name)
        return name, None, ""
    except UsageError:
        if name != "fp16":
            raise
        return "fp32", "fp16", ("fp16: EngineOptions(precision='fp16') is refused by this engine, so ours ran "
                                "fp32 options inside torch.autocast(device, dtype=torch.float16)")


class Bench:
    def __init__(self, args, device):
        self.args = args
        self.device = device
        self.start = time.perf_counter()
        self.last_wall: Dict[str, float] = {}  # case key -> slowest timed run so far (for the budget)

    def over_budget(self, key: str) -> bool:
        used = time.perf_counter() - self.start
        return used + self.last_wall.get(key, 0.0) > self.args.budget

    def timed(self, fn, mix):
        """(best wall seconds over --reps, output, peak GPU MiB)."""
        best, out, peak = math.inf, None, None
        for _ in range(self.args.reps):
            _sync(self.device)
            _reset_peak(self.device)
            t0 = time.perf_counter()
            out = fn(mix)
            _sync(self.device)
            best = min(best, time.perf_counter() - t0)
            peak = _peak_mib(self.device)
        return best, out, peak


def _line(impl: str, precision: str, batch, seconds: float, wall: float, vs_same: str, vs_fp32: str,
          snr: str, peak, used: str = "") -> str:
    peak_s = f"{peak:8.0f}" if peak is not None else "     n/a"
    return (f"  {impl:<9} {precision:<4} {str(batch):>3}  x{seconds / wall:8.1f}  {wall:8.3f} s  "
            f"{vs_same:>9} {vs_fp32:>9}  {peak_s}  {used:>4}  {snr}")


def _ratio(ref_wall: Optional[float], wall: float) -> str:
    return f"x{ref_wall / wall:.2f}" if ref_wall else "n/a"


def run_case(bench: Bench, case: Case, seconds: float, precisions: List[str], batches: List[int]) -> None:
    import torch

    from unmixcli.engine import EngineOptions, separate_tensor

    args, device = bench.args, bench.device
    rate = case.samplerate
    g = torch.Generator().manual_seed(args.seed)
    mix = 0.3 * torch.randn(2, int(seconds * rate), generator=g)  # [C, T]
    plan_segment = float(case.bag.contracts[0].segment)
    overlap = case.bag.contracts[0].overlap
    stride = plan_segment * (1 - overlap)
    # Warm-up length: one full batch of the largest batch size and a bit (kernels, cuBLAS
    # handles and the caching allocator reach their steady state), at most the timed mix.
    warm_seconds = min(seconds, plan_segment + max(batches) * stride)
    warm_mix = mix[:, : max(1, int(warm_seconds * rate))]

    print(f"\n{case.title}: {seconds:g} s of audio at {rate} Hz; reference: {case.reference_note}")
    print(f"  {'impl':<9} {'prec':<4} {'b':>3}  {'x realtime':>9}  {'wall':>10}  "
          f"{'vs ref':>9} {'vs ref32':>9}  {'GPU MiB':>8}  {'seg/':>4}  SNR vs ours fp32 (first batch size)")
    print(f"  {'':<9} {'':<4} {'':>3}  {'':>9}  {'':>10}  {'same prec':>9} {'':>9}  {'peak':>8}  "
          f"{'fwd':>4}")

    baseline = None  # our fp32 output at the first batch size run
    ref_walls: Dict[tuple, float] = {}  # (precision, batch) -> wall
    ref_outputs: Dict[tuple, object] = {}
    notes = []

    # The references first, so that our lines can show the speed-up as they come.
    def reference_at(precision: str, batch: int):
        def fn(m):
            with _autocast(device, precision):
                return case.reference(m, batch)
        return fn

    if case.reference is not None and not args.no_reference:
        ref_batches = batches if case.reference_batches else [1]
        for precision in precisions:
            if bench.over_budget(case.key):
                print(f"  reference {precision}: skipped (past --budget {args.budget:g} s)")
                continue
            try:
                reference_at(precision, max(ref_batches))(warm_mix)  # warm-up
                for batch in ref_batches:
                    wall, out, peak = bench.timed(reference_at(precision, batch), mix)
                    bench.last_wall[case.key] = max(bench.last_wall.get(case.key, 0.0), wall)
                    ref_walls[(precision, batch)] = wall
                    ref_outputs[(precision, batch)] = out
                    print(_line("reference", precision, batch, seconds, wall, "", "", "(below)", peak,
                                str(batch)), flush=True)
            except Exception as exc:  # noqa: BLE001 - one failing case must not stop the others
                print(f"  reference {precision}: FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                _empty(device)

    # Segments per forward our members actually got (the engine may halve a batch on OOM).
    seen: List[int] = []
    hooks = [m.register_forward_pre_hook(lambda module, inputs: seen.append(int(inputs[0].shape[0])))
             for m in case.members]
    try:
        for precision in precisions:
            try:
                engine_prec, extra, note = engine_precision(precision)
            except Exception as exc:  # noqa: BLE001
                print(f"  ours      {precision}: FAILED {type(exc).__name__}: {exc}")
                continue
            if note and note not in notes:
                notes.append(note)

            def make(batch, engine_prec=engine_prec, extra=extra):
                options = EngineOptions(batch_size=batch, precision=engine_prec)

                def fn(m):
                    with _autocast(device, extra) if extra else contextlib.nullcontext():
                        stems = separate_tensor(case.bag, m, None, options, device)
                    return torch.stack([stems[s] for s in case.bag.sources])  # [S, C, T]
                return fn

            if bench.over_budget(case.key):
                print(f"  ours      {precision}: skipped (past --budget {args.budget:g} s)")
                continue
            try:
                make(max(batches))(warm_mix)
            except Exception as exc:  # noqa: BLE001
                print(f"  ours      {precision}: warm-up FAILED {type(exc).__name__}: "
                      f"{str(exc).splitlines()[0][:200]}")
                _empty(device)
                continue
            for batch in batches:
                if bench.over_budget(case.key):
                    print(f"  ours      {precision} b{batch}: skipped (past --budget {args.budget:g} s)")
                    continue
                try:
                    seen.clear()
                    wall, out, peak = bench.timed(make(batch), mix)
                except Exception as exc:  # noqa: BLE001
                    print(f"  ours      {precision} b{batch}: FAILED {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200]}")
                    _empty(device)
                    continue
                bench.last_wall[case.key] = max(bench.last_wall.get(case.key, 0.0), wall)
                if baseline is None and precision == "fp32":
                    baseline = out
                    snr = "(the baseline)"
                else:
                    snr = _fmt_snr(out, baseline) if baseline is not None else "n/a (no fp32 run)"
                same = ref_walls.get((precision, batch), ref_walls.get((precision, 1)))
                fp32 = ref_walls.get(("fp32", batch), ref_walls.get(("fp32", 1)))
                print(_line("ours", precision, batch, seconds, wall, _ratio(same, wall), _ratio(fp32, wall),
                            snr, peak, str(max(seen, default=0))), flush=True)
                del out
    finally:
        for h in hooks:
            h.remove()

    if ref_outputs:
        if baseline is None:
            print("  reference SNR: n/a (no fp32 run of ours)")
        else:
            for (precision, batch), out in ref_outputs.items():
                print(f"  reference {precision} b{batch} SNR vs ours fp32: {_fmt_snr(out, baseline)}"
                      + ("   <- parity on this device" if precision == "fp32" else ""))
    for note in notes:
        print(f"  note: {note}")


def _empty(device) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=None,
                    help="audio length (default 60, 20 with --quick; 1 on the CPU smoke run)")
    ap.add_argument("--quick", action="store_true", help="one batch size (4) and shorter audio")
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N")
    ap.add_argument("--allow-cpu", action="store_true",
                    help="without CUDA, run a tiny-model smoke version on the CPU instead of stopping")
    ap.add_argument("--models", nargs="+", choices=list(BUILDERS), default=list(BUILDERS))
    ap.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS))
    ap.add_argument("--batches", nargs="+", type=int, default=None, help="batch sizes (default 1 4 8)")
    ap.add_argument("--reps", type=int, default=1, help="timed runs per case (the best is shown)")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (torch's default is off)")
    ap.add_argument("--no-reference", action="store_true", help="time ours only")
    ap.add_argument("--budget", type=float, default=450.0,
                    help="seconds after which the remaining cases are skipped (default 450)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    device = torch.device(args.device)
    if device.type != "cuda" or not torch.cuda.is_available():
        if not args.allow_cpu:
            why = "no CUDA device is available" if device.type == "cuda" else f"--device {args.device} is not CUDA"
            print(f"bench_gpu: {why} (torch {torch.__version__}, CUDA build {torch.version.cuda}); this "
                  "benchmark measures a GPU: run it on a CUDA machine, or add --allow-cpu for a tiny "
                  "CPU smoke run", file=sys.stderr)
            return 1
        device = torch.device("cpu")
    elif device.index is not None and device.index >= torch.cuda.device_count():
        print(f"bench_gpu: there is no {device} ({torch.cuda.device_count()} CUDA device(s))", file=sys.stderr)
        return 1
    smoke = device.type == "cpu"
    if args.seconds is None:
        args.seconds = 1.0 if smoke else (20.0 if args.quick else 60.0)
    batches = args.batches or ([4] if args.quick else [1, 4, 8])
    if any(b < 1 for b in batches) or args.reps < 1 or args.seconds <= 0:
        print("bench_gpu: --batches and --reps must be >= 1 and --seconds > 0", file=sys.stderr)
        return 1

    _import_ours()
    torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
    warnings.filterwarnings("once")
    if smoke:
        print("SMOKE RUN ON THE CPU with tiny models: checks the script, its numbers mean nothing")
        where = f"cpu, torch {torch.__version__}"
    else:
        props = torch.cuda.get_device_properties(device)
        where = (f"{props.name} ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs), "
                 f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    print(f"device: {where}; TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, "
          f"TF32 cuDNN {torch.backends.cudnn.allow_tf32}; cudnn.benchmark {torch.backends.cudnn.benchmark}")
    try:
        from unmixcli import engine

        auto = engine.effective_precision("auto", device, True) if hasattr(engine, "effective_precision") else "?"
        print(f"engine precisions: {', '.join(engine.PRECISIONS)}; 'auto' runs {auto} here "
              "(for a model allowed bf16 under auto)")
    except Exception as exc:  # noqa: BLE001 - information only
        print(f"engine precisions: unknown ({exc})")
    print(f"batches {batches}, reps {args.reps} (best shown), budget {args.budget:g} s; x realtime = audio s / "
          "wall s; speed-ups = reference wall / ours")

    bench = Bench(args, device)
    for key in args.models:
        if time.perf_counter() - bench.start > args.budget:
            print(f"\n{key}: skipped (past --budget {args.budget:g} s)")
            continue
        try:
            t0 = time.perf_counter()
            case = BUILDERS[key](device, smoke, args.seed)
            built = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001
            print(f"\n{key}: building FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            continue
        run_case(bench, case, args.seconds, args.precisions, batches)
        print(f"  (built in {built:.1f} s; {time.perf_counter() - bench.start:.0f} s since start)")
        del case
        _empty(device)
    print(f"\ntotal {time.perf_counter() - bench.start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
