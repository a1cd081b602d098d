"""The efficiency benchmark: exact FLOPs vs FlopCounterMode, the FastV formula, and a tiny end-to-end run."""

from __future__ import annotations

import json

import pytest
import torch

from stop_hf.bench import (
    SHAPES,
    ArchShape,
    BenchSettings,
    LLMShape,
    build_config,
    build_model,
    exact_prefill_flops,
    fastv_flops,
    run_bench,
)

SMALL_LLM = {"hidden": 64, "heads": 8, "kv_heads": 2, "mlp": 176, "vocab": 1024}
SMALL_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2}


def test_fastv_formula_by_hand():
    s = LLMShape(hidden=2, mlp=3, layers=5)
    n = 7
    assert fastv_flops(n, s) == 5 * (4 * 7 * 4 + 2 * 49 * 2 + 2 * 7 * 2 * 3)


def test_exact_counts_gqa_and_swiglu():
    mha = LLMShape(hidden=64, heads=8, kv_heads=8, mlp=128, layers=1, vocab=10)
    gqa = LLMShape(hidden=64, heads=8, kv_heads=2, mlp=128, layers=1, vocab=10)
    n = 16
    # GQA shrinks k and v from d x d to d x d/4 each: 2 * n * d * (2 * d - 2 * d / 4)
    assert exact_prefill_flops(n, mha) - exact_prefill_flops(n, gqa) == 2 * n * 64 * (128 - 32)
    # SwiGLU has 3 MLP matrices where the formula counts 2 (and at full 7B shape the formula undercounts)
    assert exact_prefill_flops(3137, LLMShape()) > fastv_flops(3137, LLMShape())


@pytest.mark.parametrize("arch", ["llava_onevision", "qwen2_5_vl", "qwen3_vl", "internvl"])
def test_exact_flops_match_flop_counter(arch):
    from stop_hf.patches import adapter_for
    from torch.utils.flop_counter import FlopCounterMode

    s = LLMShape(**SMALL_LLM, layers=2)
    vision = {"layers": 1, **SMALL_VISION}
    shape = ArchShape(arch, s, vision, SHAPES[arch].image_size, SHAPES[arch].tokens_per_frame)
    config = build_config(arch, 1, 2, shape)
    # eager attention: the CPU SDPA kernel with a mask is not seen by FlopCounterMode (misses exactly the n^2 term)
    config.text_config._attn_implementation = "eager"
    model = build_model(config, "cpu", torch.float32)
    lm = adapter_for(model).language_model(model)
    n = 57
    embeds = torch.randn(1, n, s.hidden)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        hidden = lm(inputs_embeds=embeds, use_cache=False).last_hidden_state
        model.lm_head(hidden[:, -1:])
    assert counter.get_total_flops() == exact_prefill_flops(n, s)


def test_bench_smoke_writes_outputs(tmp_path):
    settings = BenchSettings(
        frames=2,
        retentions=(0.25,),
        methods=("visionzip",),
        sinks=(False, True),
        llm_layers=1,
        warmup=0,
        decode_tokens=1,
        out=str(tmp_path),
        shape_override={"llm": SMALL_LLM, "vision": SMALL_VISION},
    )
    result = run_bench(settings)
    for name in ("results.json", "table.md", "speedup.png"):
        assert (tmp_path / name).stat().st_size > 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["extrapolated"] and data["versions"]["torch"] == torch.__version__
    methods = [r["method"] for r in result["rows"]]
    assert methods == ["unpruned", "oracle", "visionzip", "visionzip"]
    for row in result["rows"][1:]:
        assert abs(row["achieved_retention"] - 0.25) < 0.02
        assert row["prefill_full_s"] > 0
    table = (tmp_path / "table.md").read_text()
    assert "| visionzip | on |" in table
    assert "- visionzip +SToP @ 0.25: " in table and "- visionzip baseline @ 0.25: " in table


def _row(method, sink, retention, tokens_after, layer_s, overhead_s=0.0):
    return {
        "method": method,
        "sink": sink,
        "retention": retention,
        "tokens_before": 1000,
        "tokens_after": tokens_after,
        "layer_s": layer_s,
        "signal_s": overhead_s,
        "prune_s": 0.0,
    }


