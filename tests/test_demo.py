"""`stop-hf demo` runs with no arguments' defaults on the embedded tiny model and prints the comparison."""

from __future__ import annotations

import subprocess
import sys


def test_demo_prints_tokens_before_after_and_answers():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stop_hf",
            "demo",
            "--max-new-tokens",
            "3",
            "--repeats",
            "1",
            "--no-real-width",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "unpruned" in out and "holitom_stop_r10" in out
    assert "1569 -> 1569" in out  # 8 frames x 196 tokens + 1 newline, unpruned
    assert "[unpruned]" in out and "[holitom_stop_r10]" in out
    assert "timings: warm, median of 1 run(s) after one warm-up" in out
    assert "real widths" not in out  # --no-real-width skips the measurement


def test_real_width_check_measures_the_same_pruning_at_the_given_widths():
    from stop_hf.bench import SHAPES, ArchShape, LLMShape, real_width_check
    from stop_hf.config import StopConfig

    arch = "llava_onevision"
    llm = LLMShape(hidden=64, heads=8, kv_heads=2, mlp=176, layers=28, vocab=1024)
    vision = {**SHAPES[arch].vision, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2}
    shape = ArchShape(arch, llm, vision, SHAPES[arch].image_size, SHAPES[arch].tokens_per_frame)
    check = real_width_check(arch, StopConfig.from_any("visionzip_stop_r10"), frames=2, shape=shape)
    # 2 frames x 196 tokens + the newline; VisionZip keeps a fixed count per frame
    assert check.prompt_tokens > check.prompt_tokens_after > 0
    assert check.llm_layers == 28 and check.hidden == 64
    assert check.prefill_full_s > 0 and check.prefill_full_s_after > 0 and check.overhead_s > 0
    assert check.overhead_pct == 100 * check.overhead_s / check.prefill_full_s
    assert check.speedup == check.prefill_full_s / (check.prefill_full_s_after + check.overhead_s)


def test_demo_prints_the_real_width_measurement(monkeypatch, capsys):
    """The demo's closing lines put the tiny numbers in context: the same pruning measured at the real widths."""
    from stop_hf import bench
    from stop_hf.cli import demo

    calls = []

    def fake_check(arch, config, frames, device):
        calls.append((arch, config.method, frames, device))
        return bench.RealWidthCheck(arch, 28, 3584, 1576, 168, 80.0, 9.0, 0.4)

    monkeypatch.setattr(bench, "real_width_check", fake_check)
    text_config = type("TextConfig", (), {"num_hidden_layers": 2, "hidden_size": 64})()
    demo._print_real_width("llava_onevision", text_config, _config(), 8, "cpu")
    out = capsys.readouterr().out
    assert calls == [("llava_onevision", "holitom", 8, "cpu")]
    assert "2 layers of width 64" in out and "LLM hidden 3584, 28 layers" in out
    assert "1576 prompt tokens, LLM prefill 80.00 s" in out
    assert (
        "168 prompt tokens, LLM prefill 9.00 s + signals and pruning 0.40 s (0.50% of the unpruned prefill)"
        in out
    )
    assert "prefill speedup 8.5x" in out


def _config():
    from stop_hf.config import StopConfig

    return StopConfig.from_any("holitom_stop_r10")


def test_demo_bad_config_is_one_line_exit_2():
    result = subprocess.run(
        [sys.executable, "-m", "stop_hf", "demo", "--config", "no_such_preset"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "no_such_preset" in result.stderr
