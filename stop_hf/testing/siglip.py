"""A tiny SigLIP vision model WITH its attention-pooling head, saved as its own checkpoint (FastVID's MAP-head tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def tiny_siglip_with_head(vision_config: Any, seed: int = 0):
    """A `SiglipVisionModel` with `vision_use_head=True` and the geometry of `vision_config` (e.g. the tiny LLaVA-OV's)."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    settings = vision_config.to_dict()
    settings["vision_use_head"] = True
    for key in ("model_type", "transformers_version", "architectures"):
        settings.pop(key, None)
    torch.manual_seed(seed)
    model = SiglipVisionModel(SiglipVisionConfig(**settings)).eval()
    with torch.no_grad():  # a peaked probe, so that the probe attention is far from uniform
        model.head.probe.mul_(8.0)
    return model


def save_tiny_siglip_with_head(vision_config: Any, folder: str | Path, seed: int = 0):
    """Saves `tiny_siglip_with_head` to `folder` (model.safetensors + config.json) and returns the model."""
    model = tiny_siglip_with_head(vision_config, seed)
    model.save_pretrained(str(folder))
    return model


def save_random_siglip_head(
    folder: str | Path, hidden_size: int, intermediate_size: int, seed: int = 0
) -> Path:
    """A random SigLIP MAP head (+ post_layernorm) of the given width as its own checkpoint, for benchmarks of
    models with random weights (the head's cost is part of FastVID's signal cost). Returns the folder."""
    from stop_hf.siglip_head import save_head

    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.02

    h, i = hidden_size, intermediate_size
    tensors = {
        "head.probe": torch.randn(1, 1, h, generator=g),
        "head.attention.in_proj_weight": rand(3 * h, h),
        "head.attention.in_proj_bias": torch.zeros(3 * h),
        "head.attention.out_proj.weight": rand(h, h),
        "head.attention.out_proj.bias": torch.zeros(h),
        "head.layernorm.weight": torch.ones(h),
        "head.layernorm.bias": torch.zeros(h),
        "head.mlp.fc1.weight": rand(i, h),
        "head.mlp.fc1.bias": torch.zeros(i),
        "head.mlp.fc2.weight": rand(h, i),
        "head.mlp.fc2.bias": torch.zeros(h),
        "post_layernorm.weight": torch.ones(h),
        "post_layernorm.bias": torch.zeros(h),
    }
    save_head(tensors, Path(folder) / "model.safetensors", source="random")
    return Path(folder)
