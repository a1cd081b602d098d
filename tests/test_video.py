"""Frame I/O lives in `stop_hf.video`: every reader of a video file (`read_video`, `VideoClip` windows, the Qwen
element, qwen-vl-utils' PyAV backend) goes through its one decoder, `decode_file`, once per video."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import stop_hf.patches

import stop_hf
from stop_hf import video
from stop_hf.runner import VideoClip, qwen_video_element, read_clip

PACKAGE_DIR = Path(stop_hf.__file__).resolve().parent
PATCHES_DIR = Path(stop_hf.patches.__file__).resolve().parent


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    """8 frames at 4 fps: frame times 0, 0.25, ..., 1.75 s."""
    return video.write_video(tmp_path_factory.mktemp("video") / "clip.mp4", num_frames=8, height=48, width=64)


@pytest.fixture()
def decodes(monkeypatch):
    """The paths `decode_file` is called with, in order."""
    calls = []
    original = video.decode_file

    def counting(path, *args, **kwargs):
        calls.append(Path(path))
        return original(path, *args, **kwargs)

    from stop_hf.testing import video as kit_video

    monkeypatch.setattr(video, "decode_file", counting)
    monkeypatch.setattr(kit_video, "decode_file", counting)
    return calls


def test_decode_file_reads_every_frame_and_the_rate(clip_path):
    frames, fps = video.decode_file(clip_path)
    assert len(frames) == 8 and fps == 4.0
    assert frames[0].shape == (48, 64, 3) and frames[0].dtype == np.uint8


@pytest.mark.parametrize(
    ("start", "end", "count"), [(0.5, 1.0, 3), (None, 0.3, 2), (1.5, None, 2), (None, None, 8)]
)
def test_a_window_keeps_the_frames_inside_it(clip_path, start, end, count):
    everything, _ = video.decode_file(clip_path)
    inside, _ = video.decode_file(clip_path, start, end)
    assert len(inside) == count
    first = 0 if start is None else round(start * 4)
    for got, expected in zip(inside, everything[first : first + count], strict=True):
        np.testing.assert_array_equal(got, expected)


def test_readers_sample_the_same_frames(clip_path, decodes):
    from stop_hf.testing import read_video as kit_read_video

    assert kit_read_video is video.read_video
    sampled = video.read_video(clip_path, 3)
    np.testing.assert_array_equal(sampled, np.stack([video.decode_file(clip_path)[0][i] for i in (0, 4, 7)]))
    frames, fps, total = read_clip(VideoClip(clip_path), 3)
    np.testing.assert_array_equal(frames, sampled)
    assert (fps, total) == (4.0, 8)
    np.testing.assert_array_equal(
        video.load_frames(VideoClip(clip_path, 0.5, 1.0), 8), video.read_window(clip_path, 8, 0.5, 1.0)[0]
    )
    assert decodes and set(decodes) == {clip_path}


def test_qwen_video_element_decodes_a_file_once(clip_path, decodes):
    element = qwen_video_element(clip_path, 4)
    assert decodes == [clip_path]
    assert len(element["video"]) == 4
    assert element["raw_fps"] == 4.0 and element["sample_fps"] == pytest.approx(4 / 8 * 4.0)
    whole = qwen_video_element(VideoClip(clip_path), 4)
    assert (whole["sample_fps"], whole["raw_fps"]) == (element["sample_fps"], element["raw_fps"])
    for a, b in zip(element["video"], whole["video"], strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    window = qwen_video_element(VideoClip(clip_path, 0.5, 1.0), 4)  # 3 frames inside the window
    assert len(window["video"]) == 3 and window["sample_fps"] == pytest.approx(3 / 3 * 4.0)


def test_qwen_vl_utils_backend_reads_through_the_decoder(clip_path, decodes):
    pytest.importorskip("qwen_vl_utils")
    from stop_hf.testing import read_video_for_qwen_vl_utils

    frames, metadata, sample_fps = read_video_for_qwen_vl_utils(
        {"video": f"file://{clip_path}", "nframes": 4}
    )
    assert decodes == [clip_path]
    assert tuple(frames.shape) == (4, 3, 48, 64) and metadata["total_num_frames"] == 8
    assert sample_fps == pytest.approx(4 / 8 * 4.0)


def test_bad_files_are_clear_errors(clip_path, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        video.decode_file(tmp_path / "missing.mp4")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video")
    with pytest.raises(ValueError, match="could not be decoded"):
        video.read_video(garbage)
    with pytest.raises(ValueError, match=r"no frames in the window \[5.0, 6.0\] s"):
        read_clip(VideoClip(clip_path, 5.0, 6.0), 4)


def _decoding_calls(path: Path) -> list[int]:
    """Lines of `av.open(...)` for reading and `<container>.decode(...)` calls in a module."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        opens = (
            node.func.attr == "open" and isinstance(node.func.value, ast.Name) and node.func.value.id == "av"
        )
        writes = any(k.arg == "mode" and getattr(k.value, "value", "r") == "w" for k in node.keywords)
        if (opens and not writes) or (
            node.func.attr == "decode" and any(k.arg == "video" for k in node.keywords)
        ):
            lines.append(node.lineno)
    return lines


def test_video_files_are_decoded_in_one_module():
    modules = {p.resolve() for root in (PACKAGE_DIR, PATCHES_DIR) for p in root.rglob("*.py")}
    decoders = {str(p): lines for p in sorted(modules) if (lines := _decoding_calls(p))}
    assert list(decoders) == [str(PACKAGE_DIR / "video.py")], (
        f"video files decoded outside stop_hf.video: {decoders}"
    )
