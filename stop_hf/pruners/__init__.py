"""Pure tensor pruners: `PruneInput -> PruneResult`, one file per method, one registry (`@register_pruner`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from . import fastvid, flashvid, holitom, prunevid, uniform, visionzip  # noqa: F401  (each registers its pruners)
from .base import (
    KIND_COPY,
    KIND_MERGED,
    PRUNERS,
    PruneInput,
    Pruner,
    PruneResult,
    copy_result,
    register_pruner,
    topk_lowest_index,
)
from .uniform import NonePruner, RandomPruner, UniformPruner


class _SinkWeights(Mapping):
    """method name -> SToP default (mu_s, mu_t): a read-only view of each registered class's `sink_weights`."""

    def __getitem__(self, method: str) -> tuple[float, float]:
        return PRUNERS[method].sink_weights

    def __iter__(self) -> Iterator[str]:
        return iter(PRUNERS)

    def __len__(self) -> int:
        return len(PRUNERS)


DEFAULT_SINK_WEIGHTS: Mapping[str, tuple[float, float]] = _SinkWeights()

__all__ = [
    "KIND_COPY",
    "KIND_MERGED",
    "PRUNERS",
    "DEFAULT_SINK_WEIGHTS",
    "NonePruner",
    "PruneInput",
    "PruneResult",
    "Pruner",
    "RandomPruner",
    "UniformPruner",
    "copy_result",
    "register_pruner",
    "topk_lowest_index",
]
