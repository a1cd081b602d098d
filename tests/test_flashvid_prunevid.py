"""FlashVID and PruneVid beyond the shared method tests: their refusals, quirks and deviations, budgets end to end,
and FlashVID's original-position prefill (it can emit an index twice, which the masked reference cannot hold)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import clip

import stop_hf
from stop_hf import StopConfig
from stop_hf.config import StopConfigError
from stop_hf.pruners import DEFAULT_SINK_WEIGHTS, KIND_COPY, PRUNERS, PruneInput
from stop_hf.pruners.prunevid import refine_frame_labels
from stop_hf.sink import Sink
from stop_hf.testing import build_processor, tiny_checkpoint
from stop_hf.testing.reference import capture_lm_inputs


# ------------------------------------------------------------------------------------------------ config errors
def test_prunevid_sink_is_refused():
    with pytest.raises(ValueError, match="no SToP variant"):
        PRUNERS["prunevid"](retention=0.1, sink=Sink(0.02))
    with pytest.raises(StopConfigError, match=r"sink=true: prunevid has no SToP variant"):
        StopConfig(method="prunevid", retention=0.1, sink=True)
    assert DEFAULT_SINK_WEIGHTS["prunevid"] == (0.0, 0.0)
    assert PRUNERS["prunevid"].needs == ()  # features only: no vision attention is captured for it


@pytest.mark.parametrize(("field", "value"), [("pruning_layer", 20), ("llm_retention_ratio", 0.3)])
def test_flashvid_in_llm_stage_is_refused(field, value):
    with pytest.raises(StopConfigError, match=rf"{field}={value}.*in-LLM stage.*never runs it"):
        StopConfig(method="flashvid", retention=0.1, params={field: value})


def test_flashvid_registration_and_budgets():
    assert DEFAULT_SINK_WEIGHTS["flashvid"] == (0.02, 0.0)
    assert PRUNERS["flashvid"].needs == ("attention",)
    budgets = {r: PRUNERS["flashvid"](retention=r).budgets(196) for r in (0.10, 0.15, 0.20, 0.25)}
    assert budgets[0.10] == (25, 18, 7) and budgets[0.25] == (62, 44, 18)  # the README's examples
    assert budgets[0.15] == (37, 26, 11) and budgets[0.20] == (49, 35, 14)


def test_bench_rows(tmp_path):
    from test_bench import SMALL_LLM, SMALL_VISION

    from stop_hf.bench import METHODS, BenchSettings, has_sink_variant, run_bench

    assert {"flashvid", "prunevid"} <= set(METHODS)
    assert has_sink_variant("flashvid") and not has_sink_variant("prunevid")
    settings = BenchSettings(
        frames=2,
        retentions=(0.25,),
        methods=("flashvid", "prunevid"),
        llm_layers=1,
        warmup=0,
        decode_tokens=1,
        out=str(tmp_path),
        shape_override={"llm": SMALL_LLM, "vision": SMALL_VISION},
    )
    rows = run_bench(settings)["rows"]
    assert [(r["method"], r["sink"]) for r in rows[2:]] == [
        ("flashvid", False),
        ("flashvid", True),
        ("prunevid", False),
    ]
    flashvid = rows[2]
    assert abs(flashvid["achieved_retention"] - 1.25 * 0.25) < 0.02  # the 1.25x vision-side budget


# ------------------------------------------------------------------------------------------------ quirks
def weak_sink_input(t=4, n=196, d=32, seed=0) -> PruneInput:
    """Near-uniform attention (~1/729) with weak sinks: SToP's absolute mu_s offset drives most ADTS weights
    negative, so fewer than A tokens per frame stay positive (the reference then repeats picks)."""
    g = torch.Generator().manual_seed(seed)
    scene = torch.randn(d, generator=g)
    features = 2.0 * scene + torch.randn(t, n, d, generator=g)
    attention = (1 + 0.5 * torch.rand(t, n, generator=g)) / 729
    attention[:, :6] *= 1.3
    return PruneInput(features=features, attention=attention, grid=(14, 14))


def test_flashvid_repeats_picks_as_the_reference_and_distinct_picks_is_opt_in():
    x = weak_sink_input()
    sink = Sink(*DEFAULT_SINK_WEIGHTS["flashvid"])
    reference = PRUNERS["flashvid"](retention=0.25, sink=sink)(x)  # the default: the reference's greedy loop
    distinct = PRUNERS["flashvid"](retention=0.25, sink=sink, distinct_picks=True)(x)
    ref_copies = reference.index[reference.kind == KIND_COPY]
    distinct_copies = distinct.index[distinct.kind == KIND_COPY]
    assert ref_copies.unique().numel() < ref_copies.numel()  # the same token picked again, as the reference
    assert (
        distinct_copies.unique().numel() == distinct_copies.numel()
    )  # opt-in: every ADTS pick a different token
    # where the reference picks distinct tokens, both agree
    base = PRUNERS["flashvid"](retention=0.25)(x)
    base_distinct = PRUNERS["flashvid"](retention=0.25, distinct_picks=True)(x)
    base_copies = base.index[base.kind == KIND_COPY]
    assert base_copies.unique().numel() == base_copies.numel()
    assert torch.equal(base.index, base_distinct.index)


def test_flashvid_alpha_zero_makes_no_attention_and_diversity_picks():
    """alpha = 0: the reference skips the selection (Fanziyang-v/FlashVID @1d37422 flashvid/utils.py:101); every
    token is a TSTM token."""
    x = weak_sink_input(t=1)
    pruner = PRUNERS["flashvid"](retention=0.1, alpha=0.0)
    assert pruner.budgets(196) == (25, 0, 25)
    result = pruner(x)
    assert bool((result.kind != KIND_COPY).all())
    assert result.index.numel() == 25  # one single-frame segment: ceil(196 * 25 / 196) clusters


@pytest.mark.parametrize(("expansion", "retention"), [(4.0, 0.3), (1.25, 0.85), (2.0, 0.75)])
def test_flashvid_budget_over_the_frame_is_refused_naming_both_fields(expansion, retention):
    with pytest.raises(StopConfigError) as err:
        StopConfig(method="flashvid", retention=retention, params={"expansion": expansion})
    message = str(err.value)
    assert f"expansion={expansion!r}" in message and f"retention={retention!r}" in message


def test_flashvid_budget_of_exactly_the_frame_is_allowed():
    StopConfig(method="flashvid", retention=0.8)  # 0.8 * 1.25 = 1: B = N
    StopConfig(method="flashvid", retention=1.0)  # identity: the pruner never runs


def test_flashvid_per_segment_sink_score():
    """With SToP, each segment's frames use the sink score of that segment's attention, not the video's."""
    x = weak_sink_input(t=16)
    result = PRUNERS["flashvid"](retention=0.1, sink=Sink(0.02))(x)
    per_frame = result.info["sink_score_per_frame"]
    sink = Sink(0.02)
    for start, end in result.info["segments"]:
        # each frame its own row of the segment's score, as the reference (token_selection.py:102-103)
        expected = sink.frame_scores(x.attention[start : end + 1])
        assert torch.equal(per_frame[start : end + 1], expected)
    assert result.info["sink_score"].shape == (196,)


