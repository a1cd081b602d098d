"""stop-hf's vLLM plugin (issue 22).

The pure logic (options, counts, the exact-count rule, position channels) runs everywhere. The serving tests need
vLLM (the venv that scripts/setup_vllm.sh builds; scripts/ci_vllm.sh runs them there) and skip with the reason
otherwise. They share one engine per architecture (start-up is ~45 s on CPU): each engine starts with
`stop_config: none` and every case sends its own config per request, which is the per-request override path.
"""

from __future__ import annotations

import collections
import importlib.util
import os

import pytest
import torch

from stop_hf.config import StopConfig, StopConfigError
from stop_hf.pruners import PruneResult
from stop_hf.vllm.counts import (
    POSITION_CHANNELS,
    ServeOptions,
    append_positions,
    fit_count,
    frame_counts,
    kept_frame_counts,
    placement_order,
    reference_budget,
    relative_mrope,
    serve_options,
    split_positions,
    synthetic_input,
    target_count,
)

# ---------------------------------------------------------------------------------------------------- pure logic


def test_options_validate_like_the_hf_kwarg():
    with pytest.raises(StopConfigError, match="retention"):
        serve_options({"method": "visionzip", "retention": 1.5})
    with pytest.raises(StopConfigError, match="not a known method"):
        serve_options({"method": "nope"})
    with pytest.raises(StopConfigError, match="stop_count_rule"):
        serve_options("visionzip_stop_r25", "sometimes")
    assert serve_options('{"method": "uniform", "retention": 0.5}').config.retention == 0.5
    assert not serve_options("none").active


def test_content_dependent_methods_need_the_exact_rule():
    with pytest.raises(StopConfigError, match="stop_count_rule='exact'"):
        serve_options("holitom_stop_r10")
    assert serve_options("holitom_stop_r10", "exact").count_rule == "exact"


def test_position_modes_per_architecture():
    assert (
        serve_options({"method": "uniform", "retention": 0.5}, arch="qwen2_5_vl").position_mode == "original"
    )
    with pytest.raises(StopConfigError, match="position_mode='compact'"):
        serve_options({"method": "uniform", "retention": 0.5, "position_mode": "compact"}, arch="qwen2_5_vl")
    with pytest.raises(StopConfigError, match="position_mode='original'"):
        serve_options(
            {"method": "uniform", "retention": 0.5, "position_mode": "original"}, arch="llava_onevision"
        )
    assert serve_options("visionzip_stop_r25", arch="llava_onevision").position_mode == "compact"


def test_options_travel_as_a_tensor():
    options = serve_options("visionzip_stop_r25", "exact", "llava_onevision")
    assert ServeOptions.decode(options.encode()) == options


@pytest.mark.parametrize(
    "config", ["visionzip_stop_r25", "visionzip_baseline_r10", {"method": "uniform", "retention": 0.3}]
)
@pytest.mark.parametrize("shape", [(2, (12, 12)), (4, (6, 9)), (3, (14, 14))])
def test_shape_counts_equal_the_pruner_on_real_content(config, shape):
    frames, grid = shape
    options = serve_options(config)
    x = synthetic_input(frames, grid, width=16)
    x.features = torch.randn_like(x.features) * 3  # other content, same shape
    x.attention = torch.softmax(torch.randn_like(x.attention) * 4, dim=-1)
    assert options.config.build_pruner()(x).index.numel() == target_count(options, frames, grid)


@pytest.mark.parametrize(
    "config",
    [
        "holitom_stop_r10",
        "prunevid_baseline_r25",
        "flashvid_stop_r25",
        {"method": "fastvid", "retention": 0.1, "sink": True},
    ],
)
def test_exact_rule_reaches_the_reference_budget(config):
    options = serve_options(config, "exact")
    frames, grid = 4, (12, 12)
    target = target_count(options, frames, grid)
    assert target == reference_budget(options, frames, 144)
    pruner = options.config.build_pruner()
    for seed in range(3):
        torch.manual_seed(seed)
        x = synthetic_input(frames, grid, width=16)
        x.features = torch.randn_like(x.features)
        x.attention = torch.softmax(torch.randn_like(x.attention) * 3, dim=-1)
        reference = pruner(x)
        fitted, changed = fit_count(reference, x, pruner, target)
        assert fitted.index.numel() == target
        assert changed == target - reference.index.numel()
        assert fitted.info["count_rule"]["reference_tokens"] == reference.index.numel()


