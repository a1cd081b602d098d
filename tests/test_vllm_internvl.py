"""stop-hf's vLLM plugin on InternVL (HF format; vLLM serves it with its InternS1 class), issue 22.

InternVL's prompt has one `Frame{i}: <img>...</img>` group per frame, so each frame's count is fixed at prompt time
(shape-determined methods only), and the HF patch keeps original 1-D positions: the plugin serves them through vLLM's
per-request position bookkeeping. The tiny model's greedy ids are one repeated token, so the serving tests also
compare each step's log-probability with the HF path's (a wrong position moves them by ~2e-2; the match is ~1e-5).
"""

from __future__ import annotations

import os

import pytest
import torch
from test_vllm_plugin import MAX_TOKENS, PROMPT, _frames, _video_request, serving

from stop_hf.config import StopConfigError
from stop_hf.vllm.counts import (
    SERVED_ARCHITECTURES,
    frame_counts,
    kept_frame_counts,
    serve_options,
    target_count,
)

ARCH = "internvl"
SIDE = 16  # 448 px / 14 px patches / 2x2 pixel shuffle
FRAMES = 4
FIXED = [
    {"method": "uniform", "retention": 0.25},
    {"method": "random", "retention": 0.25},
    "visionzip_baseline_r25",
    "visionzip_stop_r25",
]
LOGPROB_ATOL = 1e-3


# ---------------------------------------------------------------------------------------------------- pure logic
def test_internvl_options_original_positions_per_frame_counts():
    assert SERVED_ARCHITECTURES["InternVLForConditionalGeneration"] == ARCH
    options = serve_options("visionzip_stop_r25", arch=ARCH)
    assert options.position_mode == "original"
    counts = frame_counts(options, FRAMES, (SIDE, SIDE))
    assert (
        len(counts) == FRAMES
        and sum(counts) == target_count(options, FRAMES, (SIDE, SIDE)) < FRAMES * SIDE**2
    )
    with pytest.raises(StopConfigError, match="position_mode='compact'"):
        serve_options({"method": "uniform", "retention": 0.5, "position_mode": "compact"}, arch=ARCH)
    with pytest.raises(StopConfigError, match=r"stop_config.method='holitom'.*per temporal patch"):
        serve_options("holitom_stop_r10", None, ARCH)
    # the exact rule splits a content-dependent method's budget per frame: round(4 * 256 * 0.1) = 102
    assert frame_counts(serve_options("holitom_stop_r10", "exact", ARCH), FRAMES, (SIDE, SIDE)) == [
        26,
        26,
        25,
        25,
    ]


def test_servable_internvl_checkpoint_round_trips_in_hf(tmp_path):
    """LLM heads 32 wide, InternViT weights under the hub's `vision_tower.encoder.*` names (not LLaVA's rename)."""
    from safetensors.torch import load_file
    from stop_hf.patches import architecture
    from transformers import AutoProcessor

    from stop_hf import compat
    from stop_hf.tiny import SERVABLE_HEAD_DIM, build_tiny_model, save_tiny_checkpoint

    path = save_tiny_checkpoint(tmp_path / ARCH, ARCH)
    names = set().union(*(load_file(f).keys() for f in path.glob("*.safetensors")))
    assert any(".vision_tower.encoder.layer." in f".{n}" for n in names)
    assert not any("vision_model." in n for n in names)
    loaded = compat.model_class(architecture(ARCH).model_class).from_pretrained(str(path))
    text = loaded.config.text_config
    assert (
        getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    ) == SERVABLE_HEAD_DIM
    expected = build_tiny_model(ARCH, servable=True).state_dict()
    state = loaded.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in expected)
    assert AutoProcessor.from_pretrained(str(path)).chat_template


# ---------------------------------------------------------------------------------------------------- serving
def _request(frames, config=None, rule=None) -> dict:
    return _video_request("<video>", frames, config, rule)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from stop_hf.tiny import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("vllm_internvl") / ARCH, ARCH)


