"""The hook machinery shared by every architecture: per-model and per-call state, the LM-input pruning pre-hook, the
decode translation, the mapping of outputs back to prompt coordinates, and the guards. Architecture specifics live in
an `ArchAdapter` (see `stop_hf.patches`).

The pruning happens after the video features are scattered into `inputs_embeds`, in a forward pre-hook on the inner
language model; `input_ids`, the processors and `generate`'s returned sequences stay untouched.

State, so that one patched model serves concurrent calls exactly as it serves them one at a time:
- `StopState` (one per patched model) holds only what `patch` fixed: config, pruner, adapter, hook handles.
- Everything a call produces lives in context variables owned by that `StopState` (each thread, and each asyncio
  task, sees its own): the vision-capture buffer of the video being encoded, the encoded videos waiting for their
  prefill, the `CallState` of the current top-level forward, and the last prune report.
- What decode steps need from a pruned prefill (`SequenceState`) is attached to the sequence's own KV cache, so
  interleaved sequences (threads, hand-written decode loops, beams) never see each other's prefill. Nothing is
  written to the model's modules (Qwen2.5-VL's `rope_deltas` included).
"""

from __future__ import annotations

import dataclasses
import functools
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch

from . import compat
from .config import StopConfig
from .pruners import PruneInput, Pruner, PruneResult

#: What `forward` returns at prompt positions that carry no prediction (dropped video tokens, dropped padding).
DROPPED_FILL = float("nan")

#: Name of the attribute on a KV cache that holds `{StopState.key: SequenceState}`.
CACHE_ATTRIBUTE = "_stop_hf_sequences"

#: Whether prune reports made in this context keep the pruned embeddings (see `report_embeddings`).
_REPORT_EMBEDDINGS: ContextVar[bool] = ContextVar("stop_hf_report_embeddings", default=False)


@contextmanager
def report_embeddings(enabled: bool = True) -> Iterator[None]:
    """Inside this block (this thread or asyncio task only), each prune report entry also keeps `result`: the
    pruner's `PruneResult` with its output embeddings, a CPU copy. Outside it, reports hold CPU copies of indices
    and scores only, so a server keeps no embeddings between requests. The masked-reference oracle needs them."""
    token = _REPORT_EMBEDDINGS.set(enabled)
    try:
        yield
    finally:
        _REPORT_EMBEDDINGS.reset(token)


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
class SequenceState:
    """What the decode steps of ONE pruned sequence need; attached to that sequence's KV cache.

    prefill_mask: (B, L') the pruned, re-padded prefill mask. position_offset: (B,) original minus emitted 1-D
    position of the last prompt token. last_position: (B,) emitted 1-D position of the last prompt token.
    next_mrope_position: (B,) for 3-D positions: the first decode position (max prompt position + 1), or None.
    """

    original_length: int
    pruned_length: int
    prefill_mask: torch.Tensor
    position_offset: torch.Tensor
    last_position: torch.Tensor
    next_mrope_position: torch.Tensor | None = None


@dataclass
class PrefillMap:
    """Where the pruned prefill's columns sit in prompt coordinates: token k of the pruned batch is row `rows[k]`,
    column `pruned_columns[k]`, and stands at prompt position `original_columns[k]`. All (K,) int64."""

    batch: int
    original_length: int
    pruned_length: int
    rows: torch.Tensor
    pruned_columns: torch.Tensor
    original_columns: torch.Tensor

    def computed(self, device: torch.device) -> torch.Tensor:
        """(B, L) bool: prompt positions that carry a prediction."""
        out = torch.zeros(self.batch, self.original_length, dtype=torch.bool, device=device)
        out[self.rows.to(device), self.original_columns.to(device)] = True
        return out

    def expand(self, values: torch.Tensor, fill: float = DROPPED_FILL) -> torch.Tensor:
        """(B, L', ...) in pruned coordinates -> (B, L, ...) in prompt coordinates, `fill` where nothing was computed."""
        device = values.device
        out = values.new_full((self.batch, self.original_length, *values.shape[2:]), fill)
        out[self.rows.to(device), self.original_columns.to(device)] = values[
            self.rows.to(device), self.pruned_columns.to(device)
        ]
        return out

    def expand_attention(self, weights: torch.Tensor) -> torch.Tensor:
        """(B, H, L', L') -> (B, H, L, L): rows of uncomputed queries are `DROPPED_FILL`; computed queries give zero
        weight to uncomputed keys (exactly what the masked reference's mask does)."""
        device = weights.device
        length = self.original_length
        out = weights.new_full((self.batch, weights.shape[1], length, length), DROPPED_FILL)
        for b in range(self.batch):
            selected = self.rows.to(device) == b
            pruned = self.pruned_columns.to(device)[selected]
            original = self.original_columns.to(device)[selected]
            block = weights.new_zeros(weights.shape[1], pruned.numel(), length)
            block[:, :, original] = weights[b][:, pruned][:, :, pruned]
            out[b][:, original] = block
        return out


