"""`stop-hf compare`: the paper-style table (one row per run, headline metrics, relative drop, PDR, loyalty), with
each run's denominators. Runs that cannot be compared (other samples, frames or generation settings than their
reference) are refused unless `--allow-mismatch`; two results of the same model + config + benchmark are an
error."""

from __future__ import annotations

import argparse
from typing import Any

SHORT = {
    "eventhallusion": "EH",
    "videocomp": "VComp",
    "mvbench": "MVBench",
    "videomme": "VideoMME",
    "mlvu": "MLVU",
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="print the paper-style comparison table of several `stop-hf eval` results",
        description="Rows are runs (one per model + config), columns are each benchmark's headline metrics and its "
        "counts (evaluated/selected [of in benchmark], errors, unparsed; '!' marks an incomplete run). A run with --config none "
        "of the same model is the reference: PDR is the mean relative drop vs it, loyalty the % of answers that "
        "parse to the same option as its answers. Runs over different samples, frames or generation settings than "
        "their reference are refused unless --allow-mismatch.",
    )
    parser.add_argument("results", nargs="+", help="results JSON files written by `stop-hf eval`")
    parser.add_argument(
        "--reference", help="config name of the reference rows (default: none)", default="none"
    )
    parser.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="compare runs over different samples / frames / generation settings (the table says so)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..eval.runner import load_results

    print(format_table([load_results(p) for p in args.results], args.reference, args.allow_mismatch))
    return 0


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:.2f}"


def counts_cell(results: dict[str, Any]) -> str:
    """ "evaluated/selected [of in benchmark] e=errors u=unparsed", "!" when the run is incomplete."""
    c = results.get("counts")
    if not c:  # a results file from before counts existed
        return f"{results.get('n_samples', '?')}/? e={results.get('n_errors', '?')} (old format)"
    mark = "" if results.get("complete", True) else "!"
    of = f" of {c['in_benchmark']}" if c["selected"] != c["in_benchmark"] else ""
    return f"{c['evaluated']}/{c['selected']}{of} e={c['errors']} u={c['unparsed']}{mark}"


def _group(results: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    runs: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in results:
        key = (str(r.get("model")), str(r.get("config_name")))
        by_bench = runs.setdefault(key, {})
        if r["benchmark"] in by_bench:
            first, second = by_bench[r["benchmark"]].get("_path", "?"), r.get("_path", "?")
            raise ValueError(
                f"two {r['benchmark']} results for model {key[0]!r} + config {key[1]!r} ({first}, {second}); "
                "pass only one of them"
            )
        by_bench[r["benchmark"]] = r
    return runs


def build_rows(
    results: list[dict[str, Any]], reference: str = "none", allow_mismatch: bool = False
) -> tuple[list[str], list[list[Any]], list[str]]:
    """(header, rows, notes). Raises on duplicate runs, and on runs not comparable with their reference unless
    `allow_mismatch` (then each such pair is a note under the table)."""
    from ..eval.runner import compare_to_reference

    columns: list[tuple[str, str]] = []
    benchmarks: list[str] = []
    for r in results:
        if r["benchmark"] not in benchmarks:
            benchmarks.append(r["benchmark"])
        for metric in r.get("headline", []):
            if (r["benchmark"], metric) not in columns:
                columns.append((r["benchmark"], metric))
    runs = _group(results)
    header = ["model", "config"] + [f"{SHORT.get(b, b)}:{m}" for b, m in columns]
    header += [f"{SHORT.get(b, b)}:n" for b in benchmarks] + ["PDR %", "loyalty %"]
    rows, notes = [], []
    for (model, config), by_bench in runs.items():
        row: list[Any] = [model, config]
        for bench, metric in columns:
            r = by_bench.get(bench)
            row.append(r["metrics"].get(metric) if r else None)
        row += [counts_cell(by_bench[b]) if b in by_bench else None for b in benchmarks]
        drops, loyalties = [], []
        ref_run = runs.get((model, reference))
        if ref_run is not None and config != reference:
            for bench, r in by_bench.items():
                if bench in ref_run:
                    cmp = compare_to_reference(r, ref_run[bench], allow_mismatch=allow_mismatch)
                    if cmp["mismatches"]:
                        notes.append(
                            f"NOT COMPARABLE (--allow-mismatch): {model} {config} vs {reference} on "
                            f"{SHORT.get(bench, bench)}: {'; '.join(cmp['mismatches'])}"
                        )
                    drops += list(cmp["relative_drop"].values())
                    if cmp["loyalty"] is not None:
                        loyalties.append(cmp["loyalty"])
        row.append(sum(drops) / len(drops) if drops else None)
        row.append(sum(loyalties) / len(loyalties) if loyalties else None)
        rows.append(row)
    if any(not r.get("complete", True) for r in results):
        notes.append(
            "! = incomplete run: errors (counted as wrong), broken annotation entries or samples not run"
        )
    return header, rows, notes


def format_table(results: list[dict[str, Any]], reference: str = "none", allow_mismatch: bool = False) -> str:
    header, rows, notes = build_rows(results, reference, allow_mismatch)
    cells = [header] + [[_fmt(c) if i >= 2 else str(c) for i, c in enumerate(row)] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + notes)
