"""Pure pruning time of every paper method (no model), and the measured effect of FlashVID's `distinct_picks` opt-in.

    python scripts/time_pruners.py [--frames 32] [--tokens 196] [--dim 3584] [--repeats 5] [--device cpu]
    python scripts/time_pruners.py --frames 64 --threads 1 --flashvid-reference ~/SToP/pruning/flashvid

`--flashvid-reference DIR` also times the reference FlashVID from a checkout you provide (rlqja1107/SToP @3bf998c
`pruning/flashvid`, or Fanziyang-v/FlashVID @1d37422 `flashvid`; nothing of it ships with stop-hf), interleaved with
stop-hf's FlashVID on the same input, and prints them side by side.

Timing: median wall time of `repeats` calls after one warm-up, on synthetic LLaVA-OV-shaped inputs (a scene vector
plus noise, attention ~ 1/729 with six planted sinks). Repeated picks: how many ADTS copies the reference rule (the
default) duplicates as the sinks get weaker, versus none with `distinct_picks: true`.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import statistics
import sys
import time
import types
from pathlib import Path

import torch

from stop_hf.pruners import DEFAULT_SINK_WEIGHTS, KIND_COPY, PRUNERS, PruneInput
from stop_hf.sink import Sink

METHODS = ("visionzip", "fastvid", "holitom", "flashvid", "prunevid")
SINK_POSITIONS = [0, 1, 13, 154, 155, 195]


def synthetic_input(
    t: int, n: int, d: int, sink_strength: float, seed: int = 0, device: str = "cpu"
) -> PruneInput:
    g = torch.Generator().manual_seed(seed)
    scene = torch.randn(d, generator=g)
    base = torch.randn(n, d, generator=g)
    features = 1.5 * scene + base + 0.6 * torch.randn(t, n, d, generator=g)
    attention = (1 + 0.5 * torch.rand(t, n, generator=g)) / 729
    sinks = [p for p in SINK_POSITIONS if p < n]
    attention[:, sinks] *= sink_strength
    return PruneInput(
        features=features.to(device),
        attention=attention.to(device),
        keys=torch.randn(t, n, 128, generator=g).to(device),
        global_features=features.mean(dim=1).to(device),
        grid=None,
    )


def time_methods(
    rows: list[tuple[str, bool, float]], x: PruneInput, repeats: int, clock=time.perf_counter
) -> dict[tuple[str, bool, float], float]:
    """Median seconds per (method, sink, retention). The rows are timed round-robin, one call each per round, so
    that load from other processes on a shared machine falls on every method alike."""
    pruners = {
        row: PRUNERS[row[0]](retention=row[2], sink=Sink(*DEFAULT_SINK_WEIGHTS[row[0]]) if row[1] else None)
        for row in rows
    }
    for pruner in pruners.values():
        pruner(x)  # warm-up
    times: dict[tuple[str, bool, float], list[float]] = {row: [] for row in rows}
    for _ in range(repeats):
        for row, pruner in pruners.items():
            if x.features.is_cuda:
                torch.cuda.synchronize()
            started = clock()
            pruner(x)
            if x.features.is_cuda:
                torch.cuda.synchronize()
            times[row].append(clock() - started)
    return {row: statistics.median(values) for row, values in times.items()}


def load_reference_flashvid(folder: str):
    """The reference's `flashvid_compression` and `FlashVidConfig` from a checkout's package folder, imported as a
    package without running its `__init__` (which pulls in the LLaVA model code)."""
    path = Path(folder).expanduser().resolve()
    if not (path / "utils.py").is_file():
        raise SystemExit(
            f"--flashvid-reference {folder!r}: no utils.py there (give SToP's pruning/flashvid folder)"
        )
    package = types.ModuleType("_flashvid_reference")
    package.__path__ = [str(path)]
    sys.modules[package.__name__] = package
    utils = importlib.import_module(f"{package.__name__}.utils")
    return utils.flashvid_compression, utils.FlashVidConfig


def time_flashvid_side_by_side(folder: str, x: PruneInput, repeats: int, clock) -> None:
    """stop-hf's FlashVID and the reference on the same input, interleaved, median seconds of each."""
    compress, config_class = load_reference_flashvid(folder)
    takes_args = "args" in inspect.signature(compress).parameters
    zeros_like = torch.rand_like  # the reference's density noise off, as in the conformance fixtures
    print(f"\nFlashVID, stop-hf vs the reference in {folder} (same input, interleaved, median of {repeats})")
    print("| sink | r | stop-hf (ms) | reference (ms) | stop-hf / reference |")
    print("|---|---|---|---|---|")
    torch.rand_like = lambda t, **kw: torch.zeros_like(t)  # noqa: E731
    try:
        for sink in (False, True):
            for r in (0.10, 0.25):
                weights = DEFAULT_SINK_WEIGHTS["flashvid"]
                ours = PRUNERS["flashvid"](retention=r, sink=Sink(*weights) if sink else None)
                args = types.SimpleNamespace(mu_s=weights[0] if sink else 0.0, gamma=1.1)

                def reference(r=r, args=args):
                    config = config_class(retention_ratio=r, token_selection_method="attn_div_v2")
                    extra = (args,) if takes_args else ()
                    return compress(x.features.clone(), x.attention.clone(), config, *extra)

                calls = {"ours": lambda ours=ours: ours(x), "reference": reference}
                times: dict[str, list[float]] = {name: [] for name in calls}
                for call in calls.values():
                    call()  # warm-up
                for _ in range(repeats):
                    for name, call in calls.items():
                        if x.features.is_cuda:
                            torch.cuda.synchronize()
                        started = clock()
                        call()
                        if x.features.is_cuda:
                            torch.cuda.synchronize()
                        times[name].append(clock() - started)
                med = {name: statistics.median(v) for name, v in times.items()}
                print(
                    f"| {sink} | {r} | {1000 * med['ours']:.0f} | {1000 * med['reference']:.0f} | "
                    f"{med['ours'] / med['reference']:.2f} |"
                )
    finally:
        torch.rand_like = zeros_like


