"""Qwen2-VL specifics (the shared invariants run in tests/test_architectures.py): no window attention, so the
default saliency block is the last one, every block attends over a whole temporal patch, merge units stay in raster
order, and the sink penalty is rescaled for h*w keys."""

from __future__ import annotations

import copy

import pytest
import torch
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


def prune_inputs(model, inputs):
    """The PruneInputs the patched model hands its pruner for `inputs`."""
    state = model._stop_state
    seen, pruner = [], state.pruner

    class Spy:
        needs = pruner.needs

        def __call__(self, x):
            seen.append(x)
            return pruner(x)

    state.pruner = Spy()
    with torch.no_grad():
        model(**inputs)
    return seen


def test_registered_as_a_qwen2_5_vl_subclass_without_windows(reference):
    adapter = adapter_for(reference)
    assert adapter.name == "qwen2_vl" and type(reference).__name__ == "Qwen2VLForConditionalGeneration"
    assert adapter.temporal_patch == 2 and not adapter.positions_1d
    vision = reference.model.visual.config
    assert not hasattr(vision, "fullatt_block_indexes") and not hasattr(vision, "window_size")
    assert adapter.full_attention_blocks(vision) == [0, 1]
    assert adapter.saliency_block_index(reference, None) == 1  # the last block
    assert adapter.saliency_block_index(reference, 0) == 0


@pytest.mark.parametrize("block", [None, 0])
def test_recomputed_attention_matches_eager(model, reference, inputs, block):
    """The hook's attention equals an eager replay of the chosen block over each temporal patch, averaged per
    merge unit in raster order (no window permutation); keys likewise."""
    from transformers.models.qwen2_vl.modeling_qwen2_vl import (
        apply_rotary_pos_emb_vision,
        eager_attention_forward,
    )

    visual = reference.model.visual
    index = len(visual.blocks) - 1 if block is None else block
    seen = {}

    def grab(module, args, kwargs):
        seen["args"], seen["kwargs"] = args, kwargs

    attn = visual.blocks[index].attn
    handle = attn.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            encoded = reference.model.get_video_features(
                inputs["pixel_values_videos"], inputs["video_grid_thw"], return_dict=True
            )
    finally:
        handle.remove()
    stop_hf.patch(model, {"method": "visionzip", "retention": 0.2, "saliency_layer": block})
    (record,) = prune_inputs(model, inputs)

    t, h, w = inputs["video_grid_thw"][0].tolist()
    tokens = (h // 2) * (w // 2)
    hidden, cu = seen["args"][0], seen["kwargs"]["cu_seqlens"]
    assert cu.tolist() == [i * h * w for i in range(t + 1)]  # one segment per temporal patch: full attention
    cos, sin = seen["kwargs"]["position_embeddings"]
    length = hidden.shape[0]
    with torch.no_grad():
        q, k, v = attn.qkv(hidden).reshape(length, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        raw_keys = k
        q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
        q, k, v = (x.transpose(0, 1)[None] for x in (q, k, v))
        received = []
        for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
            _, weights = eager_attention_forward(
                attn, q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], None, attn.scaling
            )
            received.append(weights[0].mean(dim=(0, 1)))
    # merge units are contiguous groups of 4 patches in raster order: the merger's output is the scattered order
    assert torch.equal(visual.merger(encoded.last_hidden_state), encoded.pooler_output[0])
    expected = torch.cat(received).reshape(-1, 4).mean(1).reshape(t, tokens)
    assert record.attention.shape == (t, tokens)
    assert (record.attention - expected).abs().max() <= 1e-5
    expected_keys = raw_keys.mean(dim=1).reshape(-1, 4, raw_keys.shape[-1]).mean(1).reshape(t, tokens, -1)
    assert (record.keys - expected_keys).abs().max() <= 1e-5
    assert record.attention_patches == h * w  # every block: one softmax over a whole temporal patch


@pytest.mark.parametrize("block", [None, 0])
def test_sink_penalty_is_rescaled_to_a_whole_temporal_patch(model, inputs, monkeypatch, block):
    from stop_hf.sink import Sink

    weights = []
    original = Sink.spatial_weight

    def spy(self, attention_patches=729):
        weights.append(original(self, attention_patches))
        return weights[-1]

    monkeypatch.setattr(Sink, "spatial_weight", spy)
    stop_hf.patch(model, {"method": "visionzip", "retention": 0.2, "sink": True, "saliency_layer": block})
    prune_inputs(model, inputs)
    _, h, w = inputs["video_grid_thw"][0].tolist()
    assert weights and all(x == pytest.approx(0.03 * 729 / (h * w)) for x in weights)


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
