"""Shared tensor helpers for the density-peak pruners (FastVID, HoliTom).

- `density_peak_scores`: DPC-kNN centre-ness `delta * rho` of every token within its own batch row.
- `cosine_assign` / `nearest_assign`: hard assignment of tokens to centres.
- `group_sum` / `anchor_merge`: per-centre sums and counts, and the weighted centre/mean merge.
- `split_by_mask`: the (not selected, selected) positions of each row, both in increasing order.

Everything runs batched over the leading dimension, in float32, on the tensors' own device. The reference's
`U(0, 1) * 1e-6` density tie-break noise is deliberately absent: the output is deterministic and ties go to the
lower index.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: normalisation epsilon: constant or all-zero vectors give a zero direction instead of NaN.
EPS = 1e-12

#: frames whose (M x M) distance matrices are built at once are chunked to about this many elements.
_CHUNK_ELEMENTS = 1 << 24


def pairwise_distance(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distance / sqrt(D), as the references scale it. (B, M, D) -> (B, M, M), float32."""
    x = x.float()
    return torch.cdist(x, x) / math.sqrt(max(x.shape[-1], 1))


def _density_peak(dist: torch.Tensor, k: int) -> torch.Tensor:
    """delta * rho from a distance matrix (B, M, M) -> (B, M)."""
    m = dist.shape[-1]
    k = max(1, min(int(k), m))
    # rho: exp(-mean squared distance to the k nearest tokens, the token itself included).
    nearest = torch.topk(dist, k, dim=-1, largest=False).values
    rho = torch.exp(-(nearest**2).mean(dim=-1))
    # delta: distance to the nearest strictly denser token; the frame's largest distance when there is none.
    denser = rho[:, None, :] > rho[:, :, None]  # [b, i, j] = rho_j > rho_i
    dist_max = dist.flatten(1).max(dim=-1).values[:, None, None]
    delta = torch.where(denser, dist, dist_max).min(dim=-1).values
    return delta * rho