def repeated_copies(result) -> int:
    copies = result.index[result.kind == KIND_COPY]
    return copies.numel() - copies.unique().numel()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=196)
    parser.add_argument("--dim", type=int, default=3584)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default). With 1 the clock is this thread's CPU time, which other "
        "processes on a shared machine do not inflate",
    )
    parser.add_argument(
        "--flashvid-reference",
        metavar="DIR",
        help="a reference FlashVID package folder (SToP's pruning/flashvid) to time beside stop-hf's",
    )
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    single_cpu = args.threads == 1 and args.device == "cpu"
    clock = time.thread_time if single_cpu else time.perf_counter

    x = synthetic_input(args.frames, args.tokens, args.dim, sink_strength=10.0, device=args.device)
    what = "CPU time of one thread" if single_cpu else f"wall time, {torch.get_num_threads()} threads"
    print(
        f"pruning {what}, T={args.frames} N={args.tokens} D={args.dim} {args.device} fp32, median of {args.repeats}"
    )
    print("| method | sink | r=0.10 (ms) | r=0.25 (ms) |")
    print("|---|---|---|---|")
    rows = [
        (m, s, r) for m in METHODS for s in (False, True) for r in (0.10, 0.25) if not (s and m == "prunevid")
    ]
    seconds = time_methods(rows, x, args.repeats, clock)
    for method in METHODS:
        for sink in (False, True):
            if (method, sink, 0.10) in seconds:
                cells = [1000 * seconds[(method, sink, r)] for r in (0.10, 0.25)]
                print(f"| {method} | {sink} | {cells[0]:.1f} | {cells[1]:.1f} |")
    if args.flashvid_reference:
        time_flashvid_side_by_side(args.flashvid_reference, x, args.repeats, clock)

    print(
        "\nFlashVID + SToP (mu_s=0.02), T=8 D=64: ADTS copies repeated by the reference rule (the default) and with "
        "the distinct_picks=True opt-in"
    )
    print(
        "| sink attention x | r | output tokens | repeated copies (default, as the reference) | with distinct_picks |"
    )
    print("|---|---|---|---|---|")
    sink = Sink(*DEFAULT_SINK_WEIGHTS["flashvid"])
    for strength in (1.2, 1.5, 2.0, 4.0, 8.0, 14.0):
        small = synthetic_input(8, args.tokens, 64, sink_strength=strength, seed=1)
        for r in (0.10, 0.25):
            reference = PRUNERS["flashvid"](retention=r, sink=sink)(small)
            ours = PRUNERS["flashvid"](retention=r, sink=sink, distinct_picks=True)(small)
            print(
                f"| {strength} | {r} | {ours.index.numel()} | {repeated_copies(reference)} | {repeated_copies(ours)} |"
            )


if __name__ == "__main__":
    main()
