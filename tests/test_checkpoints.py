"""Checkpoint loading: the published Demucs safetensors format, diffq-packed states, bags.

Fixtures are tiny random-weight reference models written exactly as the official
Hugging Face export writes them (tests/demucs_export.py). Format-level tests load
them with the reference classes as the class table, so they check the file
handling alone; end-to-end tests use our own classes (MODEL_CLASSES).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import pytest
import torch

import demucs_export as dx
from unmixcli.families import demucs as ck
from unmixcli.families import load_local
from unmixcli.errors import CheckpointError, ModelNotFoundError
from unmixcli.models.bag import ModelBag


REF = dx.reference_classes()
FACTORIES = {"htdemucs": dx.tiny_htdemucs, "hdemucs": dx.tiny_hdemucs, "demucs": dx.tiny_demucs}


def _rewrite(path: Path, *, metadata=None, tensors=None) -> None:
    """Rewrite a safetensors file with edited metadata and/or tensors."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        old_meta = handle.metadata()
        old_tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    new_meta = metadata(dict(old_meta)) if metadata else old_meta
    new_tensors = tensors(dict(old_tensors)) if tensors else old_tensors
    save_file(new_tensors, str(path), metadata=new_meta)


def _half_rounded(model):
    """The reference model with its weights rounded through float16, as the export stores them."""
    return model.half().float().eval()


def _diffq_export(factory, folder: Path, *, torch_pack: bool = False, seed: int = 1):
    """Quantize a tiny reference model as demucs training does and export its packed state.

    Returns (sig, quantizer). Bit widths are randomised per group (2..14) so that
    every packed width occurs; min_size is scaled down so tiny layers are quantized.
    """
    from diffq import DiffQuantizer

    model = factory()
    quantizer = DiffQuantizer(model, min_size=0.002, group_size=8)
    gen = torch.Generator().manual_seed(seed)
    for qparam in quantizer._qparams:
        qparam.logit.data[:] = torch.rand(qparam.logit.shape, generator=gen) * 8 - 5
    if not torch_pack:
        return dx.export_model(model, folder, quantizer=quantizer), quantizer
    package = dx.model_package(model)
    package["state"] = quantizer.get_quantized_state(packed=True, torch_pack=True)
    package["state"]["__quantized"] = True
    dx.package_to_file(package, folder / "tp.safetensors")
    return "tp", quantizer


def _diffq_reference(factory, quantizer):
    """A fresh reference model restored by diffq itself from the quantizer's packed state."""
    from diffq import restore_quantized_state

    model = factory(seed=123)  # other initial weights: everything must be overwritten
    restore_quantized_state(model, quantizer.get_quantized_state(packed=True))
    return model.eval()


# ------------------------------------------------------------------- the format, plain files


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_plain_export_loads_every_tensor_exactly(tmp_path, kind):
    ref = FACTORIES[kind]()
    sig = dx.export_model(ref, tmp_path)
    model = ck.load_demucs_safetensors(tmp_path / f"{sig}.safetensors", classes=REF)

    assert type(model) is type(ref) and not model.training
    expected = _half_rounded(ref).state_dict()
    got = model.state_dict()
    assert list(got) == list(expected)
    for key, value in got.items():
        assert value.dtype == torch.float32
        assert torch.equal(value, expected[key]), key
    assert model.segment == ref.segment and type(model.segment) is type(ref.segment)


def test_fraction_kwarg_is_decoded_as_fraction(tmp_path):
    sig = dx.export_model(dx.tiny_htdemucs(segment=Fraction(39, 80)), tmp_path)
    model = ck.load_demucs_safetensors(tmp_path / f"{sig}.safetensors", classes=REF)
    assert model.segment == Fraction(39, 80)


def test_unknown_kwarg_is_dropped_with_a_warning(tmp_path):
    sig = dx.export_model(dx.tiny_hdemucs(), tmp_path)
    path = tmp_path / f"{sig}.safetensors"

    def add_old_kwarg(meta):
        kwargs = json.loads(meta["kwargs"])
        kwargs["retired_option"] = 3
        meta["kwargs"] = json.dumps(kwargs)
        return meta

    _rewrite(path, metadata=add_old_kwarg)
    with pytest.warns(UserWarning, match="retired_option"):
        model = ck.load_demucs_safetensors(path, classes=REF)
    assert model.samplerate == 8000