@dataclass
class CallState:
    """One top-level forward call (a plain forward, or one step of generate). Created fresh for every call."""

    base_entered: bool = False
    lm_entered: bool = False
    video_mask: torch.Tensor | None = None  # (B, L) where this call's video tokens are
    positions_given: bool = True  # whether the caller passed position_ids to the multimodal base model
    labels: torch.Tensor | None = None  # taken from the call; the loss is computed in prompt coordinates
    shift_labels: torch.Tensor | None = None
    expand_logits: bool = False  # the logits are computed for every pruned column and expanded
    logits_to_keep: int | torch.Tensor = 0  # what the caller asked for (applied after the expansion)
    return_tuple: bool = False
    prefilled: bool = (
        False  # the LM ran a prefill in this call: its cache gets `sequence` (or loses a stale one)
    )
    sequence: SequenceState | None = None
    prefill: PrefillMap | None = None


def _new_var(name: str) -> ContextVar:
    return ContextVar(f"stop_hf_{name}", default=None)


@dataclass(eq=False)
class StopState:
    """What ONE patched model fixes at `patch` time; per-call state lives in the context variables below."""

    config: StopConfig
    pruner: Pruner
    adapter: Any
    handles: list[Any] = field(default_factory=list)
    key: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: the signal buffer of the video being encoded right now (set around `get_video_features`)
    capture: ContextVar = field(default_factory=lambda: _new_var("capture"))
    #: videos encoded in this context and not yet consumed by a prefill
    encoded: ContextVar = field(default_factory=lambda: _new_var("encoded"))
    call: ContextVar = field(default_factory=lambda: _new_var("call"))
    report: ContextVar = field(default_factory=lambda: _new_var("report"))
    warned_training: bool = False

    @property
    def needs(self) -> tuple[str, ...]:
        return tuple(self.pruner.needs)

    def last_report(self) -> list[dict[str, Any]]:
        return self.report.get() or []

    def capturing(self) -> Any:
        """The vision-capture buffer (a `stop_hf.patches.base.SignalBuffer`) of the video this context is encoding,
        or None."""
        return self.capture.get()

    def start_capture(self, buffer: Any) -> Any:
        return self.capture.set(buffer)

    def stop_capture(self, token: Any) -> None:
        self.capture.reset(token)

    def set_encoded(self, videos: list[VideoRecord]) -> None:
        self.encoded.set(videos)


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
    if compat.is_presized_cache(past_key_values):
        raise StopUnsupportedError(
            f"stop_hf: video pruning does not support {type(past_key_values).__name__} "
            "(cache_implementation='static' / torch.compile): the cache is pre-sized to the unpruned prompt. "
            "Use the default dynamic cache, or load the model without stop_config."
        )


def past_length(past_key_values: Any) -> int:
    if past_key_values is None:
        return 0
    return int(past_key_values.get_seq_length())


def _warn_training(state: StopState, module: torch.nn.Module) -> None:
    if not module.training or state.warned_training or state.config.allow_training:
        return
    state.warned_training = True
    warnings.warn(
        "stop_hf: the model is in training mode (model.train()) with video pruning on. Pruning is meant for "
        "inference: the selection is not differentiable and the pruned tokens get no gradient. Call model.eval(), "
        "or stop_hf.unpatch(model) to train on full sequences, or set stop_config.allow_training: true to prune "
        "in training on purpose.",
        UserWarning,
        stacklevel=3,
    )


