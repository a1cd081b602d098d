"""`stop-hf run`: answer one question about one video with a pruning config; `--compare` adds the unpruned run."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from ..patches import ARCHITECTURES
from . import CliError

DEFAULT_PRESET = "holitom_stop_r10"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="answer a question about a video with pruning; --compare shows the unpruned answer beside it",
        description="Loads the model with the config, samples frames, answers, and prints video/prompt tokens "
        "before and after pruning, the time split (vision / pruning / prefill / decode) and the answer. Without "
        "--model it uses the embedded tiny random model (no download; its text is gibberish by design).",
    )
    add_model_arguments(parser)
    parser.add_argument("--question", required=True, help="the question to ask about the video")
    parser.add_argument(
        "--config", default=DEFAULT_PRESET, help=f"preset name or YAML path (default {DEFAULT_PRESET})"
    )
    parser.add_argument("--compare", action="store_true", help="also run unpruned and show both side by side")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    parser.set_defaults(func=run)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Model, video and sampling options shared by `run` and `viz`."""
    parser.add_argument(
        "--model", help="HF model id or local folder (default: the embedded tiny random model, see --arch)"
    )
    parser.add_argument(
        "--arch",
        default="llava_onevision",
        choices=list(ARCHITECTURES),
        help="tiny model architecture when --model is absent",
    )
    parser.add_argument("--video", help="video file to ask about")
    parser.add_argument(
        "--synthetic-video",
        action="store_true",
        help="use a generated clip with a planted static bright patch (a sink candidate) instead of --video",
    )
    parser.add_argument("--frames", type=int, default=8, help="frames sampled uniformly from the video")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="auto | fp32 | bf16 | fp16")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


# ---------------------------------------------------------------------------------------------------- helpers
def resolve_config(name: str):
    """The StopConfig a --config names, or None for "none" (unpruned)."""
    from ..config import StopConfig, means_no_pruning

    return None if means_no_pruning(name) else StopConfig.from_any(name)


def check_device(device: str) -> None:
    """A one-line error for a device string torch does not know or this machine does not have."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise CliError(f"--device={device!r} is not a device; e.g. cpu, cuda, cuda:1, mps") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise CliError(f"--device={device!r}: CUDA is not available on this machine (use --device cpu)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise CliError(
                f"--device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise CliError(f"--device={device!r}: MPS is not available on this machine (use --device cpu)")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise CliError(f"--device={device!r} is not supported; use cpu, cuda[:N] or mps")


def check_model(model: str | None) -> None:
    """A local --model must be a folder; anything else must look like a Hub id (org/name)."""
    import re

    if model is None:
        return
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CliError(f"--model {model!r} is a file; pass the checkpoint folder (with config.json)")
        if not (path / "config.json").is_file():
            raise CliError(f"--model folder {model!r} has no config.json; is it a checkpoint folder?")
        return
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", model) or model.startswith((".", "~")):
        raise CliError(
            f"--model {model!r} does not exist (not a local folder, and not a Hub id like org/name)"
        )


def check_inputs(args: argparse.Namespace, question: str | None = None) -> None:
    """Fails fast, before the model is loaded, on the mistakes a user makes most."""
    if args.frames < 1:
        raise CliError(f"--frames={args.frames} must be a positive integer")
    check_device(args.device)
    check_model(args.model)
    _dtype_or_error(args.dtype, args.device)
    if question is not None and not question.strip():
        raise CliError("--question is empty; ask something about the video")
    if args.video and args.synthetic_video:
        raise CliError("pass either --video FILE or --synthetic-video, not both")
    if not args.video and not args.synthetic_video:
        raise CliError(
            "a question needs a video: pass --video FILE (or --synthetic-video for a generated clip)"
        )
    if args.video:
        path = Path(args.video)
        if not path.exists():
            raise FileNotFoundError(f"video file {args.video!r} does not exist")
        if not path.is_file():
            raise CliError(f"video path {args.video!r} is not a file")


def check_output_file(flag: str, value: str | None) -> None:
    """A one-line error, before anything runs, for an output file that could not be written afterwards."""
    if not value:
        return
    path = Path(value).expanduser()
    if path.is_dir():
        raise CliError(f"{flag} {value!r} is a folder; pass a file path, e.g. {str(path / 'run.json')!r}")
    if not path.parent.is_dir():
        raise CliError(f"{flag} {value!r}: the folder {str(path.parent)!r} does not exist")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CliError(f"{flag} {value!r} is not writable")


def synthetic_video(num_frames: int) -> Path:
    """A generated clip: a moving red square and a static bright patch (top left) in every frame."""
    from ..video import synthetic_frames, write_video

    folder = Path(tempfile.mkdtemp(prefix="stop_hf_video_"))
    frames = synthetic_frames(num_frames, 240, 320, sink_patch=(20, 20, 60))
    return write_video(folder / "synthetic_sink.mp4", frames)


def decode_frames(path: str | Path, num_frames: int, progress: bool = True) -> np.ndarray:
    """(T, H, W, 3) uint8: `num_frames` uniformly sampled frames behind a progress bar, the frames `VideoLLM`
    samples (`stop_hf.video.read_video`); clear errors for bad files."""
    from ..video import read_video

    return read_video(path, num_frames, progress=progress)


def _dtype_or_error(dtype: str, device: str) -> None:
    from ..runner import _dtype

    try:
        _dtype(dtype, device)
    except ValueError as exc:
        raise CliError(f"--dtype: {exc}") from None


def load_model(args: argparse.Namespace, stop_config: Any = None):
    """The model of --model (or the embedded tiny one of --arch) on --device in --dtype; a model that cannot be
    loaded is a one-line error."""
    from ..runner import VideoLLM

    if not args.model:
        return VideoLLM.tiny(
            args.arch, stop_config=stop_config, num_frames=args.frames, device=args.device, dtype=args.dtype
        )
    try:
        return VideoLLM.from_pretrained(
            str(Path(args.model).expanduser()) if Path(args.model).expanduser().exists() else args.model,
            stop_config=stop_config,
            device=args.device,
            dtype=args.dtype,
            num_frames=args.frames,
        )
    except OSError as exc:  # HF: not a local folder and not reachable / not a Hub repo
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(f"--model {args.model!r} could not be loaded: {first}") from None


def model_video(llm: Any, path: Path, frames: np.ndarray) -> Any:
    """What to hand to `VideoLLM.answer`: the decoded frames (decoded once, behind the progress bar), or the file for
    architectures whose processor reads the fps for temporal positions (Qwen-VL: frame arrays would be taken as
    2 fps)."""
    from ..patches import architecture

    return str(path) if architecture(llm.arch).video_from_file else frames


class _TokenBar:
    """A `generate` streamer that advances a tqdm bar per generated token (the first `put` is the prompt)."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="tok", disable=not enabled, leave=False)
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.bar.update(1)

    def end(self) -> None:
        self.bar.close()


