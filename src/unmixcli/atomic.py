"""Atomic file writes: a temporary file in the target's folder, renamed onto the target.

Stems, eval results and downloaded weights all go through here, so an
interrupted run never leaves a file that looks finished under its final name.
Imports nothing from the package (used by audio, evaluate and hub alike).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, os.PathLike]


def current_umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temporary_beside(target: PathLike, suffix: str = ".part") -> Path:
    """Create an empty temporary file next to `target` and return its path.

    The temporary name is longer than the target's: the target's name is cut so that
    a target near the 255-byte name limit can still be written. Raises OSError.
    """
    target = Path(target)
    stem = os.fsencode(target.name)[:96].decode(errors="ignore")
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    return Path(tmp)


def commit(tmp: PathLike, target: PathLike) -> None:
    """Give `tmp` the mode a plain open() would have given it, then rename it onto `target`."""
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes the file private
    os.replace(tmp, target)


def discard(tmp: PathLike) -> None:
    """Remove a temporary file if it is still there."""
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


@contextmanager
def atomic_path(target: PathLike, suffix: str = ".part") -> Iterator[Path]:
    """Yield a temporary path beside `target`; on a clean exit it replaces `target`.

    On any exception (KeyboardInterrupt included) the temporary file is removed and
    `target` is left as it was. OSError from creating or renaming propagates: callers
    turn it into their own typed error.
    """
    tmp = temporary_beside(target, suffix)
    try:
        yield tmp
        commit(tmp, target)
    except BaseException:
        discard(tmp)
        raise
