"""lmms-eval plugin: one wrapper per registered architecture (`<arch>_stop`) that takes `stop_config=` in
`--model_args`.

Registered through lmms-eval's entry-point group `lmms_eval.models` (see `manifests`), so no fork is needed:

    lmms-eval --model llava_onevision_stop \
        --model_args pretrained=llava-hf/llava-onevision-qwen2-7b-ov-hf,stop_config=holitom_stop_r10,max_frames_num=32 \
        --tasks mvbench --batch_size 1

`stop_config` is a preset name or a YAML path (`none` = unpruned). The model side is `stop_hf.runner.VideoLLM`,
the same code path as `stop-hf eval`. Data parallel: `accelerate launch --num_processes N -m lmms_eval ...`; each
process takes its rank from accelerate and its own GPU (`cuda:<local rank>`), and lmms-eval shards the documents
and gathers the answers itself. Unlike lmms-eval's own HF wrappers, a failed generation raises instead of
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
    """A simple (non-chat) lmms-eval model over `VideoLLM`. Batch size 1, like every lmms-eval video wrapper."""

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
        if int(batch_size) != 1:
            raise ValueError("batch_size must be 1")
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
        return 1

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

    def generate_until(self, requests) -> list[str]:
        from tqdm.auto import tqdm

        outputs, self.last_answers = [], []
        for request in tqdm(requests, disable=getattr(self, "rank", 0) != 0, desc="stop-hf responding"):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            visuals = doc_to_visual(self.task_dict[task][split][doc_id])
            question = _MEDIA_TOKENS.sub("", context).strip()
            kwargs = dict(gen_kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new_tokens = int(kwargs.pop("max_new_tokens", 16))
            temperature = float(kwargs.pop("temperature", 0) or 0)
            generate = {"do_sample": temperature > 0}
            if temperature > 0:
                generate["temperature"] = temperature
                if kwargs.get("top_p") is not None:
                    generate["top_p"] = float(kwargs["top_p"])
            if kwargs.get("num_beams"):
                generate["num_beams"] = int(kwargs["num_beams"])
            answer = self.llm.answer(
                self._video(visuals), question, max_new_tokens=max_new_tokens, **generate
            )
            text = answer.text
            for stop in until:
                if stop:
                    text = text.split(stop)[0]
            self.last_answers.append(answer)
            outputs.append(text)
            if hasattr(self, "cache_hook"):
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return outputs

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
