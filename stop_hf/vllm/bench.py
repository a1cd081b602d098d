"""`stop-hf bench --engine vllm`: requests/s and prompt tokens/s of vLLM serving videos, pruned vs unpruned.

One engine (started with `stop_config: none`), every config sent per request, so the rows share start-up and
weights. CPU (default): the tiny servable checkpoint of `--arch`; `--device cuda`: `--model` (a real checkpoint) in
bf16. Run it as a script or through the CLI; the engine process is spawned, so it must run under `__main__`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

_QWEN_VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
PLACEHOLDER = {
    "qwen2_5_vl": _QWEN_VIDEO,
    "qwen2_vl": _QWEN_VIDEO,
    "qwen3_vl": _QWEN_VIDEO,
    "qwen3_vl_moe": _QWEN_VIDEO,
    "qwen3_5": _QWEN_VIDEO,  # tiny/real shapes need transformers >= 5.23 (--model: any checkpoint)
    "qwen3_5_moe": _QWEN_VIDEO,
    "llava_onevision": "<video>",
    "internvl": "<video>",  # vLLM writes one `Frame{i}: <img>...</img>` group per frame
}
#: frame side in pixels: a whole number of merged patches (Qwen2/2.5: 28 px, Qwen3: 32 px; SigLIP 384)
FRAME_SIDE = {
    "qwen2_5_vl": 336,
    "qwen2_vl": 336,
    "qwen3_vl": 384,
    "qwen3_vl_moe": 384,
    "qwen3_5": 384,
    "qwen3_5_moe": 384,
    "llava_onevision": 384,
    "internvl": 448,
}
PROMPT = "<|im_start|>user\n{video}what happens ?<|im_end|>\n<|im_start|>assistant\n"


def _video(arch: str, frames: int, side: int, seed: int) -> Any:
    import numpy as np

    clip = (np.random.default_rng(seed).random((frames, side, side, 3)) * 255).astype("uint8")
    if arch in ("llava_onevision", "internvl"):
        return clip
    meta = {
        "total_num_frames": frames,
        "fps": 2.0,
        "duration": frames / 2,
        "video_backend": "opencv",
        "frames_indices": list(range(frames)),
        "do_sample_frames": False,
    }
    return clip, meta


#: text-config keys the tiny tokenizer fixes (a real-shape config keeps the tiny checkpoint's values)
_TOKENIZER_KEYS = ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")


def real_shape_checkpoint(
    arch: str, folder: str | Path, vision_layers: int | str = "full", llm_layers: int | str = "full"
) -> Path:
    """A model folder with `arch`'s real widths (stop_hf.bench SHAPES: the 7B/8B checkpoints'), the given depths
    ("full": the real depth) and the tiny checkpoint's tokenizer, processor and token ids, but no weights: vLLM's
    `load_format="dummy"` fills them with random values, so no checkpoint has to be downloaded or written."""
    from stop_hf.bench import SHAPES, build_config
    from stop_hf.patches import architecture
    from stop_hf.tiny import save_tiny_checkpoint

    architecture(arch)  # refuses an architecture this transformers lacks, naming the release it needs
    shape = SHAPES[arch]
    vision = shape.vision["layers"] if vision_layers == "full" else int(vision_layers)
    llm = shape.llm.layers if llm_layers == "full" else int(llm_layers)
    real = build_config(arch, vision, llm).to_dict()  # first: it refuses what the bench does not model
    folder = save_tiny_checkpoint(Path(folder), arch)
    for weights in folder.glob("*.safetensors*"):
        weights.unlink()
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    config["vision_config"] = {**config["vision_config"], **real["vision_config"]}
    tiny_text = config["text_config"]
    text = {**tiny_text, **{k: v for k, v in real["text_config"].items() if k not in _TOKENIZER_KEYS}}
    if "rope_parameters" in tiny_text and "rope_parameters" in real["text_config"]:
        # the servable tiny config's layout flags (Qwen3-VL's mrope_interleaved) stay: vLLM reads them
        text["rope_parameters"] = {**tiny_text["rope_parameters"], **real["text_config"]["rope_parameters"]}
    config["text_config"] = text
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder


def run(
    arch: str = "qwen2_5_vl",
    configs: tuple[str, ...] = ("visionzip_stop_r25", "visionzip_stop_r10"),
    count_rule: str = "exact",
    requests: int = 8,
    frames: int = 8,
    repeats: int = 3,
    device: str = "cpu",
    model: str | None = None,
    out: str | None = None,
    shape: str | None = None,
    vision_layers: int | str = "full",
    llm_layers: int | str = "full",
) -> list[dict[str, Any]]:
    """`shape`: "tiny" (the tiny servable checkpoint; default on CPU), "real" (the real widths at the given depths,
    random weights through vLLM's `load_format="dummy"`; default on GPU without `model`) or None (`model`)."""
    if arch not in PLACEHOLDER:
        raise ValueError(f"--arch {arch!r} is not benched; allowed: {sorted(PLACEHOLDER)}")
    gpu = device.startswith("cuda")
    if shape is None and model is None:
        shape = "real" if gpu else "tiny"
    if shape not in (None, "tiny", "real"):
        raise ValueError(f"--shape {shape!r} is not allowed; allowed: tiny, real")
    if shape is not None and model is not None:
        raise ValueError(f"--shape {shape} and --model are exclusive: --model benches that checkpoint")
    from vllm import LLM, SamplingParams

    engine_kwargs: dict[str, Any] = (
        {"dtype": "bfloat16"}
        if gpu
        else {"dtype": "float32", "enforce_eager": True, "kv_cache_memory_bytes": 1 << 29}
    )
    folder = Path(tempfile.mkdtemp(prefix="stop_hf_vllm_bench_")) / arch
    if shape == "real":
        model = str(real_shape_checkpoint(arch, folder, vision_layers, llm_layers))
        engine_kwargs["load_format"] = "dummy"
    elif shape == "tiny":
        from stop_hf.tiny import save_tiny_checkpoint

        model = str(save_tiny_checkpoint(folder, arch))
    started = time.perf_counter()
    llm = LLM(
        model=model,
        max_model_len=32768,
        limit_mm_per_prompt={"video": 1, "image": 0},
        additional_config={"stop_config": "none"},
        seed=0,
        **engine_kwargs,
    )
    startup = time.perf_counter() - started
    side = FRAME_SIDE[arch]
    videos = [_video(arch, frames, side, seed) for seed in range(requests)]
    params = SamplingParams(max_tokens=1, temperature=0)
    rows = []
    for config in ("none", *configs):
        batch = [
            {
                "prompt": PROMPT.format(video=PLACEHOLDER[arch]),
                "multi_modal_data": {"video": video},
                "mm_processor_kwargs": {"stop_config": config, "stop_count_rule": count_rule},
            }
            for video in videos
        ]
        llm.generate(batch[:1], params, use_tqdm=False)  # warm-up (and the processor cache is per content)
        times, prompt_tokens = [], 0
        for _ in range(repeats):
            llm.reset_prefix_cache()
            t0 = time.perf_counter()
            outputs = llm.generate(batch, params, use_tqdm=False)
            times.append(time.perf_counter() - t0)
            prompt_tokens = sum(len(o.prompt_token_ids) for o in outputs)
        seconds = statistics.median(times)
        rows.append(
            {
                "config": config,
                "requests": requests,
                "prompt_tokens": prompt_tokens,
                "seconds": round(seconds, 4),
                "requests_per_s": round(requests / seconds, 3),
                "prompt_tokens_per_s": round(prompt_tokens / seconds, 1),
            }
        )
    base = rows[0]["seconds"]
    for row in rows:
        row["speedup"] = round(base / row["seconds"], 3)
    result = {
        "arch": arch,
        "device": device,
        "frames": frames,
        "startup_s": round(startup, 1),
        "model": model
        if shape is None
        else f"{shape} shape"
        + (
            f" (vision layers {vision_layers}, LLM layers {llm_layers}, random weights)"
            if shape == "real"
            else ""
        ),
        "rows": rows,
    }
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "vllm_bench.json").write_text(json.dumps(result, indent=2))
        (Path(out) / "vllm_bench.md").write_text(markdown(result))
    print(markdown(result))
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"vLLM, {result['arch']}, {result.get('model', '')}, {result['device']}, {result['frames']} frames/video, "
        f"start-up {result['startup_s']} s",
        "",
        "| config | prompt tokens | requests/s | prompt tokens/s | speed-up |",
        "|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['config']} | {row['prompt_tokens']} | {row['requests_per_s']} | {row['prompt_tokens_per_s']} | "
            f"{row['speedup']}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stop-hf bench --engine vllm", description=__doc__)
    parser.add_argument("--arch", default="qwen2_5_vl", choices=sorted(PLACEHOLDER))
    parser.add_argument("--configs", nargs="+", default=["visionzip_stop_r25", "visionzip_stop_r10"])
    parser.add_argument("--count-rule", default="exact", choices=["shape", "exact"])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default=None, help="a checkpoint of --arch (instead of --shape)")
    parser.add_argument(
        "--shape",
        default=None,
        choices=["tiny", "real"],
        help="tiny checkpoint (CPU default) or real widths with random weights (GPU default)",
    )
    parser.add_argument(
        "--depth", default=None, help="--shape real: LLM layers, N or 'full' (default: 2 on CPU, full on GPU)"
    )
    parser.add_argument(
        "--vision-depth",
        default=None,
        help="--shape real: vision layers, N or 'full' (default: 1 on CPU, full on GPU)",
    )
    parser.add_argument("--out", default="bench_out")
    return run_from_args(parser.parse_args(argv))


def run_from_args(args: argparse.Namespace) -> int:
    """Runs the bench from parsed `stop-hf bench --engine vllm` arguments (the same depth defaults as the HF bench:
    1 vision + 2 LLM layers on CPU, full depth on GPU)."""
    from stop_hf.cli.bench import depth_setting

    gpu = args.device.startswith("cuda")
    run(
        args.arch,
        tuple(args.configs),
        args.count_rule,
        args.requests,
        args.frames,
        args.repeats,
        args.device,
        args.model,
        args.out,
        args.shape,
        vision_layers=depth_setting(args.vision_depth, "full" if gpu else 1),
        llm_layers=depth_setting(args.depth, "full" if gpu else 2),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
