"""`stop-hf bench`: prefill efficiency of each pruner on random-weight models with the real 7B widths."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..bench import METHODS, SHAPES

    parser = subparsers.add_parser(
        "bench",
        help="time vision / signals / pruning / prefill / decode per method at real 7B widths (random weights)",
        description="Builds a random-weight model with the real widths of LLaVA-OneVision-7B or Qwen2.5-VL-7B at "
        "a reduced depth (CPU) or full depth (GPU), and writes results.json, table.md and speedup.png.",
    )
    parser.add_argument("--arch", default="llava_onevision", choices=sorted(SHAPES))
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--retention", type=float, nargs="+", default=[0.1, 0.25])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--sink", choices=["both", "on", "off"], default="both")
    parser.add_argument(
        "--depth", default=None, help="LLM layers: N or 'full' (default: 2 on CPU, full on GPU)"
    )
    parser.add_argument(
        "--vision-depth", default=None, help="vision layers: N or 'full' (default: 1 on CPU, full on GPU)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtype", default=None, choices=["fp32", "bf16", "fp16"], help="default: fp32 on CPU, bf16 on GPU"
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats per row (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs per row")
    parser.add_argument("--decode-tokens", type=int, default=2)
    parser.add_argument("--out", default="bench_out")
    # --engine vllm (issue 22): serving throughput in vLLM, pruned vs unpruned (stop_hf.vllm.bench)
    parser.add_argument("--engine", default="hf", choices=["hf", "vllm"])
    parser.add_argument(
        "--configs", nargs="+", default=["visionzip_stop_r25", "visionzip_stop_r10"], help="vllm"
    )
    parser.add_argument("--count-rule", default="exact", choices=["shape", "exact"], help="vllm")
    parser.add_argument("--requests", type=int, default=8, help="vllm: videos per batch")
    parser.add_argument("--model", default=None, help="vllm: a checkpoint of --arch (instead of --shape)")
    parser.add_argument(
        "--shape",
        default=None,
        choices=["tiny", "real"],
        help="vllm: the tiny checkpoint (CPU default) or the real widths at --depth/--vision-depth with random "
        "weights (GPU default)",
    )
    parser.set_defaults(func=run)


def depth_setting(value: str | None, default: int | str) -> int | str:
    """A --depth / --vision-depth value: None -> `default`, "full", or a layer count."""
    if value is None:
        return default
    return "full" if value == "full" else int(value)


def check_settings(args: argparse.Namespace) -> None:
    """Impossible settings are refused before any model is built."""
    from ..bench import METHODS
    from . import CliError
    from .run import _dtype_or_error, check_device

    for name in ("frames", "repeats", "decode_tokens"):
        if getattr(args, name) < 1:
            raise CliError(f"--{name.replace('_', '-')}={getattr(args, name)} must be a positive integer")
    if args.warmup < 0:
        raise CliError(f"--warmup={args.warmup} must be >= 0")
    for value in args.retention:
        if not 0 < value <= 1:
            raise CliError(f"--retention {value} is out of range; allowed: 0 < r <= 1")
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise CliError(f"--methods {unknown} unknown; allowed: {list(METHODS)}")
    for flag, value in (("--depth", args.depth), ("--vision-depth", args.vision_depth)):
        if value is not None and value != "full" and (not value.isdigit() or int(value) < 1):
            raise CliError(f"{flag}={value!r} must be a positive integer or 'full'")
    check_device(args.device)
    if args.dtype is not None:
        _dtype_or_error(args.dtype, args.device)
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {args.out!r} is a file; pass a folder")


def run(args: argparse.Namespace) -> int:
    from ..bench import BenchSettings, markdown_table, run_bench

    check_settings(args)
    if args.engine == "vllm":
        from ..vllm.bench import PLACEHOLDER, run_from_args
        from . import CliError

        if args.arch not in PLACEHOLDER:
            raise CliError(
                f"--engine vllm --arch {args.arch!r} is not served; allowed: {sorted(PLACEHOLDER)}"
            )
        if args.shape is not None and args.model is not None:
            raise CliError("--shape and --model are exclusive: --model benches that checkpoint")
        return run_from_args(args)

    gpu = args.device.startswith("cuda")
    settings = BenchSettings(
        arch=args.arch,
        frames=args.frames,
        retentions=tuple(args.retention),
        methods=tuple(args.methods),
        sinks={"both": (False, True), "on": (True,), "off": (False,)}[args.sink],
        vision_layers=depth_setting(args.vision_depth, "full" if gpu else 1),
        llm_layers=depth_setting(args.depth, "full" if gpu else 2),
        device=args.device,
        dtype=args.dtype or ("bf16" if gpu else "fp32"),
        repeats=args.repeats,
        warmup=args.warmup,
        decode_tokens=args.decode_tokens,
        out=args.out,
    )
    result = run_bench(settings)
    print(markdown_table(result))
    print(f"wrote {args.out}/results.json, {args.out}/table.md, {args.out}/speedup.png ({result['device']})")
    return 0
