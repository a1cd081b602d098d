"""Test helpers shipped with stop-hf, usable by users too: tiny models with real token geometry, an offline
tokenizer and the real HF processors, PyAV videos, the masked-reference oracle and the conformance runner.

The tiny models and the video I/O are product code (the demo runs on them): they live in `stop_hf.tiny` and
`stop_hf.video`, and are re-exported here. Product code never imports this package."""

from .models import (
    ARCHITECTURES,
    QK_SCALE,
    build_processor,
    build_tiny_model,
    build_tokenizer,
    save_tiny_checkpoint,
    tiny_checkpoint,
    tiny_llava_onevision_config,
    tiny_qwen2_5_vl_config,
    token_id,
)
from .reference import (
    capture_lm_inputs,
    kept_logits,
    masked_reference_logits,
    reference_logits,
    shortened_reference_logits,
    spliced_reference_logits,
)
from .video import (
    qwen_vl_utils_pyav_backend,
    read_video,
    read_video_for_qwen_vl_utils,
    synthetic_frames,
    write_video,
)

__all__ = [
    "ARCHITECTURES",
    "QK_SCALE",
    "build_processor",
    "build_tiny_model",
    "build_tokenizer",
    "capture_lm_inputs",
    "kept_logits",
    "masked_reference_logits",
    "qwen_vl_utils_pyav_backend",
    "reference_logits",
    "read_video",
    "read_video_for_qwen_vl_utils",
    "save_tiny_checkpoint",
    "shortened_reference_logits",
    "spliced_reference_logits",
    "synthetic_frames",
    "tiny_checkpoint",
    "tiny_llava_onevision_config",
    "tiny_qwen2_5_vl_config",
    "token_id",
    "write_video",
]
