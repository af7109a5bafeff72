"""Type checks shared by the options types (`engine.EngineOptions`, `separate.OutputOptions`):
the numbers a command line, a settings file or an API caller may give, and never a bool."""

from __future__ import annotations

import numpy as np


def is_number(value) -> bool:
    """An int or float (numpy's too), not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def is_whole(value) -> bool:
    """An int (numpy's too), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
