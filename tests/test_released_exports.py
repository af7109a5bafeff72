"""The released configurations through the published file format: a reference model of each
released shape, written exactly as the official Hugging Face export does (float16
safetensors with klass/args/kwargs metadata), loaded by our checkpoint reader into our
classes, must compute what the reference computes with the same (float16-rounded) weights."""

from fractions import Fraction

import pytest
import torch

from demucs_export import export_model
from unmixcli.families.demucs import load_demucs_safetensors

# Every case builds a full-size released model (tens of millions of weights).
pytestmark = pytest.mark.slow

TOL = 1e-5  # max |ours - ref| <= TOL * max |ref|
STEMS4 = ["drums", "bass", "other", "vocals"]


def _reference(kind: str):
    torch.manual_seed(0)
    if kind == "htdemucs":  # 955717e8: 533 tensors, 41,984,456 values
        from demucs.htdemucs import HTDemucs

        return HTDemucs(sources=STEMS4, dconv_mode=3, bottom_channels=512, t_dropout=0.02, segment=Fraction(39, 5))
    if kind == "htdemucs_6s":
        from demucs.htdemucs import HTDemucs

        return HTDemucs(sources=STEMS4 + ["guitar", "piano"], dconv_mode=3, t_dropout=0.02, segment=Fraction(39, 5))
    if kind == "hdemucs_mmi":  # also the mdx_extra members' shape
        from demucs.hdemucs import HDemucs

        return HDemucs(sources=STEMS4, channels=48, dconv_init=1e-3, multi_freqs=[], multi_freqs_depth=3, segment=44)
    if kind == "mdx_demucs":  # the time-domain members of the mdx bags
        from demucs.demucs import Demucs

        return Demucs(STEMS4, channels=64, normalize=True, segment=44)
    raise ValueError(kind)


@pytest.mark.parametrize("kind, length", [("htdemucs", 8192), ("htdemucs_6s", 8192), ("hdemucs_mmi", 22050), ("mdx_demucs", 22050)])
def test_released_shape_exported_officially_loads_and_matches(tmp_path, kind, length):
    ref = _reference(kind).eval()
    sig = export_model(ref, tmp_path)
    ours = load_demucs_safetensors(tmp_path / f"{sig}.safetensors")
    assert type(ours).__name__ == type(ref).__name__
    assert [(n, tuple(p.shape)) for n, p in ours.named_parameters()] == [
        (n, tuple(p.shape)) for n, p in ref.named_parameters()
    ]
    # The file holds float16 values: give the reference the same rounding.
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.half().float())
    if hasattr(ref, "use_train_segment"):  # skip the 7.8 s padding here (covered in test_models_htdemucs)
        ref.use_train_segment = ours.use_train_segment = False
    torch.manual_seed(1)
    mix = 0.3 * torch.randn(1, 2, length)
    with torch.no_grad():
        expected = ref(mix)
        got = ours(mix)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= TOL * expected.abs().max()