@pytest.fixture(scope="module")
def llm(checkpoint):
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # reports read from the in-process model
    from vllm import LLM

    return LLM(
        model=str(checkpoint),
        enforce_eager=True,
        dtype="float32",
        max_model_len=4096,
        kv_cache_memory_bytes=1 << 28,
        limit_mm_per_prompt={"video": 2, "image": 0},
        additional_config={"stop_config": "none"},
        seed=0,
    )


def _generate(llm, requests):
    """(outputs, reports, per output the log-probability of each greedy token)."""
    from vllm import SamplingParams

    llm.apply_model(lambda model: model.stop_hf_reports.clear())
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, logprobs=0)
    outputs = llm.generate(requests, params, use_tqdm=False)
    reports = llm.apply_model(lambda model: list(model.stop_hf_reports))[0]
    logprobs = [
        [step[token].logprob for step, token in zip(out.outputs[0].logprobs, out.outputs[0].token_ids)]
        for out in outputs
    ]
    return outputs, reports, logprobs


_HF: dict = {}


def _hf(checkpoint, config, seed: int):
    """The HF patch on the same checkpoint, prompt and frames: greedy ids, their log-probabilities, kept indices (None
    when unpruned) and the prompt length."""
    key = (str(config), seed)
    if key not in _HF:
        from transformers import AutoProcessor

        import stop_hf

        model = stop_hf.from_pretrained(str(checkpoint), stop_config=config, dtype=torch.float32).eval()
        processor = AutoProcessor.from_pretrained(str(checkpoint))
        inputs = processor(
            text=[PROMPT.format(video="<video>")], videos=[list(_frames(seed))], return_tensors="pt"
        )
        with torch.no_grad():
            out = model.generate(
                **inputs,
                max_new_tokens=MAX_TOKENS,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
            )
        length = int(inputs["input_ids"].shape[1])
        ids = out.sequences[0, length:].tolist()
        logprobs = [float(s[0].log_softmax(-1)[t]) for s, t in zip(out.scores, ids)]
        report = stop_hf.last_prune_report(model) if stop_hf.is_patched(model) else []
        _HF[key] = (ids, logprobs, report[0]["index"].tolist() if report else None, length)
    return _HF[key]


@serving
def test_none_is_vllms_unpruned_prompt_and_hf_ids(llm, checkpoint):
    (out,), reports, (logprobs,) = _generate(llm, [_request(_frames(0), "none")])
    assert reports == []
    ids, hf_logprobs, _, length = _hf(checkpoint, "none", 0)
    assert len(out.prompt_token_ids) == length  # vLLM's own prompt: 4 groups of 256 placeholders
    assert list(out.outputs[0].token_ids) == ids
    assert logprobs == pytest.approx(hf_logprobs, abs=LOGPROB_ATOL)


@serving
@pytest.mark.parametrize("seed,config", list(enumerate(FIXED, start=1)), ids=str)
def test_fixed_count_methods_equal_the_hf_path(llm, checkpoint, seed, config):
    """Kept indices (representative order) and greedy ids equal the HF patch's: same signals (InternViT's last layer,
    CLS dropped, 2x2 block means, mu_s over 1025 keys), each frame's group holding its kept count, HF's original
    positions. A distinct video per config: vLLM's encoder cache would serve a repeated one without a report."""
    (out,), reports, (logprobs,) = _generate(llm, [_request(_frames(seed), config)])
    ids, hf_logprobs, hf_index, length = _hf(checkpoint, config, seed)
    (report,) = reports
    assert report["index"] == sorted(hf_index)
    assert (
        report["count_changed"] == 0 and report["tokens_after"] < report["tokens_before"] == FRAMES * SIDE**2
    )
    assert len(out.prompt_token_ids) == length - (report["tokens_before"] - report["tokens_after"])
    assert list(out.outputs[0].token_ids) == ids
    assert logprobs == pytest.approx(hf_logprobs, abs=LOGPROB_ATOL)


