"""Qwen3-VL-MoE in stop-hf's vLLM plugin (issue 22): the tiny checkpoint in the hub layout that HF and vLLM both
load, and the served model exact against the HF path. The serving tests share one engine (module scope) and need
vLLM (scripts/ci_vllm.sh runs them in its venv); they skip otherwise. Helpers come from tests/test_vllm_plugin.py.
"""

from __future__ import annotations

import gc
import os
from types import SimpleNamespace

import pytest
import torch
from test_vllm_plugin import (
    _ENGINES,
    FIXED,
    _engine,
    _frames,
    _generate,
    _hf,
    _hf_prompt_length,
    _request,
    serving,
)

from stop_hf.config import StopConfigError
from stop_hf.vllm.counts import SERVED_ARCHITECTURES, frame_counts, kept_frame_counts, serve_options

ARCH = "qwen3_vl_moe"
VLLM_CLASS = "Qwen3VLMoeForConditionalGeneration"


# ---------------------------------------------------------------------------------------------------- no vLLM needed
def test_servable_moe_checkpoint_is_in_the_hub_layout_and_round_trips_in_hf(tmp_path):
    """Fused experts stored as the hub's Qwen3-VL-30B-A3B stores them (gate_up (E, H, 2I), down (E, I, H)), the
    config's `norm_topk_prob: true` and `num_experts`; HF's `from_pretrained` gives back the model that was saved."""
    import json

    from safetensors.torch import load_file
    from stop_hf.patches import architecture

    from stop_hf import compat
    from stop_hf.tiny import build_tiny_model, save_tiny_checkpoint

    path = save_tiny_checkpoint(tmp_path / ARCH, ARCH)
    text = json.loads((path / "config.json").read_text())["text_config"]
    assert text["norm_topk_prob"] is True and "num_local_experts" not in text
    experts, hidden, inter = text["num_experts"], text["hidden_size"], text["moe_intermediate_size"]
    assert inter not in (hidden, hidden // 2)  # no square expert matrix: transformers transposes by shape
    stored = {}
    for file in path.glob("*.safetensors"):
        stored.update(load_file(file))
    expected = build_tiny_model(ARCH, servable=True).state_dict()
    fused = [name for name in stored if ".mlp.experts." in name]
    assert fused and len(fused) == 2 * text["num_hidden_layers"]
    for name in fused:
        hub_shape = (
            (experts, hidden, 2 * inter) if name.endswith("gate_up_proj") else (experts, inter, hidden)
        )
        assert tuple(stored[name].shape) == hub_shape
        assert torch.equal(stored[name], expected[name].transpose(1, 2))
    loaded = compat.model_class(architecture(ARCH).model_class).from_pretrained(str(path))
    assert loaded.config.text_config.num_experts == experts
    state = loaded.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)


def _engine_config(stop_config):
    multimodal = SimpleNamespace(
        mm_encoder_tp_mode="weights", video_pruning_rate=None, mm_processor_kwargs=None
    )
    return SimpleNamespace(
        additional_config={"stop_config": stop_config},
        model_config=SimpleNamespace(architectures=[VLLM_CLASS], multimodal_config=multimodal),
        compilation_config=SimpleNamespace(compile_mm_encoder=False, cudagraph_mm_encoder=False),
        parallel_config=SimpleNamespace(pipeline_parallel_size=1),
    )


def test_moe_is_served_with_the_qwen3_rules():
    from stop_hf.vllm import MODEL_CLASSES, check_engine_config

    assert SERVED_ARCHITECTURES[VLLM_CLASS] == ARCH and VLLM_CLASS in MODEL_CLASSES
    config = _engine_config("visionzip_stop_r25")
    check_engine_config(config)  # accepted; the validated default reaches the processor
    assert "stop_config" in config.model_config.multimodal_config.mm_processor_kwargs
    with pytest.raises(StopConfigError, match="retention"):
        check_engine_config(_engine_config({"method": "uniform", "retention": 0}))
    options = serve_options("visionzip_stop_r25", arch=ARCH)
    assert options.position_mode == "original"
    assert frame_counts(options, 2, (12, 12)) == frame_counts(
        serve_options("visionzip_stop_r25", arch="qwen3_vl"), 2, (12, 12)
    )
    # one timestamped group per temporal patch, as dense: content-dependent methods need the exact rule, which
    # splits their budget per temporal patch
    with pytest.raises(StopConfigError, match="split per temporal patch"):
        serve_options("holitom_stop_r10", None, ARCH)
    holitom = serve_options("holitom_stop_r10", "exact", ARCH)
    assert frame_counts(holitom, 2, (12, 12)) == frame_counts(
        serve_options("holitom_stop_r10", "exact", "qwen3_vl"), 2, (12, 12)
    )


