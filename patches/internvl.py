"""InternVL (InternVL3 / 3.5 checkpoints in HF format): frames as 448x448 images through InternViT (14 px patches,
a CLS token plus 32x32 patches), a pixel-shuffle projector that fuses each 2x2 block of patches into one LLM token
(1024 -> 256 tokens per frame), and a 1-D-position LLM (see docs/internvl.md).

The pruner's view of one video: T frames of a 16x16 grid, raster order, exactly the order the projector emits.

Layout: the processor writes one group per frame, `Frame{i}: <img><IMG_CONTEXT> x 256</img>`, joined by newlines.
The model receives frames as images: video pixels come as `pixel_values` and are encoded by `get_image_features`
(`video_features_method`, `video_pixels_arg`), and every group's tokens are `image_token_id`. Only those context
tokens are pruned; the `Frame{i}:` labels and the `<img>`/`</img>` wrappers are text and always stay. Since the
groups are separated by text, `position_mode='compact'` is refused (`compact_positions = False`): a kept token keeps
its original 1-D position.

Videos: the model's inputs do not say where one video ends and the next begins (nor an image from a frame), so the
capture records every frame on its own and the hooks join the frames of one batch row, in prompt order, into one
video (`join_frames`); generate's pre-encoded frames (`mm_encoder_outputs['image']`) are found the same way. Two
tiles in one group (a multi-tile image) are refused.

Signals: the attention of the InternViT layer the features come from (`vision_feature_layer`, default the last),
recomputed from its q/k in a pre-hook on that layer's attention, over the CLS token and the 1024 patches of each
frame. The attention each patch receives is averaged over the 2x2 block its LLM token fuses; the keys likewise.
`attention_patches` is the 1025 keys of that softmax (`mu_s * 729 / 1025`).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from stop_hf import compat
from stop_hf.hooks import StopState, StopUnsupportedError, VideoRecord
from stop_hf.siglip_head import refuse_map_head
from stop_hf.signals import attention_received, block_mean_2x2, head_mean_keys, signal_dtype

from . import register_architecture
from .base import ArchAdapter, SignalBuffer
from .qwen3_vl import QWEN3_8B_LLM


@dataclass(frozen=True)
class InternVLCapturePlan:
    """What the capture of one patched InternVL model fixes at patch time.

    layer_index: the InternViT layer whose attention is recomputed; side: patches per frame side (32); cls: whether
    the features drop the CLS token (`vision_feature_select_strategy='default'`); tokens: LLM tokens per frame.
    """

    needs: frozenset[str]
    layer_index: int
    side: int
    cls: bool
    tokens: int


def _capture_layer_attention(
    state: StopState, plan: InternVLCapturePlan, module: Any, args: tuple, kwargs: dict
) -> None:
    """Pre-hook on one InternViT layer's `attention`: the mean attention each token receives over all queries and
    heads of its frame, and the head-mean keys, both (frames, 1 + side^2)."""
    buffer = state.capturing()
    if buffer is None:
        return None
    started = time.perf_counter()
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    with torch.no_grad():
        frames, length, _ = hidden.shape
        heads, head_dim = module.num_heads, module.head_dim

        def split(states):
            return states.reshape(frames, length, heads, head_dim).transpose(1, 2)  # (T, H, S, dh)

        keys = split(module.k_norm(module.k_proj(hidden)))
        if "keys" in plan.needs:
            buffer.keys.append(head_mean_keys(keys))
        if "attention" in plan.needs:
            queries = split(module.q_norm(module.q_proj(hidden)))
            buffer.attention.append(
                attention_received(
                    queries,
                    keys,
                    module.scale,
                    state.config.signal_chunk_frames,
                    signal_dtype(state.config.signal_dtype, queries.dtype),
                )
            )
    buffer.seconds += time.perf_counter() - started
    return None


@register_architecture
class InternVLAdapter(ArchAdapter):
    name = "internvl"
    model_class = "InternVLForConditionalGeneration"
    model_types = ("internvl",)
    lmms_model = "internvl_stop"
    lmms_class = "InternVLStop"
    default_pretrained = "OpenGVLab/InternVL3_5-8B-HF"
    display_name: ClassVar[str] = "InternVL"
    temporal_patch = 1
    positions_1d = True
    compact_positions = False  # frame groups are separated by their labels: a video is not one run of tokens
    default_position = "original"
    video_features_method = "get_image_features"
    video_pixels_arg = "pixel_values"
    join_frames = True
    #: frame side in pixels and LLM tokens per frame side (448 px, 14 px patches, 2x2 pixel shuffle)
    frame_px: ClassVar[int] = 448
    # InternViT-300M of InternVL3.5-8B: 1024 wide, 24 layers; 448x448 -> 1024 patches -> 256 tokens per frame
    bench_vision: ClassVar[dict[str, int]] = {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "layers": 24,
    }
    bench_image_size = 448
    bench_tokens_per_frame = 256
    # LLM of InternVL3.5-8B (Qwen3-8B): hidden 4096, 32 heads of 128, 8 KV heads, MLP 12288, 36 layers
    bench_llm: ClassVar[dict[str, int]] = QWEN3_8B_LLM

    def video_token_id(self, model: Any) -> int:
        return int(model.config.image_token_id)

    def vision_module(self, model: Any) -> Any:
        return self.base_model(model).vision_tower

    def vision_layers(self, model: Any) -> Any:
        return self.vision_module(model).encoder.layer

    def saliency_layer_index(self, model: Any, configured: int | None) -> int:
        """The InternViT layer whose attention is recomputed; default: the layer whose output the features are taken
        from (`vision_feature_layer`: -1 the last; k >= 1 the output of layer k - 1)."""
        layers = len(self.vision_layers(model))
        if configured is not None:
            return self.check_layer_index(configured, layers, "layers")
        feature_layer = model.config.vision_feature_layer
        if not isinstance(feature_layer, int) or feature_layer == 0 or not -layers <= feature_layer <= layers:
            raise ValueError(
                f"stop_hf: InternVL vision_feature_layer={feature_layer!r} is not supported; allowed: one layer, "
                f"-{layers} .. -1 or 1 .. {layers} (the embeddings, 0, carry no attention)"
            )
        return layers + feature_layer if feature_layer < 0 else feature_layer - 1

    def capture_plan(self, model: Any, state: StopState) -> InternVLCapturePlan:
        needs = frozenset(state.needs)
        refuse_map_head(state.config, needs, self.display_name)
        config = model.config
        vision = config.vision_config
        image = vision.image_size if isinstance(vision.image_size, int) else vision.image_size[0]
        patch = vision.patch_size if isinstance(vision.patch_size, int) else vision.patch_size[0]
        side = image // patch
        if config.downsample_ratio != 0.5 or side % 2:
            raise StopUnsupportedError(
                f"stop_hf: InternVL with downsample_ratio={config.downsample_ratio} and {side}x{side} patches is not "
                "supported; allowed: downsample_ratio 0.5 (2x2 pixel shuffle) over an even patch grid"
            )
        return InternVLCapturePlan(
            needs=needs,
            layer_index=self.saliency_layer_index(model, state.config.saliency_layer),
            side=side,
            cls=config.vision_feature_select_strategy == "default",
            tokens=(side // 2) ** 2,
        )

    def has_video(self, kwargs: dict[str, Any]) -> bool:
        """Frames come as `pixel_values`, or pre-encoded by generate as `mm_encoder_outputs['image']`."""
        encoded = kwargs.get(compat.MM_ENCODER_OUTPUTS_KWARG) or {}
        return kwargs.get(self.video_pixels_arg) is not None or encoded.get("image") is not None

    def check_video_inputs(
        self, plan: InternVLCapturePlan, pixel_values: torch.Tensor, args: tuple, kwargs: dict[str, Any]
    ) -> int:
        """The number of frames (tiles) of this call: (frames, 3, H, W) pixels."""
        if pixel_values.dim() != 4:
            raise ValueError(
                f"stop_hf: InternVL pixel_values must be (frames, 3, H, W); got shape {tuple(pixel_values.shape)}"
            )
        return int(pixel_values.shape[0])

    def video_records(
        self, plan: InternVLCapturePlan, output: Any, inputs: int, buffer: SignalBuffer
    ) -> list[VideoRecord]:
        """One record per frame (`join_frames`: the hooks join the frames of one row into its video)."""
        pooled = compat.pooled_output(output)  # (frames, tokens, D)
        start = 1 if plan.cls else 0
        attention = keys = global_features = None
        if buffer.attention:
            attention = block_mean_2x2(buffer.attention[-1][:, start:], plan.side)
        if buffer.keys:
            keys = block_mean_2x2(buffer.keys[-1][:, start:], plan.side)
        if "global_features" in plan.needs:
            global_features = compat.last_hidden_state(output)[:, start:].detach().float().mean(dim=1)

        def frame(values: torch.Tensor | None, index: int) -> torch.Tensor | None:
            return None if values is None else values[index : index + 1]

        return [
            VideoRecord(
                features=pooled[index],
                frames=1,
                grid=(plan.side // 2, plan.side // 2),
                attention=frame(attention, index),
                keys=frame(keys, index),
                global_features=frame(global_features, index),
                attention_patches=plan.side * plan.side + start,  # the keys of one softmax, CLS included
            )
            for index in range(inputs)
        ]

    def install_signal_hooks(self, model: Any, state: StopState, plan: InternVLCapturePlan) -> list[Any]:
        if not plan.needs & {"attention", "keys"}:
            return []
        attention = self.vision_layers(model)[plan.layer_index].attention
        hook = functools.partial(_capture_layer_attention, state, plan)
        return [attention.register_forward_pre_hook(hook, with_kwargs=True)]

    # ------------------------------------------------------------------ viz
    def seen_size(self, grid: tuple[int, int]) -> tuple[int, int]:
        return self.frame_px, self.frame_px

    def token_grid(self, frames: Any) -> tuple[int, int]:
        """Every frame is resized to 448x448: 16x16 tokens."""
        side = self.frame_px // 14 // 2
        return side, side

    # ------------------------------------------------------------------ testing kit
    def tiny_config(self) -> Any:
        """InternViT geometry (448 px, 14 px patches, CLS + 32x32 patches, 2x2 pixel shuffle -> 256 tokens per
        frame), two layers each; a 2-layer Qwen2 LLM."""
        from transformers import InternVLConfig

        from stop_hf.tiny import VOCAB_SIZE, token_id

        return InternVLConfig(
            vision_config={
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "image_size": [448, 448],
                "patch_size": [14, 14],
            },
            text_config={
                "model_type": "qwen2",
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "max_position_embeddings": 32768,
                "vocab_size": VOCAB_SIZE,
                "eos_token_id": token_id("<|im_end|>"),
                "pad_token_id": token_id("<pad>"),
                "bos_token_id": None,
            },
            image_token_id=token_id("<IMG_CONTEXT>"),
            image_seq_length=256,
            downsample_ratio=0.5,
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",
        )

    def tiny_processor(self, tokenizer: Any, chat_template: str) -> Any:
        """InternVL's processor around the offline tokenizer, with InternVL's named image tokens."""
        import transformers

        from stop_hf.tiny import build_tokenizer

        tokenizer = build_tokenizer(
            start_image_token="<img>",
            end_image_token="</img>",
            context_image_token="<IMG_CONTEXT>",
            video_token="<video>",
        )
        template = chat_template.replace("{{ video_placeholder }}", "<video>\n").replace(
            "{{ image_placeholder }}", "<IMG_CONTEXT>\n"
        )
        size = {"height": self.frame_px, "width": self.frame_px}
        return transformers.InternVLProcessor(
            image_processor=transformers.GotOcr2ImageProcessor(size=size, crop_to_patches=False),
            video_processor=transformers.InternVLVideoProcessor(size=size),
            tokenizer=tokenizer,
            image_seq_length=256,
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
        from transformers import InternVLConfig

        return InternVLConfig(
            vision_config={
                "hidden_size": vision["hidden_size"],
                "intermediate_size": vision["intermediate_size"],
                "num_hidden_layers": vision_layers,
                "num_attention_heads": vision["num_attention_heads"],
                "image_size": [self.frame_px, self.frame_px],
                "patch_size": [14, 14],
            },
            text_config={
                "model_type": "qwen3",
                "hidden_size": llm.hidden,
                "intermediate_size": llm.mlp,
                "num_hidden_layers": llm_layers,
                "num_attention_heads": llm.heads,
                "num_key_value_heads": llm.kv_heads,
                "head_dim": llm.hidden // llm.heads,
                "max_position_embeddings": 32768,
                "vocab_size": vocab,
                "bos_token_id": None,
            },
            image_token_id=video_token,
            image_seq_length=256,
            downsample_ratio=0.5,
        )

    def bench_inputs(
        self, model: Any, frames: int, image_size: int, device: str, dtype: Any
    ) -> dict[str, Any]:
        """One `Frame{i}: <img> ctx x 256 </img>\\n` group per frame (label and wrappers stand in as 5 text tokens)."""
        per_frame = (image_size // 14 // 2) ** 2
        group = [10, 11, 6, *[self.video_token_id(model)] * per_frame, 7, 12]
        pixels = torch.randn(frames, 3, image_size, image_size, dtype=dtype, device=device)
        return {"span": group * frames, "n_video": frames * per_frame, "pixels": {"pixel_values": pixels}}
