"""The vLLM plugin under what a real server does (issue 22): chunked prefill that splits a pruned video across steps
(and one step holding the end of one video and the start of the next), prefix-cache hits that end mid-video, two
videos of different lengths in one prompt, an image next to a video, a batch of mixed requests, bf16, and per-request
config errors that must fail only their request.

The oracle for positions is exact: every step's mRoPE positions are recorded where the language model receives them,
and the pruned prompt's must equal the unpruned prompt's at each kept token's representative (text after a video at
its unpruned position). Greedy ids of the tiny models are a weak oracle (they barely depend on positions), so they are
checked in addition, never instead. Engines: one per architecture (module scope), all started with chunked prefill
(64-token steps) and prefix caching on.
"""

from __future__ import annotations

import gc
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_vllm_plugin import MAX_TOKENS, PLACEHOLDER, _generate, serving

from stop_hf.config import StopConfig, StopConfigError
from stop_hf.vllm.counts import serve_options, served_fields

CHUNK, BLOCK = (
    64,
    32,
)  # a pruned video (>= 50 tokens) spans steps; 32-token blocks let a prefix hit end mid-video
IMAGE = {
    "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "qwen3_vl": "<|vision_start|><|image_pad|><|vision_end|>",
}
VZ = "visionzip_stop_r25"


# ---------------------------------------------------------------------------------------------------- pure logic
def test_request_fields_the_served_tower_cannot_honour_are_refused():
    """Checked when the request is processed (a failure fails that request), never at encode time (an encoder
    exception takes the engine step, and every request in it, down)."""
    qwen = SimpleNamespace(vision_config=SimpleNamespace(depth=32))
    vz = {"method": "visionzip", "retention": 0.25}
    for layer in (99, -33):
        with pytest.raises(StopConfigError, match=f"saliency_layer={layer}"):
            served_fields(serve_options({**vz, "saliency_layer": layer}), "qwen2_5_vl", qwen)
    with pytest.raises(
        StopConfigError, match="saliency_layer=99"
    ):  # uniform reads no attention; the block is still run
        served_fields(
            serve_options({"method": "uniform", "retention": 0.5, "saliency_layer": 99}), "qwen2_5_vl", qwen
        )
    resolved = served_fields(serve_options({**vz, "saliency_layer": -1}), "qwen2_5_vl", qwen)
    assert resolved.config.saliency_layer == 31  # the HF path's indexing of the checkpoint's blocks
    # no SigLIP head on Qwen towers: an explicit map_head is refused with the request (LLaVA-OV serves it)
    from stop_hf.vllm.siglip import check_map_head

    with pytest.raises(StopConfigError, match="saliency_source='map_head'"):
        check_map_head(StopConfig.from_any({**vz, "saliency_source": "map_head"}), "qwen2_5_vl", None)
    fastvid = {"method": "fastvid", "retention": 0.25}
    with pytest.raises(StopConfigError, match="global_feature='map_head'"):
        check_map_head(StopConfig.from_any({**fastvid, "global_feature": "map_head"}), "qwen2_5_vl", None)
    check_map_head(StopConfig.from_any(fastvid), "qwen2_5_vl", None)  # auto: the frame mean there
    # LLaVA-OV: vLLM builds the tower up to vision_feature_layer
    llava = SimpleNamespace(vision_config=SimpleNamespace(num_hidden_layers=26), vision_feature_layer=-2)
    with pytest.raises(StopConfigError, match="saliency_layer=-1"):  # layer 25 is not run by vLLM's tower
        served_fields(
            serve_options({**vz, "saliency_layer": -1}, None, "llava_onevision"), "llava_onevision", llava
        )
    layer = served_fields(
        serve_options({**vz, "saliency_layer": -2}, None, "llava_onevision"), "llava_onevision", llava
    )
    assert layer.config.saliency_layer == 24
    assert not served_fields(serve_options("none"), "qwen2_5_vl", qwen).active


