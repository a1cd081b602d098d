"""`stop-hf demo`: unpruned vs pruned on one video, side by side (the embedded tiny model by default)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ..patches import ARCHITECTURES

DEFAULT_PRESET = "holitom_stop_r10"
DEFAULT_QUESTION = "What happens in the video?"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run unpruned and pruned on one video and compare (tiny model, no download, by default)",
        description="With no arguments: builds the embedded tiny model and a generated 8-frame video, then prints "
        "tokens before/after, prefill time and the generated text, unpruned vs pruned.",
    )
    parser.add_argument("--arch", default="llava_onevision", choices=list(ARCHITECTURES))
    parser.add_argument(
        "--model", help="HF model id or local folder (default: the embedded tiny random model)"
    )
    parser.add_argument("--video", help="video file (default: a generated 8-frame video)")
    parser.add_argument("--question", default=DEFAULT_QUESTION)
    parser.add_argument("--config", default=DEFAULT_PRESET, help="preset name or YAML path")
    parser.add_argument("--frames", type=int, default=8, help="frames sampled from the video")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="auto | fp32 | bf16 | fp16")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..video import write_video
    from . import CliError
    from .run import _dtype_or_error, check_device, check_model, load_model, resolve_config

    config = resolve_config(args.config)
    if args.frames < 1:
        raise CliError(f"--frames={args.frames} must be a positive integer")
    if args.max_new_tokens < 1:
        raise CliError(f"--max-new-tokens={args.max_new_tokens} must be a positive integer")
    check_device(args.device)
    check_model(args.model)
    _dtype_or_error(args.dtype, args.device)
    if args.video is not None and not Path(args.video).is_file():
        raise FileNotFoundError(f"video file {args.video!r} does not exist or is not a file")
    llm = load_model(args)
    if not args.model:
        print(f"model: embedded tiny random {llm.arch} (random weights: the text is gibberish by design)")
    video = args.video
    if video is None:
        video = write_video(
            Path(tempfile.mkdtemp(prefix="stop_hf_demo_")) / "demo.mp4", num_frames=args.frames
        )
        print(f"video: generated {args.frames}-frame clip {video}")
    rows = []
    for label, stop_config in (("unpruned", None), (args.config, config)):
        llm.set_stop_config(stop_config)
        llm.answer(video, args.question, max_new_tokens=2)  # warm-up, so both runs are timed alike
        answer = llm.answer(video, args.question, max_new_tokens=args.max_new_tokens)
        rows.append((label, answer))
    print(f"question: {args.question}")
    print(f"{'run':<22} {'video tokens':>14} {'prompt tokens':>14} {'prefill ms':>11} {'pruning ms':>11}")
    for label, a in rows:
        pruning_ms = 1000 * (a.timings["signals"] + a.timings["pruning"])
        print(
            f"{label:<22} {a.video_tokens:>6} -> {a.video_tokens_after:<5} {a.prompt_tokens:>5} -> "
            f"{a.prompt_tokens_after:<6} {1000 * a.timings['prefill']:>11.1f} {pruning_ms:>11.1f}"
        )
    for label, a in rows:
        print(f"[{label}] {a.text}")
    return 0
