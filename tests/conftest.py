"""Shared fixtures: tiny models loaded through the real from_pretrained path, processors, inputs."""

from __future__ import annotations

import copy

import pytest
import torch

import stop_hf
from stop_hf import compat
from stop_hf.testing import (
    build_processor,
    kept_logits,
    reference_logits,
    synthetic_frames,
    tiny_checkpoint,
)


@pytest.fixture(autouse=True)
def _report_embeddings():
    """Tests compare against the masked reference, which needs the pruned embeddings in the report."""
    with stop_hf.report_embeddings():
        yield


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


# ------------------------------------------------------------------------------------------------ model helpers
def logits_of(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def computed(logits):
    """(B, L) bool: prompt positions with a prediction (pruned positions carry NaN logits)."""
    return ~torch.isnan(logits[..., 0])


def greedy(model, inputs, n=5, **kwargs):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=n, do_sample=False, **kwargs)


def manual_greedy_logits(model, inputs, n=5):
    """Prefill, then one token at a time through the cache with no mask or positions (Qwen derives the decode
    positions from its own sequence): (B, n, V) logits."""
    steps = []
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
        for _ in range(n):
            steps.append(out.logits[:, -1])
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            out = model(
                input_ids=token, **compat.cache_input(model, compat.output_cache(out)), use_cache=True
            )
    return torch.stack(steps, dim=1)


def assert_matches_reference(model, reference, inputs, tolerance=1e-5):
    """The pruned forward equals the architecture's reference (`lm_reference`: masked or shortened) at every kept
    position; returns the prune report."""
    pruned = logits_of(model, inputs)
    report = stop_hf.last_prune_report(model)
    ref_logits, keep = reference_logits(reference, inputs, report)
    rows = kept_logits(ref_logits, keep)
    assert pruned.shape[:2] == inputs["input_ids"].shape and torch.equal(computed(pruned), keep)
    for b, expected in enumerate(rows):
        assert (pruned[b][keep[b]] - expected).abs().max() <= tolerance
    return report


def spy_pruner(model) -> list:
    """Spies on the patched model's pruner: returns the list its PruneInputs are appended to."""
    state = model._stop_state
    seen, pruner = [], state.pruner

    class Spy:
        needs = pruner.needs

        def __call__(self, x):
            seen.append(x)
            return pruner(x)

    state.pruner = Spy()
    return seen


def prune_inputs(model, inputs) -> list:
    """The PruneInputs the patched model hands its pruner for `inputs` (one forward)."""
    seen = spy_pruner(model)
    with torch.no_grad():
        model(**inputs)
    return seen