def test_engine_default_fields_are_checked_at_start_up():
    """The same check on `additional_config.stop_config` at start-up, naming the field; the default handed to the
    processor carries the resolved layer."""
    from stop_hf.vllm import check_engine_config

    def engine_config(stop_config):
        return SimpleNamespace(
            additional_config={"stop_config": stop_config},
            model_config=SimpleNamespace(
                architectures=["Qwen2_5_VLForConditionalGeneration"],
                hf_config=SimpleNamespace(vision_config=SimpleNamespace(depth=32)),
                multimodal_config=SimpleNamespace(
                    mm_encoder_tp_mode="weights", video_pruning_rate=None, mm_processor_kwargs=None
                ),
            ),
            compilation_config=SimpleNamespace(compile_mm_encoder=False, cudagraph_mm_encoder=False),
            parallel_config=SimpleNamespace(pipeline_parallel_size=1),
        )

    with pytest.raises(StopConfigError, match="saliency_layer=40"):
        check_engine_config(engine_config({"method": "visionzip", "retention": 0.25, "saliency_layer": 40}))
    config = engine_config({"method": "visionzip", "retention": 0.25, "saliency_layer": -2})
    check_engine_config(config)
    default = json.loads(config.model_config.multimodal_config.mm_processor_kwargs["stop_config"])
    assert default["saliency_layer"] == 30


# ---------------------------------------------------------------------------------------------------- serving
def _frames(seed: int, count: int, side: int = 336) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.random((1, side, side, 3))
    return ((0.6 * base + 0.4 * rng.random((count, side, side, 3))) * 255).astype("uint8")


def _video(arch: str, seed: int, count: int, fps: float = 2.0):
    frames = _frames(seed, count)
    if not arch.startswith("qwen"):
        return frames
    metadata = {
        "total_num_frames": count,
        "fps": fps,
        "duration": count / fps,
        "video_backend": "opencv",
        "frames_indices": list(range(count)),
        "do_sample_frames": False,
    }
    return frames, metadata


def _prompt(text: str) -> str:
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def _req(text: str, videos=(), image=None, config=None, rule=None) -> dict:
    data: dict = {}
    if videos:
        data["video"] = list(videos) if len(videos) > 1 else videos[0]
    if image is not None:
        data["image"] = image
    request = {"prompt": _prompt(text), "multi_modal_data": data}
    if config is not None:
        request["mm_processor_kwargs"] = {
            "stop_config": config if isinstance(config, str) else json.dumps(config)
        }
    if rule is not None:
        request["mm_processor_kwargs"]["stop_count_rule"] = rule
    return request


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from stop_hf.tiny import save_tiny_checkpoint

    root = tmp_path_factory.mktemp("vllm_serving_cases")
    return {
        arch: save_tiny_checkpoint(root / arch, arch)
        for arch in ("qwen2_5_vl", "llava_onevision", "qwen3_vl")
    }


def _record_positions(model) -> None:
    """Every step's positions as the language model receives them (after the plugin's in-place offsets)."""
    model.recorded_positions = []
    inner = model.language_model.model
    forward = inner.forward

    def recording(*args, **kwargs):
        positions = kwargs["positions"] if "positions" in kwargs else args[1]
        model.recorded_positions.append(positions.detach().clone())
        return forward(*args, **kwargs)

    inner.forward = recording


class Served:
    """One engine with chunked prefill and prefix caching; `run` serves requests and returns outputs, reports and
    (mRoPE models) the positions of every step, concatenated."""

    def __init__(self, arch: str, checkpoint, dtype: str):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        self.arch = arch
        self.llm = LLM(
            model=str(checkpoint),
            enforce_eager=True,
            dtype=dtype,
            max_model_len=4096,
            kv_cache_memory_bytes=1 << 28,
            limit_mm_per_prompt={"video": 2, "image": 1},
            additional_config={"stop_config": "none"},
            enable_chunked_prefill=True,
            max_num_batched_tokens=CHUNK,
            block_size=BLOCK,
            enable_mm_embeds=True,  # precomputed embeddings accepted (and refused by the plugin when pruned)
            seed=0,
        )
        self.mrope = arch.startswith("qwen")
        if self.mrope:
            self.llm.apply_model(_record_positions)
        tokenizer = self.llm.get_tokenizer()
        self.video_token = tokenizer.convert_tokens_to_ids("<|video_pad|>" if self.mrope else "<video>")

    def run(self, requests):
        if self.mrope:
            self.llm.apply_model(lambda model: model.recorded_positions.clear())
        outputs, reports = _generate(self.llm, requests)
        positions = None
        if self.mrope:
            positions = self.llm.apply_model(lambda model: torch.cat(model.recorded_positions, dim=-1))[0]
        return outputs, reports, positions

    def fresh(self) -> None:
        """Empty the processor, encoder and prefix caches: the next request is served as by a new engine."""
        self.llm.reset_mm_cache()
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        del self.llm
        gc.collect()


