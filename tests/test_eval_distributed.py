"""`stop-hf eval` at scale: data parallel under `accelerate launch` (2 CPU processes, gloo), a rank killed mid-run
and relaunched, and `--batch-size` batches equal to batch size 1. The tiny LLaVA-OV model with pruning on, on a
12-question Video-MME fixture whose videos have 4 or 3 frames (two frame counts, so batches are grouped).

accelerate's `--cpu` flag uses its single-process launcher (several CPU processes need MPI), so the launches
here use accelerate's torchrun launcher (`--multi_gpu`) with ACCELERATE_USE_CPU=1: CPU processes in a gloo group.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from stop_hf.cli import main
from stop_hf.eval import distributed, synthetic
from stop_hf.eval.runner import existing_records, merge_rank_files, read_jsonl, run_identity

MODEL, CONFIG, SAMPLES = "tiny-llava_onevision", "holitom_stop_r10", 12
LAUNCH_TIMEOUT = 300  # seconds; a launch takes ~30 s here


def eval_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "eval",
        "--benchmark",
        "videomme",
        "--data",
        str(data),
        "--model",
        MODEL,
        "--config",
        CONFIG,
        "--out",
        str(out),
        "--frames",
        "4",
        "--max-new-tokens",
        "3",
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


def launch_command(data: Path, out: Path, processes: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(29500 + os.getpid() % 1000),
        "-m",
        "stop_hf.cli",
        *eval_args(data, out),
    ]


def launch_env() -> dict[str, str]:
    return {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def without_timings(records: list[dict]) -> dict[str, dict]:
    return {r["id"]: {k: v for k, v in r.items() if k != "timings"} for r in records}


def results_core(results: dict) -> dict:
    return {k: results[k] for k in ("metrics", "counts", "complete", "errors", "sample_set", "identity")}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videomme")
    return synthetic.make_videomme(root, num_frames=(4, 3), questions=SAMPLES, per_video=2)


@pytest.fixture(scope="module")
def single(data, tmp_path_factory) -> tuple[dict, list[dict]]:
    """The single-process run (one thread, as each launched rank)."""
    out = tmp_path_factory.mktemp("single") / "r.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(eval_args(data, out)) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads(out.read_text()), read_jsonl(out.with_suffix(".jsonl"))


# ------------------------------------------------------------------------------------------------ pure pieces
def test_shards_cover_every_sample_once_in_a_fixed_order():
    items = list(range(11))
    for world in (1, 2, 3, 4, 16):
        shards = [distributed.shard(items, rank, world) for rank in range(world)]
        assert sorted(x for s in shards for x in s) == items
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
        assert shards == [distributed.shard(items, rank, world) for rank in range(world)]
    with pytest.raises(ValueError, match="need 0 <= rank < world_size"):
        distributed.shard(items, 2, 2)


def test_rank_files_and_device_per_rank(tmp_path):
    records = tmp_path / "r.jsonl"
    for name in ("r.rank10.jsonl", "r.rank2.jsonl", "r.rank0.jsonl", "rr.rank1.jsonl", "r.rank1.json"):
        (tmp_path / name).write_text("")
    assert [p.name for p in distributed.rank_record_files(records)] == [
        "r.rank0.jsonl",
        "r.rank2.jsonl",
        "r.rank10.jsonl",
    ]
    assert distributed.rank_records_path(records, 3).name == "r.rank3.jsonl"
    two = distributed.Ranks(rank=1, world_size=2, local_rank=1)
    assert distributed.device_for_rank("cuda", two) == "cuda:1"
    assert distributed.device_for_rank("cuda:3", two) == "cuda:3"
    assert distributed.device_for_rank("cpu", two) == "cpu"
    assert distributed.device_for_rank("cuda", distributed.Ranks()) == "cuda"
    assert distributed.launched_ranks() == distributed.Ranks()  # no launcher: one process, no process group


def test_merge_keeps_answers_over_errors_and_refuses_another_run(tmp_path):
    records = tmp_path / "r.jsonl"
    identity = run_identity("videomme", tmp_path, {"model": "m"}, 3)
    other = run_identity("videomme", tmp_path, {"model": "other"}, 3)
    from stop_hf.eval.runner import identity_digest

    digest = identity_digest(identity)

    def write(path, rows, header=identity):
        path.write_text("".join(json.dumps(r) + "\n" for r in [{"run": header}, *rows]))

    write(records, [{"id": "a", "error": "missing video", "run": digest}])
    write(tmp_path / "r.rank0.jsonl", [{"id": "a", "answer": "A", "run": digest}])
    write(tmp_path / "r.rank1.jsonl", [{"id": "b", "answer": "B", "run": digest}])
    with open(tmp_path / "r.rank1.jsonl", "a") as f:
        f.write('{"id": "c", "ans')  # a rank killed mid-write: its torn line is left out, not repaired here
    done, _ = existing_records(records, identity)
    assert {k: v.get("answer") for k, v in done.items()} == {"a": "A", "b": "B"}
    merge_rank_files(records, identity, ["b", "a"])
    assert [r["id"] for r in read_jsonl(records)] == ["b", "a"]
    assert json.loads(records.read_text().splitlines()[0]) == {"run": identity}
    assert distributed.rank_record_files(records) == []
    write(tmp_path / "r.rank3.jsonl", [], header=other)
    with pytest.raises(ValueError, match="holds records of another run"):
        existing_records(records, identity)


def test_gpu_groups_for_device_map_auto():
    assert [distributed.gpu_group(rank, 2, 8) for rank in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert distributed.gpu_group(0, 8, 8) == list(range(8))  # one 72B-size model per node
    with pytest.raises(ValueError, match="launch at most 2 process"):
        distributed.gpu_group(2, 4, 8)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpus_per_process_needs_cuda(tmp_path, capsys, data):
    assert main(eval_args(data, tmp_path / "r.json", "--gpus-per-process", "2")) == 2
    assert "--gpus-per-process 2: needs CUDA GPUs" in capsys.readouterr().err
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize("value", ["0", "-2"])
def test_batch_size_must_be_positive(tmp_path, capsys, data, value):
    argv = eval_args(data, tmp_path / "r.json", "--batch-size", value)
    argv[argv.index(MODEL)] = "tiny-nope"  # never reached
    assert main(argv) == 2
    assert f"--batch-size {value}: must be >= 1" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ batches
def test_batch_size_4_equals_batch_size_1(single, data, tmp_path):
    results, records = single
    out = tmp_path / "b4.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(eval_args(data, out, "--batch-size", "4")) == 0
    finally:
        torch.set_num_threads(threads)
    batched = json.loads(out.read_text())
    batched_records = read_jsonl(out.with_suffix(".jsonl"))
    assert without_timings(batched_records) == without_timings(records)
    assert results_core(batched) == results_core(results)
    assert batched["batch_size"] == 4 and results["batch_size"] == 1
    # 12 questions, 6 videos of 4 / 3 frames: batches of one frame count, 4 + 2 rows each
    assert sorted(r["timings"]["batch_size"] for r in batched_records) == [2] * 4 + [4] * 8
    assert all(r["video_tokens_after"] < r["video_tokens"] for r in batched_records)  # pruning was on
    rates = batched["throughput"]
    assert rates["samples_run"] == SAMPLES and rates["samples_per_second"] > 0
    assert rates["video_tokens_per_second"] > rates["video_tokens_after_per_second"] > 0


def test_qwen_batches_equal_single_runs(data, tmp_path):
    """Qwen2.5-VL builds its batch row by row through qwen-vl-utils (per-video fps); 6 questions, 3 per batch."""
    runs = {}
    for size in ("1", "3"):
        out = tmp_path / f"q{size}.json"
        argv = eval_args(data, out, "--batch-size", size, "--limit", "6")
        argv[argv.index(MODEL)] = "tiny-qwen2_5_vl"
        assert main(argv) == 0
        runs[size] = read_jsonl(out.with_suffix(".jsonl"))
    assert without_timings(runs["3"]) == without_timings(runs["1"])
    # videos of 4, 3, 4 frames, 2 questions each: [q0 q1 q4] [q2 q3] (3 frames) [q5]
    assert sorted(r["timings"]["batch_size"] for r in runs["3"]) == [1, 2, 2, 3, 3, 3]
    assert all(r["video_tokens_after"] < r["video_tokens"] for r in runs["3"])


def test_a_broken_video_in_a_batch_is_recorded_alone(data, tmp_path):
    broken = tmp_path / "broken"
    synthetic.make_videomme(broken, num_frames=4, questions=4, per_video=1)
    (broken / "data" / "vid1.mp4").write_bytes(b"not a video")
    out = tmp_path / "r.json"
    argv = eval_args(broken, out, "--batch-size", "4")
    assert main(argv) == 0
    records = {r["id"]: r for r in read_jsonl(out.with_suffix(".jsonl"))}
    assert "could not be decoded" in records["001-1"]["error"]
    assert all("answer" in r for k, r in records.items() if k != "001-1")
    assert [r["timings"]["batch_size"] for k, r in records.items() if k != "001-1"] == [3, 3, 3]


# ------------------------------------------------------------------------------------------------ data parallel
def test_two_ranks_equal_one_process(single, data, tmp_path):
    results, records = single
    out = tmp_path / "two" / "r.json"
    done = subprocess.run(
        launch_command(data, out),
        env=launch_env(),
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    merged = json.loads(out.read_text())
    assert without_timings(read_jsonl(out.with_suffix(".jsonl"))) == without_timings(records)
    assert results_core(merged) == results_core(results)
    assert merged["world_size"] == 2 and merged["batch_size"] == 1
    assert [(r["rank"], r["samples"], r["run"]) for r in merged["per_rank"]] == [(0, 6, 6), (1, 6, 6)]
    assert merged["throughput"]["samples_run"] == SAMPLES
    assert distributed.rank_record_files(out.with_suffix(".jsonl")) == []  # merged, then removed
    assert done.stdout.count("results:") == 1  # only the main process reports


def worker_pid(launcher: int, rank: int, timeout: float = 60.0) -> int:
    """The PID of the launched process whose environment says RANK=`rank` (a child of the launcher)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = []
        for task in Path(f"/proc/{launcher}/task").iterdir():
            children += (task / "children").read_text().split()
        for child in children:
            try:
                environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                return int(child)
        time.sleep(0.05)
    raise AssertionError(f"no process with RANK={rank} under launcher {launcher} after {timeout} s")


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the rank's PID through /proc (Linux)")
def test_a_killed_rank_loses_nothing_written_and_the_relaunch_completes(single, data, tmp_path):
    _, records = single
    out = tmp_path / "killed" / "r.json"
    rank1 = out.with_name("r.rank1.jsonl")
    log = open(tmp_path / "launch.log", "w")  # noqa: SIM115 - closed below
    launcher = subprocess.Popen(
        launch_command(data, out),
        env=launch_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        victim = worker_pid(launcher.pid, rank=1)
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while not read_jsonl(rank1):  # kill it once it has written its first record
            assert launcher.poll() is None, (tmp_path / "launch.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "rank 1 wrote no record in time"
            time.sleep(0.02)
        os.kill(victim, signal.SIGKILL)
        assert launcher.wait(timeout=120) != 0  # the launcher stops rank 0 and fails
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait(timeout=30)
        log.close()
    survived = {}
    for path in distributed.rank_record_files(out.with_suffix(".jsonl")):
        survived |= {r["id"]: r for r in read_jsonl(path)}
    assert 1 <= len(survived) < SAMPLES, "the kill should land mid-run"

    done = subprocess.run(
        launch_command(data, out),
        env=launch_env(),
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    merged = {r["id"]: r for r in read_jsonl(out.with_suffix(".jsonl"))}
    for key, record in survived.items():  # the same record, timings included: it was not computed again
        assert merged[key] == record
    assert without_timings(list(merged.values())) == without_timings(records)
    results = json.loads(out.read_text())
    assert sum(r["run"] for r in results["per_rank"]) == SAMPLES - len(survived)
    assert results["complete"] and results["counts"]["evaluated"] == SAMPLES
