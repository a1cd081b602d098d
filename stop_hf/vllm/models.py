"""vLLM's own model and processor classes, subclassed to prune videos with stop-hf's pruners (loaded lazily by the
`vllm.general_plugins` entry point; see docs/vllm.md).

Without a stop config on the engine every override calls vLLM's own method unchanged. With one:
- processor: each video's placeholder count is `target_count` of its options and grid (fixed before encoding), and
  its options travel to the model as a per-video field `stop_hf_options`;
- encoder: hooks on the saliency layer compute the same signals as the HF path (stop_hf.signals), the pure pruner
  runs (stop_hf.pruners), the exact-count rule fits the count, and the kept embeddings are returned in placement
  order. On mRoPE models each embedding carries its representative's (t, h, w) offset in extra channels;
  `embed_input_ids` strips them and `forward` adds them to the placeholders' positions, which `get_mrope_input_positions`
  set to the video's start. Text after a video keeps vLLM's unpruned positions (max + 1 of the unpruned grid).
- tensor parallelism: the attention/keys partial sums over each rank's head shard are all-reduced before selection,
  so every rank keeps the same tokens.
"""

from __future__ import annotations

import collections
import json
import logging
import time
from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np
import torch
from vllm.distributed import get_tensor_model_parallel_world_size, tensor_model_parallel_all_reduce
from vllm.model_executor.models.interns1 import (
    InternS1DummyInputsBuilder,
    InternS1ForConditionalGeneration,
    InternS1MultiModalProcessor,
    InternS1ProcessingInfo,
)
from vllm.model_executor.models.llava_onevision import (
    LlavaOnevisionDummyInputsBuilder,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionMultiModalProcessor,
    LlavaOnevisionProcessingInfo,
)
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.model_executor.models.qwen2_vl import (
    Qwen2VLDummyInputsBuilder,
    Qwen2VLForConditionalGeneration,
    Qwen2VLMultiModalProcessor,
    Qwen2VLProcessingInfo,
)
from vllm.model_executor.models.qwen3_5 import (
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3_5MoeProcessingInfo,
    Qwen3_5ProcessingInfo,
)
from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMultiModalProcessor,
    Qwen3VLProcessingInfo,
)
from vllm.model_executor.models.qwen3_vl_moe import (
    Qwen3VLMoeForConditionalGeneration,
    Qwen3VLMoeProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import DictEmbeddingItems, EmbeddingItems
from vllm.multimodal.processing import PromptReplacement, PromptUpdateDetails

from ..pruners import PruneInput
from ..siglip_head import map_head_use
from ..signals import (
    attention_received,
    block_mean_2x2,
    head_mean_keys,
    segment_attention_received,
    unpermute_merge_units,
)
from .counts import (
    CONFIG_KEY,
    CONTENT_COUNT_METHODS,
    RULE_KEY,
    SERVED_ARCHITECTURES,
    ServeOptions,
    append_positions,
    fit_count,
    frame_counts,
    kept_frame_counts,
    placement_order,
    relative_mrope,
    report_entry,
    serve_options,
    served_fields,
    split_positions,
    target_count,
)
from .siglip import ServedSiglipHeadError, check_map_head, head_signals, served_head

logger = logging.getLogger("vllm.stop_hf")  # under vLLM's configured logger: shown with its INFO logs
FIELD = "stop_hf_options"


def _engine_options(model_config: Any) -> dict[str, Any] | None:
    """The engine's validated default (`check_engine_config` puts it in the multimodal processor kwargs), or None when
    the engine was started without a stop config."""
    kwargs = model_config.multimodal_config.mm_processor_kwargs or {}
    return kwargs if CONFIG_KEY in kwargs else None


# ---------------------------------------------------------------------------------------------------- processors
class _StopProcessorMixin:
    """Adds the per-video options field and the pruned placeholder counts to a vLLM multimodal processor."""

    arch: str = ""
    #: the model prunes every video of an encoder batch (requests mixed) at one saliency layer: the engine's
    one_saliency_layer = False

    def _stop_engine_defaults(self) -> dict[str, Any] | None:
        return _engine_options(self.info.ctx.model_config)

    def _stop_options(self, hf_kwargs: Mapping[str, object]) -> ServeOptions | None:
        defaults = self._stop_engine_defaults()
        if defaults is None:
            if CONFIG_KEY in hf_kwargs or RULE_KEY in hf_kwargs:
                raise ValueError(
                    f"mm_processor_kwargs.{CONFIG_KEY}: this engine was started without additional_config.stop_config;"
                    ' start it with one ("none" for no default pruning) to prune per request'
                )
            return None
        merged = {**defaults, **{k: v for k, v in hf_kwargs.items() if k in (CONFIG_KEY, RULE_KEY)}}
        hf_config = self.info.get_hf_config()
        try:
            options = served_fields(
                serve_options(merged[CONFIG_KEY], merged.get(RULE_KEY), self.arch), self.arch, hf_config
            )
            # SigLIP head: read once
            check_map_head(
                options.config, self.arch, getattr(hf_config, "vision_config", None), per_request=True
            )
            engine_layer = json.loads(defaults[CONFIG_KEY]).get("saliency_layer")
            if self.one_saliency_layer and options.active and options.config.saliency_layer != engine_layer:
                raise ValueError(
                    f"stop_config.saliency_layer={options.config.saliency_layer} differs from the engine's "
                    f"({engine_layer}): on {self.arch} the videos of one encoder batch are pruned at one layer; start "
                    "the engine with that saliency_layer in additional_config.stop_config"
                )
        except ServedSiglipHeadError:
            raise  # the HF path's message, for this request only
        except ValueError as exc:  # this request only
            raise ValueError(f"stop-hf: {exc}") from None
        return options

    def _apply_hf_processor_main(self, mm_items, hf_kwargs):  # type: ignore[override]
        """vLLM's processing (every path: LLaVA-OV processes videos one by one), without our keys reaching the HF
        processor, plus the per-video options field."""
        options = self._stop_options(hf_kwargs)
        if (
            options is not None
            and options.active
            and isinstance(mm_items.get("video"), (EmbeddingItems, DictEmbeddingItems))
        ):
            raise ValueError(
                f"stop-hf: stop_config.method={options.config.method!r} cannot prune precomputed video embeddings "
                "(video_embeds skip the vision tower, whose signals and the method's count need frames); send "
                'frames, or mm_processor_kwargs={"stop_config": "none"} for this request'
            )
        own = {k: v for k, v in hf_kwargs.items() if k not in (CONFIG_KEY, RULE_KEY)}
        mm = self.info.ctx.model_config.multimodal_config
        saved = mm.mm_processor_kwargs
        if saved and CONFIG_KEY in saved:  # vLLM merges the engine default into the HF processor's kwargs
            mm.mm_processor_kwargs = {
                k: v for k, v in saved.items() if k not in (CONFIG_KEY, RULE_KEY)
            } or None
        try:
            outputs = super()._apply_hf_processor_main(mm_items, own)  # type: ignore[misc]
        finally:
            mm.mm_processor_kwargs = saved
        if options is not None:
            videos = self._stop_num_videos(outputs)
            if videos:
                outputs[FIELD] = options.encode()[None].expand(videos, -1).clone()
        return outputs

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):  # type: ignore[override]
        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))  # type: ignore[misc]
        if FIELD in hf_inputs:
            fields[FIELD] = MultiModalFieldConfig.batched("video", keep_on_cpu=True)
        return fields

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):  # type: ignore[override]
        own = {k: v for k, v in hf_processor_mm_kwargs.items() if k not in (CONFIG_KEY, RULE_KEY)}
        updates = super()._get_prompt_updates(mm_items, own, out_mm_kwargs)  # type: ignore[misc]
        if self._stop_engine_defaults() is None:
            return updates
        out = []
        for update in updates:
            if update.modality == "video":
                update = PromptReplacement(
                    modality="video",
                    target=update.target,
                    replacement=partial(
                        self._stop_video_replacement, update.replacement, mm_items, out_mm_kwargs
                    ),
                )
            out.append(update)
        return out

    def _stop_video_replacement(self, original, mm_items, out_mm_kwargs, item_idx: int):
        tokens = original(item_idx)
        item = out_mm_kwargs["video"][item_idx]
        if FIELD not in item:
            return tokens
        options = ServeOptions.decode(item[FIELD].data)
        frames, grid, trailing = self._stop_video_shape(mm_items, item, item_idx)
        count = target_count(options, frames, grid) + trailing
        return [tokens[0]] * count


