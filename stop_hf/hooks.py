"""The hook machinery shared by every architecture: per-instance state, the LM-input pruning pre-hook, the decode
mask translation and the guards. Architecture specifics live in an `ArchAdapter` (see `stop_hf.patches`).

The pruning happens after the video features are scattered into `inputs_embeds`, in a forward pre-hook on the inner
language model; `input_ids`, the processors and `generate`'s returned sequences stay untouched.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import StopConfig
from .pruners import PruneInput, Pruner, PruneResult


class StopUnsupportedError(RuntimeError):
    """A mode that the pruning patch cannot run correctly; raised instead of running unpruned or wrong."""


@dataclass
class VideoRecord:
    """One encoded video, as captured when the model encoded it.

    features: (num_tokens, D) the video's LLM tokens exactly as scattered into inputs_embeds (used to find it).
    frames, grid: the pruner's view: T frames of grid (h, w); the first T*h*w tokens are the grid tokens.
    trailing_tokens: tokens after the grid tokens that are always kept (LLaVA-OV's image_newline).
    attention (T, N), keys (T, N, Dk), global_features (T, Dg): the signals the pruner asked for.
    """

    features: torch.Tensor
    frames: int
    grid: tuple[int, int]
    trailing_tokens: int = 0
    attention: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    global_features: torch.Tensor | None = None
    attention_patches: int = 729
    signal_seconds: float = 0.0

    @property
    def num_tokens(self) -> int:
        return self.features.shape[0]

    @property
    def grid_tokens(self) -> int:
        return self.frames * self.grid[0] * self.grid[1]


@dataclass
class StopState:
    """Everything the hooks of ONE model instance share. Reset at every prefill."""

    config: StopConfig
    pruner: Pruner
    adapter: Any
    handles: list[Any] = field(default_factory=list)
    capturing: dict[str, Any] | None = None  # signal buffer while a video is being encoded
    videos: list[VideoRecord] = field(default_factory=list)
    video_mask: torch.Tensor | None = None  # (B, L) of the current outer forward call
    pruned: bool = False
    original_length: int = 0
    pruned_length: int = 0
    prefill_mask: torch.Tensor | None = None  # (B, L') after pruning and re-padding
    position_offset: torch.Tensor | None = (
        None  # (B,) original minus emitted position of the last prompt token
    )
    last_position: torch.Tensor | None = None  # (B,) emitted 1-D position of the last prompt token
    report: list[dict[str, Any]] = field(default_factory=list)

    @property
    def needs(self) -> tuple[str, ...]:
        return type(self.pruner).needs


class MethodHandle:
    """Removes an instance-level method wrapper, restoring the class method."""

    def __init__(self, obj: Any, name: str) -> None:
        self.obj, self.name = obj, name

    def remove(self) -> None:
        self.obj.__dict__.pop(self.name, None)


def wrap_method(obj: Any, name: str, make_wrapper: Callable[[Callable], Callable]) -> MethodHandle:
    """Shadows `obj.name` on this instance only with `make_wrapper(original_bound_method)`."""
    original = getattr(obj, name)
    wrapper = functools.wraps(original)(make_wrapper(original))
    obj.__dict__[name] = wrapper
    return MethodHandle(obj, name)


# ---------------------------------------------------------------------------------------------------- guards
def check_cache_supported(past_key_values: Any) -> None:
    if past_key_values is None:
        return
    compileable = getattr(past_key_values, "is_compileable", False)
    if callable(compileable):
        compileable = compileable()
    if compileable or type(past_key_values).__name__ in ("StaticCache", "HybridCache", "SlidingWindowCache"):
        raise StopUnsupportedError(
            f"stop_hf: video pruning does not support {type(past_key_values).__name__} "
            "(cache_implementation='static' / torch.compile): the cache is pre-sized to the unpruned prompt. "
            "Use the default dynamic cache, or load the model without stop_config."
        )


def past_length(past_key_values: Any) -> int:
    if past_key_values is None:
        return 0
    return int(past_key_values.get_seq_length())


# ---------------------------------------------------------------------------------------------------- prefill
def _gather_positions(position_ids: torch.Tensor, row: int, src: torch.Tensor) -> torch.Tensor:
    """(B, L) or (R, B, L) position ids -> this row's ids at `src`: (L',) or (R, L')."""
    return position_ids[row, src] if position_ids.dim() == 2 else position_ids[:, row, src]


def _match_videos(
    row_embeds: torch.Tensor, video_positions: torch.Tensor, videos: list[VideoRecord]
) -> list[tuple[VideoRecord, int]]:
    """Splits one row's video positions into encoded videos by content. Returns (record, start position) pairs."""
    found, cursor, total = [], 0, video_positions.numel()
    while cursor < total:
        remaining = total - cursor
        for record in videos:
            n = record.num_tokens
            if n > remaining:
                continue
            span = video_positions[cursor : cursor + n]
            if int(span[-1] - span[0]) + 1 != n:
                continue
            if torch.equal(row_embeds[span], record.features.to(row_embeds.device, row_embeds.dtype)):
                found.append((record, int(span[0])))
                cursor += n
                break
        else:
            if int(video_positions[-1]) == row_embeds.shape[0] - 1:
                # The video runs into the end of this forward's sequence: a chunk boundary cut it.
                raise StopUnsupportedError(
                    "stop_hf: a video is cut off at the end of this prefill (chunked prefill via "
                    "generate(prefill_chunk_size=...)). Pruning needs the whole prompt in one prefill: drop "
                    "prefill_chunk_size, or load the model without stop_config."
                )
            raise StopUnsupportedError(
                f"stop_hf: {remaining} video placeholder tokens from position {int(video_positions[cursor])} do "
                f"not match any video encoded in this call (encoded videos have "
                f"{[r.num_tokens for r in videos]} tokens). Pass the video as pixel_values_videos (pre-computed "
                "inputs_embeds or mm_encoder_outputs are not supported when pruning), and do not split a prompt "
                "into chunks (prefill_chunk_size)."
            )
    return found


def _compact(positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sequential positions over the real (mask=1) tokens, starting at the first real token's position."""
    out = positions.clone()
    real = mask.bool()
    if real.any():
        first = positions[real][0]
        out[real] = first + torch.arange(int(real.sum()), device=positions.device, dtype=positions.dtype)
    return out


def prune_prefill(state: StopState, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Rewrites the LM kwargs of a prefill: prunes every video, splices, positions, mask, left re-pad."""
    embeds: torch.Tensor = kwargs["inputs_embeds"]
    batch, length, _ = embeds.shape
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.dim() != 2:
        raise StopUnsupportedError(
            f"stop_hf: a {mask.dim()}-D attention_mask cannot be pruned; pass a 2-D (batch, seq) padding mask"
        )
    if mask is None:
        # An explicit mask is needed: without one, gapped position ids look like packed sequences.
        mask = torch.ones(batch, length, dtype=torch.long, device=embeds.device)
    positions = kwargs.get("position_ids")
    if positions is None:
        positions = torch.arange(length, device=embeds.device)[None].expand(batch, length)
    mode = state.config.position_mode
    if mode == "auto":
        mode = state.adapter.default_position_mode(state.config.method)
    if mode == "compact" and positions.dim() == 3:
        raise StopUnsupportedError(
            f"stop_config.position_mode='compact' is not supported for {state.adapter.name} (3-D mRoPE positions); "
            "allowed: auto, original"
        )

    rows_embeds, rows_src, rows_pos, rows_mask = [], [], [], []
    results: dict[int, tuple[PruneResult, dict[str, Any]]] = {}
    state.report = []
    for b in range(batch):
        video_positions = state.video_mask[b].nonzero().squeeze(-1)
        pieces_embeds, pieces_src, previous = [], [], 0
        for record, start in _match_videos(embeds[b], video_positions, state.videos):
            if id(record) not in results:
                results[id(record)] = _run_pruner(
                    state, record, embeds[b, start : start + record.grid_tokens]
                )
            result, entry = results[id(record)]
            entry["placements"].append((b, start))
            order = result.index
            out_embeds = result.embeds
            if mode == "original":
                order, perm = torch.sort(order, stable=True)
                out_embeds = out_embeds[perm]
            grid_end, video_end = start + record.grid_tokens, start + record.num_tokens
            pieces_embeds += [
                embeds[b, previous:start],
                out_embeds.to(embeds.dtype),
                embeds[b, grid_end:video_end],
            ]
            pieces_src += [
                torch.arange(previous, start, device=embeds.device),
                start + order.to(embeds.device),
                torch.arange(grid_end, video_end, device=embeds.device),
            ]
            previous = video_end
        pieces_embeds.append(embeds[b, previous:])
        pieces_src.append(torch.arange(previous, length, device=embeds.device))
        src = torch.cat(pieces_src)
        row_mask = mask[b, src]
        row_pos = _gather_positions(positions, b, src)
        if mode == "compact":
            row_pos = _compact(row_pos, row_mask)
        rows_embeds.append(torch.cat(pieces_embeds))
        rows_src.append(src)
        rows_pos.append(row_pos)
        rows_mask.append(row_mask)

    new_length = max(r.shape[0] for r in rows_embeds)
    new_embeds = embeds.new_zeros(batch, new_length, embeds.shape[-1])
    new_mask = mask.new_zeros(batch, new_length)
    pos_shape = (batch, new_length) if positions.dim() == 2 else (positions.shape[0], batch, new_length)
    new_pos = positions.new_ones(pos_shape)  # HF fills padded slots with 1
    for b in range(batch):
        n = rows_embeds[b].shape[0]
        new_embeds[b, new_length - n :] = rows_embeds[b]  # left re-pad: rows with fewer kept tokens
        new_mask[b, new_length - n :] = rows_mask[b]
        if positions.dim() == 2:
            new_pos[b, new_length - n :] = rows_pos[b]
        else:
            new_pos[:, b, new_length - n :] = rows_pos[b]

    last_original = positions[:, -1] if positions.dim() == 2 else positions[0, :, -1]
    last_emitted = new_pos[:, -1] if positions.dim() == 2 else new_pos[0, :, -1]
    state.pruned = True
    state.original_length, state.pruned_length = length, new_length
    state.prefill_mask = new_mask
    state.position_offset = last_original - last_emitted
    state.last_position = last_emitted
    state.adapter.after_prefill(state, length, new_length)
    kwargs["inputs_embeds"] = new_embeds
    kwargs["attention_mask"] = new_mask
    kwargs["position_ids"] = new_pos
    return kwargs


def _run_pruner(
    state: StopState, record: VideoRecord, grid_embeds: torch.Tensor
) -> tuple[PruneResult, dict[str, Any]]:
    features = grid_embeds.reshape(record.frames, record.grid[0] * record.grid[1], -1)
    x = PruneInput(
        features=features,
        attention=record.attention,
        keys=record.keys,
        global_features=record.global_features,
        grid=record.grid,
        attention_patches=record.attention_patches,
    )
    x.require(*state.needs, method=state.config.method)
    started = time.perf_counter()
    result = state.pruner(x)
    seconds = time.perf_counter() - started
    entry = {
        "frames": record.frames,
        "grid": record.grid,
        "tokens_before": record.num_tokens,
        "tokens_after": result.index.numel() + record.trailing_tokens,
        "index": result.index.detach().cpu(),
        "kind": result.kind.detach().cpu(),
        "info": result.info,
        "attention": None if record.attention is None else record.attention.detach().float().cpu(),
        "signal_seconds": record.signal_seconds,
        "prune_seconds": seconds,
        "placements": [],  # (batch row, sequence start) of every occurrence of this video
        "result": result,
    }
    state.report.append(entry)
    return result, entry


# ---------------------------------------------------------------------------------------------------- decode
def translate_decode(state: StopState, kwargs: dict[str, Any], past: int) -> dict[str, Any]:
    """Maps the original-length mask/positions that generate keeps growing onto the pruned cache."""
    embeds = kwargs["inputs_embeds"]
    step = embeds.shape[1]
    dropped = state.original_length - state.pruned_length
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        if mask.shape[-1] == past + step + dropped:
            kwargs["attention_mask"] = torch.cat(
                [state.prefill_mask, mask[:, state.original_length :]], dim=-1
            )
        elif mask.shape[-1] != past + step:
            raise StopUnsupportedError(
                f"stop_hf: decode attention_mask has length {mask.shape[-1]}; expected {past + step + dropped} "
                f"(original coordinates) or {past + step} (pruned coordinates)"
            )
    positions = kwargs.get("position_ids")
    if positions is None:
        if state.adapter.positions_1d:
            steps = torch.arange(step, device=embeds.device) + (past - state.pruned_length) + 1
            kwargs["position_ids"] = state.last_position[:, None] + steps[None]
    elif positions.dim() == 2 and bool(state.position_offset.any()):
        kwargs["position_ids"] = positions - state.position_offset[:, None].to(positions.device)
    return kwargs


def lm_pre_hook(state: StopState, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]):
    """Forward pre-hook on the inner language model."""
    if state.config.is_identity:
        return None
    embeds = kwargs.get("inputs_embeds")
    if embeds is None:
        return None
    cache = kwargs.get("past_key_values")
    check_cache_supported(cache)
    past = past_length(cache)
    has_video = state.video_mask is not None and bool(state.video_mask.any())
    if has_video and (past > 0 or state.video_mask.shape != embeds.shape[:2]):
        raise StopUnsupportedError(
            "stop_hf: video tokens arrived in a continuation step (chunked prefill via prefill_chunk_size, or a new "
            "video appended to an existing cache). Pruning needs the whole prompt in one prefill."
        )
    if past == 0:
        state.pruned = False
        if not has_video:
            return None
        return args, prune_prefill(state, kwargs)
    if not state.pruned:
        return None
    if embeds.shape[1] != 1:
        raise StopUnsupportedError(
            "stop_hf: multi-token continuation after a pruned prefill (assisted decoding, chunked prefill) is not "
            "supported; generate one token per step"
        )
    return args, translate_decode(state, kwargs, past)


def outer_pre_hook(state: StopState, video_token_id: int, module: torch.nn.Module, args: tuple, kwargs: dict):
    """Forward pre-hook on the multimodal base model: records where the video tokens of this call are."""
    if (
        kwargs.get("pixel_values_videos") is None
        and (kwargs.get("mm_encoder_outputs") or {}).get("video") is None
    ):
        # No video features in this call: placeholder ids are ordinary tokens to the model (e.g. a decode step whose
        # generated token happens to be the video token id).
        state.video_mask = None
        return None
    input_ids = kwargs.get("input_ids", args[0] if args else None)
    if input_ids is not None:
        state.video_mask = input_ids == video_token_id
        return None
    embeds = kwargs.get("inputs_embeds")
    if embeds is None:
        state.video_mask = None
        return None
    token = torch.tensor(video_token_id, device=embeds.device)
    placeholder = module.get_input_embeddings()(token).to(embeds.dtype)
    state.video_mask = (embeds == placeholder).all(-1)
    return None


def top_pre_hook(state: StopState, module: torch.nn.Module, args: tuple, kwargs: dict):
    """Forward pre-hook on the *ForConditionalGeneration model: refuses labels, which would not line up."""
    if state.config.is_identity or kwargs.get("labels") is None:
        return None
    has_video = kwargs.get("pixel_values_videos") is not None or bool(
        (kwargs.get("mm_encoder_outputs") or {}).get("video") is not None
    )
    if has_video:
        raise StopUnsupportedError(
            "stop_hf: forward(labels=...) with pruned video tokens is not supported: logits cover the pruned "
            "sequence, so labels would not line up. Compute the loss from the logits of the pruned sequence, or "
            "unpatch the model (stop_hf.unpatch) for training."
        )
    return None
