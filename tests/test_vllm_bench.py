"""`stop-hf bench --engine vllm` (stop_hf/vllm/bench.py): runs end to end on a tiny checkpoint in the vLLM venv and
writes rows whose pruned prompts are shorter than the unpruned ones. No timings are asserted."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from stop_hf.tiny import save_tiny_checkpoint
from stop_hf.vllm.bench import FRAME_SIDE, PLACEHOLDER, markdown, real_shape_checkpoint, run

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


@pytest.mark.parametrize("arch", sorted(PLACEHOLDER))
def test_real_shape_folder_has_the_real_widths_and_no_weights(arch, tmp_path):
    """`--shape real` (the GPU default): the real checkpoint's widths at the asked depths, the tiny tokenizer's
    vocabulary and token ids, and no weight files (vLLM's load_format='dummy' draws them)."""
    import json

    from transformers import AutoConfig

    from stop_hf.bench import SHAPES, build_config

    try:
        build_config(arch, 1, 1)
    except (
        ValueError
    ) as refusal:  # MoE / hybrid LLMs, or a model this transformers lacks: refused, naming why
        with pytest.raises(ValueError) as raised:
            real_shape_checkpoint(arch, tmp_path / arch)
        assert str(raised.value) == str(refusal)
        assert not (tmp_path / arch).exists()  # refused before anything is written
        return
    folder = real_shape_checkpoint(arch, tmp_path / arch, vision_layers=1, llm_layers="full")
    assert not list(folder.glob("*.safetensors*"))
    tiny = json.loads((save_tiny_checkpoint(tmp_path / "tiny", arch) / "config.json").read_text())
    config = AutoConfig.from_pretrained(folder)
    text, vision, shape = config.text_config, config.vision_config, SHAPES[arch]
    assert (text.hidden_size, text.num_hidden_layers) == (shape.llm.hidden, shape.llm.layers)
    assert text.vocab_size == tiny["text_config"]["vocab_size"]
    assert config.to_dict().get("video_token_id") == tiny.get("video_token_id")
    assert (getattr(vision, "depth", None) or vision.num_hidden_layers) == 1
    # Qwen2-VL's vision config spells its width embed_dim (its hidden_size is the LLM's)
    assert shape.vision["hidden_size"] == getattr(vision, "embed_dim", vision.hidden_size)


@pytest.mark.skipif(not HAVE_VLLM, reason="vLLM is not installed (scripts/setup_vllm.sh builds its venv)")
def test_bench_runs_at_real_widths_with_random_weights(tmp_path):
    """The GPU bench's path on CPU: Qwen2.5-VL-7B widths, one vision and one LLM layer, random weights."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable, "-m", "stop_hf.vllm.bench", "--arch", "qwen2_5_vl", "--shape", "real", "--depth", "1",
        "--vision-depth", "1", "--requests", "2", "--frames", "4", "--repeats", "1",
        "--configs", "visionzip_stop_r25", "holitom_stop_r25", "--out", str(tmp_path),
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
    assert "real shape (vision layers 1, LLM layers 1" in result["model"]
