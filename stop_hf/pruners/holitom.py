"""HoliTom (outer-LLM part): global static-window DP, window-static merging and per-frame dynamic selection."""

from __future__ import annotations

import math
import warnings
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
from .density import (
    anchor_merge,
    density_peak_scores,
    group_sum,
    nearest_assign,
    selection_mask,
    split_by_mask,
    take_rows,
)


def select_static_windows(
    static_pairs: torch.Tensor, max_window_size: int
) -> tuple[list[tuple[int, int]], int]:
    """HoliTom's window DP. static_pairs (T-1, N) bool: position n is static between frames t and t+1.

    gain(a, b) = #{n static over every pair a..b-1} * (b - a);
    best[i] = max(best[i-1], max_{w=2..min(i+1, max_window_size)} best[i-w] + gain(i-w+1, i)), best[-1] = 0.
    Candidates are tried as "frame i alone" then w = 2, 3, ...; only a strictly larger value replaces. The max
    over w is one vectorised op per frame. Returns ([(start, end)] inclusive covering all frames, best[T-1]).
    """
    t = static_pairs.shape[0] + 1
    if t == 1:
        return [(0, 0)], 0
    pairs = static_pairs.detach().to("cpu", torch.bool)
    steps = torch.arange(t - 1)[:, None]
    last_break = torch.where(pairs, -1, steps).cummax(dim=0).values
    run = steps - last_break  # consecutive static pairs ending at pair t (inclusive)
    hist = torch.zeros(t - 1, t + 1, dtype=torch.long).scatter_add_(1, run, torch.ones_like(run))
    at_least = hist.flip(1).cumsum(1).flip(1)  # at_least[t, j] = #{n : run[t, n] >= j}

    best = torch.zeros(t + 1, dtype=torch.long)  # best[i + 1] = best value up to frame i; best[0] = 0
    choice = [1] * t
    for i in range(t):
        value = int(best[i])
        w_max = min(i + 1, int(max_window_size))
        if w_max >= 2:
            w = torch.arange(2, w_max + 1)
            candidates = best[i + 1 - w] + at_least[i - 1, w - 1] * (w - 1)
            j = int(torch.argmax(candidates))
            if int(candidates[j]) > value:
                value, choice[i] = int(candidates[j]), j + 2
        best[i + 1] = value

    windows = []
    i = t - 1
    while i >= 0:
        windows.append((i - choice[i] + 1, i))
        i -= choice[i]
    return windows[::-1], int(best[t])


