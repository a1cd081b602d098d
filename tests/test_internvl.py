"""InternVL specifics (the shared invariants run in tests/test_architectures.py for internvl, against the masked
reference): only the frames' context tokens are pruned (the `Frame{i}:` labels and `<img>`/`</img>` stay), the
saliency is the attention of the vision_feature_layer over 1 + 32x32 keys (the mu_s rule's P = 1025), the frames of
one row form one video, and multi-tile images are refused."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import computed, logits_of, prune_inputs
from stop_hf.patches import architecture

import stop_hf
from stop_hf import StopUnsupportedError, compat
from stop_hf.testing import build_processor, synthetic_frames, tiny_checkpoint

ARCH = "internvl"


@pytest.fixture(scope="module")
def reference():
    return compat.model_class(architecture(ARCH).model_class).from_pretrained(tiny_checkpoint(ARCH)).eval()


@pytest.fixture()
def model(reference):
    return copy.deepcopy(reference)


@pytest.fixture(scope="module")
def processor():
    return build_processor(ARCH)


def prompt(processor, content) -> str:
    return processor.apply_chat_template(
        [{"role": "user", "content": [*content, {"type": "text", "text": "what happens ?"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )


def video(seed: int = 0, frames: int = 4):
    return torch.from_numpy(synthetic_frames(frames, 112, 168, seed=seed, sink_patch=(10, 10, 30))).permute(
        0, 3, 1, 2
    )


@pytest.fixture(scope="module")
def inputs(processor):
    return dict(
        processor(text=[prompt(processor, [{"type": "video"}])], videos=[video()], return_tensors="pt")
    )


def test_only_context_tokens_are_dropped_labels_and_wrappers_stay(model, processor, inputs):
    stop_hf.patch(model, {"method": "uniform", "retention": 0.1})
    kept = computed(logits_of(model, inputs))[0]
    ids = inputs["input_ids"][0]
    context = ids == model.config.image_token_id
    text = processor.tokenizer.decode(ids[~context])
    assert all(f"Frame{i} : <img> </img>" in text for i in range(1, 5))  # the processor's per-frame groups
    assert bool(kept[~context].all())  # every label, wrapper and prompt token keeps its prediction
    assert int(kept[context].sum()) == 4 * round(256 * 0.1)
    (entry,) = stop_hf.last_prune_report(model)
    assert entry["frames"] == 4 and entry["grid"] == (16, 16) and entry["tokens_before"] == 1024


def test_saliency_is_the_feature_layers_attention_over_1025_keys(model, inputs):
    """The pruner gets the attention of the layer the features come from, per 2x2 block: P = 1 CLS + 1024 patches
    keys per softmax, so its values average 1/1025 and mu_s is rescaled by 729/1025."""
    adapter = architecture(ARCH)
    assert adapter.saliency_layer_index(model, None) == 1  # vision_feature_layer=-1: the last of 2 layers
    stop_hf.patch(model, {"method": "visionzip", "retention": 0.25, "sink": True})
    (x,) = prune_inputs(model, inputs)
    assert x.attention_patches == 1025 and x.attention.shape == (4, 256) and x.keys.shape[:2] == (4, 256)
    # each softmax row sums to 1 over 1025 keys; the CLS key's share is what the patches' mean misses
    assert abs(float(x.attention.mean()) * 1025 - 1) < 0.05
    model.config.vision_feature_layer = -2
    assert adapter.saliency_layer_index(model, None) == 0
    stop_hf.patch(model, {"method": "visionzip", "retention": 0.25, "sink": True})
    (earlier,) = prune_inputs(model, inputs)
    assert not torch.allclose(earlier.attention, x.attention)


def test_unsupported_feature_layer_is_named(model):
    model.config.vision_feature_layer = [-1, -2]
    with pytest.raises(ValueError, match="vision_feature_layer"):
        stop_hf.patch(model, {"method": "visionzip", "retention": 0.25})
    assert not stop_hf.is_patched(model)


def test_frames_of_one_row_are_one_video(model, processor):
    """The model's inputs do not mark where one video ends: two videos in one prompt are pruned as one 8-frame clip
    (docs/internvl.md)."""
    text = prompt(processor, [{"type": "video"}, {"type": "video"}])
    both = dict(processor(text=[text], videos=[video(1), video(2)], return_tensors="pt"))
    stop_hf.patch(model, {"method": "holitom", "retention": 0.25, "sink": True})
    logits_of(model, both)
    (entry,) = stop_hf.last_prune_report(model)
    assert entry["frames"] == 8 and entry["tokens_before"] == 8 * 256


def test_multi_tile_image_is_refused(model, processor):
    image = np.random.default_rng(0).integers(0, 255, (448, 896, 3), dtype=np.uint8)
    text = prompt(processor, [{"type": "image"}, {"type": "video"}])
    mixed = dict(
        processor(
            text=[text],
            images=[image],
            videos=[video()],
            crop_to_patches=True,
            max_patches=2,
            return_tensors="pt",
        )
    )
    assert mixed["pixel_values"].shape[0] > 4 + 1  # the image has several tiles
    stop_hf.patch(model, {"method": "uniform", "retention": 0.5})
    with pytest.raises(StopUnsupportedError, match="multi-tile image"):
        logits_of(model, mixed)