# ---------------------------------------------------------------------------------------------------- prefill
@dataclass
class Splice:
    """The columns of a pruned prefill: row b of the pruned batch holds the prompt columns `rows_src[b]` ((L'_b,)
    int64, in order), left-padded to `length`. Adapters slice their own per-token arguments with `gather`."""

    rows_src: list[torch.Tensor]
    length: int

    def gather(self, values: torch.Tensor, fill: Any) -> torch.Tensor:
        """(B, L, ...) in prompt columns -> (B, L', ...) in pruned columns, `fill` in the left padding."""
        return _left_pad(
            [values[b, src.to(values.device)] for b, src in enumerate(self.rows_src)], self.length, fill
        )


def _left_pad(rows: list[torch.Tensor], length: int, fill: Any) -> torch.Tensor:
    """Per-row (n_b, ...) tensors -> (B, length, ...), each row right-aligned after `fill`."""
    out = rows[0].new_full((len(rows), length, *rows[0].shape[1:]), fill)
    for b, row in enumerate(rows):
        out[b, length - row.shape[0] :] = row
    return out


def _match_videos(
    row_embeds: torch.Tensor, video_positions: torch.Tensor, videos: list[VideoRecord]
) -> list[tuple[VideoRecord, torch.Tensor]]:
    """Splits one row's video positions into encoded videos by content. Returns (record, positions) pairs:
    `positions` (num_tokens,) are the sequence positions of the record's tokens, in order. A video's frames may be
    separated by text (Qwen3-VL's timestamped groups), but each frame's tokens are one contiguous run."""
    found, cursor, total = [], 0, video_positions.numel()
    while cursor < total:
        remaining = total - cursor
        for record in videos:
            n = record.num_tokens
            if n > remaining:
                continue
            positions = video_positions[cursor : cursor + n]
            if not _frames_contiguous(positions, record):
                continue
            if torch.equal(row_embeds[positions], record.features.to(row_embeds.device, row_embeds.dtype)):
                found.append((record, positions))
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


def _frames_contiguous(positions: torch.Tensor, record: VideoRecord) -> bool:
    """Each frame's grid tokens, and the trailing tokens after the last frame, sit in one contiguous run."""
    grid = positions[: record.grid_tokens].view(record.frames, -1)
    runs = [grid, positions[record.grid_tokens - 1 :][None]]
    return all(bool((run[:, 1:] - run[:, :-1] == 1).all()) for run in runs if run.shape[1] > 1)


def join_row_frames(
    matched: list[tuple[VideoRecord, torch.Tensor]],
) -> list[tuple[VideoRecord, torch.Tensor]]:
    """The single-frame records one row holds, in prompt order, joined into one video (for an architecture whose
    encoder sees frames as separate images, `ArchAdapter.join_frames`). Each frame must be its own group: two frames
    in one run of tokens are the tiles of one image, which cannot be pruned as a video."""
    if not matched:
        return matched
    records = [record for record, _ in matched]
    if any(r.frames != 1 or r.trailing_tokens for r in records):
        raise StopUnsupportedError(
            "stop_hf: join_frames expects one record per frame, without trailing tokens"
        )
    starts = torch.stack([positions[0] for _, positions in matched])
    ends = torch.stack([positions[-1] for _, positions in matched])
    if bool((starts[1:] == ends[:-1] + 1).any()):
        raise StopUnsupportedError(
            "stop_hf: two image tiles sit in one run of tokens (a multi-tile image); pruning reads every image group "
            "of this architecture as a video frame and does not support multi-tile images. Pass the video alone, or "
            "load the model without stop_config."
        )

    def cat(name: str) -> torch.Tensor | None:
        values = [getattr(r, name) for r in records]
        return None if values[0] is None else torch.cat(values)

    joined = VideoRecord(
        features=cat("features"),
        frames=len(records),
        grid=records[0].grid,
        attention=cat("attention"),
        keys=cat("keys"),
        global_features=cat("global_features"),
        attention_patches=records[0].attention_patches,
        signal_seconds=sum(r.signal_seconds for r in records),
    )
    return [(joined, torch.cat([positions for _, positions in matched]))]


