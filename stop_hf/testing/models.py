"""Tiny random models with the real token geometry, an offline tokenizer and the real HF processors.

The kit itself is product code (the demo and `VideoLLM.tiny` run on it) and lives in `stop_hf.tiny`; these are the
test kit's names for it, plus `ARCHITECTURES` (the registered architectures, in registration order).
"""

from __future__ import annotations

from ..tiny import (
    CHAT_TEMPLATE,
    QK_SCALE,
    SPECIAL_TOKENS,
    VOCAB_SIZE,
    WORDS,
    build_processor,
    build_tiny_model,
    build_tokenizer,
    save_tiny_checkpoint,
    tiny_checkpoint,
    tiny_config,
    tiny_llava_onevision_config,
    tiny_qwen2_5_vl_config,
    token_id,
)

__all__ = [  # and ARCHITECTURES, computed on access (see __getattr__)
    "CHAT_TEMPLATE",
    "QK_SCALE",
    "SPECIAL_TOKENS",
    "VOCAB_SIZE",
    "WORDS",
    "build_processor",
    "build_tiny_model",
    "build_tokenizer",
    "save_tiny_checkpoint",
    "tiny_checkpoint",
    "tiny_config",
    "tiny_llava_onevision_config",
    "tiny_qwen2_5_vl_config",
    "token_id",
]


def __getattr__(name: str):
    if name == "ARCHITECTURES":  # the registered architectures, in registration order
        from stop_hf.patches import ARCHITECTURES

        return tuple(ARCHITECTURES)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
