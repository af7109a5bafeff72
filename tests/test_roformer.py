"""BS-RoFormer / Mel-Band RoFormer: parity with bs-roformer 0.3.10 and the checkpoint loader.

The reference package is a test-only oracle. Models are tiny and random; the
reference's own state dict is loaded into ours unchanged (strict) and both
must agree to 1e-5 of the output's peak. 0.3.10 has no `zero_dc` step, whereas
ours (as MSST's classes) zeroes the DC bin unless told not to: every comparison
with 0.3.10 here sets `zero_dc=False` (tests/test_roformer_msst.py compares with
MSST itself).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from unmixcli.errors import CheckpointError
from unmixcli.models import roformer as R
from unmixcli.families.msst import read_config
from unmixcli.families.roformer import load_roformer

ref_bs = pytest.importorskip("bs_roformer.bs_roformer")
ref_mel = pytest.importorskip("bs_roformer.mel_band_roformer")

# The reference calls a deprecated torch context manager on every forward.
pytestmark = pytest.mark.filterwarnings("ignore:.*sdp_kernel.*:FutureWarning")

# 1025 bins of a 2048-point STFT in 39 bands (the default 62 makes tests slower for nothing).
SMALL_BANDS = (4,) * 12 + (12,) * 8 + (24,) * 8 + (48,) * 9 + (128, 129)
assert sum(SMALL_BANDS) == 1025

BS_CFG = dict(dim=32, depth=2, stereo=True, num_stems=2, time_transformer_depth=1, freq_transformer_depth=1,
              freqs_per_bands=SMALL_BANDS, dim_head=16, heads=2, stft_hop_length=441)
# What 0.3.10 does (it has no zero_dc argument): for our side of every comparison with it.
AS_0310 = dict(zero_dc=False)
MEL_CFG = dict(dim=32, depth=2, stereo=True, num_stems=1, time_transformer_depth=1, freq_transformer_depth=1,
               num_bands=16, dim_head=16, heads=2, stft_hop_length=441, mask_estimator_depth=2)
MEL_MONO_CFG = dict(dim=48, depth=1, stereo=False, num_stems=3, num_bands=12, dim_head=16, heads=3,
                    stft_n_fft=1024, stft_win_length=1024, stft_hop_length=256)


def _reference(cls, cfg, seed=0):
    """A random reference model; norm gains are perturbed so that they matter."""
    torch.manual_seed(seed)
    ref = cls(**cfg).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("gamma"):
                p.mul_(1 + 0.2 * torch.randn_like(p))
    return ref


def _run_ref(ref, x, stems):
    with torch.inference_mode():
        y = ref(x)
    return y.unsqueeze(1) if stems == 1 else y  # the reference drops a single stem axis


def _rel_err(y_ref, y_ours):
    # 0.3.10 returns hop * (T // hop) samples; ours always the input's length.
    n = y_ref.shape[-1]
    return float((y_ours[..., :n] - y_ref).abs().max() / y_ref.abs().max())


# --------------------------------------------------------------------------- mel bands


@pytest.mark.parametrize("sr, n_fft, n_mels", [(44100, 2048, 60), (44100, 2048, 128), (48000, 1024, 40),
                                               (22050, 512, 24), (44100, 4096, 64)])
def test_slaney_filterbank_equals_librosa(sr, n_fft, n_mels):
    librosa_filters = pytest.importorskip("librosa.filters")
    ours = R.slaney_mel_filterbank(sr, n_fft, n_mels)
    theirs = librosa_filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels)
    assert ours.dtype == theirs.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs)


def test_mel_band_layout_equals_reference():
    cfg = dict(MEL_CFG, num_bands=60)
    ref = ref_mel.MelBandRoformer(**cfg)
    ours = R.MelBandRoformer(**cfg)
    for buf in ("freq_indices", "freqs_per_band", "num_freqs_per_band", "num_bands_per_freq"):
        assert torch.equal(getattr(ours, buf), getattr(ref, buf)), buf
    # every bin is covered, and the lowest and highest bins belong to the end bands
    member = ours.freqs_per_band
    assert member.any(dim=0).all() and member[0, 0] and member[-1, -1]


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize(
    "ref_cls, our_cls, cfg, batch, small_blocks",
    [
        (ref_bs.BSRoformer, R.BSRoformer, BS_CFG, 1, False),
        (ref_mel.MelBandRoformer, R.MelBandRoformer, MEL_CFG, 2, True),
        (ref_mel.MelBandRoformer, R.MelBandRoformer, MEL_MONO_CFG, 1, False),
    ],
    ids=["bs-stereo-2stems", "mel-stereo-batch2-blocked", "mel-mono-3stems"],
)
def test_parity_with_reference(ref_cls, our_cls, cfg, batch, small_blocks, monkeypatch):
    if small_blocks:
        # Token blocks that split frames and batch items unevenly (the real sizes
        # only split long chunks).
        monkeypatch.setattr(R.Attention, "block", 3 * cfg["num_bands"] - 1)
        monkeypatch.setattr(R.FeedForward, "block", 100)
    ref = _reference(ref_cls, cfg)
    ours = our_cls(**cfg, **AS_0310).eval()
    ref_state = ref.state_dict()
    assert list(ours.state_dict()) == list(ref_state)  # same keys, same order
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    ours.load_state_dict(ref_state, strict=True)

    channels = 2 if cfg["stereo"] else 1
    length = 22050 + 123  # not a multiple of the hop
    torch.manual_seed(1)
    x = torch.randn(batch, channels, length)
    y_ref = _run_ref(ref, x, cfg["num_stems"])
    with torch.inference_mode():
        y = ours(x)
    assert y.shape == (batch, cfg["num_stems"], channels, length)
    assert ours.sources == [f"stem{i}" for i in range(cfg["num_stems"])]
    assert ours.audio_channels == channels and ours.samplerate == 44100
    assert _rel_err(y_ref, y) < 1e-5


def _msst_forward(ref, x, skip_connection):
    """MSST's Mel-Band RoFormer forward (skip connections) built from the reference's own modules."""
    b, c, t = x.shape
    spec = torch.stft(x.reshape(b * c, t), **ref.stft_kwargs, window=ref.stft_window_fn(device=x.device),
                      return_complex=True)
    spec = torch.view_as_real(spec).view(b, c, *spec.shape[1:], 2)  # [b, c, f, n, 2]
    spec = spec.permute(0, 2, 1, 3, 4).reshape(b, -1, spec.shape[3], 2)  # [b, (f c), n, 2]
    feats = spec[:, ref.freq_indices].permute(0, 2, 1, 3).reshape(b, spec.shape[2], -1)
    h = ref.band_split(feats)  # [b, n, k, d]
    saved = []
    for i, (time_tf, freq_tf) in enumerate(ref.layers):
        if skip_connection:
            for j in range(i):
                h = h + saved[j]
        n, k, d = h.shape[1:]
        h = time_tf(h.transpose(1, 2).reshape(b * k, n, d)).view(b, k, n, d).transpose(1, 2)
        h = freq_tf(h.reshape(b * n, k, d)).view(b, n, k, d)
        saved.append(h)
    masks = torch.stack([est(h) for est in ref.mask_estimators], dim=1)  # [b, s, n, (f c 2)]
    masks = torch.view_as_complex(masks.view(*masks.shape[:3], -1, 2).transpose(2, 3).contiguous())
    summed = torch.zeros(b, masks.shape[1], spec.shape[1], spec.shape[2], dtype=masks.dtype)
    summed.index_add_(2, ref.freq_indices, masks)
    summed = summed / ref.num_bands_per_freq.repeat_interleave(c)[:, None]
    out = torch.view_as_complex(spec.contiguous())[:, None] * summed  # [b, s, (f c), n]
    out = out.view(b, out.shape[1], -1, c, out.shape[-1]).transpose(2, 3).reshape(-1, out.shape[2] // c, out.shape[-1])
    audio = torch.istft(out, **ref.stft_kwargs, window=ref.stft_window_fn(device=x.device), length=t)
    return audio.view(b, -1, c, t)


def test_msst_flags_skip_connection_and_mlp_expansion():
    """Flags of MSST checkpoints absent from 0.3.10: skip connections between layers, MLP width."""
    cfg = dict(MEL_CFG, depth=3)
    ref = _reference(ref_mel.MelBandRoformer, cfg)
    dims = ref.band_split.dim_inputs
    torch.manual_seed(3)
    ref.mask_estimators = torch.nn.ModuleList(
        [ref_mel.MaskEstimator(dim=32, dim_inputs=dims, depth=2, mlp_expansion_factor=2)]).eval()
    x = torch.randn(1, 2, 11025)
    outs = {}
    for skip in (False, True):
        ours = R.MelBandRoformer(**cfg, skip_connection=skip, mlp_expansion_factor=2, **AS_0310).eval()
        ours.load_state_dict(ref.state_dict(), strict=True)
        with torch.inference_mode():
            expected = _msst_forward(ref, x, skip)
            outs[skip] = ours(x)
        assert _rel_err(expected, outs[skip]) < 1e-5
    assert _rel_err(outs[False], outs[True]) > 1e-3  # the flag changes the output


def test_zero_dc_removes_only_the_dc_bin():
    ref = _reference(ref_bs.BSRoformer, BS_CFG)
    ours = R.BSRoformer(**BS_CFG, **AS_0310).eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, 2, 22050)
    with torch.inference_mode():
        full = ours(x)
        ours.zero_dc = True
        no_dc = ours(x)
    diff = (full - no_dc).reshape(-1, x.shape[-1])
    assert diff.abs().max() > 1e-4 * full.abs().max()
    # istft is linear: the difference is the resynthesised DC row alone, i.e. near-DC content only
    spec = torch.stft(diff, n_fft=2048, hop_length=441, window=torch.hann_window(2048), return_complex=True)
    energy = spec.abs().pow(2)[..., 2:-2].sum(dim=(0, 2))
    assert energy[4:].sum() < 1e-4 * energy.sum()


# --------------------------------------------------------------------------- loader

BS_YAML = """\
audio:
  chunk_size: 22050
  sample_rate: 44100
  num_channels: 2
