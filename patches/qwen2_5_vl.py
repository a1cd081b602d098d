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

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from stop_hf import compat
from stop_hf.hooks import StopState, StopUnsupportedError, VideoRecord
from stop_hf.siglip_head import refuse_map_head
from stop_hf.signals import head_mean_keys, segment_attention_received, signal_dtype, unpermute_merge_units
from stop_hf.validation import StopInputError

from . import register_architecture
from .base import ArchAdapter, SignalBuffer


def validate_video_grid(
    pixel_values_videos: torch.Tensor, video_grid_thw: Any, merge: int
) -> list[list[int]]:
    """Checks the (t, h, w) patch grids of a Qwen2.5-VL video batch; returns them as lists. Clear errors for inputs
    the model cannot tokenize (the processor never produces them: it pads frames to a full temporal patch and resizes
    to a multiple of patch_size * merge_size)."""
    if video_grid_thw is None:
        raise ValueError("stop_hf: Qwen-VL videos need video_grid_thw (the processor returns it)")
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


@dataclass(frozen=True)
class QwenCapturePlan:
    """What the capture of one patched Qwen-VL model fixes at patch time.

    vision: the vision config; block_index: the block whose attention is recomputed (`full_attention`: it attends
    over a whole temporal patch); rotate: the tower's rotary function, when attention is needed.
    """

    vision: Any
    merge: int
    needs: frozenset[str]
    block_index: int
    full_attention: bool
    rotate: Callable | None


def _capture_block_attention(
    state: StopState, plan: QwenCapturePlan, module: Any, args: tuple, kwargs: dict
) -> None:
    """Pre-hook on one vision block's `attn`: its head-mean keys (before rotary) and the mean attention each patch
    receives within the block's own segments (`cu_seqlens`), in the tower's (window) order."""
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
        if "keys" in plan.needs:
            buffer.keys.append(head_mean_keys(keys.transpose(0, 1)[None])[0])
        if "attention" in plan.needs:
            cos, sin = kwargs["position_embeddings"]
            queries, keys = plan.rotate(queries, keys, cos, sin)
            buffer.attention.append(
                segment_attention_received(
                    queries,
                    keys,
                    cu_seqlens,
                    module.scaling,
                    state.config.signal_chunk_frames,
                    signal_dtype(state.config.signal_dtype, queries.dtype),
                )
            )
    buffer.seconds += time.perf_counter() - started
    return None


