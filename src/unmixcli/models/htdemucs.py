"""Hybrid Transformer Demucs (Demucs v4, Rouard et al. 2023).

Two U-Nets run side by side, one on the complex spectrogram (real and imaginary
parts as channels) and one on the waveform. Their encoders go down to the
same frame rate; at the bottom a cross-domain transformer
(`transformer.CrossTransformerEncoder`) mixes them, and two decoders come back
up. The output is the sum of the inverse STFT of the spectral branch and the
waveform branch.

Constructor arguments, attribute names and the order in which parameters are
registered are those of `demucs.htdemucs.HTDemucs` (demucs 4.1.0), so that its
checkpoints load as they are (diffq-packed states are positional). The
layers shared with Demucs v3 live in `hdemucs.py`, the spectrogram front and back
end in `hybrid.py`.

Shapes: B batch, S sources, C audio channels, T samples, F frequency bins,
N STFT frames.
"""

from __future__ import annotations

from fractions import Fraction
from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .demucs import rescale_module
from .hdemucs import HDecLayer, HEncLayer, MultiWrap, ScaledEmbedding
from .hybrid import HybridSpectrogram
from .transformer import CrossTransformerEncoder

__all__ = ["HTDemucs"]


class HTDemucs(HybridSpectrogram, nn.Module):
    """Hybrid Transformer Demucs.

    Forward maps a mix `[B, C, T]` to stems `[B, S, C, T]`. With
    `use_train_segment` (the default, and how the released models were
    exported) the network always runs on exactly `segment * samplerate`
    samples in eval mode: a shorter input is zero-padded on the right and the
    output cropped back; a longer one is refused. In training mode the
    segment follows the input length.

    Main arguments (see the reference for the full list; every one is accepted):
        sources: names of the stems, in output order.
        audio_channels: channels of the input and of each stem.
        channels, growth, depth: width of the first layer, its growth per layer,
            number of encoder / decoder layers.
        nfft: STFT size (hop nfft // 4).
        cac: complex-as-channels output (True for every released model);
            otherwise magnitudes are masked and phases recovered by Wiener
            filtering (`wiener_iters`) or the mixture's phase.
        bottom_channels: if > 0, 1x1 convolutions change the width around the
            transformer.
        t_*: transformer settings (layers per branch, heads, embedding, norms...).
        samplerate, segment: metadata; segment (seconds, possibly a Fraction)
            is the training length.
    """

    def __init__(
        self,
        sources: Sequence[str],
        # Channels
        audio_channels: int = 2,
        channels: int = 48,
        channels_time: Optional[int] = None,
        growth: int = 2,
        # STFT
        nfft: int = 4096,
        wiener_iters: int = 0,
        end_iters: int = 0,
        wiener_residual: bool = False,
        cac: bool = True,
        # Main structure
        depth: int = 4,
        rewrite: bool = True,
        # Frequency branch
        multi_freqs=None,
        multi_freqs_depth: int = 3,
        freq_emb: float = 0.2,
        emb_scale: float = 10,
        emb_smooth: bool = True,
        # Convolutions
        kernel_size: int = 8,
        time_stride: int = 2,
        stride: int = 4,
        context: int = 1,
        context_enc: int = 0,
        # Normalization
        norm_starts: int = 4,
        norm_groups: int = 4,
        # DConv residual branch
        dconv_mode: int = 1,
        dconv_depth: int = 2,
        dconv_comp: int = 8,
        dconv_init: float = 1e-3,
        # Before the transformer
        bottom_channels: int = 0,
        # Transformer
        t_layers: int = 5,
        t_emb: str = "sin",
        t_hidden_scale: float = 4.0,
        t_heads: int = 8,
        t_dropout: float = 0.0,
        t_max_positions: int = 10000,
        t_norm_in: bool = True,
        t_norm_in_group: bool = False,
        t_group_norm: bool = False,
        t_norm_first: bool = True,
        t_norm_out: bool = True,
        t_max_period: float = 10000.0,
        t_weight_decay: float = 0.0,
        t_lr: Optional[float] = None,
        t_layer_scale: bool = True,
        t_gelu: bool = True,
        t_weight_pos_embed: float = 1.0,
        t_sin_random_shift: int = 0,
        t_cape_mean_normalize: bool = True,
        t_cape_augment: bool = True,
        t_cape_glob_loc_scale: Sequence[float] = (5000.0, 1.0, 1.4),
        t_sparse_self_attn: bool = False,
        t_sparse_cross_attn: bool = False,
        t_mask_type: str = "diag",
        t_mask_random_seed: int = 42,
        t_sparse_attn_window: int = 500,
        t_global_window: int = 100,
        t_sparsity: float = 0.95,
        t_auto_sparsity: bool = False,
        # Particular parameters
        t_cross_first: bool = False,
        # Weight init
        rescale: float = 0.1,
        # Metadata
        samplerate: int = 44100,
        segment=10,
        use_train_segment: bool = True,
    ):
        super().__init__()
        if wiener_iters != end_iters:
            raise ValueError("wiener_iters and end_iters must be equal for a hybrid model")
        self.cac = cac
        self.wiener_residual = wiener_residual
        self.audio_channels = audio_channels
        self.sources = list(sources)
        self.kernel_size = kernel_size
        self.context = context
        self.stride = stride
        self.depth = depth
        self.bottom_channels = bottom_channels
        self.channels = channels
        self.samplerate = samplerate
        self.segment = segment
        self.use_train_segment = use_train_segment
        self.nfft = nfft
        self.hop_length = nfft // 4
        self.wiener_iters = wiener_iters
        self.end_iters = end_iters
        self.freq_emb = None

        # Registration order matters (positional packed states): the four lists
        # first, then freq_emb, the optional bottom convs, the transformer.
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.tencoder = nn.ModuleList()
        self.tdecoder = nn.ModuleList()

        # Channel counts: `chin`/`chout` for the waveform branch, `*_z` for the
        # spectral one (twice as many inputs with complex-as-channels).
        chin = audio_channels
        chin_z = chin * 2 if cac else chin
        chout = channels_time or channels
        chout_z = channels
        freqs = nfft // 2  # frequency bins still to fold at this depth

        for index in range(depth):
            freq = freqs > 1
            ker, stri, pad = kernel_size, stride, True
            if not freq:
                # The frequency axis is gone: plain time convolutions from here on.
                ker, stri = time_stride * 2, time_stride
            last_freq = freq and freqs <= kernel_size
            if last_freq:
                # The last frequency layer folds all remaining bins at once, after which
                # both branches have one "frequency" and are merged.
                ker, pad = freqs, False
                chout_z = max(chout, chout_z)
                chout = chout_z

            kw = {
                "kernel_size": ker,
                "stride": stri,
                "freq": freq,
                "pad": pad,
                "norm": index >= norm_starts,
                "rewrite": rewrite,
                "norm_groups": norm_groups,
                "dconv_kw": {"depth": dconv_depth, "compress": dconv_comp, "init": dconv_init, "gelu": True},
            }
            # Waveform layers always use the nominal kernel and stride.
            kwt = dict(kw, freq=0, kernel_size=kernel_size, stride=stride, pad=True)
            kw_dec = dict(kw)
            multi = bool(multi_freqs) and index < multi_freqs_depth
            if multi:
                kw_dec["context_freq"] = False

            enc = HEncLayer(chin_z, chout_z, dconv=dconv_mode & 1, context=context_enc, **kw)
            if freq:
                # At the merge depth the waveform layer is only a strided conv ("empty")
                # whose output is injected into the spectral encoder.
                self.tencoder.append(
                    HEncLayer(chin, chout, dconv=dconv_mode & 1, context=context_enc, empty=last_freq, **kwt)
                )
            if multi:
                enc = MultiWrap(enc, multi_freqs)
            self.encoder.append(enc)

            if index == 0:
                # The outermost decoders emit every source at once.
                chin = audio_channels * len(self.sources)
                chin_z = chin * 2 if cac else chin
            dec = HDecLayer(chout_z, chin_z, dconv=dconv_mode & 2, last=index == 0, context=context, **kw_dec)
            if multi:
                dec = MultiWrap(dec, multi_freqs)
            if freq:
                self.tdecoder.insert(
                    0,
                    HDecLayer(chout, chin, dconv=dconv_mode & 2, empty=last_freq, last=index == 0,
                              context=context, **kwt),
                )
            self.decoder.insert(0, dec)

            chin, chin_z = chout, chout_z
            chout, chout_z = int(growth * chout), int(growth * chout_z)
            if freq:
                freqs = 1 if freqs <= kernel_size else freqs // stride
            if index == 0 and freq_emb:
                # Learnt frequency embedding after the first layer lets the frequency
                # convolutions depend on absolute position.
                self.freq_emb = ScaledEmbedding(freqs, chin_z, smooth=emb_smooth, scale=emb_scale)
                self.freq_emb_scale = freq_emb

        if rescale:
            rescale_module(self, reference=rescale)

        transformer_channels = channels * growth ** (depth - 1)
        if bottom_channels:
            self.channel_upsampler = nn.Conv1d(transformer_channels, bottom_channels, 1)
            self.channel_downsampler = nn.Conv1d(bottom_channels, transformer_channels, 1)
            self.channel_upsampler_t = nn.Conv1d(transformer_channels, bottom_channels, 1)
            self.channel_downsampler_t = nn.Conv1d(bottom_channels, transformer_channels, 1)
            transformer_channels = bottom_channels

        self.crosstransformer: Optional[CrossTransformerEncoder] = None
        if t_layers > 0:
            self.crosstransformer = CrossTransformerEncoder(
                dim=transformer_channels,
                emb=t_emb,
                hidden_scale=t_hidden_scale,
                num_heads=t_heads,
                num_layers=t_layers,
                cross_first=t_cross_first,
                dropout=t_dropout,
                max_positions=t_max_positions,
                norm_in=t_norm_in,
                norm_in_group=t_norm_in_group,
                group_norm=t_group_norm,
                norm_first=t_norm_first,
                norm_out=t_norm_out,
                max_period=t_max_period,
                weight_decay=t_weight_decay,
                lr=t_lr,
                layer_scale=t_layer_scale,
                gelu=t_gelu,
                sin_random_shift=t_sin_random_shift,
                weight_pos_embed=t_weight_pos_embed,
                cape_mean_normalize=t_cape_mean_normalize,
                cape_augment=t_cape_augment,
                cape_glob_loc_scale=t_cape_glob_loc_scale,
                sparse_self_attn=t_sparse_self_attn,
                sparse_cross_attn=t_sparse_cross_attn,
                mask_type=t_mask_type,
                mask_random_seed=t_mask_random_seed,
                sparse_attn_window=t_sparse_attn_window,
                global_window=t_global_window,
                sparsity=t_sparsity,
                auto_sparsity=t_auto_sparsity,
            )

    # ---------------------------------------------------------------- lengths

    def _training_length(self) -> int:
        return int(self.segment * self.samplerate)

    def valid_length(self, length: int) -> int:
        """The length the network actually runs on for an input of `length` samples.

        Raises ValueError if `length` exceeds the training length (with use_train_segment).
        """
        if not self.use_train_segment:
            return length
        training_length = self._training_length()
        if training_length < length:
            raise ValueError(f"Given length {length} is longer than training length {training_length}")
        return training_length

    # ---------------------------------------------------------------- forward

    def forward(self, mix: Tensor) -> Tensor:
        """`mix [B, C, T]` -> stems `[B, S, C, T]`."""
        length = mix.shape[-1]
        run_length = length  # what the network actually processes
        if self.use_train_segment:
            if self.training:
                # Training defines the segment (as the reference does, for export).
                self.segment = Fraction(length, self.samplerate)
            else:
                run_length = self.valid_length(length)
                if length < run_length:
                    mix = F.pad(mix, (0, run_length - length))

        # Both branches are standardised per item; the statistics are put back at the end.
        z, x, mean, std = self._spectral_input(mix)  # z [B, C, F, N] complex, x [B, C', F, N]
        B, C, Fq, T = x.shape
        xt = mix
        meant = xt.mean(dim=(1, 2), keepdim=True)
        stdt = xt.std(dim=(1, 2), keepdim=True)
        xt = (xt - meant) / (1e-5 + stdt)

        saved: List[Tensor] = []  # spectral skips
        saved_t: List[Tensor] = []  # waveform skips
        lengths: List[int] = []  # spectral frame counts before each layer, to undo padding
        lengths_t: List[int] = []  # waveform lengths before each layer
        for idx, encode in enumerate(self.encoder):
            lengths.append(x.shape[-1])
            inject = None
            if idx < len(self.tencoder):
                lengths_t.append(xt.shape[-1])
                tenc = self.tencoder[idx]
                xt = tenc(xt)
                if tenc.empty:
                    # Now at the spectral branch's rate and shape: merged into it.
                    inject = xt
                else:
                    saved_t.append(xt)
            x = encode(x, inject)
            if idx == 0 and self.freq_emb is not None:
                bins = torch.arange(x.shape[-2], device=x.device)
                emb = self.freq_emb(bins).t()[None, :, :, None].expand_as(x)  # [B, C, F, N]
                x = x + self.freq_emb_scale * emb
            saved.append(x)

        if self.crosstransformer is not None:
            if self.bottom_channels:
                b, c, f, t = x.shape
                x = self.channel_upsampler(x.reshape(b, c, f * t)).view(b, -1, f, t)
                xt = self.channel_upsampler_t(xt)
            x, xt = self.crosstransformer(x, xt)
            if self.bottom_channels:
                b, c, f, t = x.shape
                x = self.channel_downsampler(x.reshape(b, c, f * t)).view(b, -1, f, t)
                xt = self.channel_downsampler_t(xt)

        offset = self.depth - len(self.tdecoder)
        for idx, decode in enumerate(self.decoder):
            # `pre` is the output before the final transposed conv: where the
            # waveform decoder branches off again at the merge depth.
            x, pre = decode(x, saved.pop(-1), lengths.pop(-1))
            if idx >= offset:
                tdec = self.tdecoder[idx - offset]
                length_t = lengths_t.pop(-1)
                if tdec.empty:
                    if pre.shape[2] != 1:
                        raise RuntimeError(f"expected a single frequency at the merge, got {tuple(pre.shape)}")
                    xt, _ = tdec(pre[:, :, 0], None, length_t)
                else:
                    xt, _ = tdec(xt, saved_t.pop(-1), length_t)
        if saved or saved_t or lengths_t:
            raise RuntimeError("unused skip connections: encoder and decoder do not match")

        S = len(self.sources)
        x = x.view(B, S, -1, Fq, T)  # [B, S, C', F, N]
        x = self._spectral_output(x, z, mean, std, run_length)  # [B, S, C, run_length]

        xt = xt.view(B, S, -1, run_length)
        xt = xt * stdt[:, None] + meant[:, None]
        x = xt + x
        if run_length != length:
            x = x[..., :length]
        return x
