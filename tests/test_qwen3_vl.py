"""Qwen3-VL specifics (the shared invariants run in tests/test_architectures.py for qwen3_vl and qwen3_vl_moe):
timestamped frame groups (a video's tokens are not contiguous), deepstack features sliced with exactly the kept
columns, 3-D positions, the last block's real attention and the mu_s rule for its h*w patches, and the guards."""

from __future__ import annotations

import copy
import threading
import warnings

import pytest
import torch
from conftest import assert_matches_reference, computed, greedy, logits_of
from stop_hf.patches import adapter_for, architecture

import stop_hf
from stop_hf import StopUnsupportedError
from stop_hf.pruners import KIND_COPY, PruneResult
from stop_hf.testing import build_processor, synthetic_frames, tiny_checkpoint
from stop_hf.testing.reference import capture_lm_inputs, masked_reference_output

ARCH = "qwen3_vl"


@pytest.fixture(scope="module")
def reference():
    from transformers import Qwen3VLForConditionalGeneration

    return Qwen3VLForConditionalGeneration.from_pretrained(tiny_checkpoint(ARCH)).eval()


@pytest.fixture()
def model(reference):
    return copy.deepcopy(reference)


@pytest.fixture(scope="module")
def processor():
    return build_processor(ARCH)


def prompt(processor, videos: int = 1, question: str = "what happens ?", image: bool = False) -> str:
    content = (
        [{"type": "image"}] * image + [{"type": "video"}] * videos + [{"type": "text", "text": question}]
    )
    return processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )


def make_inputs(processor, num_frames: int = 4, seed: int = 0, **kwargs) -> dict:
    adapter = architecture(ARCH)
    element = adapter.decode_video(
        synthetic_frames(num_frames, 112, 168, seed=seed, sink_patch=(10, 10, 30)), num_frames
    )
    return dict(
        adapter.processor_inputs(processor, [prompt(processor)], [element], return_tensors="pt", **kwargs)
    )


@pytest.fixture(scope="module")
def inputs(processor):
    return make_inputs(processor)


def video_runs(inputs, video_token_id):
    """(start, length) of every run of video tokens in row 0."""
    positions = (inputs["input_ids"][0] == video_token_id).nonzero().squeeze(-1)
    breaks = (positions[1:] - positions[:-1] != 1).nonzero().squeeze(-1) + 1
    return [(int(run[0]), run.numel()) for run in torch.tensor_split(positions, breaks.tolist())]


def lm_calls(model, inputs, **kwargs):
    """The keyword arguments the inner language model receives in each call (`generate` when kwargs given)."""
    calls = []

    def grab(module, args, kw):
        calls.append(dict(kw))

    handle = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            if kwargs:
                model.generate(**inputs, **kwargs)
            else:
                model(**inputs)
    finally:
        handle.remove()
    return calls


# ------------------------------------------------------------------------------------------------ registry
def test_registered_with_its_moe_variant(reference):
    adapter = adapter_for(reference)
    assert adapter.name == "qwen3_vl" and not adapter.positions_1d and adapter.temporal_patch == 2
    assert adapter.saliency_block_index(reference, None) == len(reference.model.visual.blocks) - 1
    moe = architecture("qwen3_vl_moe")
    assert moe.model_class == "Qwen3VLMoeForConditionalGeneration" and moe.model_types == ("qwen3_vl_moe",)
    assert stop_hf.patches.SUPPORTED_MODEL_TYPES["qwen3_vl_moe"] == moe.model_class