def _result(index: list[int], width: int = 4) -> PruneResult:
    index_t = torch.tensor(index)
    return PruneResult(embeds=torch.randn(len(index), width), index=index_t)


def test_trim_drops_the_lowest_ranked_and_top_up_adds_the_next_ranked():
    pruner = StopConfig(method="visionzip", retention=0.5).build_pruner()
    x = synthetic_input(1, (2, 2), width=4)
    x.attention = torch.tensor([[0.1, 0.4, 0.3, 0.2]])
    trimmed, changed = fit_count(_result([0, 1, 2]), x, pruner, 2)
    assert trimmed.index.tolist() == [1, 2] and changed == -1  # token 0 ranks lowest
    topped, changed = fit_count(_result([0]), x, pruner, 3)
    assert topped.index.tolist() == [0, 1, 2] and changed == 2  # next-ranked: 1 (0.4), then 2 (0.3)
    flat = x.features.reshape(-1, 4)
    assert torch.equal(topped.embeds[1:], flat[[1, 2]])  # copies of the source tokens


def test_placement_and_positions():
    result = _result([5, 1, 3])
    assert placement_order(result, "original").tolist() == [1, 2, 0]
    assert placement_order(result, "compact").tolist() == [0, 1, 2]
    offsets = relative_mrope(torch.tensor([0, 7, 12, 25]), (3, 4), 2.0)
    assert offsets.tolist() == [[0, 0, 0], [0, 1, 3], [2, 0, 0], [4, 0, 1]]
    for dtype in (torch.float32, torch.bfloat16):
        embeds = torch.randn(4, 8).to(dtype)
        big = torch.tensor([[0, 0, 0], [1000, 300, 2], [65535, 1, 255], [256, 257, 0]])
        packed = append_positions(embeds, big)
        assert packed.shape == (4, 8 + POSITION_CHANNELS)
        values, back, flag = split_positions(packed)
        assert torch.equal(values, embeds) and torch.equal(back, big) and bool(flag.all())
        assert not bool(split_positions(append_positions(embeds, None))[2].any())


def test_qwen3_frame_counts_follow_the_shape_and_content_methods_split_the_budget():
    """Qwen3-VL's prompt has one group per temporal patch, so each frame's count is fixed at prompt time."""
    for config in ["visionzip_stop_r25", {"method": "uniform", "retention": 0.3}]:
        options = serve_options(config, arch="qwen3_vl")
        assert options.position_mode == "original"
        frames, grid = 3, (6, 8)
        counts = frame_counts(options, frames, grid)
        assert sum(counts) == target_count(options, frames, grid) and len(counts) == frames
        x = synthetic_input(frames, grid, width=16)
        x.features = torch.randn_like(x.features) * 3
        x.attention = torch.softmax(torch.randn_like(x.attention) * 4, dim=-1)
        index = options.config.build_pruner()(x).index
        assert kept_frame_counts(index, frames, 48) == counts
    assert frame_counts(serve_options("none", arch="qwen3_vl"), 2, (3, 4)) == [12, 12]
    for arch in ("qwen3_vl", "qwen3_vl_moe"):
        with pytest.raises(StopConfigError, match="split per temporal patch"):
            serve_options("holitom_stop_r10", None, arch)
    # content-dependent methods: the budget split per temporal patch (HoliTom/PruneVid: remainder to earlier ones)
    holitom = serve_options("holitom_stop_r10", "exact", "qwen3_vl")
    assert frame_counts(holitom, 3, (6, 8)) == [5, 5, 4]  # round(3 * 48 * 0.1) = 14
    assert sum(frame_counts(holitom, 3, (6, 8))) == target_count(holitom, 3, (6, 8))
    flashvid = serve_options("flashvid_stop_r25", "exact", "qwen3_vl")
    per_frame = flashvid.config.build_pruner().budgets(48)[0]
    assert frame_counts(flashvid, 3, (6, 8)) == [per_frame] * 3