def resolve_position_mode(state: StopState, positions: torch.Tensor) -> str:
    """The configured position mode, `auto` resolved by the architecture's reference policy."""
    mode = state.config.position_mode
    if mode == "auto":
        mode = state.adapter.default_position_mode(state.config.method)
    if mode == "compact" and not state.adapter.compact_positions:
        raise StopUnsupportedError(
            f"stop_config.position_mode='compact' is not supported for {state.adapter.name} (its video tokens are "
            "separated by text); allowed: auto, original"
        )
    if mode == "compact" and positions.dim() == 3:
        raise StopUnsupportedError(
            f"stop_config.position_mode='compact' is not supported for {state.adapter.name} (3-D mRoPE positions); "
            "allowed: auto, original"
        )
    return mode


def splice_row(
    row_embeds: torch.Tensor,
    row_real: torch.Tensor,
    placed: list[tuple[torch.Tensor, PruneResult]],
    mode: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One row's pruned sequence: (src (L'_b,) prompt column of every emitted token, embeds (L'_b, D)).

    `placed`: per video, its grid tokens' positions and its pruning result. Every other column is kept as is,
    except the row's padding. `original` emits a video's tokens in representative order, each at its
    representative's column; `compact` emits them as one block, in the pruner's order, where the video starts.
    """
    device = row_embeds.device
    fixed = torch.ones(row_embeds.shape[0], dtype=torch.bool, device=device)
    keys, sources, values = [], [], []
    for grid_positions, result in placed:
        fixed[grid_positions] = False
        order, out = result.index.to(device), result.embeds
        if mode == "original":
            order, perm = torch.sort(order, stable=True)
            out = out[perm.to(out.device)]
            chosen = grid_positions[order]
            keys.append(chosen)
        else:
            if int(grid_positions[-1] - grid_positions[0]) + 1 != grid_positions.numel():
                raise StopUnsupportedError(
                    "stop_config.position_mode='compact' needs each video's tokens in one contiguous run; this "
                    "prompt separates them by text. Allowed here: position_mode auto or original"
                )
            chosen = grid_positions[order]
            keys.append(grid_positions[:1].expand_as(chosen))  # the whole block sorts where the video starts
        sources.append(chosen)
        values.append(out.to(device, row_embeds.dtype))
    kept = fixed.nonzero().squeeze(-1)
    perm = torch.argsort(torch.cat([kept, *keys]), stable=True)
    src = torch.cat([kept, *sources])[perm]
    embeds = torch.cat([row_embeds[kept], *values])[perm]
    is_real = row_real[src]  # the row's original padding is dropped
    return src[is_real], embeds[is_real]


def _compact(positions: torch.Tensor) -> torch.Tensor:
    """Sequential 1-D positions over a row of real tokens, starting at its first token's position."""
    if positions.numel() == 0:
        return positions
    return positions[0] + torch.arange(positions.numel(), device=positions.device, dtype=positions.dtype)


def _pruned_positions(positions: torch.Tensor, splice: Splice, mode: str) -> torch.Tensor:
    """(B, L) or (R, B, L) prompt position ids -> the pruned sequence's ids (HF fills padded slots with 1)."""
    if positions.dim() == 3:
        return torch.stack([splice.gather(rows, 1) for rows in positions])
    if mode != "compact":
        return splice.gather(positions, 1)
    rows = [_compact(positions[b, src.to(positions.device)]) for b, src in enumerate(splice.rows_src)]
    return _left_pad(rows, splice.length, 1)


def _sequence_state(
    positions: torch.Tensor, new_positions: torch.Tensor, real: torch.Tensor, new_mask: torch.Tensor
) -> SequenceState:
    """What the decode steps of this pruned prefill need (see `SequenceState`)."""
    last_original = positions[:, -1] if positions.dim() == 2 else positions[0, :, -1]
    last_emitted = new_positions[:, -1] if positions.dim() == 2 else new_positions[0, :, -1]
    next_mrope = None
    if positions.dim() == 3:
        mrope = positions[-3:].masked_fill(~real[None], torch.iinfo(positions.dtype).min)
        next_mrope = mrope.amax(dim=(0, 2)) + 1
    return SequenceState(
        original_length=positions.shape[-1],
        pruned_length=new_mask.shape[1],
        prefill_mask=new_mask,
        position_offset=last_original - last_emitted,
        last_position=last_emitted,
        next_mrope_position=next_mrope,
    )


def prune_prefill(
    state: StopState, video_mask: torch.Tensor, videos: list[VideoRecord], kwargs: dict[str, Any]
) -> tuple[dict[str, Any], PrefillMap, SequenceState, list[dict[str, Any]]]:
    """Rewrites the LM kwargs of a prefill: prunes every video (once, however many rows hold it), splices each row,
    re-pads, and derives the decode state. Every row drops its original padding; rows are left-padded to the longest
    kept row only."""
    embeds: torch.Tensor = kwargs["inputs_embeds"]
    batch, length, _ = embeds.shape
    device = embeds.device
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.dim() != 2:
        raise StopUnsupportedError(
            f"stop_hf: a {mask.dim()}-D attention_mask cannot be pruned; pass a 2-D (batch, seq) padding mask"
        )
    if mask is None:
        # An explicit mask is needed: without one, gapped position ids look like packed sequences.
        mask = torch.ones(batch, length, dtype=torch.long, device=device)
    real = mask.bool()
    positions = kwargs.get("position_ids")
    if positions is None:
        positions = torch.arange(length, device=device)[None].expand(batch, length)
    mode = resolve_position_mode(state, positions)

    results: dict[int, tuple[PruneResult, dict[str, Any]]] = {}
    report: list[dict[str, Any]] = []
    rows_src, rows_embeds = [], []
    for b in range(batch):
        placed = []
        matched = _match_videos(embeds[b], video_mask[b].nonzero().squeeze(-1), videos)
        if state.adapter.join_frames:
            matched = join_row_frames(matched)
        for record, video_positions in matched:
            grid_positions = video_positions[: record.grid_tokens]
            if id(record) not in results:
                results[id(record)] = _run_pruner(state, record, embeds[b, grid_positions])
                report.append(results[id(record)][1])
            result, entry = results[id(record)]
            entry["placements"].append((b, int(video_positions[0])))
            entry["positions"].append(grid_positions.detach().cpu())
            placed.append((grid_positions, result))
        src, row_embeds = splice_row(embeds[b], real[b], placed, mode)
        rows_src.append(src)
        rows_embeds.append(row_embeds)

    splice = Splice(rows_src, max(max(src.numel() for src in rows_src), 1))
    new_mask = splice.gather(mask, 0)
    new_positions = _pruned_positions(positions, splice, mode)
    kwargs["inputs_embeds"] = _left_pad(rows_embeds, splice.length, 0)
    kwargs["attention_mask"] = new_mask
    kwargs["position_ids"] = new_positions
    kwargs = state.adapter.prune_lm_kwargs(kwargs, splice)
    sequence = _sequence_state(positions, new_positions, real, new_mask)
    prefill_map = _prefill_map(rows_src, length, splice.length)
    if (
        _REPORT_EMBEDDINGS.get()
    ):  # the PruneResult was only needed for splicing: a CPU copy only when asked for
        for result, entry in results.values():
            entry["result"] = _to_cpu(result)
    return kwargs, prefill_map, sequence, report


def _prefill_map(rows_src: list[torch.Tensor], length: int, new_length: int) -> PrefillMap:
    """The prompt position of every pruned column. Two output tokens may share a representative (FlashVID emits a
    copy and a cluster of one index): that position shows the later one, so the map stays one-to-one."""
    rows, pruned, original = [], [], []
    for b, src in enumerate(rows_src):
        src = src.cpu()
        positions, inverse = torch.unique(src, return_inverse=True)
        last = torch.full_like(positions, -1).scatter_reduce(
            0, inverse, torch.arange(src.numel()), reduce="amax"
        )
        rows.append(torch.full_like(positions, b))
        pruned.append(new_length - src.numel() + last)
        original.append(positions)
    return PrefillMap(
        batch=len(rows_src),
        original_length=length,
        pruned_length=new_length,
        rows=torch.cat(rows),
        pruned_columns=torch.cat(pruned),
        original_columns=torch.cat(original),
    )


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    if isinstance(value, PruneResult):
        return PruneResult(
            embeds=_to_cpu(value.embeds),
            index=_to_cpu(value.index),
            kind=_to_cpu(value.kind),
            info=_to_cpu(value.info),
        )
    return value


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
        "info": _to_cpu(result.info),
        "attention": None if record.attention is None else record.attention.detach().float().cpu(),
        "signal_seconds": record.signal_seconds,
        "prune_seconds": seconds,
        "placements": [],  # (batch row, sequence start) of every occurrence of this video
        "positions": [],  # per placement, the (grid_tokens,) sequence positions of its grid tokens
    }
    return result, entry


