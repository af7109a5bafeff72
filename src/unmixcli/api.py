"""The public Python API.

    from unmixcli import Separator
    sep = Separator("htdemucs", device="auto")
    stems = sep.separate_file("song.mp3")        # {"vocals": Tensor[C, T], ...} at sep.samplerate
    stems = sep.separate(waveform, 48000)         # waveform [C, T] or [T]; stems at 48 kHz

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
        model: a registry name (`unmix models list`) or a local path (a folder
            with a bag yaml + safetensors, or one checkpoint file).
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
        model: str = "htdemucs",
        *,
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
        self.model_name = model
        self.bag = families.load_model(
            model, device=self.device, offline=offline, registry_files=registry_files, progress=download_progress,
            stems=tuple(stems) if stems else None, config=config,
        )

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
