"""Benchmarks that ship a video as a folder of frame images (MVBench `episodic_reasoning`: tvqa/frames_fps3_hq)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def read_frame_folder(
    folder: str | Path,
    num_frames: int,
    window: tuple[float | None, float | None] | None = None,
    fps: float = 3.0,
) -> np.ndarray:
    """(T, H, W, 3) uint8: `num_frames` images sampled uniformly (segment midpoints) from the sorted files of
    `folder`, inside `window` (seconds, at `fps` frames per second) when given."""
    from PIL import Image

    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"no frame images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    first, last = 0, len(files) - 1
    if window is not None:
        start, end = window
        first = max(first, round(start * fps)) if start is not None else first
        last = min(last, round(end * fps)) if end is not None else last
        if last < first:
            raise ValueError(
                f"no frames in the window {window} s of {folder} ({len(files)} frames at {fps} fps)"
            )
    segment = (last - first + 1) / num_frames
    index = (first + segment / 2 + segment * np.arange(num_frames)).astype(int).clip(first, last)
    return np.stack([np.asarray(Image.open(files[i]).convert("RGB")) for i in index])
