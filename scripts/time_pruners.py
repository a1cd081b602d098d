"""Pure pruning time of every paper method (no model), and the measured effect of FlashVID's distinct-pick deviation.

    python scripts/time_pruners.py [--frames 32] [--tokens 196] [--dim 3584] [--repeats 5] [--device cpu]

Timing: median wall time of `repeats` calls after one warm-up, on synthetic LLaVA-OV-shaped inputs (a scene vector
plus noise, attention ~ 1/729 with six planted sinks). Deviation: how many ADTS copies the reference's repeated picks
would duplicate (distinct_picks=False) as the sinks get weaker, versus none with the default.
"""

from __future__ import annotations

import argparse
import statistics
import time

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

    print(
        "\nFlashVID + SToP (mu_s=0.02), T=8 D=64: ADTS copies repeated by the reference rule (distinct_picks=False)"
    )
    print("| sink attention x | r | output tokens | repeated copies (reference) | repeated copies (ours) |")
    print("|---|---|---|---|---|")
    sink = Sink(*DEFAULT_SINK_WEIGHTS["flashvid"])
    for strength in (1.2, 1.5, 2.0, 4.0, 8.0, 14.0):
        small = synthetic_input(8, args.tokens, 64, sink_strength=strength, seed=1)
        for r in (0.10, 0.25):
            reference = PRUNERS["flashvid"](retention=r, sink=sink, distinct_picks=False)(small)
            ours = PRUNERS["flashvid"](retention=r, sink=sink)(small)
            print(
                f"| {strength} | {r} | {ours.index.numel()} | {repeated_copies(reference)} | {repeated_copies(ours)} |"
            )


if __name__ == "__main__":
    main()
