"""Parity of our HTDemucs (v4) and its cross-domain transformer with demucs 4.1.0.

Both networks get the same random weights (the reference's state dict, loaded
strictly into ours); outputs must agree to float32 rounding, and parameter
names, shapes and order must be identical (diffq-packed states are positional).
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

demucs_htdemucs = pytest.importorskip("demucs.htdemucs")
demucs_transformer = pytest.importorskip("demucs.transformer")

from unmixcli.errors import CheckpointError  # noqa: E402
from unmixcli.models import transformer as ours_tr  # noqa: E402
from unmixcli.models.htdemucs import HTDemucs  # noqa: E402

SOURCES4 = ["drums", "bass", "other", "vocals"]
SOURCES6 = SOURCES4 + ["guitar", "piano"]
# The published htdemucs / htdemucs_ft / htdemucs_6s checkpoints were trained with these
# non-default kwargs: the 533 tensors / 41,984,456 values of the published htdemucs files
# are only reached with them.
RELEASED = dict(dconv_mode=3, bottom_channels=512, t_dropout=0.02, segment=Fraction(39, 5))
RELEASED_6S = dict(dconv_mode=3, t_dropout=0.02, segment=Fraction(39, 5))

TOL = 1e-5  # max |ours - ref| <= TOL * max |ref|


def _names(model: torch.nn.Module):
    return [(name, tuple(p.shape)) for name, p in model.named_parameters()]


def _shared_random_state(ref: torch.nn.Module, seed: int = 0) -> dict:
    """The reference's state with every LayerScale opened up (they start at 1e-4 / 1e-3,
    which would hide the transformer and the DConv branches from the comparison)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, value in ref.state_dict().items():
        if name.endswith(".scale") and value.dim() == 1:
            value = 0.3 + 0.5 * torch.rand(value.shape, generator=gen)
        state[name] = value.clone()
    ref.load_state_dict(state)
    return state


def _pair(cls_ref, cls_ours, *args, **kwargs):
    torch.manual_seed(0)
    ref = cls_ref(*args, **kwargs)
    ours = cls_ours(*args, **kwargs)
    assert _names(ours) == _names(ref)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(_shared_random_state(ref), strict=True)
    return ref.eval(), ours.eval()


def _assert_close(ours: torch.Tensor, ref: torch.Tensor):
    assert ours.shape == ref.shape
    scale = ref.abs().max().item()
    assert scale > 0
    err = (ours - ref).abs().max().item()
    assert err <= TOL * scale, f"max |diff| {err:.3g} vs max |ref| {scale:.3g}"


# ----------------------------------------------------------------------------- transformer


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(norm_first=True, norm_out=True, layer_scale=True),  # as in HTDemucs
        dict(cross_first=True, group_norm=1, norm_in=False, norm_in_group=1, gelu=False),
        dict(emb="scaled", norm_first=False, num_layers=2),
        dict(emb="cape", norm_in=False, weight_pos_embed=0.5),
    ],
)
def test_cross_transformer_matches_reference(kwargs):
    kwargs = dict(dict(dim=32, num_heads=4, num_layers=3), **kwargs)
    ref, ours = _pair(demucs_transformer.CrossTransformerEncoder, ours_tr.CrossTransformerEncoder, **kwargs)
    x = torch.randn(2, 32, 4, 15)  # [B, C, F, N]
    xt = torch.randn(2, 32, 37)  # [B, C, T]
    with torch.no_grad():
        ref_x, ref_xt = ref(x, xt)
        our_x, our_xt = ours(x, xt)
    _assert_close(our_x, ref_x)
    _assert_close(our_xt, ref_xt)


@pytest.mark.parametrize("kind", ["diag", "jmask", "random", "global", "diag_jmask_random"])
def test_sparse_patterns_match_reference(kind):
    args = (23, 17, kind, 2, 3, 42, 0.8, "cpu")  # 23 keys, 17 queries
    ours = ours_tr.get_mask(*args)
    parts = [demucs_transformer.get_elementary_mask(*args[:2], k, *args[3:]) for k in kind.split("_")]
    ref = torch.stack(parts).sum(0) > 0
    assert ours.shape == (17, 23)
    assert torch.equal(ours, ref)


def test_sparse_attention_is_masked_softmax_attention():
    """The sparse layers (xformers-only in the reference) attend only inside their pattern."""
    torch.manual_seed(0)
    attn = ours_tr.MultiheadAttention(16, 2, batch_first=True, auto_sparsity=0).eval()
    q, k = torch.randn(1, 9, 16), torch.randn(1, 12, 16)
    mask = ours_tr.get_mask(12, 9, "diag", 1, 0, 0, 0.0, "cpu")
    with torch.no_grad():
        out = attn(q, k, mask)
        heads = lambda t: t.view(1, t.shape[1], 2, 8).transpose(1, 2)  # noqa: E731
        qh, kh, vh = heads(attn.q(q)), heads(attn.k(k)), heads(attn.v(k))
        scores = (qh @ kh.transpose(-1, -2)) / 8 ** 0.5
        weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        expected = attn.proj((weights @ vh).transpose(1, 2).reshape(1, 9, 16))
    _assert_close(out, expected)


# ----------------------------------------------------------------------------- tiny HTDemucs

