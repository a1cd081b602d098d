"""LLaVA-OneVision end to end on the tiny model: invariants, generate modes, isolation, persistence, guards."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import LLAVA_PROMPT, clip, computed, greedy, logits_of

import stop_hf
from stop_hf import StopUnsupportedError, compat
from stop_hf.testing import kept_logits, masked_reference_logits, write_video
from stop_hf.testing.reference import identical


def manual_greedy(model, inputs, n=6):
    """A hand-written decode loop: prefill, then one token at a time through the cache, no mask or positions."""
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens = [token]
        for _ in range(n - 1):
            out = model(
                input_ids=token, **compat.cache_input(model, compat.output_cache(out)), use_cache=True
            )
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(token)
    return torch.cat(tokens, dim=1)


# ------------------------------------------------------------------------------------------------ identity
def test_unpatch_restores_bit_identical(llava_model, llava_reference, llava_inputs):
    stop_hf.patch(llava_model, {"method": "uniform", "retention": 0.1})
    assert not computed(logits_of(llava_model, llava_inputs)).all()
    stop_hf.unpatch(llava_model)
    assert not stop_hf.is_patched(llava_model) and not hasattr(llava_model.config, "stop_config")
    assert "get_video_features" not in vars(llava_model.model)
    assert torch.equal(logits_of(llava_model, llava_inputs), logits_of(llava_reference, llava_inputs))
    assert torch.equal(greedy(llava_model, llava_inputs, n=6), greedy(llava_reference, llava_inputs, n=6))


# ------------------------------------------------------------------------------------------------ masked reference
@pytest.mark.parametrize("retention", [0.5, 0.1])
def test_pruned_prefill_equals_masked_reference(llava_model, llava_reference, llava_inputs, retention):
    stop_hf.patch(llava_model, {"method": "uniform", "retention": retention})
    pruned = logits_of(llava_model, llava_inputs)
    report = stop_hf.last_prune_report(llava_model)
    assert report[0]["tokens_before"] == 8 * 196 + 1
    assert report[0]["tokens_after"] == 8 * round(196 * retention) + 1
    reference, keep = masked_reference_logits(llava_reference, llava_inputs, report)
    assert pruned.shape[:2] == llava_inputs["input_ids"].shape and torch.equal(computed(pruned), keep)
    assert (pruned[0][keep[0]] - kept_logits(reference, keep)[0]).abs().max() <= 1e-5


def test_masked_reference_detects_position_bugs(llava_model, llava_reference, llava_inputs):
    """The oracle is sharp: compact positions (a different, valid policy) do not match original positions."""
    stop_hf.patch(llava_model, {"method": "uniform", "retention": 0.5, "position_mode": "compact"})
    pruned = logits_of(llava_model, llava_inputs)
    reference, keep = masked_reference_logits(
        llava_reference, llava_inputs, stop_hf.last_prune_report(llava_model)
    )
    assert (pruned[0][keep[0]] - kept_logits(reference, keep)[0]).abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["original", "compact"])
def test_greedy_generate_equals_manual_loop(llava_model, llava_inputs, mode):
    stop_hf.patch(llava_model, {"method": "uniform", "retention": 0.1, "position_mode": mode})
    generated = greedy(llava_model, llava_inputs, n=6)[:, llava_inputs["input_ids"].shape[1] :]
    assert torch.equal(generated, manual_greedy(llava_model, llava_inputs, n=6))


def test_use_cache_false_forward_matches(llava_model, llava_inputs):
    stop_hf.patch(llava_model, {"method": "uniform", "retention": 0.5})
    with torch.no_grad():
        cached = llava_model(**llava_inputs).logits
        uncached = llava_model(**llava_inputs, use_cache=False).logits
    assert torch.equal(computed(cached), computed(uncached))
    assert (cached - uncached).nan_to_num().abs().max() <= 1e-5


# ------------------------------------------------------------------------------------------------ generate modes
def first_step_logits(model, inputs, **kwargs):
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=3, output_logits=True, return_dict_in_generate=True, **kwargs
        )
    return out, out.logits[0]


def test_sampling_with_two_return_sequences(llava_model, llava_inputs):
    stop_hf.patch(llava_model, {"method": "uniform", "retention": 0.1})
    last = logits_of(llava_model, llava_inputs)[:, -1]
    torch.manual_seed(0)
    out, step0 = first_step_logits(llava_model, llava_inputs, do_sample=True, num_return_sequences=2)
    assert out.sequences.shape == (2, llava_inputs["input_ids"].shape[1] + 3)
    assert torch.equal(
        out.sequences[:, : llava_inputs["input_ids"].shape[1]], llava_inputs["input_ids"].repeat(2, 1)
    )
    for row in range(2):
        assert (step0[row] - last[0]).abs().max() <= 1e-5


def teacher_forced_log_prob(model, inputs, tokens):
    """Sum of log p(token) for `tokens` (n,) after the prompt, fed one at a time through the cache: () tensor."""
    total = torch.zeros(())
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
        for token in tokens:
            total += out.logits[0, -1].log_softmax(-1)[token]
            out = model(
                input_ids=token.view(1, 1),
                **compat.cache_input(model, compat.output_cache(out)),
                use_cache=True,
            )
    return total


@pytest.mark.parametrize("mode", ["original", "compact"])
def test_beam_search_score_equals_teacher_forced_decode(llava_model, llava_inputs, mode):
    """The best beam's score is the sum of its token log-probs (length_penalty 0): recomputing them with a plain
    decode loop checks the cache reordering, mask translation and positions of every beam step."""
    stop_hf.patch(llava_model, {"method": "uniform", "retention": 0.1, "position_mode": mode})
    kwargs = dict(max_new_tokens=4, min_new_tokens=4, num_beams=3, length_penalty=0.0, do_sample=False)
    with torch.no_grad():
        out = llava_model.generate(**llava_inputs, output_scores=True, return_dict_in_generate=True, **kwargs)
    tokens = out.sequences[0, llava_inputs["input_ids"].shape[1] :]
    assert tokens.shape == (4,)
    expected = teacher_forced_log_prob(llava_model, llava_inputs, tokens)
    assert abs(float(out.sequences_scores[0]) - float(expected)) <= 1e-4


def test_generate_without_cache_equals_cached(llava_model, llava_inputs):
    """use_cache=False re-runs (and re-prunes) the whole sequence at every step."""
    stop_hf.patch(llava_model, {"method": "uniform", "retention": 0.1, "position_mode": "compact"})
    assert torch.equal(
        greedy(llava_model, llava_inputs, n=6), greedy(llava_model, llava_inputs, n=6, use_cache=False)
    )


def test_batch_with_left_padding_and_different_kept_counts(llava_model, llava_processor):
    """Row 0 holds one video, row 1 two videos: different prompt lengths (left padding) and kept counts (re-pad).
    HF LLaVA-OV cannot batch videos with different frame counts (pixel_values_videos is one tensor)."""
    prompt_one = LLAVA_PROMPT
    prompt_two = "<|im_start|>user\n<video><video>what is different ?<|im_end|>\n<|im_start|>assistant\n"
    videos = [clip(4, seed=1), clip(4, seed=2), clip(4, seed=3)]
    batch = dict(
        llava_processor(text=[prompt_one, prompt_two], videos=videos, return_tensors="pt", padding=True)
    )
    single = [
        dict(llava_processor(text=[prompt_one], videos=videos[:1], return_tensors="pt")),
        dict(llava_processor(text=[prompt_two], videos=videos[1:], return_tensors="pt")),
    ]
    assert batch["attention_mask"][0].min() == 0  # row 0 is left-padded
    stop_hf.patch(llava_model, {"method": "uniform", "retention": 0.1})
    batched = greedy(llava_model, batch, n=5)[:, batch["input_ids"].shape[1] :]
    with torch.no_grad():
        batched_last = llava_model(**batch).logits[:, -1]
    for row, inputs in enumerate(single):
        assert torch.equal(batched[row], greedy(llava_model, inputs, n=5)[0, inputs["input_ids"].shape[1] :])
        assert (batched_last[row] - logits_of(llava_model, inputs)[0, -1]).abs().max() <= 1e-5


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


# ------------------------------------------------------------------------------------------------ isolation
def test_two_models_do_not_affect_each_other(llava_reference, llava_inputs):
    model_a, model_b = copy.deepcopy(llava_reference), copy.deepcopy(llava_reference)
    stop_hf.patch(model_a, {"method": "uniform", "retention": 0.5})
    stop_hf.patch(model_b, {"method": "random", "retention": 0.1, "params": {"seed": 3}})
    first_a = logits_of(model_a, llava_inputs)
    first_b = logits_of(model_b, llava_inputs)
    assert computed(first_a).sum() != computed(first_b).sum()
    assert identical(logits_of(model_a, llava_inputs), first_a)
    assert identical(logits_of(model_b, llava_inputs), first_b)
    assert computed(logits_of(llava_reference, llava_inputs)).all()
    assert model_a.config.stop_config["retention"] == 0.5 and model_b.config.stop_config["retention"] == 0.1
    # patching is per instance: the unpatched model's modules carry no wrapper
    assert not any(vars(module).get("get_video_features") for module in llava_reference.modules())


def test_deepcopy_of_a_patched_model_is_independent(llava_model, llava_inputs):
    """copy.deepcopy gives a model with its own hooks and state (not the original's closures)."""
    stop_hf.patch(llava_model, {"method": "visionzip", "retention": 0.2})
    expected = logits_of(llava_model, llava_inputs)
    clone = copy.deepcopy(llava_model)
    assert identical(logits_of(clone, llava_inputs), expected)
    with torch.no_grad():
        for param in clone.model.vision_tower.parameters():
            param.mul_(0.5)
    other_video = dict(llava_inputs, pixel_values_videos=llava_inputs["pixel_values_videos"].flip(1))
    assert (
        computed(logits_of(clone, other_video)).sum() == computed(expected).sum()
    )  # encoded, matched by the clone
    assert stop_hf.last_prune_report(clone)[0]["tokens_after"] == int(computed(expected).sum()) - 11
    assert identical(logits_of(llava_model, llava_inputs), expected)
    stop_hf.unpatch(clone)
    assert computed(logits_of(clone, llava_inputs)).all()
    assert stop_hf.is_patched(llava_model)


def test_deterministic_across_runs(llava_model, llava_inputs):
    stop_hf.patch(llava_model, {"method": "random", "retention": 0.2, "params": {"seed": 7}})
    assert identical(logits_of(llava_model, llava_inputs), logits_of(llava_model, llava_inputs))


# ------------------------------------------------------------------------------------------------ loading
def test_from_pretrained_kwarg_and_auto_class(llava_checkpoint):
    from transformers import AutoModelForImageTextToText, LlavaOnevisionForConditionalGeneration

    plain = LlavaOnevisionForConditionalGeneration.from_pretrained(llava_checkpoint)
    assert not stop_hf.is_patched(plain)
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(
        llava_checkpoint, stop_config="uniform_r25"
    )
    assert stop_hf.get_stop_config(model).retention == 0.25
    auto = AutoModelForImageTextToText.from_pretrained(
        llava_checkpoint, stop_config={"method": "uniform", "retention": 0.5}
    )
    assert (
        type(auto) is LlavaOnevisionForConditionalGeneration
        and stop_hf.get_stop_config(auto).retention == 0.5
    )
    explicit = stop_hf.from_pretrained(llava_checkpoint, stop_config="uniform_r10")
    assert stop_hf.get_stop_config(explicit).retention == 0.1


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


def test_save_reload_keeps_stop_config(llava_model, llava_inputs, tmp_path):
    from transformers import LlavaOnevisionForConditionalGeneration

    stop_hf.patch(llava_model, {"method": "uniform", "retention": 0.1})
    expected = logits_of(llava_model, llava_inputs)
    llava_model.save_pretrained(tmp_path)
    reloaded = stop_hf.from_pretrained(tmp_path)
    assert stop_hf.get_stop_config(reloaded) == stop_hf.get_stop_config(llava_model)
    assert identical(logits_of(reloaded.eval(), llava_inputs), expected)
    plain = LlavaOnevisionForConditionalGeneration.from_pretrained(tmp_path)
    assert plain.config.stop_config["retention"] == 0.1  # applied or warned about: tests/test_loading.py


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


def test_static_cache_is_refused(llava_model, llava_inputs):
    stop_hf.patch(llava_model, "uniform_r10")
    with pytest.raises(StopUnsupportedError, match=r"StaticCache \(cache_implementation='static'"):
        greedy(llava_model, llava_inputs, n=2, cache_implementation="static")


def test_chunked_prefill_is_refused(llava_model, llava_inputs):
    stop_hf.patch(llava_model, "uniform_r10")
    with pytest.raises(StopUnsupportedError, match=r"chunked prefill .*prefill_chunk_size"):
        greedy(llava_model, llava_inputs, n=2, prefill_chunk_size=64)


def test_labels_work_when_not_pruning(llava_model, llava_inputs):
    stop_hf.patch(llava_model, {"method": "none"})
    assert llava_model(**llava_inputs, labels=llava_inputs["input_ids"]).loss is not None


def test_prune_images_is_refused_clearly(llava_model):
    with pytest.raises(NotImplementedError, match="prune_images"):
        stop_hf.patch(llava_model, {"method": "uniform", "retention": 0.5, "prune_images": True})


def test_missing_signal_is_a_clear_error(llava_model):
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
