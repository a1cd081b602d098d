"""Data-parallel evaluation under `accelerate launch`: which samples a rank runs, where it writes, how ranks meet.

Every rank runs `samples[rank::world_size]` of the selected samples (a fixed split of the benchmark's sample order)
and appends its records to its own file `OUT.rank<R>.jsonl` with the same crash-safe, identity-checked writer as a
single process. A rank skips every sample already recorded in ANY records file of the run (`OUT.jsonl` and all
rank files), so a relaunch after a crash, with the same or another number of processes, recomputes nothing that was
written. After a barrier the main process merges all files into `OUT.jsonl` (atomically), removes the rank files
and scores. Without a launcher (`WORLD_SIZE` unset or 1) nothing here starts a process group.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

#: how long the main process waits at the barrier for the slowest rank (a dead rank ends the launch sooner: the
#: launcher stops the others when one fails)
BARRIER_TIMEOUT = timedelta(hours=48)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the launch: `rank` of `world_size`, `local_rank` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    state: Any = None  # accelerate's PartialState when world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wait(self) -> None:
        """Barrier: returns once every rank has called it."""
        if self.state is not None:
            self.state.wait_for_everyone()

    def close(self) -> None:
        """Last barrier, then the process group goes (a gloo group left to interpreter exit aborts the process)."""
        if self.state is not None:
            import torch.distributed as dist

            self.state.wait_for_everyone()
            if dist.is_initialized():
                dist.destroy_process_group()

    def gather(self, item: Any) -> list[Any]:
        """Every rank's `item` (picklable), in rank order, on every rank."""
        if self.state is None:
            return [item]
        from accelerate.utils import gather_object

        return gather_object([item])


def launched_ranks() -> Ranks:
    """The ranks of an `accelerate launch` (or torchrun) launch, through accelerate's `PartialState`; a single
    process otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Ranks()
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # accelerate's PartialState starts a CPU (gloo) group only when told to: by ACCELERATE_USE_CPU, or here, on a
    # machine without CUDA (`accelerate launch --multi_gpu` there starts CPU processes)
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu, timeout=BARRIER_TIMEOUT)
    if state.num_processes != int(os.environ["WORLD_SIZE"]):
        raise RuntimeError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} but accelerate started {state.num_processes} process(es) "
            f"({state.distributed_type}); launch with `accelerate launch --num_processes N` (docs/paper_table.md)"
        )
    return Ranks(state.process_index, state.num_processes, state.local_process_index, state)


def shard(items: list[Any], rank: int, world_size: int) -> list[Any]:
    """The items of `rank`: every `world_size`-th, starting at `rank` (deterministic, balanced to one item)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size")
    return items[rank::world_size]


def rank_records_path(records_path: Path, rank: int) -> Path:
    """`OUT.rank<R>.jsonl` beside `OUT.jsonl`."""
    return records_path.with_name(f"{records_path.stem}.rank{rank}.jsonl")


def rank_record_files(records_path: Path) -> list[Path]:
    """The rank files of `records_path` that exist, by rank (a relaunch may use another number of processes)."""
    pattern = re.compile(rf"^{re.escape(records_path.stem)}\.rank(\d+)\.jsonl$")
    found = []
    if records_path.parent.is_dir():
        for path in records_path.parent.iterdir():
            match = pattern.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def device_for_rank(device: str, ranks: Ranks) -> str:
    """`cuda` -> `cuda:<local_rank>` so each process of a node gets its own GPU; an explicit index, `cpu` or any
    other device is kept as given."""
    if ranks.world_size > 1 and device == "cuda":
        return f"cuda:{ranks.local_rank}"
    return device


def gpu_group(local_rank: int, gpus_per_process: int, gpus_on_node: int) -> list[int]:
    """The GPUs of one process whose model spans `gpus_per_process` GPUs (`device_map="auto"`): local rank `l`
    gets GPUs `l*G .. l*G+G-1`, so a node runs `gpus_on_node // G` model copies side by side."""
    if gpus_per_process < 1:
        raise ValueError(f"--gpus-per-process {gpus_per_process}: must be >= 1")
    first = local_rank * gpus_per_process
    if first + gpus_per_process > gpus_on_node:
        raise ValueError(
            f"--gpus-per-process {gpus_per_process}: local rank {local_rank} needs GPUs {first}.."
            f"{first + gpus_per_process - 1}, but this node has {gpus_on_node}; launch at most "
            f"{gpus_on_node // gpus_per_process} process(es) per node (--num_processes)"
        )
    return list(range(first, first + gpus_per_process))


def device_map_for(group: list[int]) -> dict[str, Any]:
    """from_pretrained kwargs that spread a model over the GPUs of `group` only (10% of their free memory is left
    for activations)."""
    import torch

    return {
        "device_map": "auto",
        "max_memory": {gpu: int(torch.cuda.mem_get_info(gpu)[0] * 0.9) for gpu in group},
    }
