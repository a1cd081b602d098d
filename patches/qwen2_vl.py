"""Qwen2-VL: the Qwen2.5-VL geometry (14x14 patches, 2-frame temporal patches, 2x2 merge units, 3-D mRoPE) without
window attention: every vision block attends over a whole temporal patch, and the tower keeps merge units in raster
order. Everything else (signals, positions, inputs) is the Qwen2.5-VL adapter's; see `patches/qwen2_5_vl.py`.

Saliency: by default the attention of the LAST vision block (Qwen2.5-VL's default is its last full-attention block),
over all h*w patches of a temporal patch, so `mu_s` is rescaled for h*w keys.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from . import register_architecture
from .qwen2_5_vl import Qwen2_5_VLAdapter


@register_architecture
class Qwen2VLAdapter(Qwen2_5_VLAdapter):
    name = "qwen2_vl"
    model_class = "Qwen2VLForConditionalGeneration"
    model_types = ("qwen2_vl",)
    lmms_model = "qwen2_vl_stop"
    lmms_class = "Qwen2VLStop"
    default_pretrained = "Qwen/Qwen2-VL-7B-Instruct"
    display_name: ClassVar[str] = "Qwen2-VL"
    config_class: ClassVar[str] = "Qwen2VLConfig"
    processor_class: ClassVar[str] = "Qwen2VLProcessor"
    # ViT of Qwen2-VL-7B: 1280 wide, 32 blocks, MLP ratio 4; the same 336x336 -> 12x12 = 144 tokens per 2 frames
    bench_vision: ClassVar[dict[str, int]] = {
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_attention_heads": 16,
        "layers": 32,
    }

    def full_attention_blocks(self, vision: Any) -> list[int]:
        return list(range(int(vision.depth)))

    def merge_unit_order(self, grids: list[list[int]], vision: Any) -> torch.Tensor:
        merge = int(vision.spatial_merge_size)
        return torch.arange(sum(t * (h // merge) * (w // merge) for t, h, w in grids))

    def attention_patches(self, h: int, w: int, full_attention: bool, vision: Any) -> int:
        return h * w

    def tiny_vision_config(self) -> dict[str, Any]:
        """Real geometry: patch 14, merge 2, temporal patch 2; every block full attention."""
        return {
            "depth": 2,
            "embed_dim": 64,
            "hidden_size": 64,
            "mlp_ratio": 2,
            "num_heads": 4,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        }

    def bench_vision_config(
        self, vision: dict[str, int], out_hidden: int, vision_layers: int
    ) -> dict[str, Any]:
        return {
            "depth": vision_layers,
            "embed_dim": vision["hidden_size"],
            "hidden_size": out_hidden,
            "mlp_ratio": vision["intermediate_size"] // vision["hidden_size"],
            "num_heads": vision["num_attention_heads"],
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        }
