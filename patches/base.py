"""The adapter interface that a per-architecture patch module implements, and the architecture registry."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from stop_hf import compat
from stop_hf.hooks import VideoRecord, wrap_method
from stop_hf.validation import check_finite_pixels, check_finite_videos


@dataclass
class SignalBuffer:
    """The signals captured while ONE `get_video_features` call runs. Each call gets a fresh buffer (concurrent calls
    on a shared model never share one); the signal hooks reach it through `state.capturing()`.

    attention / keys / global_features: the tensors the hooks produced, one per hooked forward, in call order (their
    shapes are the architecture's; its `video_records` turns them into per-video (T, N), (T, N, Dk), (T, Dg)).
    seconds: time the hooks spent computing signals (the wrapper adds the time `video_records` takes).
    """

    attention: list[torch.Tensor] = field(default_factory=list)
    keys: list[torch.Tensor] = field(default_factory=list)
    global_features: list[torch.Tensor] = field(default_factory=list)
    seconds: float = 0.0


class ArchAdapter:
    """Everything stop_hf knows about one architecture: the shared hooks in `stop_hf.hooks` call its signal capture
    and position policy; the runner, CLI, bench, viz, eval and testing kit read its names, input preparation, tiny
    test model and bench shapes. Registered with `@register_architecture` (see `stop_hf.patches`).

    Signal capture is written once here (`install_capture`); an architecture supplies its pieces: `capture_plan`,
    `check_video_inputs`, `video_records` and `install_signal_hooks`. It may override the position policy.
    """

    #: registry key, CLI `--arch` value and `tiny-<name>` model name
    name: ClassVar[str] = ""
    #: the HF `*ForConditionalGeneration` class this adapter patches (a transformers export)
    model_class: ClassVar[str] = ""
    #: config `model_type`s loaded as `model_class`
    model_types: ClassVar[tuple[str, ...]] = ()
    #: the oldest transformers release this architecture is verified on (None: the whole supported range)
    min_transformers: ClassVar[str | None] = None
    #: the lmms-eval model name (`--model`), its wrapper class name and the checkpoint it loads by default
    lmms_model: ClassVar[str] = ""
    lmms_class: ClassVar[str] = ""
    default_pretrained: ClassVar[str] = ""
    #: input frames fused into one token frame (a temporal patch)
    temporal_patch: ClassVar[int] = 1
    #: True when the processor needs the video file itself (it reads the fps for temporal positions)
    video_from_file: ClassVar[bool] = False
    #: True when the LLM uses 1-D positions (decode positions can be derived from the last prompt position).
    positions_1d: ClassVar[bool] = True
    #: method -> reference position policy for this architecture; others use `default_position`.
    position_policy: ClassVar[dict[str, str]] = {}
    default_position: ClassVar[str] = "original"
    #: bench shapes of the real 7B checkpoint: vision widths/depth, input size, LLM tokens per input frame
    bench_vision: ClassVar[dict[str, int]] = {}
    bench_image_size: ClassVar[int] = 0
    bench_tokens_per_frame: ClassVar[float] = 0.0
    #: the checkpoint's LLM shape for the bench (`stop_hf.bench.LLMShape` fields); empty: Qwen2-7B
    bench_llm: ClassVar[dict[str, int]] = {}
    #: the invariant the pruned prefill is tested against (`stop_hf.testing.reference_logits`): "masked" (the full
    #: sequence, dropped tokens masked out as keys) or "shortened" (exactly the kept tokens at their positions; for
    #: an LLM whose layers carry state through every position, e.g. linear attention, which ignores a 4-D mask)
    lm_reference: ClassVar[str] = "masked"
    #: whether `position_mode='compact'` can serve it (1-D positions and each video's tokens in one run)
    compact_positions: ClassVar[bool] = True
    #: the base-model method that encodes video pixels (shadowed by the capture) and the kwarg carrying them
    video_features_method: ClassVar[str] = compat.VIDEO_FEATURES_METHOD
    video_pixels_arg: ClassVar[str] = "pixel_values_videos"

    #: True when the encoder sees video frames as separate images (InternVL): `video_records` returns one record per
    #: frame and the frames one batch row holds, in prompt order, are pruned as one video
    join_frames: ClassVar[bool] = False

    def has_video(self, kwargs: dict[str, Any]) -> bool:
        """Whether a model call carries video to encode (its pixels, or pre-computed video encoder outputs)."""
        return (
            kwargs.get(self.video_pixels_arg) is not None or compat.encoder_outputs_video(kwargs) is not None
        )

    def default_position_mode(self, method: str) -> str:
        return self.position_policy.get(method, self.default_position)

    def base_model(self, model: Any) -> Any:
        return model.model

    def vision_module(self, model: Any) -> Any:
        """The vision encoder (timed as the 'vision' stage)."""
        return model.model.vision_tower

    def language_model(self, model: Any) -> Any:
        return model.model.language_model

    def video_token_id(self, model: Any) -> int:
        return int(model.config.video_token_id)

    @staticmethod
    def check_layer_index(configured: int, count: int, unit: str) -> int:
        """`stop_config.saliency_layer` as a non-negative index into `count` layers/blocks, or a clear error."""
        if not -count <= configured < count:
            raise ValueError(
                f"stop_config.saliency_layer={configured} is out of range for a vision tower with {count} {unit}; "
                f"allowed: -{count} .. {count - 1}"
            )
        return configured % count

    # ------------------------------------------------------------------ signal capture (stop_hf.loading.patch)
    #: the buffer class one `get_video_features` call captures into (a subclass may add scratch fields)
    signal_buffer: ClassVar[type[SignalBuffer]] = SignalBuffer

    def install_capture(self, model: Any, state: Any) -> list[Any]:
        """Shadows the backbone's `get_video_features` on this instance, then installs the signal hooks; returns
        their handles. Each call checks its inputs, captures the hooks' signals into its own `signal_buffer` (set
        as `state.capturing()` for the duration of the call, per call, never per model) and hands one
        `VideoRecord` per video to the prefill (`state.set_encoded`)."""
        # every check and load first: a failure leaves nothing installed
        plan = self.capture_plan(model, state)

        def make_wrapper(original):
            def get_video_features(*args, **kwargs):
                # the pixels come first, by position or by name (InternVL: get_image_features(pixel_values=...))
                if args:
                    pixels, args = args[0], args[1:]
                else:
                    pixels = kwargs.pop(self.video_pixels_arg)
                # pixels checked here too: generate encodes videos outside the base model's forward pre-hook
                check_finite_pixels(self.video_pixels_arg, pixels)
                inputs = self.check_video_inputs(plan, pixels, args, kwargs)
                buffer = self.signal_buffer()
                token = state.start_capture(buffer)  # this call's buffer: concurrent calls never share one
                try:
                    output = original(pixels, *args, **kwargs)
                finally:
                    state.stop_capture(token)
                started = time.perf_counter()
                records = self.video_records(plan, output, inputs, buffer)
                check_finite_videos(pixels, records)  # before a non-finite token is matched or ranked
                seconds = buffer.seconds + time.perf_counter() - started
                for record in records:
                    record.signal_seconds = seconds / len(records)
                state.set_encoded(records)
                return output

            return get_video_features

        # wrap_method keeps functools.wraps: generate still reads the real signature
        handles = [wrap_method(self.base_model(model), self.video_features_method, make_wrapper)]
        return handles + self.install_signal_hooks(model, state, plan)

    def check_config_for_architecture(self, config: Any) -> None:
        """Raises `StopUnsupportedError` for a (valid) config this architecture cannot run, from the config alone:
        `stop_hf.loading` calls it before any weight is read. Default: every config is fine."""

    def capture_plan(self, model: Any, state: Any) -> Any:
        """What the capture of this patched model fixes at patch time (signals needed, layer index, heads), handed
        to the methods below. Raise here for a config the model cannot serve: nothing is installed yet."""
        return None

    def check_video_inputs(
        self, plan: Any, pixel_values_videos: torch.Tensor, args: tuple, kwargs: dict[str, Any]
    ) -> Any:
        """Checks one `get_video_features(pixel_values_videos, *args, **kwargs)` call before the encoder runs;
        returns what `video_records` needs to know about it (e.g. the videos' grids)."""
        return None

    def video_records(
        self, plan: Any, output: Any, inputs: Any, buffer: SignalBuffer
    ) -> list[VideoRecord]:  # pragma: no cover - abstract
        """One `VideoRecord` per video of this call: its features as scattered into the prompt, geometry and the
        signals in `buffer` (`signal_seconds` is set by the caller)."""
        raise NotImplementedError

    def install_signal_hooks(self, model: Any, state: Any, plan: Any) -> list[Any]:
        """Hooks (on ONE vision layer, as a rule) that append this call's signals to `state.capturing()` when it is
        not None; returns their handles."""
        return []

    # ------------------------------------------------------------------ prefill (stop_hf.hooks)
    def check_video_call(self, kwargs: dict[str, Any]) -> None:
        """Raises `StopUnsupportedError` for a top-level call with video that this architecture cannot prune
        correctly (checked before anything runs). Default: every call is fine."""

    #: language-model keyword arguments with one entry per prompt token (or per visual token) that
    #: `prune_lm_kwargs` slices; the masked reference passes them through at full length
    pruned_lm_kwargs: ClassVar[tuple[str, ...]] = ()

    def prune_lm_kwargs(self, kwargs: dict[str, Any], splice: Any) -> dict[str, Any]:
        """Slices the language model's per-token keyword arguments other than embeddings, mask and positions (which
        `stop_hf.hooks` handles) to the pruned sequence described by `splice` (a `stop_hf.hooks.Splice`).
        Default: there are none."""
        return kwargs

    # ------------------------------------------------------------------ inputs (stop_hf.runner.VideoLLM)
    def decode_video(self, video: Any, num_frames: int) -> Any:
        """One video (a file, `VideoClip` or (T, H, W, 3) frame array) decoded once for `processor_inputs`, sampling
        `num_frames` frames from a file. Default: (T, H, W, 3) uint8 frames."""
        from stop_hf.video import load_frames

        return load_frames(video, num_frames)

    @staticmethod
    def frame_count(decoded: Any) -> int:
        return len(decoded)

    def processor_inputs(
        self, processor: Any, prompts: list[str], decoded: list[Any], **text_kwargs: Any
    ) -> Any:
        """Processor inputs for one prompt per decoded video (batch rows)."""
        import numpy as np
        import torch

        clips = [torch.from_numpy(np.ascontiguousarray(f)).permute(0, 3, 1, 2) for f in decoded]
        return processor(text=prompts, videos=clips, **text_kwargs)

    # ------------------------------------------------------------------ viz (stop_hf.viz)
    def seen_size(self, grid: tuple[int, int]) -> tuple[int, int]:  # pragma: no cover - abstract
        """(height, width) in pixels of a frame as the model saw it, for a token grid `grid`."""
        raise NotImplementedError

    def token_grid(self, frames: Any) -> tuple[int, int]:  # pragma: no cover - abstract
        """The (h, w) LLM token grid of one frame of these (T, H, W, 3) frames, as the processor sizes them."""
        raise NotImplementedError

    # ------------------------------------------------------------------ testing kit (stop_hf.testing.models)
    #: tiny models scale the weights whose name contains a key by its factor: random-init attention is otherwise
    #: nearly uniform, and position bugs would not show in the logits (a QK-norm model scales its norms instead)
    tiny_sharpen: ClassVar[dict[str, float]] = {"q_proj": 6.0, "k_proj": 6.0, "attn.qkv": 6.0}

    def tiny_adjust(self, model: Any) -> None:
        """In-place changes to a freshly built tiny model after `tiny_sharpen` (e.g. norms whose weight is an
        offset initialised to zero, which scaling cannot sharpen). Default: none."""

    def tiny_config(self) -> Any:  # pragma: no cover - abstract
        """A tiny random-model config with this architecture's real token geometry (vocab: the offline tokenizer)."""
        raise NotImplementedError

    def tiny_processor(self, tokenizer: Any, chat_template: str) -> Any:  # pragma: no cover - abstract
        """The real HF processor around `tokenizer`; `chat_template` has `{{ video_placeholder }}` /
        `{{ image_placeholder }}` for this architecture's media placeholders."""
        raise NotImplementedError

    # ------------------------------------------------------------------ bench (stop_hf.bench)
    def bench_config(
        self,
        vision: dict[str, int],
        llm: Any,
        vision_layers: int,
        llm_layers: int,
        vocab: int,
        video_token: int,
    ) -> Any:  # pragma: no cover - abstract
        """An HF config with the given widths (`vision`: bench_vision keys; `llm`: a bench LLMShape) and depths."""
        raise NotImplementedError

    def bench_inputs(
        self, model: Any, frames: int, image_size: int, device: str, dtype: Any
    ) -> dict[str, Any]:
        """Synthetic inputs without a processor: {"span": the token ids of one video's span in the prompt,
        "n_video": its video-token count, "pixels": the model's pixel kwargs}."""
        raise NotImplementedError  # pragma: no cover - abstract

    def bench_method_kwargs(self, model: Any, folder: str) -> dict[str, dict[str, Any]]:
        """Extra stop_config fields per method for the bench (e.g. a random head written to `folder`)."""
        return {}
