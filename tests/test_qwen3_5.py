"""Qwen3.5 specifics (the shared invariants run in tests/test_architectures.py for qwen3_5 and qwen3_5_moe, against
the shortened reference): the masked full-length reference is NOT an oracle for its hybrid LLM, the shortened one is,
for every method; the tiny model really mixes linear and full attention layers."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from conftest import logits_of
from stop_hf.patches import architecture

import stop_hf
from stop_hf import compat
from stop_hf.testing import (
    build_processor,
    masked_reference_logits,
    shortened_reference_logits,
    synthetic_frames,
    tiny_checkpoint,
)

ARCH = "qwen3_5"


@pytest.fixture(scope="module")
def reference():
    return compat.model_class(architecture(ARCH).model_class).from_pretrained(tiny_checkpoint(ARCH)).eval()


@pytest.fixture(scope="module")
def inputs():
    processor, adapter = build_processor(ARCH), architecture(ARCH)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what happens ?"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    frames = synthetic_frames(4, 112, 168, seed=0, sink_patch=(10, 10, 30))
    return dict(
        adapter.processor_inputs(processor, [text], [adapter.decode_video(frames, 4)], return_tensors="pt")
    )


def test_tiny_model_is_hybrid(reference):
    assert set(reference.config.text_config.layer_types) == {"linear_attention", "full_attention"}
    assert architecture(ARCH).lm_reference == "shortened"


@pytest.mark.parametrize(
    "config",
    [
        {"method": "uniform", "retention": 0.25},
        {"method": "visionzip", "retention": 0.25, "sink": True},
        {"method": "fastvid", "retention": 0.25, "sink": True, "global_feature": "mean"},
        {"method": "holitom", "retention": 0.25, "sink": True},
        {"method": "prunevid", "retention": 0.25},
    ],
    ids=lambda c: c["method"],
)
def test_masked_reference_differs_where_the_shortened_one_holds(reference, inputs, config):
    """The linear-attention layers ignore the 4-D mask: the masked reference mixes dropped tokens into the recurrent
    state and misses the pruned prefill by far more than the tolerance; the shortened reference matches it."""
    model = copy.deepcopy(reference)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "stop_config.global_feature='mean'", UserWarning)
        stop_hf.patch(model, config)
    pruned = logits_of(model, inputs)
    report = stop_hf.last_prune_report(model)
    shortened, keep = shortened_reference_logits(reference, inputs, report)
    masked, masked_keep = masked_reference_logits(reference, inputs, report)
    assert torch.equal(keep, masked_keep) and torch.equal(~torch.isnan(pruned[..., 0]), keep)
    assert (pruned[keep] - shortened[keep]).abs().max() <= 1e-5
    assert (pruned[keep] - masked[keep]).abs().max() > 1e-2


def test_an_adapter_whose_model_transformers_lacks_is_left_out_and_named(monkeypatch):
    """On a transformers without Qwen3.5 (before 5.23) its adapters are not registered; asking for them says why."""
    from stop_hf import patches

    class Missing(type(architecture(ARCH))):
        name = "qwen3_5_missing"
        model_class = "Qwen3_5MissingForConditionalGeneration"
        model_types = ("qwen3_5_missing",)
        lmms_model = "qwen3_5_missing_stop"
        lmms_class = "Qwen3_5MissingStop"

    monkeypatch.setattr(patches, "UNAVAILABLE", dict(patches.UNAVAILABLE))
    patches.register_architecture(Missing)
    assert "qwen3_5_missing" not in patches.ARCHITECTURES
    with pytest.raises(
        ValueError, match=r"needs Qwen3_5MissingForConditionalGeneration .*, which transformers"
    ):
        patches.architecture("qwen3_5_missing")


def test_qwen3_5_is_left_out_below_the_release_it_is_verified_on(monkeypatch):
    """Qwen3.5 exists in transformers 5.19-5.22 but is verified from 5.23: below, it is refused by name and
    release, on the registry and on from_pretrained(stop_config=...)."""
    from stop_hf import compat, patches

    class Older(type(architecture(ARCH))):
        name = "qwen3_5_older"
        model_class = "Qwen3_5ForConditionalGeneration"
        model_types = ("qwen3_5",)
        lmms_model = "qwen3_5_older_stop"
        lmms_class = "Qwen3_5OlderStop"

    monkeypatch.setattr(patches, "UNAVAILABLE", dict(patches.UNAVAILABLE))
    others = {name: cls for name, cls in patches.ARCHITECTURES.items() if not name.startswith("qwen3_5")}
    monkeypatch.setattr(patches, "ARCHITECTURES", others)
    monkeypatch.setattr(compat, "transformers_version", lambda: "5.19.0")
    patches.register_architecture(Older)
    assert "qwen3_5_older" not in patches.ARCHITECTURES
    with pytest.raises(ValueError, match=r"needs Qwen3_5ForConditionalGeneration \(transformers >= 5.23\)"):
        patches.architecture("qwen3_5_older")