def test_flashvid_without_tstm_budget_keeps_only_copies():
    """B = 3 gives A = 3 and Q = 0: no TSTM token, as the reference (its merge and clustering run only when
    Q > 0, rlqja1107/SToP @3bf998c pruning/flashvid/utils.py:159,183)."""
    x = weak_sink_input(t=4)
    pruner = PRUNERS["flashvid"](retention=0.01)
    assert pruner.budgets(196) == (3, 3, 0)
    result = pruner(x)
    assert result.index.numel() == 4 * 3 and bool((result.kind == KIND_COPY).all())


def test_flashvid_soft_threshold_on_a_long_static_segment():
    """24 identical frames: one 17-frame segment where almost everything would merge, so the soft threshold (the
    K-th largest parent cosine) takes over; the video still keeps its budget and stays finite."""
    g = torch.Generator().manual_seed(0)
    features = torch.randn(1, 196, 16, generator=g).expand(24, 196, 16).contiguous()
    attention = torch.rand(1, 196, generator=g).expand(24, 196).contiguous() + 1e-3
    result = PRUNERS["flashvid"](retention=0.25)(PruneInput(features=features, attention=attention))
    assert result.info["segment_sizes"] == [1] * 7 + [17]
    assert result.info["tstm_soft_threshold_segments"] == [7]
    total = result.info["token_budget"]
    assert 24 * total <= result.index.numel() <= 24 * (total + 1)
    assert torch.isfinite(result.embeds).all()


