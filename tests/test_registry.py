"""models.yaml and user registries: contents, override order, validation errors, lookups."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import yaml

from fakehub import write_registry
from unmixcli.errors import ModelNotFoundError, RegistryError
from unmixcli.registry import builtin_registry_path, load_registry, load_registry_file

PUBLISHED = ["htdemucs", "htdemucs_ft", "htdemucs_6s", "hdemucs_mmi", "mdx", "mdx_extra", "mdx_q", "mdx_extra_q"]


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """No user registry from the real home: config dir and UNMIX_REGISTRY under our control."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("UNMIX_REGISTRY", raising=False)
    return tmp_path


def _reference_bag(name: str) -> dict:
    """The reference package's own bag file for a published model (read as data, not imported)."""
    spec = importlib.util.find_spec("demucs")
    folder = Path(list(spec.submodule_search_locations)[0]) / "remote"
    return yaml.safe_load((folder / f"{name}.yaml").read_text())


def _published_repo(name: str) -> str:
    if name == "htdemucs":
        return "adefossez/HTDemucs"
    if name.startswith("htdemucs_"):
        return "adefossez/HTDemucs-" + name[len("htdemucs_"):]
    return "adefossez/Demucs-" + name


# --------------------------------------------------------------------------- built-in registry


def test_builtin_registry_lists_every_published_demucs_model(clean_env):
    reg = load_registry()
    assert reg.names()[: len(PUBLISHED)] == PUBLISHED
    assert reg.default == "htdemucs"
    for name in PUBLISHED:
        spec = reg.get(name)
        assert spec.family == "demucs"
        assert spec.repo == _published_repo(name)
        assert spec.revision == "main"
        # Files: the bag yaml plus one safetensors per member the reference's bag file lists.
        sigs = _reference_bag(name)["models"]
        assert spec.filenames == (f"{name}.yaml",) + tuple(f"{s}.safetensors" for s in sigs)
        assert spec.bag == f"{name}.yaml"
        assert spec.licence and "research" in spec.licence_note
        assert spec.sample_rate == 44100


def test_builtin_registry_facts_that_users_rely_on(clean_env):
    reg = load_registry()
    assert reg.get("htdemucs_6s").stems == ("drums", "bass", "other", "vocals", "guitar", "piano")
    assert reg.get("htdemucs").stems == ("drums", "bass", "other", "vocals")
    assert {n for n in PUBLISHED if reg.get(n).quantized} == {"mdx_q", "mdx_extra_q"}
    # Trained on MUSDB's test set: no MUSDB score may be shown, and the description says why.
    for name in ("mdx_extra", "mdx_extra_q"):
        spec = reg.get(name)
        assert spec.sdr.value is None
        assert "test set" in spec.description
    assert reg.get("htdemucs").sdr.value == pytest.approx(9.16)
    assert reg.get("htdemucs").sdr.source


def test_builtin_file_is_the_repo_root_copy_in_an_editable_install():
    path = builtin_registry_path()
    assert path.name == "models.yaml" and path.is_file()


# --------------------------------------------------------------------------- user registries


def _override(path: Path, description: str, name: str = "htdemucs") -> Path:
    entry = yaml.safe_load(builtin_registry_path().read_text())["models"][name]
    entry = dict(entry, description=description)
    return write_registry(path, {name: entry})


def test_user_registries_override_in_order(clean_env, monkeypatch):
    tmp = clean_env
    user = tmp / "config" / "unmix" / "models.yaml"
    user.parent.mkdir(parents=True)
    _override(user, "from the user config dir")
    env1, env2 = _override(tmp / "env1.yaml", "from env 1"), _override(tmp / "env2.yaml", "from env 2")
    cli = _override(tmp / "cli.yaml", "from --registry")

    assert load_registry().get("htdemucs").description == "from the user config dir"
    monkeypatch.setenv("UNMIX_REGISTRY", os.pathsep.join([str(env1), str(env2)]))
    assert load_registry().get("htdemucs").description == "from env 2"
    reg = load_registry([cli])
    assert reg.get("htdemucs").description == "from --registry"
    assert reg.get("htdemucs").source == str(cli)
    assert [Path(s).name for s in reg.sources] == ["models.yaml", "models.yaml", "env1.yaml", "env2.yaml", "cli.yaml"]
    # Other entries are untouched.
    assert reg.get("mdx").source == str(builtin_registry_path())


def test_user_registry_adds_a_roformer_entry(clean_env):
    files = ["config_vocals.yaml", "vocals.ckpt"]
    path = write_registry(clean_env / "r.yaml", {
        "my-roformer": {
            "family": "roformer", "arch": "MelBandRoformer", "description": "vocals", "repo": "someone/Mel",
            "files": files, "config": "config_vocals.yaml", "stems": ["vocals"], "licence": "unknown",
        },
        "inline-roformer": {
            "family": "roformer", "description": "x", "repo": "someone/BS", "files": ["w.ckpt"],
            "config": {"dim": 384, "depth": 6}, "stems": ["vocals", "other"], "licence": "unknown",
        },
    })
    reg = load_registry([path])
    mel = reg.get("my-roformer")
    assert (mel.family, mel.config, mel.checkpoint, mel.bag) == ("roformer", "config_vocals.yaml", "vocals.ckpt", None)
    inline = reg.get("inline-roformer")
    assert dict(inline.config) == {"dim": 384, "depth": 6} and inline.checkpoint == "w.ckpt"


