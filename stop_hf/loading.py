"""Public entry points: `patch`, `unpatch`, `from_pretrained`, and the `from_pretrained(..., stop_config=)` kwarg."""

from __future__ import annotations

import functools
import os
from typing import Any

from . import compat
from .config import StopConfig, StopConfigError, means_no_pruning
from .hooks import (
    MethodHandle,
    StopState,
    lm_post_hook,
    lm_pre_hook,
    outer_pre_hook,
    top_post_hook,
    top_pre_hook,
)
from .validation import pixel_check_pre_hook

ConfigLike = StopConfig | dict | str | os.PathLike


def patch(model: Any, stop_config: ConfigLike | None) -> Any:
    """Installs pruning on one model instance (hooks only; removable with `unpatch`). Returns the model.

    The config is stored in `model.config.stop_config`, so `save_pretrained` keeps it. `None` or `"none"` means no
    pruning: the model is unpatched. Transactional: the config, the architecture and the layer indices are all
    checked before anything is installed, and any failure while installing removes every hook and attribute it
    added, so a failed `patch` leaves the model exactly as it was (still patched with its previous config, if any).
    """
    from stop_hf.patches import adapter_for

    if means_no_pruning(stop_config):
        return unpatch(model)
    # A private copy: later edits to the caller's StopConfig must not desynchronise the built pruner and hooks.
    config = StopConfig.from_dict(StopConfig.from_any(stop_config).to_dict())
    adapter = adapter_for(model)
    check_architecture(adapter, config, stop_config)
    if config.prune_images:
        raise NotImplementedError(
            "stop_config.prune_images=true is not supported yet; images pass through unpruned (set it to false)"
        )
    _check_against_model(adapter, model, config)

    snapshot = _ModelSnapshot(model)
    try:
        unpatch(model)
        _install(model, adapter, config)
    except BaseException:
        snapshot.restore()
        raise
    return model


def _config_label(value: Any, origin: str = "") -> str:
    """How an error names the config the user gave: `preset 'x'`, `YAML file 'x'` or `stop_config`."""
    from .config import is_config_path

    if isinstance(value, str):
        label = f"YAML file {value!r}" if is_config_path(value) else f"preset {value!r}"
    elif isinstance(value, os.PathLike):
        label = f"YAML file {os.fspath(value)!r}"
    else:
        label = "stop_config"
    return f"{label} ({origin})" if origin and "argument" not in origin else label


def check_architecture(adapter: Any, config: StopConfig, value: Any, origin: str = "") -> None:
    """The architecture's config-only checks (e.g. no SigLIP MAP head on Qwen-VL), run before any weight is read;
    the error names the preset or file the config came from."""
    from .hooks import StopUnsupportedError

    check = getattr(adapter, "check_config_for_architecture", None)
    if check is None or config.is_identity:
        return
    try:
        check(config)
    except StopUnsupportedError as exc:
        raise StopUnsupportedError(f"{_config_label(value, origin)}: {exc}") from None


def _adapter_for_class(cls: type) -> Any:
    from stop_hf.patches import ARCHITECTURES

    by_class = {adapter.model_class: adapter for adapter in ARCHITECTURES.values()}
    for klass in cls.__mro__:
        if klass.__name__ in by_class:
            return by_class[klass.__name__]()
    return None


