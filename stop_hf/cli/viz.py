"""`stop-hf viz`: pictures of what a baseline pruner and its SToP variant kept on one video.

Writes to --out:
- kept_tokens.png: the sampled frames (as the model saw them), kept tokens outlined, merged tokens shaded by cluster,
  baseline rows above SToP rows;
- sink_score.png: the sink score over the spatial grid (alone and over the first frame);
- tokens_per_frame.png: tokens kept per frame, with HoliTom windows / FastVID segments as bands;
- overlay_<label>.png: the exact-pixel overlay strip (token frames side by side, model resolution) per run;
- report.json: per run, `stop_hf.viz.summarize` of the report (T, N, kept (t, n), merged groups, sink score, ...).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from . import CliError
from .run import add_model_arguments, check_inputs, decode_frames, load_model, model_video, resolve_config

DEFAULT_PRESET = "visionzip_stop_r10"
DEFAULT_QUESTION = "What happens in the video?"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "viz",
        help="draw what a pruner kept (baseline vs SToP): frames with kept tokens, sink score, tokens per frame",
        description="Runs the baseline and the SToP config on one video and writes PNGs to --out (needs the "
        "`viz` extra: pip install 'stop-hf[viz]'). --signals synthetic replaces the model's saliency by a "
        "pixel-derived one through the pure pruner API (for illustrations on random tiny weights).",
    )
    add_model_arguments(parser)
    parser.add_argument("--out", required=True, help="output folder for the PNGs and report.json")
    parser.add_argument(
        "--config", default=DEFAULT_PRESET, help=f"the SToP preset or YAML (default {DEFAULT_PRESET})"
    )
    parser.add_argument(
        "--baseline",
        help="the baseline preset or YAML (default: --config with _stop_ replaced by _baseline_)",
    )
    parser.add_argument("--question", default=DEFAULT_QUESTION, help="question for the prefill")
    parser.add_argument(
        "--signals",
        default="model",
        choices=["model", "synthetic"],
        help="model: the real pipeline (the model's own attention); synthetic: pixel-derived saliency and "
        "features fed to the pure pruners (the picture is then NOT model output)",
    )
    parser.add_argument("--columns", type=int, default=8, help="frames per row in kept_tokens.png")
    parser.set_defaults(func=run)


def _signals_note(args: argparse.Namespace, arch: str) -> str:
    if args.signals == "synthetic":
        return f"SYNTHETIC signals: pixel-derived saliency fed to the pure pruners ({arch} token geometry), not model output"
    model = args.model or f"embedded tiny random {arch}"
    return f"model signals: {model}"


def check_out_folder(out: str) -> None:
    """--out must be a folder (existing or creatable), never a file."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise CliError(f"--out {out!r} is a file; pass a folder for the PNGs and report.json")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise CliError(f"--out {out!r} cannot be created: {str(parent)!r} is a file")


def baseline_name(config_name: str) -> str:
    if "_stop_" in config_name:
        return config_name.replace("_stop_", "_baseline_")
    raise CliError(
        f"cannot derive a baseline from --config {config_name!r}; pass --baseline PRESET_OR_YAML explicitly"
    )


def run(args: argparse.Namespace) -> int:
    from .. import viz

    try:
        viz._pyplot()  # fail early, with the install hint, when matplotlib is missing
    except viz.VizDependencyError as exc:
        raise CliError(str(exc)) from None
    baseline_label = args.baseline or baseline_name(args.config)
    configs = {"baseline": resolve_config(baseline_label), "stop": resolve_config(args.config)}
    labels = {"baseline": baseline_label, "stop": args.config}
    check_inputs(args, args.question)
    if args.columns < 1:
        raise CliError(f"--columns={args.columns} must be a positive integer")
    check_out_folder(args.out)
    for key, config in configs.items():
        if config is None or config.is_identity:
            raise CliError(f"{labels[key]!r} prunes nothing (method none or retention 1.0): nothing to draw")

    from .run import synthetic_video

    progress = not args.no_progress
    path = Path(args.video) if args.video else synthetic_video(args.frames)
    frames = decode_frames(path, args.frames, progress=progress)

    if args.signals == "model":
        entries, arch = _model_entries(args, path, frames, configs, progress)
    else:
        entries, arch = _synthetic_entries(args, frames, configs)

    first = next(iter(entries.values()))
    grid = tuple(first["grid"])
    images = viz.frames_as_seen(frames, grid, arch, token_frames=int(first["frames"]))
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    named = {f"{labels[k]}": e for k, e in entries.items()}
    written = [
        viz.save(
            viz.kept_tokens_figure(images, named, columns=args.columns, title=_signals_note(args, arch)),
            out / "kept_tokens.png",
        ),
    ]
    sink = viz.sink_scores(entries["stop"], configs["stop"].gamma)
    if sink is not None:
        title = f"sink score ({labels['stop']}, {args.signals} signals)"
        written.append(viz.save(viz.sink_score_figure(sink, grid, images[0], title), out / "sink_score.png"))
    written.append(viz.save(viz.tokens_per_frame_figure(named), out / "tokens_per_frame.png"))

    from PIL import Image

    report: dict[str, Any] = {
        "video": str(path),
        "arch": arch,
        "signals": args.signals,
        "frames_sampled": int(len(frames)),
        "frame_size_seen": list(images.shape[1:3]),
        "runs": {},
    }
    for key, entry in entries.items():
        strip = out / f"overlay_{key}.png"
        Image.fromarray(viz.mosaic(viz.overlay(images, entry))).save(strip)
        written.append(strip)
        report["runs"][key] = {"config": labels[key], **viz.summarize(entry, configs[key].gamma)}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    written.append(out / "report.json")

    print(f"video: {path} ({len(frames)} frames sampled); signals: {args.signals}")
    for key, entry in entries.items():
        kept = viz.kept_tokens(entry)
        print(
            f"{labels[key]:<28} tokens {int(entry['tokens_before'])} -> {int(entry['tokens_after'])}, "
            f"{len(kept)} kept positions, {len(viz.merged_groups(entry))} merged groups"
        )
    for file in written:
        print(f"wrote {file}")
    return 0


def _model_entries(args, path, frames, configs, progress):
    from .run import answer

    llm = load_model(args)
    video = model_video(llm, path, frames)
    entries = {}
    for key, config in configs.items():
        llm.set_stop_config(config)
        result = answer(llm, video, args.question, 1, key, progress)
        if len(result.report) != 1:
            raise CliError(f"expected one pruned video in the prefill, found {len(result.report)}")
        entries[key] = result.report[0]
    return entries, llm.arch


def _synthetic_entries(args, frames, configs):
    from .. import viz
    from ..patches import architecture

    if args.model:
        raise CliError("--signals synthetic does not use a model; drop --model")
    arch = args.arch
    grid = architecture(arch).token_grid(frames)
    images = viz.frames_as_seen(frames, grid, arch)
    x = viz.synthetic_prune_input(images, grid)
    return {key: viz.prune_entry(x, config) for key, config in configs.items()}, arch
