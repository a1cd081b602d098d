"""Frame decoding for the model side: uniform sampling of a file, a `VideoClip` window, or frames given as an array.
(`stop_hf.testing.video` writes synthetic videos for tests; production code reads through here.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def load_frames(video: Any, num_frames: int = 8) -> np.ndarray:
    """(T, H, W, 3) uint8 frames from a file (PyAV, `num_frames` uniformly sampled), a `stop_hf.runner.VideoClip`
    (its time window) or an array/list of frames (taken as is)."""
    from .runner import VideoClip, read_clip

    if isinstance(video, VideoClip):
        return read_clip(video, num_frames)[0]
    if isinstance(video, (str, Path)):
        return read_video(video, num_frames)
    frames = np.asarray(video)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"video frames must be (T, H, W, 3) uint8, got shape {frames.shape}")
    return frames


def read_video(path: str | Path, num_frames: int = 8, progress: bool = False) -> np.ndarray:
    """Decodes `num_frames` uniformly sampled frames (T, H, W, 3) uint8 with PyAV (optionally behind a progress
    bar). Clear errors for missing, undecodable or empty files."""
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file {str(path)!r} does not exist")
    decoded, has_stream = [], True
    try:
        with av.open(str(path)) as container:
            has_stream = bool(container.streams.video)
            if has_stream:
                from tqdm.auto import tqdm

                total = container.streams.video[0].frames or None
                with tqdm(
                    total=total, desc="decoding frames", unit="frame", disable=not progress, leave=False
                ) as bar:
                    for frame in container.decode(video=0):
                        decoded.append(frame.to_ndarray(format="rgb24"))
                        bar.update(1)
    except (av.error.FFmpegError, IndexError, ValueError) as exc:
        raise ValueError(f"video file {str(path)!r} could not be decoded: {exc}") from None
    if not has_stream:
        raise ValueError(f"video file {str(path)!r} contains no video stream")
    if not decoded:
        raise ValueError(f"video file {str(path)!r} contains no video frames")
    picks = np.linspace(0, len(decoded) - 1, num=min(num_frames, len(decoded))).round().astype(int)
    return np.stack([decoded[i] for i in picks])
