"""Qwen3-VL (and its MoE variant): 16x16 patches, 2-frame temporal patches, 2x2 merge units, every vision block
attending over one temporal patch, deepstack features injected into the first LLM layers.

What differs from Qwen2-VL, whose adapter this extends (see `patches/qwen2_vl.py`, docs/qwen3_vl.md):
- Layout: each temporal patch is its own group `<t seconds><|vision_start|><|video_pad|> x N<|vision_end|>`, so a
  video's tokens are NOT contiguous. `stop_hf.hooks` matches a video by content and splices through the sequence
  positions of its tokens; timestamps and wrappers are text and always stay (also around an emptied temporal patch).
- Deepstack: the tower's deepstack features reach the language model as `deepstack_visual_embeds` (one row per
  visual position, row-major over (batch, seq)) with `visual_pos_masks`. Both are sliced with exactly the kept
  columns of the pruned sequence (`prune_lm_kwargs`): a kept token keeps its own rows; a merged token takes its
  representative's rows, the same position its embedding is written to.
- Positions: 3-D mRoPE ids whose temporal id is the group's start position (time is in the timestamp text); they
  are sliced at the original positions, as for Qwen2.5-VL. The model's `rope_deltas` is never written.
- Saliency: the last vision block's attention (all blocks attend over the h*w patches of one temporal patch), so
  `mu_s` is rescaled for P = h*w keys (`attention_patches`), which varies with the processor's per-video budget.
- The tiny test model sharpens q_norm/k_norm (the LLM normalises q and k per head, so scaling the projections would
  do nothing).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from stop_hf.hooks import Splice

from . import register_architecture
from .qwen2_vl import Qwen2VLAdapter

#: Qwen3-8B, the LLM of Qwen3-VL-8B and InternVL3.5-8B: hidden 4096, 32 heads of 128, 8 KV heads, MLP 12288, 36 layers
QWEN3_8B_LLM: dict[str, int] = {
    "hidden": 4096,
    "heads": 32,
    "kv_heads": 8,
    "mlp": 12288,
    "layers": 36,
    "vocab": 151936,
}


@register_architecture
class Qwen3VLAdapter(Qwen2VLAdapter):
    name = "qwen3_vl"
    model_class = "Qwen3VLForConditionalGeneration"
    model_types = ("qwen3_vl",)
    lmms_model = "qwen3_vl_stop"
    lmms_class = "Qwen3VLStop"
    default_pretrained = "Qwen/Qwen3-VL-8B-Instruct"
    display_name: ClassVar[str] = "Qwen3-VL"
    config_class: ClassVar[str] = "Qwen3VLConfig"
    processor_class: ClassVar[str] = "Qwen3VLProcessor"
    video_processor_class: ClassVar[str] = "Qwen3VLVideoProcessor"
    patch_size: ClassVar[int] = 16
    token_px = 32
    # ViT of Qwen3-VL-8B: 1152 wide, 27 blocks; 384x384 -> 12x12 = 144 tokens per 2 frames
    bench_vision: ClassVar[dict[str, int]] = {
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_attention_heads": 16,
        "layers": 27,
    }
    bench_image_size = 384
    bench_tokens_per_frame = 72
    # LLM of Qwen3-VL-8B (Qwen3-8B): hidden 4096, 32 heads of 128, 8 KV heads, MLP 12288, 36 layers
    bench_llm: ClassVar[dict[str, int]] = QWEN3_8B_LLM
    tiny_sharpen: ClassVar[dict[str, float]] = {"q_norm": 2.5, "k_norm": 2.5, "attn.qkv": 6.0}
    pruned_lm_kwargs: ClassVar[tuple[str, ...]] = ("visual_pos_masks", "deepstack_visual_embeds")

    # ------------------------------------------------------------------ prefill
    def prune_lm_kwargs(self, kwargs: dict[str, Any], splice: Splice) -> dict[str, Any]:
        """Slices `visual_pos_masks` (B, L) and every `deepstack_visual_embeds` layer (n_visual, D) to the pruned
        sequence: the rows of the kept columns, in (batch, pruned seq) order."""
        visual = kwargs.get("visual_pos_masks")
        deepstack = kwargs.get("deepstack_visual_embeds")
        if visual is None:
            return kwargs
        visual = visual.bool()
        row_of = (visual.flatten().cumsum(0) - 1).view_as(visual)  # deepstack row of each visual position
        kept_visual = splice.gather(visual, False)
        if deepstack is not None:
            rows = torch.cat([row_of[b, src][visual[b, src]] for b, src in enumerate(splice.rows_src)])
            kwargs["deepstack_visual_embeds"] = [layer[rows.to(layer.device)] for layer in deepstack]
        kwargs["visual_pos_masks"] = kept_visual
        return kwargs

    # ------------------------------------------------------------------ testing kit
    def tiny_vision_config(self) -> dict[str, Any]:
        """Real geometry: patch 16, merge 2, temporal patch 2; deepstack after the first two of three blocks."""
        return {
            "depth": 3,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 4,
            "out_hidden_size": 64,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 256,
            "deepstack_visual_indexes": [0, 1],
        }

    def tiny_text_config(self) -> dict[str, Any]:
        """3 layers (deepstack reaches the inputs of layers 1 and 2), explicit head_dim, q/k norms."""
        return {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": 32768,
            "rope_parameters": {"rope_type": "default", "rope_theta": 5e5, "mrope_section": [2, 3, 3]},
        }

    # ------------------------------------------------------------------ bench
    def bench_inputs(
        self, model: Any, frames: int, image_size: int, device: str, dtype: Any
    ) -> dict[str, Any]:
        """One timestamped group per temporal patch (`<t s><|vision_start|> video x N <|vision_end|>`, the timestamp
        standing in as 3 text tokens), with the `mm_token_type_ids` the processor would return."""
        if frames % self.temporal_patch:
            raise ValueError(f"{self.name} needs an even frame count (temporal patch {self.temporal_patch})")
        grid = image_size // self.patch_size
        t, per_patch = frames // self.temporal_patch, (grid // 2) ** 2
        config = model.config
        group = [10, 11, 12, config.vision_start_token_id] + [self.video_token_id(model)] * per_patch
        group.append(config.vision_end_token_id)
        span = group * t
        pixels = torch.randn(t * grid * grid, 3 * 2 * self.patch_size**2, dtype=dtype, device=device)
        return {
            "span": span,
            "n_video": t * per_patch,
            "pixels": {
                "pixel_values_videos": pixels,
                "video_grid_thw": torch.tensor([[t, grid, grid]], device=device),
            },
            "token_types": [2 if token == self.video_token_id(model) else 0 for token in span],
        }

    def bench_vision_config(
        self, vision: dict[str, int], out_hidden: int, vision_layers: int
    ) -> dict[str, Any]:
        depth = vision_layers
        return {
            "depth": depth,
            "hidden_size": vision["hidden_size"],
            "intermediate_size": vision["intermediate_size"],
            "num_heads": vision["num_attention_heads"],
            "out_hidden_size": out_hidden,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            # the 8B checkpoint's taps (8, 16, 24 of 27), scaled to a shallower bench tower
            "deepstack_visual_indexes": sorted({max(0, round(depth * k / 27) - 1) for k in (9, 17, 25)}),
        }

    def bench_text_config(self, llm: Any) -> dict[str, Any]:
        head_dim = llm.hidden // llm.heads  # 8B: 128, sections 24/20/20
        spatial = head_dim * 5 // 32
        return {
            **super().bench_text_config(llm),
            "head_dim": head_dim,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5e6,
                "mrope_section": [head_dim // 2 - 2 * spatial, spatial, spatial],
            },
        }


@register_architecture
class Qwen3VLMoeAdapter(Qwen3VLAdapter):
    """Qwen3-VL-MoE: the same model code with a sparse-MoE MLP (routing is per token with no capacity limit, so
    dropping tokens does not change other tokens' experts)."""

    name = "qwen3_vl_moe"
    model_class = "Qwen3VLMoeForConditionalGeneration"
    model_types = ("qwen3_vl_moe",)
    lmms_model = "qwen3_vl_moe_stop"
    lmms_class = "Qwen3VLMoeStop"
    default_pretrained = "Qwen/Qwen3-VL-30B-A3B-Instruct"
    display_name: ClassVar[str] = "Qwen3-VL-MoE"
    config_class: ClassVar[str] = "Qwen3VLMoeConfig"

    def bench_config(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError(
            "stop-hf bench models the FLOPs of a dense LLM; arch='qwen3_vl_moe' is not benchmarked (its pruning is "
            "the dense model's: use --arch qwen3_vl)"
        )

    def tiny_text_config(self) -> dict[str, Any]:
        return {
            **super().tiny_text_config(),
            "moe_intermediate_size": 64,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "decoder_sparse_step": 1,
        }
