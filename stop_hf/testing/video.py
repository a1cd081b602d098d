"""Synthetic videos written with PyAV: a moving object on a textured background, optionally with a planted
"sink" patch that stays fixed and bright in every frame."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from ..video import read_video  # noqa: F401  (re-exported: the test kit's name for it)


def synthetic_frames(
    num_frames: int = 8,
    height: int = 240,
    width: int = 320,
    seed: int = 0,
    sink_patch: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """(T, H, W, 3) uint8 frames. `sink_patch=(row, col, size)` plants a constant bright square in every frame."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    background = (
        np.stack([np.sin(xx / 17.0 + c) * np.cos(yy / 23.0 - c) for c in range(3)], axis=-1) * 60 + 100
    ).astype(np.float32)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    size = max(8, height // 6)
    for t in range(num_frames):
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
    """Encodes frames (T, H, W, 3) uint8 to an H.264 mp4 with PyAV. Generates `synthetic_frames` when None."""
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


def read_video_for_qwen_vl_utils(ele: dict) -> tuple:
    """A PyAV video reader with qwen-vl-utils' backend contract: `ele` is the message's video dict
    (`video`: a path or file:// URL; optional `fps`/`nframes`, `min_frames`, `max_frames`) -> (frames (T, 3, H, W)
    uint8 tensor, metadata dict, sample_fps).

    qwen-vl-utils only ships torchcodec and decord readers plus a torchvision fallback that torchvision >= 0.25
    removed, so without those packages a local mp4 cannot be read. Frame count and indices follow the library's own
    `smart_nframes` rule, so the result equals what its other backends return.
    """
    import av
    import torch
    from qwen_vl_utils.vision_process import smart_nframes

    clipped = sorted(key for key in ("video_start", "video_end") if ele.get(key) is not None)
    if clipped:
        raise ValueError(f"read_video_for_qwen_vl_utils reads whole files; {clipped} is not supported")
    path = str(ele["video"]).removeprefix("file://")
    with av.open(path) as container:
        stream = container.streams.video[0]
        video_fps = float(stream.average_rate)
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    total_frames = len(decoded)
    nframes = smart_nframes(ele, total_frames=total_frames, video_fps=video_fps)
    indices = torch.linspace(0, total_frames - 1, nframes).round().long().tolist()
    frames = torch.from_numpy(np.stack([decoded[i] for i in indices])).permute(0, 3, 1, 2)
    metadata = {
        "fps": video_fps,
        "frames_indices": indices,
        "total_num_frames": total_frames,
        "video_backend": "pyav",
    }
    return frames, metadata, nframes / total_frames * video_fps


@contextlib.contextmanager
def qwen_vl_utils_pyav_backend():
    """Within the block, `qwen_vl_utils.process_vision_info` reads video files with PyAV
    (`read_video_for_qwen_vl_utils`); the library's backend choice is restored on exit."""
    from qwen_vl_utils import vision_process

    forced = vision_process.FORCE_QWENVL_VIDEO_READER
    vision_process.VIDEO_READER_BACKENDS["pyav"] = read_video_for_qwen_vl_utils
    vision_process.FORCE_QWENVL_VIDEO_READER = "pyav"
    vision_process.get_video_reader_backend.cache_clear()  # the choice is cached after the first call
    try:
        yield
    finally:
        vision_process.FORCE_QWENVL_VIDEO_READER = forced
        vision_process.VIDEO_READER_BACKENDS.pop("pyav", None)
        vision_process.get_video_reader_backend.cache_clear()
