"""`stop-hf eval`: one benchmark, one model, one pruning config -> results JSON (+ resumable per-sample JSONL)."""

from __future__ import annotations

import argparse
from pathlib import Path

TINY_PREFIX = "tiny-"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..eval.benchmarks import REGISTRY

    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model (+ pruning config) on a benchmark from its official local files",
        description="Runs a benchmark from its official local file layout (docs/evaluation.md). Per-sample results "
        "are appended to OUT.jsonl, so an interrupted run resumes where it stopped. `--config none` is the "
        "unpruned reference run.",
    )
    parser.add_argument("--benchmark", required=True, help=f"one of {sorted(REGISTRY)}")
    parser.add_argument("--data", required=True, help="the benchmark's data folder")
    parser.add_argument(
        "--model",
        required=True,
        help="HF model id or folder; tiny-llava_onevision / tiny-qwen2_5_vl for the tiny models",
    )
    parser.add_argument("--config", required=True, help="preset name, YAML path, or 'none' (unpruned)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N samples")
    parser.add_argument(
        "--out", default="results.json", help="results JSON (records go to the same name .jsonl)"
    )
    parser.add_argument(
        "--reference", help="results JSON of the unpruned run: adds relative drop and loyalty"
    )
    parser.add_argument("--frames", type=int, default=32, help="frames sampled per video (the paper uses 32)")
    parser.add_argument("--max-new-tokens", type=int, help="override the benchmark's generation length")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--dtype", default="auto", help="auto | fp32 | bf16 | fp16")
    parser.add_argument(
        "--judge-url",
        help="OpenAI-compatible base URL, e.g. https://api.openai.com/v1 (env STOP_HF_JUDGE_URL)",
    )
    parser.add_argument("--judge-model", help="judge model name (env STOP_HF_JUDGE_MODEL)")
    parser.add_argument("--judge-api-key", help="judge API key (env STOP_HF_JUDGE_API_KEY or OPENAI_API_KEY)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


def load_model(model: str, config, device: str, dtype: str, frames: int):
    from ..runner import VideoLLM
    from ..testing.models import ARCHITECTURES

    if model.startswith(TINY_PREFIX):
        arch = model[len(TINY_PREFIX) :]
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown tiny model {model!r}; use tiny-{' / tiny-'.join(ARCHITECTURES)}")
        return VideoLLM.tiny(arch, stop_config=config, num_frames=frames)
    return VideoLLM.from_pretrained(model, stop_config=config, device=device, dtype=dtype, num_frames=frames)


def parse_config(name: str):
    from ..config import StopConfig

    if name.lower() in ("none", "unpruned", "vanilla"):
        return None, None
    config = StopConfig.from_any(name)
    return config, config.to_dict() if hasattr(config, "to_dict") else str(config)


def run(args: argparse.Namespace) -> int:
    from ..eval.benchmarks import get_benchmark
    from ..eval.judge import judge_from_args
    from ..eval.runner import evaluate

    bench = get_benchmark(args.benchmark)
    if not Path(args.data).is_dir():
        raise FileNotFoundError(f"data folder not found: {args.data}")
    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be >= 1")
    config, config_dict = parse_config(args.config)
    judge = judge_from_args(args.judge_url, args.judge_model, args.judge_api_key)
    llm = load_model(args.model, config, args.device, args.dtype, args.frames)
    run_info = {
        "model": args.model,
        "config_name": "none" if config is None else args.config,
        "config": config_dict,
        "frames": args.frames,
        "limit": args.limit,
    }
    results = evaluate(
        llm,
        bench,
        args.data,
        args.out,
        limit=args.limit,
        judge=judge,
        max_new_tokens=args.max_new_tokens,
        run_info=run_info,
        reference=args.reference,
        progress=not args.no_progress,
    )
    from .compare import format_table

    print(format_table([results]))
    if results["n_errors"]:
        print(f"{results['n_errors']} sample(s) failed; see 'errors' in {args.out}")
    if results["n_skipped"]:
        print(
            f"{results['n_skipped']} judged sample(s) skipped: no judge configured (--judge-url/--judge-model)"
        )
    print(f"results: {args.out}")
    return 0
