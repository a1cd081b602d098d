"""Qwen2.5-VL specifics on the tiny model (patch 14, merge 2, temporal patch 2, window + full-attention blocks); the
shared invariants and every paper method run in tests/test_architectures.py. Here: the pruner's geometry, 3-D
positions and rope_deltas, the recomputed vision attention, batches of different grids, several videos, images, the
qwen-vl-utils processor path and bad inputs."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import (
    assert_matches_reference,
    clip,
    computed,
    greedy,
    logits_of,
    manual_greedy_logits,
    spy_pruner,
)

import stop_hf
from stop_hf import compat
from stop_hf.testing import (
    build_processor,
    kept_logits,
    masked_reference_logits,
    synthetic_frames,
    tiny_checkpoint,
    write_video,
)

VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


def prompt(*parts: str, question: str = "what happens in the video ?") -> str:
    return f"<|im_start|>user\n{''.join(parts)}{question}<|im_end|>\n<|im_start|>assistant\n"


def video(num_frames: int = 8, seed: int = 0, height: int = 112, width: int = 168) -> torch.Tensor:
    return clip(num_frames, seed=seed, height=height, width=width)


def make_inputs(processor, texts, videos, images=None, fps: float = 2.0) -> dict:
    """Processor inputs with the sampling fps given the way transformers 5.23 reads it (video_metadata)."""
    metadata = [
        {"total_num_frames": len(v), "fps": fps, "frames_indices": list(range(len(v)))} for v in videos
    ]
    kwargs = {"images": images} if images is not None else {}
    return dict(
        processor(
            text=texts,
            videos=videos,
            video_metadata=metadata,
            padding=True,
            return_tensors="pt",
            cap_pixels_per_frame=True,
            **kwargs,
        )
    )


@pytest.fixture(scope="module")
def qwen_checkpoint():
    return tiny_checkpoint("qwen2_5_vl")


@pytest.fixture(scope="module")
def qwen_reference(qwen_checkpoint):
    """The unpatched tiny Qwen2.5-VL (never patched: the oracle)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(qwen_checkpoint).eval()


@pytest.fixture()
def qwen_model(qwen_reference):
    return copy.deepcopy(qwen_reference)


@pytest.fixture(scope="module")
def qwen_processor():
    return build_processor("qwen2_5_vl")


@pytest.fixture(scope="module")
def qwen_inputs(qwen_processor):
    return make_inputs(
        qwen_processor, [prompt(VIDEO)], [video(8)]
    )  # grid (4, 20, 28): non-square 10x14 tokens


# ------------------------------------------------------------------------------------------------ positions
def test_report_geometry_is_temporal_patches_of_merge_units(qwen_model, qwen_inputs):
    """The pruner's view of a non-square video: T = grid_t, grid = (h/2, w/2) in raster order."""
    for retention in (0.5, 0.1):
        stop_hf.patch(qwen_model, {"method": "uniform", "retention": retention})
        logits_of(qwen_model, qwen_inputs)
        (entry,) = stop_hf.last_prune_report(qwen_model)
        assert entry["frames"] == 4 and entry["grid"] == (10, 14)
        assert entry["tokens_before"] == 560 and entry["tokens_after"] == 4 * round(140 * retention)


def test_manual_loops_do_not_share_rope_deltas(qwen_model, qwen_reference, qwen_processor, qwen_inputs):
    """The patch never writes the model's rope_deltas (model-level state that the unpatched model keeps, and that
    concurrent calls would clobber): two hand-written decode loops interleaved step by step in one thread each get
    the decode positions of their own pruned prompt."""
    other = make_inputs(qwen_processor, [prompt(VIDEO, question="what is it ?")], [video(4, seed=3)])
    stop_hf.patch(qwen_model, {"method": "uniform", "retention": 0.1})
    expected = [manual_greedy_logits(qwen_model, inputs, n=3) for inputs in (qwen_inputs, other)]
    with torch.no_grad():
        qwen_reference(**qwen_inputs)
        unpatched_deltas = qwen_reference.model.rope_deltas.clone()
        outs = [qwen_model(**inputs, use_cache=True) for inputs in (qwen_inputs, other)]
        qwen_reference(**other)
        assert torch.equal(qwen_model.model.rope_deltas, qwen_reference.model.rope_deltas)  # as unpatched
        steps = [[out.logits[:, -1]] for out in outs]
        for _ in range(2):
            for i, out in enumerate(outs):
                token = out.logits[:, -1].argmax(-1, keepdim=True)
                outs[i] = qwen_model(
                    input_ids=token,
                    **compat.cache_input(qwen_model, compat.output_cache(out)),
                    use_cache=True,
                )
                steps[i].append(outs[i].logits[:, -1])
    for i in range(2):
        assert (torch.stack(steps[i], dim=1) - expected[i]).abs().max() <= 1e-5
    assert not torch.equal(unpatched_deltas, qwen_reference.model.rope_deltas)  # the two prompts differ