# --------------------------------------------------------------------------- validation


def _good_entry(**changes):
    entry = {
        "description": "d", "repo": "o/r", "files": ["m.yaml", "abc.safetensors"], "bag": "m.yaml",
        "stems": ["drums", "vocals"], "licence": "mit",
    }
    entry.update(changes)
    return {k: v for k, v in entry.items() if v is not None}


@pytest.mark.parametrize(
    "entry, field",
    [
        (_good_entry(description=None), "description"),
        (_good_entry(repo="not a repo"), "repo"),
        (_good_entry(family="wavenet"), "family"),
        (_good_entry(stems=[]), "stems"),
        (_good_entry(stems=["drums", "drums"]), "stems"),
        (_good_entry(files=[]), "files"),
        (_good_entry(files=["m.yaml", {"name": "abc.safetensors", "sha256": "d2a1745f"}]), "files[1].sha256"),
        (_good_entry(files=["m.yaml", {"name": "abc.safetensors", "size": -3}]), "files[1].size"),
        (_good_entry(files=["m.yaml", "../escape.safetensors"]), "files[1]"),
        (_good_entry(bag="other.yaml"), "bag"),
        (_good_entry(files=["m.yaml"]), "files"),
        (_good_entry(sample_rate="44k"), "sample_rate"),
        (_good_entry(quantized=3), "quantized"),
        (_good_entry(sdr={"value": 9.1, "dataset": "MUSDB18-HQ"}), "sdr.source"),
        (_good_entry(sdr={"value": 9.1, "dataset": "x", "source": "y", "stems": {"flute": 3.0}}), "sdr.stems"),
        (_good_entry(family="roformer", files=["w.ckpt"], bag=None), "config"),
        (_good_entry(family="roformer", files=["w.ckpt"], bag=None, config="missing.yaml"), "config"),
        (_good_entry(family="roformer", files=["a.ckpt", "b.ckpt"], bag=None, config={"dim": 8}), "checkpoint"),
    ],
)
def test_invalid_entries_name_the_file_entry_and_field(tmp_path, entry, field):
    path = write_registry(tmp_path / "bad.yaml", {"broken": entry})
    with pytest.raises(RegistryError) as exc:
        load_registry_file(path)
    message = str(exc.value)
    assert str(path) in message
    assert "model 'broken'" in message
    assert f"field '{field}'" in message


def test_unknown_field_suggests_the_right_one(tmp_path):
    entry = _good_entry()
    entry["descripton"] = entry.pop("description")
    path = write_registry(tmp_path / "typo.yaml", {"typo": entry})
    with pytest.raises(RegistryError, match=r"field 'descripton': unknown field \(did you mean 'description'\?\)"):
        load_registry_file(path)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("models:\n  a: {description: x}\n  a: {description: y}\n", "duplicate key 'a'"),
        ("models: [1, 2\n", "invalid YAML at line"),
        ("version: 2\nmodels: {}\n", "unsupported registry version"),
        ("- just a list\n", "must be a mapping"),
        ("models: {}\nmodles: {}\n", "unknown top-level key"),
        ("models:\n  'bad name!': {}\n", "invalid model name"),
    ],
)
def test_malformed_files_are_reported(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RegistryError, match=needle.replace("(", r"\(").replace(")", r"\)")) as exc:
        load_registry_file(path)
    assert exc.value.path == str(path)


def test_yaml_is_read_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("models: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(RegistryError, match="invalid YAML"):
        load_registry_file(path)


def test_missing_registry_file_and_missing_default(clean_env):
    with pytest.raises(RegistryError, match="registry file not found"):
        load_registry([clean_env / "nope.yaml"])
    path = clean_env / "default.yaml"
    path.write_text("default: nothing-like-this\nmodels: {}\n")
    with pytest.raises(RegistryError, match="default model 'nothing-like-this' has no entry"):
        load_registry([path])


# --------------------------------------------------------------------------- lookups


def test_unknown_name_lists_close_matches(clean_env):
    reg = load_registry()
    with pytest.raises(ModelNotFoundError) as exc:
        reg.get("htdemcus_ft")
    assert "unknown model 'htdemcus_ft'" in str(exc.value)
    assert exc.value.hint.startswith("did you mean htdemucs_ft")
    with pytest.raises(ModelNotFoundError) as exc:
        reg.get("MDX_EXTRA")
    assert "mdx_extra" in exc.value.hint
    with pytest.raises(ModelNotFoundError) as exc:
        reg.get("zzzz")
    assert "did you mean" not in exc.value.hint and "unmix models list" in exc.value.hint


def test_path_like_reference_says_no_such_file(clean_env):
    with pytest.raises(ModelNotFoundError) as exc:
        load_registry().get("models/mine.safetensors")
    assert "no file or folder" in exc.value.hint
