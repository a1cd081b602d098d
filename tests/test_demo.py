"""`stop-hf demo` runs with no arguments' defaults on the embedded tiny model and prints the comparison."""

from __future__ import annotations

import subprocess
import sys


def test_demo_prints_tokens_before_after_and_answers():
    result = subprocess.run(
        [sys.executable, "-m", "stop_hf", "demo", "--max-new-tokens", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "unpruned" in out and "holitom_stop_r10" in out
    assert "1569 -> 1569" in out  # 8 frames x 196 tokens + 1 newline, unpruned
    assert "[unpruned]" in out and "[holitom_stop_r10]" in out


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
