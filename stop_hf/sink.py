"""SToP: the sink score and its spatial (STSP) and temporal (STTP) corrections.

Pruners call these through one small object, so "sink on/off" is `sink=None` vs `sink=Sink(...)` and never a fork
of a pruner.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: The token count per frame that the reference mu_s values were tuned on (LLaVA-OV SigLIP, 27x27).
REFERENCE_ATTENTION_PATCHES = 729


def frame_sink_scores(attention: torch.Tensor, gamma: float = 1.1) -> torch.Tensor:
    """Sink score of every frame's positions: minmax_n(mean_t(attention) ** gamma), one row per frame. (T, N) -> (T, N).

    The rows are equal up to the last float bit. The mean is repeated for every frame before it is raised to gamma,
    in the reference's order: the vectorised `pow` rounds an element differently depending on where it falls in
    the (T, N) buffer, and that one float step can decide a ranking.
    """
    frames = attention.shape[0]
    mean = attention.float().mean(dim=0).clamp_min(0)
    persistent = mean.expand(frames, -1).contiguous().pow(gamma)
    lo = persistent.amin(dim=1, keepdim=True)
    hi = persistent.amax(dim=1, keepdim=True)
    return ((persistent - lo) / (hi - lo + 1e-12)).to(attention.dtype)


def sink_score(attention: torch.Tensor, gamma: float = 1.1) -> torch.Tensor:
    """Sink score per spatial position: minmax_n(mean_t(attention) ** gamma). (T, N) -> (N,), the first frame's row."""
    return frame_sink_scores(attention, gamma)[0]


def rank_with_sink(
    attention: torch.Tensor, sink: Sink | None, attention_patches: int = 729
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The ranking score (T, N) float32 and the per-frame sink score (T, N), or None without sink.

    Without sink the score is the attention itself; with sink it is STSP's `attention - mu_s' * s[t]`, each frame
    with its own row of the sink score, as the reference does.
    """
    attention = attention.float()
    if sink is None:
        return attention, None
    scores = sink.frame_scores(attention)
    return sink.stsp(attention, scores, attention_patches), scores


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

    def frame_scores(self, attention: torch.Tensor) -> torch.Tensor:
        """(T, N) -> (T, N) sink score, one row per frame (see `frame_sink_scores`)."""
        return frame_sink_scores(attention, self.gamma)

    def spatial_weight(self, attention_patches: int = REFERENCE_ATTENTION_PATCHES) -> float:
        # the ratio first: at 729 patches the weight is mu_s itself, bit for bit (0.03 * 729 / 729 != 0.03)
        return self.mu_s * (REFERENCE_ATTENTION_PATCHES / attention_patches)

    def stsp(
        self,
        attention: torch.Tensor,
        score: torch.Tensor,
        attention_patches: int = REFERENCE_ATTENTION_PATCHES,
    ) -> torch.Tensor:
        """Sink-aware ranking score: attention - mu_s * s. (T, N), (N,) or (T, N) -> (T, N)."""
        weight = self.spatial_weight(attention_patches)
        if weight == 0:
            return attention
        return attention - weight * score

    def sttp(self, similarity: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        """Sink-aware temporal similarity: sim + mu_t * s. (T-1, N), (N,) or (T-1, N) -> (T-1, N)."""
        if self.mu_t == 0:
            return similarity
        return similarity + self.mu_t * score