@pytest.fixture(scope="module")
def qwen(checkpoints):
    served = Served("qwen2_5_vl", checkpoints["qwen2_5_vl"], "float32")
    yield served
    served.close()


def expected_positions(served: Served, unpruned_ids, unpruned_positions, reports) -> torch.Tensor:
    """The unpruned prompt's positions (3, L) -> the pruned prompt's: each video's run of placeholders (Qwen3-VL:
    each temporal patch's group) replaced by the positions of its kept tokens' representatives."""
    ids = torch.tensor(list(unpruned_ids))
    is_video = torch.cat([torch.zeros(1), (ids == served.video_token).float(), torch.zeros(1)])
    edges = is_video[1:] - is_video[:-1]
    starts, ends = (edges == 1).nonzero().flatten().tolist(), (edges == -1).nonzero().flatten().tolist()
    parts, previous, video, group = [], 0, 0, 0
    for start, end in zip(starts, ends):
        n = end - start
        report = reports[video]
        index = torch.arange(n) if report is None else torch.tensor(report["index"])
        groups = 1 if report is None else report["tokens_before"] // n
        kept = torch.sort(index[index // n == group] % n).values
        parts += [unpruned_positions[:, previous:start], unpruned_positions[:, start + kept]]
        previous, group = end, group + 1
        if group == groups:
            video, group = video + 1, 0
    parts.append(unpruned_positions[:, previous : len(ids)])
    return torch.cat(parts, dim=-1)


def assert_positions(served: Served, unpruned_request, pruned_request, videos: int):
    """Serves both; the pruned prompt's prefill positions equal the unpruned prompt's at the kept tokens, and
    decoding continues from the same positions. Returns the pruned output and its reports."""
    served.fresh()  # every step recorded: nothing served from the prefix cache
    (unpruned,), _, unpruned_positions = served.run([unpruned_request])
    (pruned,), reports, positions = served.run([pruned_request])
    assert unpruned.num_cached_tokens == pruned.num_cached_tokens == 0
    assert len(reports) == videos and all(r["tokens_after"] <= r["tokens_before"] for r in reports)
    length = len(pruned.prompt_token_ids)
    assert length == len(unpruned.prompt_token_ids) - sum(
        r["tokens_before"] - r["tokens_after"] for r in reports
    )
    if served.mrope:
        expected = expected_positions(served, unpruned.prompt_token_ids, unpruned_positions, reports)
        assert torch.equal(positions[:, :length], expected)
        following = len(unpruned.prompt_token_ids)
        assert torch.equal(
            positions[:, length:], unpruned_positions[:, following : following + MAX_TOKENS - 1]
        )
    return pruned, reports


def _hf_multi(checkpoint, arch: str, config, text: str, videos, dtype=torch.float32):
    """The HF path on the same prompt with several videos: (greedy ids, kept indices per video)."""
    from transformers import AutoProcessor

    import stop_hf

    model = stop_hf.from_pretrained(str(checkpoint), stop_config=config, dtype=dtype).eval()
    processor = AutoProcessor.from_pretrained(str(checkpoint))
    if arch.startswith("qwen"):
        from transformers.video_utils import VideoMetadata

        metadata = [
            VideoMetadata(**{k: v for k, v in m.items() if k != "do_sample_frames"}) for _, m in videos
        ]
        inputs = processor(
            text=[_prompt(text)],
            videos=[list(f) for f, _ in videos],
            video_metadata=metadata,
            do_sample_frames=False,
            return_tensors="pt",
        )
    else:
        inputs = processor(text=[_prompt(text)], videos=[list(f) for f in videos], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
    report = stop_hf.last_prune_report(model)
    return out[0, inputs["input_ids"].shape[1] :].tolist(), [entry["index"].tolist() for entry in report]


@serving
def test_every_token_kept_by_an_active_config_sits_at_unpruned_positions(qwen):
    """uniform 0.999 keeps all 288 tokens of the tiny clip: the encoder still sends offsets, so the placeholders must
    sit at the video's start (they were given the unpruned grid, and the offsets doubled every h, w, t)."""
    vid = PLACEHOLDER["qwen2_5_vl"]
    video = _video("qwen2_5_vl", 11, 4)
    _, (report,) = assert_positions(
        qwen,
        _req(f"{vid}what ?", [video], config="none"),
        _req(f"{vid}what ?", [video], config={"method": "uniform", "retention": 0.999}),
        1,
    )
    assert report["tokens_after"] == report["tokens_before"]


@serving
def test_chunked_prefill_two_videos_of_different_lengths_equal_the_hf_path(qwen, checkpoints):
    """Two videos (4 and 6 frames: 72 and 108 kept tokens; 1 and 4 fps, so each has its own temporal position scale)
    in 64-token steps: steps end inside each video and one step holds the end of the first and the start of the
    second."""
    vid = PLACEHOLDER["qwen2_5_vl"]
    videos = [_video("qwen2_5_vl", 21, 4, fps=1.0), _video("qwen2_5_vl", 22, 6, fps=4.0)]  # t scales differ
    text = f"{vid}a{vid}what ?"
    out, reports = assert_positions(qwen, _req(text, videos, config="none"), _req(text, videos, config=VZ), 2)
    assert [r["tokens_after"] for r in reports] == [72, 108]
    hf_ids, hf_index = _hf_multi(checkpoints["qwen2_5_vl"], "qwen2_5_vl", VZ, text, videos)
    assert [r["index"] for r in reports] == [sorted(i) for i in hf_index]
    assert list(out.outputs[0].token_ids) == hf_ids


@serving
@pytest.mark.parametrize("order", ["image first", "video first"])
def test_image_and_video_in_one_prompt(qwen, order):
    """The image passes unpruned at vLLM's own positions; the video is pruned; text after both where it would be."""
    from PIL import Image

    vid, img = PLACEHOLDER["qwen2_5_vl"], IMAGE["qwen2_5_vl"]
    image = Image.fromarray(_frames(30, 1)[0])
    video = _video("qwen2_5_vl", 31 if order == "image first" else 32, 4)
    text = f"{img}b{vid}what ?" if order == "image first" else f"{vid}b{img}what ?"
    _, (report,) = assert_positions(
        qwen, _req(text, [video], image, "none"), _req(text, [video], image, VZ), 1
    )
    assert report["tokens_after"] == 72


@serving
def test_a_mixed_batch_equals_each_request_alone(qwen):
    """One generate call: videos of 2, 4 and 6 frames, two videos in one prompt, a text-only prompt, an unpruned
    video, three configs; each request equals itself served alone by a fresh engine (caches emptied)."""
    vid = PLACEHOLDER["qwen2_5_vl"]
    batch = [
        _req(f"{vid}what ?", [_video("qwen2_5_vl", 41, 4)], config=VZ),
        _req(f"{vid}what ?", [_video("qwen2_5_vl", 42, 6)], config={"method": "uniform", "retention": 0.3}),
        _req(
            f"{vid}x{vid}what ?",
            [_video("qwen2_5_vl", 43, 2), _video("qwen2_5_vl", 44, 4)],
            config="visionzip_baseline_r25",
        ),
        _req("no video here, what ?"),
        _req(f"{vid}what ?", [_video("qwen2_5_vl", 45, 4)], config="none"),
    ]
    together, together_reports, _ = qwen.run(batch)
    assert len(together_reports) == 4
    alone_reports = []
    for request, out in zip(batch, together):
        qwen.fresh()
        (alone,), reports, _ = qwen.run([request])
        assert alone.prompt_token_ids == out.prompt_token_ids
        assert alone.outputs[0].token_ids == out.outputs[0].token_ids
        alone_reports += reports
    key = lambda r: (r["tokens_before"], r["index"])  # noqa: E731 (the encoder batches videos in its own order)
    assert sorted(map(key, together_reports)) == sorted(map(key, alone_reports))


@serving
def test_prefix_cache_hit_ending_inside_a_pruned_video(qwen):
    """The same video and config after another question: the cached blocks end inside the video, so the first
    computed step starts mid-video and takes the rest of the cached encoder output with its offsets."""
    vid = PLACEHOLDER["qwen2_5_vl"]
    video = _video("qwen2_5_vl", 81, 4)
    question = f"{vid}and then what is it ?"
    qwen.fresh()
    (unpruned,), _, unpruned_positions = qwen.run([_req(question, [video], config="none")])
    qwen.run([_req(f"{vid}what ?", [video], config=VZ)])
    (hit,), _, positions = qwen.run([_req(question, [video], config=VZ)])
    qwen.fresh()
    (alone,), reports, alone_positions = qwen.run([_req(question, [video], config=VZ)])
    start = list(hit.prompt_token_ids).index(qwen.video_token)
    cached, length = hit.num_cached_tokens, len(hit.prompt_token_ids)
    assert start < cached < start + reports[0]["tokens_after"]  # the hit ends inside the video
    expected = expected_positions(qwen, unpruned.prompt_token_ids, unpruned_positions, reports)
    assert torch.equal(alone_positions[:, :length], expected)
    assert torch.equal(positions[:, : length - cached], expected[:, cached:])
    assert hit.outputs[0].token_ids == alone.outputs[0].token_ids


@serving
def test_same_video_with_another_config_is_pruned_again(qwen):
    """The config is part of the multimodal hash: neither the encoder cache nor the prefix cache hands one config's
    embeddings to another; the same config again is served from the cache (no new pruning)."""
    vid = PLACEHOLDER["qwen2_5_vl"]
    video = _video("qwen2_5_vl", 61, 4)
    configs = [VZ, "visionzip_baseline_r25", {"method": "uniform", "retention": 0.25}]
    indices = []
    for config in configs:
        _, reports, _ = qwen.run([_req(f"{vid}what ?", [video], config=config)])
        (report,) = reports
        indices.append(report["index"])
    assert indices[0] != indices[2]
    for config, index in zip(configs, indices):
        qwen.fresh()
        _, (report,), _ = qwen.run([_req(f"{vid}what ?", [video], config=config)])
        assert report["index"] == index
    (again,), reports, _ = qwen.run([_req(f"{vid}what ?", [video], config=configs[-1])])
    assert reports == [] and again.num_cached_tokens > 0


@serving
@pytest.mark.parametrize(
    "config, field",
    [
        ({"method": "visionzip", "retention": 0.25, "saliency_layer": 99}, "saliency_layer"),
        ({"method": "visionzip", "retention": 0.25, "saliency_source": "map_head"}, "saliency_source"),
    ],
)
def test_a_request_field_the_tower_cannot_honour_fails_that_request_only(qwen, config, field):
    """Refused when the request is processed; before, `saliency_layer: 99` raised inside the encoder and left the
    engine spinning, and `saliency_source: map_head` was served with the encoder's attention."""
    vid = PLACEHOLDER["qwen2_5_vl"]
    with pytest.raises(Exception, match=field):
        qwen.run([_req(f"{vid}what ?", [_video("qwen2_5_vl", 91, 4)], config=config)])
    (out,), (report,), _ = qwen.run(
        [_req(f"{vid}what ?", [_video("qwen2_5_vl", 92 + len(field), 4)], config=VZ)]
    )
    assert report["tokens_after"] == 72 and out.outputs[0].token_ids


@serving
def test_videos_of_one_encoder_batch_with_different_saliency_layers(checkpoints):
    """Two requests in one call ask for different saliency blocks; the encoder batches their videos (an engine with
    the default step budget: both prefills in one step), and each video is pruned by its own block's attention.
    Before, the batch raised inside the encoder, which left the engine spinning."""
    from test_vllm_plugin import _engine

    llm = _engine("qwen2_5_vl", checkpoints)  # test_vllm_plugin's engine (shared when both files run)
    vid = PLACEHOLDER["qwen2_5_vl"]
    config = {"method": "visionzip", "retention": 0.25}
    requests = [
        _req(
            f"{vid}what ?", [_video("qwen2_5_vl", 100 + layer, 4)], config={**config, "saliency_layer": layer}
        )
        for layer in (0, 1)
    ]
    together, reports = _generate(llm, requests)
    assert len(reports) == 2
    alone = []
    for request, out in zip(requests, together):
        llm.reset_mm_cache()
        llm.llm_engine.reset_encoder_cache()
        llm.reset_prefix_cache()
        (single,), (report,) = _generate(llm, [request])
        assert single.outputs[0].token_ids == out.outputs[0].token_ids
        alone.append(report["index"])
    assert sorted(r["index"] for r in reports) == sorted(alone) and alone[0] != alone[1]


# ------------------------------------------------------------------ LLaVA-OneVision (1-D positions)
@pytest.fixture(scope="module")
def llava(checkpoints):
    served = Served("llava_onevision", checkpoints["llava_onevision"], "float32")
    yield served
    served.close()


@serving
def test_llava_two_videos_chunked_equal_each_alone_and_the_hf_path(llava, checkpoints):
    """Different frame counts (4, 6): each video's kept tokens equal the same video served alone. Equal frame counts
    (HF's processor stacks the videos of one prompt, so it needs them): kept indices and ids equal the HF path."""
    vid = PLACEHOLDER["llava_onevision"]
    videos = [_video("llava_onevision", 21, 4), _video("llava_onevision", 22, 6)]
    _, reports = assert_positions(
        llava,
        _req(f"{vid}a{vid}what ?", videos, config="none"),
        _req(f"{vid}a{vid}what ?", videos, config=VZ),
        2,
    )
    for video, report in zip(videos, reports):
        llava.fresh()
        _, (alone,), _ = llava.run([_req(f"{vid}what ?", [video], config=VZ)])
        assert alone["index"] == report["index"]
    same = [_video("llava_onevision", 23, 4), _video("llava_onevision", 24, 4)]
    (out,), reports, _ = llava.run([_req(f"{vid}a{vid}what ?", same, config=VZ)])
    hf_ids, hf_index = _hf_multi(
        checkpoints["llava_onevision"], "llava_onevision", VZ, f"{vid}a{vid}what ?", same
    )
    assert [r["index"] for r in reports] == hf_index
    assert list(out.outputs[0].token_ids) == hf_ids


@serving
def test_llava_refuses_what_its_tower_cannot_serve_per_request(llava):
    """FastVID's `global_feature: auto` is the SigLIP MAP head on LLaVA-OV; its default source (a hub id) cannot be
    read offline: the request fails with the HF path's SiglipHeadError, naming the field to set (before, the encoder
    raised, which left the engine spinning)."""
    vid = PLACEHOLDER["llava_onevision"]
    with pytest.raises(Exception, match="siglip_head"):
        llava.run(
            [
                _req(
                    f"{vid}what ?",
                    [_video("llava_onevision", 93, 4)],
                    config={"method": "fastvid", "retention": 0.25},
                    rule="exact",
                )
            ]
        )
    # LLaVA-OV's tower hooks one layer per encoder batch (requests mixed): a request keeps the engine's layer
    layer0 = {"method": "visionzip", "retention": 0.25, "saliency_layer": 0}
    with pytest.raises(Exception, match="saliency_layer=0 differs from the engine's"):
        llava.run([_req(f"{vid}what ?", [_video("llava_onevision", 95, 4)], config=layer0)])
    _, (report,), _ = llava.run([_req(f"{vid}what ?", [_video("llava_onevision", 94, 4)], config=VZ)])
    assert report["tokens_after"] == 200


# ------------------------------------------------------------------ Qwen3-VL in bf16 (timestamped groups)
@pytest.fixture(scope="module")
def qwen3_bf16(checkpoints):
    served = Served("qwen3_vl", checkpoints["qwen3_vl"], "bfloat16")
    yield served
    served.close()


@serving
def test_qwen3_bf16_every_token_kept_sits_at_unpruned_positions(qwen3_bf16):
    """The position channels are base-256 digits, exact in bf16; an active config that keeps every token of each
    temporal patch's group sits at the group's start plus its offsets (unpruned positions before, doubled)."""
    vid = PLACEHOLDER["qwen3_vl"]
    video = _video("qwen3_vl", 71, 4)
    _, (report,) = assert_positions(
        qwen3_bf16,
        _req(f"{vid}what ?", [video], config="none"),
        _req(f"{vid}what ?", [video], config={"method": "uniform", "retention": 0.999}),
        1,
    )
    assert report["tokens_after"] == report["tokens_before"]


@serving
def test_qwen3_bf16_two_videos_chunked(qwen3_bf16, checkpoints, capsys):
    """Two videos (2 and 3 temporal patches) split across 64-token steps in bf16: positions exact (checked against
    the unpruned prompt). Kept indices and ids against the HF path in bf16 are measured, not asserted: two bf16
    kernels may round a near-tie differently (on this clip they agreed: both videos' indices and all ids)."""
    vid = PLACEHOLDER["qwen3_vl"]
    videos = [_video("qwen3_vl", 21, 4), _video("qwen3_vl", 22, 6)]
    text = f"{vid}a{vid}what ?"
    out, reports = assert_positions(
        qwen3_bf16, _req(text, videos, config="none"), _req(text, videos, config=VZ), 2
    )
    assert [r["tokens_after"] for r in reports] == [50, 75]
    hf_ids, hf_index = _hf_multi(checkpoints["qwen3_vl"], "qwen3_vl", VZ, text, videos, dtype=torch.bfloat16)
    same_index = [sorted(h) == r["index"] for h, r in zip(hf_index, reports)]
    same_ids = sum(a == b for a, b in zip(hf_ids, out.outputs[0].token_ids))
    with capsys.disabled():
        print(
            f"\nqwen3_vl bf16 vs HF bf16: kept indices equal per video {same_index}, ids {same_ids}/{len(hf_ids)}"
        )


@serving
def test_fastvid_on_qwen2_5_vl_gets_its_frame_feature(qwen, checkpoints):
    """FastVID's frame feature is the mean of the merger's input. vLLM compiles Qwen2.5-VL's merger, whose
    `__call__` skips module hooks: the signal was missing and the encoder raised (the engine step failed). The
    method's own selection now equals the HF path's kept indices."""
    from test_vllm_plugin import _frames, _hf, _request

    config = "fastvid_stop_r25"
    qwen.fresh()
    (out,), (report,), _ = qwen.run([_request("qwen2_5_vl", _frames(), config, "exact")])
    hf_ids, hf_index = _hf("qwen2_5_vl", checkpoints, config)
    assert report["reference_index"] == hf_index
    if report["tokens_trimmed"] == report["tokens_added"] == 0:
        assert list(out.outputs[0].token_ids) == hf_ids


@serving
def test_precomputed_video_embeddings_are_refused_when_pruned(qwen):
    """`video_embeds` skip the vision tower, whose signals the methods read: refused with the request (before, the
    encoder raised for signal methods, failing the engine step); with `none` they are served as vLLM serves them."""
    vid = PLACEHOLDER["qwen2_5_vl"]
    grid = torch.tensor([[2, 24, 24]])  # 4 frames of 336 px: 2 temporal patches of 12 x 12 merged tokens
    hidden = qwen.llm.llm_engine.vllm_config.model_config.hf_config.text_config.hidden_size
    embeds = {"video_embeds": torch.randn(288, hidden), "video_grid_thw": grid}
    request = {"prompt": _prompt(f"{vid}what ?"), "multi_modal_data": {"video": embeds}}
    for config in (VZ, {"method": "uniform", "retention": 0.25}):
        with pytest.raises(Exception, match="precomputed video embeddings"):
            qwen.run(
                [
                    {
                        **request,
                        "mm_processor_kwargs": {
                            "stop_config": json.dumps(config) if isinstance(config, dict) else config
                        },
                    }
                ]
            )
    (out,), reports, _ = qwen.run([{**request, "mm_processor_kwargs": {"stop_config": "none"}}])
    assert reports == [] and out.prompt_token_ids.count(qwen.video_token) == 288
    _, (report,), _ = qwen.run([_req(f"{vid}what ?", [_video("qwen2_5_vl", 99, 4)], config=VZ)])
    assert report["tokens_after"] == 72