# ---------------------------------------------------------------------------------------------------- serving
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from stop_hf.tiny import save_tiny_checkpoint

    return {ARCH: save_tiny_checkpoint(tmp_path_factory.mktemp("vllm_moe") / ARCH, ARCH)}


@pytest.fixture(scope="module")
def llm(checkpoints):
    engine = _engine(ARCH, checkpoints)
    yield engine
    _ENGINES.pop(ARCH, None)  # this module's engine only: freed before the next suite
    del engine
    gc.collect()


def _hf_first_logprobs(checkpoint) -> torch.Tensor:
    """(V,) HF's next-token log-probabilities after the unpruned prompt (transformers' own model, no patch)."""
    from stop_hf.patches import architecture
    from test_vllm_plugin import PLACEHOLDER, PROMPT, _metadata
    from transformers import AutoProcessor
    from transformers.video_utils import VideoMetadata

    from stop_hf import compat

    model = compat.model_class(architecture(ARCH).model_class).from_pretrained(str(checkpoint)).eval()
    processor = AutoProcessor.from_pretrained(str(checkpoint))
    meta = {k: v for k, v in _metadata().items() if k != "do_sample_frames"}
    inputs = processor(
        text=[PROMPT.format(video=PLACEHOLDER[ARCH])],
        videos=[list(_frames(seed=5))],
        video_metadata=[VideoMetadata(**meta)],
        do_sample_frames=False,
        return_tensors="pt",
    )
    with torch.no_grad():
        return model(**inputs).logits[0, -1].float().log_softmax(-1)


@serving
def test_moe_checkpoint_loads_in_vllm_as_the_plugins_class(llm, checkpoints):
    """The plugin's class serves it with every expert, and its next-token log-probabilities equal HF's: the fused
    experts in the hub layout were read as HF reads them (a wrong transpose or gate/up order would differ; vLLM's
    CPU backend prepacks the expert weights, so they are compared through the outputs)."""
    from vllm import SamplingParams

    name, experts = llm.apply_model(lambda model: (type(model).__name__, model.num_logical_experts))[0]
    assert name == "StopQwen3VLMoeForConditionalGeneration"
    assert experts == llm.apply_model(lambda model: model.config.text_config.num_experts)[0] > 1
    params = SamplingParams(max_tokens=1, temperature=0, logprobs=5)
    (out,) = llm.generate([_request(ARCH, _frames(seed=5))], params, use_tqdm=False)
    served = {token: entry.logprob for token, entry in out.outputs[0].logprobs[0].items()}
    hf = _hf_first_logprobs(checkpoints[ARCH])
    assert len(served) >= 5
    for token, logprob in served.items():
        assert abs(logprob - float(hf[token])) < 1e-3, (token, logprob, float(hf[token]))
    assert max(served, key=served.get) == int(hf.argmax())


@serving
@pytest.mark.parametrize("config", ["none", {"method": "uniform", "retention": 1.0}], ids=str)
def test_moe_unpruned_is_vllms_prompt_and_hf_ids(config, llm, checkpoints):
    """`none` / retention 1.0: vLLM's own Qwen3-VL prompt (timestamped groups, full counts) and the HF greedy ids."""
    (out,), reports = _generate(llm, [_request(ARCH, _frames(), config)])
    assert reports == []
    assert len(out.prompt_token_ids) == _hf_prompt_length(ARCH, checkpoints)
    hf_ids, hf_index = _hf(ARCH, checkpoints, "none")
    assert hf_index is None
    assert list(out.outputs[0].token_ids) == hf_ids


