"""LLaVA-OneVision: SigLIP 27x27 patches, bilinear pooling to 14x14, one image_newline appended per video.

Signals, all pooled exactly like the features (with the model's own `apply_pooling`):
- attention: mean attention received per patch at the saliency layer (default: the layer producing the features),
  recomputed from that layer's q/k in a pre-hook on its `self_attn`, in frame chunks.
- keys: that layer's keys averaged over heads.
- global_features: the pooled output of SigLIP's attention-pooling (MAP) head on the pre-projection hidden state, as
  the FastVID and SToP code compute it; HF LLaVA-OV checkpoints do not ship the head, so it is read alone from a SigLIP
  checkpoint (`stop_config.siglip_head`, see `stop_hf.siglip_head`). `global_feature: mean` (opt-in, warns once) takes
  the frame's mean pre-projection feature instead.
- with `saliency_source: map_head`, attention is the MAP head's probe attention (the original FastVID's saliency),
  pooled like the features.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from stop_hf import compat
from stop_hf.hooks import StopState, VideoRecord
from stop_hf.siglip_head import SiglipMapHead, load_siglip_head, map_head_use
from stop_hf.signals import attention_received, head_mean_keys, signal_dtype

from . import register_architecture
from .base import ArchAdapter, SignalBuffer

#: `global_feature: mean` warns once per process that it is not the paper's signal.
_MEAN_FEATURE_WARNED = False


def _warn_mean_feature_once() -> None:
    global _MEAN_FEATURE_WARNED
    if not _MEAN_FEATURE_WARNED:
        _MEAN_FEATURE_WARNED = True
        warnings.warn(
            "stop_config.global_feature='mean': FastVID segments the video by the frame-mean feature, which is not the "
            "paper's signal (SigLIP's attention-pooling head, global_feature='map_head', read from "
            "stop_config.siglip_head). On real SigLIP features the mean's cosines can sit near 1, so DySeg may not cut.",
            UserWarning,
            stacklevel=2,
        )


@dataclass(frozen=True)
class SiglipCapturePlan:
    """What the capture of one patched LLaVA-OV model fixes at patch time.

    side: SigLIP patches per frame side (27 at 384 px); saliency_layer: the encoder layer whose q/k are hooked, or
    None when no encoder signal is needed; head: SigLIP's MAP head when FastVID's signals need it.
    """

    backbone: Any
    side: int
    needs: frozenset[str]
    encoder_needs: frozenset[str]
    saliency_layer: int | None
    head: SiglipMapHead | None
    head_global: bool
    probe_saliency: bool


@dataclass
class SiglipSignalBuffer(SignalBuffer):
    """Adds the hooked layer's in-flight inputs and q/k projections (`projected`), reused by its post-hook."""

    projected: dict[str, Any] = field(default_factory=dict)


def _capture_global(
    state: StopState, plan: SiglipCapturePlan, module: Any, args: tuple, kwargs: dict
) -> None:
    """Pre-hook on the projector: the frame's global feature and, with `saliency_source: map_head`, the MAP head's
    probe attention as the saliency (the encoder layer's attention is then not captured)."""
    buffer = state.capturing()
    if buffer is None:
        return None
    # the pre-projection hidden state (frames, patches, H): the features LLaVA-OV projects
    features = kwargs.get("image_features", args[0] if args else None).detach()
    if plan.head is None:
        buffer.global_features.append(features.float().mean(dim=1))
        return None
    started = time.perf_counter()
    with torch.no_grad():
        pooled_output, probe_attention = plan.head(features.to(plan.head.probe.dtype))
    if plan.head_global:
        buffer.global_features.append(pooled_output.float())
    elif "global_features" in plan.needs:
        buffer.global_features.append(features.float().mean(dim=1))
    if plan.probe_saliency:
        buffer.attention.append(probe_attention.float())
    buffer.seconds += time.perf_counter() - started
    return None


