"""Score any system's answers with the same rules as `stop-hf eval`: no model, no videos, only the annotations.

Reads the benchmark's official prediction format where one exists, and stop-hf's own per-sample JSONL otherwise:

- EventHallusion: `{split: {video_id: {"qa": [{"question", "answer", "prediction"}], "judgement": ...}}}`, as
  Stevetich/EventHallusion ships for Gemini, GPT-4o and Video-LLaVA (`predictions/*.json`, read by its eval.py).
- Video-MME: the grouped `output_test_template.json` with a `response` per question (BradyFU/Video-MME).
- any benchmark: a stop-hf records JSONL (`id` + `answer`; or `error`), re-scored from the answer text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .benchmarks import (
    AnnotationError,
    Benchmark,
    Sample,
    eh_split,
    eh_video_key,
    flatten_videomme,
    get_benchmark,
    read_text,
)
from .runner import _record, load_samples, summarize


def _read_predictions(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    text = read_text(path)  # a byte that is not UTF-8 is named by line
    try:
        return json.loads(text)
    except json.JSONDecodeError as first:
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if lineno == len(text.splitlines()) and rows:
                    break  # a torn last line of an interrupted run
                raise AnnotationError(
                    f"{path}: neither JSON ({first.msg} at line {first.lineno}) nor JSONL (line {lineno})"
                ) from first
        return rows


def _scored(bench: Benchmark, sample: Sample, answer: str | None) -> dict[str, Any]:
    record = _record(sample)
    record["answer"] = answer
    record["score"] = bench.score(sample, answer)
    return record


def _from_jsonl(bench: Benchmark, samples: list[Sample], rows: list[Any]) -> dict[str, dict[str, Any]]:
    by_id = {s.id: s for s in samples}
    records: dict[str, dict[str, Any]] = {}
    for row in rows:
        if not isinstance(row, dict) or row.get("id") not in by_id:
            continue
        sample = by_id[row["id"]]
        if "error" in row or row.get("skipped"):
            records[sample.id] = {**_record(sample), **{k: row[k] for k in ("error", "skipped") if k in row}}
        elif sample.kind == "judge":
            verdict = row.get("score", {}).get("verdict") if isinstance(row.get("score"), dict) else None
            if verdict is None:
                records[sample.id] = {**_record(sample), "skipped": "no judge verdict in the predictions"}
            else:
                records[sample.id] = {**_record(sample), "answer": row.get("answer")}
                records[sample.id]["score"] = bench.judge_score(sample, verdict)
        elif "answer" in row:
            records[sample.id] = _scored(bench, sample, row["answer"])
    return records


def _from_eventhallusion(bench: Benchmark, samples: list[Sample], data: dict, path: Path) -> dict[str, dict]:
    index = {}
    for s in samples:
        index[(s.meta["split"], s.meta["video_key"], s.id.rsplit("/", 1)[1])] = s
    records: dict[str, dict[str, Any]] = {}
    for split_name, videos in data.items():
        if not isinstance(videos, dict):
            raise AnnotationError(f"{path}: split {split_name!r} should map video ids to predictions")
        split = eh_split(split_name)
        for video_id, entry in videos.items():
            key = eh_video_key(str(video_id))
            for j, qa in enumerate(entry.get("qa", []) if isinstance(entry, dict) else []):
                sample = index.get((split, key, f"q{j}"))
                if sample is not None and isinstance(qa, dict):
                    records[sample.id] = _scored(bench, sample, qa.get("prediction"))
            sample = index.get((split, key, "desc"))
            if sample is not None and isinstance(entry, dict) and "judgement" in entry:
                record = {**_record(sample), "answer": entry.get("desc")}
                record["score"] = bench.judge_score(sample, entry.get("judgement"))
                records[sample.id] = record
    return records


def _from_videomme(bench: Benchmark, samples: list[Sample], data: list, path: Path) -> dict[str, dict]:
    by_id = {s.id: s for s in samples}
    records: dict[str, dict[str, Any]] = {}
    for row in flatten_videomme(data, path):
        if isinstance(row, dict) and str(row.get("question_id")) in by_id and "response" in row:
            sample = by_id[str(row["question_id"])]
            records[sample.id] = _scored(bench, sample, row["response"])
    return records


def score_predictions(benchmark: str, data_dir: str | Path, predictions_path: str | Path) -> dict[str, Any]:
    """The metrics dict of a results JSON (metrics, counts, headline, ...) for the predictions in
    `predictions_path`, scored against the annotations in `data_dir` (videos are not needed). Samples without a
    prediction are counted as `not_run` and make the result incomplete."""
    bench = get_benchmark(benchmark)
    samples, n_total = load_samples(bench, data_dir)
    path = Path(predictions_path)
    data = _read_predictions(path)
    if bench.name == "eventhallusion" and isinstance(data, dict) and "id" not in data:
        records, source = _from_eventhallusion(bench, samples, data, path), "eventhallusion-official"
    elif (
        bench.name == "videomme"
        and isinstance(data, list)
        and any(isinstance(v, dict) and isinstance(v.get("questions"), list) for v in data)
    ):
        records, source = _from_videomme(bench, samples, data, path), "videomme-official"
    else:
        rows = data if isinstance(data, list) else [data]
        records, source = _from_jsonl(bench, samples, rows), "stop-hf-jsonl"
    if not records:
        raise AnnotationError(
            f"{path}: no prediction matches a {bench.name} sample in {data_dir} (read as {source}); "
            "see docs/evaluation.md for the accepted formats"
        )
    ordered = [records[s.id] for s in samples if s.id in records]
    return {
        "benchmark": bench.name,
        "data": str(data_dir),
        "predictions": str(path),
        "predictions_format": source,
        **summarize(bench, samples, ordered, n_total),
    }
