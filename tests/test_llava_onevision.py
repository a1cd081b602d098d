"""LLaVA-OneVision specifics (the shared invariants, compact positions included, run in tests/test_architectures.py):
images beside videos, config overrides on loading, the mp4 path's token geometry, the SigLIP layer guards and the
saliency layer hook."""

from __future__ import annotations

import pytest
import torch
from conftest import clip, computed, greedy, logits_of

import stop_hf
from stop_hf.testing import kept_logits, masked_reference_logits, write_video


# ------------------------------------------------------------------------------------------------ inputs
def test_image_and_video_prompt_leaves_image_tokens(llava_model, llava_reference, llava_processor):
    prompt = (
        "<|im_start|>user\n<image><video>compare the image and the video<|im_end|>\n<|im_start|>assistant\n"
    )
    image = clip(1, seed=5)[0]
    inputs = dict(llava_processor(text=[prompt], images=[image], videos=[clip(4)], return_tensors="pt"))
    image_tokens = int((inputs["input_ids"] == llava_model.config.image_token_id).sum())
    assert image_tokens > 0
    stop_hf.patch(llava_model, {"method": "uniform", "retention": 0.1})
    pruned = logits_of(llava_model, inputs)
    report = stop_hf.last_prune_report(llava_model)
    dropped = report[0]["tokens_before"] - report[0]["tokens_after"]
    assert int((~computed(pruned)).sum()) == dropped
    reference, keep = masked_reference_logits(llava_reference, inputs, report)
    assert (pruned[0][keep[0]] - kept_logits(reference, keep)[0]).abs().max() <= 1e-5
    greedy(llava_model, inputs, n=3)


# ------------------------------------------------------------------------------------------------ loading
def test_from_pretrained_passes_config_overrides_on(llava_checkpoint):
    """HF kwargs that override config fields reach the config, through both entry points."""
    from transformers import LlavaOnevisionForConditionalGeneration

    explicit = stop_hf.from_pretrained(llava_checkpoint, stop_config="uniform_r10", vision_feature_layer=-2)
    via_kwarg = LlavaOnevisionForConditionalGeneration.from_pretrained(
        llava_checkpoint, stop_config="uniform_r10", vision_feature_layer=-2
    )
    for model in (explicit, via_kwarg):
        assert model.config.vision_feature_layer == -2 and stop_hf.is_patched(model)


def test_from_pretrained_of_an_unsupported_checkpoint_names_supported(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=32,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    ).save_pretrained(tmp_path)
    with pytest.raises(TypeError) as err:
        stop_hf.from_pretrained(tmp_path, stop_config="uniform_r10")
    message = str(err.value)
    assert (
        "'qwen2'" in message
        and "llava_onevision" in message
        and "Qwen2_5_VLForConditionalGeneration" in message
    )


def test_processor_path_from_mp4(llava_checkpoint, tmp_path):
    from stop_hf.runner import VideoLLM

    video = write_video(tmp_path / "clip.mp4", num_frames=8)
    llm = VideoLLM.from_pretrained(llava_checkpoint, stop_config="uniform_r10", num_frames=8)
    answer = llm.answer(video, "what happens ?", max_new_tokens=4)
    assert answer.video_tokens == 8 * 196 + 1 and answer.video_tokens_after == 8 * 20 + 1
    assert (
        answer.prompt_tokens - answer.prompt_tokens_after == answer.video_tokens - answer.video_tokens_after
    )


# ------------------------------------------------------------------------------------------------ guards
def test_unsupported_model_class_names_supported():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    model = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=32,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    with pytest.raises(TypeError) as err:
        stop_hf.patch(model, "uniform_r10")
    message = str(err.value)
    assert "Qwen2ForCausalLM" in message
    assert (
        "LlavaOnevisionForConditionalGeneration" in message
        and "Qwen2_5_VLForConditionalGeneration" in message
    )


def test_missing_signal_is_a_clear_error():
    """A method that needs attention gets it from the hooks; calling the pruner without it names the field."""
    from stop_hf.pruners import PruneInput

    x = PruneInput(features=torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match="attention"):
        x.require("attention", method="visionzip")


def test_saliency_layer_out_of_range_is_named(llava_model):
    with pytest.raises(ValueError, match=r"saliency_layer=5 .* 2 layers; allowed: -2 \.\. 1"):
        stop_hf.patch(llava_model, {"method": "visionzip", "retention": 0.1, "saliency_layer": 5})


def test_saliency_layer_selects_the_hooked_layer(llava_model, llava_inputs):
    """A different layer gives a different saliency signal (the hook really moves)."""
    attention = {}
    for layer in (0, 1):
        stop_hf.patch(llava_model, {"method": "visionzip", "retention": 0.1, "saliency_layer": layer})
        logits_of(llava_model, llava_inputs)
        attention[layer] = stop_hf.last_prune_report(llava_model)[0]["attention"]
    assert attention[0].shape == (8, 196) and not torch.allclose(attention[0], attention[1])
