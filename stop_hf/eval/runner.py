"""The evaluation loop: resumable per-sample JSONL, a progress bar with ETA, and a results JSON."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from ..runner import VideoClip
from .benchmarks import Benchmark, Sample, get_benchmark
from .metrics import relative_drop

RESULTS_VERSION = 1


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for package in ("stop-hf", "torch", "transformers"):
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            out[package] = "not installed"
    return out


def device_info(llm: Any) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.processor()}
    model = getattr(llm, "model", None)
    device = getattr(model, "device", None)
    info["device"] = str(device) if device is not None else "n/a"
    info["dtype"] = str(getattr(model, "dtype", "n/a"))
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Per-sample records of a (possibly interrupted) run; a torn last line and the run header are ignored."""
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "id" in record:
                records.append(record)
    return records


#: run_info fields that change answers: a JSONL written with other values must not be resumed into this run
RUN_IDENTITY = ("model", "config_name", "config", "frames", "max_new_tokens")


def run_identity(
    benchmark: str, run_info: dict[str, Any] | None, max_new_tokens: int | None
) -> dict[str, Any]:
    info = {**(run_info or {}), "max_new_tokens": max_new_tokens}
    return {"benchmark": benchmark, **{k: info.get(k) for k in RUN_IDENTITY}}


def check_resumable(path: Path, identity: dict[str, Any]) -> bool:
    """True when `path` holds records of this same run (or nothing yet); raises when another run wrote it."""
    if not path.is_file() or not path.stat().st_size:
        return False
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    try:
        header = json.loads(first).get("run")
    except (json.JSONDecodeError, AttributeError):
        header = None
    if header is None:
        return True  # records written before run headers existed: trust the user's --out
    for key, value in identity.items():
        if json.loads(json.dumps(value, default=str)) != header.get(key):
            raise ValueError(
                f"{path} holds records of another run ({key}={header.get(key)!r}, this run has {value!r}); "
                "pass a different --out, or delete the file to start over"
            )
    return True


def _record(sample: Sample) -> dict[str, Any]:
    meta = {k: v for k, v in sample.meta.items() if k != "event_info"}
    return {
        "id": sample.id,
        "kind": sample.kind,
        "video": str(sample.video),
        "gt": sample.answer,
        "meta": meta,
        **({"window": list(sample.window)} if sample.window else {}),
    }


def evaluate_sample(
    bench: Benchmark, llm: Any, sample: Sample, judge: Any, max_new_tokens: int | None
) -> dict:
    record = _record(sample)
    if sample.kind == "judge" and judge is None:
        record["skipped"] = "no judge configured"
        return record
    if not Path(sample.video).is_file():
        record["error"] = f"missing video file: {sample.video}"
        return record
    limit = max_new_tokens or (
        getattr(bench, "desc_max_new_tokens", bench.max_new_tokens)
        if sample.kind == "judge"
        else bench.max_new_tokens
    )
    video = VideoClip(sample.video, *sample.window) if sample.window else sample.video
    try:
        answer = llm.answer(video, bench.prompt(sample), max_new_tokens=limit)
    except Exception as exc:  # noqa: BLE001 - one broken sample must not stop the run; it is recorded
        record["error"] = f"{type(exc).__name__}: {exc}"
        return record
    record["answer"] = answer.text
    for key in ("prompt_tokens", "prompt_tokens_after", "video_tokens", "video_tokens_after"):
        record[key] = getattr(answer, key, None)
    record["timings"] = getattr(answer, "timings", {})
    if sample.kind == "judge":
        try:
            verdict = judge(bench.judge_prompt(sample, answer.text))
        except Exception as exc:  # noqa: BLE001
            record["error"] = f"judge failed: {exc}"
            return record
        record["score"] = bench.judge_score(sample, verdict)
    else:
        record["score"] = bench.score(sample, answer.text)
    return record


