"""Writes the cross-version exactness fixture for Qwen3.5 in stop-hf's vLLM plugin (issue 22).

The HF Qwen3.5 path needs transformers >= 5.23 (patches/qwen3_5.py `min_transformers`); the vLLM venv holds the
transformers vLLM pins (5.19), where that path is refused. So the HF side is computed here, in the main venv, and
stored: a tiny servable Qwen3.5 checkpoint (`stop_hf.tiny.save_tiny_checkpoint`) in tests/fixtures/vllm_qwen3_5/ (and
Qwen3.5-MoE in vllm_qwen3_5_moe/) and
`hf_reference.json` beside it with, per dtype and config, the HF path's greedy ids and kept indices on the fixed frames
of tests/test_vllm_plugin.py. tests/test_vllm_qwen3_5.py serves the stored checkpoint in vLLM and compares; its
main-venv test recomputes the HF side from the stored checkpoint (`hf_reference`) so the JSON cannot go stale.

vLLM's CPU backend runs Qwen3.5's Gated-DeltaNet layers in bfloat16 only, so the served engine is bfloat16; the
reference is stored for bfloat16 (the served dtype) and float32.

Usage (main venv, transformers >= 5.23): python scripts/make_qwen35_vllm_fixture.py [--arch qwen3_5|qwen3_5_moe]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = {
    "qwen3_5": ROOT / "tests" / "fixtures" / "vllm_qwen3_5",
    "qwen3_5_moe": ROOT / "tests" / "fixtures" / "vllm_qwen3_5_moe",
}
REFERENCE = "hf_reference.json"
#: name -> stop_config (the last is content-dependent: served with the exact rule, compared by its own selection)
CONFIGS: dict[str, Any] = {
    "none": "none",
    "uniform_r25": {"method": "uniform", "retention": 0.25},
    "visionzip_baseline_r25": "visionzip_baseline_r25",
    "visionzip_stop_r25": "visionzip_stop_r25",
    "holitom_stop_r25": "holitom_stop_r25",
}
DTYPES = ("bfloat16", "float32")


def _test_helpers():
    sys.path.insert(0, str(ROOT / "tests"))
    import test_vllm_plugin

    return test_vllm_plugin


def hf_inputs(path: Path):
    """The HF processor's inputs for the fixed prompt and frames (tests/test_vllm_plugin.py)."""
    from transformers import AutoProcessor
    from transformers.video_utils import VideoMetadata

    helpers = _test_helpers()
    processor = AutoProcessor.from_pretrained(str(path))
    meta = {k: v for k, v in helpers._metadata().items() if k != "do_sample_frames"}
    return processor(
        text=[helpers.PROMPT.format(video="<|vision_start|><|video_pad|><|vision_end|>")],
        videos=[list(helpers._frames())],
        video_metadata=[VideoMetadata(**meta)],
        do_sample_frames=False,
        return_tensors="pt",
    )


def hf_reference(path: Path) -> dict[str, Any]:
    """{"prompt_length", "max_tokens", "references": {dtype: {name: {"ids", "index"}}}}: the HF path (stop-hf's
    patch, transformers >= 5.23) on the checkpoint at `path`; `index` is the pruner's kept indices in its own order
    (None unpruned)."""
    import torch

    import stop_hf

    helpers = _test_helpers()
    inputs = hf_inputs(path)
    prompt = int(inputs["input_ids"].shape[1])
    references: dict[str, dict[str, Any]] = {}
    for dtype in DTYPES:
        references[dtype] = {}
        for name, config in CONFIGS.items():
            model = stop_hf.from_pretrained(str(path), stop_config=config, dtype=getattr(torch, dtype)).eval()
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=helpers.MAX_TOKENS, do_sample=False)
            report = stop_hf.last_prune_report(model) if stop_hf.is_patched(model) else []
            references[dtype][name] = {
                "ids": out[0, prompt:].tolist(),
                "index": report[0]["index"].tolist() if report else None,
            }
    return {"prompt_length": prompt, "max_tokens": helpers.MAX_TOKENS, "references": references}


def write_fixture(arch: str, out: Path) -> Path:
    import torch
    import transformers

    from stop_hf.tiny import save_tiny_checkpoint

    if out.exists():
        shutil.rmtree(out)
    save_tiny_checkpoint(out, arch)
    data = {
        "arch": arch,
        "configs": CONFIGS,
        "made_with": {"transformers": transformers.__version__, "torch": torch.__version__},
        **hf_reference(out),
    }
    (out / REFERENCE).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(FIXTURES), help="one architecture (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="folder (with --arch)")
    args = parser.parse_args()
    for arch in [args.arch] if args.arch else sorted(FIXTURES):
        out = write_fixture(arch, args.out or FIXTURES[arch])
        size = sum(f.stat().st_size for f in out.iterdir())
        print(f"wrote {out} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
