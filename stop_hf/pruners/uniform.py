"""Trivial baselines: evenly spaced and seeded-random tokens per frame."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import PruneInput, Pruner, PruneResult, copy_result, param, register_pruner


def tokens_per_frame_budget(n: int, retention: float) -> int:
    """round(N * r), at least 1 token per frame."""
    return max(1, min(n, int(round(n * retention))))


@register_pruner
@dataclass
class NonePruner(Pruner):
    """Keeps every token: the identity."""

    name: ClassVar[str] = "none"

    def prune(self, x: PruneInput) -> PruneResult:
        return copy_result(
            x, torch.arange(x.features.shape[0] * x.features.shape[1], device=x.features.device)
        )


@register_pruner
@dataclass
class UniformPruner(Pruner):
    """Keeps round(N * r) evenly spaced positions in every frame, in raster order."""

    name: ClassVar[str] = "uniform"

    def prune(self, x: PruneInput) -> PruneResult:
        t, n, _ = x.features.shape
        k = tokens_per_frame_budget(n, self.retention)
        positions = torch.div(torch.arange(k, device=x.features.device) * n, k, rounding_mode="floor")
        frames = torch.arange(t, device=x.features.device)[:, None] * n
        return copy_result(x, (frames + positions[None]).reshape(-1))


@register_pruner
@dataclass
class RandomPruner(Pruner):
    """Keeps round(N * r) random positions per frame (seeded, so runs are reproducible), in raster order."""

    name: ClassVar[str] = "random"
    seed: int = param(0, int, 0, 2**63 - 1)

    def prune(self, x: PruneInput) -> PruneResult:
        t, n, _ = x.features.shape
        k = tokens_per_frame_budget(n, self.retention)
        generator = torch.Generator().manual_seed(self.seed)
        positions = torch.rand(t, n, generator=generator).argsort(dim=-1)[:, :k].sort(dim=-1).values
        frames = torch.arange(t)[:, None] * n
        return copy_result(x, (frames + positions).reshape(-1).to(x.features.device))