@register_architecture
class Qwen2_5_VLAdapter(ArchAdapter):
    name = "qwen2_5_vl"
    model_class = "Qwen2_5_VLForConditionalGeneration"
    model_types = ("qwen2_5_vl",)
    lmms_model = "qwen2_5_vl_stop"
    lmms_class = "Qwen2_5_VLStop"
    default_pretrained = "Qwen/Qwen2.5-VL-7B-Instruct"
    temporal_patch = 2
    video_from_file = (
        True  # qwen-vl-utils reads the fps for the temporal mRoPE ids (arrays are taken as 2 fps)
    )
    # ViT: 1280 wide, 32 blocks, merge 2x2, temporal patch 2; 336x336 -> 12x12 = 144 tokens per 2 frames
    bench_vision = {"hidden_size": 1280, "intermediate_size": 3420, "num_attention_heads": 16, "layers": 32}
    bench_image_size = 336
    bench_tokens_per_frame = 72
    #: vision patch side in pixels; pixels per LLM token side: patch x merge 2
    patch_size: ClassVar[int] = 14
    token_px = 28
    #: shown in errors
    display_name: ClassVar[str] = "Qwen2.5-VL"
    positions_1d = False  # 3-D mRoPE: decode positions come from generate's ids or from rope_deltas
    position_policy: dict[str, str] = {}
    default_position = "original"  # compact 1-D renumbering is not defined for mRoPE

    def vision_module(self, model: Any) -> Any:
        return self.base_model(model).visual

    def full_attention_blocks(self, vision: Any) -> list[int]:
        """Indices of the vision blocks that attend over a whole temporal patch (the others attend in windows)."""
        return [int(i) for i in vision.fullatt_block_indexes or []]

    def merge_unit_order(self, grids: list[list[int]], vision: Any) -> torch.Tensor:
        """For each merge unit in the tower's order, its raster index (the window permutation)."""
        return compat.vision_window_index(
            torch.tensor(grids, dtype=torch.long),
            int(vision.spatial_merge_size),
            vision.window_size,
            vision.patch_size,
        )

    def attention_patches(self, h: int, w: int, full_attention: bool, vision: Any) -> int:
        """Keys the saliency softmax ran over per temporal patch of an h x w patch grid (sets mu_s rescaling)."""
        window_patches = (vision.window_size // vision.patch_size) ** 2
        return h * w if full_attention else min(h * w, window_patches)

    def saliency_block_index(self, model: Any, configured: int | None) -> int:
        """The vision block whose attention is recomputed; default: the last full-attention block."""
        vision = self.base_model(model).visual
        depth = len(vision.blocks)
        if configured is None:
            full = self.full_attention_blocks(vision.config)
            return int(full[-1]) if full else depth - 1
        return self.check_layer_index(configured, depth, "blocks")

    def check_config_for_architecture(self, config: Any) -> None:
        refuse_map_head(config, frozenset(config.build_pruner().needs), self.display_name)

    def capture_plan(self, model: Any, state: StopState) -> QwenCapturePlan:
        needs = frozenset(state.needs)
        # no SigLIP MAP head: FastVID uses the frame mean here (see docs/qwen2_5_vl.md)
        refuse_map_head(state.config, needs, self.display_name)
        vision = self.base_model(model).visual.config
        block_index = self.saliency_block_index(model, state.config.saliency_layer)
        return QwenCapturePlan(
            vision=vision,
            merge=int(vision.spatial_merge_size),
            needs=needs,
            block_index=block_index,
            full_attention=block_index in set(self.full_attention_blocks(vision)),
            rotate=compat.rotary_vision(self.model_types[0]) if "attention" in needs else None,
        )

    def check_video_inputs(
        self, plan: QwenCapturePlan, pixel_values_videos: torch.Tensor, args: tuple, kwargs: dict[str, Any]
    ) -> list[list[int]]:
        """The videos' (t, h, w) patch grids, checked (`get_video_features(pixel_values_videos, video_grid_thw)`)."""
        video_grid_thw = (
            kwargs["video_grid_thw"] if "video_grid_thw" in kwargs else (args[0] if args else None)
        )
        return validate_video_grid(pixel_values_videos, video_grid_thw, plan.merge)

    def video_records(
        self, plan: QwenCapturePlan, output: Any, inputs: list[list[int]], buffer: SignalBuffer
    ) -> list[VideoRecord]:
        grids, vision, merge = inputs, plan.vision, plan.merge
        unit = merge * merge
        pooled = compat.pooled_output(output)
        window_index = self.merge_unit_order(grids, vision)
        attention = keys = global_features = None
        if buffer.attention:
            attention = unpermute_merge_units(buffer.attention[-1], window_index, unit)
        if buffer.keys:
            keys = unpermute_merge_units(buffer.keys[-1], window_index, unit)
        if "global_features" in plan.needs:
            hidden = compat.last_hidden_state(output)
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
                    attention_patches=self.attention_patches(h, w, plan.full_attention, vision),
                )
            )
        return records

    def install_signal_hooks(self, model: Any, state: StopState, plan: QwenCapturePlan) -> list[Any]:
        """A pre-hook on the saliency block's `attn` that recomputes its q/k (the rotary applied as the block does)."""
        if not plan.needs & {"attention", "keys"}:
            return []
        attn = self.base_model(model).visual.blocks[plan.block_index].attn
        hook = functools.partial(_capture_block_attention, state, plan)
        return [attn.register_forward_pre_hook(hook, with_kwargs=True)]

    # ------------------------------------------------------------------ inputs
    def decode_video(self, video: Any, num_frames: int) -> Any:
        """A qwen-vl-utils video element: PIL frames plus their sampling fps (see `stop_hf.runner`)."""
        from stop_hf.runner import qwen_video_element

        return qwen_video_element(video, num_frames)

    @staticmethod
    def frame_count(decoded: Any) -> int:
        return len(decoded["video"])

    def processor_inputs(
        self, processor: Any, prompts: list[str], decoded: list[Any], **text_kwargs: Any
    ) -> Any:
        """The reference way: qwen-vl-utils' `process_vision_info` per video, then the processor with the returned
        per-video metadata. transformers 5.23 takes the sampling fps only from `video_metadata` (a bare `fps=` is
        ignored or rejected); without it second_per_grid_ts assumes 24 fps and the temporal mRoPE ids collapse."""
        from qwen_vl_utils import process_vision_info

        clips, metadata, video_kwargs = [], [], {}
        for element in decoded:
            _, video_inputs, video_kwargs = process_vision_info(
                [{"role": "user", "content": [element]}],
                return_video_kwargs=True,
                return_video_metadata=True,
                image_patch_size=self.patch_size,
            )
            clips.append(video_inputs[0][0])
            metadata.append(video_inputs[0][1])
        return processor(
            text=prompts,
            videos=clips,
            video_metadata=metadata,
            do_resize=False,  # qwen-vl-utils already resized to multiples of patch_size * merge_size
            cap_pixels_per_frame=True,  # the reference (qwen-vl-utils) sizing; a no-op without resizing
            **text_kwargs,
            **video_kwargs,
        )

    # ------------------------------------------------------------------ viz
    def seen_size(self, grid: tuple[int, int]) -> tuple[int, int]:
        return grid[0] * self.token_px, grid[1] * self.token_px

    def token_grid(self, frames: Any) -> tuple[int, int]:
        """qwen-vl-utils' own resize of these frames (multiples of 28 px), in tokens."""
        from qwen_vl_utils import process_vision_info

        from stop_hf.runner import qwen_video_element

        element = qwen_video_element(frames, len(frames))
        _, videos, _ = process_vision_info(
            [{"role": "user", "content": [element]}],
            return_video_kwargs=True,
            image_patch_size=self.patch_size,
        )
        height, width = videos[0].shape[-2:]
        return int(height) // self.token_px, int(width) // self.token_px

    # ------------------------------------------------------------------ testing kit
    config_class: ClassVar[str] = "Qwen2_5_VLConfig"
    processor_class: ClassVar[str] = "Qwen2_5_VLProcessor"

    def tiny_vision_config(self) -> dict[str, Any]:
        """Real geometry: patch 14, merge 2, temporal patch 2; window attention with one full-attention block."""
        return {
            "depth": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 4,
            "out_hidden_size": 64,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
            "tokens_per_second": 2,
        }

    def tiny_text_config(self) -> dict[str, Any]:
        return {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        }

    def tiny_config(self) -> Any:
        import transformers

        from stop_hf.tiny import VOCAB_SIZE, token_id

        return getattr(transformers, self.config_class)(
            vision_config=self.tiny_vision_config(),
            text_config={
                **self.tiny_text_config(),
                "vocab_size": VOCAB_SIZE,
                "eos_token_id": token_id("<|im_end|>"),
                "pad_token_id": token_id("<pad>"),
                "bos_token_id": None,
            },
            image_token_id=token_id("<|image_pad|>"),
            video_token_id=token_id("<|video_pad|>"),
            vision_start_token_id=token_id("<|vision_start|>"),
            vision_end_token_id=token_id("<|vision_end|>"),
        )

    #: the video processor class of this architecture's HF processor
    video_processor_class: ClassVar[str] = "Qwen2VLVideoProcessor"

    def tiny_processor(self, tokenizer: Any, chat_template: str) -> Any:
        import transformers

        template = chat_template.replace(
            "{{ video_placeholder }}", "<|vision_start|><|video_pad|><|vision_end|>"
        ).replace("{{ image_placeholder }}", "<|vision_start|><|image_pad|><|vision_end|>")
        return getattr(transformers, self.processor_class)(
            image_processor=transformers.Qwen2VLImageProcessor(patch_size=self.patch_size),
            video_processor=getattr(transformers, self.video_processor_class)(),
            tokenizer=tokenizer,
            chat_template=template,
        )

    # ------------------------------------------------------------------ bench
    def bench_vision_config(
        self, vision: dict[str, int], out_hidden: int, vision_layers: int
    ) -> dict[str, Any]:
        return {
            "depth": vision_layers,
            "hidden_size": vision["hidden_size"],
            "intermediate_size": vision["intermediate_size"],
            "num_heads": vision["num_attention_heads"],
            "out_hidden_size": out_hidden,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [vision_layers - 1],
            "tokens_per_second": 2,
        }

    def bench_text_config(self, llm: Any) -> dict[str, Any]:
        """The LLM part of the bench config (widths from the bench `LLMShape`; depth and vocab are set by the
        caller)."""
        hd = llm.hidden // llm.heads
        return {
            "hidden_size": llm.hidden,
            "intermediate_size": llm.mlp,
            "num_attention_heads": llm.heads,
            "num_key_value_heads": llm.kv_heads,
            "max_position_embeddings": 32768,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e6,
                "mrope_section": [hd // 2 - 2 * (hd * 3 // 16), hd * 3 // 16, hd * 3 // 16],  # 7B: 16,24,24
            },
        }

    def bench_config(
        self,
        vision: dict[str, int],
        llm: Any,
        vision_layers: int,
        llm_layers: int,
        vocab: int,
        video_token: int,
    ) -> Any:
        import transformers

        return getattr(transformers, self.config_class)(
            vision_config=self.bench_vision_config(vision, llm.hidden, vision_layers),
            text_config={
                **self.bench_text_config(llm),
                "vocab_size": vocab,
                "num_hidden_layers": llm_layers,
                "bos_token_id": None,
            },
            image_token_id=4,
            video_token_id=video_token,
            vision_start_token_id=6,
            vision_end_token_id=7,
        )

    def check_video_call(self, kwargs: dict[str, Any]) -> None:
        """Without `mm_token_type_ids`, transformers 5.23's `generate` silently gives the video 1-D positions
        (`_prepare_position_ids_for_generation` falls back; logits off by 0.11 on the tiny model) and Qwen2.5-VL's
        plain forward does too; a pruned prefill would inherit them. Refused instead."""
        if kwargs.get("mm_token_type_ids") is None:
            raise StopUnsupportedError(
                f"stop_hf: {self.display_name} video inputs need mm_token_type_ids (the processor returns them); "
                "without them transformers gives the video 1-D positions. Pass the processor's full output."
            )
        check_mm_token_types(self.display_name, kwargs["mm_token_type_ids"], kwargs.get("input_ids"))

    def bench_inputs(
        self, model: Any, frames: int, image_size: int, device: str, dtype: Any
    ) -> dict[str, Any]:
        if frames % self.temporal_patch:
            raise ValueError(f"{self.name} needs an even frame count (temporal patch {self.temporal_patch})")
        patch = self.patch_size
        grid = image_size // patch
        t = frames // self.temporal_patch
        n_video = t * (grid // 2) ** 2
        config = model.config
        span = (
            [config.vision_start_token_id]
            + [self.video_token_id(model)] * n_video
            + [config.vision_end_token_id]
        )
        pixels = torch.randn(t * grid * grid, 3 * 2 * patch * patch, dtype=dtype, device=device)
        return {
            "span": span,
            "n_video": n_video,
            "pixels": {
                "pixel_values_videos": pixels,
                "video_grid_thw": torch.tensor([[t, grid, grid]], device=device),
            },
            "token_types": [2 if token == self.video_token_id(model) else 0 for token in span],
        }


#: `mm_token_type_ids` value of a video token (0 text, 1 image), as the Qwen-VL processors and get_rope_index use it.
VIDEO_TOKEN_TYPE = 2


def check_mm_token_types(name: str, types: Any, input_ids: Any) -> None:
    """Raises `StopInputError` when `mm_token_type_ids` of a video call does not mark the video: transformers then
    silently gives the video 1-D positions (all zero) or wrong 3-D ones (marks off the placeholders)."""
    if not isinstance(types, torch.Tensor):
        return
    marked = types == VIDEO_TOKEN_TYPE
    if not bool(marked.any()):
        raise StopInputError(
            f"stop_hf: {name} mm_token_type_ids marks no video token (no entry is {VIDEO_TOKEN_TYPE}; "
            f"{'all zero' if not bool(types.any()) else 'values ' + str(sorted(types.unique().tolist()))}) although "
            "the call carries pixel_values_videos; transformers would silently give the video 1-D positions. Pass "
            "the processor's mm_token_type_ids unchanged"
        )
    if isinstance(input_ids, torch.Tensor) and types.shape == input_ids.shape:
        # (another shape: transformers' own placeholder-count check names it, patched as unpatched)
        video_id = input_ids[marked][0]
        placeholders = input_ids == video_id
        if not torch.equal(placeholders, marked):
            raise StopInputError(
                f"stop_hf: {name} mm_token_type_ids marks {int(marked.sum())} video tokens but input_ids hold "
                f"{int(placeholders.sum())} video placeholders (token {int(video_id)}), or at other positions; pass "
                "the processor's mm_token_type_ids unchanged"
            )
