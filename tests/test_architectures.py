"""The invariant suite, once for every registered architecture (`stop_hf.patches.ARCHITECTURES`): identity at
retention 1.0, unpatch, the architecture's reference (`lm_reference`: masked, or shortened for hybrid LLMs), greedy
generate equals a manual decode loop, beams, batches, isolation, save/reload and the guards. Inputs go through each
architecture's own processor path (`ArchAdapter.processor_inputs`, what `VideoLLM` uses). Architecture-specific
behaviour stays in the per-architecture files."""

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
    kept_logits,
    masked_reference_logits,
    synthetic_frames,
    tiny_checkpoint,
)
from stop_hf.testing.reference import identical

QUESTION = "what happens in the video ?"
#: (architecture, position_mode) for the generate-mode tests: compact renumbering only where the LLM has 1-D positions
#: and each video is one run of tokens (`compact_positions`)
POSITION_MODES = [
    (name, mode)
    for name, cls in ARCHITECTURES.items()
    for mode in (("original", "compact") if cls.positions_1d and cls.compact_positions else ("original",))
]
WITH_1D_POSITIONS = [
    name for name, cls in ARCHITECTURES.items() if cls.positions_1d and cls.compact_positions
]
WITHOUT_1D_POSITIONS = [name for name, cls in ARCHITECTURES.items() if name not in WITH_1D_POSITIONS]


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
    # the same model object before and after: one CI run saw a last-bit difference between two copies
    unpatched = logits_of(model, inputs)
    stop_hf.patch(model, config)
    assert torch.equal(logits_of(model, inputs), unpatched)
    assert torch.equal(greedy(model, inputs), greedy(reference, inputs))


def test_unpatch_restores_bit_identical(arch, model, reference, inputs):
    unpatched = logits_of(model, inputs)
    stop_hf.patch(model, {"method": "visionzip", "retention": 0.1, "sink": True})
    assert not computed(logits_of(model, inputs)).all()
    stop_hf.unpatch(model)
    assert not stop_hf.is_patched(model) and not hasattr(model.config, "stop_config")
    assert architecture(arch).video_features_method not in vars(model.model)
    logits_of(reference, inputs)  # transformers adds some hooks on a model's first forward
    assert hook_counts(model) == hook_counts(reference)  # every stop_hf hook removed
    assert torch.equal(logits_of(model, inputs), unpatched)
    assert torch.equal(greedy(model, inputs), greedy(reference, inputs))


# ------------------------------------------------------------------------------------------------ positions
@pytest.mark.parametrize("retention", [0.5, 0.1])
def test_pruned_prefill_equals_reference(model, reference, inputs, retention):
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
    """At the original positions, every method's prefill equals the architecture's reference (merged tokens
    included)."""
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


@pytest.mark.parametrize("arch", WITH_1D_POSITIONS, indirect=True)
def test_masked_reference_detects_compact_positions(model, reference, inputs):
    """The oracle is sharp: compact positions (a different, valid policy) do not match original positions."""
    stop_hf.patch(model, {"method": "uniform", "retention": 0.5, "position_mode": "compact"})
    pruned = logits_of(model, inputs)
    expected, keep = masked_reference_logits(reference, inputs, stop_hf.last_prune_report(model))
    assert (pruned[0][keep[0]] - kept_logits(expected, keep)[0]).abs().max() > 1e-3


@pytest.mark.parametrize("arch", WITHOUT_1D_POSITIONS, indirect=True)
def test_compact_positions_are_refused_without_1d_positions(model, inputs):
    stop_hf.patch(model, {"method": "uniform", "retention": 0.5, "position_mode": "compact"})
    with pytest.raises(StopUnsupportedError, match="compact"):
        logits_of(model, inputs)


@pytest.mark.parametrize("retention", [0.5, 0.1])
@pytest.mark.parametrize(("arch", "mode"), POSITION_MODES, indirect=["arch"])
def test_greedy_generate_equals_manual_loop(model, inputs, retention, mode):
    stop_hf.patch(model, {"method": "uniform", "retention": retention, "position_mode": mode})
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


