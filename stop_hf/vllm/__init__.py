"""stop-hf inside vLLM: the `vllm.general_plugins` entry point (see docs/vllm.md).

`register()` runs in every vLLM process. It registers the served architectures' classes (vLLM's own subclasses that
act only when the engine was started with a stop config) and checks the engine config at start-up:
`additional_config={"stop_config": ..., "stop_count_rule": ...}` is validated like the HF kwarg, refused for an
unsupported architecture or for modes whose hooks would be bypassed, and handed to the multimodal processor as the
default of the per-request `mm_processor_kwargs={"stop_config": ...}`.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from .counts import (
    CONFIG_KEY,
    ORIGINAL_1D_ARCHITECTURES,
    RULE_KEY,
    SERVED_ARCHITECTURES,
    serve_options,
    served_fields,
)

_MODELS = "stop_hf.vllm.models"
#: vLLM class name -> our subclass (in stop_hf.vllm.models)
MODEL_CLASSES = {
    "Qwen2_5_VLForConditionalGeneration": "StopQwen2_5_VLForConditionalGeneration",
    "Qwen2VLForConditionalGeneration": "StopQwen2VLForConditionalGeneration",
    "LlavaOnevisionForConditionalGeneration": "StopLlavaOnevisionForConditionalGeneration",
    "Qwen3VLForConditionalGeneration": "StopQwen3VLForConditionalGeneration",
    "Qwen3VLMoeForConditionalGeneration": "StopQwen3VLMoeForConditionalGeneration",
    "InternVLForConditionalGeneration": "StopInternVLForConditionalGeneration",
    "Qwen3_5ForConditionalGeneration": "StopQwen3_5ForConditionalGeneration",
    "Qwen3_5MoeForConditionalGeneration": "StopQwen3_5MoeForConditionalGeneration",
}


def register() -> None:
    """The entry point: registers the model classes (lazily, by name) and the start-up check."""
    from vllm import ModelRegistry

    for arch, cls in MODEL_CLASSES.items():
        ModelRegistry.register_model(arch, f"{_MODELS}:{cls}")
    _wrap_create_engine_config()


def _wrap_create_engine_config() -> None:
    from vllm.engine.arg_utils import EngineArgs

    original = EngineArgs.create_engine_config
    if getattr(original, "_stop_hf", False):
        return

    @functools.wraps(original)
    def create_engine_config(self: Any, *args: Any, **kwargs: Any) -> Any:
        config = original(self, *args, **kwargs)
        check_engine_config(config)
        return config

    create_engine_config._stop_hf = True  # type: ignore[attr-defined]
    EngineArgs.create_engine_config = create_engine_config


class StopServeError(ValueError):
    """An engine configuration the plugin cannot serve correctly (raised at start-up, naming the flag)."""


def check_engine_config(vllm_config: Any) -> None:
    """Start-up: validates `additional_config["stop_config"]` and hands it to the processor. No stop config: nothing
    changes (the served model is vLLM's own)."""
    extra = vllm_config.additional_config if isinstance(vllm_config.additional_config, dict) else {}
    if CONFIG_KEY not in extra:
        if RULE_KEY in extra:
            raise StopServeError(
                f"additional_config.{RULE_KEY} is set without additional_config.{CONFIG_KEY}"
            )
        return
    model = vllm_config.model_config
    arch = (model.architectures or [None])[0]
    if arch not in SERVED_ARCHITECTURES:
        raise StopServeError(
            f"additional_config.stop_config is set, but stop-hf's vLLM plugin does not serve architecture {arch!r}; "
            f"served: {sorted(SERVED_ARCHITECTURES)}. Remove stop_config to serve it unpruned."
        )
    options = serve_options(extra[CONFIG_KEY], extra.get(RULE_KEY), SERVED_ARCHITECTURES[arch])
    if getattr(model, "hf_config", None) is not None:  # the tower's fields (each request is checked again)
        options = served_fields(options, SERVED_ARCHITECTURES[arch], model.hf_config)
    compilation = vllm_config.compilation_config
    for flag in ("compile_mm_encoder", "cudagraph_mm_encoder"):
        if getattr(compilation, flag, False):
            raise StopServeError(
                f"compilation_config.{flag}=True bypasses the Python hooks that compute stop-hf's signals; start "
                f"without it (it defaults to False) or without additional_config.stop_config"
            )
    mm = model.multimodal_config
    if mm is None:
        raise StopServeError(f"{arch} was started without multimodal support; stop_config needs it")
    if mm.mm_encoder_tp_mode == "data":
        raise StopServeError(
            "mm_encoder_tp_mode='data' encodes each video on one rank and gathers only the embeddings; stop-hf's "
            "signals are not gathered. Use mm_encoder_tp_mode='weights' (the default) with stop_config"
        )
    if mm.video_pruning_rate:
        raise StopServeError(
            f"video_pruning_rate={mm.video_pruning_rate} turns on vLLM's own video pruning (EVS); it cannot be "
            "combined with additional_config.stop_config"
        )
    if vllm_config.parallel_config.pipeline_parallel_size > 1:
        raise StopServeError(
            "pipeline_parallel_size > 1 is not supported with stop_config; use tensor parallelism"
        )
    from .siglip import check_map_head  # SigLIP's MAP head read once here: a missing head fails at start-up

    check_map_head(
        options.config,
        SERVED_ARCHITECTURES[arch],
        getattr(getattr(model, "hf_config", None), "vision_config", None),
    )
    if SERVED_ARCHITECTURES[arch] in ORIGINAL_1D_ARCHITECTURES:
        # vLLM numbers a 1-D prompt sequentially; HF's original positions leave gaps where tokens were dropped. vLLM
        # keeps per-request positions (prefill from the model's get_mrope_input_positions, decode at + delta) only
        # for configs that declare an M-RoPE section: declared on the top-level config only, so the LLM's own rotary
        # embedding (built from text_config) is unchanged; the model feeds it row 0 (stop_hf.vllm.models)
        model.hf_config.mrope_section = [1, 1, 1]
    # the processor reads the engine-wide default from the multimodal processor kwargs (a request's own
    # mm_processor_kwargs override it); validated values only
    mm.mm_processor_kwargs = {
        **(mm.mm_processor_kwargs or {}),
        CONFIG_KEY: json.dumps(options.config.to_dict(), sort_keys=True),  # hashable: vLLM caches by kwargs
        RULE_KEY: options.count_rule,
    }


__all__ = ["MODEL_CLASSES", "StopServeError", "check_engine_config", "register"]
