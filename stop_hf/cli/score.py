"""`stop-hf score`: score any system's answers (official prediction files or stop-hf JSONL) without a model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..eval.benchmarks import REGISTRY

    parser = subparsers.add_parser(
        "score",
        help="score a predictions file with the benchmark's official rules (no model, no videos)",
        description="Reads the benchmark's official prediction format (EventHallusion predictions/*.json, Video-MME "
        "output_test_template.json with `response`) or a stop-hf records JSONL, and prints the same metrics and "
        "counts as `stop-hf eval` writes. Only the annotation files in --data are needed.",
    )
    parser.add_argument("--benchmark", required=True, help=f"one of {sorted(REGISTRY)}")
    parser.add_argument("--data", required=True, help="the benchmark's data folder (annotations)")
    parser.add_argument("--predictions", required=True, help="the predictions file")
    parser.add_argument("--out", help="also write the metrics as JSON here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..eval.score import score_predictions

    if not Path(args.data).is_dir():
        raise FileNotFoundError(f"data folder not found: {args.data}")
    result = score_predictions(args.benchmark, args.data, args.predictions)
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    headline = {k: result["metrics"].get(k) for k in result["headline"]}
    c = result["counts"]
    print(json.dumps({"headline": headline, "counts": c, "complete": result["complete"]}, indent=2))
    if not result["complete"]:
        print(
            f"INCOMPLETE: {c['not_run']} sample(s) without a prediction, {c['errors']} error(s), "
            f"{c['invalid_entries']} broken annotation entries"
        )
    return 0