@serving
def test_two_configs_in_one_batch_keep_their_own_positions(llm):
    frames = _frames(seed=7)
    configs = [{"method": "uniform", "retention": 0.25}, "visionzip_stop_r25"]
    together, _, together_logprobs = _generate(llm, [_request(frames, c) for c in configs])
    for config, out, logprobs in zip(configs, together, together_logprobs):
        (alone,), _, (alone_logprobs,) = _generate(llm, [_request(frames, config)])
        assert out.prompt_token_ids == alone.prompt_token_ids
        assert out.outputs[0].token_ids == alone.outputs[0].token_ids
        assert logprobs == pytest.approx(alone_logprobs, abs=LOGPROB_ATOL)


@serving
@pytest.mark.parametrize("seed,config", [(11, "holitom_stop_r25"), (12, "fastvid_stop_r25")], ids=str)
def test_content_dependent_methods_per_frame(llm, checkpoint, seed, config):
    """The method's own selection equals the HF path's kept indices; the exact rule fits each frame's group to its
    share of the budget (trimming / adding what the per-frame counts say); ids equal HF's when nothing changed."""
    (out,), reports, (logprobs,) = _generate(llm, [_request(_frames(seed), config, "exact")])
    ids, hf_logprobs, hf_index, length = _hf(checkpoint, config, seed)
    (report,) = reports
    assert report["reference_index"] == hf_index
    targets = frame_counts(serve_options(config, "exact", ARCH), FRAMES, (SIDE, SIDE))
    assert kept_frame_counts(torch.tensor(report["index"]), FRAMES, SIDE**2) == targets
    diff = [t - c for t, c in zip(targets, kept_frame_counts(torch.tensor(hf_index), FRAMES, SIDE**2))]
    assert (report["tokens_trimmed"], report["tokens_added"]) == (
        sum(-d for d in diff if d < 0),
        sum(d for d in diff if d > 0),
    )
    assert len(out.prompt_token_ids) == length - (report["tokens_before"] - report["tokens_after"])
    if report["tokens_trimmed"] == report["tokens_added"] == 0:
        assert list(out.outputs[0].token_ids) == ids
        assert logprobs == pytest.approx(hf_logprobs, abs=LOGPROB_ATOL)


@serving
def test_content_dependent_method_without_the_rule_and_compact_are_refused_per_request(llm):
    with pytest.raises(Exception, match=r"stop_config.method='holitom'.*stop_count_rule"):
        llm.generate([_request(_frames(8), "holitom_stop_r10")], use_tqdm=False)
    compact = {"method": "uniform", "retention": 0.5, "position_mode": "compact"}
    with pytest.raises(Exception, match="position_mode='compact'"):
        llm.generate([_request(_frames(8), compact)], use_tqdm=False)
    (out,), _, _ = _generate(llm, [_request(_frames(8), {"method": "uniform", "retention": 0.5})])
    assert out.outputs[0].token_ids  # the engine still serves


@serving
def test_position_bookkeeping_only_with_a_stop_config(checkpoint):
    """Start-up: a stop config turns on vLLM's per-request positions (an M-RoPE section on the top-level config only:
    the LLM's rope stays 1-D); without one the engine config is vLLM's own."""
    from vllm.engine.arg_utils import EngineArgs

    def config(**kwargs):
        args = EngineArgs(
            model=str(checkpoint), enforce_eager=True, dtype="float32", max_model_len=4096, **kwargs
        )
        return args.create_engine_config()

    plain = config()
    assert not plain.model_config.uses_mrope and not hasattr(plain.model_config.hf_config, "mrope_section")
    pruned = config(additional_config={"stop_config": "visionzip_stop_r25"})
    assert pruned.model_config.uses_mrope and pruned.model_config.mrope_num_dims == 3
    assert "mrope_section" not in (pruned.model_config.hf_config.text_config.rope_parameters or {})
    with pytest.raises(StopConfigError, match="position_mode='compact'"):
        config(
            additional_config={
                "stop_config": {"method": "uniform", "retention": 0.5, "position_mode": "compact"}
            }
        )
