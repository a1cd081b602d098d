"""Frame I/O in one module. Reading: every video file is decoded by `decode_file` (PyAV), then sampled uniformly
(`read_video`, `read_window`; `load_frames` also takes a `VideoClip` or frames). Writing: `synthetic_frames` and
`write_video` make the generated clips of the demo, `stop-hf run --synthetic-video`, the synthetic eval datasets and
the tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


# ---------------------------------------------------------------------------------------------------- reading
def load_frames(video: Any, num_frames: int = 8) -> np.ndarray:
    """(T, H, W, 3) uint8 frames from a file (PyAV, `num_frames` uniformly sampled), a `stop_hf.runner.VideoClip`
    (its time window) or an array/list of frames (taken as is)."""
    from .runner import VideoClip

    if isinstance(video, VideoClip):
        return read_window(video.path, num_frames, video.start, video.end)[0]
    if isinstance(video, (str, Path)):
        return read_video(video, num_frames)
    frames = np.asarray(video)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"video frames must be (T, H, W, 3) uint8, got shape {frames.shape}")
    return frames


def decode_file(
    path: str | Path, start: float | None = None, end: float | None = None, progress: bool = False
) -> tuple[list[np.ndarray], float | None]:
    """Every frame of a video file as (H, W, 3) uint8 arrays, or only those inside [start, end] seconds (None: the
    file's start / end), and the stream's frame rate (None when the file states none). PyAV, optionally behind a
    progress bar. Clear errors for missing, undecodable or empty files and empty windows."""
    import av
    from tqdm.auto import tqdm

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file {str(path)!r} does not exist")
    windowed = start is not None or end is not None
    low = float("-inf") if start is None else start
    high = float("inf") if end is None else end
    decoded: list[np.ndarray] = []
    fps, has_stream = None, True
    try:
        with av.open(str(path)) as container:
            has_stream = bool(container.streams.video)
            if has_stream:
                stream = container.streams.video[0]
                fps = float(stream.average_rate or stream.guessed_rate or 0) or None
                total = None if windowed else stream.frames or None
                with tqdm(
                    total=total, desc="decoding frames", unit="frame", disable=not progress, leave=False
                ) as bar:
                    for frame in container.decode(video=0):
                        # a frame without a timestamp is kept: it cannot be placed outside the window
                        if not windowed or frame.time is None or low <= frame.time <= high:
                            decoded.append(frame.to_ndarray(format="rgb24"))
                        bar.update(1)
    except (av.error.FFmpegError, IndexError, ValueError) as exc:
        raise ValueError(f"video file {str(path)!r} could not be decoded: {exc}") from None
    if not has_stream:
        raise ValueError(f"video file {str(path)!r} contains no video stream")
    if not decoded:
        if windowed:
            raise ValueError(f"video file {str(path)!r} has no frames in the window [{start}, {end}] s")
        raise ValueError(f"video file {str(path)!r} contains no video frames")
    return decoded, fps


def sample_uniform(frames: Sequence[np.ndarray], num_frames: int) -> np.ndarray:
    """(min(num_frames, len(frames)), H, W, 3): frames at evenly spaced indices, first and last included."""
    picks = np.linspace(0, len(frames) - 1, num=min(num_frames, len(frames))).round().astype(int)
    return np.stack([frames[i] for i in picks])


def read_video(path: str | Path, num_frames: int = 8, progress: bool = False) -> np.ndarray:
    """Decodes `num_frames` uniformly sampled frames (T, H, W, 3) uint8 with PyAV (optionally behind a progress
    bar). Clear errors for missing, undecodable or empty files."""
    return sample_uniform(decode_file(path, progress=progress)[0], num_frames)


def read_window(
    path: str | Path, num_frames: int, start: float | None = None, end: float | None = None
) -> tuple[np.ndarray, float | None, int]:
    """(frames (T, H, W, 3) uint8 sampled uniformly inside [start, end] seconds, the file's fps or None, the number
    of frames inside the window)."""
    decoded, fps = decode_file(path, start, end)
    return sample_uniform(decoded, num_frames), fps, len(decoded)


# ---------------------------------------------------------------------------------------------------- writing
def synthetic_frames(
    num_frames: int = 8,
    height: int = 240,
    width: int = 320,
    seed: int = 0,
    sink_patch: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """(T, H, W, 3) uint8 frames: a red square moving across a textured, noisy background.
    `sink_patch=(row, col, size)` plants a constant bright square in every frame (a sink candidate)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    background = (
        np.stack([np.sin(xx / 17.0 + c) * np.cos(yy / 23.0 - c) for c in range(3)], axis=-1) * 60 + 100
    ).astype(np.float32)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    size = max(8, height // 6)
    for t in range(num_frames):  # one noise draw per frame, in order: the seed fixes every frame
        frame = background + rng.normal(0, 6, background.shape).astype(np.float32)
        cy = int((height - size) * (0.2 + 0.6 * t / max(num_frames - 1, 1)))
        cx = int((width - size) * (0.8 - 0.6 * t / max(num_frames - 1, 1)))
        frame[cy : cy + size, cx : cx + size] = (230, 40 + 20 * (t % 5), 40)
        if sink_patch is not None:
            r, c, s = sink_patch
            frame[r : r + s, c : c + s] = 250
        frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


def write_video(path: str | Path, frames: np.ndarray | None = None, fps: int = 4, **frame_kwargs) -> Path:
    """Encodes frames (T, H, W, 3) uint8 to an H.264 mp4 with PyAV (odd sizes cropped to even). Generates
    `synthetic_frames(**frame_kwargs)` when `frames` is None."""
    import av

    path = Path(path)
    if frames is None:
        frames = synthetic_frames(**frame_kwargs)
    height, width = frames.shape[1:3]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = width - width % 2, height - height % 2
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            image = av.VideoFrame.from_ndarray(frame[: stream.height, : stream.width], format="rgb24")
            for packet in stream.encode(image):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
