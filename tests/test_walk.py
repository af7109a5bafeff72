"""Walking a folder input never leaves it, whatever its symbolic links point at (real links in tmp)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from demucs_export import export_tiny
from unmixcli import cli
from unmixcli.separate import expand_inputs

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="needs POSIX symlinks")


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def walk(root: Path):
    """(found paths relative to `root`, warning messages)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = expand_inputs([str(root)])
    rel = sorted(os.path.relpath(p, root) for p, _ in found)
    return rel, [str(w.message) for w in caught]


def test_link_to_the_parent_is_skipped_and_named(tmp_path):
    """`album/up -> ..` would otherwise separate everything beside the album."""
    root = tmp_path / "music" / "album"
    touch(root / "a.wav")
    touch(tmp_path / "music" / "other album" / "b.wav")
    touch(tmp_path / "music" / "c.mp3")
    os.symlink("..", root / "up")
    found, warned = walk(root)
    assert found == ["a.wav"]
    assert len(warned) == 1
    assert str(root / "up") in warned[0] and "outside" in warned[0]


def test_link_deeper_down_to_an_ancestor_outside_is_skipped(tmp_path):
    root = tmp_path / "lib" / "inner"
    touch(root / "x" / "a.flac")
    touch(tmp_path / "lib" / "sibling.wav")
    os.symlink(os.path.join("..", "..", ".."), root / "x" / "way up")  # -> tmp_path/lib
    found, warned = walk(root)
    assert found == [os.path.join("x", "a.flac")]
    assert len(warned) == 1 and "way up" in warned[0]


def test_link_out_of_the_tree_is_skipped_and_named(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    touch(elsewhere / "private.wav")
    root = tmp_path / "music"
    touch(root / "a.wav")
    os.symlink(elsewhere, root / "shortcut")
    found, warned = walk(root)
    assert found == ["a.wav"]
    assert len(warned) == 1 and str(root / "shortcut") in warned[0] and str(elsewhere) in warned[0]


def test_linked_folder_inside_the_tree_is_visited_once(tmp_path):
    root = tmp_path / "music"
    touch(root / "b" / "song.wav")
    (root / "a").mkdir()
    os.symlink(os.path.join("..", "b"), root / "a" / "to b")
    os.symlink(root / "b", root / "also b")
    found, warned = walk(root)
    assert warned == []
    assert len(found) == 1 and found[0].endswith("song.wav")


def test_loop_inside_the_tree_is_cut_quietly(tmp_path):
    root = tmp_path / "music"
    touch(root / "sub" / "a.wav")
    os.symlink("..", root / "sub" / "loop")  # back to the top, which is being walked
    os.symlink(".", root / "self")
    found, warned = walk(root)
    assert found == [os.path.join("sub", "a.wav")] and warned == []


def test_given_folder_may_itself_be_a_link(tmp_path):
    real = tmp_path / "real"
    touch(real / "a.wav")
    os.symlink(real, tmp_path / "alias")
    os.symlink("..", real / "up")
    found, warned = walk(tmp_path / "alias")
    assert found == ["a.wav"] and len(warned) == 1


def test_cli_separates_only_inside_and_says_which_link_it_skipped(tmp_path):
    model = tmp_path / "model"
    export_tiny(model, "tiny")
    root = tmp_path / "music" / "album"
    root.mkdir(parents=True)
    noise = (0.1 * np.random.default_rng(0).standard_normal((2000, 2))).astype(np.float32)
    sf.write(root / "in.wav", noise, 8000)
    sf.write(tmp_path / "music" / "outside.wav", noise, 8000)
    os.symlink("..", root / "parent")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli.app, [str(root), "-m", str(model), "-o", str(out), "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert sorted(p.parent.name for p in out.rglob("vocals.wav")) == ["in"]
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and str(root / "parent") in warned[0], result.stderr