class StopQwen2_5_VLProcessor(_StopProcessorMixin, Qwen2_5_VLMultiModalProcessor):
    arch = "qwen2_5_vl"

    @staticmethod
    def _stop_num_videos(outputs) -> int:
        grid = outputs.get("video_grid_thw")
        return 0 if grid is None else int(grid.shape[0])

    def _stop_video_shape(self, mm_items, item, item_idx):
        t, h, w = (int(v) for v in item["video_grid_thw"].data.tolist())
        merge = self.info.get_hf_config().vision_config.spatial_merge_size
        return t, (h // merge, w // merge), 0


class StopQwen2VLProcessor(_StopProcessorMixin, Qwen2VLMultiModalProcessor):
    arch = "qwen2_vl"
    _stop_num_videos = staticmethod(StopQwen2_5_VLProcessor._stop_num_videos)
    _stop_video_shape = StopQwen2_5_VLProcessor._stop_video_shape


class StopLlavaOnevisionProcessor(_StopProcessorMixin, LlavaOnevisionMultiModalProcessor):
    arch = "llava_onevision"
    one_saliency_layer = True  # its tower hooks one layer per encoder batch

    @staticmethod
    def _stop_num_videos(outputs) -> int:
        pixels = outputs.get("pixel_values_videos")
        if pixels is None:
            return 0
        return len(pixels) if isinstance(pixels, list) else int(pixels.shape[0])

    def _stop_video_shape(self, mm_items, item, item_idx):
        frames = int(item["pixel_values_videos"].data.shape[0])
        vision = self.info.get_hf_config().vision_config
        side = -(-(vision.image_size // vision.patch_size) // 2)
        return frames, (side, side), 1


class StopQwen3VLProcessor(_StopProcessorMixin, Qwen3VLMultiModalProcessor):
    """Qwen3-VL: one `<t seconds><|vision_start|> video x k_t <|vision_end|>` group per temporal patch, each with the
    count its frame keeps (`frame_counts`); timestamps and wrappers stay, as in the HF patch."""

    arch = "qwen3_vl"
    _stop_num_videos = staticmethod(StopQwen2_5_VLProcessor._stop_num_videos)

    def _stop_video_replacement(self, original, mm_items, out_mm_kwargs, item_idx: int):
        details = original(item_idx)
        item = out_mm_kwargs["video"][item_idx]
        if FIELD not in item:
            return details
        options = ServeOptions.decode(item[FIELD].data)
        config = self.info.get_hf_config()
        t, h, w = (int(v) for v in item["video_grid_thw"].data.tolist())
        merge = config.vision_config.spatial_merge_size
        return self.get_video_repl(
            tokens_per_frame=frame_counts(options, t, (h // merge, w // merge)),
            timestamps=item["timestamps"].data,
            tokenizer=self.info.get_tokenizer(),
            vision_start_token_id=config.vision_start_token_id,
            vision_end_token_id=config.vision_end_token_id,
            video_token_id=config.video_token_id,
            select_token_id=True,
        )


# ---------------------------------------------------------------------------------------------------- models


def _options_per_video(kwargs: dict[str, Any], videos: int) -> list[ServeOptions | None]:
    field = kwargs.pop(FIELD, None)
    if field is None:
        return [None] * videos
    rows = list(field) if not isinstance(field, list) else field
    return [ServeOptions.decode(row) for row in rows]


def _is_pruned(feature: Any) -> bool:
    """Whether a prompt item is a video the encoder prunes (it then sends each kept token's offset from the video's
    start). Decided by the item's options, as the encoder decides, never by its count: a config that keeps every
    token (uniform 0.999 on a small grid) still sends offsets, which unpruned positions would double."""
    if feature.modality != "video":
        return False
    if feature.data is None:  # vLLM fills it from its caches before positions are computed
        raise RuntimeError("stop-hf: a video's processed data is missing; its positions cannot be placed")
    return FIELD in feature.data and ServeOptions.decode(feature.data[FIELD].data).active


def _all_reduce_heads(values: torch.Tensor, local_heads: int, tp: int) -> torch.Tensor:
    """A head-mean over this rank's shard -> the head-mean over all heads (every rank gets the same values)."""
    if tp == 1:
        return values
    return tensor_model_parallel_all_reduce(values * local_heads) / (local_heads * tp)


class _StopModelMixin:
    """Strips the position channels in `embed_input_ids` and applies them in `forward` (mRoPE models)."""

    uses_position_channels = True
    #: the prompt fixes each temporal patch's count (the exact rule then fits each temporal patch)
    per_frame_counts = False
    #: the multimodal kwarg with one entry per video (counts the videos when they carry no options)
    video_count_key = "video_grid_thw"

    def embed_multimodal(self, **kwargs: object):
        """vLLM's own without an engine stop config; else images pass unpruned and videos go to `_stop_videos`."""
        if self._stop_defaults is None:
            return super().embed_multimodal(**kwargs)  # type: ignore[misc]
        per_video = kwargs.get(self.video_count_key)
        options = _options_per_video(kwargs, 0 if per_video is None else len(per_video))  # type: ignore[arg-type]
        out: tuple[torch.Tensor, ...] = ()
        for modality, inputs in self._parse_and_validate_multimodal_inputs(**kwargs).items():  # type: ignore[attr-defined]
            if inputs is None:
                continue
            if modality in ("image", "images"):  # Qwen2-VL and InternVL spell them plural
                out += tuple(self._stop_image_embeds(inputs))
            elif modality in ("video", "videos"):
                out += tuple(self._stop_videos(inputs, options))  # type: ignore[attr-defined]
        return out

    def _stop_image_embeds(self, inputs: Any) -> list[torch.Tensor]:
        """Images pass unpruned (with empty position channels where the model uses them)."""
        embeds = self._process_image_input(inputs)  # type: ignore[attr-defined]
        return [append_positions(e, None) for e in embeds] if self.uses_position_channels else list(embeds)

    def _stop_setup(self, vllm_config: Any) -> None:
        self._stop_defaults = _engine_options(vllm_config.model_config)
        self._stop_pending: tuple[torch.Tensor, torch.Tensor] | None = None
        #: the last videos' reports, each with its kept `index` (placement order): read by tests and the bench
        self.stop_hf_reports: collections.deque[dict[str, Any]] = collections.deque(maxlen=64)
        if self._stop_defaults is not None:
            logger.info("stop-hf: pruning videos (engine default %s)", json.dumps(self._stop_defaults))

    def embed_input_ids(self, input_ids, multimodal_embeddings=None, *, is_multimodal=None):
        self._stop_pending = None
        if self._stop_defaults is None or not multimodal_embeddings or not self.uses_position_channels:
            return super().embed_input_ids(input_ids, multimodal_embeddings, is_multimodal=is_multimodal)
        stripped, offsets, corrected = [], [], []
        for embeds in multimodal_embeddings:
            values, offset, flag = split_positions(embeds)
            stripped.append(values)
            offsets.append(offset)
            corrected.append(flag)
        corrected_all = torch.cat(corrected)
        if bool(corrected_all.any()):
            where = is_multimodal.nonzero().squeeze(-1)
            self._stop_pending = (where[corrected_all.to(where.device)], torch.cat(offsets)[corrected_all])
        return super().embed_input_ids(input_ids, stripped, is_multimodal=is_multimodal)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        pending, self._stop_pending = self._stop_pending, None
        if pending is not None:
            where, offsets = pending
            # in place, in the runner's persistent positions buffer (rewritten every step): a CUDA-graph replay reads
            # its inputs from the captured addresses, so a corrected copy would be silently ignored there
            positions[:, where.to(positions.device)] += offsets.to(positions.device, positions.dtype).T
        return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)

    def _stop_prune_video(
        self,
        options: ServeOptions | None,
        features: torch.Tensor,
        frames: int,
        grid: tuple[int, int],
        signals,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One video's (T*N, D) features -> (kept embeddings in placement order, their flat source indices or None
        when unpruned)."""
        if options is None or not options.active:
            return features, None
        started = time.perf_counter()
        config = options.config
        pruner = config.build_pruner()
        x = PruneInput(
            features=features.reshape(frames, grid[0] * grid[1], -1),
            attention=signals.get("attention"),
            keys=signals.get("keys"),
            global_features=signals.get("global_features"),
            grid=grid,
            attention_patches=signals.get("attention_patches", grid[0] * grid[1]),
        )
        x.require(*pruner.needs, method=config.method)
        result = pruner(x)
        reference = result.index  # the method's own selection (HF's kept indices), before the count rule
        target = target_count(options, frames, grid)
        # the prompt's count per temporal patch (per-frame prompts) or for the whole video
        per_frame = frame_counts(options, frames, grid) if self.per_frame_counts else None
        changed, fit = 0, {}
        if options.count_rule == "exact":
            # content-dependent methods are fitted per temporal patch there; shape-determined ones are checked below
            per_patch = per_frame is not None and config.method in CONTENT_COUNT_METHODS
            result, changed = fit_count(result, x, pruner, per_frame if per_patch else target)
            fit = result.info["count_rule"]
        if result.index.numel() != target:
            raise RuntimeError(
                f"stop-hf: {config.method} kept {result.index.numel()} tokens but the prompt has {target} placeholders"
                f" for this video; set {RULE_KEY}='exact'"
            )
        if per_frame is not None:
            kept = kept_frame_counts(result.index, frames, grid[0] * grid[1])
            if kept != per_frame:
                raise RuntimeError(
                    f"stop-hf: {config.method} kept {kept} tokens per temporal patch but the prompt has {per_frame}"
                )
        order = placement_order(result, options.position_mode)
        entry = report_entry(
            options,
            frames * grid[0] * grid[1],
            target,
            changed,
            time.perf_counter() - started,
            trimmed=fit.get("trimmed", 0),
            added=fit.get("added", 0),
        )
        logger.info("stop-hf pruned video: %s", json.dumps(entry))
        self.stop_hf_reports.append(
            {**entry, "index": result.index[order].tolist(), "reference_index": reference.tolist()}
        )
        return result.embeds[order].to(features.dtype), result.index[order]


# ------------------------------------------------------------------ Qwen2.5-VL
class _StopQwenMixin(_StopModelMixin):
    """Qwen2-VL and Qwen2.5-VL: packed patches per temporal patch, 2x2 merge units, 3-D mRoPE."""

    windowed = True  # Qwen2.5-VL's window attention (the tower permutes merge units into window order)

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._stop_setup(vllm_config)

    def _stop_full_blocks(self) -> list[int]:
        if self.windowed:
            return [int(i) for i in self.visual.fullatt_block_indexes]
        return list(range(len(self.visual.blocks)))

    def _stop_window_index(self, grids) -> torch.Tensor:
        if self.windowed:
            return self.visual.prepare_encoder_metadata(grids)["window_index"]
        merge = self.visual.spatial_merge_size
        return torch.arange(sum(t * h * w for t, h, w in grids) // (merge * merge))

    def _stop_local_keys(self, attn: Any, x: torch.Tensor, heads: int) -> torch.Tensor:
        """(s, b, qkv) output of the block's qkv projection -> this rank's pre-rotary keys (s, heads, dh)."""
        if self.windowed:  # QKVParallelLinear: [q | k | v] of this rank's heads
            return x.reshape(x.shape[0], 3, heads, -1)[:, 1]
        return attn.split_qkv(x)[1][:, 0]  # Qwen2-VL's own split (gathers across ranks when sharded)

    def get_mrope_input_positions(self, input_tokens, mm_features):
        """vLLM's numbering, with a pruned video's placeholders all at the video's start (the encoder's offsets are
        added in `forward`) and the text after it where it would follow the unpruned video."""
        if self._stop_defaults is None:
            return super().get_mrope_input_positions(input_tokens, mm_features)
        return self._stop_positions(input_tokens, mm_features)

    def _stop_positions(self, input_tokens, mm_features):
        chunks: list[np.ndarray] = []
        next_start, st = 0, 0
        ordered = sorted(mm_features, key=lambda f: f.mm_position.offset)
        for (offset, t, h, w, t_factor), feature in zip(self.iter_mm_grid_thw(mm_features), ordered):
            text_len = offset - st
            chunks.append(np.broadcast_to(np.arange(text_len), (3, text_len)) + next_start)
            base = next_start + text_len
            grid = np.indices((t, h, w))
            if t_factor != 1.0:
                grid[0] = (grid[0] * t_factor).astype(np.int64)
            unpruned = grid.reshape(3, -1) + base
            length = feature.mm_position.length
            chunks.append(np.full((3, length), base, dtype=np.int64) if _is_pruned(feature) else unpruned)
            next_start = int(unpruned.max()) + 1
            st = offset + length
        if st < len(input_tokens):
            text_len = len(input_tokens) - st
            chunks.append(np.broadcast_to(np.arange(text_len), (3, text_len)) + next_start)
        positions = np.concatenate(chunks, axis=1).reshape(3, -1)
        # decoding continues after the unpruned numbering (as vLLM's max + 1), also when a pruned video ends the prompt
        following = max(int(positions.max()) + 1 if positions.size else 0, next_start)
        delta = following - len(input_tokens)
        return torch.from_numpy(np.ascontiguousarray(positions)), delta

    def _stop_videos(self, inputs: Any, options: list[ServeOptions | None]) -> list[torch.Tensor]:
        grids = inputs["video_grid_thw"].tolist()
        needs = set()
        for opt in options:
            if opt is not None and opt.active:
                needs |= set(opt.config.build_pruner().needs)
        # each video's saliency block; one tower pass serves them all (the encoder batches videos of requests with
        # different configs, so one batch may ask for several blocks: each gets its own hooks)
        blocks = [
            self._stop_block(opt.config.saliency_layer) if opt is not None and opt.active else None
            for opt in options
        ]
        captured: dict[int, dict[str, torch.Tensor]] = {b: {} for b in set(blocks) - {None}} if needs else {}
        handles = [handle for b, into in captured.items() for handle in self._stop_hooks(needs, b, into)]
        try:
            embeds = self._process_video_input(inputs)
        finally:
            for handle in handles:
                handle.remove()
        signals = {b: self._stop_signals(grids, into, needs) for b, into in captured.items()}
        seconds = inputs.get("second_per_grid_ts")
        tokens_per_second = getattr(self.config.vision_config, "tokens_per_second", 1.0)
        merge = self.visual.spatial_merge_size
        out = []
        for v, ((t, h, w), features) in enumerate(zip(grids, embeds)):
            grid = (h // merge, w // merge)
            per_video: dict[str, Any] = {k: s[v] for k, s in signals.get(blocks[v], {}).items()}
            if blocks[v] is not None:
                per_video["attention_patches"] = self._stop_attention_patches(blocks[v], h, w)
            kept, index = self._stop_prune_features(options[v], features, t, grid, per_video)
            if index is None:
                out.append(append_positions(kept, None))
                continue
            second = 1.0 if seconds is None else float(seconds[v])
            offsets = self._stop_offsets(options[v], index, t, grid, second * tokens_per_second)
            out.append(append_positions(kept, offsets))
        return out

    def _stop_prune_features(self, options, features, frames, grid, signals):
        """One video's encoder output -> (kept rows in placement order, their flat indices or None)."""
        return self._stop_prune_video(options, features, frames, grid, signals)

    def _stop_offsets(self, options, index, frames, grid, t_factor) -> torch.Tensor:
        """(M, 3) each kept token's (t, h, w) offset from the position its placeholders were given."""
        return relative_mrope(index, grid, t_factor)

    def _stop_block(self, layer: int | None) -> int:
        full = self._stop_full_blocks()
        depth = len(self.visual.blocks)
        if layer is None:
            return int(full[-1]) if full else depth - 1
        if not -depth <= layer < depth:
            raise ValueError(
                f"stop_config.saliency_layer={layer} must be in [-{depth}, {depth - 1}] (vision blocks)"
            )
        return layer % depth

    def _stop_attention_patches(self, block: int, h: int, w: int) -> int:
        if block in set(self._stop_full_blocks()):
            return h * w
        window = (self.visual.window_size // self.visual.patch_size) ** 2
        return min(h * w, window)

    def _stop_hooks(self, needs: set[str], block: int, captured: dict[str, torch.Tensor]) -> list[Any]:
        attn = self.visual.blocks[block].attn
        tp = 1 if self.use_data_parallel else get_tensor_model_parallel_world_size()
        heads = attn.num_attention_heads_per_partition
        handles = []

        if "keys" in needs:

            def keys_hook(module, args, output):
                x = output[0] if isinstance(output, tuple) else output  # (s, b, 3 * heads * dh)
                local = self._stop_local_keys(attn, x, heads)  # (s, heads, dh)
                keys = head_mean_keys(local.transpose(0, 1)[None])[0]  # (s, dh)
                captured["keys"] = _all_reduce_heads(keys, heads, tp)

            handles.append(attn.qkv.register_forward_hook(keys_hook))
        if "attention" in needs:

            def attention_hook(module, args, kwargs):
                query, key = kwargs["query"], kwargs["key"]  # (b, s, heads, dh), rotated
                cu_seqlens = kwargs["cu_seqlens"]
                received = segment_attention_received(query[0], key[0], cu_seqlens.cpu(), module.scale)
                captured["attention"] = _all_reduce_heads(received, heads, tp)

            handles.append(attn.attn.register_forward_pre_hook(attention_hook, with_kwargs=True))
        if "global_features" in needs:

            def merger_hook(module, args):
                captured["hidden"] = args[0].reshape(args[0].shape[0], -1).detach().float()

            # Qwen2.5-VL's merger is compiled (@support_torch_compile), whose __call__ skips the module's hooks: hook
            # its first op, `ln_q`, which receives the same input (Qwen3-VL's merger has none and is not compiled)
            merger = self.visual.merger
            handles.append(getattr(merger, "ln_q", merger).register_forward_pre_hook(merger_hook))
        return handles

    def _stop_signals(self, grids, captured, needs) -> dict[str, list[torch.Tensor]]:
        if not captured:
            return {}
        merge = self.visual.spatial_merge_size
        unit = merge * merge
        window_index = self._stop_window_index(grids)
        out: dict[str, list[torch.Tensor]] = {}
        for name, key in (("attention", "attention"), ("keys", "keys"), ("global_features", "hidden")):
            if key not in captured:
                continue
            values = unpermute_merge_units(captured[key].float(), window_index, unit)
            rows, offset = [], 0
            for t, h, w in grids:
                n = (h // merge) * (w // merge)
                span = values[offset : offset + t * n].reshape(t, n, *values.shape[1:])
                offset += t * n
                rows.append(span.mean(dim=1) if name == "global_features" else span)
            out[name] = rows
        return out


@MULTIMODAL_REGISTRY.register_processor(
    StopQwen2_5_VLProcessor, info=Qwen2_5_VLProcessingInfo, dummy_inputs=Qwen2_5_VLDummyInputsBuilder
)
class StopQwen2_5_VLForConditionalGeneration(_StopQwenMixin, Qwen2_5_VLForConditionalGeneration):
    windowed = True


@MULTIMODAL_REGISTRY.register_processor(
    StopQwen2VLProcessor, info=Qwen2VLProcessingInfo, dummy_inputs=Qwen2VLDummyInputsBuilder
)
class StopQwen2VLForConditionalGeneration(_StopQwenMixin, Qwen2VLForConditionalGeneration):
    windowed = False  # every block attends over a whole temporal patch


# ------------------------------------------------------------------ Qwen3-VL
class _StopQwen3Mixin(_StopQwenMixin):
    """Qwen3-VL: every block attends over one temporal patch (no windows); the encoder's rows are [main | deepstack
    levels]; each temporal patch is its own timestamped group whose mRoPE t id is the group's start position."""

    windowed = False
    per_frame_counts = True

    def _stop_local_keys(self, attn: Any, x: torch.Tensor, heads: int) -> torch.Tensor:
        return x.reshape(x.shape[0], 3, heads, -1)[
            :, 1
        ]  # QKVParallelLinear: [q | k | v] of this rank's heads

    def _stop_prune_features(self, options, features, frames, grid, signals):
        """The pruner sees the main embeddings (HF's pooler output); each kept token carries the deepstack rows of
        its representative (the HF patch's slicing of `deepstack_visual_embeds`), so the LLM's first layers get
        exactly the kept tokens' deepstack features."""
        width = self.visual_dim if self.use_deepstack else features.shape[-1]
        kept, index = self._stop_prune_video(options, features[:, :width], frames, grid, signals)
        if index is None:
            return features, None
        return torch.cat([kept, features[index.to(features.device), width:]], dim=-1), index

    def _stop_offsets(self, options, index, frames, grid, t_factor) -> torch.Tensor:
        # per-temporal-patch counts are checked in `_stop_prune_video`; t: the group's own start position
        return relative_mrope(index % (grid[0] * grid[1]), grid, 1.0)

    def _stop_positions(self, input_tokens, mm_features):
        """vLLM's Qwen3-VL numbering of the unpruned prompt (text sequential; a group's (1, h, w) grid from the
        position after its `<|vision_start|>`; the next text at max + 1), with a pruned video's placeholders all at
        their group's start (the encoder's (0, h, w) offsets are added in `forward`)."""
        config = self.config
        merge = config.vision_config.spatial_merge_size
        chunks: list[np.ndarray] = []
        next_start, st = 0, 0
        for feature in sorted(mm_features, key=lambda f: f.mm_position.offset):
            if feature.modality == "image":
                _, h, w = (int(v) for v in feature.data["image_grid_thw"].data.tolist())
                groups = [(feature.mm_position.offset, (h // merge) * (w // merge))]
            else:
                t, h, w = (int(v) for v in feature.data["video_grid_thw"].data.tolist())
                groups, offset = [], feature.mm_position.offset
                for _ in range(t):
                    begin = input_tokens.index(config.vision_start_token_id, offset)
                    end = input_tokens.index(config.vision_end_token_id, begin)
                    groups.append((begin + 1, end - begin - 1))
                    offset = end + 1
            gh, gw = h // merge, w // merge
            pruned = _is_pruned(feature)
            for start, count in groups:
                text_len = start - st
                chunks.append(np.broadcast_to(np.arange(text_len), (3, text_len)) + next_start)
                base = next_start + text_len
                if pruned:
                    chunks.append(np.full((3, count), base, dtype=np.int64))
                else:
                    chunks.append(np.indices((1, gh, gw)).reshape(3, -1) + base)
                next_start = base + max(gh, gw)
                st = start + count
        if st < len(input_tokens):
            text_len = len(input_tokens) - st
            chunks.append(np.broadcast_to(np.arange(text_len), (3, text_len)) + next_start)
        positions = np.concatenate(chunks, axis=1).reshape(3, -1)
        following = max(int(positions.max()) + 1 if positions.size else 0, next_start)
        return torch.from_numpy(np.ascontiguousarray(positions)), following - len(input_tokens)


@MULTIMODAL_REGISTRY.register_processor(
    StopQwen3VLProcessor, info=Qwen3VLProcessingInfo, dummy_inputs=Qwen3VLDummyInputsBuilder
)
class StopQwen3VLForConditionalGeneration(_StopQwen3Mixin, Qwen3VLForConditionalGeneration):
    pass


# ------------------------------------------------------------------ Qwen3-VL-MoE
class StopQwen3VLMoeProcessor(StopQwen3VLProcessor):
    """The dense model's processor (vLLM registers Qwen3VLMultiModalProcessor for the MoE model too); `arch` selects
    the MoE adapter's serving rules (the same per-temporal-patch groups)."""

    arch = "qwen3_vl_moe"


# vLLM's own registration (vllm/model_executor/models/qwen3_vl_moe.py): the Qwen3-VL processor and dummy inputs
# with the MoE processing info (it reads Qwen3VLMoeConfig). The vision tower, deepstack, positions and processing are
# the dense model's; only the LLM's MLP is sparse (per-token routing, no capacity limit), so the dense mixin applies
# unchanged, TP included: the tower's heads are sharded as in the dense model and the signals all-reduced the same.
@MULTIMODAL_REGISTRY.register_processor(
    StopQwen3VLMoeProcessor, info=Qwen3VLMoeProcessingInfo, dummy_inputs=Qwen3VLDummyInputsBuilder
)
class StopQwen3VLMoeForConditionalGeneration(_StopQwen3Mixin, Qwen3VLMoeForConditionalGeneration):
    pass


# ------------------------------------------------------------------ LLaVA-OneVision
@MULTIMODAL_REGISTRY.register_processor(
    StopLlavaOnevisionProcessor,
    info=LlavaOnevisionProcessingInfo,
    dummy_inputs=LlavaOnevisionDummyInputsBuilder,
)
class StopLlavaOnevisionForConditionalGeneration(_StopModelMixin, LlavaOnevisionForConditionalGeneration):
    uses_position_channels = (
        False  # 1-D positions: vLLM numbers the pruned prompt sequentially (HF's compact)
    )

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._stop_setup(vllm_config)

    video_count_key = "pixel_values_videos"

    def _stop_layers(self):
        return self.vision_tower.vision_model.encoder.layers

    def _stop_videos(self, inputs: Any, options: list[ServeOptions | None]) -> list[torch.Tensor]:
        pixels = inputs["pixel_values_videos"]
        frames = [len(v) for v in pixels] if isinstance(pixels, list) else [pixels.shape[1]] * pixels.shape[0]
        # per video: the pruner's needs and its MAP-head use (patches/llava_onevision.py `capture_plan`); the encoder
        # layer is hooked for the attention/keys of the videos that read it, the projector for the rest
        plans: list[tuple[set[str], bool, bool] | None] = []  # (needs, head_global, probe_saliency)
        encoder_needs: set[str] = set()
        configured = set()  # the saliency layers of the videos that read the encoder's attention/keys
        for opt in options:
            if opt is None or not opt.active:
                plans.append(None)
                continue
            needs = set(opt.config.build_pruner().needs)
            head_global, probe_saliency = map_head_use(opt.config, needs)
            plans.append((needs, head_global, probe_saliency))
            encoder = needs & ({"attention", "keys"} - ({"attention"} if probe_saliency else set()))
            if encoder:
                encoder_needs |= encoder
                configured.add(opt.config.saliency_layer)
        wants_hidden = any(plan is not None and ("global_features" in plan[0] or plan[2]) for plan in plans)
        layers = self._stop_layers()
        if len(configured) > 1:
            raise ValueError(
                f"stop-hf: videos of one batch ask for different saliency layers {sorted(configured)}"
            )
        layer = next(iter(configured), None)
        index = len(layers) - 1 if layer is None else layer % len(layers)
        captured: dict[str, torch.Tensor] = {}
        handles = self._stop_hooks(layers[index].self_attn, encoder_needs, captured) if encoder_needs else []
        if wants_hidden:

            def projector_hook(module, args):
                captured["hidden"] = args[0].detach()  # (frames, patches, H): the features LLaVA-OV projects

            handles.append(self.multi_modal_projector.register_forward_pre_hook(projector_hook))
        try:
            embeds = self._process_video_pixels(inputs)
        finally:
            for handle in handles:
                handle.remove()
        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size
        pooled = -(-side // 2)
        grid = (pooled, pooled)
        signals: dict[str, torch.Tensor] = {}
        if "attention" in captured:
            signals["attention"] = self.apply_pooling(captured["attention"][..., None])[..., 0]
        if "keys" in captured:
            signals["keys"] = self.apply_pooling(captured["keys"])
        out, start = [], 0
        embeds = list(embeds)
        for v, count in enumerate(frames):
            video = embeds[v].reshape(-1, embeds[v].shape[-1])
            grid_tokens, newline = video[:-1], video[-1:]
            per_video = {k: s[start : start + count] for k, s in signals.items()}
            plan = plans[v]
            if plan is not None and ("global_features" in plan[0] or plan[2]):
                per_video.update(
                    self._stop_global_signals(options[v], plan, captured["hidden"][start : start + count])
                )
            per_video["attention_patches"] = side * side
            start += count
            kept, _ = self._stop_prune_video(options[v], grid_tokens, count, grid, per_video)
            out.append(torch.cat([kept, newline]))
        return out

    def _stop_global_signals(
        self, options: ServeOptions, plan, hidden: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """One video's (frames, patches, H) pre-projection hidden state -> its global features (SigLIP's MAP head or
        the frame mean) and, with `saliency_source: map_head`, the head's probe attention pooled like the encoder's
        (patches/llava_onevision.py `_capture_global` / `video_records`). The head is the same on every TP rank (it
        sees the gathered hidden state), so every rank keeps the same tokens."""
        needs, head_global, probe_saliency = plan
        head = None
        if head_global or probe_saliency:
            head = served_head(
                options.config, self.config.vision_config, next(self.vision_tower.parameters())
            )
        features, probe = head_signals(head, hidden, head_global)
        out = {"global_features": features} if "global_features" in needs else {}
        if probe_saliency:
            out["attention"] = self.apply_pooling(probe[..., None])[..., 0]
        return out

    def _stop_hooks(self, self_attn: Any, needs: set[str], captured: dict[str, torch.Tensor]) -> list[Any]:
        tp = get_tensor_model_parallel_world_size()
        inner = self_attn.attn
        heads = inner.num_heads
        handles = []
        if needs & {"attention", "keys"}:

            def attention_hook(module, args, kwargs):
                query = kwargs.get("query", args[0] if args else None)
                key = kwargs.get("key", args[1] if len(args) > 1 else None)
                b, s = query.shape[:2]
                q = query.reshape(b, s, heads, -1).transpose(1, 2)
                k = key.reshape(b, s, heads, -1).transpose(1, 2)
                if "attention" in needs:
                    received = attention_received(q, k, module.scale)
                    captured["attention"] = _all_reduce_heads(received, heads, tp)
                if "keys" in needs:
                    captured["keys"] = _all_reduce_heads(head_mean_keys(k), heads, tp)

            handles.append(inner.register_forward_pre_hook(attention_hook, with_kwargs=True))
        return handles


# ------------------------------------------------------------------ Qwen3.5 (dense and MoE)
# vLLM 0.32's Qwen3.5 (vllm/model_executor/models/qwen3_5.py) reuses Qwen3-VL's processor (Qwen3VLMultiModalProcessor:
# one timestamped group per temporal patch), dummy inputs, vision tower (Qwen3_VisionTransformer: same block and
# attention modules), `embed_multimodal` and `get_mrope_input_positions`; it differs in the hybrid LLM (Gated-DeltaNet
# linear attention + full attention, which sees exactly the kept tokens, as the HF patch's "shortened" reference) and
# in having no deepstack (`use_deepstack` is False: the vision config has no `deepstack_visual_indexes`), so
# `_StopQwen3Mixin` prunes the main rows only. Its `embed_input_ids` and `forward` are its own (no deepstack buffers);
# the mixin wraps them the same way (channels stripped, offsets added to the positions in place).


class StopQwen3_5Processor(StopQwen3VLProcessor):
    arch = "qwen3_5"


class StopQwen3_5MoeProcessor(StopQwen3VLProcessor):
    arch = "qwen3_5_moe"


@MULTIMODAL_REGISTRY.register_processor(
    StopQwen3_5Processor, info=Qwen3_5ProcessingInfo, dummy_inputs=Qwen3VLDummyInputsBuilder
)
class StopQwen3_5ForConditionalGeneration(_StopQwen3Mixin, Qwen3_5ForConditionalGeneration):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    StopQwen3_5MoeProcessor, info=Qwen3_5MoeProcessingInfo, dummy_inputs=Qwen3VLDummyInputsBuilder
)
class StopQwen3_5MoeForConditionalGeneration(_StopQwen3Mixin, Qwen3_5MoeForConditionalGeneration):
    pass


# ------------------------------------------------------------------ InternVL (HF format, served by vLLM's InternS1)
class StopInternVLProcessor(_StopProcessorMixin, InternS1MultiModalProcessor):
    """InternVL: one `Frame{i}: <img> <video> x k_i </img>` group per frame, each with the count its frame keeps
    (`frame_counts`); the labels and wrappers stay, as in the HF patch (patches/internvl.py)."""

    arch = "internvl"
    one_saliency_layer = True  # its tower hooks one layer per encoder batch

    @staticmethod
    def _stop_num_videos(outputs) -> int:
        frames = outputs.get("video_num_patches")
        return 0 if frames is None else len(frames)

    def _stop_video_replacement(self, original, mm_items, out_mm_kwargs, item_idx: int):
        details = original(item_idx)
        item = out_mm_kwargs["video"][item_idx]
        if FIELD not in item:
            return details
        options = ServeOptions.decode(item[FIELD].data)
        frames = int(item["video_num_patches"].data)
        side = _internvl_side(self.info.get_hf_config())
        counts = torch.tensor(frame_counts(options, frames, (side, side)))
        if bool((counts == 0).any()):
            raise ValueError(
                f"stop-hf: {options.config.method} keeps no token of some frame ({counts.tolist()}); InternVL's prompt "
                "in vLLM needs at least one per frame: raise stop_config.retention"
            )
        video_token_id = int(item["video_token_id"].data)
        full = torch.tensor(details.full)
        # vLLM's own group text (labels, wrappers); each group's first k_t placeholders stay
        placeholder = full == video_token_id
        rank = placeholder.long().cumsum(0) - 1
        keep = ~placeholder | (rank % (side * side) < counts[(rank // (side * side)).clamp(0, frames - 1)])
        return PromptUpdateDetails.select_token_id(full[keep].tolist(), video_token_id)


def _internvl_side(config: Any) -> int:
    """LLM tokens per frame side: 448 px / 14 px patches / the 2x2 pixel shuffle = 16."""
    image, patch = config.vision_config.image_size, config.vision_config.patch_size
    image = image if isinstance(image, int) else image[0]
    patch = patch if isinstance(patch, int) else patch[0]
    return int(image // patch * config.downsample_ratio)


class _OneDPositions:
    """Below `_StopModelMixin` in the MRO: vLLM hands the (3, N) positions of its M-RoPE bookkeeping (rows equal, the
    encoder's offsets already added); the 1-D LLM reads row 0."""

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        if positions.dim() == 2:
            positions = positions[0]
        return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)  # type: ignore[misc]


@MULTIMODAL_REGISTRY.register_processor(
    StopInternVLProcessor, info=InternS1ProcessingInfo, dummy_inputs=InternS1DummyInputsBuilder
)
class StopInternVLForConditionalGeneration(_StopModelMixin, _OneDPositions, InternS1ForConditionalGeneration):
    """InternVL (`InternVLForConditionalGeneration`, which vLLM serves with its InternS1 class). Frames are 448x448
    images: InternViT (CLS + 32x32 patches) and a 2x2 pixel shuffle give 16x16 tokens per frame.

    Signals: the InternViT layer's attention (default: the last, whose output vLLM's features are), recomputed from its
    normed q/k in a pre-hook on the layer's attention kernel, CLS dropped, averaged per 2x2 block; `attention_patches`
    1025 (the HF patch's mu_s rule). InternViT is not sharded by tensor parallelism (every rank holds all heads), so
    every rank computes the same signals. Positions: HF's original 1-D positions. With a stop config the engine keeps
    per-request positions (`check_engine_config` declares an M-RoPE section on the top-level config): each group's
    placeholders sit at the group's original first position, the encoder's offsets (n within the frame) are added in
    `forward`, text after a group keeps its original position and decoding continues after the unpruned numbering."""

    supports_mrope = True  # vLLM's per-request position bookkeeping; only turned on by a stop config
    per_frame_counts = True

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._stop_setup(vllm_config)
        self._stop_side = _internvl_side(self.config)

    def get_mrope_input_positions(self, input_tokens, mm_features):
        """(3, L) equal rows: the unpruned prompt's 1-D numbering (HF's original positions), with each pruned group's
        placeholders at its first original position; and the decode delta (max + 1 - L)."""
        n = self._stop_side**2
        starts, counts = [], []
        for feature in mm_features:
            if feature.modality != "video" or FIELD not in feature.data:
                continue
            options = ServeOptions.decode(feature.data[FIELD].data)
            if not options.active:  # unpruned: vLLM's own numbering (the encoder adds no offsets)
                continue
            frames = int(feature.data["video_num_patches"].data)
            placed = feature.mm_position
            embeds = (
                np.arange(placed.length) if placed.is_embed is None else placed.is_embed.nonzero().numpy()
            )
            embeds = embeds.reshape(-1) + placed.offset
            kept = np.asarray(frame_counts(options, frames, (self._stop_side, self._stop_side)))
            starts.append(embeds[np.concatenate([[0], np.cumsum(kept)[:-1]])])
            counts.append(kept)
        length = len(input_tokens)
        positions = np.arange(length, dtype=np.int64)
        if starts:
            start, kept = np.concatenate(starts), np.concatenate(counts)
            order = np.argsort(start)
            start, kept = start[order], kept[order]
            dropped = np.cumsum(n - kept)  # tokens dropped up to and including each group
            after = np.searchsorted(
                start + kept, positions, side="right"
            )  # groups ending at or before each token
            positions = positions + np.concatenate([[0], dropped])[after]
            group = np.repeat(
                np.arange(start.size), kept
            )  # every placeholder: its group's first original position
            members = start[group] + np.arange(group.size) - np.repeat(np.cumsum(kept) - kept, kept)
            positions[members] = start[group] + np.concatenate([[0], dropped[:-1]])[group]
        following = int(positions.max()) + 1 if length else 0
        return torch.from_numpy(np.broadcast_to(positions, (3, length)).copy()), following - length

    video_count_key = "video_num_patches"

    def _stop_image_embeds(self, inputs: Any) -> list[torch.Tensor]:
        return [append_positions(e, None) for e in self._process_vision_input(inputs)]

    def _stop_videos(self, inputs: Any, options: list[ServeOptions | None]) -> list[torch.Tensor]:
        if inputs["type"] != "pixel_values_videos":
            if any(opt is not None and opt.active for opt in options):
                raise ValueError(
                    "stop-hf: pre-computed video embeddings cannot be pruned (no encoder signals)"
                )
            return [append_positions(e, None) for e in inputs["data"]]
        active = [opt for opt in options if opt is not None and opt.active]
        needs: set[str] = set()
        for opt in active:
            needs |= set(opt.config.build_pruner().needs)
            if opt.config.saliency_source != "encoder":
                raise ValueError("stop_config.saliency_source: only 'encoder' is served by the vLLM plugin")
        layers = self.vision_tower.encoder.layer
        configured = {opt.config.saliency_layer for opt in active}
        if len(configured) > 1:
            raise ValueError(
                f"stop-hf: videos of one batch ask for different saliency layers {sorted(configured)}"
            )
        layer = next(iter(configured), None)
        if layer is not None and not -len(layers) <= layer < len(layers):
            raise ValueError(
                f"stop_config.saliency_layer={layer} must be in [-{len(layers)}, {len(layers) - 1}] (InternViT layers)"
            )
        index = len(layers) - 1 if layer is None else layer % len(layers)
        captured: dict[str, torch.Tensor] = {}
        handles = self._stop_hooks(layers[index].attention, needs, captured) if needs else []
        try:
            embeds = self._process_vision_input(inputs)
        finally:
            for handle in handles:
                handle.remove()
        side = self._stop_side
        signals: dict[str, torch.Tensor] = {}
        for name in ("attention", "keys"):
            if name in captured:
                signals[name] = block_mean_2x2(
                    captured[name][:, 1:], 2 * side
                )  # CLS dropped, as the features
        if "hidden" in captured:
            signals["global_features"] = captured["hidden"][:, 1:].mean(dim=1)
        frames = [int(t) for t in inputs["num_patches"]]
        out, start = [], 0
        for v, (count, features) in enumerate(zip(frames, embeds)):
            per_video = {k: s[start : start + count] for k, s in signals.items()}
            per_video["attention_patches"] = (2 * side) ** 2 + 1  # the keys of one softmax, CLS included
            start += count
            features = features.reshape(-1, features.shape[-1])
            kept, kept_index = self._stop_prune_video(options[v], features, count, (side, side), per_video)
            if kept_index is None:
                out.append(append_positions(kept, None))
                continue
            within = (kept_index % (side * side))[:, None].expand(
                -1, 3
            )  # offset from the group's first position
            out.append(append_positions(kept, within))
        return out

    def _stop_hooks(self, attention: Any, needs: set[str], captured: dict[str, torch.Tensor]) -> list[Any]:
        inner = attention.attn  # MMEncoderAttention(q, k, v): q/k projected and normed, (B, S, heads * dh)
        heads = attention.num_heads
        handles = []
        if needs & {"attention", "keys"}:

            def attention_hook(module, args, kwargs):
                query = kwargs.get("query", args[0] if args else None)
                key = kwargs.get("key", args[1] if len(args) > 1 else None)
                b, s = query.shape[:2]
                q = query.reshape(b, s, heads, -1).transpose(1, 2)
                k = key.reshape(b, s, heads, -1).transpose(1, 2)
                if "attention" in needs:
                    captured["attention"] = attention_received(q, k, attention.scale)
                if "keys" in needs:
                    captured["keys"] = head_mean_keys(k)

            handles.append(inner.register_forward_pre_hook(attention_hook, with_kwargs=True))
        if "global_features" in needs:

            def tower_hook(module, args, output):
                captured["hidden"] = output.detach().float()

            handles.append(self.vision_tower.register_forward_hook(tower_hook))
        return handles


assert set(SERVED_ARCHITECTURES) == {
    "Qwen2_5_VLForConditionalGeneration",
    "Qwen2VLForConditionalGeneration",
    "LlavaOnevisionForConditionalGeneration",
    "Qwen3VLForConditionalGeneration",
    "Qwen3VLMoeForConditionalGeneration",
    "InternVLForConditionalGeneration",
    "Qwen3_5ForConditionalGeneration",
    "Qwen3_5MoeForConditionalGeneration",
}
