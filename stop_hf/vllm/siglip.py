"""SigLIP's attention-pooling (MAP) head in the vLLM plugin: FastVID's global frame feature and, with
`saliency_source: map_head`, the original FastVID's probe-attention saliency on LLaVA-OneVision.

vLLM's LLaVA-OV loads no SigLIP head (nor do HF LLaVA-OV checkpoints ship one), so the plugin reads it from
`stop_config.siglip_head` with the HF patch's loader (stop_hf.siglip_head) and applies it to the pre-projection hidden
state, as the HF patch's `_capture_global` (patches/llava_onevision.py). No vLLM import here: `check_map_head` runs at
engine start-up (stop_hf.vllm.check_engine_config) and per request in the processor.

The head is loaded once per (source, tower shape, device, dtype) per process, under a lock; it holds no per-request
state (its forward is a pure function of the hidden state).
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import torch

from ..config import StopConfig, StopConfigError
from ..siglip_head import (
    SiglipHeadError,
    SiglipMapHead,
    explicit_map_head_fields,
    load_siglip_head,
    map_head_use,
)
from ..signals import signal_dtype

#: the adapter names whose tower is SigLIP without its head (the plugin supplies it)
HEAD_ARCHITECTURES = ("llava_onevision",)


class ServedSiglipHeadError(SiglipHeadError, ValueError):
    """The HF path's SigLIP-head error, raised for one request (a ValueError too: vLLM fails that request only and
    its server answers 400)."""


@functools.lru_cache(maxsize=32)
def _validated(source: str, num_heads: int, layer_norm_eps: float, hidden_size: int) -> bool:
    # a successful read is remembered (errors are not cached: a later request may find the head)
    load_siglip_head(source, num_heads=num_heads, layer_norm_eps=layer_norm_eps, hidden_size=hidden_size)
    return True


def check_map_head(config: StopConfig, arch: str, vision_config: Any, *, per_request: bool = False) -> None:
    """Validates a stop config's MAP-head use before anything is encoded.

    LLaVA-OV: the head of `stop_config.siglip_head` is read once (SiglipHeadError with the HF path's message;
    `ServedSiglipHeadError` when `per_request`). Other towers have no SigLIP head: an explicit `map_head` is refused
    naming the field (`global_feature: auto` is the frame mean there, as in the HF patch)."""
    if config.is_identity:
        return
    needs = set(config.build_pruner().needs)
    head_global, probe_saliency = map_head_use(config, needs)
    if arch not in HEAD_ARCHITECTURES:
        # the HF patch's rule (refuse_map_head); a StopConfigError here, so vLLM fails only that request
        refused = explicit_map_head_fields(config, needs)
        if refused:
            raise StopConfigError(
                f"stop_config.{' and '.join(refused)} is not available on {arch}: its vision tower has no SigLIP "
                "attention-pooling head; allowed here: global_feature 'auto' or 'mean', saliency_source 'encoder'"
            )
        return
    if not (head_global or probe_saliency):
        return
    try:
        _validated(
            config.siglip_head,
            int(vision_config.num_attention_heads),
            float(vision_config.layer_norm_eps),
            int(vision_config.hidden_size),
        )
    except SiglipHeadError as exc:
        if per_request:
            raise ServedSiglipHeadError(str(exc)) from None
        raise


_LOCK = threading.Lock()
_HEADS: dict[tuple[Any, ...], SiglipMapHead] = {}


def served_head(config: StopConfig, vision_config: Any, tower_param: torch.Tensor) -> SiglipMapHead:
    """The MAP head of `config.siglip_head` for a tower of `vision_config`, on the tower's device, in the HF patch's
    dtype (`signal_dtype(config.signal_dtype, tower dtype)`): loaded on first use, then shared (read-only) by every
    request and thread of this process."""
    dtype = signal_dtype(config.signal_dtype, tower_param.dtype)
    key = (
        config.siglip_head,
        int(vision_config.num_attention_heads),
        float(vision_config.layer_norm_eps),
        int(vision_config.hidden_size),
        str(tower_param.device),
        dtype,
    )
    with _LOCK:
        head = _HEADS.get(key)
        if head is None:
            head = load_siglip_head(
                config.siglip_head,
                num_heads=key[1],
                layer_norm_eps=key[2],
                hidden_size=key[3],
                device=tower_param.device,
                dtype=dtype,
            )
            _HEADS[key] = head
    return head


def head_signals(
    head: SiglipMapHead | None, hidden: torch.Tensor, head_global: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(frames, P, H) pre-projection hidden state -> (global features (frames, H) float32, probe attention (frames, P)
    float32 or None). As the HF patch: the head runs in its own dtype; without the head the global feature is the
    frame mean."""
    if head is None:
        return hidden.float().mean(dim=1), None
    with torch.no_grad():
        pooled, probe = head(hidden.to(head.probe.dtype))
    features = pooled.float() if head_global else hidden.float().mean(dim=1)
    return features, probe.float()


__all__ = ["ServedSiglipHeadError", "check_map_head", "head_signals", "served_head"]