# ------------------------------------------------------------------- diffq-packed files


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_diffq_packed_weights_bit_identical_to_diffq(tmp_path, kind):
    sig, quantizer = _diffq_export(FACTORIES[kind], tmp_path)
    model = ck.load_demucs_safetensors(tmp_path / f"{sig}.safetensors", classes=REF)
    expected = _diffq_reference(FACTORIES[kind], quantizer).state_dict()
    assert len(quantizer._qparams) > 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_diffq_torch_pack_layout_also_reads(tmp_path):
    sig, quantizer = _diffq_export(dx.tiny_hdemucs, tmp_path, torch_pack=True)
    model = ck.load_demucs_safetensors(tmp_path / f"{sig}.safetensors", classes=REF)
    expected = _diffq_reference(dx.tiny_hdemucs, quantizer).state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_diffq_state_that_does_not_fit_the_model_is_refused(tmp_path):
    sig, _ = _diffq_export(dx.tiny_hdemucs, tmp_path)
    path = tmp_path / f"{sig}.safetensors"

    def deeper(meta):  # the model described now has one more layer than the stored state
        kwargs = json.loads(meta["kwargs"])
        kwargs["depth"] = 4
        meta["kwargs"] = json.dumps(kwargs)
        return meta

    _rewrite(path, metadata=deeper)
    with pytest.raises(CheckpointError, match="diffq") as info:
        ck.load_demucs_safetensors(path, classes=REF)
    assert info.value.path == str(path) and info.value.hint


def test_diffq_missing_packed_tensor_is_refused(tmp_path):
    sig, _ = _diffq_export(dx.tiny_hdemucs, tmp_path)
    path = tmp_path / f"{sig}.safetensors"
    _rewrite(path, tensors=lambda t: {k: v for k, v in t.items() if k != "state.quantized.0.2"})
    with pytest.raises(CheckpointError, match="state.quantized.0.2"):
        ck.load_demucs_safetensors(path, classes=REF)


def test_diffq_groups_without_stored_levels_are_refused(tmp_path):
    # diffq never packs 15-bit groups (it packs widths 1..14 only); such a file
    # would restore garbage in the reference, so we refuse it instead.
    sig, _ = _diffq_export(dx.tiny_hdemucs, tmp_path)
    path = tmp_path / f"{sig}.safetensors"

    def drop_levels(meta):
        structure = json.loads(meta["structure"])
        first = dict(structure["_dict"])["quantized"]["_list"][0]["_tuple"][0]["_list"]
        width = next(i for i, node in enumerate(first) if node is not None)
        first[width] = None
        meta["structure"] = json.dumps(structure)
        return meta

    _rewrite(path, metadata=drop_levels)
    with pytest.raises(CheckpointError, match="have no stored levels"):
        ck.load_demucs_safetensors(path, classes=REF)


def test_unknown_quantizer_is_refused(tmp_path):
    sig, _ = _diffq_export(dx.tiny_hdemucs, tmp_path)
    path = tmp_path / f"{sig}.safetensors"

    def other_quantizer(meta):
        meta["structure"] = meta["structure"].replace("diffq.diffq.DiffQuantizer", "diffq.uniform.UniformQuantizer")
        return meta

    _rewrite(path, metadata=other_quantizer)
    with pytest.raises(CheckpointError, match="UniformQuantizer"):
        ck.load_demucs_safetensors(path, classes=REF)


# ------------------------------------------------------------------- broken files


@pytest.fixture
def plain_file(tmp_path) -> Path:
    return tmp_path / f"{dx.export_model(dx.tiny_hdemucs(), tmp_path)}.safetensors"


def _expect_error(path, match, classes=REF):
    with pytest.raises(CheckpointError, match=match) as info:
        ck.load_demucs_safetensors(path, classes=classes)
    assert info.value.path == str(path), "the error must name the file"
    assert info.value.hint, "the error must carry a hint"
    return info.value


def test_unknown_class_is_refused_not_imported(plain_file):
    _rewrite(plain_file, metadata=lambda m: {**m, "klass": "os.system"})
    err = _expect_error(plain_file, "unknown model class 'os.system'")
    assert "demucs.htdemucs.HTDemucs" in err.hint


def test_missing_klass(plain_file):
    _rewrite(plain_file, metadata=lambda m: {k: v for k, v in m.items() if k != "klass"})
    _expect_error(plain_file, "klass")


def test_metadata_not_json(plain_file):
    _rewrite(plain_file, metadata=lambda m: {**m, "kwargs": "{channels: 4"})
    _expect_error(plain_file, "'kwargs' is not valid JSON")


