"""Vision signals: the attention-received reduction, and LLaVA-OV's hooked attention against SigLIP's own eager
attention weights (the model runs sdpa; the hook never forces eager)."""

from __future__ import annotations

import copy

import pytest
import torch

import stop_hf
from stop_hf.signals import attention_received


def softmax_reference(queries, keys, scale):
    """The textbook definition: softmax(q k^T * scale), averaged over heads and queries. (B, N)."""
    probs = torch.softmax(queries.double() @ keys.double().transpose(-1, -2) * scale, dim=-1)
    return probs.mean(dim=(1, 2))


@pytest.mark.parametrize("chunk_size", [1, 3, 8])
def test_attention_received_equals_softmax_mean(chunk_size):
    generator = torch.Generator().manual_seed(0)
    queries = 3 * torch.randn(5, 4, 50, 16, generator=generator)
    keys = 3 * torch.randn(5, 4, 50, 16, generator=generator)
    received = attention_received(queries, keys, 16**-0.5, chunk_size)
    assert received.shape == (5, 50) and received.dtype == torch.float32
    torch.testing.assert_close(
        received.double(), softmax_reference(queries, keys, 16**-0.5), atol=1e-7, rtol=1e-5
    )
    torch.testing.assert_close(received.sum(-1), torch.ones(5))  # each softmax row sums to 1


def test_attention_received_is_stable_for_huge_logits_and_half_inputs():
    queries = torch.full((1, 2, 6, 4), 1e3, dtype=torch.bfloat16)
    keys = torch.randn(1, 2, 6, 4).to(torch.bfloat16)
    received = attention_received(queries, keys, 1.0)
    assert torch.isfinite(received).all() and received.dtype == torch.float32
    torch.testing.assert_close(received.double(), softmax_reference(queries.float(), keys.float(), 1.0))


def eager_pooled_attention(model, inputs, layer):
    """Mean attention received at `layer` from SigLIP's own eager attention weights, pooled like the features."""
    eager = copy.deepcopy(model)
    eager.model.vision_tower.set_attn_implementation("eager")
    pixels = inputs["pixel_values_videos"].flatten(0, 1)
    with torch.no_grad():
        weights = eager.model.vision_tower(pixels, output_attentions=True).attentions[
            layer
        ]  # (F, H, 729, 729)
        return eager.model.apply_pooling(weights.mean(dim=(1, 2))[..., None])[..., 0]  # (F, 196)


def hooked_attention(model, inputs, **config):
    stop_hf.patch(model, {"method": "visionzip", "retention": 0.1, **config})
    with torch.no_grad():
        model(**inputs)
    return stop_hf.last_prune_report(model)[0]["attention"]


@pytest.mark.parametrize("layer", [0, 1])
def test_llava_hooked_attention_matches_eager_siglip(llava_model, llava_inputs, layer):
    assert llava_model.model.vision_tower.config._attn_implementation == "sdpa"
    expected = eager_pooled_attention(llava_model, llava_inputs, layer)
    got = hooked_attention(llava_model, llava_inputs, saliency_layer=layer, signal_chunk_frames=3)
    assert got.shape == (8, 196)
    assert (got - expected).abs().max() <= 1e-5


class ScaledProjection(torch.nn.Module):
    """Stands in for an adapter (e.g. LoRA) that wraps a projection after the model was patched."""

    def __init__(self, inner: torch.nn.Module, factor: float) -> None:
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, hidden):
        return self.inner(hidden) * self.factor


def test_llava_hooked_attention_follows_a_wrapped_projection(llava_model, llava_inputs):
    """The hook reuses q_proj's output; once q_proj is replaced, it must follow the replacement, not the stale one."""
    before = hooked_attention(llava_model, llava_inputs, saliency_layer=1)
    attn = llava_model.model.vision_tower.encoder.layers[1].self_attn
    attn.q_proj = ScaledProjection(attn.q_proj, 3.0)
    after = hooked_attention(llava_model, llava_inputs, saliency_layer=1)
    expected = eager_pooled_attention(llava_model, llava_inputs, 1)
    assert (after - expected).abs().max() <= 1e-5
    assert (after - before).abs().max() > 1e-4  # the swap really changed the signal
