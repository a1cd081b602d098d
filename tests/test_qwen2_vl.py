"""Qwen2-VL specifics (the shared invariants run in tests/test_architectures.py; the whole-temporal-patch attention
and its sink-penalty rescaling in tests/test_qwen_whole_patch_attention.py): no window attention, so the default
saliency block is the last one."""

from __future__ import annotations

import copy

import pytest
from stop_hf.patches import adapter_for, architecture

import stop_hf
from stop_hf.testing import build_processor, synthetic_frames, tiny_checkpoint


@pytest.fixture(scope="module")
def reference():
    from transformers import Qwen2VLForConditionalGeneration

    return Qwen2VLForConditionalGeneration.from_pretrained(tiny_checkpoint("qwen2_vl")).eval()


@pytest.fixture()
def model(reference):
    return copy.deepcopy(reference)


@pytest.fixture(scope="module")
def inputs():
    adapter, processor = architecture("qwen2_vl"), build_processor("qwen2_vl")
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what happens ?"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    element = adapter.decode_video(synthetic_frames(4, 112, 168, sink_patch=(10, 10, 30)), 4)
    return dict(adapter.processor_inputs(processor, [text], [element], return_tensors="pt"))


def test_registered_as_a_qwen2_5_vl_subclass_without_windows(reference):
    adapter = adapter_for(reference)
    assert adapter.name == "qwen2_vl" and type(reference).__name__ == "Qwen2VLForConditionalGeneration"
    assert adapter.temporal_patch == 2 and not adapter.positions_1d
    vision = reference.model.visual.config
    assert not hasattr(vision, "fullatt_block_indexes") and not hasattr(vision, "window_size")
    assert adapter.full_attention_blocks(vision) == [0, 1]
    assert adapter.saliency_block_index(reference, None) == 1  # the last block
    assert adapter.saliency_block_index(reference, 0) == 0


def test_map_head_sources_are_refused_naming_qwen2_vl(model):
    with pytest.raises(Exception, match="Qwen2-VL"):
        stop_hf.patch(model, {"method": "fastvid", "retention": 0.2, "global_feature": "map_head"})
    assert not stop_hf.is_patched(model)


def test_videollm_takes_the_qwen_processor_path_with_the_file_fps(tmp_path):
    """The runner prepares Qwen2-VL through its adapter (qwen-vl-utils, the file's fps), not the LLaVA path."""
    from stop_hf.runner import VideoLLM
    from stop_hf.testing import write_video

    path = write_video(tmp_path / "clip.mp4", num_frames=12, fps=4)  # 3 s
    llm = VideoLLM.tiny("qwen2_vl", stop_config="uniform_r25", num_frames=8)
    assert llm.arch == "qwen2_vl"
    inputs = llm.prepare(path, "what happens ?")
    assert inputs["video_grid_thw"].shape == (1, 3) and inputs["video_grid_thw"][0, 0] == 4
    answer = llm.generate(inputs, max_new_tokens=3)
    tokens_per_patch = answer.video_tokens // 4
    assert answer.video_tokens_after == 4 * round(tokens_per_patch * 0.25)


def test_demo_runs_on_tiny_qwen2_vl(capsys):
    from stop_hf.cli import main

    assert (
        main(["demo", "--arch", "qwen2_vl", "--max-new-tokens", "2", "--config", "visionzip_stop_r10"]) == 0
    )
    out = capsys.readouterr().out
    assert "qwen2_vl" in out and "[visionzip_stop_r10]" in out