# ------------------------------------------------------------------------------------------------ layout
def test_timestamped_groups_are_matched_by_content(model, reference, inputs):
    """Each temporal patch is its own <t s><|vision_start|> ... <|vision_end|> group: the video's tokens come in T
    runs separated by text, and the report places every grid token at its own sequence position."""
    t, h, w = inputs["video_grid_thw"][0].tolist()
    runs = video_runs(inputs, reference.config.video_token_id)
    assert len(runs) == t and all(n == (h // 2) * (w // 2) for _, n in runs)
    assert all(
        b - (a + n) >= 3 for (a, n), (b, _) in zip(runs, runs[1:])
    )  # timestamp + wrapper tokens between
    stop_hf.patch(model, {"method": "uniform", "retention": 0.25})
    (entry,) = assert_matches_reference(model, reference, inputs)
    expected = torch.cat([torch.arange(a, a + n) for a, n in runs])
    (positions,) = entry["positions"]
    assert torch.equal(positions, expected) and entry["placements"] == [(0, runs[0][0])]


def test_text_between_groups_is_always_kept(model, inputs):
    stop_hf.patch(model, {"method": "visionzip", "retention": 0.1, "sink": True})
    kept = computed(logits_of(model, inputs))[0]
    is_video = inputs["input_ids"][0] == model.config.video_token_id
    assert kept[~is_video].all() and not kept[is_video].all()


# ------------------------------------------------------------------------------------------------ deepstack
def test_deepstack_rows_follow_the_kept_columns(model, reference, inputs):
    """The language model gets one deepstack row per kept visual position, the very row it had at full length."""
    full = capture_lm_inputs(reference, inputs)
    stop_hf.patch(model, {"method": "holitom", "retention": 0.25, "sink": True})
    (call,) = lm_calls(model, inputs)
    (entry,) = stop_hf.last_prune_report(model)
    (positions,) = entry["positions"]
    chosen = positions[entry["index"].sort().values]  # representatives, in sequence order
    full_rows = (full["visual_pos_masks"][0].cumsum(0) - 1)[chosen]
    assert call["visual_pos_masks"].shape == call["inputs_embeds"].shape[:2]
    assert int(call["visual_pos_masks"].sum()) == chosen.numel() == entry["tokens_after"]
    assert len(call["deepstack_visual_embeds"]) == len(full["deepstack_visual_embeds"]) == 2
    for pruned, original in zip(call["deepstack_visual_embeds"], full["deepstack_visual_embeds"]):
        assert torch.equal(pruned, original[full_rows])
    # the visual positions of the pruned sequence hold the pruned video tokens, in sequence order
    result = entry["result"]
    in_order = result.embeds[result.index.argsort(stable=True)]
    assert torch.equal(call["inputs_embeds"][0][call["visual_pos_masks"][0]], in_order)


@pytest.mark.parametrize("method", ["uniform", "visionzip", "fastvid", "holitom"])
def test_masked_reference_covers_the_deepstack_injection(model, reference, inputs, method):
    """The pruned prefill equals the full-length masked reference WITH deepstack (1e-5), and differs clearly from
    the same reference without deepstack: the injection is exercised, not bypassed."""
    config = {"method": method, "retention": 0.25, "sink": method != "uniform"}
    if method == "fastvid":
        config["global_feature"] = "mean"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "stop_config.global_feature='mean'", UserWarning)
        stop_hf.patch(model, config)
        report = assert_matches_reference(model, reference, inputs, tolerance=1e-5)
    pruned = logits_of(model, inputs)
    keep = computed(pruned)
    with torch.no_grad():
        output, _ = masked_reference_output(reference, inputs, report, deepstack_visual_embeds=None)
        without = reference.lm_head(output.last_hidden_state)
    assert (pruned[keep] - without[keep]).abs().max() > 1e-2


def test_an_emptied_temporal_patch_keeps_its_timestamp_group(model, reference, inputs):
    """A pruner may keep no token of a temporal patch: its timestamp and wrapper stay (text), the deepstack rows of
    the other patches stay aligned, and the prefill still equals the masked reference."""
    stop_hf.patch(model, {"method": "uniform", "retention": 0.5})
    state = model._stop_state

    class DropFirstTemporalPatch:
        needs = ()

        def __call__(self, x):
            frames, per_frame, _ = x.features.shape
            index = torch.arange(per_frame, frames * per_frame)
            return PruneResult(
                embeds=x.features.reshape(-1, x.features.shape[-1])[index],
                index=index,
                kind=torch.full_like(index, KIND_COPY),
            )

    state.pruner = DropFirstTemporalPatch()
    (entry,) = assert_matches_reference(model, reference, inputs)
    runs = video_runs(inputs, reference.config.video_token_id)
    kept = computed(logits_of(model, inputs))[0]
    first_start, first_length = runs[0]
    assert not kept[first_start : first_start + first_length].any()
    assert kept[first_start - 1] and kept[first_start + first_length]  # <|vision_start|>, <|vision_end|> kept
    out = greedy(model, inputs, n=3, min_new_tokens=3)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


def _method_configs():
    from stop_hf.pruners import PRUNERS

    for method, cls in PRUNERS.items():
        if method == "none":
            continue
        for sink in (False, True) if cls.needs and not cls.no_sink_reason else (False,):  # StopConfig's rule
            yield method, sink


@pytest.mark.parametrize(("method", "sink"), list(_method_configs()))
def test_every_method_runs_with_and_without_stop(model, inputs, method, sink):
    """Every registered method, with SToP where it has one, prunes a Qwen3-VL video and generates from it."""
    config = {"method": method, "retention": 0.25, "sink": sink}
    if method == "fastvid":
        config["global_feature"] = "mean"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "stop_config.global_feature='mean'", UserWarning)
        stop_hf.patch(model, config)
    out = greedy(model, inputs, n=2, min_new_tokens=2)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 2
    (entry,) = stop_hf.last_prune_report(model)
    assert 0 < entry["tokens_after"] < entry["tokens_before"] and entry["frames"] == 2