def test_missing_tensor(plain_file):
    _rewrite(plain_file, tensors=lambda t: {k: v for k, v in t.items() if k != "encoder.0.conv.weight"})
    _expect_error(plain_file, "missing tensors: encoder.0.conv.weight")


def test_extra_tensor(plain_file):
    _rewrite(plain_file, tensors=lambda t: {**t, "stowaway": torch.zeros(3, dtype=torch.float16)})
    _expect_error(plain_file, "unexpected tensors: stowaway")


def test_wrong_shape(plain_file):
    _rewrite(plain_file, tensors=lambda t: {**t, "encoder.0.conv.bias": torch.zeros(5, dtype=torch.float16)})
    _expect_error(plain_file, r"wrong shapes: encoder.0.conv.bias \(5,\)")


def test_truncated_file(plain_file):
    data = plain_file.read_bytes()
    plain_file.write_bytes(data[: len(data) - 1000])
    _expect_error(plain_file, "not a readable safetensors file")


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "nope.safetensors", "not found")


# ------------------------------------------------------------------- bags


def test_bag_weights_segment_and_members(tmp_path):
    models = [dx.tiny_hdemucs(seed=1), dx.tiny_htdemucs(seed=2), dx.tiny_htdemucs(seed=3, segment=Fraction(3, 10))]
    weights = [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 1, 1]]
    yaml_path = dx.export_bag(models, weights, 0.4, tmp_path, "mini")
    bag = ck.load_bag(yaml_path, classes=REF)

    assert isinstance(bag, ModelBag) and bag.name == "mini" and bag.segment == 0.4
    assert torch.equal(bag.weights, torch.tensor(weights, dtype=torch.float32))
    assert bag.sources == dx.SOURCES and bag.samplerate == 8000
    # The bag segment replaces the member's, but never lengthens an HTDemucs window.
    assert [m.segment for m in bag.models] == [0.4, 0.4, Fraction(3, 10)]
    for ours, ref in zip(bag.models, models):
        assert torch.equal(ours.state_dict()["decoder.0.conv_tr.weight"],
                           _half_rounded(ref).state_dict()["decoder.0.conv_tr.weight"])


def test_bag_default_weights_and_no_segment(tmp_path):
    yaml_path = dx.export_bag([dx.tiny_demucs(seed=1), dx.tiny_demucs(seed=2)], None, None, tmp_path, "pair")
    bag = ck.load_bag(yaml_path, classes=REF)
    assert torch.equal(bag.weights, torch.ones(2, 4)) and bag.segment is None
    assert [m.segment for m in bag.models] == [1, 1]


def test_bag_with_quantized_member(tmp_path):
    sig, quantizer = _diffq_export(dx.tiny_hdemucs, tmp_path)
    bag = ck.load_bag(dx.write_bag_yaml(tmp_path, "q", [sig], segment=2), classes=REF)
    expected = _diffq_reference(dx.tiny_hdemucs, quantizer).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in bag.models[0].state_dict().items())


def test_bag_missing_member_file(tmp_path):
    sig = dx.export_model(dx.tiny_hdemucs(), tmp_path)
    yaml_path = dx.write_bag_yaml(tmp_path, "broken", [sig, "deadbeef"])
    with pytest.raises(CheckpointError, match="deadbeef.safetensors") as info:
        ck.load_bag(yaml_path, classes=REF)
    assert info.value.path == str(yaml_path) and info.value.hint


@pytest.mark.parametrize(
    "text, match",
    [
        ("models: [a, b\n", "not valid YAML"),
        ("weights: [[1]]\n", "no 'models'"),
        ("models: ['../../etc/passwd']\n", "not a plain file name"),
        ("models: [SIG]\nweights: [[1, 1], [1, 1]]\n", "one per model"),
        ("models: [SIG]\nweights: [[1, 1]]\n", "one per stem"),
        ("models: [SIG]\nweights: [[1, 0, 1, 1]]\n", "non-zero weight for stem.*bass"),
        ("models: [SIG]\nsegment: soon\n", "segment"),
    ],
)
def test_bad_bag_yaml(tmp_path, text, match):
    sig = dx.export_model(dx.tiny_demucs(), tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace("SIG", repr(sig)))
    with pytest.raises(CheckpointError, match=match) as info:
        ck.load_bag(path, classes=REF)
    assert info.value.path == str(path)


