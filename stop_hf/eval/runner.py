"""The evaluation loop: crash-safe resumable per-sample JSONL, a progress bar with ETA, and a results JSON.

The JSONL's first line is the run header (`{"run": identity}`); every record carries the identity's digest. A
resume with any other benchmark, data folder, model, config, frames, generation settings or package version is
refused, so two runs' answers are never scored together. A torn last line (a crash mid-write) is cut off before
appending; records are flushed at once and fsync'ed every `FSYNC_EVERY` records / `FSYNC_SECONDS` seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..runner import VideoClip
from .benchmarks import Benchmark, Sample, get_benchmark
from .distributed import Ranks, rank_record_files, rank_records_path, shard
from .metrics import relative_drop

RESULTS_VERSION = 2
FSYNC_EVERY = 10
FSYNC_SECONDS = 5.0
#: greedy decoding, as every benchmark's official inference; recorded so `compare` can check it
GENERATION_DEFAULTS = {"do_sample": False, "num_beams": 1}


def package_version() -> str:
    import importlib.metadata as md

    try:
        return md.version("stop-hf")
    except md.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


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


# ------------------------------------------------------------------------------------------------ run identity
#: run_info fields that change answers
RUN_IDENTITY = ("model", "config_name", "config", "frames")


def generation_settings(max_new_tokens: int | None) -> dict[str, Any]:
    return {"max_new_tokens": max_new_tokens, **GENERATION_DEFAULTS}


def run_identity(
    benchmark: str,
    data_dir: str | Path | None,
    run_info: dict[str, Any] | None,
    max_new_tokens: int | None,
) -> dict[str, Any]:
    """What a resumed run must share with the run that wrote the records (the benchmark's protocol included:
    prompt, system message, pre-fill and default generation length)."""
    info = run_info or {}
    identity = {
        "benchmark": benchmark,
        "protocol": get_benchmark(benchmark).protocol(),
        "data": None if data_dir is None else str(Path(data_dir).resolve()),
        **{k: info.get(k) for k in RUN_IDENTITY},
        "generation": generation_settings(max_new_tokens),
        "stop_hf_version": package_version(),
    }
    return json.loads(json.dumps(identity, default=str))


def identity_digest(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [
        f"{key}={old.get(key)!r} (this run: {new.get(key)!r})"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def decode_lines(path: Path, raw: bytes) -> list[str]:
    """`raw` (the bytes of the JSONL `path`) as text lines; a line that is not UTF-8 is an error naming the file,
    the line and the byte (a damaged file, or one written by another tool in another encoding)."""
    lines = []
    for lineno, chunk in enumerate(raw.split(b"\n"), 1):
        try:
            lines.append(chunk.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"{path}: line {lineno} is not UTF-8 text (byte 0x{chunk[exc.start]:02x} at column "
                f"{exc.start + 1}); the file is damaged. Pass a different --out, or delete the file to start over"
            ) from None
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Per-sample records of a (possibly interrupted) run, later lines replacing earlier ones of the same id; the
    header and a torn last line are ignored (read-only: `open_records` is what repairs a file)."""
    records: dict[str, dict[str, Any]] = {}
    path = Path(path)
    if path.is_file():
        for line in decode_lines(path, path.read_bytes()):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "id" in record:
                records[record["id"]] = record
    return list(records.values())


