"""Pure tensor pruners: `PruneInput -> PruneResult`, one file per method, one registry."""

from __future__ import annotations

from .base import KIND_COPY, KIND_MERGED, PruneInput, Pruner, PruneResult, copy_result, topk_lowest_index
from .uniform import NonePruner, RandomPruner, UniformPruner

#: method name -> pruner class. Paper methods register themselves on import below.
PRUNERS: dict[str, type[Pruner]] = {}

#: method name -> SToP default (mu_s, mu_t), from the SToP reference code.
DEFAULT_SINK_WEIGHTS: dict[str, tuple[float, float]] = {}


def register(cls: type[Pruner], sink_weights: tuple[float, float] = (0.0, 0.0)) -> type[Pruner]:
    PRUNERS[cls.name] = cls
    DEFAULT_SINK_WEIGHTS[cls.name] = sink_weights
    return cls


register(NonePruner)
register(UniformPruner)
register(RandomPruner)

from . import fastvid, flashvid, holitom, prunevid, visionzip  # noqa: E402,F401

__all__ = [
    "KIND_COPY",
    "KIND_MERGED",
    "PRUNERS",
    "DEFAULT_SINK_WEIGHTS",
    "PruneInput",
    "PruneResult",
    "Pruner",
    "copy_result",
    "register",
    "topk_lowest_index",
]
