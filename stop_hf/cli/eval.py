"""`stop-hf eval`: one benchmark, one model, one pruning config -> results JSON (+ resumable per-sample JSONL)."""

from __future__ import annotations

import argparse
from pathlib import Path

TINY_PREFIX = "tiny-"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..eval.benchmarks import REGISTRY

    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model (+ pruning config) on a benchmark from its official local files",
        description="Runs a benchmark from its official local file layout (docs/evaluation.md). Per-sample results "
        "are appended to OUT.jsonl, so an interrupted run resumes where it stopped (samples that errored are run "
        "again; a JSONL written by another run is refused). The annotations are validated before the model "
        "loads. `--config none` is the unpruned reference run. Data parallel: `accelerate launch --num_processes N -m "
        "stop_hf.cli eval ...` splits the samples over N processes and merges their records (docs/paper_table.md).",
    )
    parser.add_argument("--benchmark", required=True, help=f"one of {sorted(REGISTRY)}")
    parser.add_argument("--data", required=True, help="the benchmark's data folder")
    parser.add_argument(
        "--model",
        required=True,
        help="HF model id or folder; tiny-llava_onevision / tiny-qwen2_5_vl for the tiny models",
    )
    parser.add_argument("--config", required=True, help="preset name, YAML path, or 'none' (unpruned)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N samples")
    parser.add_argument(
        "--out", default="results.json", help="results JSON (records go to the same name .jsonl)"
    )
    parser.add_argument(
        "--reference", help="results JSON of the unpruned run: adds relative drop and loyalty"
    )
    parser.add_argument("--frames", type=int, default=32, help="frames sampled per video (the paper uses 32)")
    parser.add_argument(
        "--max-new-tokens", type=int, help="override the benchmark's generation length (>= 1)"
    )
    parser.add_argument(
        "--keep-errors",
        action="store_true",
        help="on resume, do not run again the samples recorded with an error (default: retry them)",
    )
    parser.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="with --reference: compare even if the runs differ in samples, frames or generation settings",
    )
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--dtype", default="auto", help="auto | fp32 | bf16 | fp16")
    parser.add_argument(
        "--judge-url",
        help="OpenAI-compatible base URL, e.g. https://api.openai.com/v1 (env STOP_HF_JUDGE_URL)",
    )
    parser.add_argument("--judge-model", help="judge model name (env STOP_HF_JUDGE_MODEL)")
    parser.add_argument("--judge-api-key", help="judge API key (env STOP_HF_JUDGE_API_KEY or OPENAI_API_KEY)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="samples per generate call, batched among samples of one frame count (results equal batch size 1)",
    )
    parser.add_argument(
        "--gpus-per-process",
        type=int,
        help="spread each process's model over this many GPUs (device_map='auto'): local rank l gets GPUs "
        "l*G..l*G+G-1, so launch GPUs-per-node / G processes per node",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


def load_model(model: str, config, device: str, dtype: str, frames: int, **hf_kwargs):
    from ..patches import ARCHITECTURES
    from ..runner import VideoLLM

    if model.startswith(TINY_PREFIX):
        arch = model[len(TINY_PREFIX) :]
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown tiny model {model!r}; use tiny-{' / tiny-'.join(ARCHITECTURES)}")
        return VideoLLM.tiny(arch, stop_config=config, num_frames=frames)
    return VideoLLM.from_pretrained(
        model, stop_config=config, device=device, dtype=dtype, num_frames=frames, **hf_kwargs
    )


def _save_tiny_checkpoint(model: str) -> None:
    """Writes this process's tiny checkpoint before a process group exists: once one does, transformers'
    `save_pretrained` writes only on rank 0, and the other ranks would find an empty folder."""
    from ..patches import ARCHITECTURES
    from ..tiny import tiny_checkpoint

    arch = model[len(TINY_PREFIX) :]
    if model.startswith(TINY_PREFIX) and arch in ARCHITECTURES:
        tiny_checkpoint(arch)


def parse_config(name: str):
    from ..config import StopConfig

    if name.lower() in ("none", "unpruned", "vanilla"):
        return None, None
    config = StopConfig.from_any(name)
    return config, config.to_dict() if hasattr(config, "to_dict") else str(config)


def check_args(args: argparse.Namespace) -> None:
    """Impossible settings are refused before anything is loaded: one line and exit 2, as for `run`."""
    from .run import _dtype_or_error, check_device, check_model

    check_device(args.device)
    if not args.model.startswith(TINY_PREFIX):
        check_model(args.model)
    _dtype_or_error(args.dtype, args.device)
    if args.frames is None or args.frames < 1:
        raise ValueError(f"--frames {args.frames}: must be >= 1 (frames sampled per video)")
    if args.gpus_per_process is not None and args.gpus_per_process < 1:
        raise ValueError(f"--gpus-per-process {args.gpus_per_process}: must be >= 1")
    if args.gpus_per_process is not None and not _cuda():
        raise ValueError(
            f"--gpus-per-process {args.gpus_per_process}: needs CUDA GPUs, and none is available"
        )
    if args.batch_size is None or args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size}: must be >= 1")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit {args.limit}: must be >= 1")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ValueError(
            f"--max-new-tokens {args.max_new_tokens}: must be >= 1 (0 new tokens would score empty answers); "
            "leave it out for the benchmark's own length"
        )
    if not Path(args.data).is_dir():
        raise FileNotFoundError(f"data folder not found: {args.data}")
    if Path(args.out).suffix.lower() != ".json":
        raise ValueError(f"--out {args.out}: must end in .json (the records go to the same name .jsonl)")