model:
  dim: 32
  depth: 2
  stereo: true
  num_stems: 2
  time_transformer_depth: 1
  freq_transformer_depth: 1
  freqs_per_bands: !!python/tuple
{bands}
  dim_head: 16
  heads: 2
  stft_hop_length: 441
  attn_dropout: 0.1
  ff_dropout: 0.1
  flash_attn: true
  mask_estimator_depth: 2
  multi_stft_resolutions_window_sizes: !!python/tuple [4096, 2048, 1024, 512, 256]
  zero_dc: false  # compared with bs-roformer 0.3.10, which has no zero_dc step
training:
  instruments: [vocals, other]
  target_instrument: null
inference:
  num_overlap: 4
""".format(bands="\n".join(f"  - {b}" for b in SMALL_BANDS))

MEL_YAML = """\
audio:
  chunk_size: 44100
  sample_rate: 44100
model:
  dim: 32
  depth: 2
  stereo: true
  num_stems: 1
  time_transformer_depth: 1
  freq_transformer_depth: 1
  num_bands: 16
  dim_head: 16
  heads: 2
  stft_hop_length: 441
  mask_estimator_depth: 2
  mlp_expansion_factor: 4
  skip_connection: false
  zero_dc: false  # compared with bs-roformer 0.3.10, which has no zero_dc step
