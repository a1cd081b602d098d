"""LLaVA-OneVision: SigLIP 27x27 patches, bilinear pooling to 14x14, one image_newline appended per video.

Signals, all pooled exactly like the features (with the model's own `apply_pooling`):
- attention: mean attention received per patch at the saliency layer (default: the layer producing the features),
  recomputed from that layer's q/k in a pre-hook on its `self_attn`, in frame chunks.
- keys: that layer's keys averaged over heads.
- global_features: the frame's mean pre-projection feature. FastVID used SigLIP's attention-pooling (MAP) head, which
  HF LLaVA-OV checkpoints do not ship; the mean feature is the closest head-free frame descriptor.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from stop_hf.hooks import StopState, VideoRecord, wrap_method
from stop_hf.signals import attention_received, head_mean_keys

from .base import ArchAdapter


class LlavaOnevisionAdapter(ArchAdapter):
    name = "llava_onevision"
    positions_1d = True
    # Reference position ids: VisionZip/HoliTom/FlashVID/PruneVid renumber (compact), FastVID keeps the originals.
    position_policy = {
        "visionzip": "compact",
        "holitom": "compact",
        "fastvid": "original",
        "flashvid": "compact",
        "prunevid": "compact",
    }
    default_position = "original"

    def encoder_layers(self, model: Any) -> Any:
        tower = self.base_model(model).vision_tower
        return getattr(tower, "vision_model", tower).encoder.layers  # transformers 5.x dropped the wrapper

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

    def install_capture(self, model: Any, state: StopState) -> list[Any]:
        base = self.base_model(model)
        vision = model.config.vision_config
        side = vision.image_size // vision.patch_size
        pooled_side = math.ceil(side / 2)
        needs = set(state.needs)
        handles: list[Any] = []

        def make_wrapper(original):
            def get_video_features(pixel_values_videos, *args, **kwargs):
                buffer = {"attention": [], "keys": [], "global": [], "seconds": 0.0, "projected": {}}
                token = state.start_capture(buffer)  # this call's buffer: concurrent calls never share one
                try:
                    output = original(pixel_values_videos, *args, **kwargs)
                finally:
                    state.stop_capture(token)
                pooled = output.pooler_output if hasattr(output, "pooler_output") else output[1]
                videos, frames = pixel_values_videos.shape[:2]
                started = time.perf_counter()
                attention = keys = global_features = None
                if buffer["attention"]:
                    attention = base.apply_pooling(torch.cat(buffer["attention"])[..., None])[..., 0]
                if buffer["keys"]:
                    keys = base.apply_pooling(torch.cat(buffer["keys"]))
                if buffer["global"]:
                    global_features = torch.cat(buffer["global"])
                seconds = buffer["seconds"] + time.perf_counter() - started
                records = [
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
                        attention_patches=side * side,
                        signal_seconds=seconds / videos,
                    )
                    for v in range(videos)
                ]
                state.set_encoded(records)
                return output

            return get_video_features

        handles.append(wrap_method(base, "get_video_features", make_wrapper))

        if needs & {"attention", "keys"}:
            layer = self.encoder_layers(model)[self.saliency_layer_index(model, state.config.saliency_layer)]
            handles += self._install_attention_capture(layer.self_attn, state, needs)

        if "global_features" in needs:

            def capture_global(module, args, kwargs):
                buffer = state.capturing()
                if buffer is not None:
                    features = kwargs.get("image_features", args[0] if args else None)
                    buffer["global"].append(features.detach().float().mean(dim=1))
                return None

            handles.append(
                base.multi_modal_projector.register_forward_pre_hook(capture_global, with_kwargs=True)
            )
        return handles

    @staticmethod
    def _install_attention_capture(attn: Any, state: StopState, needs: set[str]) -> list[Any]:
        """Hooks on one SigLIP attention module that turn its own q/k projections into the saliency signals.

        The projections' outputs are reused rather than recomputed (they are a third of the capture cost). Each
        captured output is tagged with the module that produced it: if `q_proj`/`k_proj` was swapped after patching
        (e.g. wrapped by an adapter), the stale capture is ignored and the projection is recomputed from the input.
        """

        def remember(name):
            def hook(module, args, output):
                buffer = state.capturing()
                if buffer is not None:
                    buffer["projected"][name] = (module, output)

            return hook

        def start(module, args, kwargs):
            buffer = state.capturing()
            if buffer is not None:
                buffer["projected"].clear()
                buffer["projected"]["hidden"] = kwargs.get("hidden_states", args[0] if args else None)

        def heads(module, projected, name, hidden):
            producer, output = projected.get(name, (None, None))
            if producer is not getattr(module, name):
                output = getattr(module, name)(hidden)
            return output.view(*hidden.shape[:-1], -1, module.head_dim).transpose(1, 2)  # (B, H, N, dh)

        def finish(module, args, kwargs, output):
            buffer = state.capturing()
            if buffer is None or "hidden" not in buffer["projected"]:
                return None
            started = time.perf_counter()
            projected = buffer["projected"]
            hidden = projected["hidden"]
            with torch.no_grad():
                keys = heads(module, projected, "k_proj", hidden)
                if "attention" in needs:
                    queries = heads(module, projected, "q_proj", hidden)
                    buffer["attention"].append(
                        attention_received(queries, keys, module.scale, state.config.signal_chunk_frames)
                    )
                if "keys" in needs:
                    buffer["keys"].append(head_mean_keys(keys))
            projected.clear()
            buffer["seconds"] += time.perf_counter() - started
            return None

        return [
            attn.q_proj.register_forward_hook(remember("q_proj")),
            attn.k_proj.register_forward_hook(remember("k_proj")),
            attn.register_forward_pre_hook(start, with_kwargs=True),
            attn.register_forward_hook(finish, with_kwargs=True),
        ]