# ------------------------------------------------------------------------------------------------ positions
def test_positions_are_the_original_3d_ids_and_rope_deltas_is_not_written(model, reference, inputs):
    full = capture_lm_inputs(reference, inputs)
    deltas = reference.model.rope_deltas.clone()
    stop_hf.patch(model, {"method": "uniform", "retention": 0.25})
    (call,) = lm_calls(model, inputs)
    (entry,) = stop_hf.last_prune_report(model)
    keep = computed(logits_of(model, inputs))[0]
    assert full["position_ids"].shape[0] == 3 and torch.equal(
        call["position_ids"], full["position_ids"][:, :, keep]
    )
    assert torch.equal(model.model.rope_deltas, deltas)  # what transformers computed for the full prompt


def test_generate_passes_4_row_positions_sliced(model, reference, inputs):
    stop_hf.patch(model, {"method": "uniform", "retention": 0.25})
    calls = lm_calls(model, inputs, max_new_tokens=2, do_sample=False)
    full = lm_calls(reference, inputs, max_new_tokens=2, do_sample=False)
    keep = computed(logits_of(model, inputs))[0]
    assert calls[0]["position_ids"].shape[0] == 4
    assert torch.equal(calls[0]["position_ids"], full[0]["position_ids"][:, :, keep])
    assert calls[1]["deepstack_visual_embeds"] is None and calls[1]["visual_pos_masks"] is None
    assert torch.equal(calls[1]["position_ids"], full[1]["position_ids"])  # decode: original coordinates


# ------------------------------------------------------------------------------------------------ prompts
def test_image_and_video_prompt_keeps_the_image_deepstack_rows(model, reference, processor):
    """Images are visual positions too: their tokens and deepstack rows stay, only the video is pruned."""
    adapter = architecture(ARCH)
    element = adapter.decode_video(synthetic_frames(4, 112, 168, seed=3), 4)
    image = synthetic_frames(1, 64, 64, seed=4)[0]
    from qwen_vl_utils import process_vision_info

    _, videos, video_kwargs = process_vision_info(
        [{"role": "user", "content": [element]}],
        return_video_kwargs=True,
        return_video_metadata=True,
        image_patch_size=16,
    )
    (clip, metadata) = videos[0]
    inputs = dict(
        processor(
            text=[prompt(processor, image=True)],
            images=[image],
            videos=[clip],
            video_metadata=[metadata],
            do_resize=False,
            return_tensors="pt",
            **video_kwargs,
        )
    )
    assert "pixel_values" in inputs and "pixel_values_videos" in inputs
    stop_hf.patch(model, {"method": "visionzip", "retention": 0.1})
    assert_matches_reference(model, reference, inputs)
    kept = computed(logits_of(model, inputs))[0]
    assert kept[inputs["input_ids"][0] == reference.config.image_token_id].all()
    (call,) = lm_calls(model, inputs)
    n_image = int((inputs["input_ids"] == reference.config.image_token_id).sum())
    (entry,) = stop_hf.last_prune_report(model)
    assert int(call["visual_pos_masks"].sum()) == n_image + entry["tokens_after"]


