"""`stop-hf compare`: the paper-style table (one row per run, headline metrics, relative drop, PDR, loyalty)."""

from __future__ import annotations

import argparse
from typing import Any

SHORT = {
    "eventhallusion": "EH",
    "videocomp": "VComp",
    "mvbench": "MVBench",
    "videomme": "VideoMME",
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="print the paper-style comparison table of several `stop-hf eval` results",
        description="Rows are runs (one per model + config), columns are each benchmark's headline metrics. A run "
        "with --config none of the same model is the reference: PDR is the mean relative drop vs it, loyalty the "
        "% of answers equal to its answers.",
    )
    parser.add_argument("results", nargs="+", help="results JSON files written by `stop-hf eval`")
    parser.add_argument(
        "--reference", help="config name of the reference rows (default: none)", default="none"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..eval.runner import load_results

    print(format_table([load_results(p) for p in args.results], args.reference))
    return 0


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:.2f}"


def build_rows(results: list[dict[str, Any]], reference: str = "none") -> tuple[list[str], list[list[Any]]]:
    from ..eval.runner import compare_to_reference

    columns: list[tuple[str, str]] = []
    for r in results:
        for metric in r.get("headline", []):
            if (r["benchmark"], metric) not in columns:
                columns.append((r["benchmark"], metric))
    runs: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in results:
        runs.setdefault((str(r.get("model")), str(r.get("config_name"))), {})[r["benchmark"]] = r
    header = ["model", "config"] + [f"{SHORT.get(b, b)}:{m}" for b, m in columns] + ["PDR %", "loyalty %"]
    rows = []
    for (model, config), by_bench in runs.items():
        row: list[Any] = [model, config]
        for bench, metric in columns:
            r = by_bench.get(bench)
            row.append(r["metrics"].get(metric) if r else None)
        drops, loyalties = [], []
        ref_run = runs.get((model, reference))
        if ref_run is not None and config != reference:
            for bench, r in by_bench.items():
                if bench in ref_run:
                    cmp = compare_to_reference(r, ref_run[bench])
                    drops += list(cmp["relative_drop"].values())
                    if cmp["loyalty"] is not None:
                        loyalties.append(cmp["loyalty"])
        row.append(sum(drops) / len(drops) if drops else None)
        row.append(sum(loyalties) / len(loyalties) if loyalties else None)
        rows.append(row)
    return header, rows


def format_table(results: list[dict[str, Any]], reference: str = "none") -> str:
    header, rows = build_rows(results, reference)
    cells = [header] + [[_fmt(c) if i >= 2 else str(c) for i, c in enumerate(row)] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