def test_exact_rule_per_temporal_patch_trims_and_tops_up_within_each_frame():
    """Each frame is fitted to its own target by the method's score: frame 0 drops its lowest-ranked token, frame 1
    gains its highest-ranked unrepresented token; the report counts both."""
    pruner = StopConfig(method="visionzip", retention=0.5).build_pruner()
    x = synthetic_input(2, (1, 4), width=4)
    x.attention = torch.tensor([[0.1, 0.4, 0.3, 0.2], [0.5, 0.1, 0.3, 0.1]])
    fitted, changed = fit_count(_result([0, 1, 2, 5]), x, pruner, [2, 2])
    assert changed == 0
    assert fitted.index.tolist() == [1, 2, 5, 4]  # 0 ranks lowest in frame 0; 4 (0.5) is frame 1's best
    assert fitted.info["count_rule"] == {
        "reference_tokens": 4,
        "served_tokens": 4,
        "changed": 0,
        "trimmed": 1,
        "added": 1,
    }
    flat = x.features.reshape(-1, 4)
    assert torch.equal(fitted.embeds[-1], flat[4])
    same, changed = fit_count(_result([1, 2, 4, 6]), x, pruner, [2, 2])
    assert same.index.tolist() == [1, 2, 4, 6] and same.info["count_rule"]["trimmed"] == 0
    # one target for the whole video: the same tokens are a fit already (4 of 4)
    whole, _ = fit_count(_result([0, 1, 2, 5]), x, pruner, 4)
    assert whole.index.tolist() == [0, 1, 2, 5]


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "llava_onevision", "qwen3_vl"])
def test_servable_tiny_checkpoint_round_trips_in_hf(arch, tmp_path):
    """LLM heads 32 wide (vLLM's CPU attention refuses 16), hub weight names, tokenizer/processor/template saved."""
    import glob

    from safetensors.torch import load_file
    from stop_hf.patches import architecture
    from transformers import AutoProcessor

    from stop_hf import compat
    from stop_hf.tiny import SERVABLE_HEAD_DIM, build_tiny_model, save_tiny_checkpoint

    path = save_tiny_checkpoint(tmp_path / arch, arch)
    names = set().union(*(load_file(f).keys() for f in glob.glob(str(path / "*.safetensors"))))
    if arch == "llava_onevision":
        tower = [n for n in names if "vision_tower." in n]
        assert tower and all("vision_tower.vision_model." in n for n in tower)
    cls = compat.model_class(architecture(arch).model_class)
    loaded = cls.from_pretrained(
        str(path)
    )  # every weight read back: equal to the model that was saved (below)
    text = loaded.config.text_config
    assert (
        getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    ) == SERVABLE_HEAD_DIM
    expected = build_tiny_model(arch, servable=True).state_dict()
    state = loaded.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    processor = AutoProcessor.from_pretrained(str(path))
    assert processor.chat_template and processor.tokenizer.eos_token == "<|im_end|>"


# ---------------------------------------------------------------------------------------------------- serving
HAVE_VLLM = importlib.util.find_spec("vllm") is not None
if not HAVE_VLLM:
    print(
        "test_vllm_plugin: vLLM is not installed; serving tests skip (build the env: scripts/setup_vllm.sh VENV)"
    )
serving = pytest.mark.skipif(
    not HAVE_VLLM, reason="vLLM is not installed (scripts/setup_vllm.sh builds its venv)"
)

FRAMES = 4
PROMPT = "<|im_start|>user\n{video}what happens ?<|im_end|>\n<|im_start|>assistant\n"
PLACEHOLDER = {
    "qwen2_5_vl": "<|vision_start|><|video_pad|><|vision_end|>",
    "qwen2_vl": "<|vision_start|><|video_pad|><|vision_end|>",
    "llava_onevision": "<video>",
    "qwen3_vl": "<|vision_start|><|video_pad|><|vision_end|>",
    "qwen3_vl_moe": "<|vision_start|><|video_pad|><|vision_end|>",
}
QWEN3 = ["qwen3_vl"]  # Qwen3-VL-MoE: tests/test_vllm_moe.py (its own engine)
MAX_TOKENS = 6


def _frames(seed: int = 0, side: int = 336):
    import numpy as np

    rng = np.random.default_rng(seed)
    base = rng.random((1, side, side, 3))
    return ((0.6 * base + 0.4 * rng.random((FRAMES, side, side, 3))) * 255).astype("uint8")


def _metadata():
    return {
        "total_num_frames": FRAMES,
        "fps": 2.0,
        "duration": FRAMES / 2,
        "video_backend": "opencv",
        "frames_indices": list(range(FRAMES)),
        "do_sample_frames": False,
    }


def _request(arch: str, frames, config=None, rule=None) -> dict:
    video = (frames, _metadata()) if arch.startswith("qwen") else frames
    return _video_request(PLACEHOLDER[arch], video, config, rule)


