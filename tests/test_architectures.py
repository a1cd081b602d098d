"""The invariant suite, once for every registered architecture (`stop_hf.patches.ARCHITECTURES`): identity at
retention 1.0, unpatch, the masked reference, greedy generate equals a manual decode loop, beams, batches, isolation,
save/reload and the guards. Inputs go through each architecture's own processor path (`ArchAdapter.processor_inputs`,
what `VideoLLM` uses). Architecture-specific behaviour stays in the per-architecture files."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from conftest import assert_matches_reference, computed, greedy, logits_of, manual_greedy_logits
from stop_hf.patches import ARCHITECTURES, architecture

import stop_hf
from stop_hf import StopUnsupportedError, compat
from stop_hf.testing import (
    build_processor,
    synthetic_frames,
    tiny_checkpoint,
)
from stop_hf.testing.reference import identical

QUESTION = "what happens in the video ?"


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def arch(request):
    return request.param


@pytest.fixture(scope="module")
def checkpoint(arch):
    return tiny_checkpoint(arch)


@pytest.fixture(scope="module")
def reference(arch, checkpoint):
    """The never-patched tiny model (the oracle)."""
    return compat.model_class(architecture(arch).model_class).from_pretrained(checkpoint).eval()


@pytest.fixture()
def model(reference):
    return copy.deepcopy(reference)


@pytest.fixture(scope="module")
def processor(arch):
    return build_processor(arch)


def prompt(processor, videos: int = 1, question: str = QUESTION) -> str:
    content = [{"type": "video"}] * videos + [{"type": "text", "text": question}]
    return processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )


def make_inputs(arch, processor, rows: list[tuple[str, list]]) -> dict:
    """One (prompt, frame arrays) per row, through the architecture's processor path (left padding)."""
    adapter = architecture(arch)
    decoded = [adapter.decode_video(frames, len(frames)) for _, videos in rows for frames in videos]
    kwargs = {"return_tensors": "pt"}
    if len(rows) > 1:
        kwargs |= {"padding": True, "padding_side": "left"}
    return dict(adapter.processor_inputs(processor, [text for text, _ in rows], decoded, **kwargs))


def frames(num_frames: int = 4, seed: int = 0):
    return synthetic_frames(num_frames, 112, 168, seed=seed, sink_patch=(10, 10, 30))


@pytest.fixture(scope="module")
def inputs(arch, processor):
    return make_inputs(arch, processor, [(prompt(processor), [frames()])])


def hook_counts(model) -> list[tuple[str, int, int]]:
    return [(name, len(m._forward_pre_hooks), len(m._forward_hooks)) for name, m in model.named_modules()]


# ------------------------------------------------------------------------------------------------ identity
@pytest.mark.parametrize("config", [{"method": "none"}, {"method": "uniform", "retention": 1.0}])
def test_identity_configs_are_bit_identical(model, reference, inputs, config):
    stop_hf.patch(model, config)
    assert torch.equal(logits_of(model, inputs), logits_of(reference, inputs))
    assert torch.equal(greedy(model, inputs), greedy(reference, inputs))


def test_unpatch_restores_bit_identical(model, reference, inputs):
    stop_hf.patch(model, {"method": "visionzip", "retention": 0.1, "sink": True})
    assert not computed(logits_of(model, inputs)).all()
    stop_hf.unpatch(model)
    assert compat.VIDEO_FEATURES_METHOD not in vars(model.model)
    assert hook_counts(model) == hook_counts(reference)  # every stop_hf hook removed
    assert torch.equal(logits_of(model, inputs), logits_of(reference, inputs))
    assert torch.equal(greedy(model, inputs), greedy(reference, inputs))


# ------------------------------------------------------------------------------------------------ positions
@pytest.mark.parametrize("retention", [0.5, 0.1])
def test_pruned_prefill_equals_masked_reference(model, reference, inputs, retention):
    stop_hf.patch(model, {"method": "uniform", "retention": retention})
    report = assert_matches_reference(model, reference, inputs)
    (entry,) = report
    h, w = entry["grid"]
    per_frame = h * w
    assert entry["tokens_after"] < entry["tokens_before"]
    assert entry["tokens_before"] - entry["tokens_after"] == entry["frames"] * (
        per_frame - round(per_frame * retention)
    )


@pytest.mark.parametrize(
    ("method", "sink"),
    [(m, s) for m in ("visionzip", "fastvid", "holitom") for s in (False, True)] + [("prunevid", False)],
)
def test_paper_methods_end_to_end(model, reference, inputs, method, sink):
    """At the original positions, every method's prefill equals the masked reference (merged tokens included)."""
    config = {"method": method, "retention": 0.25, "sink": sink, "position_mode": "original"}
    if method == "fastvid":  # the frame-mean global feature exists on every architecture (no MAP head needed)
        config["global_feature"] = "mean"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "stop_config.global_feature='mean'", UserWarning)
        stop_hf.patch(model, config)
        report = assert_matches_reference(model, reference, inputs)
    assert report[0]["tokens_after"] < report[0]["tokens_before"]
    out = greedy(model, inputs, n=3, min_new_tokens=3)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 3)


@pytest.mark.parametrize("retention", [0.5, 0.1])
def test_greedy_generate_equals_manual_loop(model, inputs, retention):
    stop_hf.patch(model, {"method": "uniform", "retention": retention})
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    manual = manual_greedy_logits(model, inputs, n=5)
    assert torch.equal(out.sequences[:, inputs["input_ids"].shape[1] :], manual.argmax(-1))
    assert (torch.stack(out.logits, dim=1) - manual).abs().max() <= 1e-5


