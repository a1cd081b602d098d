"""stop-hf's vLLM plugin, issue 22: content-dependent methods token by token against the HF path, and FastVID's SigLIP
MAP head on LLaVA-OneVision.

- FastVID, FlashVID, HoliTom and PruneVid (each +- SToP, `stop_count_rule: exact`) on tiny Qwen2.5-VL, Qwen2-VL and
  LLaVA-OV: each report's `reference_index` (the method's own selection) equals the HF path's kept indices, `index` is
  the exact rule applied to it, and the greedy ids equal HF's whenever the rule changed nothing.
- LLaVA-OV's FastVID reads SigLIP's MAP head from `stop_config.siglip_head` (a random head here), as the HF patch:
  pooled output as the global feature, probe attention as the saliency (`saliency_source: map_head`); a missing head
  fails that request (or the engine's start-up) with the HF path's message.

The engines are test_vllm_plugin's (one per architecture, shared when both files run in one session); serving tests
skip without vLLM, the pure ones run everywhere.
"""

from __future__ import annotations

import collections
import threading

import pytest
import test_vllm_plugin as plugin
import torch

from stop_hf.config import StopConfig, StopConfigError
from stop_hf.siglip_head import (
    SiglipHeadError,
    load_siglip_head,
    map_head_use,
    read_head_tensors,
    save_head,
    save_random_siglip_head,
)
from stop_hf.vllm.counts import serve_options, target_count
from stop_hf.vllm.siglip import ServedSiglipHeadError, check_map_head, head_signals, served_head

serving = plugin.serving
ARCHS = ["qwen2_5_vl", "qwen2_vl", "llava_onevision"]
#: every content-dependent method +- SToP (PruneVid has no SToP variant), at 25% retention
CONTENT = [
    "fastvid_baseline_r25",
    "fastvid_stop_r25",
    "flashvid_baseline_r25",
    "flashvid_stop_r25",
    "holitom_baseline_r25",
    "holitom_stop_r25",
    "prunevid_baseline_r25",
]


def _head_folder(folder, hidden: int = 64, intermediate: int = 128):
    """A random MAP head of the tiny tower's width, its probe projections scaled up so that the probe attention
    ranks patches decisively (the tiny tower's hidden states are close: a flat attention would rank by noise)."""
    save_random_siglip_head(folder, hidden, intermediate, seed=0)
    tensors = read_head_tensors(folder / "model.safetensors")
    tensors["head.attention.in_proj_weight"] = tensors["head.attention.in_proj_weight"] * 40
    save_head(tensors, folder / "model.safetensors", source="random, peaked")
    return str(folder)


@pytest.fixture(scope="module")
def siglip_head(tmp_path_factory):
    return _head_folder(tmp_path_factory.mktemp("vllm_siglip_head"))