# ---------------------------------------------------------------------------------------------------- decode
def sequence_of(cache: Any, state: StopState) -> SequenceState | None:
    return (getattr(cache, CACHE_ATTRIBUTE, None) or {}).get(state.key)


def _attach(cache: Any, state: StopState, sequence: SequenceState | None) -> None:
    sequences = cache.__dict__.setdefault(CACHE_ATTRIBUTE, {})
    if sequence is None:
        sequences.pop(state.key, None)
    else:
        sequences[state.key] = sequence


def translate_decode(
    state: StopState, sequence: SequenceState, kwargs: dict[str, Any], past: int, derive_positions: bool
) -> dict[str, Any]:
    """Maps the original-length mask/positions that generate keeps growing onto the pruned cache.

    `derive_positions`: the caller gave no position ids, so the model would count them from the (pruned) cache
    length; they are derived from the prompt's last position instead.
    """
    embeds = kwargs["inputs_embeds"]
    step = embeds.shape[1]
    dropped = sequence.original_length - sequence.pruned_length
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        if mask.shape[-1] == past + step + dropped:
            kwargs["attention_mask"] = torch.cat(
                [sequence.prefill_mask.to(mask.device, mask.dtype), mask[:, sequence.original_length :]],
                dim=-1,
            )
        elif mask.shape[-1] != past + step:
            raise StopUnsupportedError(
                f"stop_hf: decode attention_mask has length {mask.shape[-1]}; expected {past + step + dropped} "
                f"(original coordinates) or {past + step} (pruned coordinates)"
            )
    positions = kwargs.get("position_ids")
    steps = torch.arange(step, device=embeds.device) + (past - sequence.pruned_length)
    if derive_positions:
        if sequence.next_mrope_position is None:
            kwargs["position_ids"] = sequence.last_position.to(embeds.device)[:, None] + 1 + steps[None]
        else:
            ids = sequence.next_mrope_position.to(embeds.device)[:, None] + steps[None]  # (B, step)
            kwargs["position_ids"] = ids[None].expand(3, -1, -1)
    elif positions is not None and positions.dim() == 2 and bool(sequence.position_offset.any()):
        kwargs["position_ids"] = positions - sequence.position_offset[:, None].to(positions.device)
    return kwargs