def _install(model: Any, adapter: Any, config: StopConfig) -> None:
    state = StopState(config=config, pruner=config.build_pruner(), adapter=adapter)
    model._stop_state = state  # set first, so that a failure below is rolled back with everything else
    base, lm = adapter.base_model(model), adapter.language_model(model)
    video_token = adapter.video_token_id(model)
    state.handles = [
        model.register_forward_pre_hook(
            functools.partial(top_pre_hook, state, video_token), with_kwargs=True
        ),
        model.register_forward_hook(functools.partial(top_post_hook, state), with_kwargs=True),
        base.register_forward_pre_hook(
            functools.partial(outer_pre_hook, state, video_token), with_kwargs=True
        ),
        lm.register_forward_pre_hook(functools.partial(lm_pre_hook, state), with_kwargs=True),
        lm.register_forward_hook(functools.partial(lm_post_hook, state), with_kwargs=True),
    ]
    if not config.is_identity:
        # runs before the pruning hooks, so NaN/inf pixels are named as such instead of failing inside them
        state.handles.append(
            base.register_forward_pre_hook(pixel_check_pre_hook, with_kwargs=True, prepend=True)
        )
        state.handles += adapter.install_capture(model, state)
    # copy.deepcopy would share the hook closures (they capture this model's modules and state), so the copy would
    # encode videos with the original's vision tower and write into the original's state. An instance attribute
    # makes deepcopy copy the unpatched model and patch the copy with the same config instead.
    model.__dict__["__deepcopy__"] = functools.partial(_deepcopy_patched, model)
    # pickle (torch.save) cannot serialise the hook closures: it pickles an unpatched view and re-patches on load
    model.__dict__["__reduce_ex__"] = functools.partial(_reduce_patched, model)
    model.config.stop_config = config.to_dict()


def _check_against_model(adapter: Any, model: Any, config: StopConfig) -> None:
    """The config checks that need the model (layer indices), run before anything is installed."""
    check = getattr(adapter, "check_config", None)
    try:
        if check is not None:
            check(model, config)
        elif config.saliency_layer is not None or (not config.is_identity and config.build_pruner().needs):
            for name in ("saliency_layer_index", "saliency_block_index"):
                if hasattr(adapter, name):
                    getattr(adapter, name)(model, config.saliency_layer)
    except StopConfigError:
        raise
    except ValueError as exc:
        raise StopConfigError(str(exc)) from None


_MISSING = object()


