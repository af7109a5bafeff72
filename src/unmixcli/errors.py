"""Typed errors raised by the library.

Every error a user can cause or meet carries the file it concerns (if any), the
cause, and a hint on what to do. `cli.py` turns them into one line on stderr and
an exit code; library code never prints or exits.

This module imports nothing from the package (and nothing heavy), so that any
module, including the CLI's fast start-up path, can use it.
"""

from __future__ import annotations

import os
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

# Exit codes (DESIGN.md, "Errors and exit codes").
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UnmixError(Exception):
    """Base class of every error the library raises on purpose.

    Args:
        message: the cause, as one sentence without the file name.
        path: the file or folder concerned, if any; shown first.
        hint: what the user can do about it, if something helps.
    """

    exit_code: int = EXIT_FAILURE

    def __init__(self, message: str, *, path: Optional[PathLike] = None, hint: Optional[str] = None):
        self.message = message
        self.path = os.fspath(path) if path is not None else None
        self.hint = hint
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """`<path>: <message>` (or just the message): what the CLI prints after 'error:'."""
        return f"{self.path}: {self.message}" if self.path else self.message


class AudioDecodeError(UnmixError):
    """An input file could not be read or decoded as audio."""


class AudioEncodeError(UnmixError):
    """A stem could not be encoded or written."""


class CheckpointError(UnmixError):
    """A checkpoint or bag file is malformed, unsafe, or does not fit its model."""


class ModelNotFoundError(UnmixError):
    """A model reference names no registry entry and no local path."""


class RegistryError(UnmixError):
    """A registry file (models.yaml or a user registry) is invalid."""


class DownloadError(UnmixError):
    """Fetching model files (from the Hugging Face Hub or a registry URL) failed."""


class OfflineError(DownloadError):
    """The model is not cached and we are offline (flag or HF_HUB_OFFLINE)."""


class CacheError(UnmixError):
    """The model cache could not be changed (e.g. removing cached files failed)."""


class DeviceError(UnmixError):
    """The requested compute device is unavailable or failed."""


class EvaluationError(UnmixError):
    """An evaluation folder is not in the expected layout, or inputs do not match."""


class UsageError(UnmixError):
    """The command line or API was called with invalid options."""

    exit_code = EXIT_USAGE