# ---------------------------------------------------------------------------------------------------- hooks
def lm_pre_hook(state: StopState, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]):
    """Forward pre-hook on the inner language model: prunes a prefill, translates a decode step."""
    if state.config.is_identity:
        return None
    embeds = kwargs.get("inputs_embeds")
    if embeds is None:
        return None
    call: CallState | None = state.call.get()
    fresh = call is not None and not call.lm_entered
    video_mask = call.video_mask if fresh else None
    if call is not None:
        call.lm_entered = True
    cache = compat.cache_of(kwargs)
    check_cache_supported(cache)
    past = past_length(cache)
    has_video = video_mask is not None and bool(video_mask.any())
    if has_video and (past > 0 or video_mask.shape != embeds.shape[:2]):
        raise StopUnsupportedError(
            "stop_hf: video tokens arrived in a continuation step (chunked prefill via prefill_chunk_size, or a new "
            "video appended to an existing cache). Pruning needs the whole prompt in one prefill."
        )
    if past == 0:
        if call is not None:
            call.prefilled = True
        if not has_video:
            state.report.set([])  # this call pruned nothing
            return None
        _warn_training(state, module)
        videos = state.encoded.get() or []
        kwargs, prefill_map, sequence, report = prune_prefill(state, video_mask, videos, kwargs)
        use_cache = kwargs.get("use_cache")
        if use_cache is None:
            use_cache = getattr(module.config, "use_cache", True)
        if cache is not None or use_cache:
            # Decode steps follow: the unpruned features and signals are not needed any more. (Without a cache,
            # generate re-runs the prefill at every step with the same encoded videos, which it holds anyway.)
            state.encoded.set(None)
        call.video_mask = None
        call.sequence, call.prefill = sequence, prefill_map
        state.report.set(report)
        return args, kwargs
    sequence = sequence_of(cache, state)
    if sequence is None:
        return None
    if embeds.shape[1] != 1:
        raise StopUnsupportedError(
            "stop_hf: multi-token continuation after a pruned prefill (assisted decoding, chunked prefill) is not "
            "supported; generate one token per step"
        )
    derive = kwargs.get("position_ids") is None or (fresh and not call.positions_given)
    return args, translate_decode(state, sequence, kwargs, past, derive)


