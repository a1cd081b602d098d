"""FlashVID, vision-side part (LLaVA-OneVision): DySeg + attention-and-diversity selection (ADTS) + tree merge (TSTM)."""

from __future__ import annotations

import math
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
from .density import EPS, masked_dpc_knn_clusters, split_by_mask


@register_pruner
@dataclass
class FlashVIDPruner(Pruner):
    """FlashVID over the whole video, the part that runs before the LLM.

    1. Budgets per frame (Python float64): B = ceil(N * r * expansion) (1.25x the nominal budget on purpose: the
       original brings it back down inside the LLM, the SToP code does not), A = ceil(B * alpha) ADTS tokens,
       Q = B - A TSTM tokens.
    2. DySeg: cut after frame t for every cosine of consecutive L2-normalised frame-mean features below
       `segment_threshold`; with fewer than `min_segment_num` segments, the smallest remaining cosines (the threshold
       cuts count as 1.0) add cuts, min(min_segment_num - segments, T - 1) of them. Cuts are sorted with duplicates
       kept, so a zero-length segment (no tokens) can appear.
    3. ADTS per frame (alpha = 0: none): dist[i, j] = (1 - cos(x_i, x_j)) * w1[j] * w2[j] with
       w1 = attention * attention_scale and w2[j] = mean over the segment's frames c of <x_j, P_c> (P_c = frame c's
       mean feature). First pick: argmax over j of the second-smallest entry of column j; then A - 1 greedy picks of
       argmax_j min_{p picked} dist[p, j]. A token can be picked again, as in the reference. Picks are copied (kind 0).
    4. TSTM (only when Q > 0). Single-frame segment: the roots are all N tokens (ADTS picks included). Segment of
       L >= 2 frames: token i of frame t >= 1 merges into parent argmax_j cos(x[t, i], x[t-1, j]) (ADTS rows and
       columns excluded) when that cosine > `temporal_threshold` (a soft threshold, the (L*N - B*L)-th largest
       cosine, takes over when fewer than B*L tokens stay unmerged); a root's value is (own + all descendants) /
       (1 + direct children), the reference's divisor, summed in its order. Roots are the unmerged non-ADTS tokens.
    5. rho = Q * L / roots of the segment; each frame's R roots give ceil(R * rho) density-peak clusters
       (k = min(C, dpc_k), plain means, index of the centre, distances from torch.cdist) when rho < 1, else all
       roots; all kind 1.
    6. Output: ADTS copies and TSTM tokens sorted by flat index t * N + n; an index can occur twice or more (a
       repeated pick, an ADTS pick that is also a single-frame cluster centre), copies first.

    SToP (sink set): w1 = (attention - mu_s' * s) * attention_scale with s computed per segment from that segment's
    frames, each frame its own row of minmax(mean.repeat(L, 1) ** gamma), as the SToP code does; mu_s' = mu_s * 729
    / attention_patches (see `Sink`). Nothing else changes.

    Every step multiplies the shapes the reference multiplies, with the same torch ops (cosines per segment,
    torch.cdist per frame, w2 per segment): which token a repeated pick repeats and how a distance near-tie resolves
    depend on the last bit of those products, so the output equals the reference's under the same BLAS kernel
    (rlqja1107/SToP @3bf998c pruning/flashvid/{utils,token_selection}.py; Fanziyang-v/FlashVID @1d37422 flashvid/).

    Choices of ours:
    - `distinct_picks` (default False, the reference): True never picks a token twice. The reference does not
      exclude picked tokens; once fewer than A tokens of a frame have a positive weight product w1 * w2 (SToP's
      absolute offset with weak sinks, or tokens opposed to the segment mean) it repeats picks, which token being
      decided by float rounding. Its measured effect is in docs/configuration.md#flashvid.
    - expansion * retention > 1 (more tokens per frame than a frame has) is refused: the reference fails there.
    - The reference edits the pooled features in place; inputs are never modified here.
    - Generalisations where the reference crashes (recorded in info["generalisations"], warned once):
      temporal_threshold >= 1 with Q > 0 (no temporal merge; the frames are clustered spatially), and B = N in a
      multi-frame segment (the soft threshold has nothing to cut).
    - Robustness: N = 1 takes its only token; zero-norm features normalise with an epsilon (no NaN).

    FlashVID's in-LLM stage (FastV-style pruning at LLM layer `pruning_layer` from the last prompt token's attention)
    is not implemented: the SToP code never calls it. Setting `pruning_layer` or `llm_retention_ratio` raises.
    """

    name: ClassVar[str] = "flashvid"
    sink_weights: ClassVar[tuple[float, float]] = (0.02, 0.0)  # the SToP reference code's defaults
    needs: ClassVar[tuple[str, ...]] = ("attention",)

    segment_threshold: float = param(0.9, float, -1, 1)
    min_segment_num: int = param(8, int, 1)
    complementary_segment: bool = param(True, bool)
    alpha: float = param(0.7, float, 0, 1)
    temporal_threshold: float = param(0.8, float, -1, 1)
    expansion: float = param(1.25, float, 0, low_open=True)
    dpc_k: int = param(7, int, 1)
    attention_scale: float = param(1e6, float, 0, low_open=True)
    distinct_picks: bool = param(False, bool)
    pruning_layer: int | None = param(None, int, optional=True)
    llm_retention_ratio: float | None = param(None, float, optional=True)

    def __post_init__(self) -> None:
        for field_name in ("pruning_layer", "llm_retention_ratio"):
            value = getattr(self, field_name)
            if value is not None:
                raise ValueError(
                    f"flashvid {field_name}={value!r} asks for FlashVID's in-LLM stage (FastV-style pruning inside "
                    "the LLM), which stop_hf does not implement: the SToP reference code never runs it, so its "
                    "FlashVID rows keep the 1.25x vision-side budget through every layer. Leave it unset (null)"
                )
        super().__post_init__()
        if self.retention < 1.0:  # retention 1 is the identity: the hooks never run the pruner
            self._check_budget()

    def _check_budget(self) -> None:
        """expansion * retention > 1 asks for more tokens per frame than a frame has; the reference then fails (a
        negative top-k in its tree merge, `utils.py:351` of rlqja1107/SToP @3bf998c), so it is refused."""
        if float(self.expansion) * float(self.retention) > 1.0 + 1e-9:
            raise ValueError(
                f"flashvid expansion={self.expansion!r} x retention={self.retention!r} = "
                f"{float(self.expansion) * float(self.retention):g} > 1 asks for more tokens per frame than a "
                "frame has (B = ceil(N * retention * expansion) > N), where the reference code fails; lower "
                f"expansion to at most {1.0 / float(self.retention):g} or retention to at most "
                f"{1.0 / float(self.expansion):g}"
            )

    # ------------------------------------------------------------------ budgets and segments
    def budgets(self, n: int) -> tuple[int, int, int]:
        """(B, A, Q) per frame: total, ADTS and TSTM tokens (rlqja1107/SToP @3bf998c pruning/flashvid/utils.py:80-82).
        alpha = 0 gives A = 0: no attention-and-diversity picks at all (`utils.py:139`)."""
        total = max(1, min(n, math.ceil(n * self.retention * self.expansion)))
        adts = min(total, math.ceil(total * self.alpha))
        return total, adts, total - adts

    def segment_lengths(self, frame_means: torch.Tensor) -> list[int]:
        """DySeg on (T, D) frame-mean features: segment lengths in time order, zero-length segments included."""
        t = frame_means.shape[0]
        if t == 1:
            return [1]
        g = F.normalize(frame_means.float(), dim=-1, eps=EPS)
        sim = (g[:-1] * g[1:]).sum(dim=-1)
        below = sim < self.segment_threshold
        cuts = torch.nonzero(below).squeeze(-1)
        if self.complementary_segment and cuts.numel() + 1 < self.min_segment_num:
            extra = min(self.min_segment_num - (cuts.numel() + 1), t - 1)
            smallest = torch.sort(sim.masked_fill(below, 1.0), stable=True).indices[:extra]
            cuts = torch.cat([cuts, smallest])
        bounds = [-1] + torch.sort(cuts).values.tolist() + [t - 1]
        return [b - a for a, b in zip(bounds, bounds[1:])]

    # ------------------------------------------------------------------ ADTS
    def _adts(
        self,
        unit: torch.Tensor,
        w1: torch.Tensor,
        w2: torch.Tensor,
        picks: int,
        segments: list[tuple[int, int]],
    ) -> torch.Tensor:
        """Greedy attention-and-diversity picks per frame. unit (T, N, D) L2-normalised features, w1 and w2 (T, N)
        -> (T, A) positions, ascending; a position can repeat (the reference never excludes a pick,
        rlqja1107/SToP @3bf998c pruning/flashvid/token_selection.py:124-132) unless `distinct_picks`."""
        t, n, _ = unit.shape
        if picks <= 0:  # alpha = 0: the reference skips the selection (`utils.py:139`)
            return torch.zeros((t, 0), dtype=torch.long, device=unit.device)
        # one bmm per segment, the shapes the reference multiplies: the BLAS splits its work by shape, and the
        # diagonal's last bit decides which token a repeated pick repeats
        cos = torch.cat(
            [torch.bmm(unit[s : s + size], unit[s : s + size].transpose(-1, -2)) for s, size in segments]
        )
        dist = (1.0 - cos) * w1[:, None, :] * w2[:, None, :]  # column j scaled by its own weights
        frame_rows = torch.arange(t, device=unit.device) * n
        rows = dist.view(t * n, n)  # row t * N + p: dist[t, p, :]
        # the smallest entry of a column is the token itself, so the first pick uses the second-smallest
        first_score = torch.topk(dist, 2, dim=1, largest=False).values[:, 1] if n >= 2 else dist[:, 0]
        chosen = [first_score.argmax(dim=-1)]
        running = rows.index_select(0, frame_rows + chosen[0])
        picked = torch.zeros(t * n, dtype=torch.bool, device=unit.device)
        for _ in range(picks - 1):
            picked[frame_rows + chosen[-1]] = True
            score = running.masked_fill(picked.view(t, n), -math.inf) if self.distinct_picks else running
            chosen.append(score.argmax(dim=-1))
            running = torch.minimum(running, rows.index_select(0, frame_rows + chosen[-1]))
        return torch.sort(torch.stack(chosen, dim=1), dim=-1).values

    # ------------------------------------------------------------------ prune
    def prune(self, x: PruneInput) -> PruneResult:
        x.require(*self.needs, method=self.name)
        self._check_budget()
        feats = x.features
        t, n, d = feats.shape
        device = feats.device
        work = feats.float()
        total, adts_num, tstm_num = self.budgets(n)

        frame_means = work.mean(dim=1)
        lengths = self.segment_lengths(frame_means)
        starts = torch.tensor([0] + lengths).cumsum(0).tolist()
        segments = [(start, size) for start, size in zip(starts, lengths) if size > 0]
        seg_of_frame = torch.repeat_interleave(
            torch.arange(len(segments), device=device),
            torch.tensor([size for _, size in segments], device=device),
        )
        seg_len = torch.tensor([size for _, size in segments], device=device, dtype=torch.float32)
        info: dict = {
            "token_budget": total,
            "num_adts_tokens": adts_num,
            "num_tstm_tokens": tstm_num,
            "segment_sizes": lengths,
            "segments": [(start, start + size - 1) for start, size in segments],
        }

        # ADTS weights: w1 from attention (per-segment sink score with SToP), w2 from the segment's frame means.
        attention = x.attention.float()
        if self.sink is not None:
            # each frame its own row of minmax(mean_seg(attention).repeat(L, 1) ** gamma), as the reference
            # (rlqja1107/SToP @3bf998c pruning/flashvid/token_selection.py:102-103)
            per_frame_sink = torch.cat(
                [self.sink.frame_scores(attention[start : start + size]) for start, size in segments]
            )
            w1 = self.sink.stsp(attention, per_frame_sink, x.attention_patches) * self.attention_scale
            info["sink_score_per_frame"] = per_frame_sink
            info["sink_score"] = self.sink.score(attention)  # whole-video score, for display only
        else:
            w1 = attention * self.attention_scale
        # w2[t, n] = mean over the segment's frames c of x[t, n] . P_c (P_c = frame c's mean), in the reference's
        # order: one einsum per segment, then the mean (token_selection.py:101,111); x . mean(P) rounds differently
        w2 = torch.cat(
            [
                torch.einsum("bnd,cd->bcn", seg, seg.mean(1)).mean(1)
                for seg in (work[start : start + size] for start, size in segments)
            ]
        )
        unit = F.normalize(work, dim=-1, eps=EPS)
        adts_pos = self._adts(unit, w1, w2, adts_num, segments)  # (T, A)
        adts = torch.zeros((t, n), dtype=torch.bool, device=device)
        adts.scatter_(1, adts_pos, True)

        # TSTM tree merge: parents in the previous frame, ADTS tokens excluded as children and as parents.
        best = torch.full((t, n), -1.0, device=device)
        parent = torch.arange(t * n, device=device).view(t, n)
        # only frames after the first of a multi-frame segment have parents: [c, i, j] = cos(x[t_c, i], x[t_c - 1, j])
        inner = [f for start, size in segments for f in range(start + 1, start + size)]
        if inner:
            child = torch.tensor(inner, device=device)
            # per segment, as the reference's einsum (utils.py:335)
            cos = torch.cat(
                [
                    torch.einsum("bnd,bmd->bnm", unit[s + 1 : s + size], unit[s : s + size - 1])
                    for s, size in segments
                    if size > 1
                ]
            )
            cos = cos.masked_fill(adts[child, :, None] | adts[child - 1, None, :], -1.0)
            best[child], parent_prev = cos.max(dim=-1)
            parent[child] = parent_prev + (child[:, None] - 1) * n
        merged = best > self.temporal_threshold
        if self.temporal_threshold >= 1.0 and tstm_num > 0:
            generalise(
                info,
                "flashvid_no_temporal_merge",
                f"temporal_threshold={self.temporal_threshold} merges no token across frames; the frames' tokens are "
                "clustered spatially only",
            )
        soft = []
        for s, length in segments:
            if length > 1 and int((~merged[s : s + length]).sum()) < total * length:
                k = length * n - total * length
                if (
                    k <= 0
                ):  # B = N: the reference asks top-k for 0 tokens and fails; the hard threshold stands
                    generalise(
                        info,
                        "flashvid_full_budget",
                        f"the budget B = {total} is the whole frame (N = {n}), so the soft threshold has nothing to "
                        "cut; the tokens merged by temporal_threshold stay merged",
                    )
                    continue
                theta = torch.topk(best[s : s + length].reshape(-1), k).values[-1].clamp_min(-1.0 + 1e-6)
                merged[s : s + length] = best[s : s + length] > theta
                soft.append(s)
        info["tstm_soft_threshold_segments"] = soft
        flat_parent = torch.where(merged, parent, torch.arange(t * n, device=device).view(t, n)).reshape(-1)
        root = flat_parent
        for _ in range(max(1, math.ceil(math.log2(max(t, 2)))) + 1):
            root = root[root]  # pointer doubling: every token reaches the unmerged root of its chain
        merged_flat = torch.nonzero(merged.reshape(-1)).squeeze(-1)
        children = torch.zeros(t * n, device=device).index_add_(
            0, flat_parent[merged_flat], torch.ones(merged_flat.numel(), device=device)
        )
        # Tree values in the reference's float order (rlqja1107/SToP @3bf998c pruning/flashvid/utils.py:356-379): from
        # each segment's last frame back, a frame's merged tokens (own value plus all they received) are summed per
        # parent, then the sum is added to the parent. All segments advance together, one frame depth per step.
        # Only the tokens of a tree (merged tokens and their parents) are accumulated: a row per such token in `acc`.
        flat_work = work.reshape(t * n, d)
        in_tree = torch.unique(torch.cat([merged_flat, flat_parent[merged_flat]]))  # ascending
        row_of_token = torch.full((t * n,), -1, dtype=torch.long, device=device)
        row_of_token[in_tree] = torch.arange(in_tree.numel(), device=device)
        acc = flat_work.index_select(0, in_tree)
        depth = torch.cat(
            [torch.arange(size, device=device) for _, size in segments]
        )  # frame index in segment
        merged_depth = depth[merged_flat // n]
        for level in range(int(seg_len.max()) - 1, 0, -1):
            child = merged_flat[merged_depth == level]
            if child.numel() == 0:
                continue
            parents, slot = torch.unique(flat_parent[child], return_inverse=True)
            received = torch.zeros(parents.numel(), d, device=device).index_add_(
                0, slot, acc.index_select(0, row_of_token[child])
            )
            acc[row_of_token[parents]] += received

        def root_values(index: torch.Tensor) -> torch.Tensor:
            """Tree-merged value of roots `index` (G, R) -> (G, R, D): (own + all descendants) / (1 + direct
            children), the reference's divisor."""
            flat_index = index.reshape(-1)
            rows = row_of_token[flat_index]
            values = flat_work.index_select(0, flat_index)
            has_tree = rows >= 0
            if bool(has_tree.any()):
                values[has_tree] = acc.index_select(0, rows[has_tree])
            values = values / (1.0 + children[flat_index])[:, None]
            return values.view(*index.shape, d)

        single = (seg_len[seg_of_frame] == 1)[:, None]
        is_root = ~merged & (~adts | single)  # single-frame segments cluster all N tokens
        roots_per_frame = is_root.sum(dim=1)
        roots_per_seg = torch.zeros(len(segments), dtype=torch.long, device=device).index_add_(
            0, seg_of_frame, roots_per_frame
        )
        clusters_per_frame, rho_per_seg = [], []
        for (s, length), roots in zip(segments, roots_per_seg.tolist()):
            rho = tstm_num * length / roots if roots else math.inf
            rho_per_seg.append(rho)
            clusters_per_frame += [
                math.ceil(r * rho) if rho < 1 else -1 for r in roots_per_frame[s : s + length].tolist()
            ]
        info["adaptive_contextual_ratio"] = rho_per_seg

        # Output pieces: ADTS copies first, so a stable sort puts a copy before a cluster of the same index.
        frame_base = torch.arange(t, device=device)[:, None] * n
        adts_flat = (frame_base + adts_pos).reshape(-1)
        out_flat = [adts_flat]
        out_embeds = [feats.reshape(t * n, d).index_select(0, adts_flat)]  # bit-exact copies
        out_kind = [torch.full_like(adts_flat, KIND_COPY)]
        root_row = torch.full((t * n,), -1, dtype=torch.long, device=device)
        rows = adts_flat.numel()
        order = split_by_mask(~is_root)  # roots first, in increasing position
        clusters = torch.tensor(clusters_per_frame, device=device)
        clustered = torch.nonzero((clusters > 0) & (roots_per_frame > 0)).squeeze(-1)
        kept_all = torch.nonzero((clusters < 0) & (roots_per_frame > 0)).squeeze(-1)
        tokens_per_frame = torch.zeros(t, dtype=torch.long, device=device)
        # Clustered frames in a few masked batches: frames with similar root counts share a batch, padded to its
        # largest count (within 2x), so no frame pays for a full N x N distance matrix it does not need.
        size_bin = torch.ceil(torch.log2(roots_per_frame[clustered].clamp_min(1).float())).long()
        for bin_value in torch.unique(size_bin).tolist():
            frames = clustered[size_bin == bin_value]
            width = int(roots_per_frame[frames].max())
            root_flat = frames[:, None] * n + order[frames, :width]  # (G, R) roots first
            valid = torch.arange(width, device=device) < roots_per_frame[frames, None]
            values = root_values(root_flat)
            count = clusters[frames]
            # torch.cdist frame by frame, as the reference calls it (utils.py:288): its rounding decides near-ties
            dist = values.new_zeros((frames.numel(), width, width))
            for g, r in enumerate(roots_per_frame[frames].tolist()):
                dist[g, :r, :r] = torch.cdist(values[g : g + 1, :r], values[g : g + 1, :r])[0] / math.sqrt(d)
            centres, centre_valid, assign, means = masked_dpc_knn_clusters(
                values, valid, count, count.clamp_max(self.dpc_k), dist
            )
            slot_row = torch.full(centre_valid.shape, -1, dtype=torch.long, device=device)
            slot_row[centre_valid] = rows + torch.arange(int(count.sum()), device=device)
            root_row[root_flat[valid]] = slot_row.gather(1, assign.clamp_max(centres.shape[1] - 1))[valid]
            rows += int(count.sum())
            out_flat.append(torch.gather(root_flat, 1, centres)[centre_valid])
            out_embeds.append(means[centre_valid].to(feats.dtype))
            tokens_per_frame[frames] = count
        if kept_all.numel():  # rho >= 1: every root is kept as it is
            keep = torch.zeros_like(is_root)
            keep[kept_all] = is_root[kept_all]
            root_flat = torch.nonzero(keep.reshape(-1)).squeeze(-1)
            root_row[root_flat] = rows + torch.arange(root_flat.numel(), device=device)
            rows += root_flat.numel()
            out_flat.append(root_flat)
            out_embeds.append(root_values(root_flat[None])[0].to(feats.dtype))
            tokens_per_frame[kept_all] = roots_per_frame[kept_all]
        tstm_rows = rows - adts_flat.numel()
        out_kind.append(torch.full((tstm_rows,), KIND_MERGED, dtype=torch.long, device=device))
        tstm_per_frame = tokens_per_frame.tolist()
        info["tstm_tokens_per_frame"] = tstm_per_frame

        index = torch.cat(out_flat)
        order_out = torch.sort(index, stable=True).indices
        row_of = torch.empty_like(order_out)
        row_of[order_out] = torch.arange(order_out.numel(), device=device)
        assignment = root_row[root]
        assignment = torch.where(assignment >= 0, row_of[assignment.clamp_min(0)], assignment)
        assignment[adts_flat] = row_of[: adts_flat.numel()]  # a copied token maps to its copy
        info["assignment"] = assignment
        return PruneResult(
            embeds=torch.cat(out_embeds)[order_out],
            index=index[order_out],
            kind=torch.cat(out_kind)[order_out],
            info=info,
        )


# SToP default weights (mu_s, mu_t) from the SToP reference code (STOP_MU_DEFAULTS["flashvid"]).
