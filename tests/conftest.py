"""Shared fixtures: tiny models loaded through the real from_pretrained path, processors, inputs."""

from __future__ import annotations

import copy

import pytest
import torch

import stop_hf
from stop_hf.testing import build_processor, synthetic_frames, tiny_checkpoint

LLAVA_PROMPT = "<|im_start|>user\n<video>what happens in the video ?<|im_end|>\n<|im_start|>assistant\n"


def clip(num_frames: int = 8, seed: int = 0, **kwargs) -> torch.Tensor:
    """(T, 3, H, W) uint8 frames for the processors."""
    return torch.from_numpy(synthetic_frames(num_frames, seed=seed, **kwargs)).permute(0, 3, 1, 2)


@pytest.fixture(scope="session")
def llava_checkpoint():
    return tiny_checkpoint("llava_onevision")


@pytest.fixture(scope="session")
def llava_reference(llava_checkpoint):
    """The unpatched tiny LLaVA-OV model (never patched: the oracle)."""
    from transformers import LlavaOnevisionForConditionalGeneration

    return LlavaOnevisionForConditionalGeneration.from_pretrained(llava_checkpoint).eval()


@pytest.fixture()
def llava_model(llava_reference):
    """A fresh copy of the tiny model for one test (patch freely)."""
    return copy.deepcopy(llava_reference)


@pytest.fixture(scope="session")
def llava_processor():
    return build_processor("llava_onevision")


@pytest.fixture(scope="session")
def llava_inputs(llava_processor):
    return dict(llava_processor(text=[LLAVA_PROMPT], videos=[clip(8)], return_tensors="pt"))


def patched(model, config):
    return stop_hf.patch(model, config)