@pytest.mark.parametrize(
    ("labels", "refined"),
    [
        ([3, 2, 2, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], [2, 2, 2, 2] + [0] * 12),  # fixture case 2
        (
            [0] * 7 + [2] + [1] * 6 + [3, 3],
            [0] * 8 + [1] * 6 + [3, 3],
        ),  # fixture case 3: left wins the tie-free pick
        ([0, 0, 5, 1, 1], [0, 0, 0, 1, 1]),  # equal neighbour runs: the left one
        ([0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0]),  # two runs tied at the longest length are both kept
        ([0, 1, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]),  # label 0's longest run is 1 frame: it loses every frame
        ([0, 1, 2], [0, 0, 0]),  # nothing left to absorb into: label 0
    ],
)
def test_prunevid_refinement(labels, refined):
    assert refine_frame_labels(labels) == refined


def test_prunevid_static_video_is_one_clustered_window():
    features = torch.randn(1, 196, 16).expand(8, 196, 16).contiguous()
    result = PRUNERS["prunevid"](retention=0.1)(PruneInput(features=features))
    (detail,) = result.info["windows_detail"]
    assert (detail["size"], detail["static"]) == (8, 196)
    assert result.index.numel() == int(196 * detail["retain_ratio"])
    assert bool((result.index < 196).all())  # static tokens carry the window's first-frame position


# ------------------------------------------------------------------------------------------------ end to end
RETENTION = 0.1


def kept_video_tokens(entry) -> int:
    return entry["index"].numel()  # the pruner's output, without LLaVA-OV's trailing image_newline


def test_llava_kept_fraction(llava_model, llava_inputs):
    for preset in ("flashvid_baseline_r10", "flashvid_stop_r10", "prunevid_baseline_r10"):
        model = copy.deepcopy(llava_model)
        stop_hf.patch(model, preset)
        with torch.no_grad():
            model(**llava_inputs)
        entry = stop_hf.last_prune_report(model)[0]
        frames, tokens = entry["frames"], entry["grid"][0] * entry["grid"][1]
        kept, info = kept_video_tokens(entry), entry["info"]
        if preset.startswith("flashvid"):
            total, adts, _ = PRUNERS["flashvid"](retention=RETENTION).budgets(tokens)
            assert total == 25  # ceil(196 * 0.1 * 1.25): 1.25x the nominal budget, on purpose
            assert kept == frames * adts + sum(info["tstm_tokens_per_frame"])
            assert frames * total <= kept <= frames * (total + 1)
        else:
            details = info["windows_detail"]
            target = sum(
                w["retain_ratio"] * (w["static"] + w["size"] * (tokens - w["static"])) for w in details
            )
            groups = len(details) + frames
            assert target - groups <= kept <= target + 15 * groups
            assert abs(kept / (frames * tokens) - RETENTION) < 0.02


