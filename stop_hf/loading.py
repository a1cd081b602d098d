"""Public entry points: `patch`, `unpatch`, `from_pretrained`, and the `from_pretrained(..., stop_config=)` kwarg."""

from __future__ import annotations

import functools
import os
from typing import Any

from .config import StopConfig
from .hooks import StopState, lm_pre_hook, outer_pre_hook, top_pre_hook

ConfigLike = StopConfig | dict | str | os.PathLike


def patch(model: Any, stop_config: ConfigLike) -> Any:
    """Installs pruning on one model instance (hooks only; removable with `unpatch`). Returns the model.

    The config is stored in `model.config.stop_config`, so `save_pretrained` keeps it.
    """
    from stop_hf.patches import adapter_for

    config = StopConfig.from_any(stop_config)
    adapter = adapter_for(model)
    if config.prune_images:
        raise NotImplementedError(
            "stop_config.prune_images=true is not supported yet; images pass through unpruned (set it to false)"
        )
    if is_patched(model):
        unpatch(model)
    state = StopState(config=config, pruner=config.build_pruner(), adapter=adapter)
    base, lm = adapter.base_model(model), adapter.language_model(model)
    video_token = adapter.video_token_id(model)
    state.handles = [
        model.register_forward_pre_hook(functools.partial(top_pre_hook, state), with_kwargs=True),
        base.register_forward_pre_hook(
            functools.partial(outer_pre_hook, state, video_token), with_kwargs=True
        ),
        lm.register_forward_pre_hook(functools.partial(lm_pre_hook, state), with_kwargs=True),
    ]
    if not config.is_identity:
        state.handles += adapter.install_capture(model, state)
    model._stop_state = state
    model.config.stop_config = config.to_dict()
    return model


def unpatch(model: Any) -> Any:
    """Removes every hook `patch` installed and the stored config; the model behaves exactly as before."""
    state: StopState | None = getattr(model, "_stop_state", None)
    if state is None:
        return model
    for handle in state.handles:
        handle.remove()
    del model._stop_state
    if hasattr(model.config, "stop_config"):
        del model.config.stop_config
    return model


def is_patched(model: Any) -> bool:
    return getattr(model, "_stop_state", None) is not None


def get_stop_config(model: Any) -> StopConfig | None:
    state = getattr(model, "_stop_state", None)
    return None if state is None else state.config


def last_prune_report(model: Any) -> list[dict[str, Any]]:
    """Per video of the last pruned prefill: frames, grid, tokens before/after, kept `index` (flat t*N+n), `kind`,
    method `info` (sink score, windows, segments, assignment), the saliency `attention`, and timings."""
    state = getattr(model, "_stop_state", None)
    if state is None:
        raise ValueError("last_prune_report: the model is not patched by stop_hf (call stop_hf.patch first)")
    return state.report


def _model_class_for(config: Any) -> type:
    import transformers

    from stop_hf.patches import SUPPORTED_MODEL_TYPES

    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise TypeError(
            f"stop_hf does not support model_type={model_type!r}; supported: "
            f"{sorted(SUPPORTED_MODEL_TYPES)} ({sorted(SUPPORTED_MODEL_TYPES.values())})"
        )
    return getattr(transformers, SUPPORTED_MODEL_TYPES[model_type])


def from_pretrained(
    pretrained_model_name_or_path: str | os.PathLike, stop_config: ConfigLike | None = None, **kwargs: Any
) -> Any:
    """Loads a supported HF video LLM and patches it.

    `stop_config` defaults to the one stored in the checkpoint's config (from a patched `save_pretrained`).
    Other kwargs go to the HF `from_pretrained` unchanged.
    """
    from transformers import AutoConfig, PreTrainedModel

    config = kwargs.pop("config", None) or AutoConfig.from_pretrained(
        pretrained_model_name_or_path, **{k: v for k, v in kwargs.items() if k in _HUB_KWARGS}
    )
    cls = _model_class_for(config)
    model = PreTrainedModel.from_pretrained.__func__(
        cls, pretrained_model_name_or_path, config=config, **kwargs
    )
    chosen = stop_config if stop_config is not None else getattr(model.config, "stop_config", None)
    if chosen is not None:
        patch(model, chosen)
    return model


_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "trust_remote_code")


def _kwarg_from_pretrained(
    cls: type, *args: Any, stop_config: ConfigLike | None = None, **kwargs: Any
) -> Any:
    from transformers import PreTrainedModel

    model = PreTrainedModel.from_pretrained.__func__(cls, *args, **kwargs)
    if stop_config is not None:
        patch(model, stop_config)
    return model


_KWARG_CLASSES: list[type] = []


def install_from_pretrained_kwarg() -> None:
    """Makes `Cls.from_pretrained(..., stop_config=...)` work on the supported HF classes (and through
    AutoModelForImageTextToText, which resolves to them). Without the kwarg, loading is unchanged."""
    import transformers

    from stop_hf.patches import SUPPORTED_MODEL_TYPES

    for name in SUPPORTED_MODEL_TYPES.values():
        cls = getattr(transformers, name)
        if "from_pretrained" not in cls.__dict__:
            cls.from_pretrained = classmethod(_kwarg_from_pretrained)
            _KWARG_CLASSES.append(cls)


def uninstall_from_pretrained_kwarg() -> None:
    while _KWARG_CLASSES:
        cls = _KWARG_CLASSES.pop()
        if cls.__dict__.get("from_pretrained") is not None:
            del cls.from_pretrained