training:
  instruments: [vocals, other]
  target_instrument: vocals
inference:
  num_overlap: 2
"""


@pytest.mark.parametrize("family, wrap", [("bs", None), ("mel", "state_dict")])
def test_load_roformer_community_layout(tmp_path, family, wrap):
    if family == "bs":
        ref, text, stems = _reference(ref_bs.BSRoformer, BS_CFG), BS_YAML, ["vocals", "other"]
    else:
        ref, text, stems = _reference(ref_mel.MelBandRoformer, MEL_CFG), MEL_YAML, ["vocals"]
    state = ref.state_dict()
    ckpt = tmp_path / "model.ckpt"
    torch.save({wrap: state} if wrap else state, ckpt)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(text)

    bag = load_roformer(ckpt, cfg)
    model = bag.models[0]
    assert isinstance(model, R.BSRoformer if family == "bs" else R.MelBandRoformer)
    assert bag.sources == stems and model.sources == stems
    assert bag.samplerate == 44100 and bag.audio_channels == 2
    assert bag.window == "fade" and bag.normalize is False
    assert model.zero_dc is False  # the config says so
    assert model.segment == (0.5 if family == "bs" else 1.0)
    assert bag.overlap == (0.75 if family == "bs" else 0.5)
    assert not model.training

    x = torch.randn(1, 2, 8820)
    y_ref = _run_ref(ref, x, len(stems))
    with torch.inference_mode():
        y = model(x)
    assert _rel_err(y_ref, y) < 1e-5


def test_config_reader_tuple_only(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  freqs_per_bands: !!python/tuple [2, 3]\n")
    assert read_config(cfg)["model"]["freqs_per_bands"] == (2, 3)
    marker = tmp_path / "yaml_ran"
    cfg.write_text(f"model: !!python/object/apply:os.system [\"touch {marker}\"]\n")
    with pytest.raises(CheckpointError, match="tag"):
        read_config(cfg)
    cfg.write_text("model: !!python/object:collections.OrderedDict {}\n")
    with pytest.raises(CheckpointError, match="tag"):
        read_config(cfg)
    assert not marker.exists()


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_running_pickle_is_refused(tmp_path):
    marker = tmp_path / "pickle_ran"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": _Payload(marker)}, ckpt)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(MEL_YAML)
    with pytest.raises(CheckpointError, match="refused") as info:
        load_roformer(ckpt, cfg)
    assert info.value.path == str(ckpt) and info.value.hint
    assert not marker.exists()


def test_mismatched_or_unknown_config_is_a_checkpoint_error(tmp_path):
    ckpt = tmp_path / "m.pth"
    torch.save(_reference(ref_mel.MelBandRoformer, MEL_CFG).state_dict(), ckpt)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(MEL_YAML.replace("dim: 32", "dim: 48"))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_roformer(ckpt, cfg)
    cfg.write_text(MEL_YAML.replace("num_bands: 16", "num_bands: 20"))
    with pytest.raises(CheckpointError, match="missing|unexpected|size"):
        load_roformer(ckpt, cfg)
    cfg.write_text(MEL_YAML.replace("  skip_connection: false\n", "  skip_connection: false\n  use_pope: true\n"))
    with pytest.raises(CheckpointError, match="use_pope"):
        load_roformer(ckpt, cfg)


def test_release_size_config_maps_to_constructor(tmp_path):
    """A released Mel-Band RoFormer's config (every model key such configs carry) maps cleanly."""
    import inspect

    from unmixcli.families.roformer import model_kwargs

    cfg = tmp_path / "kj.yaml"
    cfg.write_text(
        "audio: {chunk_size: 352800, dim_f: 1024, dim_t: 256, hop_length: 441, n_fft: 2048, num_channels: 2,\n"
        "        sample_rate: 44100, min_mean_abs: 0.0}\n"
        "model:\n"
        "  {dim: 384, depth: 6, stereo: true, num_stems: 1, time_transformer_depth: 1, freq_transformer_depth: 1,\n"
        "   linear_transformer_depth: 0, num_bands: 60, dim_head: 64, heads: 8, attn_dropout: 0, ff_dropout: 0,\n"
        "   flash_attn: true, dim_freqs_in: 1025, sample_rate: 44100, stft_n_fft: 2048, stft_hop_length: 441,\n"
        "   stft_win_length: 2048, stft_normalized: false, mask_estimator_depth: 2,\n"
        "   multi_stft_resolution_loss_weight: 1.0, multi_stft_hop_size: 147, multi_stft_normalized: false,\n"
        "   multi_stft_resolutions_window_sizes: !!python/tuple [4096, 2048, 1024, 512, 256]}\n"
        "training: {instruments: [vocals, other], target_instrument: vocals, use_amp: true}\n"
        "inference: {batch_size: 4, dim_t: 256, num_overlap: 2}\n"
    )
    kwargs = model_kwargs(read_config(cfg), "mel_band_roformer")
    assert kwargs["num_bands"] == 60 and kwargs["stft_hop_length"] == 441 and kwargs["sample_rate"] == 44100
    inspect.signature(R.MelBandRoformer).bind(**kwargs)  # every key is a constructor argument