def _video_request(placeholder: str, video, config=None, rule=None) -> dict:
    """A one-video prompt; `config` (preset, dict or JSON) and `rule` go in the request's mm_processor_kwargs."""
    request = {"prompt": PROMPT.format(video=placeholder), "multi_modal_data": {"video": video}}
    kwargs = {}
    if config is not None:
        kwargs["stop_config"] = config if isinstance(config, str) else __import__("json").dumps(config)
    if rule is not None:
        kwargs["stop_count_rule"] = rule
    if kwargs:
        request["mm_processor_kwargs"] = kwargs
    return request


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from stop_hf.tiny import save_tiny_checkpoint

    root = tmp_path_factory.mktemp("vllm_tiny")
    return {arch: save_tiny_checkpoint(root / arch, arch) for arch in PLACEHOLDER}


_ENGINES: dict = {}


def _engine(arch: str, checkpoints):
    if arch not in _ENGINES:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # reports read from the in-process model
        from vllm import LLM

        _ENGINES[arch] = LLM(
            model=str(checkpoints[arch]),
            enforce_eager=True,
            dtype="float32",
            max_model_len=4096,
            kv_cache_memory_bytes=1 << 28,
            limit_mm_per_prompt={"video": 2, "image": 0},
            additional_config={"stop_config": "none"},
            seed=0,
        )
    return _ENGINES[arch]


def _generate(llm, requests):
    from vllm import SamplingParams

    llm.apply_model(lambda model: model.stop_hf_reports.clear())
    outputs = llm.generate(requests, SamplingParams(max_tokens=MAX_TOKENS, temperature=0), use_tqdm=False)
    reports = llm.apply_model(lambda model: list(model.stop_hf_reports))[0]
    return outputs, reports


_HF: dict = {}