def answer(llm: Any, video: Any, question: str, max_new_tokens: int, desc: str, progress: bool) -> Any:
    return llm.answer(
        video, question, max_new_tokens=max_new_tokens, streamer=_TokenBar(max_new_tokens, desc, progress)
    )


def describe_config(config: Any) -> str:
    if config is None:
        return "none (unpruned)"
    sink = "SToP on" if config.sink else "SToP off"
    return f"method {config.method}, retention {config.retention:g}, {sink}"


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f}"


ROWS = (
    ("video tokens", lambda a: f"{a.video_tokens} -> {a.video_tokens_after}"),
    ("prompt tokens", lambda a: f"{a.prompt_tokens} -> {a.prompt_tokens_after}"),
    ("vision ms", lambda a: _ms(a.timings["vision"])),
    ("pruning ms", lambda a: _ms(a.timings["signals"] + a.timings["pruning"])),
    ("  signals ms", lambda a: _ms(a.timings["signals"])),
    ("  pruner ms", lambda a: _ms(a.timings["pruning"])),
    ("prefill ms", lambda a: _ms(a.timings["prefill"])),
    ("decode ms", lambda a: _ms(a.timings["decode"])),
    ("  per token ms", lambda a: _ms(a.timings["decode_per_token"])),
    ("total ms", lambda a: _ms(a.timings["total"])),
)


def print_results(results: list[tuple[str, Any]], question: str) -> None:
    width = max(26, max(len(label) for label, _ in results) + 2)
    print(f"question: {question}")
    print(f"{'':<16}" + "".join(f"{label:>{width}}" for label, _ in results))
    for name, cell in ROWS:
        print(f"{name:<16}" + "".join(f"{cell(a):>{width}}" for _, a in results))
    if len(results) == 1:
        label, a = results[0]
        print(f"answer: {a.text or '(empty)'}")
        return
    columns = max(30, min(60, (shutil.get_terminal_size((120, 20)).columns - 3) // len(results)))
    wrapped = [textwrap.wrap(a.text, columns) or ["(empty)"] for _, a in results]
    print("answers:")
    print(" | ".join(f"{label:<{columns}}" for label, _ in results).rstrip())
    print("-+-".join("-" * columns for _ in results))
    for i in range(max(len(w) for w in wrapped)):
        print(" | ".join(f"{(w[i] if i < len(w) else ''):<{columns}}" for w in wrapped).rstrip())


# ---------------------------------------------------------------------------------------------------- command
def run(args: argparse.Namespace) -> int:
    config = resolve_config(args.config)
    check_inputs(args, args.question)
    check_output_file("--json", args.json)
    if args.max_new_tokens < 1:
        raise CliError(f"--max-new-tokens={args.max_new_tokens} must be a positive integer")
    progress = not args.no_progress
    path = Path(args.video) if args.video else synthetic_video(args.frames)
    frames = decode_frames(path, args.frames, progress=progress)

    llm = load_model(args)
    name = args.model or f"embedded tiny random {llm.arch} (random weights: the text is gibberish by design)"
    print(f"model: {name}")
    print(f"video: {path} ({len(frames)} frames sampled, {frames.shape[2]}x{frames.shape[1]})")
    print(f"config: {args.config} ({describe_config(config)})")
    video = model_video(llm, path, frames)

    runs: list[tuple[str, Any]] = [(args.config, config)]
    if args.compare:
        runs.insert(0, ("unpruned", None))
    if args.compare:  # one short warm-up, so the first timed run does not pay one-off costs alone
        llm.set_stop_config(None)
        llm.answer(video, args.question, max_new_tokens=1)
    results = []
    for label, stop_config in runs:
        llm.set_stop_config(stop_config)
        results.append((label, answer(llm, video, args.question, args.max_new_tokens, label, progress)))
    print_results(results, args.question)
    if args.json:
        payload = {
            "model": args.model or f"tiny:{llm.arch}",
            "video": str(path),
            "frames": int(len(frames)),
            "question": args.question,
            "runs": {label: a.summary() for label, a in results},
        }
        Path(args.json).expanduser().write_text(json.dumps(payload, indent=2))
    return 0
