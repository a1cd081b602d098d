"""A tiny SigLIP vision model WITH its attention-pooling head, saved as its own checkpoint (FastVID's MAP-head tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..siglip_head import save_random_siglip_head

__all__ = ["save_random_siglip_head", "save_tiny_siglip_with_head", "tiny_siglip_with_head"]


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