def test_target_checks_name_each_miss_and_its_cause():
    from stop_hf.bench import _derive, target_checks

    rows = [
        _row("unpruned", False, 1.0, 1000, 10.0),
        _row("oracle", False, 0.1, 100, 1.0),
        _row("visionzip", True, 0.1, 100, 1.0, overhead_s=0.5),  # 0.5 s of 280 s: meets everything
        _row("fastvid", False, 0.1, 100, 1.5),  # same tokens, slower layers: timing noise
        _row("holitom", True, 0.1, 60, 1.0, overhead_s=5.0),  # 1.8% overhead, 4 pp under budget
        _row("flashvid", False, 0.1, 128, 1.5),  # more tokens than the oracle by its budget rule
    ]
    _derive(rows, LLMShape(layers=28), layers=2, n_text=10)
    lines = target_checks({"rows": rows})
    by_method = {line.split()[1]: line for line in lines if line.startswith("- ")}
    assert by_method["visionzip"].endswith("meets all three")
    assert "speedup 0.67x the oracle's" in by_method["fastvid"] and "timing noise" in by_method["fastvid"]
    holitom = by_method["holitom"]
    assert "overhead 1.79%" in holitom and "achieved retention 0.060" in holitom and "STTP" in holitom
    assert "speedup" in holitom and "selection overhead" in holitom
    flashvid = by_method["flashvid"]
    assert "keeping 128 tokens vs the oracle's 100" in flashvid and "selection overhead" not in flashvid


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/clear_refs"), reason="Linux /proc only")
def test_peak_memory_is_per_row():
    from stop_hf.bench import _peak_memory_mb, _reset_peak_memory

    big = torch.ones(64 * 2**20)  # 256 MiB
    big.add_(1)
    before = _peak_memory_mb("cpu")
    del big
    _reset_peak_memory("cpu")
    assert _peak_memory_mb("cpu") < before - 128


def _small_model(arch: str, llm_layers: int = 2):
    from stop_hf.bench import build_inputs

    shape = ArchShape(
        arch,
        LLMShape(**SMALL_LLM, layers=llm_layers),
        {"layers": 1, **SMALL_VISION},
        SHAPES[arch].image_size,
        SHAPES[arch].tokens_per_frame,
    )
    model = build_model(build_config(arch, 1, llm_layers, shape), "cpu", torch.float32)
    return model, build_inputs(model, 2, shape.image_size, "cpu", torch.float32)


@pytest.mark.parametrize(
    ("arch", "method"), [("llava_onevision", None), ("qwen2_5_vl", None), ("llava_onevision", "visionzip")]
)
def test_bench_times_the_prefill_layers_through_hooks_only(arch, method, monkeypatch):
    """No module ever gets a `forward` instance attribute during a bench run, the per-layer times are exactly one
    per decoder layer of the first (prefill) language-model call, and every bench hook is gone afterwards."""
    from stop_hf.patches import adapter_for

    import stop_hf
    from stop_hf import bench
    from stop_hf.config import StopConfig

    model, inputs = _small_model(arch)
    if method is not None:
        stop_hf.patch(model, StopConfig(method=method, retention=0.25))
    lm = adapter_for(model).language_model(model)
    hooked = [lm, *lm.layers]
    hooks_before = [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in hooked]
    timers, replaced = [], set()

    class RecordingTimer(bench._LayerTimer):
        """Records, at every decoder-layer call, its query length and whether the timer is armed."""

        def __enter__(self):
            super().__enter__()
            timers.append(self)
            self.layer_calls = []

            def record(module, args, kwargs):
                hidden = args[0] if args else kwargs["hidden_states"]
                self.layer_calls.append((hidden.shape[1], self.armed))
                replaced.update(name for name, m in model.named_modules() if "forward" in vars(m))

            self.handles += [
                layer.register_forward_pre_hook(record, with_kwargs=True)
                for layer in self.language_model.layers
            ]
            return self

    monkeypatch.setattr(bench, "_LayerTimer", RecordingTimer)
    decode_tokens = 2
    result = bench.measure_once(model, inputs, "cpu", decode_tokens)

    assert not replaced, f"modules with a replaced forward during the bench run: {sorted(replaced)}"
    assert not [name for name, m in model.named_modules() if "forward" in vars(m)]
    (timer,) = timers
    layers = len(lm.layers)
    prefill = result["prefill_tokens"]
    if method is not None:  # the pruned prefill is the one timed
        assert prefill < inputs["input_ids"].shape[1]
    assert timer.calls == 1 + decode_tokens  # the prefill, then one call per further token
    assert timer.layer_calls == [(prefill, True)] * layers + [(1, False)] * layers * decode_tokens
    assert len(timer.times) == layers and all(t > 0 for t in timer.times)
    assert result["layer_s"] == pytest.approx(sum(timer.times) / layers)
    assert [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in hooked] == hooks_before


def test_hybrid_llm_is_refused_with_its_reason():
    """Qwen3.5's LLM is 3/4 linear attention: the transformer FLOP model does not apply, and the bench says so."""
    with pytest.raises(ValueError, match="hybrid LLM"):
        build_config("qwen3_5", 1, 1)
