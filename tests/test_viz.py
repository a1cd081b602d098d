"""stop_hf.viz: token geometry, exact overlays (the picture marks exactly the report's tokens), figures, the planted
sink illustration."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from stop_hf import viz
from stop_hf.config import StopConfig
from stop_hf.testing.video import synthetic_frames

PRESETS = [f"{m}_{v}_r10" for m in ("visionzip", "fastvid", "holitom") for v in ("baseline", "stop")]
SINK = (20, 20, 60)  # row, col, size of the planted patch in a 240x320 frame


@pytest.fixture(scope="module")
def llava_images():
    frames = synthetic_frames(6, 240, 320, sink_patch=SINK)
    return viz.frames_as_seen(frames, (14, 14), "llava_onevision")


@pytest.fixture(scope="module")
def qwen_images():
    frames = synthetic_frames(8, 240, 320, sink_patch=SINK)
    return viz.frames_as_seen(frames, (10, 14), "qwen2_5_vl")


def _entry(images, grid, preset):
    return viz.prune_entry(viz.synthetic_prune_input(images, grid), preset)


def test_frames_as_seen_geometry(llava_images, qwen_images):
    assert llava_images.shape == (6, 384, 384, 3)
    assert qwen_images.shape == (4, 280, 392, 3)  # temporal patches of 2 frames, 28 px per merged token
    assert viz.seen_size((10, 14), "qwen2_5_vl") == (280, 392)
    with pytest.raises(ValueError, match="arch='llama' is not supported; allowed: \\[.llava_onevision."):
        viz.seen_size((14, 14), "llama")


@pytest.mark.parametrize("grid,size", [((14, 14), (384, 384)), ((10, 14), (280, 392)), ((3, 5), (17, 23))])
def test_token_boxes_tile_the_frame(grid, size):
    cover = np.zeros(size, dtype=int)
    for n in range(grid[0] * grid[1]):
        y0, y1, x0, x1 = viz.token_box(n, grid, size)
        cover[y0:y1, x0:x1] += 1
    assert (cover == 1).all()
    if size == (280, 392):  # Qwen: one merged token is exactly 28x28 px
        assert viz.token_box(15, grid, size) == (28, 56, 28, 56)


@pytest.mark.parametrize("preset", PRESETS)
def test_overlay_marks_exactly_the_reported_tokens(llava_images, preset):
    entry = _entry(llava_images, (14, 14), preset)
    drawn = viz.overlay(llava_images, entry)
    assert drawn.shape == llava_images.shape
    expected = {(int(i) // 196, int(i) % 196) for i in entry["index"]}
    assert viz.kept_tokens(entry) == expected
    assert viz.outlined_tokens(drawn, (14, 14)) == expected
    # and through the lossless strip that `stop-hf viz` writes
    assert viz.outlined_tokens(viz.unmosaic(viz.mosaic(drawn), 6), (14, 14)) == expected


@pytest.mark.parametrize("preset", ["visionzip_stop_r10", "holitom_baseline_r10", "fastvid_stop_r10"])
def test_overlay_qwen_geometry(qwen_images, preset):
    entry = _entry(qwen_images, (10, 14), preset)
    assert viz.outlined_tokens(viz.overlay(qwen_images, entry), (10, 14)) == viz.kept_tokens(entry)


def test_overlay_content_never_fakes_an_outline():
    images = np.zeros((2, 56, 56, 3), dtype=np.uint8)
    images[..., 1] = 255  # a frame painted in the outline colour
    entry = viz.prune_entry(
        viz.synthetic_prune_input(images, (2, 2)), {"method": "uniform", "retention": 0.5}
    )
    drawn = viz.overlay(images, entry, dim=1.0)
    assert viz.outlined_tokens(drawn, (2, 2)) == viz.kept_tokens(entry)
    assert len(viz.kept_tokens(entry)) == 4


def test_merged_groups_follow_the_assignment(llava_images):
    entry = _entry(llava_images, (14, 14), "holitom_stop_r10")
    groups = viz.merged_groups(entry)
    assert groups, "holitom merges static tokens"
    kind = entry["kind"].numpy()
    assignment = entry["info"]["assignment"].numpy()
    for row, members in groups.items():
        assert kind[row] == 1
        assert all(assignment[t * 196 + n] == row for t, n in members)
    copied, merged = viz.tokens_per_frame(entry)
    assert copied.sum() + merged.sum() == entry["index"].numel()
    assert viz.bands(entry)[0] == "windows"


def test_planted_sink_is_kept_by_the_baseline_and_dropped_by_stop(llava_images):
    """The README picture: a static bright patch gets persistent attention; VisionZip keeps it, SToP does not."""
    # the patch covers y 32..128, x 24..96 of the 384x384 frame; cells fully inside: rows 2-3, columns 1-2
    patch = {2 * 14 + 1, 2 * 14 + 2, 3 * 14 + 1, 3 * 14 + 2}
    baseline = _entry(llava_images, (14, 14), "visionzip_baseline_r10")
    stop = _entry(llava_images, (14, 14), "visionzip_stop_r10")
    sink = viz.sink_scores(stop)
    assert set(np.argsort(-sink)[:4].tolist()) <= patch
    frames = llava_images.shape[0]
    kept_base = {(t, n) for t, n in viz.kept_tokens(baseline) if n in patch}
    kept_stop = {(t, n) for t, n in viz.kept_tokens(stop) if n in patch}
    assert len(kept_base) == len(patch) * frames
    assert kept_stop == set()


def test_summarize_is_json_ready(llava_images):
    for preset in ("fastvid_stop_r10", "visionzip_baseline_r10"):
        entry = _entry(llava_images, (14, 14), preset)
        summary = json.loads(json.dumps(viz.summarize(entry)))
        assert summary["T"] == 6 and summary["N"] == 196
        assert {tuple(k) for k in summary["kept"]} == viz.kept_tokens(entry)
        assert len(summary["sink_score"]) == 196
        # visionzip_baseline_* runs the SToP code's sink-target skip (sink: true, mu_s: 0): its score is the pruner's
        expected = "pruner" if StopConfig.from_preset(preset).sink else "attention"
        assert summary["sink_score_source"] == expected


def test_figures_have_the_expected_size_and_are_not_blank(tmp_path, llava_images):
    from PIL import Image

    entries = {p: _entry(llava_images, (14, 14), p) for p in ("holitom_baseline_r10", "holitom_stop_r10")}
    figures = {
        "kept": viz.kept_tokens_figure(llava_images, entries, columns=4),
        "sink": viz.sink_score_figure(
            viz.sink_scores(entries["holitom_stop_r10"]), (14, 14), llava_images[0]
        ),
        "per_frame": viz.tokens_per_frame_figure(entries),
    }
    assert viz.figure_pixels(figures["kept"]) == (
        800,
        870,
    )  # 4 columns x 2 in; 2 runs x 2 rows x 2 in + 0.7 in header
    for name, fig in figures.items():
        size = viz.figure_pixels(fig)
        path = viz.save(fig, tmp_path / f"{name}.png")
        image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
        assert (image.shape[1], image.shape[0]) == size
        assert image.std() > 20, f"{name}.png looks blank"


def test_missing_matplotlib_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(viz.VizDependencyError, match=r"pip install 'stop-hf\[viz\]'"):
        viz._pyplot()


@pytest.mark.parametrize("arch", ["llava_onevision", "qwen2_5_vl", "qwen3_vl", "qwen3_5", "internvl"])
def test_real_pipeline_report_round_trips(arch):
    """A report from the tiny model through the real hooks: the overlay outlines exactly its kept tokens."""
    from stop_hf.runner import VideoLLM

    frames = synthetic_frames(4, 240, 320, sink_patch=SINK)
    llm = VideoLLM.tiny(arch, stop_config="holitom_stop_r10", num_frames=4)
    answer = llm.answer(frames, "what is there?", max_new_tokens=1)
    (entry,) = answer.report
    images = viz.frames_as_seen(frames, entry["grid"], arch, token_frames=entry["frames"])
    h, w = entry["grid"]
    assert images.shape[1:3] == viz.seen_size((h, w), arch)
    assert viz.outlined_tokens(viz.overlay(images, entry), (h, w)) == viz.kept_tokens(entry)
    assert viz.sink_scores(entry).shape == (h * w,)


def test_viz_cli_without_matplotlib_names_the_extra(monkeypatch, capsys, tmp_path):
    """`stop-hf viz` without matplotlib: one line naming the extra, exit code 2, before any video or model work."""
    from stop_hf.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    code = main(["viz", "--synthetic-video", "--out", str(tmp_path / "viz")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("stop-hf viz: error:") and "pip install 'stop-hf[viz]'" in err[0]
    assert not (tmp_path / "viz").exists()
