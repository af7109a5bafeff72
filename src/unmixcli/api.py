"""The public Python API.

    from unmixcli import Separator
    sep = Separator("htdemucs", device="auto")
    stems = sep.separate_file("song.mp3")        # {"vocals": Tensor[C, T], ...} at sep.samplerate
    stems = sep.separate(waveform, 48000)         # waveform [C, T] or [T]; stems at 48 kHz
    Separator(["kim-vocals", "htdemucs"], ensemble="avg_fft")   # an ensemble of two models
    Separator("best-vocals")                      # an ensemble preset from the registry
    Separator("auto", stems=["vocals"], quality="best")         # the best model for the stems

`Separator` loads the model once (downloading it on first use) and can then
separate any number of waveforms or files, or write stems to disk like the
command line (`separate_to_files`).
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import torch

from . import audio, engine, families
from .errors import UsageError
from .separate import Event, Job, OutputOptions, Runtime, StemRequest, TrackResult, plan_request, run_batch

Waveform = Union[torch.Tensor, np.ndarray]


class Separator:
    """A loaded separation model with its run options.

    Args:
        model: a registry name (`unmix models list`), an ensemble preset, a local path (a
            folder with a bag yaml + safetensors, or one checkpoint file), "auto" (the best
            registry model for `stems` under `quality`), or a list of these: an ensemble.
        ensemble: with several models (or to override a preset's): the algorithm combining
            their stems (`ensemble.ALGORITHMS`; default avg_wave).
        weights: one per model, for avg_wave / avg_fft.
        instrumental: how an ensemble member without an instrumental stem makes one
            ("auto", "residual", "sum"; see `ensemble_bag`).
        quality: with model="auto": "fast", "balanced" (default) or "best".
        device: "auto" (CUDA, then Apple MPS, then CPU), "cpu", "cuda", "cuda:1", "mps".
        segment: seconds per chunk (None: the model's own).
        overlap: overlap between chunks as a fraction (None: the model's default, 0.25 for Demucs).
        shifts: number of random time shifts averaged (more is slower, slightly better).
        seed: seed of the shifts, so results are reproducible.
        tta: test-time augmentation as MSST does it (channels swapped, polarity inverted,
            averaged with the plain result): three times the work.
        batch_size: chunks per forward call.
        precision: "auto" (default: bf16 for models measured faster in it, on devices that run
            it natively such as CPUs with AVX-512 BF16 or AMX; fp32 elsewhere), "fp32" or "bf16".

    Options are checked by `engine.EngineOptions` (UsageError, the command line's wording)
    before any model is loaded or downloaded.
        offline: never touch the network; use the local cache only.
        registry_files: extra registry YAML files with more models.
        download_progress: a callback for download progress (see hub.fetch).
        stems: the stems you will ask for (default: all). Families whose stems are separate
            networks (Open-Unmix) then load only those (plus a residual stem, the mix minus
            them); others load whole and ignore it.
        config: for a local MSST checkpoint (`.ckpt`), its YAML config when it is not beside it.
    """

    def __init__(
        self,
        model: Union[str, Sequence[str]] = "htdemucs",
        *,
        ensemble: Optional[str] = None,
        weights: Optional[Sequence[float]] = None,
        instrumental: str = "auto",
        quality: str = "balanced",
        device: str = "auto",
        segment: Optional[float] = None,
        overlap: Optional[float] = None,
        shifts: int = 0,
        seed: int = 0,
        batch_size: int = 1,
        precision: str = "auto",
        tta: bool = False,
        offline: bool = False,
        registry_files: Sequence[str] = (),
        download_progress: Optional[Callable] = None,
        stems: Optional[Sequence[str]] = None,
        config: Optional[str] = None,
    ):
        self.options = engine.EngineOptions(
            segment=segment, overlap=overlap, shifts=shifts, seed=seed, batch_size=batch_size, precision=precision,
            tta=tta,
        )
        self.device = engine.resolve_device(device)
        names = [model] if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__") else list(model)
        names = [str(n) for n in names]
        if not names:
            raise UsageError("no model given")
        #: With model="auto": what was picked and why, in one line (`pick.Choice`).
        self.choice = None
        if names == ["auto"]:
            from . import pick

            self.choice = pick.choose(registry_files, stems=stems, quality=quality, offline=offline)
            names = [self.choice.name]
        elif "auto" in names:
            raise UsageError("-m auto picks one model by itself; it cannot be an ensemble member",
                             hint="drop auto, or give only -m auto")
        plan = ensemble_plan(names, ensemble, weights, instrumental, registry_files)
        if plan is None:
            self.model_name = names[0]
            self.bag = families.load_model(
                names[0], device=self.device, offline=offline, registry_files=registry_files,
                progress=download_progress, stems=tuple(stems) if stems else None, config=config,
            )
            return
        label, members, options = plan
        _check_members_give(members, stems, options.instrumental, registry_files)
        if config is not None:
            raise UsageError("--config applies to one local checkpoint, not to an ensemble",
                             hint="give the config beside each checkpoint (<name>.yaml) instead")
        from .ensemble_bag import EnsembleBag

        self.model_name = label
        bags = [families.load_model(m, device=self.device, offline=offline, registry_files=registry_files,
                                    progress=download_progress) for m in members]
        self.bag = EnsembleBag(bags, options, name=label, member_names=[b.name for b in bags])

    @property
    def sources(self) -> List[str]:
        """The stems this model produces."""
        return self.bag.sources

    @property
    def samplerate(self) -> int:
        """The model's sample rate; `separate_file` returns stems at this rate."""
        return self.bag.samplerate

    def _run(self, mix: torch.Tensor, stems: Optional[Sequence[str]]) -> Dict[str, torch.Tensor]:
        """mix: [C, T] at the model's rate -> {stem: [C, T]}."""
        compute, _ = StemRequest(stems=tuple(stems) if stems else None).resolve(self.sources)
        if not bool(torch.isfinite(mix).all()):
            raise UsageError("the waveform contains NaN or infinite samples")
        return engine.separate_tensor(self.bag, mix, compute, self.options, self.device)

    def separate(
        self, waveform: Waveform, sample_rate: int, stems: Optional[Sequence[str]] = None
    ) -> Dict[str, torch.Tensor]:
        """Separate an in-memory waveform.

        Args:
            waveform: `[C, T]` or `[T]` float samples in [-1, 1] (torch or numpy).
            sample_rate: its rate; it is resampled to the model's rate and back.
            stems: only these stems (default: all).

        Returns:
            {stem: Tensor [C', T]} at `sample_rate`, with the model's channel
            count C' (2 for every published model; mono input is duplicated).
        """
        x = waveform.detach().cpu().numpy() if isinstance(waveform, torch.Tensor) else np.asarray(waveform)
        if x.ndim == 1:
            x = x[None, :]  # [T] -> [1, T]
        if x.ndim != 2:
            raise UsageError(f"waveform must be [channels, samples] or [samples], got shape {tuple(x.shape)}")
        if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
            raise UsageError(f"invalid sample rate {sample_rate!r}")
        x = _map_channels(x.astype(np.float32), self.bag.audio_channels)
        length = x.shape[1]
        if sample_rate != self.samplerate:
            x = audio.resample(x, int(sample_rate), self.samplerate)
        out = self._run(torch.from_numpy(np.ascontiguousarray(x)), stems)
        if sample_rate != self.samplerate:
            out = {
                s: torch.from_numpy(_fit(audio.resample(v.numpy(), self.samplerate, int(sample_rate)), length))
                for s, v in out.items()
            }
        return out

    def separate_file(self, path, stems: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
        """Decode a file (any format FFmpeg reads) and separate it.

        Returns {stem: Tensor [C, T]} at `self.samplerate`.
        """
        mix = audio.decode(path, sample_rate=self.samplerate, channels=self.bag.audio_channels)
        return self._run(torch.from_numpy(np.ascontiguousarray(mix)), stems)

    def separate_to_files(
        self,
        inputs: Iterable[str],
        output: OutputOptions = OutputOptions(),
        request: StemRequest = StemRequest(),
        on_event: Callable[[Event], None] = lambda e: None,
    ) -> List[TrackResult]:
        """Separate files or folders to stem files, like the `unmix` command (skips finished tracks)."""
        jobs = self.plan(inputs, output, request)
        return run_batch(jobs, self.runtime, request, output, on_event)

    def plan(self, inputs: Iterable[str], output: OutputOptions, request: StemRequest) -> List[Job]:
        return plan_request(inputs, model_name=self.display_name, sources=self.sources, request=request, output=output)

    @property
    def display_name(self) -> str:
        return self.bag.name or str(self.model_name)

    @property
    def runtime(self) -> Runtime:
        return Runtime(bag=self.bag, device=self.device, options=self.options, model_name=self.display_name)


def ensemble_plan(names: List[str], algorithm: Optional[str], weights, instrumental: str, registry_files):
    """(display name, member names, EnsembleOptions) when `names` is an ensemble (several models,
    or one preset's name); None for one model. Every option is checked before anything loads."""
    from .ensemble_bag import EnsembleOptions

    weights = None if weights is None else tuple(weights)
    preset = None
    if len(names) == 1:
        from .registry import load_registry

        if not families.looks_local(names[0]):
            preset = load_registry(registry_files).ensembles.get(names[0])
        if preset is None:
            if algorithm is not None or weights is not None:
                raise UsageError("--ensemble and --weights need two or more models, or an ensemble preset",
                                 hint="give -m more than once, e.g. -m A -m B --ensemble avg_fft")
            return None
        members = list(preset.models)
        if algorithm is None:  # the preset's algorithm, with its weights unless others are given
            algorithm, weights = preset.algorithm, weights if weights is not None else preset.weights
        options = EnsembleOptions(algorithm, len(members), weights, instrumental)
        return preset.name, members, options
    if len(set(names)) != len(names):
        raise UsageError("the same model is named twice in the ensemble", hint="give each model once")
    options = EnsembleOptions(algorithm or "avg_wave", len(names), weights, instrumental)
    return "+".join(_short(n) for n in names), names, options


def _check_members_give(members: List[str], stems: Optional[Sequence[str]], rule: str, registry_files) -> None:
    """A stem some registry member cannot give is refused before anything downloads (a local
    member's stems are only known once it loads; the engine then checks the same)."""
    from .ensemble_bag import common_stems
    from .registry import load_registry

    if not stems or any(families.looks_local(m) for m in members):
        return
    registry = load_registry(registry_files)
    specs = [registry.get(m) for m in members]
    offered = common_stems([spec.stems for spec in specs], rule)
    missing = [s for s in stems if s not in offered]
    if missing:
        lacking = [spec.name for spec in specs if not common_stems([spec.stems], rule) or
                   any(s not in common_stems([spec.stems], rule) for s in missing)]
        raise UsageError(f"the ensemble cannot give {', '.join(missing)}: {', '.join(lacking)} does not",
                         hint="its models share: " + ", ".join(offered))


def _short(name: str) -> str:
    """A model's name for the ensemble's display name: a path's file or folder name."""
    from pathlib import Path

    return Path(name).name if families.looks_local(name) else name


# FFmpeg's default channel orders, so that a 5.1 or 7.1 array downmixes like a 5.1 or 7.1 file.
_DEFAULT_LAYOUTS = {
    1: ["FC"],
    2: ["FL", "FR"],
    6: ["FL", "FR", "FC", "LFE", "BL", "BR"],
    8: ["FL", "FR", "FC", "LFE", "BL", "BR", "SL", "SR"],
}


def _map_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """[C_in, T] -> [channels, T]: mono duplicated, surround downmixed as audio.py does for files."""
    names = _DEFAULT_LAYOUTS.get(x.shape[0], [f"C{i}" for i in range(x.shape[0])])
    matrix = audio.downmix_matrix(names, channels)
    return x if matrix is None else matrix @ x


def _fit(x: np.ndarray, length: int) -> np.ndarray:
    """Trim or zero-pad [C, T] to exactly `length` samples (resampling round trips can be off by one)."""
    if x.shape[1] >= length:
        return np.ascontiguousarray(x[:, :length])
    return np.pad(x, ((0, 0), (0, length - x.shape[1])))