@serving
@pytest.mark.parametrize("config", FIXED, ids=str)
def test_moe_fixed_count_methods_equal_the_hf_path(config, llm, checkpoints):
    """Kept indices (representative order) and greedy ids equal the HF patch's on the MoE model."""
    (out,), reports = _generate(llm, [_request(ARCH, _frames(), config)])
    hf_ids, hf_index = _hf(ARCH, checkpoints, config)
    (report,) = reports
    assert report["index"] == sorted(hf_index)
    assert report["count_changed"] == 0 and report["tokens_after"] < report["tokens_before"]
    unpruned = _hf_prompt_length(ARCH, checkpoints)
    assert len(out.prompt_token_ids) == unpruned - (report["tokens_before"] - report["tokens_after"])
    assert list(out.outputs[0].token_ids) == hf_ids


@serving
def test_moe_two_configs_in_one_batch_equal_each_alone(llm):
    frames = _frames(seed=3)  # a video of its own (vLLM's encoder cache)
    configs = [{"method": "uniform", "retention": 0.25}, "visionzip_stop_r25"]
    together, reports = _generate(llm, [_request(ARCH, frames, c) for c in configs])
    assert len(reports) == 2 and reports[0]["index"] != reports[1]["index"]
    for config, out in zip(configs, together):
        (alone,), _ = _generate(llm, [_request(ARCH, frames, config)])
        assert out.prompt_token_ids == alone.prompt_token_ids
        assert out.outputs[0].token_ids == alone.outputs[0].token_ids
    (full,), _ = _generate(llm, [_request(ARCH, frames, "none")])
    assert len(together[0].prompt_token_ids) < len(full.prompt_token_ids)


@serving
def test_moe_content_dependent_method_per_temporal_patch(llm, checkpoints):
    """Without the exact rule the request is refused (the engine serves on); with it, the method's own selection
    equals the HF path's kept indices and each temporal patch holds its share of the budget."""
    with pytest.raises(Exception, match="stop_count_rule"):
        llm.generate([_request(ARCH, _frames(seed=4), "holitom_stop_r25")], use_tqdm=False)
    (out,), reports = _generate(llm, [_request(ARCH, _frames(), "holitom_stop_r25", "exact")])
    assert out.outputs[0].token_ids  # the engine serves on
    (report,) = reports
    _, hf_index = _hf(ARCH, checkpoints, "holitom_stop_r25")
    assert report["reference_index"] == hf_index
    targets = frame_counts(serve_options("holitom_stop_r25", "exact", ARCH), 2, (10, 10))
    assert kept_frame_counts(torch.tensor(report["index"]), 2, 100) == targets


@serving
@pytest.mark.skipif(
    os.environ.get("STOP_HF_VLLM_TP_MOE") != "1",
    reason="TP=2 start-up of the MoE model (~2 min on 2 cores) is opt-in: STOP_HF_VLLM_TP_MOE=1",
)
def test_moe_tensor_parallel_two_equals_one(llm, checkpoints, tmp_path):
    """TP=2 shards the vision heads (signals all-reduced, as the dense model) and the experts' intermediate width:
    both ranks keep the same tokens and the ids equal TP=1's. Opt-in (CI runs TP=2 once, on Qwen2.5-VL)."""
    from test_vllm_plugin import MAX_TOKENS, TP_CONFIGS, _kept, serve_tensor_parallel_two
    from vllm import SamplingParams

    configs = [(c, None) for c in TP_CONFIGS]
    llm.apply_model(lambda model: model.stop_hf_reports.clear())
    requests = [_request(ARCH, _frames(1), c) for c in TP_CONFIGS]
    single = llm.generate(requests, SamplingParams(max_tokens=MAX_TOKENS, temperature=0), use_tqdm=False)
    reports = llm.apply_model(lambda model: list(model.stop_hf_reports))[0]
    double, ranks = serve_tensor_parallel_two(checkpoints[ARCH], ARCH, configs, tmp_path)
    assert len(ranks) == 2 and all(_kept(rank) == _kept(reports) for rank in ranks)
    assert len(double) == len(single)
    for one, (prompt, ids) in zip(single, double):
        assert list(one.prompt_token_ids) == prompt
        assert list(one.outputs[0].token_ids) == ids