@register_architecture
class LlavaOnevisionAdapter(ArchAdapter):
    name = "llava_onevision"
    model_class = "LlavaOnevisionForConditionalGeneration"
    model_types = ("llava_onevision",)
    lmms_model = "llava_onevision_stop"
    lmms_class = "LlavaOneVisionStop"
    default_pretrained = "llava-hf/llava-onevision-qwen2-7b-ov-hf"
    temporal_patch = 1
    # SigLIP-so400m/14 @384: 27x27 patches, 2x2 pooled to 14x14 = 196 tokens per frame (+1 newline per video)
    bench_vision = {"hidden_size": 1152, "intermediate_size": 4304, "num_attention_heads": 16, "layers": 26}
    bench_image_size = 384
    bench_tokens_per_frame = 196
    #: the frame size SigLIP sees
    frame_px = 384

    positions_1d = True
    # Reference position ids: every method's reference code renumbers (compact). For FastVID that is the SToP code,
    # which the paper's rows come from; the original FastVID code keeps original ids (position_mode: original).
    position_policy = {
        "visionzip": "compact",
        "holitom": "compact",
        "fastvid": "compact",
        "flashvid": "compact",
        "prunevid": "compact",
    }
    default_position = "original"

    signal_buffer = SiglipSignalBuffer

    def encoder_layers(self, model: Any) -> Any:
        return compat.siglip_encoder_layers(self.base_model(model).vision_tower)

    def saliency_layer_index(self, model: Any, configured: int | None) -> int:
        """The encoder layer whose attention is recomputed; default: the layer whose output are the features."""
        layers = len(self.encoder_layers(model))
        if configured is None:
            feature_layer = model.config.vision_feature_layer
            if not isinstance(feature_layer, int):
                raise ValueError(
                    f"vision_feature_layer={feature_layer!r} selects several layers; set stop_config.saliency_layer "
                    f"to one encoder layer index in [-{layers}, {layers - 1}]"
                )
            # hidden_states[k] is the output of layer k-1 (hidden_states[0] is the embeddings).
            index = feature_layer + layers if feature_layer < 0 else feature_layer - 1
            return max(index, 0)
        return self.check_layer_index(configured, layers, "layers")

    def map_head(self, model: Any, config: Any) -> SiglipMapHead:
        """SigLIP's MAP head for this model's tower, read from `stop_config.siglip_head`, on the tower's device."""
        vision = model.config.vision_config
        tower_param = next(self.base_model(model).vision_tower.parameters())
        return load_siglip_head(
            config.siglip_head,
            num_heads=vision.num_attention_heads,
            layer_norm_eps=vision.layer_norm_eps,
            hidden_size=vision.hidden_size,
            device=tower_param.device,
            dtype=signal_dtype(config.signal_dtype, tower_param.dtype),
        )

    def capture_plan(self, model: Any, state: StopState) -> SiglipCapturePlan:
        needs = frozenset(state.needs)
        # FastVID's signals: the MAP head's pooled output (global feature) and probe attention (original saliency).
        head_global, probe_saliency = map_head_use(state.config, needs)
        if "global_features" in needs and state.config.global_feature == "mean":
            _warn_mean_feature_once()
        encoder_needs = needs - {"global_features"} - ({"attention"} if probe_saliency else set())
        layer = None
        if encoder_needs & {"attention", "keys"}:
            layer = self.saliency_layer_index(model, state.config.saliency_layer)
        vision = model.config.vision_config
        return SiglipCapturePlan(
            backbone=self.base_model(model),
            side=vision.image_size // vision.patch_size,
            needs=needs,
            encoder_needs=encoder_needs,
            saliency_layer=layer,
            # loaded before any hook is installed: a missing head fails with nothing half-patched
            head=self.map_head(model, state.config) if head_global or probe_saliency else None,
            head_global=head_global,
            probe_saliency=probe_saliency,
        )

    def check_video_inputs(
        self, plan: SiglipCapturePlan, pixel_values_videos: torch.Tensor, args: tuple, kwargs: dict[str, Any]
    ) -> tuple[int, int]:
        """(videos, frames) of the (videos, frames, 3, H, W) pixels."""
        videos, frames = pixel_values_videos.shape[:2]
        return videos, frames

    def video_records(
        self, plan: SiglipCapturePlan, output: Any, inputs: tuple[int, int], buffer: SiglipSignalBuffer
    ) -> list[VideoRecord]:
        videos, frames = inputs
        pooled = compat.pooled_output(output)
        attention = keys = global_features = None
        if buffer.attention:
            attention = plan.backbone.apply_pooling(torch.cat(buffer.attention)[..., None])[..., 0]
        if buffer.keys:
            keys = plan.backbone.apply_pooling(torch.cat(buffer.keys))
        if buffer.global_features:
            global_features = torch.cat(buffer.global_features)
        pooled_side = math.ceil(plan.side / 2)
        return [
            VideoRecord(
                features=pooled[v],
                frames=frames,
                grid=(pooled_side, pooled_side),
                trailing_tokens=1,  # the image_newline: always kept, last token of the video
                attention=None if attention is None else attention[v * frames : (v + 1) * frames],
                keys=None if keys is None else keys[v * frames : (v + 1) * frames],
                global_features=None
                if global_features is None
                else global_features[v * frames : (v + 1) * frames],
                attention_patches=plan.side * plan.side,
            )
            for v in range(videos)
        ]

    def install_signal_hooks(self, model: Any, state: StopState, plan: SiglipCapturePlan) -> list[Any]:
        handles: list[Any] = []
        if plan.saliency_layer is not None:
            layer = self.encoder_layers(model)[plan.saliency_layer]
            handles += self._install_attention_capture(layer.self_attn, state, plan.encoder_needs)
        if "global_features" in plan.needs or plan.probe_saliency:
            handles.append(
                plan.backbone.multi_modal_projector.register_forward_pre_hook(
                    functools.partial(_capture_global, state, plan), with_kwargs=True
                )
            )
        return handles

    @staticmethod
    def _install_attention_capture(attn: Any, state: StopState, needs: frozenset[str]) -> list[Any]:
        """Hooks on one SigLIP attention module that turn its own q/k projections into the saliency signals.

        The projections' outputs are reused rather than recomputed (they are a third of the capture cost). Each
        captured output is tagged with the module that produced it: if `q_proj`/`k_proj` was swapped after patching
        (e.g. wrapped by an adapter), the stale capture is ignored and the projection is recomputed from the input.
        """

        def remember(name):
            def hook(module, args, output):
                buffer = state.capturing()
                if buffer is not None:
                    buffer.projected[name] = (module, output)

            return hook

        def start(module, args, kwargs):
            buffer = state.capturing()
            if buffer is not None:
                buffer.projected.clear()
                buffer.projected["hidden"] = kwargs.get("hidden_states", args[0] if args else None)

        def heads(module, projected, name, hidden):
            producer, output = projected.get(name, (None, None))
            if producer is not getattr(module, name):
                output = getattr(module, name)(hidden)
            return output.view(*hidden.shape[:-1], -1, module.head_dim).transpose(1, 2)  # (B, H, N, dh)

        def finish(module, args, kwargs, output):
            buffer = state.capturing()
            if buffer is None or "hidden" not in buffer.projected:
                return None
            started = time.perf_counter()
            projected = buffer.projected
            hidden = projected["hidden"]
            with torch.no_grad():
                keys = heads(module, projected, "k_proj", hidden)
                if "attention" in needs:
                    queries = heads(module, projected, "q_proj", hidden)
                    buffer.attention.append(
                        attention_received(
                            queries,
                            keys,
                            module.scale,
                            state.config.signal_chunk_frames,
                            signal_dtype(state.config.signal_dtype, queries.dtype),
                        )
                    )
                if "keys" in needs:
                    buffer.keys.append(head_mean_keys(keys))
            projected.clear()
            buffer.seconds += time.perf_counter() - started
            return None

        return [
            attn.q_proj.register_forward_hook(remember("q_proj")),
            attn.k_proj.register_forward_hook(remember("k_proj")),
            attn.register_forward_pre_hook(start, with_kwargs=True),
            attn.register_forward_hook(finish, with_kwargs=True),
        ]

    # ------------------------------------------------------------------ viz
    def seen_size(self, grid: tuple[int, int]) -> tuple[int, int]:
        return self.frame_px, self.frame_px

    def token_grid(self, frames: Any) -> tuple[int, int]:
        side = math.ceil(self.frame_px // 14 / 2)  # 27x27 patches pooled 2x2 (ceil) -> 14x14
        return side, side

    # ------------------------------------------------------------------ testing kit
    def tiny_config(self) -> Any:
        """SigLIP 384/14 geometry (729 patches -> 196 pooled tokens per frame), a 2-layer Qwen2 LLM."""
        from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

        from stop_hf.tiny import VOCAB_SIZE, token_id

        vision = SiglipVisionConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            patch_size=14,
            image_size=384,
            vision_use_head=False,
        )
        text = Qwen2Config(
            vocab_size=VOCAB_SIZE,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            eos_token_id=token_id("<|im_end|>"),
            pad_token_id=token_id("<pad>"),
        )
        return LlavaOnevisionConfig(
            vision_config=vision,
            text_config=text,
            image_token_index=token_id("<image>"),
            video_token_index=token_id("<video>"),
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
        )

    def tiny_processor(self, tokenizer: Any, chat_template: str) -> Any:
        from transformers import (
            LlavaOnevisionImageProcessor,
            LlavaOnevisionProcessor,
            LlavaOnevisionVideoProcessor,
        )

        template = chat_template.replace("{{ video_placeholder }}", "<video>").replace(
            "{{ image_placeholder }}", "<image>"
        )
        return LlavaOnevisionProcessor(
            image_processor=LlavaOnevisionImageProcessor(),
            video_processor=LlavaOnevisionVideoProcessor(),
            tokenizer=tokenizer,
            num_image_tokens=729,
            vision_feature_select_strategy="full",
            chat_template=template,
        )

    # ------------------------------------------------------------------ bench
    def bench_config(
        self,
        vision: dict[str, int],
        llm: Any,
        vision_layers: int,
        llm_layers: int,
        vocab: int,
        video_token: int,
    ) -> Any:
        from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

        return LlavaOnevisionConfig(
            vision_config=SiglipVisionConfig(
                hidden_size=vision["hidden_size"],
                intermediate_size=vision["intermediate_size"],
                num_hidden_layers=vision_layers,
                num_attention_heads=vision["num_attention_heads"],
                patch_size=14,
                image_size=self.bench_image_size,
                vision_use_head=False,
            ),
            text_config=Qwen2Config(
                vocab_size=vocab,
                hidden_size=llm.hidden,
                intermediate_size=llm.mlp,
                num_hidden_layers=llm_layers,
                num_attention_heads=llm.heads,
                num_key_value_heads=llm.kv_heads,
                max_position_embeddings=32768,
            ),
            image_token_index=4,
            video_token_index=video_token,
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
        )

    def bench_inputs(
        self, model: Any, frames: int, image_size: int, device: str, dtype: Any
    ) -> dict[str, Any]:
        pooled = -(-(image_size // 14) // 2)
        n_video = frames * pooled * pooled + 1  # + the image_newline
        pixels = torch.randn(1, frames, 3, image_size, image_size, dtype=dtype, device=device)
        return {
            "span": [self.video_token_id(model)] * n_video,
            "n_video": n_video,
            "pixels": {"pixel_values_videos": pixels},
        }

    def bench_method_kwargs(self, model: Any, folder: str) -> dict[str, dict[str, Any]]:
        """FastVID's MAP head: random weights of the tower's width (its cost is part of the signal time)."""
        from stop_hf.siglip_head import save_random_siglip_head

        vision = model.config.vision_config
        save_random_siglip_head(folder, vision.hidden_size, vision.intermediate_size)
        return {"fastvid": {"siglip_head": folder}}