TINY = dict(channels=8, dconv_comp=4, nfft=512, depth=3, t_layers=2, t_heads=2,
            samplerate=8000, segment=Fraction(1, 2))


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        # branches merge below the transformer: empty time layers, time-only layers
        dict(nfft=256, depth=4, dconv_mode=3, t_layers=0),
        dict(dconv_mode=3, bottom_channels=16, t_cross_first=True, t_layers=3),
        dict(multi_freqs=[0.5], multi_freqs_depth=1, t_emb="scaled", t_norm_first=False,
             t_layer_scale=False),
        dict(cac=False, wiener_iters=1, end_iters=1, wiener_residual=True, t_emb="cape",
             t_group_norm=1, t_norm_in=False, t_norm_in_group=1),
        dict(cac=False, wiener_iters=-1, end_iters=-1, use_train_segment=False, freq_emb=0,
             t_gelu=False),
    ],
    ids=["base", "merged", "bottom", "multi", "wiener", "phase"],
)
def test_tiny_htdemucs_matches_reference(kwargs):
    ref, ours = _pair(demucs_htdemucs.HTDemucs, HTDemucs, SOURCES4, **dict(TINY, **kwargs))
    torch.manual_seed(1)
    mix = torch.randn(2, 2, 3000)  # shorter than the 4000-sample segment: padded inside
    with torch.no_grad():
        expected = ref(mix)
        got = ours(mix)
    assert got.shape == (2, 4, 2, 3000)
    _assert_close(got, expected)


def test_sparse_configs_register_like_reference():
    """The reference's sparse layers only run with xformers; their parameters
    (q/k/v/proj attention, registered where the dense one was) must still load."""
    kwargs = dict(TINY, t_sparse_self_attn=True, t_sparse_cross_attn=True)
    _pair(demucs_htdemucs.HTDemucs, HTDemucs, SOURCES4, **kwargs)


@pytest.mark.parametrize("which", ["t_sparse_self_attn", "t_sparse_cross_attn"])
def test_dynamic_sparsity_is_refused_when_built_not_when_run(which):
    """Dynamic ("auto") sparsity needs a custom xformers kernel we do not have: the
    model must not build (a forward that fails would fail every track of a batch)."""
    kwargs = dict(TINY, t_auto_sparsity=True, **{which: True})
    with pytest.raises(ValueError, match="t_auto_sparsity.*xformers"):
        HTDemucs(SOURCES4, **kwargs)
    with pytest.raises(ValueError, match="t_auto_sparsity"):
        ours_tr.MultiheadAttention(16, 2, batch_first=True, auto_sparsity=0.9)
    # Without sparse layers the setting is unused (as in the reference): the model builds.
    HTDemucs(SOURCES4, **dict(TINY, t_auto_sparsity=True))


def test_dynamic_sparsity_checkpoint_is_refused_at_load(tmp_path):
    """Through the loader the constructor's refusal is a CheckpointError naming the file."""
    from demucs_export import export_model
    from unmixcli.families.demucs import load_demucs_safetensors

    torch.manual_seed(0)
    ref = demucs_htdemucs.HTDemucs(SOURCES4, **dict(TINY, t_sparse_self_attn=True, t_auto_sparsity=True))
    sig = export_model(ref, tmp_path)
    path = tmp_path / f"{sig}.safetensors"
    with pytest.raises(CheckpointError, match="could not build HTDemucs.*t_auto_sparsity") as info:
        load_demucs_safetensors(path)
    assert str(path) in str(info.value)


def test_segment_handling_follows_reference():
    ref, ours = _pair(demucs_htdemucs.HTDemucs, HTDemucs, SOURCES4, **TINY)
    assert (ours.samplerate, ours.audio_channels, ours.sources) == (8000, 2, SOURCES4)
    assert ours.segment == Fraction(1, 2) and ours.valid_length(100) == 4000
    mix = torch.randn(1, 2, 4000)
    with torch.no_grad():
        # Exactly one segment: no padding.
        _assert_close(ours(mix), ref(mix))
        # Padding to the segment is not the same as running on the short input.
        short = ours(mix[..., :1000])
        ours.use_train_segment = False
        assert ours.valid_length(1000) == 1000
        assert not torch.allclose(ours(mix[..., :1000]), short, atol=1e-4)
        ours.use_train_segment = True
    with pytest.raises(ValueError):
        ours(torch.randn(1, 2, 4001))
    # In training mode the segment becomes the input length, as in the reference.
    ref.train(), ours.train()
    x = torch.randn(1, 2, 3000)
    _assert_close(ours(x).detach(), ref(x).detach())
    assert ours.segment == ref.segment == Fraction(3000, 8000)


# ----------------------------------------------------------------------------- released sizes


@pytest.mark.slow
def test_released_htdemucs_matches_reference():
    ref, ours = _pair(demucs_htdemucs.HTDemucs, HTDemucs, SOURCES4, **RELEASED)
    state = ours.state_dict()
    assert len(state) == 533 and sum(v.numel() for v in state.values()) == 41_984_456
    assert ours.segment == Fraction(39, 5) and ours.samplerate == 44100
    torch.manual_seed(2)
    mix = torch.randn(1, 2, 44100)  # one second; both models pad it to 7.8 s
    with torch.no_grad():
        expected = ref(mix)
        got = ours(mix)
    assert got.shape == (1, 4, 2, 44100)
    _assert_close(got, expected)


@pytest.mark.slow
def test_released_htdemucs_6s_matches_reference():
    ref, ours = _pair(demucs_htdemucs.HTDemucs, HTDemucs, SOURCES6, **RELEASED_6S)
    # A full 7.8 s forward per model is already covered above; run both on a short
    # input without the segment padding to check the six-stem output path cheaply.
    ref.use_train_segment = ours.use_train_segment = False
    torch.manual_seed(3)
    mix = torch.randn(1, 2, 8192)
    with torch.no_grad():
        expected = ref(mix)
        got = ours(mix)
    assert got.shape == (1, 6, 2, 8192)
    _assert_close(got, expected)