def density_peak_scores(x: torch.Tensor, k: int, return_dist: bool = False):
    """DPC-kNN centre score of every token within its batch row. (B, M, D) -> (B, M) [, dist (B, M, M)].

    dist = cdist / sqrt(D); rho = exp(-mean of the k smallest squared distances, self included);
    delta = smallest distance to a token with strictly larger rho (the row's largest distance if none);
    score = delta * rho. Rows are processed in chunks so that no more than ~16M distances live at once
    (unless `return_dist` asks for all of them).
    """
    b, m = x.shape[0], x.shape[1]
    if m == 0 or b == 0:
        empty = x.new_zeros((b, m), dtype=torch.float32)
        return (empty, x.new_zeros((b, m, m), dtype=torch.float32)) if return_dist else empty
    if return_dist:
        dist = pairwise_distance(x)
        return _density_peak(dist, k), dist
    step = max(1, _CHUNK_ELEMENTS // (m * m))
    return torch.cat([_density_peak(pairwise_distance(x[i : i + step]), k) for i in range(0, b, step)])


def cosine_similarity_matrix(tokens: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Cosine between every token and every centre. (B, P, D), (B, C, D) -> (B, P, C), float32."""
    a = F.normalize(tokens.float(), dim=-1, eps=EPS)
    c = F.normalize(centres.float(), dim=-1, eps=EPS)
    return torch.matmul(a, c.transpose(-1, -2))


def cosine_assign(tokens: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index of the centre with the highest cosine, first on ties. (B, P, D), (B, C, D) -> (B, P) int64."""
    return cosine_similarity_matrix(tokens, centres).argmax(dim=-1)


def nearest_assign(dist_to_centres: torch.Tensor) -> torch.Tensor:
    """Index of the closest centre, first on ties. (B, P, C) -> (B, P) int64."""
    return dist_to_centres.argmin(dim=-1)


def group_sum(
    tokens: torch.Tensor, assign: torch.Tensor, num_groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group feature sums and member counts.

    tokens (B, P, D); assign (B, P) group ids in [0, num_groups), or (B, P, J) for tokens that join J groups at
    once (one id per group block). Returns sums (B, G, D) float32 and counts (B, G) float32.
    """
    b, p = tokens.shape[0], tokens.shape[1]
    if assign.dim() == 2:
        assign = assign[..., None]
    hot = tokens.new_zeros((b, p, num_groups), dtype=torch.float32)
    hot.scatter_(2, assign, 1.0)
    sums = torch.matmul(hot.transpose(1, 2), tokens.float())
    return sums, hot.sum(dim=1)


def anchor_merge(
    centres: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """weight * centre + (1 - weight) * mean(members); a centre with no members must get weight 1.

    centres, sums (..., G, D); counts, weight (..., G). float32 result.
    """
    mean = sums / counts.clamp_min(1.0)[..., None]
    w = weight[..., None]
    return w * centres.float() + (1.0 - w) * mean


def split_by_mask(mask: torch.Tensor) -> torch.Tensor:
    """Positions of each row ordered [False positions ascending, True positions ascending]. (B, N) -> (B, N).

    Every row must hold the same number of True values; the split point is then N - count.
    """
    return torch.sort(mask.to(torch.int8), dim=-1, stable=True).indices


def take_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of each batch item: x (B, N, ...) and index (B, K) -> (B, K, ...); x[b, index[b, k]]."""
    batch = torch.arange(x.shape[0], device=index.device).view(-1, *([1] * (index.dim() - 1)))
    return x[batch, index]


def selection_mask(n: int, index: torch.Tensor) -> torch.Tensor:
    """Boolean (B, n) mask that is True at `index` (B, k)."""
    mask = torch.zeros((index.shape[0], n), dtype=torch.bool, device=index.device)
    return mask.scatter_(1, index, True)


def gram_distance(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distance / sqrt(D) from the Gram matrix, sqrt(|x|^2 + |y|^2 - 2 x.y): the formula `torch.cdist`
    uses for more than 25 tokens, without its concatenated copies of the inputs. (B, M, D) -> (B, M, M), float32."""
    x = x.float()
    sq = (x * x).sum(dim=-1)
    d2 = torch.baddbmm(sq[:, :, None] + sq[:, None, :], x, x.transpose(1, 2), alpha=-2.0)
    return d2.clamp_min_(1e-30).sqrt_() / math.sqrt(max(x.shape[-1], 1))


def dpc_knn_clusters(
    tokens: torch.Tensor, num_centres: int, k: int, dist: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPC-kNN clustering with plain-mean cluster tokens (FlashVID, PruneVid), batched over rows.

    tokens (B, M, D), 1 <= num_centres <= M; dist (B, M, M) their distances / sqrt(D) (default: `pairwise_distance`,
    torch.cdist as the references). The centres are the `num_centres` highest `delta * rho` scores (see
    `density_peak_scores`) in decreasing score order; every token joins the centre at the smallest distance (first on
    ties) and every centre joins itself. Returns centres (B, C) local indices in score order, assign (B, M) the centre
    column of every token, and means (B, C, D) float32, the plain mean of each cluster (centre included).
    """
    b, m, _ = tokens.shape
    if dist is None:
        dist = pairwise_distance(tokens)
    score = _density_peak(dist, k)
    centres = topk_lowest_index_desc(score, num_centres)
    # (B, M): the centres' rows of the distance matrix, as the references index them
    assign = take_rows(dist, centres).argmin(dim=1)
    assign.scatter_(1, centres, torch.arange(num_centres, device=tokens.device).expand(b, num_centres))
    sums, counts = group_sum(tokens, assign, num_centres)
    return centres, assign, sums / counts[..., None]


def topk_lowest_index_desc(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest values along the last dim, in decreasing value order, ties to the lower index."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


def masked_dpc_knn_clusters(
    tokens: torch.Tensor, valid: torch.Tensor, num_centres: torch.Tensor, k: torch.Tensor, dist: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`dpc_knn_clusters` for rows of different sizes at once: row b clusters its `valid[b]` tokens into
    `num_centres[b]` clusters with `k[b]` neighbours (1 <= k[b] <= num_centres[b] <= valid tokens).

    tokens (B, M, D), valid (B, M) bool, num_centres and k (B,) int64, dist (B, M, M) distances / sqrt(D). Invalid
    tokens take no part: they are nobody's neighbour, denser token, centre or member. Returns centres (B, C) local
    indices in score order (C = max num_centres), centre_valid (B, C), assign (B, M) centre column of every valid
    token (C for invalid ones) and means (B, C, D) float32 (zero for invalid centres).
    """
    b, m, _ = tokens.shape
    device = tokens.device
    pair = valid[:, :, None] & valid[:, None, :]
    k_max = int(k.max())
    nearest = torch.topk(dist.masked_fill(~valid[:, None, :], math.inf), k_max, dim=-1, largest=False).values
    within = torch.arange(k_max, device=device) < k[:, None, None]
    rho = torch.exp(-(torch.where(within, nearest**2, 0.0).sum(dim=-1) / k[:, None]))
    denser = (rho[:, None, :] > rho[:, :, None]) & valid[:, None, :]
    dist_max = dist.masked_fill(~pair, -math.inf).flatten(1).max(dim=-1).values[:, None, None]
    delta = torch.where(denser, dist, dist_max).min(dim=-1).values
    score = (delta * rho).masked_fill(~valid, -math.inf)
    c_max = int(num_centres.max())
    centres = topk_lowest_index_desc(score, c_max)
    slots = torch.arange(c_max, device=device).expand(b, c_max)
    centre_valid = slots < num_centres[:, None]
    # dist[b, i, centre]: the centres' columns, as the reference gathers them (torch.cdist is not exactly symmetric)
    to_centres = dist.gather(2, centres[:, None, :].expand(b, m, c_max))  # (B, M, C)
    assign = to_centres.masked_fill(~centre_valid[:, None, :], math.inf).argmin(dim=-1)
    assign.scatter_(1, centres, torch.where(centre_valid, slots, assign.gather(1, centres)))
    assign = assign.masked_fill(~valid, c_max)
    # per-cluster sums by index_add: a one-hot matmul would cost B*M*C*D multiply-adds
    slot = (torch.arange(b, device=device)[:, None] * (c_max + 1) + assign).reshape(-1)
    sums = tokens.new_zeros((b * (c_max + 1), tokens.shape[-1]), dtype=torch.float32)
    sums.index_add_(0, slot, tokens.reshape(b * m, -1).float())
    counts = torch.bincount(slot, minlength=b * (c_max + 1)).view(b, c_max + 1)[:, :c_max]
    means = sums.view(b, c_max + 1, -1)[:, :c_max] / counts.clamp_min(1)[..., None]
    return centres, centre_valid, assign, means
