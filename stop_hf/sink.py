"""SToP: the sink score and its spatial (STSP) and temporal (STTP) corrections.

Pruners call these through one small object, so "sink on/off" is `sink=None` vs `sink=Sink(...)` and never a fork
of a pruner.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: The token count per frame that the reference mu_s values were tuned on (LLaVA-OV SigLIP, 27x27).
REFERENCE_ATTENTION_PATCHES = 729


def sink_score(attention: torch.Tensor, gamma: float = 1.1) -> torch.Tensor:
    """Sink score per spatial position: minmax_n(mean_t(attention) ** gamma). (T, N) -> (N,)."""
    persistent = attention.float().mean(dim=0).clamp_min(0).pow(gamma)
    lo, hi = persistent.min(), persistent.max()
    return ((persistent - lo) / (hi - lo + 1e-12)).to(attention.dtype)


@dataclass(frozen=True)
class Sink:
    """SToP weights. mu_s penalises attention ranking (STSP); mu_t relaxes temporal redundancy (STTP).

    mu_s is expressed for 729 attention patches per frame; `spatial_weight` rescales it to the encoder at hand.
    """

    mu_s: float = 0.0
    mu_t: float = 0.0
    gamma: float = 1.1

    def score(self, attention: torch.Tensor) -> torch.Tensor:
        """(T, N) -> (N,) sink score shared by all frames."""
        return sink_score(attention, self.gamma)

    def spatial_weight(self, attention_patches: int = REFERENCE_ATTENTION_PATCHES) -> float:
        return self.mu_s * REFERENCE_ATTENTION_PATCHES / attention_patches

    def stsp(
        self,
        attention: torch.Tensor,
        score: torch.Tensor,
        attention_patches: int = REFERENCE_ATTENTION_PATCHES,
    ) -> torch.Tensor:
        """Sink-aware ranking score: attention - mu_s * s. (T, N), (N,) -> (T, N)."""
        weight = self.spatial_weight(attention_patches)
        if weight == 0:
            return attention
        return attention - weight * score

    def sttp(self, similarity: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        """Sink-aware temporal similarity: sim + mu_t * s. (T-1, N), (N,) -> (T-1, N)."""
        if self.mu_t == 0:
            return similarity
        return similarity + self.mu_t * score