def teacher_forced_log_prob(model, inputs, tokens):
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


def test_beam_search_score_equals_teacher_forced_decode(model, inputs):
    stop_hf.patch(model, {"method": "uniform", "retention": 0.1})
    kwargs = dict(max_new_tokens=4, min_new_tokens=4, num_beams=3, length_penalty=0.0, do_sample=False)
    with torch.no_grad():
        out = model.generate(**inputs, output_scores=True, return_dict_in_generate=True, **kwargs)
    tokens = out.sequences[0, inputs["input_ids"].shape[1] :]
    assert tokens.shape == (4,)
    expected = teacher_forced_log_prob(model, inputs, tokens)
    assert abs(float(out.sequences_scores[0]) - float(expected)) <= 1e-4


def test_generate_without_cache_equals_cached(model, inputs):
    stop_hf.patch(model, {"method": "uniform", "retention": 0.1})
    assert torch.equal(greedy(model, inputs), greedy(model, inputs, use_cache=False))


# ------------------------------------------------------------------------------------------------ batches
def test_batch_with_left_padding_and_different_kept_counts(arch, model, reference, processor):
    """Row 0 holds one video, row 1 two: different prompt lengths (left padding) and kept counts (re-pad)."""
    rows = [
        (prompt(processor), [frames(seed=1)]),
        (prompt(processor, 2, "what is different ?"), [frames(seed=2), frames(seed=3)]),
    ]
    batch = make_inputs(arch, processor, rows)
    single = [make_inputs(arch, processor, [row]) for row in rows]
    assert batch["attention_mask"][0].min() == 0  # row 0 is left-padded
    stop_hf.patch(model, {"method": "uniform", "retention": 0.1})
    assert_matches_reference(model, reference, batch)
    batched = greedy(model, batch, n=5)[:, batch["input_ids"].shape[1] :]
    with torch.no_grad():
        batched_last = model(**batch).logits[:, -1]
    for row, inputs in enumerate(single):
        assert torch.equal(batched[row], greedy(model, inputs, n=5)[0, inputs["input_ids"].shape[1] :])
        assert (batched_last[row] - logits_of(model, inputs)[0, -1]).abs().max() <= 1e-5


# ------------------------------------------------------------------------------------------------ isolation
def test_two_models_and_a_deepcopy_do_not_affect_each_other(reference, inputs):
    model_a, model_b = copy.deepcopy(reference), copy.deepcopy(reference)
    stop_hf.patch(model_a, {"method": "visionzip", "retention": 0.5})
    stop_hf.patch(model_b, {"method": "uniform", "retention": 0.1})
    first_a, first_b = logits_of(model_a, inputs), logits_of(model_b, inputs)
    assert computed(first_a).sum() != computed(first_b).sum()
    assert identical(logits_of(model_a, inputs), first_a)
    clone = copy.deepcopy(model_a)
    assert stop_hf.get_stop_config(clone) == stop_hf.get_stop_config(model_a)
    assert identical(logits_of(clone, inputs), first_a)
    assert identical(logits_of(model_a, inputs), first_a)
    assert computed(logits_of(reference, inputs)).all()


def test_deterministic_across_runs(model, inputs):
    stop_hf.patch(model, {"method": "holitom", "retention": 0.25, "sink": True})
    assert identical(logits_of(model, inputs), logits_of(model, inputs))


# ------------------------------------------------------------------------------------------------ loading
def test_from_pretrained_kwarg_auto_class_and_save_reload(arch, checkpoint, inputs, tmp_path):
    from transformers import AutoModelForImageTextToText

    cls = compat.model_class(architecture(arch).model_class)
    assert not stop_hf.is_patched(cls.from_pretrained(checkpoint))
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, stop_config="uniform_r25").eval()
    assert type(model) is cls and stop_hf.is_patched(model)
    expected = logits_of(model, inputs)
    assert not computed(expected).all()
    model.save_pretrained(tmp_path)
    reloaded = stop_hf.from_pretrained(tmp_path).eval()
    assert stop_hf.get_stop_config(reloaded) == stop_hf.get_stop_config(model)
    assert identical(logits_of(reloaded, inputs), expected)


def test_registry_entry_is_complete(arch, reference):
    adapter = architecture(arch)
    assert type(stop_hf.patches.adapter_for(reference)) is type(adapter)
    assert reference.config.model_type in adapter.model_types
    assert stop_hf.patches.SUPPORTED_MODEL_TYPES[reference.config.model_type] == adapter.model_class
    assert adapter.lmms_model and adapter.lmms_class and adapter.default_pretrained
    assert adapter.bench_vision and adapter.bench_image_size > 0 and adapter.bench_tokens_per_frame > 0
    assert len(adapter.seen_size(adapter.token_grid(frames()))) == 2


# ------------------------------------------------------------------------------------------------ guards
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cache_implementation": "static"}, r"StaticCache \(cache_implementation='static'"),
        ({"prefill_chunk_size": 64}, r"chunked prefill .*prefill_chunk_size"),
    ],
)
def test_unsupported_generate_modes_are_refused(model, inputs, kwargs, message):
    stop_hf.patch(model, "uniform_r25")
    with pytest.raises(StopUnsupportedError, match=message):
        greedy(model, inputs, n=2, **kwargs)


def test_saliency_layer_out_of_range_is_named(model):
    with pytest.raises(ValueError, match="saliency_layer=99 is out of range"):
        stop_hf.patch(model, {"method": "visionzip", "retention": 0.25, "saliency_layer": 99})
    assert not stop_hf.is_patched(model)