@pytest.mark.parametrize(("arch", "mode"), POSITION_MODES, indirect=["arch"])
def test_beam_search_score_equals_teacher_forced_decode(model, inputs, mode):
    """The best beam's score is the sum of its token log-probs (length_penalty 0): recomputing them with a plain
    decode loop checks the cache reordering, mask translation and positions of every beam step."""
    stop_hf.patch(model, {"method": "uniform", "retention": 0.1, "position_mode": mode})
    kwargs = dict(max_new_tokens=4, min_new_tokens=4, num_beams=3, length_penalty=0.0, do_sample=False)
    with torch.no_grad():
        out = model.generate(**inputs, output_scores=True, return_dict_in_generate=True, **kwargs)
    tokens = out.sequences[0, inputs["input_ids"].shape[1] :]
    assert tokens.shape == (4,)
    expected = teacher_forced_log_prob(model, inputs, tokens)
    assert abs(float(out.sequences_scores[0]) - float(expected)) <= 1e-4


@pytest.mark.parametrize(("arch", "mode"), POSITION_MODES, indirect=["arch"])
def test_generate_without_cache_equals_cached(model, inputs, mode):
    """use_cache=False re-runs (and re-prunes) the whole sequence at every step."""
    stop_hf.patch(model, {"method": "uniform", "retention": 0.1, "position_mode": mode})
    assert torch.equal(greedy(model, inputs), greedy(model, inputs, use_cache=False))


def test_forward_without_cache_equals_cached(model, inputs):
    stop_hf.patch(model, {"method": "uniform", "retention": 0.5})
    with torch.no_grad():
        cached = model(**inputs).logits
        uncached = model(**inputs, use_cache=False).logits
    assert torch.equal(computed(cached), computed(uncached))
    assert (cached - uncached).nan_to_num().abs().max() <= 1e-5


def test_sampling_with_two_return_sequences(model, inputs):
    stop_hf.patch(model, {"method": "uniform", "retention": 0.1})
    last = logits_of(model, inputs)[:, -1]
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=3,
            do_sample=True,
            num_return_sequences=2,
            output_logits=True,
            return_dict_in_generate=True,
        )
    length = inputs["input_ids"].shape[1]
    assert out.sequences.shape == (2, length + 3)
    assert torch.equal(out.sequences[:, :length], inputs["input_ids"].repeat(2, 1))
    assert (out.logits[0] - last).abs().max() <= 1e-5  # both rows' first step is the prompt's last logits


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
def test_two_models_and_a_deepcopy_do_not_affect_each_other(arch, reference, inputs):
    model_a, model_b = copy.deepcopy(reference), copy.deepcopy(reference)
    stop_hf.patch(model_a, {"method": "visionzip", "retention": 0.5})
    stop_hf.patch(model_b, {"method": "uniform", "retention": 0.1})
    first_a, first_b = logits_of(model_a, inputs), logits_of(model_b, inputs)
    assert computed(first_a).sum() != computed(first_b).sum()
    assert identical(logits_of(model_a, inputs), first_a)
    assert identical(logits_of(model_b, inputs), first_b)
    assert model_a.config.stop_config["retention"] == 0.5 and model_b.config.stop_config["retention"] == 0.1
    # patching is per instance: the unpatched model's modules carry no wrapper
    wrapped = architecture(arch).video_features_method
    assert not any(wrapped in vars(module) for module in reference.modules())
    clone = copy.deepcopy(model_a)
    assert stop_hf.get_stop_config(clone) == stop_hf.get_stop_config(model_a)
    assert identical(logits_of(clone, inputs), first_a)
    # the copy owns its hooks: it encodes with its own (here: changed) vision tower, its report is its own call's
    with torch.no_grad():
        for param in architecture(arch).vision_module(clone).parameters():
            param.mul_(0.5)
    changed = logits_of(clone, inputs)
    (entry,) = stop_hf.last_prune_report(clone)
    assert entry["attention"] is not None and not identical(changed, first_a)
    length, dropped = inputs["input_ids"].shape[1], entry["tokens_before"] - entry["tokens_after"]
    assert computed(changed).sum() == computed(first_a).sum() == length - dropped
    assert identical(logits_of(model_a, inputs), first_a)
    stop_hf.unpatch(clone)
    assert computed(logits_of(clone, inputs)).all() and stop_hf.is_patched(model_a)
    assert computed(logits_of(reference, inputs)).all()


