"""`stop-hf demo`: unpruned vs pruned on one video, side by side (the embedded tiny model by default)."""

from __future__ import annotations

import argparse
import statistics
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
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per row after one warm-up; the median is shown"
    )
    parser.add_argument(
        "--no-real-width",
        dest="real_width",
        action="store_false",
        help="skip the real-width measurement printed after the tiny model's table (about 10-30 s on a CPU)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..video import write_video
    from . import CliError
    from .run import _dtype_or_error, check_device, check_model, load_model, resolve_config

    config = resolve_config(args.config)
    if args.frames < 1:
        raise CliError(f"--frames={args.frames} must be a positive integer")
    if args.repeats < 1:
        raise CliError(f"--repeats={args.repeats} must be a positive integer")
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
        runs = [
            llm.answer(video, args.question, max_new_tokens=args.max_new_tokens) for _ in range(args.repeats)
        ]
        rows.append((label, runs))
    print(f"question: {args.question}")
    print(f"timings: warm, median of {args.repeats} run(s) after one warm-up")
    print(f"{'run':<22} {'video tokens':>14} {'prompt tokens':>14} {'prefill ms':>11} {'pruning ms':>11}")
    for label, runs in rows:
        a = runs[0]
        prefill_ms = 1000 * statistics.median(r.timings["prefill"] for r in runs)
        pruning_ms = 1000 * statistics.median(r.timings["signals"] + r.timings["pruning"] for r in runs)
        print(
            f"{label:<22} {a.video_tokens:>6} -> {a.video_tokens_after:<5} {a.prompt_tokens:>5} -> "
            f"{a.prompt_tokens_after:<6} {prefill_ms:>11.1f} {pruning_ms:>11.1f}"
        )
    for label, runs in rows:
        print(f"[{label}] {runs[0].text}")
    if not args.model and config is not None and args.real_width:
        _print_real_width(llm.arch, llm.model.config.get_text_config(), config, args.frames, args.device)
    return 0


def _print_real_width(arch: str, tiny_text_config, config, frames: int, device: str) -> None:
    """The tiny model's LLM costs almost nothing, so its pruning ms dwarf its prefill ms; this measures the same
    pruning at the real checkpoint's widths, where the prefill it saves is what dominates."""
    from ..bench import SHAPES, real_width_check

    llm = SHAPES[arch].llm
    try:
        check = real_width_check(arch, config, frames, device)
    except ValueError as exc:  # an architecture the bench does not model (MoE, hybrid LLMs) says why
        print(f"\nreal-width measurement skipped: {exc}")
        return
    print(
        f"\nThe tiny model's LLM ({tiny_text_config.num_hidden_layers} layers of width "
        f"{tiny_text_config.hidden_size}) costs almost nothing, so the pruning ms above look large next to its prefill. The same pruning at the real widths ({arch}: LLM hidden {llm.hidden}, "
        f"{llm.layers} layers; random weights, 1 vision + 1 LLM layer measured, prefill x {llm.layers}):"
    )
    print(
        f"  unpruned: {check.prompt_tokens} prompt tokens, LLM prefill {check.prefill_full_s:.2f} s\n"
        f"  pruned:   {check.prompt_tokens_after} prompt tokens, LLM prefill {check.prefill_full_s_after:.2f} s "
        f"+ signals and pruning {check.overhead_s:.2f} s ({check.overhead_pct:.2f}% of the unpruned prefill)\n"
        f"  prefill speedup {check.speedup:.1f}x on {device}; `stop-hf bench` measures every method "
        f"(docs/benchmark.md)"
    )
