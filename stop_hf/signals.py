"""What pruners need from a vision encoder, computed from tensors a hook sees. No transformers imports here.

The saliency attention is recomputed for ONE layer from its queries and keys, in chunks of frames, so it works
whatever attention implementation the tower runs (sdpa, eager, flash) and memory stays bounded.
"""

from __future__ import annotations

import torch


def attention_received(
    queries: torch.Tensor, keys: torch.Tensor, scale: float, chunk_size: int = 8
) -> torch.Tensor:
    """Mean attention each key receives, averaged over heads and queries.

    queries, keys: (B, H, N, dh) for B independent sequences (frames) -> (B, N) float32. Each softmax row sums
    to 1, so the values average exactly 1/N.
    """
    out = []
    for start in range(0, queries.shape[0], chunk_size):
        q = queries[start : start + chunk_size].float()
        k = keys[start : start + chunk_size].float()
        probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale, dim=-1)  # (b, H, N, N)
        out.append(probs.mean(dim=(1, 2)))
    return torch.cat(out, dim=0)


def head_mean_keys(keys: torch.Tensor) -> torch.Tensor:
    """(B, H, N, dh) -> (B, N, dh) keys averaged over heads (VisionZip's merge metric)."""
    return keys.float().mean(dim=1)


def average_merge_units(values: torch.Tensor, unit: int) -> torch.Tensor:
    """(..., N * unit, C) -> (..., N, C): mean over consecutive groups of `unit` rows."""
    shape = values.shape
    return values.reshape(*shape[:-2], shape[-2] // unit, unit, shape[-1]).mean(dim=-2)