class _ModelSnapshot:
    """What `patch` may change on a model: every module's hook registries and instance attributes (method
    wrappers, `_stop_state`, `__deepcopy__`), and `config.stop_config`. `restore` undoes any change since."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.attributes = [(module, dict(module.__dict__)) for module in model.modules()]
        self.hooks = [
            (registry, dict(registry))
            for module, attributes in self.attributes
            for name, registry in attributes.items()
            if "hooks" in name and isinstance(registry, dict)
        ]
        self.stored = model.config.__dict__.get("stop_config", _MISSING)

    def restore(self) -> None:
        for registry, saved in self.hooks:
            if registry != saved:
                registry.clear()
                registry.update(saved)
        for module, attributes in self.attributes:
            current = module.__dict__
            for name in set(current) - set(attributes):
                del current[name]
            for name, value in attributes.items():
                if current.get(name, _MISSING) is not value:
                    current[name] = value
        if self.stored is _MISSING:
            self.model.config.__dict__.pop("stop_config", None)
        else:
            self.model.config.stop_config = self.stored


def _deepcopy_patched(model: Any, memo: dict) -> Any:
    """`copy.deepcopy` of a patched model: an independent copy with its own hooks and state, same config."""
    import copy

    config, report = model._stop_state.config, model._stop_state.last_report()
    unpatch(model)
    try:
        clone = copy.deepcopy(model, memo)
    finally:
        patch(model, config)
        model._stop_state.report.set(report)  # the original keeps this thread's last_prune_report
    return patch(clone, config)


def _reduce_patched(model: Any, protocol: int) -> tuple:
    """`pickle` / `torch.save` of a patched model: what is pickled is an unpatched view of it (every module shallow-
    copied without the hooks, method wrappers and attributes `patch` added; parameters shared, not copied), and
    unpickling patches that with the same config (`_unpickle_patched`). The model itself is not touched."""
    state: StopState = model._stop_state
    hook_ids = {handle.id for handle in state.handles if hasattr(handle, "id")}
    wrapped: dict[int, set[str]] = {}
    for handle in state.handles:
        if isinstance(handle, MethodHandle):
            wrapped.setdefault(id(handle.obj), set()).add(handle.name)
    added = {"_stop_state", "__deepcopy__", "__reduce_ex__"}
    views: dict[int, Any] = {}

    def view(module: Any) -> Any:
        if id(module) in views:  # a module reachable twice (shared) stays one object
            return views[id(module)]
        clone = object.__new__(type(module))
        views[id(module)] = clone
        attributes = {}
        for name, value in module.__dict__.items():
            if name in added or name in wrapped.get(id(module), ()):
                continue
            if "hooks" in name and isinstance(value, dict):
                value = type(value)((k, v) for k, v in value.items() if k not in hook_ids)
            attributes[name] = value
        attributes["_modules"] = {
            k: None if m is None else view(m) for k, m in module.__dict__.get("_modules", {}).items()
        }
        clone.__dict__.update(attributes)
        return clone

    return (_unpickle_patched, (view(model), state.config.to_dict()))


def _unpickle_patched(model: Any, config: dict[str, Any]) -> Any:
    return patch(model, StopConfig.from_dict(config))


def unpatch(model: Any) -> Any:
    """Removes every hook `patch` installed and the stored config; the model behaves exactly as before."""
    state: StopState | None = getattr(model, "_stop_state", None)
    if state is None:
        return model
    for handle in state.handles:
        handle.remove()
    del model._stop_state
    model.__dict__.pop("__deepcopy__", None)
    model.__dict__.pop("__reduce_ex__", None)
    if hasattr(model.config, "stop_config"):
        del model.config.stop_config
    return model


def is_patched(model: Any) -> bool:
    return getattr(model, "_stop_state", None) is not None


def get_stop_config(model: Any) -> StopConfig | None:
    state = getattr(model, "_stop_state", None)
    return None if state is None else state.config


def last_prune_report(model: Any) -> list[dict[str, Any]]:
    """The calling thread's (or asyncio task's) last prefill on this model, one entry per video: frames, grid, tokens
    before/after, kept `index` (flat t*N+n), `kind`, method `info` (sink score, windows, segments, assignment), the
    saliency `attention`, timings, `placements` (batch row, start) and `positions` (the sequence positions of each
    placement's grid tokens) -- all CPU tensors. Inside `with stop_hf.report_embeddings():` each entry also has
    `result`, the pruner's output (embeddings included, a CPU copy).

    An empty list means the last prefill pruned nothing (a text-only call, or an identity config); decode steps
    leave the report of their prefill in place. Other threads' calls never change what this returns.
    """
    state = getattr(model, "_stop_state", None)
    if state is None:
        raise ValueError("last_prune_report: the model is not patched by stop_hf (call stop_hf.patch first)")
    return state.last_report()


def _model_class_for(config: Any) -> type:
    from stop_hf.patches import SUPPORTED_MODEL_TYPES

    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise TypeError(
            f"stop_hf does not support model_type={model_type!r}; supported: "
            f"{sorted(SUPPORTED_MODEL_TYPES)} ({sorted(SUPPORTED_MODEL_TYPES.values())})"
        )
    return compat.model_class(SUPPORTED_MODEL_TYPES[model_type])


#: `stop_config` not passed at all (as opposed to None, which means "unpruned").
_UNSET: Any = type("Unset", (), {"__repr__": lambda self: "<not set>"})()


def from_pretrained(
    pretrained_model_name_or_path: str | os.PathLike, stop_config: ConfigLike | None = _UNSET, **kwargs: Any
) -> Any:
    """Loads a supported HF video LLM and patches it.

    `stop_config` defaults to the one stored in the checkpoint's config (from a patched `save_pretrained`); `None`
    or `"none"` loads it unpruned. The config is validated before any weight is read. Other kwargs go to the HF
    `from_pretrained` unchanged, config overrides such as `vision_feature_layer=-2` included.
    """
    from transformers import AutoConfig, PretrainedConfig

    config = kwargs.get("config")
    if not isinstance(config, PretrainedConfig):
        # Only to pick the class: HF loads (and applies config-override kwargs to) its own copy below.
        source = pretrained_model_name_or_path if config is None else config
        config = AutoConfig.from_pretrained(source, **{k: v for k, v in kwargs.items() if k in _HUB_KWARGS})
    cls = _model_class_for(config)
    load = _kwarg_from_pretrained(cls).__get__(None, cls)  # the kwarg path, installed or not
    return load(pretrained_model_name_or_path, stop_config=stop_config, **kwargs)


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


def _requested_config(pretrained: Any, stop_config: Any, kwargs: dict[str, Any]) -> tuple[Any, str]:
    """(the stop_config a load asks for, where it came from); `_UNSET` when none is asked for.

    Precedence: the `stop_config=` kwarg; else `config.stop_config` of a passed config object (the Auto classes and
    `pipeline` hand the kwarg over this way when the checkpoint already stores one); else the config stored in the
    checkpoint's config.json."""
    from transformers import PretrainedConfig

    if stop_config is not _UNSET:
        return stop_config, "the stop_config argument"
    config = kwargs.get("config")
    if isinstance(config, PretrainedConfig):
        return config.__dict__.get("stop_config", _UNSET), "config.stop_config"
    if pretrained is None:
        return _UNSET, ""
    try:
        stored, _ = PretrainedConfig.get_config_dict(
            pretrained, **{k: v for k, v in kwargs.items() if k in _HUB_KWARGS}
        )
    except Exception:  # noqa: BLE001 - no readable config: HF's own load reports it
        return _UNSET, ""
    return stored.get("stop_config", _UNSET), f"the stop_config stored in {pretrained}'s config.json"


def _resolve_requested(value: Any, origin: str) -> StopConfig | None:
    """Validates a requested stop_config (cheap, before any weight is read); None means unpruned."""
    if value is _UNSET or means_no_pruning(value):
        return None
    try:
        return StopConfig.from_any(value)
    except StopConfigError as exc:
        hint = " (pass stop_config=None to load the model unpruned)" if "stored" in origin else ""
        raise StopConfigError(f"{exc} [from {origin}]{hint}") from None


def _kwarg_from_pretrained(owner: type) -> classmethod:
    """`owner.from_pretrained` accepting `stop_config=`; everything else goes to the inherited implementation."""

    def from_pretrained(cls: type, *args: Any, stop_config: ConfigLike | None = _UNSET, **kwargs: Any) -> Any:
        pretrained = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        requested, origin = _requested_config(pretrained, stop_config, kwargs)
        config = _resolve_requested(requested, origin)  # a bad config fails here, before the weights load
        if config is not None:  # so does a config this architecture cannot run
            check_architecture(_adapter_for_class(cls), config, requested, origin)
        loaded = compat.inherited_from_pretrained(owner, cls, *args, **kwargs)
        model = _loaded_model(loaded)
        if config is not None:
            patch(model, config)
        else:
            # Unpruned (asked for, or nothing stored): the loaded config must not claim otherwise, so that
            # `save_pretrained` writes what the model does.
            model.config.__dict__.pop("stop_config", None)
        return loaded

    from_pretrained.__doc__ = (
        f"{owner.__name__}.from_pretrained, plus `stop_config=` (installed by `import stop_hf`): a preset name, "
        "YAML path, dict or StopConfig that patches the loaded model; None or 'none' loads it unpruned. Without "
        "the kwarg, a stop_config stored in the checkpoint's config.json (a patched save_pretrained) is applied. "
        "Configs are validated before any weight is read."
    )
    return classmethod(from_pretrained)


def _backbone_from_pretrained(owner: type, pruned_class: str) -> classmethod:
    """`owner.from_pretrained` for a supported architecture's backbone (what `AutoModel` loads): pruning lives on
    `pruned_class`, so a requested or stored stop_config cannot apply. It warns, loads unpruned and drops the
    stored field, instead of silently claiming a config the model does not run."""

    def from_pretrained(cls: type, *args: Any, stop_config: ConfigLike | None = _UNSET, **kwargs: Any) -> Any:
        import warnings

        pretrained = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        requested, origin = _requested_config(pretrained, stop_config, kwargs)
        if requested is not _UNSET and not means_no_pruning(requested):
            warnings.warn(
                f"stop_hf: {cls.__name__} is the backbone without the LM head and is loaded UNPRUNED; the stop_config "
                f"(from {origin}) applies to {pruned_class} (e.g. AutoModelForImageTextToText). Pass "
                "stop_config=None to silence this.",
                UserWarning,
                stacklevel=2,
            )
        loaded = compat.inherited_from_pretrained(owner, cls, *args, **kwargs)
        _loaded_model(loaded).config.__dict__.pop("stop_config", None)
        return loaded

    return classmethod(from_pretrained)


def _loaded_model(loaded: Any) -> Any:
    """The model of a `from_pretrained` result: `(model, loading_info)` with `output_loading_info=True`."""
    return loaded[0] if isinstance(loaded, tuple) else loaded


_KWARG_CLASSES: list[type] = []


def install_from_pretrained_kwarg() -> None:
    """Makes `Cls.from_pretrained(..., stop_config=...)` work on the supported HF classes (and through
    AutoModelForImageTextToText, AutoModelForMultimodalLM and pipeline, which resolve to them). Their backbones
    (`AutoModel`) warn that they load unpruned. Any other class given a pruning stop_config= raises
    `StopUnsupportedError` before reading a file. Without a requested or stored config, loading is unchanged."""
    from stop_hf.patches import SUPPORTED_MODEL_TYPES

    _install_unsupported_refusal()
    for model_type, name in SUPPORTED_MODEL_TYPES.items():
        if not compat.has_model_class(
            name
        ):  # an older transformers without this architecture: nothing to load
            continue
        cls = compat.model_class(name)
        if "from_pretrained" not in cls.__dict__:
            cls.from_pretrained = _kwarg_from_pretrained(cls)
            _KWARG_CLASSES.append(cls)
        backbone_name = compat.backbone_class_name(model_type)
        backbone = compat.model_class(backbone_name) if compat.has_model_class(backbone_name or "") else None
        if backbone is not None and "from_pretrained" not in backbone.__dict__:
            backbone.from_pretrained = _backbone_from_pretrained(backbone, name)
            _KWARG_CLASSES.append(backbone)


def _refusing_from_pretrained(original: classmethod) -> classmethod:
    """`PreTrainedModel.from_pretrained` that refuses `stop_config=` (a config that prunes) for a class stop_hf does
    not support, before any file is read; the supported classes' own `from_pretrained` takes the kwarg first."""

    def from_pretrained(cls: type, *args: Any, stop_config: ConfigLike | None = _UNSET, **kwargs: Any) -> Any:
        if stop_config is not _UNSET and not means_no_pruning(stop_config):
            from stop_hf.patches import ADAPTERS, UNAVAILABLE

            from .hooks import StopUnsupportedError

            needs = [need for need in UNAVAILABLE.values() if need.split(" ")[0] == cls.__name__]
            reason = (
                f"stop_hf supports {needs[0]}, not on transformers {compat.transformers_version()}"
                if needs
                else f"stop_hf does not support {cls.__name__}"
            )
            raise StopUnsupportedError(
                f"{reason}: stop_config= applies to the supported model classes "
                f"{sorted(ADAPTERS)}. Load it without stop_config (or with stop_config=None)."
            )
        return original.__func__(cls, *args, **kwargs)

    from_pretrained.__doc__ = original.__func__.__doc__
    return classmethod(from_pretrained)


_PRETRAINED_ORIGINAL: list[classmethod] = []


def _install_unsupported_refusal() -> None:
    from transformers import PreTrainedModel

    if not _PRETRAINED_ORIGINAL:
        original = PreTrainedModel.__dict__["from_pretrained"]
        _PRETRAINED_ORIGINAL.append(original)
        PreTrainedModel.from_pretrained = _refusing_from_pretrained(original)


def uninstall_from_pretrained_kwarg() -> None:
    if _PRETRAINED_ORIGINAL:
        from transformers import PreTrainedModel

        PreTrainedModel.from_pretrained = _PRETRAINED_ORIGINAL.pop()
    while _KWARG_CLASSES:
        cls = _KWARG_CLASSES.pop()
        if cls.__dict__.get("from_pretrained") is not None:
            del cls.from_pretrained
