"""lmms-eval plugin: one wrapper per registered architecture (`<arch>_stop`) that takes `stop_config=` in
`--model_args`.

Registered through lmms-eval's entry-point group `lmms_eval.models` (see `manifests`), so no fork is needed:

    lmms-eval --model llava_onevision_stop \
        --model_args pretrained=llava-hf/llava-onevision-qwen2-7b-ov-hf,stop_config=holitom_stop_r10,max_frames_num=32 \
        --tasks mvbench --batch_size 1

`stop_config` is a preset name or a YAML path (`none` = unpruned). The model side is `stop_hf.runner.VideoLLM`,
the same code path as `stop-hf eval`. Data parallel: `accelerate launch --num_processes N -m lmms_eval ...`; each
process takes its rank from accelerate and its own GPU (`cuda:<local rank>`), and lmms-eval shards the documents
and gathers the answers itself. `--batch_size N` runs up to N documents of one frame count and generation setting
in one left-padded `generate` (`VideoLLM.answer_batch`, whose rows equal their single runs), so the records are
those of batch size 1. Unlike lmms-eval's own HF wrappers, a failed generation raises instead of
silently becoming an empty answer, and a document without a video is an error, not an image task.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import numpy as np

try:  # the wrappers only exist for lmms-eval; importing this module without it stays harmless
    from lmms_eval.api.model import lmms as _Base
except ImportError:  # pragma: no cover - exercised when lmms-eval is absent
    _Base = object

_MEDIA_TOKENS = re.compile(r"<image>|<video>|<\|image_pad\|>|<\|video_pad\|>")


def manifests():
    """Entry-point payload for the `lmms_eval.models` group."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [
        ModelManifest(model_id, simple_class_path=f"{__name__}.{cls.__name__}")
        for model_id, cls in WRAPPERS.items()
    ]


