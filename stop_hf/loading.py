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

    # A private copy: later edits to the caller's StopConfig must not desynchronise the built pruner and hooks.
    config = StopConfig.from_dict(StopConfig.from_any(stop_config).to_dict())
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
    # copy.deepcopy would share the hook closures (they capture this model's modules and state), so the copy would
    # encode videos with the original's vision tower and write into the original's state. An instance attribute
    # makes deepcopy copy the unpatched model and patch the copy with the same config instead.
    model.__dict__["__deepcopy__"] = functools.partial(_deepcopy_patched, model)
    model.config.stop_config = config.to_dict()
    return model


def _deepcopy_patched(model: Any, memo: dict) -> Any:
    """`copy.deepcopy` of a patched model: an independent copy with its own hooks and state, same config."""
    import copy

    config, report = model._stop_state.config, model._stop_state.report
    unpatch(model)
    try:
        clone = copy.deepcopy(model, memo)
    finally:
        patch(model, config)
        model._stop_state.report = report  # the original keeps its last_prune_report
    return patch(clone, config)


def unpatch(model: Any) -> Any:
    """Removes every hook `patch` installed and the stored config; the model behaves exactly as before."""
    state: StopState | None = getattr(model, "_stop_state", None)
    if state is None:
        return model
    for handle in state.handles:
        handle.remove()
    del model._stop_state
    model.__dict__.pop("__deepcopy__", None)
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
    Other kwargs go to the HF `from_pretrained` unchanged, config overrides such as `vision_feature_layer=-2`
    included.
    """
    from transformers import AutoConfig, PretrainedConfig, PreTrainedModel

    config = kwargs.get("config")
    if not isinstance(config, PretrainedConfig):
        # Only to pick the class: HF loads (and applies config-override kwargs to) its own copy below.
        source = pretrained_model_name_or_path if config is None else config
        config = AutoConfig.from_pretrained(source, **{k: v for k, v in kwargs.items() if k in _HUB_KWARGS})
    cls = _model_class_for(config)
    model = PreTrainedModel.from_pretrained.__func__(cls, pretrained_model_name_or_path, **kwargs)
    chosen = stop_config if stop_config is not None else getattr(model.config, "stop_config", None)
    if chosen is not None:
        patch(model, chosen)
    return model


_HUB_KWARGS = (
    "cache_dir",
    "force_download",
    "local_files_only",
    "proxies",
    "revision",
    "subfolder",
    "token",
    "trust_remote_code",
)


def _kwarg_from_pretrained(owner: type) -> classmethod:
    """`owner.from_pretrained` accepting `stop_config=`; everything else goes to the inherited implementation."""

    def from_pretrained(cls: type, *args: Any, stop_config: ConfigLike | None = None, **kwargs: Any) -> Any:
        model = super(owner, cls).from_pretrained(*args, **kwargs)
        if stop_config is not None:
            patch(model, stop_config)
        return model

    from_pretrained.__doc__ = (
        f"{owner.__name__}.from_pretrained, plus `stop_config=` (installed by `import stop_hf`): a preset name, "
        "YAML path, dict or StopConfig that patches the loaded model. Without it, loading is unchanged."
    )
    return classmethod(from_pretrained)


_KWARG_CLASSES: list[type] = []


def install_from_pretrained_kwarg() -> None:
    """Makes `Cls.from_pretrained(..., stop_config=...)` work on the supported HF classes (and through
    AutoModelForImageTextToText, which resolves to them). Without the kwarg, loading is unchanged."""
    import transformers

    from stop_hf.patches import SUPPORTED_MODEL_TYPES

    for name in SUPPORTED_MODEL_TYPES.values():
        cls = getattr(transformers, name)
        if "from_pretrained" not in cls.__dict__:
            cls.from_pretrained = _kwarg_from_pretrained(cls)
            _KWARG_CLASSES.append(cls)


def uninstall_from_pretrained_kwarg() -> None:
    while _KWARG_CLASSES:
        cls = _KWARG_CLASSES.pop()
        if cls.__dict__.get("from_pretrained") is not None:
            del cls.from_pretrained