def lm_post_hook(state: StopState, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any], output: Any):
    """Forward hook on the inner language model: attaches the pruned prefill's decode state to its KV cache."""
    call: CallState | None = state.call.get()
    if call is None or not call.prefilled:
        return None
    call.prefilled = False
    cache = compat.output_cache(output)
    if cache is None:
        cache = compat.cache_of(kwargs)
    if cache is not None:
        _attach(cache, state, call.sequence)
    call.sequence = None
    return None


def outer_pre_hook(state: StopState, video_token_id: int, module: torch.nn.Module, args: tuple, kwargs: dict):
    """Forward pre-hook on the multimodal base model: records where the video tokens of this call are."""
    call: CallState | None = state.call.get()
    if call is None or call.base_entered:
        call = CallState()  # the base model was called directly (no top-level call started this one)
        state.call.set(call)
    call.base_entered = True
    call.positions_given = kwargs.get("position_ids") is not None
    if not state.adapter.has_video(kwargs):
        # No video features in this call: placeholder ids are ordinary tokens to the model (e.g. a decode step whose
        # generated token happens to be the video token id).
        return None
    input_ids = kwargs.get("input_ids", args[0] if args else None)
    if input_ids is not None:
        call.video_mask = input_ids == video_token_id
        return None
    embeds = kwargs.get("inputs_embeds")
    if embeds is None:
        return None
    token = torch.tensor(video_token_id, device=embeds.device)
    placeholder = module.get_input_embeddings()(token).to(embeds.dtype)
    call.video_mask = (embeds == placeholder).all(-1)
    return None


def _safe_logits_to_keep(kwargs: dict[str, Any], video_token_id: int) -> bool:
    """True when `logits_to_keep` (a positive int k) selects the same tokens before and after pruning: the last k
    prompt positions of every row are real text tokens, which pruning keeps at the right end of each row."""
    keep = kwargs.get("logits_to_keep", 0)
    input_ids = kwargs.get("input_ids")
    if not isinstance(keep, int) or keep <= 0 or input_ids is None or keep > input_ids.shape[1]:
        return False
    tail = input_ids[:, -keep:] == video_token_id
    mask = kwargs.get("attention_mask")
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dim() != 2):
        return False
    if mask is not None:
        tail = tail | (mask[:, -keep:] == 0)
    return not bool(tail.any())


def _refuse_placeholders_without_video(kwargs: dict[str, Any], video_token_id: int) -> None:
    """Refuses a multi-token forward whose input_ids hold video placeholders but that carries no video: the model
    would read the placeholders as ordinary tokens and answer without the video. transformers before 5.23 does
    this in `generate(prefill_chunk_size=...)`: its chunked prefill drops the pixels from every chunk (the
    unpatched model silently ignores the video; v5.19.0 generation/utils.py:4302-4325). A decode step (one
    token) may legitimately generate the placeholder id."""
    input_ids = kwargs.get("input_ids")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] < 2:
        return
    placeholders = int((input_ids == video_token_id).sum())
    if placeholders:
        raise StopUnsupportedError(
            f"stop_hf: this forward holds {placeholders} video placeholder tokens but no video "
            "(pixel_values_videos / mm_encoder_outputs), so the model would answer without the video. This is what "
            "chunked prefill does on transformers "
            f"{compat.transformers_version()} (generate(prefill_chunk_size=...) drops the pixels from every chunk): "
            "drop prefill_chunk_size, or pass the video with the prompt."
        )


