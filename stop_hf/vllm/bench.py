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

PLACEHOLDER = {"qwen2_5_vl": "<|vision_start|><|video_pad|><|vision_end|>", "llava_onevision": "<video>"}
PLACEHOLDER["internvl"] = "<video>"  # vLLM writes one `Frame{i}: <img>...</img>` group per frame
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
) -> list[dict[str, Any]]:
    from vllm import LLM, SamplingParams

    if device.startswith("cuda"):
        if model is None:
            raise ValueError("--device cuda needs --model (a real checkpoint of --arch)")
        engine_kwargs: dict[str, Any] = {"dtype": "bfloat16"}
    else:
        from stop_hf.tiny import save_tiny_checkpoint

        model = model or str(save_tiny_checkpoint(Path(tempfile.mkdtemp(prefix="stop_hf_vllm_bench_")), arch))
        engine_kwargs = {"dtype": "float32", "enforce_eager": True, "kv_cache_memory_bytes": 1 << 29}
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
    side = 336 if arch == "qwen2_5_vl" else 384
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
    result = {"arch": arch, "device": device, "frames": frames, "startup_s": round(startup, 1), "rows": rows}
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "vllm_bench.json").write_text(json.dumps(result, indent=2))
        (Path(out) / "vllm_bench.md").write_text(markdown(result))
    print(markdown(result))
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"vLLM, {result['arch']}, {result['device']}, {result['frames']} frames/video, start-up {result['startup_s']} s",
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
    parser.add_argument("--model", default=None, help="checkpoint (default on CPU: the tiny servable one)")
    parser.add_argument("--out", default="bench_out")
    return run_from_args(parser.parse_args(argv))


def run_from_args(args: argparse.Namespace) -> int:
    """Runs the bench from parsed `stop-hf bench --engine vllm` arguments."""
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
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