@register_pruner
@dataclass
class HoliTomPruner(Pruner):
    """HoliTom without its inner-LLM merge.

    `retention` is a ceiling: static tokens always merge over time, so a static clip keeps fewer tokens than
    retention * N (251 / 245 of 785 on a static LLaVA-OV clip at retention 0.5-0.999, issue 23).

    1. sim[t, n] = cos(features[t, n], features[t+1, n]); a DP over windows maximises the tokens saved by
       collapsing positions with sim > tau inside a window (`select_static_windows`).
    2. Budget correction: r_adj = min(r / ((T*N - total_reduced) / (T*N)), 1) (off: r_adj = r).
    3. Per window of >= 2 frames, static positions (sim > tau for every pair) become one token each, the mean over
       the window; round(S * r_adj) density-peak centres (k = min(K, C)) absorb the others:
       beta * centre + (1 - beta) * mean(members).
    4. Dynamic tokens per frame: keep = ceil(M * r_adj); round(keep * (1 - d_split)) top-score tokens are copied
       (raster order); with d_split > 0 the rest of `keep` are density-peak centres of the other dynamic tokens.
    5. Output per window: [static tokens, increasing position] then each frame's dynamic tokens.

    SToP (sink set): the static test becomes `sim + mu_t * s > sttp_threshold` (0.8 hard-coded in the reference,
    independent of tau; the DP and r_adj keep raw sim > tau); dynamic tokens rank by `attention - mu_s * s`; the
    static-centre score is lowered by `static_cluster_sink_penalty * s` (the window's first frame's row, even when
    mu_s = 0); with d_split > 0 only the dominant part, round(keep * (1 - d_split)), is kept and there is no
    contextual part (the SToP code's rule: fewer tokens than r). `no_beta` switches the merge to a plain mean of
    centre and members (the reference's NO_BETA=1). The pair (t, t+1) uses frame t's row of the sink score.

    Robustness beyond the reference: T = 1 is one window of one frame; a window that would emit no token at all
    (every position static and round(S * r_adj) = 0, only possible for tiny N * r) emits one static centre, and
    one with no static position whose dominant part rounds to 0 (SToP with a large d_split) keeps one dynamic
    token per frame; with SToP, tau < sttp_threshold warns that the budget is overshot (as in the reference);
    budgets are capped at the tokens available; cosine uses an epsilon so constant/zero features give no NaN.
    """

    name: ClassVar[str] = "holitom"
    sink_weights: ClassVar[tuple[float, float]] = (0.04, 0.07)  # the SToP reference code's defaults
    needs: ClassVar[tuple[str, ...]] = ("attention",)

    tau: float = param(0.8, float, 0, 1)
    beta: float = param(0.6, float, 0, 1)
    d_split: float = param(0.0, float, 0, 1)
    k: int = param(7, int, 1)
    max_window_size: int = param(1024, int, 1)
    budget_correction: bool = param(True, bool)
    sttp_threshold: float = param(0.8, float, 0, 1)
    static_cluster_sink_penalty: float = param(0.3, float, 0)
    no_beta: bool = param(False, bool)

    def __post_init__(self) -> None:
        super().__post_init__()
        for field_name in ("k", "max_window_size"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"holitom {field_name}={value!r} must be a positive integer")
        if not 0 <= float(self.beta) <= 1:
            raise ValueError(f"holitom beta={self.beta!r} must be in [0, 1]")
        if not 0 <= float(self.d_split) <= 1:
            raise ValueError(f"holitom d_split={self.d_split!r} must be in [0, 1]")
        for field_name in ("budget_correction", "no_beta"):
            if not isinstance(getattr(self, field_name), bool):
                raise ValueError(f"holitom {field_name}={getattr(self, field_name)!r} must be true or false")
        if self.sink is not None and float(self.tau) < float(self.sttp_threshold):
            # The reference's split: the window DP and r_adj count raw sim > tau as static, while SToP's static
            # test uses sttp_threshold, so fewer tokens merge than r_adj assumed and the budget is overshot.
            warnings.warn(
                f"holitom with sink: tau={self.tau} < sttp_threshold={self.sttp_threshold} keeps more tokens than "
                f"retention={self.retention} (up to about 2x; the SToP reference does the same). Set tau >= "
                "sttp_threshold to stay within the budget.",
                UserWarning,
                stacklevel=2,
            )

    def _merge_weight(self, counts: torch.Tensor) -> torch.Tensor:
        return torch.where(counts > 0, torch.full_like(counts, float(self.beta)), torch.ones_like(counts))

    def _cluster(
        self, tokens: torch.Tensor, num: int, penalty: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """DPC-kNN clustering of (B, S, D) tokens into `num` centres per row.

        Returns centres (B, num) ascending local indices, merged (B, num, D) float32, and the cluster (column in
        centres) of every token (B, S).
        """
        b, s, _ = tokens.shape
        score, dist = density_peak_scores(tokens, min(self.k, num), return_dist=True)
        if penalty is not None:
            score = score - penalty
        centres = torch.sort(topk_lowest_index(score, num), dim=-1).values  # (B, C)
        order = split_by_mask(selection_mask(s, centres))
        members = order[:, : s - num]  # non-centres, ascending
        to_centres = take_rows(dist, members).gather(2, centres[:, None, :].expand(b, s - num, num))
        assign = nearest_assign(to_centres)  # (B, P)
        sums, counts = group_sum(take_rows(tokens, members), assign, num)
        centre_feats = take_rows(tokens, centres)
        if self.no_beta:
            merged = (centre_feats + sums) / (counts + 1.0)[..., None]
        else:
            merged = anchor_merge(centre_feats, sums, counts, self._merge_weight(counts))
        cluster = torch.empty((b, s), dtype=torch.long, device=tokens.device)
        cluster.scatter_(1, members, assign)
        cluster.scatter_(1, centres, torch.arange(num, device=tokens.device).expand(b, num))
        return centres, merged, cluster

    def prune(self, x: PruneInput) -> PruneResult:
        x.require(*self.needs, method=self.name)
        feats = x.features
        t, n, d = feats.shape
        device = feats.device
        work = feats.float()

        # normalised first, then the cosine, as the reference does: a one-ulp difference can sit exactly on tau
        unit = F.normalize(work, dim=-1)
        sim = F.cosine_similarity(unit[:-1], unit[1:], dim=-1) if t > 1 else work.new_zeros((0, n))
        raw_static = sim > self.tau
        windows, total_reduced = select_static_windows(raw_static, self.max_window_size)
        total = t * n
        r_adj = (
            min(self.retention / ((total - total_reduced) / total), 1.0)
            if self.budget_correction
            else self.retention
        )
        info: dict = {"windows": windows, "total_reduced": total_reduced, "retain_ratio_adjusted": r_adj}
        if self.sink is None and self.d_split > 0:
            generalise(
                info,
                "holitom_baseline_d_split",
                f"d_split={self.d_split} without SToP: round(keep * (1 - d_split)) top-attention tokens are copied "
                "and the rest of keep are density-peak centres of the frame's other dynamic tokens",
            )

        score, frame_sink = rank_with_sink(x.attention, self.sink, x.attention_patches)
        if frame_sink is not None:
            # the pair (t, t+1) uses frame t's row of the sink score
            static_pairs = self.sink.sttp(sim, frame_sink[:-1]) > self.sttp_threshold
            info["sink_score"] = frame_sink[0]
        else:
            static_pairs = raw_static

        out_embeds, out_index, out_kind = [], [], []
        assignment = torch.full((t, n), -1, dtype=torch.long, device=device)
        rows = 0
        static_counts = []
        for start, end in windows:
            length = end - start + 1
            if length > 1:
                static = static_pairs[start:end].all(dim=0)
            else:
                static = torch.zeros(n, dtype=torch.bool, device=device)
            order = split_by_mask(static[None])[0]
            n_static = int(static.sum())
            n_dyn = n - n_static
            dyn_pos, static_pos = order[:n_dyn], order[n_dyn:]
            static_counts.append(n_static)

            keep = min(math.ceil(n_dyn * r_adj), n_dyn)
            dominant = min(round(keep * (1 - float(self.d_split))), keep)
            # The SToP code keeps only the dominant part of the dynamic budget: no contextual tokens.
            contextual = 0 if self.sink is not None else keep - dominant
            per_frame = dominant + contextual
            clusters = min(round(n_static * r_adj), n_static)
            if clusters == 0 and per_frame == 0:  # never let a window vanish entirely
                if n_static > 0:
                    clusters = 1
                else:  # SToP with d_split > 0 can round the dominant part to 0 (the reference emits nothing)
                    dominant = per_frame = min(1, n_dyn)

            # -- static tokens: window means, clustered
            if clusters > 0:
                static_feats = work[start : end + 1][:, static_pos].mean(dim=0)  # (S, D)
                penalty = None
                if frame_sink is not None:  # the window's first frame's row, as the reference does
                    penalty = self.static_cluster_sink_penalty * frame_sink[start, static_pos][None]
                centres, merged, cluster = self._cluster(static_feats[None], clusters, penalty)
                out_embeds.append(merged[0].to(feats.dtype))
                out_index.append(start * n + static_pos[centres[0]])
                out_kind.append(torch.full((clusters,), KIND_MERGED, dtype=torch.long, device=device))
                assignment[start : end + 1, static_pos] = rows + cluster[0]
                rows += clusters

            # -- dynamic tokens, per frame of the window
            if per_frame > 0:
                frame_ids = torch.arange(start, end + 1, device=device)
                dyn_score = score[start : end + 1][:, dyn_pos]  # (L, M)
                top = torch.sort(topk_lowest_index(dyn_score, dominant), dim=-1).values  # (L, dominant)
                kept_pos = dyn_pos[top]
                kept_flat = frame_ids[:, None] * n + kept_pos
                frame_rows = rows + torch.arange(length, device=device)[:, None] * per_frame
                frame_embeds = feats[frame_ids[:, None], kept_pos]  # (L, dominant, D) bit-exact copies
                frame_index, frame_kind = kept_flat, torch.full_like(kept_flat, KIND_COPY)
                assignment[frame_ids[:, None], kept_pos] = frame_rows + torch.arange(dominant, device=device)
                if contextual > 0:
                    rest_local = split_by_mask(selection_mask(n_dyn, top))[:, : n_dyn - dominant]  # (L, R)
                    rest_pos = dyn_pos[rest_local]
                    rest_feats = work[frame_ids[:, None], rest_pos]
                    centres, merged, cluster = self._cluster(rest_feats, contextual, None)
                    centre_pos = torch.gather(rest_pos, 1, centres)
                    frame_embeds = torch.cat([frame_embeds, merged.to(feats.dtype)], dim=1)
                    frame_index = torch.cat([frame_index, frame_ids[:, None] * n + centre_pos], dim=1)
                    frame_kind = torch.cat([frame_kind, torch.full_like(centre_pos, KIND_MERGED)], dim=1)
                    assignment[frame_ids[:, None], rest_pos] = frame_rows + dominant + cluster
                out_embeds.append(frame_embeds.reshape(-1, d))
                out_index.append(frame_index.reshape(-1))
                out_kind.append(frame_kind.reshape(-1))
                rows += length * per_frame

        info["static_tokens_per_window"] = static_counts
        info["assignment"] = assignment.reshape(-1)
        if not out_index:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return PruneResult(embeds=feats.new_zeros((0, d)), index=empty, kind=empty.clone(), info=info)
        return PruneResult(
            embeds=torch.cat(out_embeds), index=torch.cat(out_index), kind=torch.cat(out_kind), info=info
        )


# SToP default weights (mu_s, mu_t) from the SToP reference code (STOP_MU_DEFAULTS).