# ------------------------------------------------------------------- local paths


def test_load_local_folder_file_and_yaml(tmp_path):
    bag_dir = tmp_path / "bag"
    yaml_path = dx.export_bag([dx.tiny_hdemucs(seed=1), dx.tiny_hdemucs(seed=2)], None, 3, bag_dir, "duo")
    (bag_dir / "README.md").write_text("model card")
    assert len(load_local(bag_dir, classes=REF).models) == 2
    assert load_local(yaml_path, classes=REF).name == "duo"

    one_dir = tmp_path / "one"
    sig = dx.export_model(dx.tiny_demucs(), one_dir)
    for target in (one_dir, one_dir / f"{sig}.safetensors"):
        bag = load_local(target, classes=REF)
        assert len(bag.models) == 1 and bag.name == sig and torch.equal(bag.weights, torch.ones(1, 4))


def test_load_local_errors(tmp_path):
    with pytest.raises(ModelNotFoundError):
        load_local(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no model"):
        load_local(empty)
    two = tmp_path / "two"
    for name in ("a", "b"):
        dx.export_bag([dx.tiny_demucs()], None, None, two, name)
    with pytest.raises(CheckpointError, match="several bag files"):
        load_local(two)
    odd = tmp_path / "model.npz"
    odd.write_bytes(b"\0")
    with pytest.raises(CheckpointError, match="unsupported model file type"):
        load_local(odd)


# ------------------------------------------------------------------- our classes, end to end


def test_allow_list_points_at_our_classes():
    assert set(ck.MODEL_CLASSES) == {"demucs.htdemucs.HTDemucs", "demucs.hdemucs.HDemucs", "demucs.demucs.Demucs"}
    for klass_name in ("demucs.hdemucs.HDemucs", "demucs.demucs.Demucs"):
        klass = ck.MODEL_CLASSES[klass_name]
        assert klass.__module__.startswith("unmixcli.models.")
        assert klass.__name__ == klass_name.rsplit(".", 1)[1]


def _our_class_available(klass_name: str) -> bool:
    try:
        ck.MODEL_CLASSES[klass_name]
    except (ImportError, AttributeError):
        return False
    return True


def _assert_same_outputs(ref, ours):
    # One training segment of audio: HTDemucs only runs on lengths up to its segment.
    length = int(ref.segment * ref.samplerate)
    mix = torch.randn(1, 2, length, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = ref(mix)
        got = ours(mix)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


@pytest.mark.parametrize("kind, klass_name", [
    ("demucs", "demucs.demucs.Demucs"),
    ("hdemucs", "demucs.hdemucs.HDemucs"),
    ("htdemucs", "demucs.htdemucs.HTDemucs"),
])
def test_end_to_end_with_our_classes(tmp_path, kind, klass_name):
    if not _our_class_available(klass_name):
        pytest.skip(f"our {klass_name.rsplit('.', 1)[1]} is not written yet")
    ref = FACTORIES[kind]()
    sig = dx.export_model(ref, tmp_path)
    ours = ck.load_demucs_safetensors(tmp_path / f"{sig}.safetensors")
    assert type(ours).__module__.startswith("unmixcli.models.")
    _assert_same_outputs(_half_rounded(ref), ours)

    qsig, quantizer = _diffq_export(FACTORIES[kind], tmp_path)
    ours_q = ck.load_demucs_safetensors(tmp_path / f"{qsig}.safetensors")
    ref_q = _diffq_reference(FACTORIES[kind], quantizer)
    assert all(torch.equal(v, ref_q.state_dict()[k]) for k, v in ours_q.state_dict().items())
    _assert_same_outputs(ref_q, ours_q)


@pytest.mark.slow
def test_loading_a_quantized_bag_imports_no_oracle(tmp_path):
    if not _our_class_available("demucs.hdemucs.HDemucs"):
        pytest.skip("our HDemucs is not written yet")
    sig, _ = _diffq_export(dx.tiny_hdemucs, tmp_path)
    dx.export_model(dx.tiny_hdemucs(seed=4), tmp_path, sig="plain")
    dx.write_bag_yaml(tmp_path, "mixed", [sig, "plain"])
    code = textwrap.dedent(f"""
        import sys
        from unmixcli.families import load_local
        bag = load_local({str(tmp_path)!r})
        assert len(bag.models) == 2
        leaked = sorted(m for m in sys.modules if m.split('.')[0] in ('diffq', 'demucs'))
        assert not leaked, leaked
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
