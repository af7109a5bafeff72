"""How fast `unmix --help`, `unmix --version` and `unmix models list` start.

Each command runs in a fresh interpreter N times; the median wall time is printed,
next to a bare `python -c pass` and `python -c "import torch"` for scale. These
paths must not import torch (tests/test_cli_frame.py checks that; this shows the
figure).

    python benchmarks/bench_startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass (floor)": [sys.executable, "-c", "pass"],
    "unmix --version": [sys.executable, "-m", "unmixcli", "--version"],
    "unmix --help": [sys.executable, "-m", "unmixcli", "--help"],
    "unmix separate --help": [sys.executable, "-m", "unmixcli", "separate", "--help"],
    "unmix models list": [sys.executable, "-m", "unmixcli", "models", "list"],
    "python -c 'import torch' (for scale)": [sys.executable, "-c", "import torch"],
}


def median_time(cmd, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    for name, cmd in COMMANDS.items():
        print(f"{name:<40} {median_time(cmd, args.runs) * 1000:8.0f} ms (median of {args.runs})")


if __name__ == "__main__":
    main()
