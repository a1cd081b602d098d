"""Per-architecture patch modules. Each knows where video tokens sit, how vision-layer outputs map to LLM tokens,
its position policy and its defaults; the shared mechanics live in `stop_hf.hooks`."""

from __future__ import annotations

from .base import ArchAdapter
from .llava_onevision import LlavaOnevisionAdapter
from .qwen2_5_vl import Qwen2_5_VLAdapter

#: HF model class name -> adapter class.
ADAPTERS: dict[str, type[ArchAdapter]] = {
    "LlavaOnevisionForConditionalGeneration": LlavaOnevisionAdapter,
    "Qwen2_5_VLForConditionalGeneration": Qwen2_5_VLAdapter,
}

SUPPORTED_MODEL_TYPES: dict[str, str] = {
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
}


def adapter_for(model) -> ArchAdapter:
    """The adapter for a model instance, or a clear error naming the supported classes."""
    for cls in type(model).__mro__:
        if cls.__name__ in ADAPTERS:
            return ADAPTERS[cls.__name__]()
    raise TypeError(
        f"stop_hf does not support {type(model).__name__}; supported model classes: {sorted(ADAPTERS)}"
    )


__all__ = ["ADAPTERS", "ArchAdapter", "SUPPORTED_MODEL_TYPES", "adapter_for"]
