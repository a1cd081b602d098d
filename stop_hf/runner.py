"""`VideoLLM`: load a supported model + processor, turn (video, question) into inputs, answer with timings.

Shared by the CLI (`demo`, `run`, `eval`), the lmms-eval plugin and the benchmarks, so every entry point measures
and prompts the same way.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import StopConfig, means_no_pruning
from .loading import _UNSET, ConfigLike, is_patched, last_prune_report, patch, unpatch


@dataclass
class Answer:
    """One answer and what it cost. Times in seconds."""

    text: str
    prompt_tokens: int
    prompt_tokens_after: int
    video_tokens: int
    video_tokens_after: int
    timings: dict[str, float] = field(default_factory=dict)
    report: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "prompt_tokens": self.prompt_tokens,
            "prompt_tokens_after": self.prompt_tokens_after,
            "video_tokens": self.video_tokens,
            "video_tokens_after": self.video_tokens_after,
            "timings": self.timings,
        }


@dataclass(frozen=True)
class VideoClip:
    """A time window of a video file, in seconds: frames are sampled uniformly inside [start, end] only.

    Benchmarks that ask about one segment of a longer video (VideoComp's query clip, MVBench's STAR/STA tasks)
    pass one of these wherever a video path is accepted. `None` means the start / end of the file."""

    path: str | Path
    start: float | None = None
    end: float | None = None

    def __post_init__(self) -> None:
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"VideoClip {self.path}: end={self.end} s must be after start={self.start} s")


def read_clip(clip: VideoClip, num_frames: int) -> tuple[np.ndarray, float | None, int]:
    """(frames (T, H, W, 3) uint8, the file's fps or None, frames inside the window) for a `VideoClip`."""
    from .video import read_window

    return read_window(clip.path, num_frames, clip.start, clip.end)


class StageTimer:
    """Times the vision encoder, the LLM prefill and the decode steps with forward hooks (removed on exit)."""

    def __init__(self, vision: torch.nn.Module, language_model: torch.nn.Module) -> None:
        self.vision, self.language_model = vision, language_model
        self.times: dict[str, float] = {"vision": 0.0, "prefill": 0.0, "decode": 0.0}
        self.decode_steps = 0
        self._started: dict[str, float] = {}
        self.prefill_tokens = 0

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    @contextmanager
    def measure(self):
        def start(name):
            def hook(module, args, kwargs):
                self._sync()
                self._started[name] = time.perf_counter()

            return hook

        def stop_vision(module, args, kwargs, output):
            self._sync()
            self.times["vision"] += time.perf_counter() - self._started.pop("vision")

        def stop_lm(module, args, kwargs, output):
            self._sync()
            elapsed = time.perf_counter() - self._started.pop("lm")
            length = kwargs["inputs_embeds"].shape[1] if kwargs.get("inputs_embeds") is not None else 0
            if self.prefill_tokens == 0:
                self.times["prefill"] += elapsed
                self.prefill_tokens = length
            else:
                self.times["decode"] += elapsed
                self.decode_steps += 1

        handles = [
            self.vision.register_forward_pre_hook(start("vision"), with_kwargs=True),
            self.vision.register_forward_hook(stop_vision, with_kwargs=True),
            # registered after the pruning hook, so it sees (and times) the pruned prefill
            self.language_model.register_forward_pre_hook(start("lm"), with_kwargs=True),
            self.language_model.register_forward_hook(stop_lm, with_kwargs=True),
        ]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()


class VideoLLM:
    """A model, its processor and the prompt format of its architecture."""

    def __init__(self, model: Any, processor: Any, num_frames: int = 8) -> None:
        from stop_hf.patches import adapter_for

        self.model = model
        self.processor = processor
        self.adapter = adapter_for(model)  # everything architecture-specific: inputs, tokens, modules
        self.arch = self.adapter.name
        self.num_frames = num_frames

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        model_id: str | Path,
        stop_config: ConfigLike | None = _UNSET,
        device: str = "cpu",
        dtype: str | torch.dtype | None = None,
        num_frames: int = 8,
        **hf_kwargs: Any,
    ) -> VideoLLM:
        """`stop_config` as in `stop_hf.from_pretrained`: omitted -> the checkpoint's stored config (if any);
        None or "none" -> unpruned."""
        from transformers import AutoProcessor

        from .loading import from_pretrained

        torch_dtype = _dtype(dtype, device)
        model = from_pretrained(model_id, stop_config=stop_config, dtype=torch_dtype, **hf_kwargs)
        if hf_kwargs.get("device_map") is None:  # a device_map placed the weights already (over several GPUs)
            model.to(device)
        model.eval()
        processor = AutoProcessor.from_pretrained(model_id)
        return cls(model, processor, num_frames=num_frames)

    @classmethod
    def tiny(
        cls,
        arch: str = "llava_onevision",
        stop_config: ConfigLike | None = None,
        num_frames: int = 8,
        device: str = "cpu",
        dtype: str | torch.dtype | None = None,
    ):
        """The embedded tiny random model (no download), loaded through the real from_pretrained path."""
        from .tiny import tiny_checkpoint

        return cls.from_pretrained(
            tiny_checkpoint(arch), stop_config=stop_config, device=device, dtype=dtype, num_frames=num_frames
        )

    def set_stop_config(self, stop_config: ConfigLike | None) -> None:
        """Switches pruning on (a config) or off (None or "none") on the loaded model."""
        if means_no_pruning(stop_config):
            unpatch(self.model)
        else:
            patch(self.model, StopConfig.from_any(stop_config))

    # ------------------------------------------------------------------ inputs
    def load_frames(self, video: str | Path | np.ndarray | list) -> np.ndarray:
        """(T, H, W, 3) uint8 frames from a file (PyAV, uniform sampling) or an array/list of frames."""
        from .video import load_frames

        return load_frames(video, self.num_frames)

    def prompt(
        self, question: str, num_videos: int = 1, system: str | None = None, prefill: str | None = None
    ) -> str:
        """The chat-template text: an optional `system` message, the user turn (videos, then `question`), the
        generation prompt, then `prefill` as the start of the assistant's reply (the words a benchmark's official
        code puts in the model's mouth, e.g. MVBench's "Best option:("; the model continues after them)."""
        _check_text("system", system)
        _check_text("prefill", prefill)
        content = [{"type": "video"}] * num_videos + [{"type": "text", "text": question}]
        messages = [{"role": "user", "content": content}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text + (prefill or "")

    def prepare(
        self, video: Any, question: str, system: str | None = None, prefill: str | None = None
    ) -> dict[str, Any]:
        """Processor inputs for one video and one question (see `prompt` for `system` / `prefill`), on the
        model's device."""
        if not question or not str(question).strip():
            raise ValueError("question must be a non-empty string")
        prompt = self.prompt(question, system=system, prefill=prefill)
        decoded = [self.adapter.decode_video(video, self.num_frames)]
        inputs = self.adapter.processor_inputs(self.processor, [prompt], decoded, return_tensors="pt")
        return {k: (v.to(self.model.device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}

    # ------------------------------------------------------------------ answering
    @torch.no_grad()
    def answer(
        self,
        video: Any,
        question: str,
        max_new_tokens: int = 32,
        system: str | None = None,
        prefill: str | None = None,
        **generate_kwargs: Any,
    ) -> Answer:
        """Greedy answer to `question` about `video`. `system`: a system message; `prefill`: the start of the
        assistant's reply, after the generation prompt. `Answer.text` is what the model generated after it (the
        pre-fill is not repeated: a benchmark's official post-processing decides what is scored)."""
        inputs = self.prepare(video, question, system=system, prefill=prefill)
        return self.generate(inputs, max_new_tokens=max_new_tokens, **generate_kwargs)

    def _timed_generate(
        self, inputs: dict[str, Any], max_new_tokens: int, generate_kwargs: dict[str, Any]
    ) -> tuple[torch.Tensor, StageTimer, list[dict[str, Any]], dict[str, float]]:
        """Greedy by default: the output ids, the stage timer, this thread's prune report and the stage seconds."""
        adapter = self.adapter
        timer = StageTimer(adapter.vision_module(self.model), adapter.language_model(self.model))
        generate_kwargs.setdefault("do_sample", False)
        started = time.perf_counter()
        with timer.measure():
            output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, **generate_kwargs)
        total = time.perf_counter() - started
        report = last_prune_report(self.model) if is_patched(self.model) else []
        seconds = {
            "vision": timer.times["vision"],
            "signals": sum(e["signal_seconds"] for e in report),
            "pruning": sum(e["prune_seconds"] for e in report),
            "prefill": timer.times["prefill"],
            "decode": timer.times["decode"],
            "total": total,
        }
        return output, timer, report, seconds

    @torch.no_grad()
    def generate(self, inputs: dict[str, Any], max_new_tokens: int = 32, **generate_kwargs: Any) -> Answer:
        output, timer, report, timings = self._timed_generate(inputs, max_new_tokens, generate_kwargs)
        prompt_length = inputs["input_ids"].shape[1]
        text = self.processor.batch_decode(output[:, prompt_length:], skip_special_tokens=True)[0].strip()
        video_tokens = int((inputs["input_ids"] == self.adapter.video_token_id(self.model)).sum())
        pruned_video = video_tokens - sum(e["tokens_before"] - e["tokens_after"] for e in report)
        timings["decode_per_token"] = timer.times["decode"] / max(timer.decode_steps, 1)
        return Answer(
            text=text,
            prompt_tokens=prompt_length,
            prompt_tokens_after=timer.prefill_tokens,
            video_tokens=video_tokens,
            video_tokens_after=pruned_video,
            timings=timings,
            report=report,
        )

    # ------------------------------------------------------------------ batches
    def decode_video(self, video: Any) -> Any:
        """A video decoded once for `answer_batch`, exactly what `answer` decodes: the architecture's form (see
        `ArchAdapter.decode_video`: (T, H, W, 3) uint8 frames, or a qwen-vl-utils element with the sampling fps)."""
        return self.adapter.decode_video(video, self.num_frames)

    def frame_count(self, decoded: Any) -> int:
        """Frames of a `decode_video` result (a batch holds videos of one frame count)."""
        return self.adapter.frame_count(decoded)

    def prepare_batch(
        self,
        decoded: list[Any],
        questions: list[str],
        system: str | None = None,
        prefill: str | None = None,
    ) -> dict[str, Any]:
        """Left-padded processor inputs, one row per (decoded video, question), on the model's device; `system` and
        `prefill` (see `prompt`) are shared by every row."""
        if not decoded or len(decoded) != len(questions):
            raise ValueError(
                f"answer_batch needs one question per video, got {len(decoded)} videos and {len(questions)} "
                "questions"
            )
        if any(not q or not str(q).strip() for q in questions):
            raise ValueError("question must be a non-empty string")
        counts = sorted({self.frame_count(d) for d in decoded})
        if len(counts) > 1:  # LLaVA-OV's processor stacks a batch's videos; one count keeps both archs alike
            raise ValueError(f"a batch holds videos of one frame count, got counts {counts}")
        prompts = [self.prompt(q, system=system, prefill=prefill) for q in questions]
        text_kwargs = {"padding": True, "padding_side": "left", "return_tensors": "pt"}
        inputs = self.adapter.processor_inputs(self.processor, prompts, decoded, **text_kwargs)
        return {k: (v.to(self.model.device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}

    @torch.no_grad()
    def answer_batch(
        self,
        videos: list[Any],
        questions: list[str],
        max_new_tokens: int = 32,
        system: str | None = None,
        prefill: str | None = None,
        **generate_kwargs: Any,
    ) -> list[Answer]:
        """One `Answer` per (video, question), generated as one left-padded batch. Each row's text and token
        counts equal `answer` on that row alone (lean batches: docs/guarantees.md). `videos` may be paths, clips,
        frame arrays or `decode_video` results; every video must have the same frame count. The batch's timings
        are split equally over its rows (`timings["batch_size"]` says how many shared them)."""
        decoded = [v if isinstance(v, dict) else self.decode_video(v) for v in videos]
        inputs = self.prepare_batch(decoded, questions, system=system, prefill=prefill)
        output, timer, report, shared = self._timed_generate(inputs, max_new_tokens, generate_kwargs)
        rows = len(decoded)
        prompt_length = inputs["input_ids"].shape[1]
        texts = self.processor.batch_decode(output[:, prompt_length:], skip_special_tokens=True)
        video_tokens = (inputs["input_ids"] == self.adapter.video_token_id(self.model)).sum(dim=1).tolist()
        real_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        dropped = [0] * rows
        for entry in report:
            for row, _ in entry["placements"]:
                dropped[row] += entry["tokens_before"] - entry["tokens_after"]
        timings = {k: v / rows for k, v in shared.items()}
        timings["decode_per_token"] = timer.times["decode"] / max(timer.decode_steps, 1)
        timings["batch_size"] = rows
        return [
            Answer(
                text=texts[row].strip(),
                prompt_tokens=int(real_tokens[row]),
                prompt_tokens_after=int(real_tokens[row]) - dropped[row],
                video_tokens=int(video_tokens[row]),
                video_tokens_after=int(video_tokens[row]) - dropped[row],
                timings=dict(timings),
                report=[e for e in report if any(r == row for r, _ in e["placements"])],
            )
            for row in range(rows)
        ]


def _check_text(name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"{name}={value!r}: must be a non-empty string, or None for none")


def qwen_video_element(video: Any, num_frames: int = 8) -> dict[str, Any]:
    """A qwen-vl-utils video element for a file, a `VideoClip` or a frame array: PIL frames plus their sampling fps.

    Files are decoded with PyAV (qwen-vl-utils' own mp4 readers need decord or torchcodec + system ffmpeg):
    `num_frames` uniformly sampled frames, `sample_fps = num_frames / total_frames * video_fps`, the rule of
    qwen-vl-utils' readers. Frame arrays carry no timing, so they get qwen-vl-utils' default 2 fps.
    """
    from PIL import Image

    if isinstance(video, (VideoClip, str, Path)):  # a file is the clip of its whole length: decoded once
        clip = video if isinstance(video, VideoClip) else VideoClip(video)
        frames, video_fps, total = read_clip(clip, num_frames)
        sample_fps = 2.0 if video_fps is None else len(frames) / max(total, 1) * video_fps
        raw_fps = video_fps or sample_fps
    else:
        frames = np.asarray(video)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"video frames must be (T, H, W, 3) uint8, got shape {frames.shape}")
        sample_fps = raw_fps = 2.0
    return {
        "type": "video",
        "video": [Image.fromarray(np.ascontiguousarray(f)) for f in frames],
        "sample_fps": sample_fps,
        "raw_fps": raw_fps,
    }


def _dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    names = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
    }
    names |= {"fp16": torch.float16, "float16": torch.float16}
    if dtype not in names:
        raise ValueError(f"dtype={dtype!r} is not supported; allowed: {sorted(names)} or 'auto'")
    return names[dtype]