def evaluate(
    llm: Any,
    benchmark: str | Benchmark,
    data_dir: str | Path,
    out: str | Path,
    *,
    limit: int | None = None,
    judge: Any = None,
    max_new_tokens: int | None = None,
    run_info: dict[str, Any] | None = None,
    reference: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Runs (or resumes) one benchmark and writes `out` (results JSON) and `out.with_suffix('.jsonl')` (records)."""
    from tqdm.auto import tqdm

    bench = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    samples = bench.load(data_dir)
    if limit is not None:
        samples = samples[:limit]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    records_path = out.with_suffix(".jsonl")
    identity = run_identity(bench.name, run_info, max_new_tokens)
    resuming = check_resumable(records_path, identity)
    done = {r["id"]: r for r in read_jsonl(records_path)}
    # a skipped judge sample is retried when a judge is now configured
    todo = [s for s in samples if s.id not in done or (judge is not None and done[s.id].get("skipped"))]
    started = time.perf_counter()
    with open(records_path, "a", encoding="utf-8") as f:
        if not resuming:  # the header that lets a later run check it resumes the same run
            f.write(json.dumps({"run": identity}, default=str) + "\n")
        bar = tqdm(todo, desc=bench.name, unit="sample", disable=not progress, dynamic_ncols=True)
        for sample in bar:
            record = evaluate_sample(bench, llm, sample, judge, max_new_tokens)
            done[sample.id] = record
            f.write(json.dumps(record) + "\n")
            f.flush()
    records = [done[s.id] for s in samples if s.id in done]
    results = {
        "format": RESULTS_VERSION,
        "benchmark": bench.name,
        "data": str(Path(data_dir)),
        **(run_info or {}),
        "judge": getattr(judge, "name", None),
        "headline": bench.headline,
        "metrics": bench.aggregate(records),
        "n_samples": len(samples),
        "n_errors": sum("error" in r for r in records),
        "n_skipped": sum(bool(r.get("skipped")) for r in records),
        "errors": {r["id"]: r["error"] for r in records if "error" in r},
        "efficiency": _efficiency(records),
        "records": str(records_path.resolve()),
        "seconds_this_run": time.perf_counter() - started,
        "versions": versions(),
        "device": device_info(llm),
    }
    if reference is not None:
        results["vs_reference"] = compare_to_reference(results, load_results(reference))
    out.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    return results


def _efficiency(records: list[dict[str, Any]]) -> dict[str, Any]:
    answered = [r for r in records if "answer" in r and r.get("video_tokens")]
    if not answered:
        return {}
    n = len(answered)
    return {
        "video_tokens": sum(r["video_tokens"] for r in answered) / n,
        "video_tokens_after": sum(r["video_tokens_after"] for r in answered) / n,
        "prefill_seconds": sum(r["timings"].get("prefill", 0.0) for r in answered) / n,
        "total_seconds": sum(r["timings"].get("total", 0.0) for r in answered) / n,
    }


def load_results(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    results = json.loads(path.read_text(encoding="utf-8"))
    if "metrics" not in results or "benchmark" not in results:
        raise ValueError(f"{path} is not a stop-hf eval results file")
    records = Path(results.get("records", ""))
    if not records.is_file() and path.with_suffix(".jsonl").is_file():  # moved together with its records
        results["records"] = str(path.with_suffix(".jsonl"))
    return results


def headline_values(results: dict[str, Any]) -> dict[str, float]:
    metrics = results["metrics"]
    return {k: metrics[k] for k in results.get("headline", []) if isinstance(metrics.get(k), (int, float))}


def loyalty(records: list[dict[str, Any]], reference_records: list[dict[str, Any]]) -> float | None:
    """% of samples (scored in both runs) whose parsed answer equals the unpruned run's parsed answer."""
    ref = {r["id"]: r["score"].get("pred") for r in reference_records if "score" in r}
    same = [r["score"].get("pred") == ref[r["id"]] for r in records if "score" in r and r["id"] in ref]
    return 100.0 * sum(same) / len(same) if same else None


def compare_to_reference(results: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Relative drop per headline metric (and their mean, the paper's PDR) and loyalty vs the unpruned run."""
    if results["benchmark"] != reference["benchmark"]:
        raise ValueError(f"cannot compare {results['benchmark']} with reference {reference['benchmark']}")
    mine, ref = headline_values(results), headline_values(reference)
    drops = {k: relative_drop(ref[k], mine[k]) for k in mine if k in ref}
    drops = {k: 100.0 * v for k, v in drops.items() if v is not None}
    return {
        "relative_drop": drops,
        "pdr": sum(drops.values()) / len(drops) if drops else None,
        "loyalty": loyalty(read_jsonl(Path(results["records"])), read_jsonl(Path(reference["records"]))),
    }