def top_pre_hook(state: StopState, video_token_id: int, module: torch.nn.Module, args: tuple, kwargs: dict):
    """Forward pre-hook on the *ForConditionalGeneration model: starts this call's state. When the call carries a
    video, it takes `labels` (the loss is computed in prompt coordinates afterwards) and widens `logits_to_keep`
    where pruning would move the requested positions."""
    call = CallState()
    state.call.set(call)
    if state.config.is_identity:
        return None
    if not state.adapter.has_video(kwargs):
        _refuse_placeholders_without_video(kwargs, video_token_id)
        return None
    state.adapter.check_video_call(kwargs)
    call.labels = kwargs.pop("labels", None)
    call.shift_labels = kwargs.pop("shift_labels", None)
    if not _safe_logits_to_keep(kwargs, video_token_id):
        call.expand_logits = True
        call.logits_to_keep = kwargs.get("logits_to_keep", 0)
        kwargs["logits_to_keep"] = 0
    if kwargs.get("return_dict") is False:
        call.return_tuple = True
        kwargs["return_dict"] = True
    return args, kwargs


def top_post_hook(state: StopState, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any):
    """Forward hook on the *ForConditionalGeneration model: maps a pruned prefill's outputs to prompt coordinates
    (logits, hidden states, attentions; `DROPPED_FILL` where nothing was computed) and computes the loss."""
    call: CallState | None = state.call.get()
    if call is None or not dataclasses.is_dataclass(output):
        return None
    prefill, labels, shift_labels = call.prefill, call.labels, call.shift_labels
    call.prefill = call.labels = call.shift_labels = call.video_mask = None
    if prefill is None and labels is None and shift_labels is None and not call.return_tuple:
        return None
    fields = {f.name: getattr(output, f.name) for f in dataclasses.fields(output)}
    logits = fields.get("logits")
    computed = None
    if prefill is not None:
        if call.expand_logits and logits is not None and logits.shape[1] == prefill.pruned_length:
            logits = prefill.expand(logits)
            computed = prefill.computed(logits.device)
            if not (isinstance(call.logits_to_keep, int) and call.logits_to_keep == 0):
                logits = compat.slice_logits_to_keep(logits, call.logits_to_keep)
                computed = compat.slice_logits_to_keep(computed[..., None], call.logits_to_keep)[..., 0]
        if fields.get("hidden_states") is not None:
            fields["hidden_states"] = tuple(prefill.expand(h) for h in fields["hidden_states"])
        if fields.get("attentions") is not None:
            fields["attentions"] = tuple(
                prefill.expand_attention(a) if a is not None and a.dim() == 4 else a
                for a in fields["attentions"]
            )
    fields["logits"] = logits
    if labels is not None or shift_labels is not None:
        fields["loss"] = _loss(module, logits, computed, labels, shift_labels, kwargs)
    output = type(output)(**fields)
    return output.to_tuple() if call.return_tuple else output


def _loss(
    module: torch.nn.Module,
    logits: torch.Tensor,
    computed: torch.Tensor | None,
    labels: torch.Tensor | None,
    shift_labels: torch.Tensor | None,
    kwargs: dict[str, Any],
) -> torch.Tensor:
    """The model's own loss over prompt coordinates; a position that carries no prediction is ignored."""
    ignore = kwargs.get("ignore_index", -100)
    extra = {k: kwargs[k] for k in ("num_items_in_batch", "ignore_index") if k in kwargs}
    if computed is not None and computed.shape == logits.shape[:2]:
        logits = logits.masked_fill(~computed[..., None], 0.0)  # no NaN reaches the loss kernel
        if shift_labels is not None:
            shift_labels = shift_labels.masked_fill(~computed.to(shift_labels.device), ignore)
        else:
            labels = labels.clone()
            labels[:, 1:] = labels[:, 1:].masked_fill(~computed[:, :-1].to(labels.device), ignore)
    vocab = getattr(getattr(module.config, "text_config", module.config), "vocab_size", logits.shape[-1])
    if shift_labels is not None:
        extra["shift_labels"] = shift_labels
    return module.loss_function(logits=logits, labels=labels, vocab_size=vocab, **extra)
