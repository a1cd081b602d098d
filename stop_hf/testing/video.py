"""Videos for tests: synthetic clips written with PyAV (a moving object on a textured background, optionally with
a planted "sink" patch that stays fixed and bright in every frame), and a PyAV reader for qwen-vl-utils.
Writing and reading live in `stop_hf.video` (product code); these are the test kit's names for them."""

from __future__ import annotations

import contextlib

import numpy as np

from ..video import decode_file, read_video, synthetic_frames, write_video

__all__ = [
    "qwen_vl_utils_pyav_backend",
    "read_video",
    "read_video_for_qwen_vl_utils",
    "synthetic_frames",
    "write_video",
]


def read_video_for_qwen_vl_utils(ele: dict) -> tuple:
    """A PyAV video reader with qwen-vl-utils' backend contract: `ele` is the message's video dict
    (`video`: a path or file:// URL; optional `fps`/`nframes`, `min_frames`, `max_frames`) -> (frames (T, 3, H, W)
    uint8 tensor, metadata dict, sample_fps).

    qwen-vl-utils only ships torchcodec and decord readers plus a torchvision fallback that torchvision >= 0.25
    removed, so without those packages a local mp4 cannot be read. Frame count and indices follow the library's own
    `smart_nframes` rule, so the result equals what its other backends return.
    """
    import torch
    from qwen_vl_utils.vision_process import smart_nframes

    clipped = sorted(key for key in ("video_start", "video_end") if ele.get(key) is not None)
    if clipped:
        raise ValueError(f"read_video_for_qwen_vl_utils reads whole files; {clipped} is not supported")
    path = str(ele["video"]).removeprefix("file://")
    decoded, video_fps = decode_file(path)
    if video_fps is None:
        raise ValueError(f"video file {path!r} states no frame rate; qwen-vl-utils' frame count needs one")
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
