"""Per-architecture patch modules, one registry. Each module knows where video tokens sit, how vision-layer outputs map
to LLM tokens, its position policy, input preparation, tiny test model and bench shapes; the shared mechanics live
in `stop_hf.hooks`. Adding an architecture: `patches/<arch>.py` plus its name in `ARCHITECTURE_MODULES` below (see
docs/adding_an_architecture.md)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from .base import ArchAdapter

#: architecture name -> adapter class, in registration order
ARCHITECTURES: dict[str, type[ArchAdapter]] = {}
#: architecture name -> model class, for adapters whose model the installed transformers does not have
UNAVAILABLE: dict[str, str] = {}


def _model_available(cls: type[ArchAdapter]) -> bool:
    """Whether the installed transformers has the adapter's model package (checked without importing it), at a
    release the adapter is verified on (`min_transformers`)."""
    import importlib.util

    if cls.min_transformers is not None:
        from packaging.version import Version

        from stop_hf import compat

        if Version(compat.transformers_version()) < Version(cls.min_transformers):
            return False
    return importlib.util.find_spec(f"transformers.models.{cls.model_types[0]}") is not None


def register_architecture(cls: type[ArchAdapter]) -> type[ArchAdapter]:
    """Registers an adapter under its `name`; a taken name, model class or model_type raises. An adapter whose model
    the installed transformers lacks (e.g. Qwen3.5 before 5.23) is left out and named in `UNAVAILABLE`."""
    for field in ("name", "model_class", "model_types", "lmms_model", "lmms_class"):
        if not getattr(cls, field):
            raise ValueError(
                f"{cls.__qualname__}.{field} is empty; an architecture declares it before registering"
            )
    taken = {
        "name": {a.name: a for a in ARCHITECTURES.values()},
        "model_class": {a.model_class: a for a in ARCHITECTURES.values()},
        "model_type": {t: a for a in ARCHITECTURES.values() for t in a.model_types},
    }
    for field, values in (
        ("name", [cls.name]),
        ("model_class", [cls.model_class]),
        ("model_type", cls.model_types),
    ):
        for value in values:
            other = taken[field].get(value)
            if other is not None and other is not cls:
                raise ValueError(f"{field} {value!r} is already registered by {other.__qualname__}")
    if not _model_available(cls):
        UNAVAILABLE[cls.name] = cls.model_class + (
            f" (transformers >= {cls.min_transformers})" if cls.min_transformers else ""
        )
        return cls
    ARCHITECTURES[cls.name] = cls
    return cls


def architecture(name: str) -> ArchAdapter:
    """The adapter of a registered architecture name, or a clear error naming the allowed ones."""
    if name in UNAVAILABLE:
        import transformers

        raise ValueError(
            f"arch={name!r} needs {UNAVAILABLE[name]}, which transformers {transformers.__version__} does not have; "
            f"upgrade transformers, or use one of {list(ARCHITECTURES)}"
        )
    if name not in ARCHITECTURES:
        raise ValueError(f"arch={name!r} is not supported; allowed: {list(ARCHITECTURES)}")
    return ARCHITECTURES[name]()


def adapter_for(model: Any) -> ArchAdapter:
    """The adapter for a model instance, or a clear error naming the supported classes."""
    by_class = {cls.model_class: cls for cls in ARCHITECTURES.values()}
    for cls in type(model).__mro__:
        if cls.__name__ in by_class:
            return by_class[cls.__name__]()
    raise TypeError(
        f"stop_hf does not support {type(model).__name__}; supported model classes: {sorted(by_class)}"
    )


class _View(Mapping):
    """A read-only mapping derived from the registry (kept for callers of the former dicts)."""

    def __init__(self, items) -> None:
        self._items = items

    def __getitem__(self, key: str) -> Any:
        return dict(self._items())[key]

    def __iter__(self) -> Iterator[str]:
        return iter(dict(self._items()))

    def __len__(self) -> int:
        return len(dict(self._items()))


#: HF model class name -> adapter class
ADAPTERS: Mapping[str, type[ArchAdapter]] = _View(
    lambda: [(a.model_class, a) for a in ARCHITECTURES.values()]
)
#: config model_type -> HF model class name
SUPPORTED_MODEL_TYPES: Mapping[str, str] = _View(
    lambda: [(t, a.model_class) for a in ARCHITECTURES.values() for t in a.model_types]
)

#: THE REGISTRY: one module per architecture, in this order; each registers its adapter with `@register_architecture`.
ARCHITECTURE_MODULES = ("llava_onevision", "qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen3_5", "internvl")

for _module in ARCHITECTURE_MODULES:
    importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "ADAPTERS",
    "ARCHITECTURES",
    "ArchAdapter",
    "SUPPORTED_MODEL_TYPES",
    "UNAVAILABLE",
    "adapter_for",
    "architecture",
    "register_architecture",
]