def open_records(
    path: Path, identity: dict[str, Any], repair: bool = True
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The records already in `path` for this run (by id, the last line of an id winning) and notes on repairs.

    Raises when `path` was written by another run (header or record digests differ), has no header but holds
    records (its run cannot be verified), or is corrupt before its last line. A torn last line is truncated
    (`repair=False`: only left out, for a check that must not write)."""
    notes: list[str] = []
    if not path.is_file() or not path.stat().st_size:
        return {}, notes
    raw = path.read_bytes()
    if not raw.endswith(b"\n"):
        keep = raw.rfind(b"\n") + 1
        if repair:
            with open(path, "r+b") as f:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
            notes.append(f"{path}: cut off a torn last line ({len(raw) - keep} bytes, an interrupted write)")
        raw = raw[:keep]
    lines = decode_lines(path, raw)
    if not lines:
        return {}, notes
    digest = identity_digest(identity)
    records: dict[str, dict[str, Any]] = {}
    header = None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path}: line {lineno} is not valid JSON ({exc.msg}); the file is damaged before its end. "
                "Pass a different --out, or delete the file to start over"
            ) from exc
        if lineno == 1 and isinstance(row, dict) and "run" in row and "id" not in row:
            header = row["run"]
            diffs = _differences(header, identity)
            if diffs:
                raise ValueError(
                    f"{path} holds records of another run: {'; '.join(diffs)}. "
                    "Pass a different --out, or delete the file to start over"
                )
            continue
        if header is None:
            raise ValueError(
                f"{path} has no run header, so the run that wrote its records cannot be checked. "
                "Pass a different --out, or delete the file to start over"
            )
        if not isinstance(row, dict) or "id" not in row:
            raise ValueError(f"{path}: line {lineno} is not a per-sample record")
        if row.get("run") != digest:
            raise ValueError(
                f"{path}: line {lineno} ({row['id']}) was written by another run (digest {row.get('run')}, this "
                f"run {digest}). Pass a different --out, or delete the file to start over"
            )
        records[row["id"]] = row
    return records, notes


class RecordWriter:
    """Appends JSON lines: flushed at once, fsync'ed every `FSYNC_EVERY` records / `FSYNC_SECONDS`, and on close."""

    def __init__(self, path: Path):
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close() / __exit__
        self.pending = 0
        self.last_sync = time.monotonic()

    def write(self, row: dict[str, Any]) -> None:
        self.file.write(json.dumps(row, default=str, ensure_ascii=False) + "\n")
        self.file.flush()
        self.pending += 1
        if self.pending >= FSYNC_EVERY or time.monotonic() - self.last_sync >= FSYNC_SECONDS:
            self.sync()

    def sync(self) -> None:
        os.fsync(self.file.fileno())
        self.pending, self.last_sync = 0, time.monotonic()

    def close(self) -> None:
        if not self.file.closed:
            self.sync()
            self.file.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------- one sample
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


def _video_input(llm: Any, sample: Sample) -> Any:
    path = Path(sample.video)
    if path.is_dir():  # a frame folder (MVBench episodic_reasoning)
        from .benchmarks import MVBENCH_FRAME_FPS
        from .frames import read_frame_folder

        return read_frame_folder(path, getattr(llm, "num_frames", 8), sample.window, MVBENCH_FRAME_FPS)
    return VideoClip(path, *sample.window) if sample.window else path


def _generation_limit(bench: Benchmark, sample: Sample, max_new_tokens: int | None) -> int:
    return max_new_tokens or (
        getattr(bench, "desc_max_new_tokens", bench.max_new_tokens)
        if sample.kind == "judge"
        else bench.max_new_tokens
    )


def _unanswerable(sample: Sample, judge: Any) -> dict[str, Any] | None:
    """The final record of a sample the model cannot be asked about (no judge, missing video), else None."""
    record = _record(sample)
    if sample.kind == "judge" and judge is None:
        record["skipped"] = "no judge configured"
        return record
    if not Path(sample.video).exists():
        record["error"] = f"missing video file: {sample.video}"
        return record
    return None


def _answered(bench: Benchmark, sample: Sample, answer: Any, judge: Any) -> dict[str, Any]:
    """The record of an answered sample: text, token counts, timings and its official score."""
    record = _record(sample)
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


def _failed(sample: Sample, exc: Exception) -> dict[str, Any]:
    return {**_record(sample), "error": f"{type(exc).__name__}: {exc}"}


def evaluate_sample(
    bench: Benchmark, llm: Any, sample: Sample, judge: Any, max_new_tokens: int | None
) -> dict:
    record = _unanswerable(sample, judge)
    if record is not None:
        return record
    limit = _generation_limit(bench, sample, max_new_tokens)
    try:
        answer = llm.answer(
            _video_input(llm, sample),
            bench.prompt(sample),
            max_new_tokens=limit,
            **bench.generation_kwargs(sample),
        )
    except Exception as exc:  # noqa: BLE001 - one broken sample must not stop the run; it is recorded
        return _failed(sample, exc)
    return _answered(bench, sample, answer, judge)


def evaluate_batched(
    bench: Benchmark,
    llm: Any,
    samples: list[Sample],
    judge: Any,
    max_new_tokens: int | None,
    batch_size: int,
    emit: Callable[[dict[str, Any]], None],
) -> None:
    """Runs `samples` in batches of up to `batch_size` that share a frame count and a generation length (one
    left-padded `generate` each; lean batches make each row equal its single run), calling `emit(record)` per
    sample as soon as it is known. A sample whose video fails to decode is recorded alone; a batch whose
    generation fails is run again one sample at a time, so each failure is recorded on its own sample."""
    pending: dict[tuple[int, int, tuple], list[tuple[Sample, Any]]] = {}

    def run(items: list[tuple[Sample, Any]], limit: int) -> None:
        try:
            answers = llm.answer_batch(
                [video for _, video in items],
                [bench.prompt(s) for s, _ in items],
                max_new_tokens=limit,
                **bench.generation_kwargs(items[0][0]),
            )
        except Exception as exc:  # noqa: BLE001 - recorded on the sample that broke the batch, the run goes on
            if len(items) == 1:
                emit(_failed(items[0][0], exc))
            else:
                for item in items:
                    run([item], limit)
            return
        for (sample, _), answer in zip(items, answers):
            emit(_answered(bench, sample, answer, judge))

    def flush(key: tuple[int, int, tuple]) -> None:
        run(pending.pop(key), key[1])

    for sample in samples:
        record = _unanswerable(sample, judge)
        if record is not None:
            emit(record)
            continue
        try:
            video = llm.decode_video(_video_input(llm, sample))
        except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
            emit(_failed(sample, exc))
            continue
        protocol = tuple(sorted(bench.generation_kwargs(sample).items()))  # one system / pre-fill per batch
        key = (llm.frame_count(video), _generation_limit(bench, sample, max_new_tokens), protocol)
        pending.setdefault(key, []).append((sample, video))
        if len(pending[key]) >= batch_size:
            flush(key)
    for key in list(pending):
        flush(key)


def check_generation_length(max_new_tokens: int | None) -> None:
    if max_new_tokens is not None and (
        isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1
    ):
        raise ValueError(
            f"max_new_tokens={max_new_tokens!r}: must be an integer >= 1 (0 new tokens would score empty answers); "
            "leave it unset for the benchmark's own length"
        )


def load_samples(
    bench: Benchmark, data_dir: str | Path, limit: int | None = None
) -> tuple[list[Sample], int]:
    """(selected samples, samples in the benchmark): validates the annotations (broken entries go to
    `bench.invalid`) without touching any video."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit={limit!r}: must be an integer >= 1")
    samples = bench.load(data_dir)
    return (samples[:limit] if limit is not None else samples), len(samples)


def check_ground_truth(done: dict[str, dict[str, Any]], samples: list[Sample], records_path: Path) -> None:
    """Refuses to resume when the annotations changed under the records: a record written with another
    ground truth than its sample has now would be counted with the old one."""
    for sample in samples:
        old = done.get(sample.id)
        if old is not None and "gt" in old and old["gt"] != sample.answer:
            raise ValueError(
                f"{records_path}: sample {sample.id}: its ground truth changed since the record was written "
                f"(records: {old['gt']!r}, annotations now: {sample.answer!r}), so the data folder is not the one "
                "this run started on. Pass a different --out to start a fresh run, or delete the file"
            )


def _standing(record: dict[str, Any]) -> int:
    return 0 if "error" in record else 1 if record.get("skipped") else 2


def existing_records(
    records_path: Path, identity: dict[str, Any], own: Path | None = None
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Every record of this run already written: `records_path` (`OUT.jsonl`) and all its rank files, each checked
    against `identity` (another run's file raises). Only `own` (the file this process appends to) is repaired; the
    others are read as they are. Across files an answered record beats a skipped one, which beats an error."""
    done: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    paths = [records_path, *rank_record_files(records_path)]
    if own is not None and own not in paths:
        paths.append(own)
    paths.sort(key=lambda path: path == own)  # the own file last: its records are the newest
    for path in paths:
        records, repaired = open_records(path, identity, repair=path == own)
        notes += repaired
        for key, record in records.items():
            if key not in done or _standing(record) >= _standing(done[key]):
                done[key] = record
    return done, notes


def merge_rank_files(records_path: Path, identity: dict[str, Any], order: list[str]) -> None:
    """Writes every record of `records_path` and its rank files into `records_path` (header first, then the ids
    of `order`, then any others), atomically, then removes the rank files. A crash at any point loses nothing:
    the rank files go only once the merged file is on disk."""
    rank_files = rank_record_files(records_path)
    if not rank_files:
        return
    done, _ = existing_records(records_path, identity)
    position = {key: i for i, key in enumerate(order)}
    ids = sorted(done, key=lambda key: (position.get(key, len(order)), key))
    partial = records_path.with_name(records_path.name + ".merging")
    with open(partial, "w", encoding="utf-8") as f:
        f.write(json.dumps({"run": identity}, default=str, ensure_ascii=False) + "\n")
        for key in ids:
            f.write(json.dumps(done[key], default=str, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, records_path)
    for path in rank_files:
        path.unlink()


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
    retry_errors: bool = True,
    samples: list[Sample] | None = None,
    n_in_benchmark: int | None = None,
    batch_size: int = 1,
    ranks: Ranks | None = None,
) -> dict[str, Any]:
    """Runs (or resumes) one benchmark; writes `out` (results JSON) and `out.with_suffix('.jsonl')` (records).

    Samples recorded with an error (a missing video, a failed generation) are run again on resume unless
    `retry_errors=False`. Pass `samples` (from `load_samples`) to validate the annotations before loading a model.
    `batch_size` > 1 runs samples of one frame count together (`VideoLLM.answer_batch`). Under `accelerate launch`
    (`ranks` from `distributed.launched_ranks`) each rank runs its share into `OUT.rank<R>.jsonl`, and the main
    process merges and scores: it returns the results, the other ranks `{"rank": R, ...}` with their counts."""
    from tqdm.auto import tqdm

    check_generation_length(max_new_tokens)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: must be an integer >= 1")
    ranks = ranks or Ranks()
    bench = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    if samples is None:
        samples, n_in_benchmark = load_samples(bench, data_dir, limit)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    records_path = out.with_suffix(".jsonl")
    own_path = records_path if ranks.world_size == 1 else rank_records_path(records_path, ranks.rank)
    identity = run_identity(bench.name, data_dir, run_info, max_new_tokens)
    digest = identity_digest(identity)
    done, notes = existing_records(records_path, identity, own=own_path)
    check_ground_truth(done, samples, records_path)
    for note in notes:
        print(f"stop-hf eval: {note}", file=sys.stderr)

    def needs_run(sample: Sample) -> bool:
        old = done.get(sample.id)
        if old is None:
            return True
        if "error" in old:
            return retry_errors
        return bool(judge is not None and old.get("skipped"))  # a skipped judged sample, now with a judge

    mine = shard(samples, ranks.rank, ranks.world_size)
    todo = [s for s in mine if needs_run(s)]
    started = time.perf_counter()
    computed: list[dict[str, Any]] = []
    with RecordWriter(own_path) as writer:
        if not own_path.stat().st_size:  # the header that lets a later run check it resumes the same run
            writer.write({"run": identity})
        where = f" [rank {ranks.rank}/{ranks.world_size}]" if ranks.world_size > 1 else ""
        bar = tqdm(
            total=len(todo),
            desc=bench.name + where,
            unit="sample",
            disable=not progress,
            dynamic_ncols=True,
            position=ranks.rank,
        )

        def emit(record: dict[str, Any]) -> None:
            record = {**record, "run": digest}
            done[record["id"]] = record
            computed.append(record)
            writer.write(record)
            bar.update(1)

        if batch_size == 1:
            for sample in todo:
                emit(evaluate_sample(bench, llm, sample, judge, max_new_tokens))
        else:
            evaluate_batched(bench, llm, todo, judge, max_new_tokens, batch_size, emit)
        bar.close()
    mine_stats = {
        "rank": ranks.rank,
        "samples": len(mine),
        "run": len(todo),
        "seconds": time.perf_counter() - started,
        **_token_totals(computed),
    }
    ranks.wait()  # every rank's records are on disk
    gathered = ranks.gather((mine_stats, [r["id"] for r in computed]))
    if not ranks.is_main:
        return {"rank": ranks.rank, "world_size": ranks.world_size, **mine_stats}
    per_rank = [stats for stats, _ in gathered]
    merge_rank_files(records_path, identity, [s.id for s in samples])
    if ranks.world_size > 1:
        done, _ = existing_records(records_path, identity)
        for stats, ids in gathered:
            unseen = [key for key in ids if key not in done]
            if unseen:  # e.g. another node wrote to its own local disk
                raise RuntimeError(
                    f"rank {stats['rank']} wrote {len(unseen)} record(s) the main process cannot read in "
                    f"{records_path.parent} (first: {unseen[0]}); with several nodes, --out must be on a filesystem "
                    "every node shares. Nothing is lost: the rank files stay where they were written"
                )
    seconds = time.perf_counter() - started
    records = [done[s.id] for s in samples if s.id in done]
    results = {
        "format": RESULTS_VERSION,
        "benchmark": bench.name,
        "data": str(Path(data_dir)),
        **(run_info or {}),
        "identity": identity,
        "generation": identity["generation"],
        "judge": getattr(judge, "name", None),
        **summarize(bench, samples, records, n_in_benchmark or len(samples)),
        "repairs": notes,
        "efficiency": _efficiency(records),
        "world_size": ranks.world_size,
        "batch_size": batch_size,
        "per_rank": per_rank,
        "throughput": _throughput(per_rank, seconds),
        "records": str(records_path.resolve()),
        "seconds_this_run": seconds,
        "versions": versions(),
        "device": device_info(llm),
    }
    if reference is not None:
        try:
            results["vs_reference"] = compare_to_reference(results, load_results(reference))
        except ValueError as exc:  # the run's own results are still written
            results["vs_reference"] = {"refused": str(exc)}
    out.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    return results


def _token_totals(records: list[dict[str, Any]]) -> dict[str, int]:
    """Samples answered and their video tokens before / after pruning, over `records`."""
    answered = [r for r in records if "answer" in r and r.get("video_tokens") is not None]
    return {
        "answered": len(answered),
        "video_tokens": sum(r["video_tokens"] for r in answered),
        "video_tokens_after": sum(r["video_tokens_after"] for r in answered),
    }


def _throughput(per_rank: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """This launch's rates over its wall time (all ranks together): samples run (answered or not) and the video
    tokens of the answered ones, before and after pruning. A resumed launch counts only what it ran."""
    run = sum(r["run"] for r in per_rank)
    tokens = sum(r["video_tokens"] for r in per_rank)
    tokens_after = sum(r["video_tokens_after"] for r in per_rank)
    rate = (lambda n: n / seconds) if seconds > 0 else (lambda n: None)
    return {
        "samples_run": run,
        "wall_seconds": seconds,
        "samples_per_second": rate(run),
        "video_tokens_per_second": rate(tokens),
        "video_tokens_after_per_second": rate(tokens_after),
    }


def sample_set_digest(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


def summarize(
    bench: Benchmark, samples: list[Sample], records: list[dict[str, Any]], n_in_benchmark: int
) -> dict[str, Any]:
    """The metrics and honest denominators shared by `evaluate` and `score_predictions`."""
    errors = {r["id"]: r["error"] for r in records if "error" in r}
    counts = {
        "in_benchmark": n_in_benchmark,
        "selected": len(samples),
        "evaluated": sum("score" in r for r in records),
        "errors": len(errors),
        "skipped": sum(bool(r.get("skipped")) for r in records),
        "unparsed": sum(bench.unparsed(r) for r in records),
        "not_run": len(samples) - len(records),
        "invalid_entries": len(bench.invalid),
    }
    complete = not errors and not counts["not_run"] and not bench.invalid
    return {
        "headline": bench.headline,
        "metrics": bench.aggregate(records),
        "counts": counts,
        "complete": complete,
        "n_samples": len(samples),
        "n_errors": len(errors),
        "n_skipped": counts["skipped"],
        "errors": errors,
        "invalid_entries": list(bench.invalid),
        "annotation_files": list(bench.annotation_files),
        "notes": list(bench.notes),
        "sample_set": sample_set_digest([s.id for s in samples]),
    }


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
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(results, dict) or "metrics" not in results or "benchmark" not in results:
        raise ValueError(f"{path} is not a stop-hf eval results file")
    records = Path(results.get("records", ""))
    if not records.is_file() and path.with_suffix(".jsonl").is_file():  # moved together with its records
        results["records"] = str(path.with_suffix(".jsonl"))
    results.setdefault("_path", str(path))
    return results


def headline_values(results: dict[str, Any]) -> dict[str, float]:
    metrics = results["metrics"]
    return {k: metrics[k] for k in results.get("headline", []) if isinstance(metrics.get(k), (int, float))}


def loyalty(records: list[dict[str, Any]], reference_records: list[dict[str, Any]]) -> float | None:
    """% of samples scored in both runs whose answers parse (official rule) to the same option / yes-no / verdict;
    an unparsed answer never agrees, so two unparsed runs are not "loyal"."""
    ref = {r["id"]: r["score"].get("pred") for r in reference_records if "score" in r}
    both = [r for r in records if "score" in r and r["id"] in ref]
    same = [r["score"].get("pred") is not None and r["score"].get("pred") == ref[r["id"]] for r in both]
    return 100.0 * sum(same) / len(same) if same else None


def comparability(results: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """Why two runs' numbers are not comparable (empty when they are): other samples, frames, generation."""
    problems = []
    if results["benchmark"] != reference["benchmark"]:
        problems.append(f"benchmark {results['benchmark']} vs {reference['benchmark']}")
    for key, what in (
        ("sample_set", "sample sets"),
        ("frames", "frames"),
        ("generation", "generation settings"),
    ):
        mine, theirs = results.get(key), reference.get(key)
        if mine != theirs:
            detail = "" if key == "sample_set" else f": {mine!r} vs {theirs!r}"
            if key == "sample_set":
                detail = f" ({results.get('n_samples')} vs {reference.get('n_samples')} samples)"
            problems.append(f"different {what}{detail}")
    # another prompt, system message or pre-fill: the answers are not to one question
    mine, theirs = (r.get("identity", {}).get("protocol") for r in (results, reference))
    if mine is not None and theirs is not None and mine != theirs:
        keys = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        problems.append(f"different protocols ({', '.join(keys)} differ)")
    return problems


def compare_to_reference(
    results: dict[str, Any], reference: dict[str, Any], allow_mismatch: bool = False
) -> dict[str, Any]:
    """Relative drop per headline metric (and their mean, the paper's PDR) and loyalty vs the unpruned run.
    Refuses runs over other samples / frames / generation settings unless `allow_mismatch` (then they are listed
    under `mismatches`)."""
    problems = comparability(results, reference)
    if results["benchmark"] != reference["benchmark"]:
        raise ValueError(f"cannot compare {results['benchmark']} with reference {reference['benchmark']}")
    if problems and not allow_mismatch:
        raise ValueError(
            f"{results['benchmark']}: the run and its reference are not comparable ({'; '.join(problems)}); "
            "rerun one of them, or pass --allow-mismatch to compare anyway"
        )
    mine, ref = headline_values(results), headline_values(reference)
    drops = {k: relative_drop(ref[k], mine[k]) for k in mine if k in ref}
    drops = {k: 100.0 * v for k, v in drops.items() if v is not None}
    return {
        "relative_drop": drops,
        "pdr": sum(drops.values()) / len(drops) if drops else None,
        "loyalty": loyalty(read_jsonl(Path(results["records"])), read_jsonl(Path(reference["records"]))),
        "mismatches": problems,
    }