def test_batch_of_two_grids_equals_single_runs(model, reference, processor):
    adapter = architecture(ARCH)
    elements = [
        adapter.decode_video(synthetic_frames(4, 112, 168, seed=5), 4),
        adapter.decode_video(synthetic_frames(6, 96, 96, seed=6), 6),
    ]
    texts = [prompt(processor), prompt(processor, question="what is different ?")]
    batch = dict(
        adapter.processor_inputs(
            processor, texts, elements, return_tensors="pt", padding=True, padding_side="left"
        )
    )
    assert batch["video_grid_thw"][0].tolist() != batch["video_grid_thw"][1].tolist()
    stop_hf.patch(model, {"method": "holitom", "retention": 0.25, "sink": True})
    assert_matches_reference(model, reference, batch)
    batched = greedy(model, batch, n=4)[:, batch["input_ids"].shape[1] :]
    for row in range(2):
        single = dict(adapter.processor_inputs(processor, [texts[row]], [elements[row]], return_tensors="pt"))
        assert torch.equal(batched[row], greedy(model, single, n=4)[0, single["input_ids"].shape[1] :])


def test_threads_share_one_patched_model(model, processor):
    """Deepstack slicing and positions are per call: concurrent calls equal the serial run."""
    stop_hf.patch(model, {"method": "visionzip", "retention": 0.25, "sink": True})
    inputs = [make_inputs(processor, num_frames=2 * (i + 1), seed=i) for i in range(3)]
    expected = [logits_of(model, x) for x in inputs]
    failures = []

    def work(offset):
        for step in range(4):
            i = (offset + step) % len(inputs)
            if not torch.equal(logits_of(model, inputs[i]).nan_to_num(), expected[i].nan_to_num()):
                failures.append((offset, step))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


# ------------------------------------------------------------------------------------------------ guards
@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen2_vl", "qwen3_vl"])
def test_video_without_mm_token_type_ids_is_refused(arch):
    """transformers' generate (and Qwen2.5-VL's forward) would silently give the video 1-D positions."""
    from stop_hf import compat

    adapter = architecture(arch)
    patched = compat.model_class(adapter.model_class).from_pretrained(tiny_checkpoint(arch)).eval()
    processor = build_processor(arch)
    element = adapter.decode_video(synthetic_frames(4, 112, 168, seed=0), 4)
    full = dict(adapter.processor_inputs(processor, [prompt(processor)], [element], return_tensors="pt"))
    bare = {k: v for k, v in full.items() if k != "mm_token_type_ids"}
    stop_hf.patch(patched, "uniform_r25")
    for run in (lambda: greedy(patched, bare, n=2), lambda: logits_of(patched, bare)):
        with pytest.raises(StopUnsupportedError, match="mm_token_type_ids"):
            run()
    assert greedy(patched, full, n=2).shape[1] == full["input_ids"].shape[1] + 2


def test_compact_positions_are_refused(model, inputs):
    stop_hf.patch(model, {"method": "uniform", "retention": 0.25, "position_mode": "compact"})
    with pytest.raises(StopUnsupportedError, match="position_mode='compact'"):
        logits_of(model, inputs)


# ------------------------------------------------------------------------------------------------ entry points
def test_videollm_reads_the_file_fps_into_the_timestamps(tmp_path):
    from stop_hf.runner import VideoLLM
    from stop_hf.testing import write_video

    path = write_video(tmp_path / "clip.mp4", num_frames=12, fps=4)  # 3 s
    llm = VideoLLM.tiny(ARCH, stop_config="uniform_r25", num_frames=8)
    inputs = llm.prepare(path, "what happens ?")
    assert inputs["video_grid_thw"][0, 0] == 4
    starts = int((inputs["input_ids"][0] == llm.model.config.vision_start_token_id).sum())
    assert starts == 4 + 1  # one timestamped group per temporal patch, inside the chat template's wrapper
    answer = llm.generate(inputs, max_new_tokens=3)
    tokens_per_patch = answer.video_tokens // 4
    assert answer.video_tokens_after == 4 * round(tokens_per_patch * 0.25)


def test_demo_runs_on_tiny_qwen3_vl(capsys):
    from stop_hf.cli import main

    assert (
        main(["demo", "--arch", "qwen3_vl", "--max-new-tokens", "2", "--config", "visionzip_stop_r10"]) == 0
    )
    out = capsys.readouterr().out
    assert "visionzip_stop_r10" in out and "unpruned" in out
