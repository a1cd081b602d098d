"""PruneVid as the SToP code runs it on LLaVA-OneVision: frame clustering into windows, static/dynamic split, DPC-kNN."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .base import (
    KIND_COPY,
    KIND_MERGED,
    PruneInput,
    Pruner,
    PruneResult,
    generalise,
    param,
    register_pruner,
)
from .density import EPS, dpc_knn_clusters, split_by_mask


def refine_frame_labels(labels: list[int]) -> list[int]:
    """Make frame clusters contiguous in time (PruneVid's refinement).

    1. Per label, keep only its longest run(s) of consecutive frames; a label whose longest run is 1 frame loses all.
    2. Left to right, each run of unassigned frames takes the label of the longer neighbour run (lengths as labelled
       at that moment; the left one on a tie or when alone; label 0 with no neighbour).
    """
    t = len(labels)
    runs: list[tuple[int, int, int]] = []  # (label, start, length)
    for i, label in enumerate(labels):
        if runs and runs[-1][0] == label and runs[-1][1] + runs[-1][2] == i:
            runs[-1] = (label, runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((label, i, 1))
    longest: dict[int, int] = {}
    for label, _, length in runs:
        longest[label] = max(longest.get(label, 0), length)
    refined = list(labels)
    for label, start, length in runs:
        if longest[label] == 1 or length < longest[label]:
            refined[start : start + length] = [-1] * length

    def run_length(i: int, step: int) -> int:
        j = i
        while 0 <= j + step < t and refined[j + step] == refined[i]:
            j += step
        return abs(j - i) + 1

    i = 0
    while i < t:
        if refined[i] != -1:
            i += 1
            continue
        end = i
        while end + 1 < t and refined[end + 1] == -1:
            end += 1
        left = refined[i - 1] if i > 0 else None
        right = refined[end + 1] if end + 1 < t else None
        if left is not None and right is not None:
            label = left if run_length(i - 1, -1) >= run_length(end + 1, 1) else right
        else:
            label = left if left is not None else (right if right is not None else 0)
        refined[i : end + 1] = [label] * (end - i + 1)
        i = end + 1
    return refined


@register_pruner
@dataclass
class PruneVidPruner(Pruner):
    """PruneVid (SToP's LLaVA-OneVision port) over the whole video.

    `retention` is a ceiling: static tokens always merge over time, so a static clip keeps fewer tokens than
    retention * N (251 / 245 of 785 on a static LLaVA-OV clip at retention 0.5-0.999, issue 23).

    1. Frame clustering: DPC-kNN (k = frame_dpc_k) over the per-frame mean features into
       int(T * frame_cluster_ratio) clusters; labels are centre ranks; `refine_frame_labels` makes them contiguous and
       the runs of equal labels are the windows.
    2. Per window of W frames: position n is static iff the mean pairwise cosine of its W features,
       (sum_{w,t} cos - W) / (W (W - 1)), exceeds `static_threshold`. Static positions become the window mean.
    3. rho = min(r * N * W / (S + (N - S) * W) + 0.005, 1) in float32, as the reference computes it.
    4. Static tokens (S of them): int(S * rho) DPC-kNN clusters (k = token_dpc_k) when S > cluster_min_tokens, else
       kept as they are. Dynamic tokens, per frame (N - S): int((N - S) * rho) clusters when N - S >
       cluster_min_tokens, else copied unchanged (kind 0). Cluster tokens are plain means in centre-score order.
    5. Output per window: [static tokens] then each frame's dynamic tokens. Index: the centre's (or token's) position
       in the window's first frame (static) or its own frame (dynamic).

    Budget: about (r + 0.005) * N * T tokens, plus up to `cluster_min_tokens` unclustered tokens per static group and
    per frame, and never more than T * N.

    The reference has no SToP variant (it never reads mu_s/mu_t); `sink` must be unset. Robustness beyond the
    reference, which hard-codes N = 196 (the 196 of rho is N here), needs T >= 7 and reads the cluster count from
    --n_frame: k is min(k, tokens), the frame-cluster count is int(T * ratio) clamped to [1, T], a 1-frame window has
    no static positions (the reference would divide by zero; its refinement prevents it for T >= 2), and a clustered
    group keeps at least one cluster.
    """

    name: ClassVar[str] = "prunevid"
    needs: ClassVar[tuple[str, ...]] = ()

    frame_cluster_ratio: float = param(0.25, float, 0, 1, low_open=True)
    frame_dpc_k: int = param(7, int, 1)
    static_threshold: float = param(0.8, float, -1, 1)
    cluster_min_tokens: int = param(14, int, 0)
    token_dpc_k: int = param(7, int, 1)
    retain_ratio_offset: float = param(0.005, float, 0, 1)

    no_sink_reason: ClassVar[str] = (
        "prunevid has no SToP variant: the reference (rlqja1107/SToP pruning/prunevid) never reads mu_s or mu_t "
        "and STOP_MU_DEFAULTS has no prunevid entry; use sink: false"
    )

    def __post_init__(self) -> None:
        if self.sink is not None:
            raise ValueError(self.no_sink_reason)
        super().__post_init__()

    def frame_labels(self, frame_means: torch.Tensor) -> list[int]:
        """Frame cluster label (centre rank) of every frame. (T, D) -> [T]."""
        t = frame_means.shape[0]
        clusters = min(t, max(1, int(t * self.frame_cluster_ratio)))
        _, assign, _ = dpc_knn_clusters(frame_means.float()[None], clusters, min(self.frame_dpc_k, t))
        return assign[0].tolist()

    def window_ratio(self, n: int, static: int, width: int) -> torch.Tensor:
        """rho of one window as a float32 0-d tensor, with the reference's float32 rounding."""
        w = torch.tensor(width)
        rho = (self.retention * n) * w / (static + (n - static) * w) + self.retain_ratio_offset
        return rho.clamp_max(1.0)

    def _group(self, tokens: torch.Tensor, rho: torch.Tensor) -> tuple[int, torch.Tensor | None]:
        """Clusters for a (B, M, D) group: (count, None) if it is kept unclustered."""
        m = tokens.shape[1]
        if m <= self.cluster_min_tokens:
            return m, None
        count = min(m, max(1, int(m * rho)))
        return count, dpc_knn_clusters(tokens, count, min(self.token_dpc_k, m))

    def prune(self, x: PruneInput) -> PruneResult:
        feats = x.features
        t, n, d = feats.shape
        device = feats.device
        work = feats.float()
        labels = self.frame_labels(work.mean(dim=1))
        refined = refine_frame_labels(labels)
        windows = []
        for i, label in enumerate(refined):
            if windows and refined[i - 1] == label:
                windows[-1][1] = i
            else:
                windows.append([i, i])
        info: dict = {"frame_cluster_labels": labels, "frame_cluster_labels_refined": refined}
        if (
            t < 7
        ):  # the reference clusters the frames with k = 7 neighbours (SToP pruning/prunevid/llava_arch.py:496)
            generalise(
                info,
                "prunevid_short_video",
                f"T={t} frames < 7: the frame clustering uses k = min(7, T) neighbours and int(T/4) clamped to "
                "[1, T] clusters",
            )
        if (
            n != 196
        ):  # the reference reshapes every frame to 14 x 14 (SToP pruning/prunevid/llava_arch.py:495)
            generalise(
                info,
                "prunevid_grid",
                f"N={n} tokens per frame (the reference hard-codes 196): N replaces 196 in the budget",
            )
        info["windows"] = [tuple(w) for w in windows]

        out_embeds, out_index, out_kind = [], [], []
        assignment = torch.full((t, n), -1, dtype=torch.long, device=device)
        rows = 0
        details = []
        for start, end in windows:
            width = end - start + 1
            block = work[start : end + 1]  # (W, N, D)
            if width > 1:
                unit = F.normalize(block, dim=-1, eps=EPS).transpose(0, 1)  # (N, W, D)
                pair_sum = torch.matmul(unit, unit.transpose(1, 2)).sum(dim=(1, 2))
                static = (pair_sum - width) / (width * (width - 1)) > self.static_threshold
            else:
                static = torch.zeros(n, dtype=torch.bool, device=device)
            n_static = int(static.sum())
            order = split_by_mask(static[None])[0]
            dyn_pos, static_pos = order[: n - n_static], order[n - n_static :]
            rho = self.window_ratio(n, n_static, width)
            detail = {"start": start, "size": width, "static": n_static, "retain_ratio": float(rho)}

            if n_static > 0:
                static_feats = block[:, static_pos].mean(dim=0)[None]  # (1, S, D)
                count, clustered = self._group(static_feats, rho)
                if clustered is None:
                    pos, embeds, member_rows = (
                        static_pos,
                        static_feats[0],
                        rows + torch.arange(count, device=device),
                    )
                else:
                    centres, assign, means = clustered
                    pos, embeds, member_rows = static_pos[centres[0]], means[0], rows + assign[0]
                out_embeds.append(embeds.to(feats.dtype))
                out_index.append(start * n + pos)
                out_kind.append(torch.full((count,), KIND_MERGED, dtype=torch.long, device=device))
                assignment[start : end + 1, static_pos] = member_rows
                rows += count
                detail["static_out"] = count

            if n_static < n:
                frames = torch.arange(start, end + 1, device=device)
                dyn_feats = block[:, dyn_pos]  # (W, N - S, D)
                count, clustered = self._group(dyn_feats, rho)
                frame_rows = rows + torch.arange(width, device=device)[:, None] * count
                if clustered is None:
                    pos = dyn_pos.expand(width, -1)
                    embeds = feats[frames[:, None], pos]  # bit-exact copies
                    kind, member_rows = KIND_COPY, frame_rows + torch.arange(count, device=device)
                else:
                    centres, assign, means = clustered
                    pos, embeds, kind = dyn_pos[centres], means.to(feats.dtype), KIND_MERGED
                    member_rows = frame_rows + assign
                out_embeds.append(embeds.reshape(-1, d))
                out_index.append((frames[:, None] * n + pos).reshape(-1))
                out_kind.append(torch.full((width * count,), kind, dtype=torch.long, device=device))
                assignment[frames[:, None], dyn_pos] = member_rows
                rows += width * count
                detail["dynamic_out_per_frame"] = count
            details.append(detail)

        info["windows_detail"] = details
        info["assignment"] = assignment.reshape(-1)
        return PruneResult(
            embeds=torch.cat(out_embeds), index=torch.cat(out_index), kind=torch.cat(out_kind), info=info
        )


# PruneVid has no SToP weights: the SToP code never reads mu for it.
