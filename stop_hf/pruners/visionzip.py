"""VisionZip for video (the HoliTom authors' LLaVA-OneVision port): per frame, dominant + contextual tokens."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..sink import rank_with_sink
from .base import (
    KIND_COPY,
    KIND_MERGED,
    PruneInput,
    Pruner,
    PruneResult,
    generalise,
    param,
    register_pruner,
    topk_lowest_index,
)
from .density import EPS, group_sum, selection_mask, split_by_mask, take_rows

#: tokens per frame that the reference scripts use for 196-token frames (LLaVA-OV, 14x14).
SPATIAL_TOKENS_196 = {0.10: 20, 0.15: 30, 0.20: 40, 0.25: 50}


@register_pruner
@dataclass
class VisionZipPruner(Pruner):
    """VisionZip, frames independent: keep the top-attention "dominant" tokens and merge the rest into a few
    "contextual" tokens (uniform-stride targets, hard cosine assignment on the keys, target + mean of members).

    Parameters:
        spatial_tokens: tokens per frame. None: the reference table for N=196 (0.10->20, 0.15->30, 0.20->40,
            0.25->50), otherwise int(N * retention), truncated as the SToP eval does (`utils_eval.py:81-83`: 0.3 gives
            58 of 196, not 59); clamped to [1, N].
        dominant_ratio: dominant = floor(spatial_tokens * ratio), contextual = the rest (54/64 in the reference).
        sink_target_skip_topk: SToP only. The contextual target indices (positions in the frame's non-dominant
            list) are moved up past the grid positions of the top-k sink scores, reproducing the reference's
            mixing of the two index spaces.

    Output per frame: [dominant tokens, increasing position] then [contextual tokens, target order]; frames in
    time order; M = T * spatial_tokens. A contextual token's index is its target's position.

    Where the reference crashes (recorded in info["generalisations"], warned once; docs/configuration.md#where-the-
    reference-crashes): a skipped target that would run past the end of the non-dominant list takes the largest
    free index below it instead (or stays put if every index is a sink position); contextual_num = 0
    (dominant_ratio = 1) yields only dominant tokens. Keys of zero norm are normalised with an epsilon (no NaN).
    """

    name: ClassVar[str] = "visionzip"
    sink_weights: ClassVar[tuple[float, float]] = (0.03, 0.0)  # the SToP reference code's defaults
    needs: ClassVar[tuple[str, ...]] = ("attention", "keys")

    spatial_tokens: int | None = param(None, int, 1, optional=True)
    dominant_ratio: float = param(54 / 64, float, 0, 1)
    sink_target_skip_topk: int = param(20, int, 0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.spatial_tokens is not None and (
            isinstance(self.spatial_tokens, bool)
            or not isinstance(self.spatial_tokens, int)
            or self.spatial_tokens < 1
        ):
            raise ValueError(
                f"visionzip spatial_tokens={self.spatial_tokens!r} must be a positive integer or None"
            )
        if not 0 <= float(self.dominant_ratio) <= 1:
            raise ValueError(f"visionzip dominant_ratio={self.dominant_ratio!r} must be in [0, 1]")
        if int(self.sink_target_skip_topk) < 0:
            raise ValueError(f"visionzip sink_target_skip_topk={self.sink_target_skip_topk!r} must be >= 0")

    def tokens_per_frame(self, n: int) -> int:
        if self.spatial_tokens is not None:
            count = self.spatial_tokens
        else:
            count = None
            if n == 196:
                for ratio, tokens in SPATIAL_TOKENS_196.items():
                    if math.isclose(self.retention, ratio, rel_tol=0, abs_tol=1e-9):
                        count = tokens
            if (
                count is None
            ):  # truncation, as the SToP eval (rlqja1107/SToP @3bf998c eval/utils/utils_eval.py:81-83)
                count = int(n * self.retention)
        return max(1, min(n, int(count)))

    def _skip_sink_targets(
        self, targets: torch.Tensor, num_filtered: int, sink_score: torch.Tensor, info: dict
    ) -> torch.Tensor:
        """Move each target value v up (v+1, ...) until it is not among the top-k sink grid positions."""
        k = min(int(self.sink_target_skip_topk), sink_score.shape[0])
        if k == 0 or targets.numel() == 0:
            return targets
        sink_positions = topk_lowest_index(sink_score, k)
        blocked = torch.zeros(num_filtered, dtype=torch.bool, device=targets.device)
        blocked[sink_positions[sink_positions < num_filtered]] = True
        idx = torch.arange(num_filtered, device=targets.device)
        # next free value >= v (num_filtered if none), largest free value <= v (-1 if none)
        next_free = torch.where(blocked, num_filtered, idx).flip(0).cummin(0).values.flip(0)
        prev_free = torch.where(blocked, -1, idx).cummax(0).values
        past_end = next_free[targets] >= num_filtered
        if bool(
            past_end.any()
        ):  # the reference appends index num_filtered here and fails (llava_arch.py:122-128)
            generalise(
                info,
                "visionzip_target_past_end",
                f"{int(past_end.sum())} contextual target(s) would be moved past the last of the {num_filtered} "
                "non-dominant tokens by the sink-target skip; each takes the largest free index below it instead",
            )
        moved = torch.where(past_end, prev_free[targets], next_free[targets])
        return torch.where(moved >= 0, moved, targets)

    def prune(self, x: PruneInput) -> PruneResult:
        x.require(*self.needs, method=self.name)
        feats = x.features
        t, n, d = feats.shape
        device = feats.device
        per_frame = self.tokens_per_frame(n)
        dominant = min(int(per_frame * self.dominant_ratio), per_frame)
        contextual = per_frame - dominant
        remaining = n - dominant

        info: dict = {"tokens_per_frame": per_frame, "dominant_num": dominant, "contextual_num": contextual}
        score, frame_sink = rank_with_sink(x.attention, self.sink, x.attention_patches)
        # the target skip ranks by the first frame's row, as the reference does
        sink_score = None if frame_sink is None else frame_sink[0]
        if sink_score is not None:
            info["sink_score"] = sink_score

        # Dominant tokens: top scores, emitted in increasing position order.
        dom_mask = selection_mask(n, topk_lowest_index(score, dominant))
        order = split_by_mask(dom_mask)  # [non-dominant ascending | dominant ascending]
        filtered, dom_pos = order[:, :remaining], order[:, remaining:]
        frame_base = torch.arange(t, device=device)[:, None] * n
        rows_base = torch.arange(t, device=device)[:, None] * per_frame

        flat_feats = feats.reshape(t * n, d)
        dom_flat = frame_base + dom_pos  # (T, dominant)
        assignment = torch.full((t, n), -1, dtype=torch.long, device=device)
        assignment.scatter_(1, dom_pos, rows_base + torch.arange(dominant, device=device))

        if contextual > 0:
            step = max(1, remaining // contextual)
            targets = torch.arange(0, remaining, step, device=device)[:contextual]
            if sink_score is not None:
                targets = self._skip_sink_targets(targets, remaining, sink_score, info)
            info["target_indices_filtered"] = targets
            is_target = torch.zeros(remaining, dtype=torch.bool, device=device)
            is_target[targets] = True
            others = torch.nonzero(~is_target).squeeze(-1)

            keys = take_rows(x.keys, filtered).float()
            keys = F.normalize(keys, dim=-1, eps=EPS)
            similarity = torch.matmul(keys[:, others], keys[:, targets].transpose(1, 2))  # (T, P, C)
            assign = similarity.argmax(dim=-1)  # (T, P)

            filt_feats = take_rows(feats, filtered).float()
            sums, counts = group_sum(filt_feats[:, others], assign, contextual)
            ctx_tokens = (
                filt_feats[:, targets] + sums / counts.clamp_min(1.0)[..., None]
            )  # target + mean(members)
            target_pos = filtered[:, targets]  # (T, C)

            ctx_rows = rows_base + dominant + torch.arange(contextual, device=device)
            assignment.scatter_(1, filtered[:, others], torch.gather(ctx_rows, 1, assign))
            assignment.scatter_(1, target_pos, ctx_rows)

            embeds = torch.cat([flat_feats[dom_flat], ctx_tokens.to(feats.dtype)], dim=1)
            index = torch.cat([dom_flat, frame_base + target_pos], dim=1)
            kind = torch.cat(
                [
                    torch.full((t, dominant), KIND_COPY, dtype=torch.long, device=device),
                    torch.full((t, contextual), KIND_MERGED, dtype=torch.long, device=device),
                ],
                dim=1,
            )
        else:  # the reference divides by contextual_num = 0 (llava_arch.py:113)
            generalise(
                info,
                "visionzip_no_contextual",
                f"dominant_ratio={self.dominant_ratio} leaves no contextual token ({per_frame} tokens per frame, all "
                "dominant); each frame keeps its dominant tokens only",
            )
            embeds, index = flat_feats[dom_flat], dom_flat
            kind = torch.full_like(dom_flat, KIND_COPY)

        info["assignment"] = assignment.reshape(-1)
        return PruneResult(
            embeds=embeds.reshape(-1, d), index=index.reshape(-1), kind=kind.reshape(-1), info=info
        )


# SToP default weights (mu_s, mu_t) from the SToP reference code (STOP_MU_DEFAULTS).
