"""FastVID (LLaVA-OneVision "parallel" implementation): DySeg + ATS + density-based token merging (DTM)."""

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
from .density import (
    EPS,
    anchor_merge,
    cosine_similarity_matrix,
    density_peak_scores,
    selection_mask,
    split_by_mask,
    take_rows,
)


@register_pruner
@dataclass
class FastVIDPruner(Pruner):
    """FastVID over the whole video.

    1. Budgets per frame: R = floor(N * r), Ns = R - floor(R * d) salient tokens, Nc = R - Ns anchors on average.
    2. DySeg: cut after frame t for the c-1 smallest consecutive global-feature cosines and for every cosine < tau.
    3. A segment of L frames gives floor(Nc * L / ceil(L / p)) anchors to its last frame and every p-th frame
       before it.
    4. ATS: each frame keeps its Ns top-score tokens unchanged (score = attention, or STSP with a sink).
    5. Density-peak score (delta * rho, k neighbours) of each frame's remaining tokens; an anchor frame takes its
       top-A as anchors. The path follows the reference's rule, the anchor count (not the segment length): a frame
       with A = Nc anchors clusters its own remaining tokens (single-frame path; always so for p = 1); a frame
       with A > Nc clusters every remaining token of its segment (multi-frame path). Each token joins the anchor
       with the highest cosine; each anchor becomes w * anchor + (1 - w) * mean(members), w = max(1/(n+1), beta).
    6. Output: salient tokens and anchors sorted by flat index t * N + n.

    SToP (sink set): ATS ranks by `attention - mu_s * s[t]` (each frame its own row of the sink score); when
    mu_s != 0 the density score is lowered by `anchor_sink_penalty * s[t]` once, and once more on the multi-frame
    path, as the SToP code does.

    Where the reference crashes (recorded in info["generalisations"], warned once): c_eff = min(c, T) for T < c
    (T = 1 is one segment), and Nc = 0 (d = 0) keeps the salient tokens only. Robustness:
    R is at least 1; anchors per frame are capped at the frame's remaining tokens; zero-norm features are
    normalised with an epsilon (no NaN).
    """

    name: ClassVar[str] = "fastvid"
    sink_weights: ClassVar[tuple[float, float]] = (0.02, 0.0)  # the SToP reference code's defaults
    needs: ClassVar[tuple[str, ...]] = ("attention", "global_features")

    c: int = param(8, int, 1)
    tau: float = param(0.9, float, 0, 1)
    d: float = param(0.4, float, 0, 1)
    p: int = param(4, int, 1)
    beta: float = param(0.6, float, 0, 1)
    k: int = param(4, int, 1)
    anchor_sink_penalty: float = param(0.3, float, 0)

    def __post_init__(self) -> None:
        super().__post_init__()
        for field_name in ("c", "p", "k"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"fastvid {field_name}={value!r} must be a positive integer")
        if not 0 <= float(self.d) <= 1:
            raise ValueError(f"fastvid d={self.d!r} must be in [0, 1]")
        if not 0 <= float(self.beta) <= 1:
            raise ValueError(f"fastvid beta={self.beta!r} must be in [0, 1]")

    def budgets(self, n: int) -> tuple[int, int, int]:
        """(R, Ns, Nc) per frame."""
        retain = max(1, min(n, int(n * self.retention)))
        salient = retain - int(retain * self.d)
        return retain, salient, retain - salient

    def segments(self, global_features: torch.Tensor) -> list[tuple[int, int]]:
        """DySeg: [(start, end)] inclusive, covering all frames."""
        t = global_features.shape[0]
        if t == 1:
            return [(0, 0)]
        g = F.normalize(global_features.float(), dim=-1, eps=EPS)
        sim = (g[:-1] * g[1:]).sum(dim=-1)
        cut = sim < self.tau
        smallest = torch.sort(sim, stable=True).indices[: min(self.c, t) - 1]
        cut[smallest] = True
        ends = torch.nonzero(cut).squeeze(-1).tolist() + [t - 1]
        starts = [0] + [e + 1 for e in ends[:-1]]
        return list(zip(starts, ends))

    def anchor_counts(self, segments: list[tuple[int, int]], context: int) -> list[int]:
        """Anchors per frame: floor(Nc * L / ceil(L / p)) on a segment's last frame and every p-th one before it."""
        counts = [0] * (segments[-1][1] + 1)
        for start, end in segments:
            length = end - start + 1
            for f in range(end, start - 1, -self.p):
                counts[f] = (context * length) // math.ceil(length / self.p)
        return counts

    def prune(self, x: PruneInput) -> PruneResult:
        x.require(*self.needs, method=self.name)
        feats = x.features
        t, n, d = feats.shape
        device = feats.device
        retain, salient, context = self.budgets(n)
        rest = n - salient

        info: dict = {"frame_retain_num": retain, "salient_num": salient, "context_num": context}
        score, frame_sink = rank_with_sink(x.attention, self.sink, x.attention_patches)
        if frame_sink is not None:
            info["sink_score"] = frame_sink[0]
        penalise = frame_sink is not None and self.sink.mu_s != 0

        segments = self.segments(x.global_features)
        info["segments"] = segments
        if t < self.c:  # the reference asks top-k for c - 1 of T - 1 similarities (llava_arch.py:515)
            generalise(
                info,
                "fastvid_fewer_frames_than_c",
                f"T={t} frames < c={self.c}: DySeg uses c = min(c, T), every frame its own segment",
            )
        if context == 0:
            generalise(
                info,
                "fastvid_no_anchors",
                f"d={self.d} leaves no anchor budget (Nc = 0 of R = {retain} tokens per frame); each frame keeps its "
                f"{salient} salient tokens only",
            )
        counts = self.anchor_counts(segments, context)

        # ATS: salient tokens per frame; the others are the frame's "remaining" tokens (increasing position).
        order = split_by_mask(selection_mask(n, topk_lowest_index(score, salient)))
        rem_pos, sal_pos = order[:, :rest], order[:, rest:]
        frame_base = torch.arange(t, device=device)[:, None] * n
        out_flat = [(frame_base + sal_pos).reshape(-1)]
        out_embeds = [feats.reshape(t * n, d)[out_flat[0]]]
        out_kind = [torch.full_like(out_flat[0], KIND_COPY)]
        # (source flat index, id of the output token it feeds) pairs for the assignment map
        feed_src, feed_dst = [out_flat[0]], [torch.arange(out_flat[0].numel(), device=device)]
        next_id = out_flat[0].numel()

        anchors_per_frame = [0] * t
        if context > 0 and rest > 0:
            rem_feats = take_rows(feats, rem_pos).float()  # (T, Mr, D)
            density = density_peak_scores(rem_feats, self.k)  # (T, Mr)
            rem_sink = take_rows(frame_sink, rem_pos) if penalise else None
            if penalise:
                density = density - self.anchor_sink_penalty * rem_sink

            # The reference picks the path by the anchor count, not by the segment length: a frame with exactly
            # Nc anchors clusters its own tokens (single-frame path); a frame with more clusters its whole segment
            # (multi-frame path, sink penalty applied once more). With p = 1 every frame takes the first path.
            groups_of_work = []  # (pool frames (G, L), anchor frames (G, nA), anchors per anchor frame, multi)
            single = [f for f in range(t) if counts[f] == context]
            if single:
                frames = torch.tensor(single, device=device)[:, None]
                groups_of_work.append((frames, frames, context, False))
            by_length: dict[int, list[int]] = {}
            for start, end in segments:
                if counts[end] > context:
                    by_length.setdefault(end - start + 1, []).append(start)
            for length, starts in by_length.items():
                starts_t = torch.tensor(starts, device=device)
                frames = starts_t[:, None] + torch.arange(length, device=device)  # (G, L)
                offsets = torch.arange(length - 1, -1, -self.p, device=device)
                anchor_frames = starts_t[:, None] + offsets  # (G, nA), last frame first
                groups_of_work.append(
                    (frames, anchor_frames, min(counts[starts[0] + length - 1], rest), True)
                )

            for frames, anchor_frames, per_anchor, multi in groups_of_work:
                for f in anchor_frames.reshape(-1).tolist():
                    anchors_per_frame[f] = per_anchor
                groups, n_a = anchor_frames.shape
                length = frames.shape[1]

                frame_score = density[anchor_frames]  # (G, nA, Mr)
                if penalise and multi:
                    frame_score = frame_score - self.anchor_sink_penalty * rem_sink[anchor_frames]
                local = topk_lowest_index(frame_score, per_anchor)  # (G, nA, A), descending score
                anchor_feats = rem_feats[anchor_frames[..., None], local].reshape(groups, n_a * per_anchor, d)
                anchor_flat = (
                    anchor_frames[..., None] * n + rem_pos[anchor_frames[..., None], local]
                ).reshape(groups, n_a * per_anchor)

                # every remaining token of the pool joins, per anchor frame, its highest-cosine anchor
                pool = rem_feats[frames].reshape(groups, length * rest, d)
                pool_flat = (frames[..., None] * n + rem_pos[frames]).reshape(groups, length * rest)
                cos = cosine_similarity_matrix(pool, anchor_feats).view(
                    groups, length * rest, n_a, per_anchor
                )
                assign = cos.argmax(dim=-1) + per_anchor * torch.arange(n_a, device=device)  # (G, P, nA)
                hot = torch.zeros_like(cos).view(groups, length * rest, n_a * per_anchor)
                hot.scatter_(2, assign, 1.0)
                sums = torch.matmul(hot.transpose(1, 2), pool)  # (G, nA*A, D)
                members = hot.sum(dim=1)
                weight = (1.0 / (members + 1.0)).clamp_min(self.beta)
                merged = anchor_merge(anchor_feats, sums, members, weight)

                ids = next_id + torch.arange(groups * n_a * per_anchor, device=device).view(
                    groups, n_a * per_anchor
                )
                next_id += ids.numel()
                out_flat.append(anchor_flat.reshape(-1))
                out_embeds.append(merged.reshape(-1, d).to(feats.dtype))
                out_kind.append(torch.full_like(out_flat[-1], KIND_MERGED))
                feed_src.append(pool_flat.reshape(-1))
                feed_dst.append(torch.gather(ids, 1, assign[..., 0]).reshape(-1))
        info["anchors_per_frame"] = anchors_per_frame

        flat = torch.cat(out_flat)
        order_out = torch.sort(flat, stable=True).indices
        row_of_id = torch.empty_like(order_out)
        row_of_id[order_out] = torch.arange(order_out.numel(), device=device)
        assignment = torch.full((t * n,), -1, dtype=torch.long, device=device)
        assignment[torch.cat(feed_src)] = row_of_id[torch.cat(feed_dst)]
        info["assignment"] = assignment
        return PruneResult(
            embeds=torch.cat(out_embeds)[order_out],
            index=flat[order_out],
            kind=torch.cat(out_kind)[order_out],
            info=info,
        )


# SToP default weights (mu_s, mu_t) from the SToP reference code (STOP_MU_DEFAULTS).