class StopVideoLLM(_Base):
    """A simple (non-chat) lmms-eval model over `VideoLLM`; `batch_size` documents per `generate`."""

    is_simple = True
    default_pretrained = ""
    arch = ""

    def __init__(
        self,
        pretrained: str | None = None,
        stop_config: str | None = None,
        device: str = "cuda",
        dtype: str = "auto",
        max_frames_num: int = 32,
        batch_size: int | str = 1,
        attn_implementation: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        from ..runner import VideoLLM

        if kwargs:
            raise ValueError(f"unexpected model_args for {type(self).__name__}: {sorted(kwargs)}")
        try:
            size = int(batch_size)
        except (TypeError, ValueError):
            size = 0
        if size < 1:
            raise ValueError(f"batch_size={batch_size!r}: must be an integer >= 1")
        self._batch_size = size
        pretrained = str(pretrained or self.default_pretrained)
        config = None if stop_config in (None, "", "none", "None") else str(stop_config)
        device = self._join_launch(str(device))
        if pretrained.startswith("tiny-"):
            from ..tiny import build_processor, build_tiny_model

            # built in memory: under a launch the process group exists already, and transformers then saves a
            # checkpoint (VideoLLM.tiny's route) on rank 0 only
            arch = pretrained[len("tiny-") :]
            self.llm = VideoLLM(build_tiny_model(arch), build_processor(arch), num_frames=int(max_frames_num))
            self.llm.set_stop_config(config)
        else:
            hf_kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
            self.llm = VideoLLM.from_pretrained(
                pretrained,
                stop_config=config,
                device=device,
                dtype=dtype,
                num_frames=int(max_frames_num),
                **hf_kwargs,
            )
        if self.arch and self.llm.arch != self.arch:
            raise ValueError(f"{pretrained} is a {self.llm.arch} model; use the {self.llm.arch}_stop wrapper")
        self.stop_config = config
        self.last_answers: list[
            Any
        ] = []  # Answer objects of the last generate_until call (token counts, timings)

    def _join_launch(self, device: str) -> str:
        """Under `accelerate launch`: rank and world size from accelerate (as lmms-eval's own HF wrappers do) and
        `cuda` -> this process's GPU. Returns the device to load on."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return device
        from accelerate import Accelerator

        self.accelerator = Accelerator()
        self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
        if device == "cuda":
            device = f"cuda:{self.accelerator.local_process_index}"
        print(f"{type(self).__name__}: rank {self._rank} of {self._world_size} on {device}", file=sys.stderr)
        return device

    # lmms-eval reads these
    @property
    def model(self):
        return self.llm.model

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self):
        return self.llm.model.device

    @staticmethod
    def _video(visuals: Any) -> Any:
        items = visuals if isinstance(visuals, (list, tuple)) else [visuals]
        paths = [v for v in items if isinstance(v, str)]
        if len(paths) == 1:
            return paths[0]
        if len(paths) > 1:
            raise ValueError(f"one video per document is supported, got {len(paths)}")
        frames = [np.asarray(v.convert("RGB")) if hasattr(v, "convert") else np.asarray(v) for v in items]
        if len(frames) < 2:
            raise ValueError(
                "document has no video (an image-only document is not evaluated as a video task)"
            )
        return np.stack(frames).astype(np.uint8)

    @staticmethod
    def _generation(gen_kwargs: dict[str, Any] | None) -> tuple[int, dict[str, Any], list[str]]:
        """lmms-eval's generation kwargs -> (max_new_tokens, `generate` kwargs, `until` strings)."""
        kwargs = dict(gen_kwargs or {})
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new_tokens = int(kwargs.pop("max_new_tokens", 16))
        temperature = float(kwargs.pop("temperature", 0) or 0)
        generate: dict[str, Any] = {"do_sample": temperature > 0}
        if temperature > 0:
            generate["temperature"] = temperature
            if kwargs.get("top_p") is not None:
                generate["top_p"] = float(kwargs["top_p"])
        if kwargs.get("num_beams"):
            generate["num_beams"] = int(kwargs["num_beams"])
        return max_new_tokens, generate, until

    def generate_until(self, requests) -> list[str]:
        """One answer per request, in request order. With batch size > 1 the requests are grouped by frame count
        and generation setting and answered `batch_size` at a time; each row equals its batch-size-1 answer."""
        from tqdm.auto import tqdm

        outputs: list[str | None] = [None] * len(requests)
        answers: list[Any] = [None] * len(requests)
        pending: dict[tuple, list[tuple[int, Any, str]]] = {}
        bar = tqdm(total=len(requests), disable=getattr(self, "rank", 0) != 0, desc="stop-hf responding")

        def finish(index: int, answer: Any) -> None:
            context, gen_kwargs = requests[index].args[:2]
            text = answer.text
            for stop in self._generation(gen_kwargs)[2]:
                if stop:
                    text = text.split(stop)[0]
            answers[index], outputs[index] = answer, text
            if hasattr(self, "cache_hook"):
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            bar.update(1)

        def flush(key: tuple) -> None:
            items = pending.pop(key)
            batch = self.llm.answer_batch(
                [video for _, video, _ in items],
                [question for _, _, question in items],
                max_new_tokens=key[1],
                **dict(key[2]),
            )
            for (index, _, _), answer in zip(items, batch):
                finish(index, answer)

        for index, request in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            video = self._video(doc_to_visual(self.task_dict[task][split][doc_id]))
            question = _MEDIA_TOKENS.sub("", context).strip()
            max_new_tokens, generate, _ = self._generation(gen_kwargs)
            if self._batch_size == 1:
                finish(index, self.llm.answer(video, question, max_new_tokens=max_new_tokens, **generate))
                continue
            decoded = self.llm.decode_video(video)
            key = (self.llm.frame_count(decoded), max_new_tokens, tuple(sorted(generate.items())))
            pending.setdefault(key, []).append((index, decoded, question))
            if len(pending[key]) >= self._batch_size:
                flush(key)
        for key in list(pending):
            flush(key)
        bar.close()
        self.last_answers = answers
        return outputs  # type: ignore[return-value] - every index was answered above

    def loglikelihood(self, requests):
        raise NotImplementedError("stop-hf wrappers support generate_until tasks only")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("stop-hf wrappers support single-round generate_until tasks only")


def _wrapper(adapter: Any) -> type[StopVideoLLM]:
    """The wrapper class of a registered architecture (named by its `lmms_class`)."""
    attributes = {
        "default_pretrained": adapter.default_pretrained,
        "arch": adapter.name,
        "__module__": __name__,
    }
    return type(adapter.lmms_class, (StopVideoLLM,), attributes)


def _wrappers() -> dict[str, type[StopVideoLLM]]:
    from ..patches import ARCHITECTURES

    return {adapter.lmms_model: _wrapper(adapter) for adapter in ARCHITECTURES.values()}


#: lmms-eval model name -> wrapper class, one per registered architecture
WRAPPERS = _wrappers()
globals().update({cls.__name__: cls for cls in WRAPPERS.values()})