# ------------------------------------------------------------------------------------------------ signals
@pytest.mark.parametrize("block", [None, 0])
def test_recomputed_attention_matches_eager(qwen_model, qwen_reference, qwen_inputs, block):
    """The hook's attention (default block: last full-attention; block 0: windowed) equals an eager computation of
    that block, mapped to LLM tokens (merge-unit mean, window order undone); keys and global features likewise."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
        apply_rotary_pos_emb_vision,
        eager_attention_forward,
    )
    from transformers.vision_utils import get_vision_window_index

    visual = qwen_reference.model.visual
    assert visual.config._attn_implementation == "sdpa"  # the default; the hook never forces eager
    index = visual.config.fullatt_block_indexes[-1] if block is None else block
    seen = {}

    def grab_in(module, args, kwargs):
        seen["args"], seen["kwargs"] = args, kwargs

    def grab_out(module, args, kwargs, output):
        seen["output"] = output

    attn = visual.blocks[index].attn
    handles = [
        attn.register_forward_pre_hook(grab_in, with_kwargs=True),
        attn.register_forward_hook(grab_out, with_kwargs=True),
    ]
    try:
        with torch.no_grad():
            encoded = qwen_reference.model.get_video_features(
                qwen_inputs["pixel_values_videos"], qwen_inputs["video_grid_thw"], return_dict=True
            )
    finally:
        for handle in handles:
            handle.remove()

    stop_hf.patch(qwen_model, {"method": "visionzip", "retention": 0.2, "saliency_layer": block})
    pruned = spy_pruner(qwen_model)
    logits_of(qwen_model, qwen_inputs)
    record = pruned[0]

    hidden, cu = seen["args"][0], seen["kwargs"]["cu_seqlens"]
    cos, sin = seen["kwargs"]["position_embeddings"]
    length, heads = hidden.shape[0], attn.num_heads
    with torch.no_grad():
        q, k, v = attn.qkv(hidden).reshape(length, 3, heads, -1).permute(1, 0, 2, 3).unbind(0)
        raw_keys = k
        q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
        q, k, v = (x.transpose(0, 1)[None] for x in (q, k, v))
        outputs, received = [], []
        for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
            out, weights = eager_attention_forward(
                attn, q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], None, attn.scaling
            )
            outputs.append(out)
            received.append(weights[0].mean(dim=(0, 1)))
        replay = attn.proj(torch.cat(outputs, dim=1).reshape(length, -1))
    assert (replay - seen["output"]).abs().max() <= 1e-5  # the eager replay reproduces the real block

    window_index, _ = get_vision_window_index(
        qwen_inputs["video_grid_thw"], spatial_merge_size=2, window_size=112, patch_size=14
    )
    natural = torch.argsort(window_index)
    # the un-permutation is the model's own: merging then un-permuting reproduces the scattered tokens
    assert torch.equal(visual.merger(encoded.last_hidden_state)[natural], encoded.pooler_output[0])
    expected = torch.cat(received).reshape(-1, 4).mean(1)[natural].reshape(4, 140)
    assert record.attention.shape == (4, 140)
    assert (record.attention - expected).abs().max() <= 1e-5
    expected_keys = (
        raw_keys.mean(dim=1).reshape(-1, 4, raw_keys.shape[-1]).mean(1)[natural].reshape(4, 140, -1)
    )
    assert (record.keys - expected_keys).abs().max() <= 1e-5
    assert record.attention_patches == (20 * 28 if block is None else 64)  # keys per softmax
    if block is None:  # one softmax over the 560 patches of each temporal patch; 4 patches per token
        assert torch.allclose(record.attention.sum(-1), torch.full((4,), 0.25), atol=1e-5)


@pytest.mark.parametrize(("block", "patches"), [(None, 20 * 28), (0, 64)])
def test_sink_penalty_is_rescaled_to_the_patches_per_softmax(
    qwen_model, qwen_inputs, monkeypatch, block, patches
):
    """The mu_s rule (docs/configuration.md): STSP gets mu_s' = mu_s * 729 / P, with P the keys of one saliency
    softmax (one temporal patch for a full-attention block, one window for a windowed block)."""
    from stop_hf.sink import Sink

    weights = []
    original = Sink.spatial_weight

    def spy(self, attention_patches=729):
        weights.append(original(self, attention_patches))
        return weights[-1]

    monkeypatch.setattr(Sink, "spatial_weight", spy)
    stop_hf.patch(
        qwen_model, {"method": "visionzip", "retention": 0.2, "sink": True, "saliency_layer": block}
    )
    logits_of(qwen_model, qwen_inputs)
    assert weights and all(w == pytest.approx(0.03 * 729 / patches) for w in weights)


def test_global_features_are_per_temporal_patch_means(qwen_model, qwen_reference, qwen_inputs):
    with torch.no_grad():
        encoded = qwen_reference.model.get_video_features(
            qwen_inputs["pixel_values_videos"], qwen_inputs["video_grid_thw"], return_dict=True
        )
    stop_hf.patch(qwen_model, {"method": "fastvid", "retention": 0.2})
    seen = spy_pruner(qwen_model)
    logits_of(qwen_model, qwen_inputs)
    record = seen[0]
    # window order stays inside a temporal patch, so the mean over each run of h*w rows is order-free
    expected = encoded.last_hidden_state.reshape(4, 20 * 28, -1).mean(1)
    assert (record.global_features - expected).abs().max() <= 1e-5


# ------------------------------------------------------------------------------------------------ batches, several videos
def test_batch_with_different_video_grids(qwen_model, qwen_reference, qwen_processor):
    """Row 0: 8 frames 112x168 (grid 4x20x28); row 1: 4 frames 168x112 (grid 2x28x20). Different lengths (left
    padding) and kept counts (re-pad); each row equals its single-sample run."""
    texts = [prompt(VIDEO), prompt(VIDEO, question="what is it ?")]
    videos = [video(8, seed=1), video(4, seed=2, height=168, width=112)]
    batch = make_inputs(qwen_processor, texts, videos)
    assert batch["video_grid_thw"].tolist() == [[4, 20, 28], [2, 28, 20]]
    assert batch["attention_mask"][1].min() == 0
    single = [make_inputs(qwen_processor, [t], [v]) for t, v in zip(texts, videos)]
    stop_hf.patch(qwen_model, {"method": "uniform", "retention": 0.25})
    batched = greedy(qwen_model, batch)[:, batch["input_ids"].shape[1] :]
    batched_last = logits_of(qwen_model, batch)[:, -1]
    for row, inputs in enumerate(single):
        assert torch.equal(batched[row], greedy(qwen_model, inputs)[0, inputs["input_ids"].shape[1] :])
        assert (batched_last[row] - logits_of(qwen_model, inputs)[0, -1]).abs().max() <= 1e-5
    assert_matches_reference(qwen_model, qwen_reference, batch)


def test_batch_with_a_text_only_row(qwen_model, qwen_reference, qwen_processor):
    """Row 1 has no video: it passes through unpruned beside a pruned row and matches its single-sample run."""
    texts = [prompt(VIDEO), prompt(question="what is the color of the sky ?")]
    batch = make_inputs(qwen_processor, texts, [video(8)])
    stop_hf.patch(qwen_model, {"method": "uniform", "retention": 0.25})
    assert_matches_reference(qwen_model, qwen_reference, batch)
    batched = greedy(qwen_model, batch)[:, batch["input_ids"].shape[1] :]
    text_only = dict(qwen_processor(text=texts[1:], return_tensors="pt"))
    assert torch.equal(batched[1], greedy(qwen_model, text_only)[0, text_only["input_ids"].shape[1] :])


def test_two_videos_in_one_prompt(qwen_model, qwen_reference, qwen_processor):
    inputs = make_inputs(
        qwen_processor, [prompt(VIDEO, VIDEO, question="what is different ?")], [video(4, 1), video(6, 2)]
    )
    stop_hf.patch(
        qwen_model, {"method": "holitom", "retention": 0.2, "sink": True, "position_mode": "original"}
    )
    report = assert_matches_reference(qwen_model, qwen_reference, inputs)
    assert [e["frames"] for e in report] == [2, 3]
    assert [e["placements"][0][0] for e in report] == [0, 0]
    greedy(qwen_model, inputs, n=3)


def test_image_and_video_prompt_leaves_image_tokens(qwen_model, qwen_reference, qwen_processor):
    image = torch.from_numpy(synthetic_frames(1, 112, 112, seed=5)[0]).permute(2, 0, 1)
    inputs = make_inputs(
        qwen_processor, [prompt(IMAGE, VIDEO, question="compare them")], [video(4)], images=[image]
    )
    image_tokens = int((inputs["input_ids"] == qwen_model.config.image_token_id).sum())
    assert image_tokens > 0
    stop_hf.patch(qwen_model, {"method": "visionzip", "retention": 0.1, "sink": True})
    pruned = logits_of(qwen_model, inputs)
    report = stop_hf.last_prune_report(qwen_model)
    assert len(report) == 1  # the image is not a video: it passes through unpruned
    dropped = report[0]["tokens_before"] - report[0]["tokens_after"]
    assert int((~computed(pruned)).sum()) == dropped
    reference, keep = masked_reference_logits(qwen_reference, inputs, report)
    assert (pruned[0][keep[0]] - kept_logits(reference, keep)[0]).abs().max() <= 1e-5
    greedy(qwen_model, inputs, n=3)


# ------------------------------------------------------------------------------------------------ processor path
def temporal_ids(model, inputs):
    positions, _ = model.model.get_rope_index(
        inputs["input_ids"],
        video_grid_thw=inputs["video_grid_thw"],
        second_per_grid_ts=inputs["second_per_grid_ts"],
        attention_mask=inputs["attention_mask"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
    )
    return positions[0, 0][inputs["input_ids"][0] == model.config.video_token_id].unique()


def test_qwen_vl_utils_frame_list_path(qwen_model, qwen_reference, qwen_processor, tmp_path):
    from PIL import Image
    from qwen_vl_utils import process_vision_info

    paths = []
    for i, frame in enumerate(synthetic_frames(6, 112, 168)):
        paths.append(str(tmp_path / f"f{i}.png"))
        Image.fromarray(frame).save(paths[-1])
    messages = [
        {"role": "user", "content": [{"type": "video", "video": paths}, {"type": "text", "text": "what ?"}]}
    ]
    _, videos, video_kwargs = process_vision_info(
        messages, return_video_kwargs=True, return_video_metadata=True
    )
    clips, metadata = zip(*videos)
    inputs = dict(
        qwen_processor(
            text=[prompt(VIDEO)],
            videos=list(clips),
            video_metadata=list(metadata),
            do_resize=False,
            return_tensors="pt",
            **video_kwargs,
        )
    )
    assert inputs["second_per_grid_ts"].tolist() == [1.0]  # 2 frames per temporal patch at 2 fps
    assert temporal_ids(qwen_reference, inputs).numel() == 3  # one temporal id per temporal patch
    # the pitfall the metadata avoids: without the sampling fps, 5.23 assumes 24 fps and the ids collapse
    bare = dict(
        qwen_processor(text=[prompt(VIDEO)], videos=list(clips), do_resize=False, return_tensors="pt")
    )
    assert temporal_ids(qwen_reference, bare).numel() == 1
    stop_hf.patch(qwen_model, "holitom_stop_r10")
    assert_matches_reference(qwen_model, qwen_reference, inputs)
    greedy(qwen_model, inputs, n=3)


def test_qwen_vl_utils_mp4_path(qwen_model, qwen_reference, qwen_processor, tmp_path):
    """A local mp4 through process_vision_info (read with PyAV: this environment has neither torchcodec nor decord)
    -> processor with the returned metadata -> patched generate."""
    from qwen_vl_utils import process_vision_info

    from stop_hf.testing import qwen_vl_utils_pyav_backend

    path = write_video(tmp_path / "clip.mp4", num_frames=12, fps=4, height=112, width=168)  # 3 s
    content = [{"type": "video", "video": f"file://{path}", "fps": 2.0}, {"type": "text", "text": "what ?"}]
    with qwen_vl_utils_pyav_backend():
        _, videos, video_kwargs = process_vision_info(
            [{"role": "user", "content": content}], return_video_kwargs=True, return_video_metadata=True
        )
    clips, metadata = zip(*videos)
    assert clips[0].shape[0] == 6 and metadata[0]["fps"] == 4.0  # 3 s sampled at 2 fps
    inputs = dict(
        qwen_processor(
            text=[prompt(VIDEO)],
            videos=list(clips),
            video_metadata=list(metadata),
            do_resize=False,
            return_tensors="pt",
            **video_kwargs,
        )
    )
    assert inputs["second_per_grid_ts"].tolist() == [1.0]  # 2 frames per temporal patch at 2 fps
    assert temporal_ids(qwen_reference, inputs).numel() == 3
    stop_hf.patch(qwen_model, "visionzip_stop_r25")
    assert_matches_reference(qwen_model, qwen_reference, inputs)
    out = greedy(qwen_model, inputs, n=3, min_new_tokens=3)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 3)


def test_mp4_through_videollm(qwen_checkpoint, tmp_path):
    from stop_hf.runner import VideoLLM

    path = write_video(tmp_path / "clip.mp4", num_frames=12, fps=4)  # 3 s
    llm = VideoLLM.from_pretrained(qwen_checkpoint, stop_config="uniform_r25", num_frames=8)
    inputs = llm.prepare(path, "what happens ?")
    assert inputs["second_per_grid_ts"].tolist() == [0.75]  # 8 frames over 3 s: 2.67 fps
    assert temporal_ids(llm.model, inputs).numel() == 4
    answer = llm.generate(inputs, max_new_tokens=3)
    assert answer.video_tokens == 4 * 140 and answer.video_tokens_after == 4 * 35
    assert (
        answer.prompt_tokens - answer.prompt_tokens_after == answer.video_tokens - answer.video_tokens_after
    )


def test_demo_runs_on_tiny_qwen(capsys):
    from stop_hf.cli import main

    assert (
        main(["demo", "--arch", "qwen2_5_vl", "--max-new-tokens", "2", "--config", "visionzip_stop_r10"]) == 0
    )
    out = capsys.readouterr().out
    assert "qwen2_5_vl" in out and "560 -> 560" in out and "[visionzip_stop_r10]" in out


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("method", ["visionzip", "fastvid", "holitom"])
def test_single_frame_video_is_one_temporal_patch(qwen_model, qwen_reference, qwen_processor, method):
    """Shorter than one temporal patch: the processor repeats the frame, the pruners see T = 1."""
    inputs = make_inputs(qwen_processor, [prompt(VIDEO)], [video(1)])
    assert inputs["video_grid_thw"].tolist() == [[1, 20, 28]]
    stop_hf.patch(
        qwen_model, {"method": method, "retention": 0.25, "sink": True, "position_mode": "original"}
    )
    report = assert_matches_reference(qwen_model, qwen_reference, inputs)
    assert report[0]["frames"] == 1


@pytest.mark.parametrize(
    ("grid", "message"),
    [([0, 20, 28], "temporal patch"), ([4, 5, 112], "merge units"), ([4, 20, 20], "patch rows")],
)
def test_bad_video_grids_are_clear_errors(qwen_model, qwen_inputs, grid, message):
    stop_hf.patch(qwen_model, "uniform_r25")
    inputs = dict(qwen_inputs, video_grid_thw=torch.tensor([grid]))
    with pytest.raises(ValueError, match=message):
        logits_of(qwen_model, inputs)


def test_generated_video_token_in_decode_is_plain_text(qwen_model, qwen_reference, qwen_inputs):
    """A decode step whose token is the video placeholder id carries no video: not a continuation error."""
    stop_hf.patch(qwen_model, {"method": "uniform", "retention": 0.5})
    with torch.no_grad():
        out = qwen_model(**qwen_inputs, use_cache=True)
        token = torch.tensor([[qwen_model.config.video_token_id]])
        step = qwen_model(
            input_ids=token, **compat.cache_input(qwen_model, compat.output_cache(out)), use_cache=True
        )
    assert step.logits.shape[1] == 1
