"""What pruners need from a vision encoder, computed from tensors a hook sees. No transformers imports here.

The saliency attention is recomputed for ONE layer from its queries and keys, in chunks of frames, so it works
whatever attention implementation the tower runs (sdpa, eager, flash) and memory stays bounded.
"""

from __future__ import annotations

import torch


def attention_received(
    queries: torch.Tensor,
    keys: torch.Tensor,
    scale: float,
    chunk_size: int = 8,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Mean attention each key receives, averaged over heads and queries.

    queries, keys: (B, H, N, dh) for B independent sequences (frames) -> (B, N) float32, computed in `dtype`
    (`signal_dtype`). Each softmax row sums to 1, so the values average exactly 1/N.
    """
    heads, length = queries.shape[1], queries.shape[2]
    out = []
    for start in range(0, queries.shape[0], chunk_size):
        q = queries[start : start + chunk_size].to(dtype) * scale
        k = keys[start : start + chunk_size].to(dtype)
        # One (b, H, N, N) buffer, exponentiated in place; the row normalisers are folded into a matrix-vector
        # product instead of materialising the probabilities (2x faster on CPU than softmax + mean).
        weights = torch.matmul(q, k.transpose(-1, -2))
        weights.sub_(weights.amax(dim=-1, keepdim=True)).exp_()
        inverse_row_sums = weights.sum(dim=-1).reciprocal_().unsqueeze(-2)  # (b, H, 1, N)
        received = torch.matmul(inverse_row_sums, weights).squeeze(-2)  # (b, H, N)
        out.append(received.sum(dim=1).float() / (heads * length))
    return torch.cat(out, dim=0)


def signal_dtype(setting: str, model_dtype: torch.dtype) -> torch.dtype:
    """The dtype signals are computed in: `stop_config.signal_dtype` 'float32', or 'model' (the model's dtype)."""
    if setting == "model":
        return model_dtype
    if setting == "float32":
        return torch.float32
    raise ValueError(f"stop_config.signal_dtype={setting!r} is not allowed; allowed: ['float32', 'model']")


def head_mean_keys(keys: torch.Tensor) -> torch.Tensor:
    """(B, H, N, dh) -> (B, N, dh) keys averaged over heads (VisionZip's merge metric)."""
    return keys.float().mean(dim=1)


def average_merge_units(values: torch.Tensor, unit: int) -> torch.Tensor:
    """(..., N * unit, C) -> (..., N, C): mean over consecutive groups of `unit` rows."""
    shape = values.shape
    return values.reshape(*shape[:-2], shape[-2] // unit, unit, shape[-1]).mean(dim=-2)


def segment_attention_received(
    queries: torch.Tensor,
    keys: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float,
    chunk_size: int = 8,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Mean attention each key receives inside its own segment of a packed sequence.

    queries, keys: (S, H, dh), the concatenation of independent segments [cu_seqlens[i], cu_seqlens[i+1]) that each
    attend only within themselves (Qwen2.5-VL's temporal patches or windows) -> (S,) float32. Consecutive segments of
    equal length are batched, `chunk_size` segments at a time.
    """
    bounds = [int(b) for b in cu_seqlens.tolist()]
    heads, head_dim = queries.shape[1:]
    out, i, segments = [], 0, len(bounds) - 1
    while i < segments:
        n = bounds[i + 1] - bounds[i]
        j = i + 1
        while j < segments and bounds[j + 1] - bounds[j] == n:
            j += 1
        if n > 0:
            start, end, count = bounds[i], bounds[j], j - i
            q = queries[start:end].reshape(count, n, heads, head_dim).transpose(1, 2)
            k = keys[start:end].reshape(count, n, heads, head_dim).transpose(1, 2)
            out.append(attention_received(q, k, scale, chunk_size, dtype).reshape(-1))
        i = j
    return torch.cat(out) if out else queries.new_zeros(0, dtype=torch.float32)


def unpermute_merge_units(values: torch.Tensor, window_index: torch.Tensor, unit: int) -> torch.Tensor:
    """Window-ordered patch values -> one mean per merge unit, in natural (raster) unit order.

    values: (U * unit, ...) rows in window order, where each run of `unit` consecutive rows is one merge unit and
    `window_index[i]` is the natural index of the i-th unit (Qwen2.5-VL's window permutation) -> (U, ...).
    """
    merged = values.reshape(values.shape[0] // unit, unit, *values.shape[1:]).mean(dim=1)
    return merged[torch.argsort(window_index.to(values.device))]


def block_mean_2x2(values: torch.Tensor, side: int) -> torch.Tensor:
    """(T, side*side, ...) patch values in raster order -> (T, (side/2)^2, ...): the mean over each 2x2 block, in the
    order InternVL's pixel shuffle emits its tokens (token (i, j) fuses patch rows 2i, 2i+1 and columns 2j, 2j+1;
    transformers `InternVLModel.pixel_shuffle`)."""
    frames, rest = values.shape[0], values.shape[2:]
    half = side // 2
    blocks = values.reshape(frames, half, 2, half, 2, *rest)
    return blocks.mean(dim=(2, 4)).reshape(frames, half * half, *rest)
