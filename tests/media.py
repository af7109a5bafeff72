"""Media files for tests, written with plain PyAV as another program would write them."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def pyav_write(path: Path, x: np.ndarray, sr: int, codec: str, sample_fmt: str, *, muxer: str | None = None,
               layout: str | None = None, bit_rate: int | None = None, video: str | None = None,
               codec_options: dict | None = None, metadata: dict | None = None, audio_track: bool = True) -> Path:
    """Encode [C, T] float audio (and optionally a tiny video track) with plain PyAV, as another
    program would. `audio_track=False` writes the video alone (a file with no audio stream)."""
    layout = layout or {1: "mono", 2: "stereo"}[x.shape[0]]
    out = av.open(os.fspath(path), "w", format=muxer)
    if metadata:
        out.metadata.update(metadata)
    vstream = None
    if video:
        vstream = out.add_stream(video, rate=10)
        vstream.width, vstream.height, vstream.pix_fmt = 32, 32, "yuv420p"
    astream = None
    if audio_track:
        astream = out.add_stream(codec, rate=sr, options=codec_options or {})
        astream.layout = layout
        astream.format = sample_fmt
        if bit_rate:
            astream.bit_rate = bit_rate
        astream.codec_context.open()
    size = astream.codec_context.frame_size or 1024 if astream is not None else 1024
    fmt = av.AudioFormat(sample_fmt)
    n_video = int(np.ceil(x.shape[1] / sr * 10)) if vstream else 0
    for i in range(n_video):
        frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 8 * i % 256, np.uint8), format="rgb24")
        frame.pts = i
        for packet in vstream.encode(frame):
            out.mux(packet)
    for start in range(0, x.shape[1] if astream is not None else 0, size):
        piece = x[:, start:start + size]
        if fmt.name.startswith("s16"):
            piece = np.clip(np.round(piece * 32768), -32768, 32767).astype(np.int16)
        arr = np.ascontiguousarray(piece) if fmt.is_planar else np.ascontiguousarray(piece.T).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(arr, format=sample_fmt, layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = sr, start, Fraction(1, sr)
        for packet in astream.encode(frame):
            out.mux(packet)
    for stream in (astream, vstream):
        if stream is not None:
            for packet in stream.encode(None):
                out.mux(packet)
    out.close()
    return path