def _hf(arch: str, checkpoints, config):
    """The HF path on the same checkpoint, prompt and frames: (greedy ids, kept indices or None, prompt length)."""
    import stop_hf

    key = (arch, str(config))
    if key in _HF:
        return _HF[key]
    from transformers import AutoProcessor

    model = stop_hf.from_pretrained(str(checkpoints[arch]), stop_config=config, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(str(checkpoints[arch]))
    frames = _frames()
    text = PROMPT.format(video=PLACEHOLDER[arch])
    if arch.startswith("qwen"):
        from transformers.video_utils import VideoMetadata

        meta = {k: v for k, v in _metadata().items() if k != "do_sample_frames"}
        inputs = processor(
            text=[text],
            videos=[list(frames)],
            video_metadata=[VideoMetadata(**meta)],
            do_sample_frames=False,
            return_tensors="pt",
        )
    else:
        inputs = processor(text=[text], videos=[list(frames)], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
    report = stop_hf.last_prune_report(model) if stop_hf.is_patched(model) else []
    ids = out[0, inputs["input_ids"].shape[1] :].tolist()
    _HF[key] = (ids, report[0]["index"].tolist() if report else None)
    return _HF[key]


ARCHS = ["qwen2_5_vl", "qwen2_vl", "llava_onevision"]
FIXED = [
    {"method": "uniform", "retention": 0.25},
    "visionzip_baseline_r25",
    "visionzip_stop_r25",
]


@serving
@pytest.mark.parametrize("arch", ARCHS)
def test_none_is_vllms_unpruned_prompt_and_hf_ids(arch, checkpoints):
    llm = _engine(arch, checkpoints)
    frames = _frames()
    (out,), reports = _generate(llm, [_request(arch, frames, "none")])
    per_frame = 144 // 2 if arch.startswith("qwen") else 196  # Qwen: 2 frames per temporal patch
    assert reports == []
    video_tokens = FRAMES * per_frame + (arch == "llava_onevision")
    text = len(llm.get_tokenizer()(PROMPT.format(video=PLACEHOLDER[arch]))["input_ids"]) - 1
    assert len(out.prompt_token_ids) == text + video_tokens
    hf_ids, _ = _hf(arch, checkpoints, "none")
    assert list(out.outputs[0].token_ids) == hf_ids


@serving
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("config", FIXED, ids=str)
def test_fixed_count_methods_equal_the_hf_path(arch, config, checkpoints):
    llm = _engine(arch, checkpoints)
    (out,), reports = _generate(llm, [_request(arch, _frames(), config)])
    hf_ids, hf_index = _hf(arch, checkpoints, config)
    (report,) = reports
    if arch.startswith("qwen"):  # original positions: placed in representative order, as HF's splice
        assert report["index"] == sorted(hf_index)
    else:  # compact: the pruner's own order
        assert report["index"] == hf_index
    assert report["count_changed"] == 0
    assert list(out.outputs[0].token_ids) == hf_ids


@serving
@pytest.mark.parametrize("arch", ARCHS)
def test_exact_count_rule_against_the_reference_count(arch, checkpoints):
    llm = _engine(arch, checkpoints)
    config = "holitom_stop_r10"
    (out,), reports = _generate(llm, [_request(arch, _frames(), config, "exact")])
    (report,) = reports
    options = serve_options(config, "exact", arch)
    frames, grid = (FRAMES // 2, (12, 12)) if arch.startswith("qwen") else (FRAMES, (14, 14))
    assert report["tokens_after"] == target_count(options, frames, grid)
    _, hf_index = _hf(arch, checkpoints, config)
    assert report["tokens_after"] - len(hf_index) == report["count_changed"]
    assert set(hf_index) & set(report["index"])  # the same method's selection, trimmed or topped up
    without_rule = _request(arch, _frames(), config)
    with pytest.raises(Exception, match="stop_count_rule"):
        llm.generate([without_rule], use_tqdm=False)


@serving
@pytest.mark.parametrize("arch", ARCHS + QWEN3)
def test_two_configs_in_one_batch(arch, checkpoints):
    llm = _engine(arch, checkpoints)
    # a video of its own: vLLM's encoder cache serves a later request with the same video and config from this
    # test's outputs (same embeddings, but no new pruning report for the tests that read one)
    frames = _frames(seed=2)
    configs = [{"method": "uniform", "retention": 0.25}, "visionzip_stop_r25"]
    together, _ = _generate(llm, [_request(arch, frames, c) for c in configs])
    for config, out in zip(configs, together):
        (alone,), _ = _generate(llm, [_request(arch, frames, config)])
        assert out.prompt_token_ids == alone.prompt_token_ids
        assert out.outputs[0].token_ids == alone.outputs[0].token_ids
    assert len(together[0].prompt_token_ids) != len(
        _generate(llm, [_request(arch, frames, "none")])[0][0].prompt_token_ids
    )


# ------------------------------------------------------------------ Qwen3-VL (timestamped groups, deepstack)
def _hf_prompt_length(arch: str, checkpoints) -> int:
    from transformers import AutoProcessor
    from transformers.video_utils import VideoMetadata

    processor = AutoProcessor.from_pretrained(str(checkpoints[arch]))
    meta = {k: v for k, v in _metadata().items() if k != "do_sample_frames"}
    inputs = processor(
        text=[PROMPT.format(video=PLACEHOLDER[arch])],
        videos=[list(_frames())],
        video_metadata=[VideoMetadata(**meta)],
        do_sample_frames=False,
        return_tensors="pt",
    )
    return int(inputs["input_ids"].shape[1])


@serving
@pytest.mark.parametrize("arch", QWEN3)
@pytest.mark.parametrize("config", ["none", {"method": "uniform", "retention": 1.0}], ids=str)
def test_qwen3_vl_unpruned_is_vllms_prompt_and_hf_ids(arch, config, checkpoints):
    """`none` / retention 1.0: vLLM's own Qwen3-VL prompt (timestamped groups, full counts) and the HF ids."""
    llm = _engine(arch, checkpoints)
    (out,), reports = _generate(llm, [_request(arch, _frames(), config)])
    assert reports == []
    assert len(out.prompt_token_ids) == _hf_prompt_length(arch, checkpoints)
    hf_ids, _ = _hf(arch, checkpoints, "none")
    assert list(out.outputs[0].token_ids) == hf_ids


@serving
@pytest.mark.parametrize("arch", QWEN3)
@pytest.mark.parametrize("config", FIXED, ids=str)
def test_qwen3_vl_fixed_count_methods_equal_the_hf_path(arch, config, checkpoints):
    """Kept indices (representative order) and greedy ids equal the HF patch's: same signals, each temporal patch's
    group holding its kept count, deepstack rows of exactly the kept tokens, HF's original positions."""
    llm = _engine(arch, checkpoints)
    (out,), reports = _generate(llm, [_request(arch, _frames(), config)])
    hf_ids, hf_index = _hf(arch, checkpoints, config)
    (report,) = reports
    assert report["index"] == sorted(hf_index)
    assert report["tokens_after"] < report["tokens_before"]
    unpruned = _hf_prompt_length(arch, checkpoints)
    assert len(out.prompt_token_ids) == unpruned - (report["tokens_before"] - report["tokens_after"])
    assert list(out.outputs[0].token_ids) == hf_ids


#: flashvid_stop_r25 is left out on purpose: on this tiny clip its repeated picks sit on near-ties that 1e-7 relative
#: noise on the features flips (9 of 10 seeds), so two float32 towers may order them differently (docs/vllm.md)
CONTENT = ["fastvid_stop_r25", "flashvid_baseline_r25", "holitom_stop_r25", "prunevid_baseline_r25"]


@serving
@pytest.mark.parametrize("arch", QWEN3)
@pytest.mark.parametrize("config", CONTENT)
def test_qwen3_vl_content_dependent_methods_per_temporal_patch(arch, config, checkpoints):
    """The method's own selection equals the HF path's kept indices token by token; the exact rule then fits each
    temporal patch's group to its share of the budget, trimming / adding exactly what the per-frame counts say."""
    llm = _engine(arch, checkpoints)
    (out,), reports = _generate(llm, [_request(arch, _frames(), config, "exact")])
    hf_ids, hf_index = _hf(arch, checkpoints, config)
    (report,) = reports
    assert report["reference_index"] == hf_index
    frames, n = FRAMES // 2, 100
    options = serve_options(config, "exact", arch)
    targets = frame_counts(options, frames, (10, 10))
    assert kept_frame_counts(torch.tensor(report["index"]), frames, n) == targets
    hf_counts = kept_frame_counts(torch.tensor(hf_index), frames, n)
    diff = [t - c for t, c in zip(targets, hf_counts)]
    assert report["tokens_trimmed"] == sum(-d for d in diff if d < 0)
    assert report["tokens_added"] == sum(d for d in diff if d > 0)
    assert report["count_changed"] == sum(targets) - len(hf_index)
    kept_of_reference = collections.Counter(report["index"]) & collections.Counter(hf_index)  # repeated picks
    assert sum(kept_of_reference.values()) == len(hf_index) - report["tokens_trimmed"]
    unpruned = _hf_prompt_length(arch, checkpoints)
    assert len(out.prompt_token_ids) == unpruned - (report["tokens_before"] - report["tokens_after"])
    if report["tokens_trimmed"] == report["tokens_added"] == 0:
        assert list(out.outputs[0].token_ids) == hf_ids
    with pytest.raises(Exception, match="stop_count_rule"):
        llm.generate([_request(arch, _frames(seed=5), config)], use_tqdm=False)


@serving
def test_bad_request_config_fails_that_request_only(checkpoints):
    llm = _engine("qwen2_5_vl", checkpoints)
    with pytest.raises(Exception, match="retention"):
        llm.generate(
            [_request("qwen2_5_vl", _frames(), {"method": "uniform", "retention": 2.0})], use_tqdm=False
        )
    (out,), _ = _generate(llm, [_request("qwen2_5_vl", _frames(), {"method": "uniform", "retention": 0.5})])
    assert out.outputs[0].token_ids


@serving
def test_start_up_refusals(checkpoints):
    from vllm.engine.arg_utils import EngineArgs

    from stop_hf.vllm import check_engine_config

    def config(**kwargs):
        args = EngineArgs(
            model=str(checkpoints["qwen2_5_vl"]),
            enforce_eager=True,
            dtype="float32",
            max_model_len=4096,
            **kwargs,
        )
        return args

    with pytest.raises(StopConfigError, match="retention"):
        config(
            additional_config={"stop_config": {"method": "uniform", "retention": 0}}
        ).create_engine_config()
    with pytest.raises(ValueError, match="compile_mm_encoder"):
        config(
            additional_config={"stop_config": "visionzip_stop_r25"},
            compilation_config={"compile_mm_encoder": True},
        ).create_engine_config()
    with pytest.raises(ValueError, match="mm_encoder_tp_mode"):
        config(
            additional_config={"stop_config": "visionzip_stop_r25"}, mm_encoder_tp_mode="data"
        ).create_engine_config()
    plain = config().create_engine_config()
    check_engine_config(plain)  # no stop config: nothing changes
    assert "stop_config" not in (plain.model_config.multimodal_config.mm_processor_kwargs or {})
    from types import SimpleNamespace

    other = SimpleNamespace(
        additional_config={"stop_config": "visionzip_stop_r25"},
        model_config=SimpleNamespace(architectures=["Qwen3ForCausalLM"]),
    )
    with pytest.raises(ValueError, match="does not serve architecture"):
        check_engine_config(other)


TP_SCRIPT = """
import json, sys
from vllm import LLM, SamplingParams
sys.path.insert(0, {tests!r})
import test_vllm_plugin as t

if __name__ == "__main__":
    llm = LLM(model={model!r}, enforce_eager=True, dtype={dtype!r}, max_model_len=4096, kv_cache_memory_bytes=1 << 28,
              limit_mm_per_prompt={{"video": 2, "image": 0}}, additional_config={{"stop_config": "none"}},
              tensor_parallel_size=2, distributed_executor_backend="mp", seed=0)
    requests = [t._request({arch!r}, t._frames(1), c, r) for c, r in {configs!r}]
    outs = llm.generate(requests, SamplingParams(max_tokens=t.MAX_TOKENS, temperature=0), use_tqdm=False)
    print("TP2=" + json.dumps([[list(o.prompt_token_ids), list(o.outputs[0].token_ids)] for o in outs]))
    print("REPORTS=" + json.dumps(llm.apply_model(t._reports_of)))  # one list per rank (pickled by name)
"""


def serve_tensor_parallel_two(model, arch: str, configs, tmp_path, dtype: str = "float32"):
    """Serves `configs` ([(stop_config, count_rule)], one request each on `_frames(1)`) at TP=2 in its own process
    (`VLLM_CPU_OMP_THREADS_BIND="0|1"`: one core per rank), bounded in time: ([(prompt ids, output ids)], each
    rank's reports). `arch` picks the prompt (Qwen3.5 uses Qwen3-VL's)."""
    import json
    import subprocess
    import sys

    script = tmp_path / "tp2.py"
    tests = os.path.dirname(os.path.abspath(__file__))
    script.write_text(
        TP_SCRIPT.format(tests=tests, model=str(model), arch=arch, configs=configs, dtype=dtype)
    )
    # apply_model sends a function to the engine and worker processes
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": "0|1", "VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=400)
    lines = [line for line in run.stdout.splitlines() if line.startswith(("TP2=", "REPORTS="))]
    assert len(lines) == 2, run.stderr[-3000:]
    return json.loads(lines[0][4:]), json.loads(lines[1][len("REPORTS=") :])


#: a fixed-count method +- SToP, and one without signals
TP_CONFIGS = ["visionzip_baseline_r25", "visionzip_stop_r25", '{"method": "uniform", "retention": 0.5}']


def _reports_of(model) -> list:
    """`apply_model` target in another process: a module-level function (a lambda does not pickle)."""
    return list(model.stop_hf_reports)


def _kept(reports) -> list:
    """The kept indices of one batch's reports, sorted (their order is the encoder's, not the requests')."""
    return sorted(r["index"] for r in reports)


#: TP=2 start-ups cost ~45 s each on 2 cores: CI runs Qwen2.5-VL; STOP_HF_VLLM_TP_ALL=1 adds LLaVA-OV (with
#: MAP-head FastVID) and Qwen3-VL (both pass: 44 s and 39 s here)
TP_ARCHS = ["qwen2_5_vl"] + (
    ["llava_onevision", "qwen3_vl"] if os.environ.get("STOP_HF_VLLM_TP_ALL") == "1" else []
)


@serving
@pytest.mark.parametrize("arch", TP_ARCHS)
def test_tensor_parallel_two_equals_one(arch, checkpoints, tmp_path):
    """Each rank holds half the vision heads: the all-reduced signals make both ranks keep the same tokens (kept
    indices of each rank equal TP=1's) and the greedy ids equal TP=1's. TP=2 runs in its own process
    (`VLLM_CPU_OMP_THREADS_BIND="0|1"`: one core per rank), bounded in time."""
    import json

    configs = [(c, None) for c in TP_CONFIGS]
    if arch == "llava_onevision":  # FastVID+SToP with SigLIP's MAP head, applied by each rank
        from stop_hf.siglip_head import save_random_siglip_head

        vision = json.loads((checkpoints[arch] / "config.json").read_text())["vision_config"]
        head = save_random_siglip_head(tmp_path / "head", vision["hidden_size"], vision["intermediate_size"])
        fastvid = {**StopConfig.from_any("fastvid_stop_r25").to_dict(), "siglip_head": str(head)}
        configs.append((json.dumps(fastvid), "exact"))
    requests = [_request(arch, _frames(1), c, r) for c, r in configs]
    single, reports = _generate(_engine(arch, checkpoints), requests)
    double, ranks = serve_tensor_parallel_two(checkpoints[arch], arch, configs, tmp_path)
    assert len(ranks) == 2 and len(reports) == len(configs)  # every request pruned, one report each
    for rank in ranks:
        assert _kept(rank) == _kept(reports)
    for one, (prompt, ids) in zip(single, double):
        assert list(one.prompt_token_ids) == prompt
        assert list(one.outputs[0].token_ids) == ids


def _mp4(frames, path) -> str:
    """The frames as an H.264 mp4 (PyAV), returned as a data URL."""
    import base64

    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=2)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()


@serving
def test_openai_server_prunes_a_video_on_loopback(checkpoints, tmp_path):
    """`vllm serve --additional-config` on 127.0.0.1; a chat request with a video is pruned (bounded in time)."""
    import json
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    command = [
        *(os.path.join(os.path.dirname(sys.executable), "vllm"), "serve", str(checkpoints["qwen2_5_vl"])),
        *("--host", "127.0.0.1", "--port", str(port), "--enforce-eager", "--dtype", "float32"),
        *("--max-model-len", "4096", "--kv-cache-memory-bytes", str(1 << 28)),
        *("--limit-mm-per-prompt", '{"video": 1, "image": 0}'),
        *("--additional-config", json.dumps({"stop_config": "visionzip_stop_r25"})),
        "--trust-request-mm-kwargs",  # the server accepts per-request mm_processor_kwargs only with this flag
    ]
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed in finally
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "server did not start in 300 s"
            try:
                urllib.request.urlopen(f"{base}/health", timeout=5)
                break
            except OSError:
                time.sleep(2)
        video = _mp4(_frames(), tmp_path / "clip.mp4")

        def chat(**extra):
            body = {
                "model": str(checkpoints["qwen2_5_vl"]),
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "video_url", "video_url": {"url": video}},
                            {"type": "text", "text": "what happens ?"},
                        ],
                    }
                ],
                "max_tokens": 3,
                "temperature": 0,
                **extra,
            }
            request = urllib.request.Request(
                f"{base}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as error:
                return error.code, json.loads(error.read() or b"{}")

        status, pruned = chat()
        assert status == 200, pruned
        status, full = chat(mm_processor_kwargs={"stop_config": "none"})
        assert status == 200, full
        video_full = full["usage"]["prompt_tokens"] - pruned["usage"]["prompt_tokens"]
        assert video_full > 0
        # the pruned prompt holds the VisionZip count of the same grid: a quarter of the video tokens kept
        status, bad = chat(mm_processor_kwargs={"stop_config": '{"method": "uniform", "retention": 3}'})
        assert status >= 400 and "retention" in json.dumps(bad)
        status, again = chat()
        assert status == 200 and again["usage"] == pruned["usage"]  # a bad request fails only itself
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@serving
def test_position_offsets_are_added_in_the_runners_buffer(monkeypatch):
    """CUDA-graph replay reads the positions from the captured buffer's address: the offsets must land in that
    buffer, not in a copy (a copy would be silently ignored on GPU)."""
    from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration

    from stop_hf.vllm.models import StopQwen2_5_VLForConditionalGeneration

    seen = {}

    def parent_forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        seen["positions"] = positions

    monkeypatch.setattr(Qwen2_5_VLForConditionalGeneration, "forward", parent_forward)
    model = object.__new__(StopQwen2_5_VLForConditionalGeneration)
    buffer = torch.zeros(3, 16, dtype=torch.long)
    step = buffer[:, :10]  # the runner passes a view of its persistent buffer
    model._stop_pending = (torch.tensor([4, 5]), torch.tensor([[0, 1, 2], [1, 3, 4]]))
    model.forward(None, step)
    assert seen["positions"].data_ptr() == buffer.data_ptr()
    assert buffer[:, 4].tolist() == [0, 1, 2] and buffer[:, 5].tolist() == [1, 3, 4]
    assert int(buffer.abs().sum()) == 11 and model._stop_pending is None
