"""Qwen3.5 (dense and MoE): natively multimodal, the Qwen3-VL vision tower without deepstack (patch 16, merge 2,
temporal patch 2, one timestamped group per temporal patch), and a hybrid LLM: of every four layers three are
Gated-DeltaNet linear attention and one is full attention (see docs/qwen3_5.md).

What differs from Qwen3-VL, whose adapter this extends (see `patches/qwen3_vl.py`):
- No deepstack: the language model takes no per-token multimodal kwargs, so there is nothing to slice.
- Reference: the linear-attention layers carry a recurrent state through every position and ignore a 4-D mask
  (`create_recurrent_attention_mask` returns None for one), so the masked full-length reference is no oracle. A
  pruned prefill equals the unpatched model fed exactly the kept tokens at their original 3-D positions
  (`lm_reference = "shortened"`). Dropped tokens never enter the recurrent state; left re-padding is harmless
  (padded inputs are zeroed before the linear layers).
- Saliency: as Qwen3-VL, the last vision block's attention over one temporal patch (`mu_s * 729 / (h*w)`).
- The tiny test model: Qwen3.5's q/k norms are `x * (1 + w)` with w initialised to 0, so scaling w sharpens
  nothing; `tiny_adjust` sets w instead.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from . import register_architecture
from .qwen3_vl import Qwen3VLAdapter


@register_architecture
class Qwen3_5Adapter(Qwen3VLAdapter):
    name = "qwen3_5"
    model_class = "Qwen3_5ForConditionalGeneration"
    model_types = ("qwen3_5",)
    # transformers 5.19-5.22 ship Qwen3.5, but there the patched model's sampling with num_return_sequences > 1
    # fails the suite's check (first-step logits 0.16-0.26 away from the prompt's, tiny model); verified from 5.23
    min_transformers = "5.23"
    lmms_model = "qwen3_5_stop"
    lmms_class = "Qwen3_5Stop"
    default_pretrained = "Qwen/Qwen3.5-9B"
    display_name: ClassVar[str] = "Qwen3.5"
    config_class: ClassVar[str] = "Qwen3_5Config"
    lm_reference = "shortened"
    pruned_lm_kwargs: ClassVar[tuple[str, ...]] = ()
    # ViT of Qwen3.5-9B: the Qwen3-VL tower (1152 wide, 27 blocks); 384x384 -> 12x12 = 144 tokens per 2 frames
    bench_vision: ClassVar[dict[str, int]] = {
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_attention_heads": 16,
        "layers": 27,
    }
    # LLM of Qwen3.5-9B: hidden 4096, 16 heads of 256, 4 KV heads, MLP 12288, 32 layers (8 of them full attention)
    bench_llm: ClassVar[dict[str, int]] = {
        "hidden": 4096,
        "heads": 16,
        "kv_heads": 4,
        "mlp": 12288,
        "layers": 32,
        "vocab": 248320,
    }
    tiny_sharpen: ClassVar[dict[str, float]] = {"attn.qkv": 6.0}
    #: the tiny model's q/k norm weights (`x * (1 + w)`): 1 + w = 2.5, as Qwen3-VL's tiny norms are scaled
    tiny_norm_offset: ClassVar[float] = 1.5

    def prune_lm_kwargs(self, kwargs: dict[str, Any], splice: Any) -> dict[str, Any]:
        return kwargs  # no deepstack

    # ------------------------------------------------------------------ testing kit
    def tiny_adjust(self, model: Any) -> None:
        with torch.no_grad():
            for name, param in self.language_model(model).named_parameters():
                if name.endswith(("q_norm.weight", "k_norm.weight")):
                    param.fill_(self.tiny_norm_offset)

    def tiny_vision_config(self) -> dict[str, Any]:
        """Real geometry: patch 16, merge 2, temporal patch 2; no deepstack."""
        config = super().tiny_vision_config()
        config.pop("deepstack_visual_indexes")
        return config

    def tiny_text_config(self) -> dict[str, Any]:
        """Two layers, linear attention then full attention (the real ratio is 3:1): both kinds see the pruning."""
        return {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "layer_types": ["linear_attention", "full_attention"],
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "linear_conv_kernel_dim": 4,
            "linear_key_head_dim": 16,
            "linear_value_head_dim": 16,
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 4,
            "max_position_embeddings": 32768,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e7,
                "partial_rotary_factor": 0.5,
                "mrope_section": [2, 1, 1],
                "mrope_interleaved": True,
            },
        }

    # ------------------------------------------------------------------ bench
    def bench_config(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError(
            f"stop-hf bench models the FLOPs and layer timings of a transformer LLM; arch={self.name!r} has a "
            "hybrid LLM (3 of 4 layers Gated-DeltaNet linear attention, whose cost is linear in the sequence) and is "
            "not benchmarked. Its vision tower and pruning are Qwen3-VL's: use --arch qwen3_vl for those stages."
        )


@register_architecture
class Qwen3_5MoeAdapter(Qwen3_5Adapter):
    """Qwen3.5-MoE: the same model code with a sparse-MoE MLP (routing is per token with no capacity limit, so
    dropping tokens does not change other tokens' experts)."""

    name = "qwen3_5_moe"
    model_class = "Qwen3_5MoeForConditionalGeneration"
    model_types = ("qwen3_5_moe",)
    lmms_model = "qwen3_5_moe_stop"
    lmms_class = "Qwen3_5MoeStop"
    default_pretrained = "Qwen/Qwen3.5-35B-A3B"
    display_name: ClassVar[str] = "Qwen3.5-MoE"
    config_class: ClassVar[str] = "Qwen3_5MoeConfig"

    def tiny_text_config(self) -> dict[str, Any]:
        config = super().tiny_text_config()
        config.pop("intermediate_size")
        return {
            **config,
            "moe_intermediate_size": 32,
            "shared_expert_intermediate_size": 32,
            "num_experts": 4,
            "num_experts_per_tok": 2,
        }