def original_position_reference(unpatched_model, inputs, report) -> torch.Tensor:
    """Logits (1, L', V) of the UNPATCHED language model fed the pruned sequence built by hand from `report`: each
    video's tokens sorted by source index (stable), each at its representative's original position (1-D or mRoPE),
    so two tokens that share an index share a position. Batch size 1."""
    lm_inputs = capture_lm_inputs(unpatched_model, inputs)
    embeds = lm_inputs["inputs_embeds"][0]
    length = embeds.shape[0]
    positions = lm_inputs["position_ids"]
    if positions is None:
        positions = torch.arange(length)[None]
    pieces, sources, previous = [], [], 0
    for entry in sorted(report, key=lambda e: e["placements"][0][1]):
        (row, start), result = entry["placements"][0], entry["result"]
        assert row == 0
        grid_tokens = entry["frames"] * entry["grid"][0] * entry["grid"][1]
        order = torch.sort(result.index, stable=True)
        pieces += [embeds[previous:start], result.embeds[order.indices].to(embeds.dtype)]
        sources += [torch.arange(previous, start), start + order.values]
        previous = start + grid_tokens
    pieces.append(embeds[previous:])
    sources.append(torch.arange(previous, length))
    source = torch.cat(sources)
    with torch.no_grad():
        hidden = unpatched_model.model.language_model(
            inputs_embeds=torch.cat(pieces)[None],
            attention_mask=torch.ones(1, source.numel(), dtype=torch.long),
            position_ids=positions[..., source],
        ).last_hidden_state
        return unpatched_model.lm_head(hidden)


def assert_equals_original_position_reference(model, reference, inputs):
    with torch.no_grad():
        pruned = model(**inputs).logits
    report = stop_hf.last_prune_report(model)
    expected = original_position_reference(reference, inputs, report)
    if pruned.shape[1] == expected.shape[1]:  # logits over the pruned sequence
        assert (pruned - expected).abs().max() <= 1e-5
    else:  # logits mapped back to prompt coordinates: the text after the last video is unambiguous
        entry = max(report, key=lambda e: e["placements"][0][1])
        tail = inputs["input_ids"].shape[1] - (entry["placements"][0][1] + entry["tokens_before"])
        assert tail > 0 and pruned.shape[1] == inputs["input_ids"].shape[1]
        assert (pruned[:, -tail:] - expected[:, -tail:]).abs().max() <= 1e-5
    return report


@pytest.mark.parametrize("sink", [False, True])
def test_llava_flashvid_original_positions(llava_model, llava_reference, llava_inputs, sink):
    stop_hf.patch(
        llava_model, StopConfig(method="flashvid", retention=0.25, sink=sink, position_mode="original")
    )
    report = assert_equals_original_position_reference(llava_model, llava_reference, llava_inputs)
    index = report[0]["index"]
    assert index.unique().numel() < index.numel()  # the check covers the shared-index rows


@pytest.fixture(scope="module")
def qwen_reference():
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint("qwen2_5_vl")).eval()


@pytest.fixture(scope="module")
def qwen_inputs():
    frames = clip(8, seed=0, height=112, width=168)
    text = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>what happens ?<|im_end|>\n<|im_start|>assistant\n"
    metadata = [{"total_num_frames": 8, "fps": 2.0, "frames_indices": list(range(8))}]
    processor = build_processor("qwen2_5_vl")
    return dict(
        processor(
            text=[text],
            videos=[frames],
            video_metadata=metadata,
            return_tensors="pt",
            cap_pixels_per_frame=True,
        )
    )


@pytest.mark.parametrize("sink", [False, True])
def test_qwen_flashvid_end_to_end(qwen_reference, qwen_inputs, sink):
    model = copy.deepcopy(qwen_reference)
    stop_hf.patch(model, {"method": "flashvid", "retention": 0.25, "sink": sink})
    report = assert_equals_original_position_reference(model, qwen_reference, qwen_inputs)
    entry = report[0]
    frames, tokens = entry["frames"], entry["grid"][0] * entry["grid"][1]
    total = PRUNERS["flashvid"](retention=0.25).budgets(tokens)[0]
    assert frames * total <= kept_video_tokens(entry) <= frames * (total + 1)
    with torch.no_grad():
        out = model.generate(**qwen_inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == qwen_inputs["input_ids"].shape[1] + 3
