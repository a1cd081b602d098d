"""Qwen3.5 (dense and MoE) in stop-hf's vLLM plugin (issue 22), exact against the HF path across transformers versions.

The HF Qwen3.5 path needs transformers >= 5.23, the vLLM venv holds 5.19. So the HF side is stored: the tiny
checkpoints in tests/fixtures/vllm_qwen3_5{,_moe}/ with `hf_reference.json` (scripts/make_qwen35_vllm_fixture.py).
- here, with transformers >= 5.23: the HF path recomputed from the stored checkpoint equals the JSON (no stale fixture);
- in the vLLM venv: the stored checkpoint served by the plugin gives the stored kept indices and greedy ids.
vLLM's CPU backend runs Qwen3.5's Gated-DeltaNet layers in bfloat16 only (vllm/model_executor/layers/mamba/ops/cpu/
gdn_attention.py:158), so the engines are bfloat16; they are compared with the HF path in bfloat16 (everything) and in
float32 (the fixed-count methods, measured equal here too).
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_vllm_plugin import _frames, _generate, _request, serving

from stop_hf import compat
from stop_hf.config import StopConfigError
from stop_hf.vllm.counts import SERVED_ARCHITECTURES, frame_counts, kept_frame_counts, serve_options

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = {
    "qwen3_5": ROOT / "tests" / "fixtures" / "vllm_qwen3_5",
    "qwen3_5_moe": ROOT / "tests" / "fixtures" / "vllm_qwen3_5_moe",
}
VLLM_CLASS = {
    "qwen3_5": "Qwen3_5ForConditionalGeneration",
    "qwen3_5_moe": "Qwen3_5MoeForConditionalGeneration",
}
FIXED = ["uniform_r25", "visionzip_baseline_r25", "visionzip_stop_r25"]
CONTENT = "holitom_stop_r25"
GRID = (
    2,
    (10, 10),
)  # 4 frames of 336 x 336 -> 2 temporal patches of 10 x 10 merged tokens (patch 16, merge 2)


def _video_request(frames, config=None, rule=None) -> dict:
    """Qwen3.5's prompt is Qwen3-VL's (same placeholder and video metadata); test_vllm_plugin's PLACEHOLDER is not
    extended, since its module fixture writes a tiny checkpoint for every key (the vLLM venv cannot write Qwen3.5's)."""
    return _request("qwen3_vl", frames, config, rule)


def _reference(arch: str) -> dict:
    return json.loads((FIXTURE[arch] / "hf_reference.json").read_text())


def _script():
    spec = importlib.util.spec_from_file_location(
        "make_qwen35_vllm_fixture", ROOT / "scripts" / "make_qwen35_vllm_fixture.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config(arch: str, name: str):
    config = _reference(arch)["configs"][name]
    return config if isinstance(config, str) else json.dumps(config)


# ---------------------------------------------------------------------------------------------------- no vLLM needed
def _hf_qwen3_5_supported() -> bool:
    from stop_hf.patches import ARCHITECTURES

    return "qwen3_5" in ARCHITECTURES  # left out (UNAVAILABLE) below its min_transformers


@pytest.mark.parametrize("arch", sorted(FIXTURE))
def test_stored_reference_equals_the_hf_path_now(arch):
    """The JSON is what the HF path computes from the stored checkpoint today (transformers >= 5.23)."""
    if not _hf_qwen3_5_supported():
        pytest.skip(
            "the HF Qwen3.5 path needs transformers >= 5.23 (patches/qwen3_5.py); the vLLM venv pins 5.19"
        )
    stored = _reference(arch)
    script = _script()
    assert stored["arch"] == arch and stored["configs"] == json.loads(json.dumps(script.CONFIGS))
    fresh = script.hf_reference(FIXTURE[arch])
    assert fresh["prompt_length"] == stored["prompt_length"] and fresh["max_tokens"] == stored["max_tokens"]
    for dtype, per_config in stored["references"].items():
        for name, entry in per_config.items():
            assert fresh["references"][dtype][name] == entry, (dtype, name)
    assert all(
        len(entry["ids"]) == stored["max_tokens"] for entry in stored["references"]["bfloat16"].values()
    )
    assert stored["references"]["bfloat16"]["none"]["index"] is None


@pytest.mark.parametrize("arch", sorted(FIXTURE))
def test_stored_checkpoint_is_servable_and_loads_in_hf(arch):
    """LLM heads 32 wide, linear-attention heads 64 (vLLM's CPU kernels), and every weight loads in this venv's
    transformers (5.24 here, 5.19 in the vLLM venv, where the HF patch refuses Qwen3.5 but the model class exists)."""
    from transformers import AutoProcessor

    from stop_hf.tiny import SERVABLE_HEAD_DIM, SERVABLE_LINEAR_HEAD_DIM

    path = FIXTURE[arch]
    assert sum(f.stat().st_size for f in path.iterdir()) < 5e6
    loaded, info = compat.model_class(VLLM_CLASS[arch]).from_pretrained(str(path), output_loading_info=True)
    # every stored weight read, none missing (MoE: HF fuses the per-expert tensors the checkpoint stores as the hub does)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    text = loaded.config.text_config
    assert text.head_dim == SERVABLE_HEAD_DIM
    assert text.linear_key_head_dim == text.linear_value_head_dim == SERVABLE_LINEAR_HEAD_DIM
    assert set(text.layer_types) == {"linear_attention", "full_attention"}
    assert not hasattr(loaded.config.vision_config, "deepstack_visual_indexes")  # vLLM: use_deepstack False
    from safetensors.torch import load_file

    stored = load_file(str(path / "model.safetensors"))
    state = loaded.state_dict()
    shared = stored.keys() & state.keys()
    assert len(shared) > len(stored) // 2
    assert all(torch.equal(stored[k], state[k]) for k in shared)
    processor = AutoProcessor.from_pretrained(str(path))
    assert processor.image_processor.image_mean == processor.video_processor.image_mean  # vLLM: one mean


def test_qwen3_5_is_served_with_the_qwen3_rules():
    from stop_hf.vllm import MODEL_CLASSES, check_engine_config

    for arch, name in VLLM_CLASS.items():
        assert SERVED_ARCHITECTURES[name] == arch and name in MODEL_CLASSES
        multimodal = SimpleNamespace(
            mm_encoder_tp_mode="weights", video_pruning_rate=None, mm_processor_kwargs=None
        )
        config = SimpleNamespace(
            additional_config={"stop_config": "visionzip_stop_r25"},
            model_config=SimpleNamespace(architectures=[name], multimodal_config=multimodal),
            compilation_config=SimpleNamespace(compile_mm_encoder=False, cudagraph_mm_encoder=False),
            parallel_config=SimpleNamespace(pipeline_parallel_size=1),
        )
        check_engine_config(config)
        assert "stop_config" in multimodal.mm_processor_kwargs
        assert serve_options("visionzip_stop_r25", arch=arch).position_mode == "original"
        with pytest.raises(StopConfigError, match="split per temporal patch"):
            serve_options(CONTENT, None, arch)
        assert frame_counts(serve_options(CONTENT, "exact", arch), *GRID) == frame_counts(
            serve_options(CONTENT, "exact", "qwen3_vl"), *GRID
        )


# ---------------------------------------------------------------------------------------------------- serving
@pytest.fixture(scope="module", params=sorted(FIXTURE))
def served(request):
    """(arch, engine): one bfloat16 engine per architecture, freed before the next."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # reports read from the in-process model
    from vllm import LLM

    arch = request.param
    engine = LLM(
        model=str(FIXTURE[arch]),
        enforce_eager=True,
        dtype="bfloat16",  # vLLM's CPU Gated-DeltaNet kernel runs in bfloat16 only
        max_model_len=4096,
        kv_cache_memory_bytes=1 << 28,
        limit_mm_per_prompt={"video": 2, "image": 0},
        additional_config={"stop_config": "none"},
        seed=0,
    )
    yield arch, engine
    del engine
    gc.collect()


@serving
def test_served_by_the_plugins_class_unpruned_equals_hf(served):
    """`none` and retention 1.0: vLLM's own prompt (the HF processor's length) and the HF path's greedy ids."""
    arch, llm = served
    stored = _reference(arch)
    name = llm.apply_model(lambda model: type(model).__name__)[0]
    assert name == f"Stop{VLLM_CLASS[arch]}"
    for config in ("none", json.dumps({"method": "uniform", "retention": 1.0})):
        (out,), reports = _generate(llm, [_video_request(_frames(), config)])
        assert reports == []
        assert len(out.prompt_token_ids) == stored["prompt_length"]
        for dtype in ("bfloat16", "float32"):
            assert list(out.outputs[0].token_ids) == stored["references"][dtype]["none"]["ids"], dtype


@serving
@pytest.mark.parametrize("name", FIXED)
def test_fixed_count_methods_equal_the_hf_path(name, served):
    """Kept indices (representative order) and greedy ids equal the HF patch's, in bfloat16 and float32."""
    arch, llm = served
    stored = _reference(arch)
    (out,), reports = _generate(llm, [_video_request(_frames(), _config(arch, name))])
    (report,) = reports
    assert report["count_changed"] == 0 and report["tokens_after"] < report["tokens_before"]
    assert len(out.prompt_token_ids) == stored["prompt_length"] - (
        report["tokens_before"] - report["tokens_after"]
    )
    for dtype in ("bfloat16", "float32"):
        hf = stored["references"][dtype][name]
        assert report["index"] == sorted(hf["index"]), dtype
        assert list(out.outputs[0].token_ids) == hf["ids"], dtype


@serving
def test_content_dependent_method_per_temporal_patch(served):
    """Refused without the exact rule (the engine serves on); with it, the method's own selection equals the HF path's
    kept indices (bfloat16, the served dtype) and each temporal patch holds its share of the budget."""
    arch, llm = served
    config = _config(arch, CONTENT)
    with pytest.raises(Exception, match="stop_count_rule"):
        llm.generate([_video_request(_frames(seed=4), config)], use_tqdm=False)
    (out,), reports = _generate(llm, [_video_request(_frames(), config, "exact")])
    assert out.outputs[0].token_ids
    (report,) = reports
    assert report["reference_index"] == _reference(arch)["references"]["bfloat16"][CONTENT]["index"]
    targets = frame_counts(serve_options(CONTENT, "exact", arch), *GRID)
    assert kept_frame_counts(torch.tensor(report["index"]), GRID[0], GRID[1][0] * GRID[1][1]) == targets
    assert report["tokens_after"] == sum(targets)


@serving
def test_two_configs_in_one_batch_equal_each_alone(served):
    arch, llm = served
    frames = _frames(seed=3)  # a video of its own (vLLM's encoder cache)
    configs = [json.dumps({"method": "uniform", "retention": 0.25}), "visionzip_stop_r25"]
    together, reports = _generate(llm, [_video_request(frames, c) for c in configs])
    assert len(reports) == 2 and reports[0]["index"] != reports[1]["index"]
    for config, out in zip(configs, together):
        (alone,), _ = _generate(llm, [_video_request(frames, config)])
        assert out.prompt_token_ids == alone.prompt_token_ids
        assert out.outputs[0].token_ids == alone.outputs[0].token_ids


def test_from_pretrained_with_loading_info_returns_the_pair_patched():
    """`output_loading_info=True` (used above) returns `(model, info)` through stop-hf's from_pretrained too, the
    model patched when a stop_config is given."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    import stop_hf
    from stop_hf.tiny import tiny_checkpoint

    path = str(tiny_checkpoint("qwen2_5_vl"))
    model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        path, stop_config="visionzip_stop_r25", output_loading_info=True
    )
    assert stop_hf.is_patched(model) and not info["missing_keys"]
    model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, output_loading_info=True)
    assert not stop_hf.is_patched(model) and "stop_config" not in model.config.__dict__


@serving
@pytest.mark.skipif(
    os.environ.get("STOP_HF_VLLM_TP_QWEN35") != "1",
    reason="TP=2 start-up of Qwen3.5 (~2 min on 2 cores) is opt-in: STOP_HF_VLLM_TP_QWEN35=1",
)
def test_tensor_parallel_two_equals_one(served, tmp_path):
    """TP=2 shards the vision heads (signals all-reduced) and the Gated-DeltaNet heads: the same prompts (kept counts)
    and greedy ids as TP=1. Opt-in (CI runs TP=2 once, on Qwen2.5-VL)."""
    from test_vllm_plugin import MAX_TOKENS, TP_CONFIGS, _kept, serve_tensor_parallel_two
    from vllm import SamplingParams

    arch, llm = served
    configs = [(c, None) for c in TP_CONFIGS]
    llm.apply_model(lambda model: model.stop_hf_reports.clear())
    requests = [_video_request(_frames(1), c) for c in TP_CONFIGS]
    single = llm.generate(requests, SamplingParams(max_tokens=MAX_TOKENS, temperature=0), use_tqdm=False)
    reports = llm.apply_model(lambda model: list(model.stop_hf_reports))[0]
    double, ranks = serve_tensor_parallel_two(FIXTURE[arch], "qwen3_vl", configs, tmp_path, dtype="bfloat16")
    assert len(ranks) == 2 and all(_kept(rank) == _kept(reports) for rank in ranks)
    assert len(double) == len(single)
    for one, (prompt, ids) in zip(single, double):
        assert list(one.prompt_token_ids) == prompt
        assert list(one.outputs[0].token_ids) == ids