def check_reference(path: str | None, benchmark: str):
    """The --reference results, read before the eval runs (a missing or wrong file is not found out after it)."""
    if path is None:
        return None
    from ..eval.runner import load_results

    reference = load_results(path)
    if reference["benchmark"] != benchmark:
        raise ValueError(
            f"--reference {path} is a {reference['benchmark']} run; this eval is {benchmark}: pass the unpruned "
            f"{benchmark} results"
        )
    return reference


def load_model_or_error(model: str, *args, **kwargs):
    """`load_model`; a model that cannot be loaded (OSError from the Hub / the folder) is one line, as for `run`."""
    from . import CliError

    try:
        return load_model(model, *args, **kwargs)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(f"--model {model!r} could not be loaded: {first}") from None


def run(args: argparse.Namespace) -> int:
    import sys

    from ..eval.benchmarks import get_benchmark
    from ..eval.distributed import device_for_rank, device_map_for, gpu_group, launched_ranks
    from ..eval.judge import judge_from_args
    from ..eval.runner import (
        check_ground_truth,
        evaluate,
        existing_records,
        load_samples,
        run_identity,
    )

    bench = get_benchmark(args.benchmark)
    check_args(args)
    reference = check_reference(args.reference, bench.name)
    config, config_dict = parse_config(args.config)
    judge = judge_from_args(args.judge_url, args.judge_model, args.judge_api_key)
    samples, n_total = load_samples(bench, args.data, args.limit)  # validated before the model loads
    _save_tiny_checkpoint(args.model)
    ranks = launched_ranks()  # one process, or this rank of an `accelerate launch`

    def note(text: str) -> None:  # the main process reports; the other ranks only run their share
        if ranks.is_main:
            print(text, file=sys.stderr)

    for path in bench.annotation_files:
        note(f"annotations: {path}")
    for line in bench.notes:
        note(f"note: {line}")
    if bench.invalid:
        note(f"{len(bench.invalid)} broken annotation entries left out:")
        for problem in bench.invalid[:20]:
            note(f"  {problem}")
        if len(bench.invalid) > 20:
            note(f"  ... and {len(bench.invalid) - 20} more (all listed in the results JSON)")
    run_info = {
        "model": args.model,
        "config_name": "none" if config is None else args.config,
        "config": config_dict,
        "frames": args.frames,
        "limit": args.limit,
    }
    # a JSONL of another run is refused before the model loads (evaluate checks it again)
    identity = run_identity(bench.name, args.data, run_info, args.max_new_tokens)
    if reference is not None and not args.allow_mismatch:  # what can be compared is compared before the run
        from ..eval.runner import comparability, sample_set_digest

        planned = {
            "benchmark": bench.name,
            "sample_set": sample_set_digest([s.id for s in samples]),
            "n_samples": len(samples),
            "frames": args.frames,
            "generation": identity["generation"],
        }
        problems = comparability(planned, reference)
        if problems:
            raise ValueError(
                f"--reference {args.reference} is not comparable with this run ({'; '.join(problems)}); "
                "rerun one of them, or pass --allow-mismatch to compare anyway"
            )
    done, _ = existing_records(Path(args.out).with_suffix(".jsonl"), identity)
    check_ground_truth(done, samples, Path(args.out).with_suffix(".jsonl"))
    if done:
        note(
            f"resuming: {len(done)} record(s) already in {Path(args.out).with_suffix('.jsonl')} "
            "(and its rank files)"
        )
    if ranks.world_size > 1:
        note(f"data parallel: {ranks.world_size} processes, each writes its OUT.rank<R>.jsonl; rank 0 merges")
    device, hf_kwargs = device_for_rank(args.device, ranks), {}
    if args.gpus_per_process is not None:  # one model over a group of GPUs, one group per process
        import torch

        group = gpu_group(ranks.local_rank, args.gpus_per_process, torch.cuda.device_count())
        device, hf_kwargs = f"cuda:{group[0]}", device_map_for(group)
        note(f"each process spreads its model over {args.gpus_per_process} GPU(s) (device_map='auto')")
    llm = load_model_or_error(args.model, config, device, args.dtype, args.frames, **hf_kwargs)
    results = evaluate(
        llm,
        bench,
        args.data,
        args.out,
        limit=args.limit,
        judge=judge,
        max_new_tokens=args.max_new_tokens,
        run_info=run_info,
        reference=None,
        progress=not args.no_progress,
        retry_errors=not args.keep_errors,
        samples=samples,
        n_in_benchmark=n_total,
        batch_size=args.batch_size,
        ranks=ranks,
    )
    ranks.close()  # the results are written: the other ranks may go
    if not ranks.is_main:
        return 0
    if reference is not None:
        import json

        from ..eval.runner import compare_to_reference

        results["vs_reference"] = compare_to_reference(results, reference, allow_mismatch=args.allow_mismatch)
        Path(args.out).write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    from .compare import format_table

    print(format_table([results], allow_mismatch=True))
    counts = results["counts"]
    if counts["errors"]:
        print(f"{counts['errors']} sample(s) failed (counted as wrong); see 'errors' in {args.out}")
    if results["n_skipped"]:
        print(
            f"{results['n_skipped']} judged sample(s) skipped: no judge configured (--judge-url/--judge-model)"
        )
    if not results["complete"]:
        print("the run is INCOMPLETE: errors, broken annotation entries or samples not run; see 'counts'")
    rates = results["throughput"]
    if rates["samples_per_second"]:
        print(
            f"{rates['samples_run']} sample(s) in {rates['wall_seconds']:.1f} s on {results['world_size']} "
            f"process(es), batch size {results['batch_size']}: {rates['samples_per_second']:.3g} samples/s"
        )
    print(f"results: {args.out}")
    return 0
