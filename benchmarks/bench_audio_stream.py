"""Peak memory of a streaming decode of a long file (a script, not a test).

Writes a long synthetic track (default 60 minutes, 44.1 kHz stereo FLAC) with
our streaming AudioWriter in a child process, then decodes it in this process
with AudioReader and prints the peak resident set size. The target is a peak
under 200 MB for a 60-minute file, i.e. memory that does not grow with length
(the whole track as float32 stereo would take 1.27 GB).

    python benchmarks/bench_audio_stream.py                     # 60 min FLAC
    python benchmarks/bench_audio_stream.py --format mp3        # slower to generate
    python benchmarks/bench_audio_stream.py --minutes 10 --sample-rate 48000

`--sample-rate` also streams through the resampler (about 40-50x real time on
one core: use fewer minutes).

Measured on the shared 2-core dev box (2026-11-21): 60 min FLAC -> peak RSS
53 MB (decode 15 s); 60 min MP3 at 320k -> 53 MB, exactly 158,760,000 frames
(generating the MP3 took 7.6 min); 10 min FLAC resampled 44.1 -> 48 kHz -> 63 MB.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        return float("nan")


def generate(path: Path, minutes: float, sample_rate: int) -> None:
    """Write a tone/noise mix block by block (constant memory)."""
    from unmixcli.audio import AudioWriter

    total = int(minutes * 60 * sample_rate)
    block = sample_rate * 10
    rng = np.random.default_rng(0)
    with AudioWriter(path, sample_rate, 2) as writer:
        for start in range(0, total, block):
            n = min(block, total - start)
            t = (start + np.arange(n)) / sample_rate
            left = 0.3 * np.sin(2 * np.pi * 220.0 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t))
            right = 0.3 * np.sin(2 * np.pi * 331.0 * t)
            audio = np.stack([left, right]) + 0.01 * rng.standard_normal((2, n))
            writer.write(audio.astype(np.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--format", default="flac", choices=["flac", "wav", "mp3", "opus", "m4a"])
    parser.add_argument("--sample-rate", type=int, default=None, help="decode to this rate (resampling)")
    parser.add_argument("--block-frames", type=int, default=1 << 16)
    parser.add_argument("--file", type=Path, default=None, help="decode this file instead of generating one")
    parser.add_argument("--generate-only", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.generate_only is not None:
        generate(args.generate_only, args.minutes, 44100)
        return

    with tempfile.TemporaryDirectory(prefix="unmix-bench-") as tmp:
        path = args.file
        if path is None:
            path = Path(tmp) / f"long.{args.format}"
            t0 = time.perf_counter()
            # A child process, so that encoding does not count towards our peak.
            subprocess.run([sys.executable, __file__, "--minutes", str(args.minutes),
                            "--generate-only", str(path)], check=True)
            print(f"generated {args.minutes:g} min {args.format}: {path.stat().st_size / 2**20:.0f} MB "
                  f"in {time.perf_counter() - t0:.1f} s")

        from unmixcli.audio import AudioReader

        base = current_rss_mb()
        t0 = time.perf_counter()
        frames = 0
        checksum = 0.0
        with AudioReader(path, sample_rate=args.sample_rate, block_frames=args.block_frames) as reader:
            for block in reader:
                frames += block.shape[1]
                checksum += float(block[:, ::4096].sum())  # touch the data
            rate = reader.sample_rate
        elapsed = time.perf_counter() - t0
        print(f"decoded {frames} frames ({frames / rate / 60:.2f} min at {rate} Hz) in {elapsed:.1f} s "
              f"({frames / rate / elapsed:.0f}x real time)")
        print(f"RSS after imports: {base:.0f} MB; peak RSS of the decoding process: {peak_rss_mb():.0f} MB "
              f"(whole track as float32 would be {frames * 2 * 4 / 2**20:.0f} MB)")


if __name__ == "__main__":
    main()
