"""Process memory readings shared by the benchmarks (Linux /proc; None or no-ops elsewhere)."""

from __future__ import annotations


def rss_kib(field: str) -> int | None:
    """A memory line of /proc/self/status in KiB: "VmRSS" (now) or "VmHWM" (peak).

    VmHWM belongs to this process's own address space; `ru_maxrss` would also carry the
    parent's size across fork + exec."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak() -> None:
    """Restart VmHWM from the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc), so the next baseline RSS is honest."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
