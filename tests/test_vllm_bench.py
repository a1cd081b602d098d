"""`stop-hf bench --engine vllm` (stop_hf/vllm/bench.py): runs end to end on a tiny checkpoint in the vLLM venv and
writes rows whose pruned prompts are shorter than the unpruned ones. No timings are asserted."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from stop_hf.vllm.bench import FRAME_SIDE, PLACEHOLDER, markdown, run

HAVE_VLLM = importlib.util.find_spec("vllm") is not None


def test_every_served_architecture_has_a_bench_prompt_and_frame_size():
    from stop_hf.vllm.counts import SERVED_ARCHITECTURES

    assert set(PLACEHOLDER) == set(FRAME_SIDE) == set(SERVED_ARCHITECTURES.values())


def test_an_unknown_architecture_is_refused_before_any_engine_starts():
    with pytest.raises(ValueError, match="allowed"):
        run(arch="gpt2")


def test_markdown_shows_each_row():
    result = {
        "arch": "qwen3_vl",
        "device": "cpu",
        "frames": 4,
        "startup_s": 1.0,
        "rows": [
            {
                "config": "none",
                "prompt_tokens": 400,
                "requests_per_s": 2.0,
                "prompt_tokens_per_s": 800.0,
                "speedup": 1.0,
            },
            {
                "config": "x",
                "prompt_tokens": 100,
                "requests_per_s": 6.0,
                "prompt_tokens_per_s": 600.0,
                "speedup": 3.0,
            },
        ],
    }
    text = markdown(result)
    assert "| none | 400 | 2.0 | 800.0 | 1.0x |" in text and "| x | 100 | 6.0 | 600.0 | 3.0x |" in text


@pytest.mark.skipif(not HAVE_VLLM, reason="vLLM is not installed (scripts/setup_vllm.sh builds its venv)")
def test_bench_runs_on_the_tiny_qwen3_vl(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable, "-m", "stop_hf.vllm.bench", "--arch", "qwen3_vl", "--requests", "2", "--frames", "4",
        "--repeats", "1", "--configs", "visionzip_stop_r25", "holitom_stop_r25", "--out", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "vllm_bench.json").read_text())
    rows = {row["config"]: row for row in result["rows"]}
    assert list(rows) == ["none", "visionzip_stop_r25", "holitom_stop_r25"]
    unpruned = rows["none"]["prompt_tokens"]
    for config in ("visionzip_stop_r25", "holitom_stop_r25"):
        assert (
            rows[config]["prompt_tokens"] < unpruned / 2
        )  # 2 videos of 2 temporal patches x 144 tokens at r 0.25
        assert rows[config]["requests_per_s"] > 0 and rows[config]["speedup"] > 0
    assert (tmp_path / "vllm_bench.md").read_text() == markdown(result)