class _Checkpoints(dict):
    """Tiny checkpoints written on first use (only the architectures a run needs)."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, arch):
        from stop_hf.tiny import save_tiny_checkpoint

        self[arch] = save_tiny_checkpoint(self.root / arch, arch)
        return self[arch]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return _Checkpoints(tmp_path_factory.mktemp("vllm_llava_tiny"))


def _served(arch: str, checkpoints):
    """The shared engine of `arch` and {arch: the checkpoint it serves} (the HF path loads the same one)."""
    llm = plugin._engine(arch, checkpoints)
    return llm, {arch: llm.llm_engine.model_config.model}


def _config(name: str, arch: str, siglip_head: str, **fields) -> dict:
    """A preset as a dict; LLaVA-OV's FastVID reads the MAP head from the random head. FlashVID+SToP picks distinct
    tokens: on these tiny towers SToP's offset leaves fewer positive weights than picks, and the reference's
    repeated picks are then decided by float rounding (stop_hf/pruners/flashvid.py, `distinct_picks`); measured:
    relative noise of 1e-6 on HF's own signals changes them, while vLLM's SigLIP/ViT kernels differ from HF's in the
    last bits."""
    config = StopConfig.from_any(name).to_dict()
    if arch == "llava_onevision" and config["method"] == "fastvid":
        config["siglip_head"] = siglip_head
    if config["method"] == "flashvid" and config["sink"]:
        config["params"] = {**config["params"], "distinct_picks": True}
    return {**config, **fields}


def _check_against_hf(report, hf_index, hf_ids, out, options, arch) -> None:
    """reference_index = HF's kept indices (the pruner's order); index = the exact rule applied to it."""
    assert report["reference_index"] == hf_index
    frames, grid = (plugin.FRAMES // 2, (12, 12)) if arch.startswith("qwen") else (plugin.FRAMES, (14, 14))
    index, reference = report["index"], report["reference_index"]
    assert len(index) == report["tokens_after"] == target_count(options, frames, grid)
    assert report["count_changed"] == len(index) - len(reference)
    served, ref = collections.Counter(index), collections.Counter(reference)
    if report["count_changed"] <= 0:  # trimmed by the method's own score: a subset
        assert not served - ref
    if report["count_changed"] >= 0:  # topped up with the next-ranked tokens: a superset
        assert not ref - served
    if report["count_changed"] == 0:
        assert list(out.outputs[0].token_ids) == hf_ids


# ---------------------------------------------------------------------------------------------------- pure


def test_head_use_follows_the_hf_capture_plan():
    needs = {"attention", "global_features"}
    assert map_head_use(StopConfig.from_any("fastvid_stop_r25"), needs) == (True, False)
    assert map_head_use(StopConfig.from_any("fastvid_original_r25"), needs) == (True, True)
    mean = StopConfig(method="fastvid", retention=0.25, global_feature="mean", saliency_source="map_head")
    assert map_head_use(mean, needs) == (False, True)
    assert map_head_use(StopConfig.from_any("visionzip_stop_r25"), {"attention", "keys"}) == (False, False)


def test_served_head_is_loaded_once_and_equals_the_hf_head(tmp_path):
    from types import SimpleNamespace

    folder = _head_folder(tmp_path / "head")
    vision = SimpleNamespace(num_attention_heads=4, layer_norm_eps=1e-6, hidden_size=64)
    config = StopConfig(method="fastvid", retention=0.25, siglip_head=folder)
    tower = torch.zeros(1, dtype=torch.bfloat16)
    heads = []
    threads = [
        threading.Thread(target=lambda: heads.append(served_head(config, vision, tower))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(h) for h in heads}) == 1  # one head per source, shared by every thread
    assert heads[0].probe.dtype == torch.float32  # signal_dtype float32, as the HF path
    model_dtype = StopConfig(method="fastvid", retention=0.25, siglip_head=folder, signal_dtype="model")
    assert served_head(model_dtype, vision, tower).probe.dtype == torch.bfloat16
    reference = load_siglip_head(folder, num_heads=4, hidden_size=64)
    hidden = torch.randn(3, 10, 64)
    pooled, probe = reference(hidden)
    features, attention = head_signals(heads[0], hidden, head_global=True)
    assert torch.equal(features, pooled) and torch.equal(attention, probe)
    mean, _ = head_signals(heads[0], hidden, head_global=False)
    assert torch.equal(mean, hidden.mean(dim=1))
    assert head_signals(None, hidden, head_global=False)[1] is None


def test_check_map_head_validates_before_encoding(tmp_path):
    from types import SimpleNamespace

    vision = SimpleNamespace(num_attention_heads=4, layer_norm_eps=1e-6, hidden_size=64)
    missing = StopConfig(method="fastvid", retention=0.25, siglip_head=str(tmp_path / "absent"))
    with pytest.raises(SiglipHeadError, match="does not exist") as start_up:
        check_map_head(missing, "llava_onevision", vision)
    with pytest.raises(ServedSiglipHeadError) as request:  # a ValueError too: vLLM fails that request only
        check_map_head(missing, "llava_onevision", vision, per_request=True)
    assert str(request.value) == str(start_up.value) and isinstance(request.value, ValueError)
    wrong = SimpleNamespace(num_attention_heads=4, layer_norm_eps=1e-6, hidden_size=32)
    folder = _head_folder(tmp_path / "head")
    with pytest.raises(SiglipHeadError, match="hidden size 64"):
        check_map_head(
            StopConfig(method="fastvid", retention=0.25, siglip_head=folder), "llava_onevision", wrong
        )
    check_map_head(
        StopConfig(method="fastvid", retention=0.25, global_feature="mean"), "llava_onevision", vision
    )
    check_map_head(StopConfig.from_any("fastvid_stop_r25"), "qwen2_5_vl", None)  # auto: the frame mean there
    for field in ("global_feature", "saliency_source"):
        explicit = StopConfig(method="fastvid", retention=0.25, **{field: "map_head"})
        with pytest.raises(StopConfigError, match=f"{field}='map_head' is not available on qwen2_vl"):
            check_map_head(explicit, "qwen2_vl", None)


# ---------------------------------------------------------------------------------------------------- serving


@serving
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", CONTENT)
def test_content_dependent_methods_equal_the_hf_path(arch, name, checkpoints, siglip_head):
    llm, paths = _served(arch, checkpoints)
    config = _config(name, arch, siglip_head)
    (out,), reports = plugin._generate(llm, [plugin._request(arch, plugin._frames(), config, "exact")])
    (report,) = reports
    hf_ids, hf_index = plugin._hf(arch, paths, config)
    options = serve_options(config, "exact", arch)
    _check_against_hf(report, hf_index, hf_ids, out, options, arch)
    print(
        f"\n{arch} {name}: reference {len(report['reference_index'])} served {report['tokens_after']} "
        f"changed {report['count_changed']}"
    )


@serving
def test_original_fastvid_probe_saliency_equals_the_hf_path(checkpoints, siglip_head):
    """The original FastVID's signals (MAP-head probe attention and pooled output) at LLaVA-OV's compact positions
    (vLLM numbers a 1-D prompt sequentially), batched with an encoder-attention method: each video its own signals."""
    arch = "llava_onevision"
    llm, paths = _served(arch, checkpoints)
    configs = [
        _config("fastvid_original_r25", arch, siglip_head, position_mode="compact"),
        _config("visionzip_baseline_r10", arch, siglip_head),
    ]
    frames = plugin._frames()
    outs, reports = plugin._generate(llm, [plugin._request(arch, frames, c, "exact") for c in configs])
    by_method = {r["method"]: r for r in reports}
    assert sorted(by_method) == ["fastvid", "visionzip"]
    for config, out in zip(configs, outs):
        report = by_method[config["method"]]
        hf_ids, hf_index = plugin._hf(arch, paths, config)
        _check_against_hf(report, hf_index, hf_ids, out, serve_options(config, "exact", arch), arch)
    # the probe attention, not the encoder's, decided the FastVID selection
    encoder = plugin._hf(arch, paths, {**configs[0], "saliency_source": "encoder"})[1]
    assert by_method["fastvid"]["reference_index"] != encoder


@serving
def test_fastvid_segments_follow_the_map_head_as_in_hf(checkpoints, siglip_head):
    """With 4 frames < c = 8 every frame is its own DySeg segment and the global feature decides nothing; with c = 2,
    tau = 0.2 the cuts follow it: the MAP head's pooled output and the frame mean (`global_feature: mean`) segment
    this video differently in HF, and vLLM's selection equals HF's for each."""
    arch = "llava_onevision"
    llm, paths = _served(arch, checkpoints)
    selections = {}
    for feature in ("map_head", "mean"):
        config = _config("fastvid_stop_r25", arch, siglip_head, global_feature=feature)
        config["params"] = {**config["params"], "c": 2, "tau": 0.2}
        (out,), (report,) = plugin._generate(llm, [plugin._request(arch, plugin._frames(), config, "exact")])
        hf_ids, hf_index = plugin._hf(arch, paths, config)
        _check_against_hf(report, hf_index, hf_ids, out, serve_options(config, "exact", arch), arch)
        selections[feature] = hf_index
    assert (
        selections["map_head"] != selections["mean"]
    )  # the head, not the mean, decided the served selection


@serving
def test_missing_head_fails_that_request_only_with_the_hf_message(checkpoints, tmp_path):
    import stop_hf

    arch = "llava_onevision"
    llm, paths = _served(arch, checkpoints)
    config = {**StopConfig.from_any("fastvid_stop_r25").to_dict(), "siglip_head": str(tmp_path / "absent")}
    with pytest.raises(SiglipHeadError) as hf:
        stop_hf.from_pretrained(paths[arch], stop_config=config, dtype=torch.float32)
    with pytest.raises(SiglipHeadError) as served:
        llm.generate([plugin._request(arch, plugin._frames(4), config, "exact")], use_tqdm=False)
    assert str(served.value) == str(hf.value)
    (out,), reports = plugin._generate(llm, [plugin._request(arch, plugin._frames(4), "visionzip_stop_r10")])
    assert out.outputs[0].token_ids and reports[0]["method"] == "visionzip"  # the engine serves on


@serving
def test_start_up_reads_the_engine_default_head(checkpoints, siglip_head, tmp_path):
    """An engine-wide FastVID config loads its head in `create_engine_config`, before any weight: a missing head fails
    there with the HF path's message; an explicit map_head on a tower without one is refused naming the field."""
    from vllm.engine.arg_utils import EngineArgs

    def engine_config(arch, stop_config):
        return EngineArgs(
            model=str(checkpoints[arch]),
            enforce_eager=True,
            dtype="float32",
            max_model_len=4096,
            additional_config={"stop_config": stop_config, "stop_count_rule": "exact"},
        ).create_engine_config()

    fastvid = StopConfig.from_any("fastvid_stop_r25").to_dict()
    with pytest.raises(SiglipHeadError, match="does not exist") as missing:
        engine_config("llava_onevision", {**fastvid, "siglip_head": str(tmp_path / "absent")})
    assert "stop_config.siglip_head=" in str(missing.value)
    ok = engine_config("llava_onevision", {**fastvid, "siglip_head": siglip_head})
    assert "stop_config" in ok.model_config.multimodal_config.mm_processor_kwargs
    with pytest.raises(StopConfigError, match="global_feature='map_head'"):
        engine_config("qwen2_5_vl", {**fastvid, "global_feature": "map_head"})


@serving
def test_explicit_map_head_on_qwen_fails_that_request(checkpoints):
    llm, _ = _served("qwen2_5_vl", checkpoints)
    config = {**StopConfig.from_any("fastvid_stop_r25").to_dict(), "saliency_source": "map_head"}
    with pytest.raises(ValueError, match="saliency_source='map_head' is not available"):
        llm.generate([plugin._request("qwen2_5_vl", plugin._frames(4), config, "exact")], use_tqdm=False)