@pytest.mark.parametrize(
    "config",
    [
        {"method": "holitom", "retention": 0.25, "sink": True},
        {"method": "random", "retention": 0.2, "params": {"seed": 7}},
    ],
    ids=["holitom", "random"],
)
def test_deterministic_across_runs(model, inputs, config):
    stop_hf.patch(model, config)
    assert identical(logits_of(model, inputs), logits_of(model, inputs))


# ------------------------------------------------------------------------------------------------ loading
def test_from_pretrained_kwarg_auto_class_and_save_reload(arch, checkpoint, inputs, tmp_path):
    from transformers import AutoModelForImageTextToText

    cls = compat.model_class(architecture(arch).model_class)
    assert not stop_hf.is_patched(cls.from_pretrained(checkpoint))
    direct = cls.from_pretrained(checkpoint, stop_config={"method": "uniform", "retention": 0.5})
    assert stop_hf.get_stop_config(direct).retention == 0.5
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, stop_config="uniform_r25").eval()
    assert type(model) is cls and stop_hf.get_stop_config(model).retention == 0.25
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


def test_labels_work_when_not_pruning(model, inputs):
    stop_hf.patch(model, {"method": "none"})
    assert model(**inputs, labels=inputs["input_ids"]).loss is not None


def test_prune_images_is_refused_clearly(model):
    with pytest.raises(NotImplementedError, match="prune_images"):
        stop_hf.patch(model, {"method": "uniform", "retention": 0.5, "prune_images": True})
    assert not stop_hf.is_patched(model)


def test_saliency_layer_out_of_range_is_named(model):
    with pytest.raises(ValueError, match="saliency_layer=99 is out of range"):
        stop_hf.patch(model, {"method": "visionzip", "retention": 0.25, "saliency_layer": 99})
    assert not stop_hf.is_patched(model)


# ------------------------------------------------------------------------------------------------ state hygiene
def _reachable_tensors(roots) -> list[torch.Tensor]:
    """Every tensor reachable from `roots` through object references, parameters and buffers excepted. Modules'
    globals and classes are not followed (they hold no per-call state)."""
    import gc
    import types

    skip = set()
    for root in roots:
        if isinstance(root, torch.nn.Module):
            skip |= {id(p) for p in root.parameters()} | {id(b) for b in root.buffers()}
    seen, stack, found = set(), list(roots), []
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType)):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            if id(obj) not in skip:
                found.append(obj)
            continue
        if isinstance(obj, types.FunctionType):
            stack.extend([obj.__closure__, obj.__defaults__, obj.__kwdefaults__, obj.__dict__])
            continue
        stack.extend(gc.get_referents(obj))
    return found


def test_after_generate_no_unpruned_video_tensor_stays_referenced(arch, model, inputs):
    """After generate returns, nothing reachable from the model (its hooks, wrappers and state, and this thread's
    per-call values) has the size of the unpruned video: features, signals and masks are all released; the report
    keeps CPU copies of indices and scores only (no embeddings unless asked for with `report_embeddings`)."""
    stop_hf.patch(model, {"method": "holitom", "retention": 0.25, "sink": True})
    state = model._stop_state
    with torch.no_grad(), stop_hf.report_embeddings(False):  # the default outside the test suite
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    del out
    (entry,) = stop_hf.last_prune_report(model)
    unpruned = entry["tokens_before"]
    per_call = [state.encoded.get(), state.capture.get(), state.call.get(), state.report.get()]
    tensors = _reachable_tensors([model, *per_call])
    assert tensors, "the walk found nothing: it does not reach the model's state"
    width = model.config.get_text_config().hidden_size
    # the report's CPU index maps (kept positions, assignments) may be video-long; nothing else may
    held = [
        (tuple(t.shape), t.dtype, t.device.type)
        for t in tensors
        if (unpruned in t.shape and (t.is_floating_point() or t.device.type != "cpu"))
        or t.numel() >= unpruned * width
    ]
    assert not held, f"tensors of the unpruned video's size stay referenced: {held}"
    assert "result" not in entry and entry["index"].device.type == "cpu"
    with torch.no_grad(), stop_hf.report_embeddings():
        model(**inputs)
    (entry,) = stop_hf.last_prune_report(model)
    assert (
        entry["result"].embeds.device.type == "cpu"
        and entry["result"].embeds.shape[0] == entry["index"].numel()
    )
