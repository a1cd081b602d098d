"""The pure pruner interface: tensors in, tensors out. Nothing here knows about transformers."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch

from ..sink import Sink

#: Output token kinds.
KIND_COPY = 0  # a source token copied unchanged
KIND_MERGED = 1  # a merged / aggregated token


@dataclass
class PruneInput:
    """Everything a pruner may read for ONE video.

    features:        (T, N, D) the tokens the LLM would see, raster order inside each frame.
    attention:       (T, N) mean attention each token receives at the saliency layer, or None.
    keys:            (T, N, Dk) head-averaged keys of that layer, or None.
    global_features: (T, Dg) one descriptor per frame, or None.
    grid:            (h, w) with h * w == N.
    attention_patches: number of keys the saliency softmax ran over per frame (729 for LLaVA-OV). The SToP
        weight mu_s is calibrated for 729 (attention ~ 1/729 per token); it is rescaled by 729 / attention_patches
        so that other encoders carry the same relative penalty.
    """

    features: torch.Tensor
    attention: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    global_features: torch.Tensor | None = None
    grid: tuple[int, int] | None = None
    attention_patches: int = 729

    def __post_init__(self) -> None:
        if self.features.dim() != 3:
            raise ValueError(f"PruneInput.features must be (T, N, D), got shape {tuple(self.features.shape)}")
        t, n, _ = self.features.shape
        if self.grid is None:
            side = int(round(n**0.5))
            if side * side != n:
                raise ValueError(f"PruneInput.grid is required for a non-square token count N={n}")
            self.grid = (side, side)
        self.grid = (int(self.grid[0]), int(self.grid[1]))
        if self.grid[0] * self.grid[1] != n:
            raise ValueError(f"PruneInput.grid={self.grid} does not multiply to N={n}")
        for name, want in (("attention", (t, n)), ("keys", (t, n)), ("global_features", (t,))):
            value = getattr(self, name)
            if value is not None and tuple(value.shape[: len(want)]) != want:
                raise ValueError(
                    f"PruneInput.{name} has shape {tuple(value.shape)}; expected leading dims {want} "
                    f"to match features {tuple(self.features.shape)}"
                )

    @property
    def num_frames(self) -> int:
        return self.features.shape[0]

    @property
    def tokens_per_frame(self) -> int:
        return self.features.shape[1]

    def require(self, *names: str, method: str) -> None:
        """Raise a clear error when a signal the method needs is missing."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(
                f"method {method!r} needs PruneInput fields {missing}, which the caller did not provide"
            )


@dataclass
class PruneResult:
    """The pruned video.

    embeds: (M, D) output tokens in the method's reference order.
    index:  (M,) int64 flat source index t * N + n of each output token's representative.
    kind:   (M,) int64, KIND_COPY or KIND_MERGED.
    info:   method diagnostics for reports and visualisation (windows, segments, sink score, ...).
    """

    embeds: torch.Tensor
    index: torch.Tensor
    kind: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind is None:
            self.kind = torch.zeros_like(self.index)


@dataclass
class Pruner:
    """Base class: one small dataclass per method holding its parameters, with a single `prune` method.

    Subclasses declare their parameters as dataclass fields and set `name`. `sink` is None for the original
    method and a `Sink` for the SToP variant.
    """

    name: ClassVar[str] = ""
    #: signals the method reads besides features; the patch modules compute only these.
    needs: ClassVar[tuple[str, ...]] = ()

    retention: float = 1.0
    sink: Sink | None = None

    def prune(self, x: PruneInput) -> PruneResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x: PruneInput) -> PruneResult:
        return self.prune(x)

    def ranking(self, x: PruneInput) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The score tokens are ranked by, (T, N) float32, and the sink score (N,) or None.

        Without sink this is the attention itself; with sink it is STSP's `attention - mu_s' * s`.
        """
        attention = x.attention.float()
        if self.sink is None:
            return attention, None
        sink_score = self.sink.score(attention)
        return self.sink.stsp(attention, sink_score, x.attention_patches), sink_score

    @classmethod
    def param_names(cls) -> list[str]:
        """Method-specific parameter names (everything but retention and sink)."""
        return [f.name for f in fields(cls) if f.name not in ("retention", "sink")]


def copy_result(x: PruneInput, flat_index: torch.Tensor, **info: Any) -> PruneResult:
    """A result made only of source tokens, copied unchanged, at `flat_index` (M,) in the given order."""
    flat = x.features.reshape(-1, x.features.shape[-1])
    flat_index = flat_index.to(device=flat.device, dtype=torch.long)
    return PruneResult(
        embeds=flat[flat_index], index=flat_index, kind=torch.zeros_like(flat_index), info=info
    )


def topk_lowest_index(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest values along the last dim; ties go to the lower index. (..., N) -> (..., k)."""
    if k <= 0:
        return scores.new_zeros(scores.shape[:-1] + (0,), dtype=torch.long)
    # A stable descending sort keeps equal values in index order, so ties resolve to the lower index.
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]
