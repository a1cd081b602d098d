"""Qwen-VL towers without window attention (Qwen2-VL, Qwen3-VL): every block attends over a whole temporal patch,
merge units stay in raster order, the default saliency block is the last one, and the sink penalty is rescaled for
the h*w keys of one softmax (the mu_s rule)."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
from conftest import prune_inputs
from stop_hf.patches import architecture

import stop_hf
from stop_hf import compat
from stop_hf.testing import build_processor, synthetic_frames, tiny_checkpoint


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen3_vl"])
def arch(request):
    return request.param


@pytest.fixture(scope="module")
def reference(arch):
    return compat.model_class(architecture(arch).model_class).from_pretrained(tiny_checkpoint(arch)).eval()


@pytest.fixture()
def model(reference):
    return copy.deepcopy(reference)


@pytest.fixture(scope="module")
def inputs(arch):
    adapter, processor = architecture(arch), build_processor(arch)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what happens ?"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    element = adapter.decode_video(synthetic_frames(4, 112, 168, sink_patch=(10, 10, 30)), 4)
    return dict(adapter.processor_inputs(processor, [text], [element], return_tensors="pt"))


@pytest.mark.parametrize("block", [None, 0])
def test_recomputed_attention_matches_eager(arch, model, reference, inputs, block):
    """The hook's attention equals an eager replay of the chosen block over each temporal patch, averaged per
    merge unit in raster order (no window permutation); keys likewise."""
    modeling = importlib.import_module(f"transformers.models.{arch}.modeling_{arch}")
    visual = reference.model.visual
    index = len(visual.blocks) - 1 if block is None else block
    assert architecture(arch).saliency_block_index(reference, block) == index
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
        q, k = modeling.apply_rotary_pos_emb_vision(q, k, cos, sin)
        q, k, v = (x.transpose(0, 1)[None] for x in (q, k, v))
        received = []
        for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
            _, weights = modeling.eager_attention_forward(
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
