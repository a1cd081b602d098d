"""Qwen2.5-VL: 14x14 patches, 2-frame temporal patches, 2x2 merge units, window attention plus full-attention blocks.

The pruner's view of one video: a "frame" is one temporal patch (two input frames, fused by the Conv3d patch
embedding), so `T = grid_t` and `grid = (h / 2, w / 2)`: one LLM token per 2x2 merge unit, raster order inside a
temporal patch, exactly the order the model scatters its tokens in.

Signals (see docs/qwen2_5_vl.md):
- attention: the attention of ONE vision block (default: the last of `fullatt_block_indexes`), recomputed from that
  block's q/k (rotary applied, as the block does) in a pre-hook on its `attn`, over the block's own segments (one
  temporal patch for a full-attention block). The mean attention each patch receives is averaged per merge unit and
  un-permuted from window order, giving one score per LLM token.
- keys: that block's keys before the rotary embedding (the content part), averaged over heads, mapped the same way.
- global_features: per temporal patch, the mean of the tower's pre-merger output.

Positions: every output token keeps its representative's original 3-D mRoPE ids, tokens ordered by representative
index. The model's `rope_deltas` is never touched: decode steps without explicit position ids get theirs from the
pruned sequence's own state (stop_hf.hooks.translate_decode), so concurrent calls cannot disturb each other.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from stop_hf.hooks import StopState, VideoRecord, wrap_method
from stop_hf.siglip_head import refuse_map_head
from stop_hf.signals import head_mean_keys, segment_attention_received, signal_dtype, unpermute_merge_units

from .base import ArchAdapter


def validate_video_grid(
    pixel_values_videos: torch.Tensor, video_grid_thw: Any, merge: int
) -> list[list[int]]:
    """Checks the (t, h, w) patch grids of a Qwen2.5-VL video batch; returns them as lists. Clear errors for inputs
    the model cannot tokenize (the processor never produces them: it pads frames to a full temporal patch and resizes
    to a multiple of patch_size * merge_size)."""
    if video_grid_thw is None:
        raise ValueError("stop_hf: Qwen2.5-VL videos need video_grid_thw (the processor returns it)")
    grids = [[int(v) for v in row] for row in torch.as_tensor(video_grid_thw).reshape(-1, 3).tolist()]
    for index, (t, h, w) in enumerate(grids):
        if t < 1:
            raise ValueError(
                f"stop_hf: video {index} has grid_t={t}: a video needs at least one temporal patch "
                "(temporal_patch_size frames; the processor pads shorter clips by repeating the last frame)"
            )
        if h < merge or w < merge or h % merge or w % merge:
            raise ValueError(
                f"stop_hf: video {index} has a patch grid of {h}x{w}, which does not divide into {merge}x{merge} "
                f"merge units; resize frames to a multiple of patch_size * spatial_merge_size pixels (the processor "
                "does this)"
            )
    expected = sum(t * h * w for t, h, w in grids)
    if pixel_values_videos.shape[0] != expected:
        raise ValueError(
            f"stop_hf: pixel_values_videos has {pixel_values_videos.shape[0]} patch rows but video_grid_thw "
            f"{grids} describes {expected}"
        )
    return grids


class Qwen2_5_VLAdapter(ArchAdapter):
    name = "qwen2_5_vl"
    positions_1d = False  # 3-D mRoPE: decode positions come from generate's ids or from rope_deltas
    position_policy: dict[str, str] = {}
    default_position = "original"  # compact 1-D renumbering is not defined for mRoPE

    def vision_module(self, model: Any) -> Any:
        return self.base_model(model).visual

    def saliency_block_index(self, model: Any, configured: int | None) -> int:
        """The vision block whose attention is recomputed; default: the last full-attention block."""
        vision = self.base_model(model).visual
        depth = len(vision.blocks)
        if configured is None:
            full = list(vision.config.fullatt_block_indexes or [])
            return int(full[-1]) if full else depth - 1
        return self.check_layer_index(configured, depth, "blocks")

    def install_capture(self, model: Any, state: StopState) -> list[Any]:
        from transformers.vision_utils import get_vision_window_index

        base = self.base_model(model)
        visual = base.visual
        vision = visual.config
        merge = int(vision.spatial_merge_size)
        unit = merge * merge
        needs = set(state.needs)
        # no SigLIP MAP head: FastVID uses the frame mean here (see docs/qwen2_5_vl.md)
        refuse_map_head(state.config, needs, "Qwen2.5-VL")
        block_index = self.saliency_block_index(model, state.config.saliency_layer)
        full_attention = block_index in set(vision.fullatt_block_indexes or [])
        window_patches = (vision.window_size // vision.patch_size) ** 2
        handles: list[Any] = []

        def make_wrapper(original):
            def get_video_features(pixel_values_videos, video_grid_thw=None, *args, **kwargs):
                grids = validate_video_grid(pixel_values_videos, video_grid_thw, merge)
                buffer = {"attention": [], "keys": [], "seconds": 0.0}
                token = state.start_capture(buffer)  # this call's buffer: concurrent calls never share one
                try:
                    output = original(pixel_values_videos, video_grid_thw, *args, **kwargs)
                finally:
                    state.stop_capture(token)
                pooled = output.pooler_output if hasattr(output, "pooler_output") else output[1]
                started = time.perf_counter()
                grid_tensor = torch.tensor(grids, dtype=torch.long)
                window_index, _ = get_vision_window_index(
                    grid_tensor,
                    spatial_merge_size=merge,
                    window_size=vision.window_size,
                    patch_size=vision.patch_size,
                )
                attention = keys = global_features = None
                if buffer["attention"]:
                    attention = unpermute_merge_units(buffer["attention"][-1], window_index, unit)
                if buffer["keys"]:
                    keys = unpermute_merge_units(buffer["keys"][-1], window_index, unit)
                if "global_features" in needs:
                    hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
                    global_features = unpermute_merge_units(hidden.detach().float(), window_index, unit)
                records, offset = [], 0
                for v, (t, h, w) in enumerate(grids):
                    tokens_per_frame = (h // merge) * (w // merge)
                    span = slice(offset, offset + t * tokens_per_frame)
                    offset = span.stop

                    def per_frame(values, span=span, t=t, n=tokens_per_frame):
                        return None if values is None else values[span].reshape(t, n, *values.shape[1:])

                    frame_global = per_frame(global_features)
                    records.append(
                        VideoRecord(
                            features=pooled[v],
                            frames=t,
                            grid=(h // merge, w // merge),
                            trailing_tokens=0,
                            attention=per_frame(attention),
                            keys=per_frame(keys),
                            global_features=None if frame_global is None else frame_global.mean(dim=1),
                            # keys the saliency softmax ran over per temporal patch (sets the mu_s rescaling)
                            attention_patches=h * w if full_attention else min(h * w, window_patches),
                        )
                    )
                seconds = buffer["seconds"] + time.perf_counter() - started
                for record in records:
                    record.signal_seconds = seconds / len(records)
                state.set_encoded(records)
                return output

            return get_video_features

        handles.append(wrap_method(base, "get_video_features", make_wrapper))

        if needs & {"attention", "keys"}:
            from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

            chunk = state.config.signal_chunk_frames

            def capture_attention(module, args, kwargs):
                buffer = state.capturing()
                if buffer is None:
                    return None
                started = time.perf_counter()
                hidden = kwargs.get("hidden_states", args[0] if args else None)
                cu_seqlens = kwargs.get("cu_seqlens", args[1] if len(args) > 1 else None)
                with torch.no_grad():
                    length = hidden.shape[0]
                    qkv = module.qkv(hidden).reshape(length, 3, module.num_heads, -1).permute(1, 0, 2, 3)
                    queries, keys = qkv[0], qkv[1]  # (S, H, dh)
                    if "keys" in needs:
                        buffer["keys"].append(head_mean_keys(keys.transpose(0, 1)[None])[0])
                    if "attention" in needs:
                        cos, sin = kwargs["position_embeddings"]
                        queries, keys = apply_rotary_pos_emb_vision(queries, keys, cos, sin)
                        buffer["attention"].append(
                            segment_attention_received(
                                queries,
                                keys,
                                cu_seqlens,
                                module.scaling,
                                chunk,
                                signal_dtype(state.config.signal_dtype, queries.dtype),
                            )
                        )
                buffer["seconds"] += time.perf_counter() - started
                return None

            attn = visual.blocks[block_index].attn
            handles.append(attn.register_forward_pre_hook(capture_attention, with_kwargs=True))
        return handles
