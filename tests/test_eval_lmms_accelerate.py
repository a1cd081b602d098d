"""The lmms-eval plugin under `accelerate launch`, two CPU processes: lmms-eval 0.7.x shards a local 4-document
video task over the ranks, each rank answers with `llava_onevision_stop` (pruning on), lmms-eval gathers and
scores; the launch must end with rc 0 and all 4 documents scored.

lmms-eval 0.7.3 requires av<16, which would downgrade this package's PyAV, so it usually lives in its own
environment: STOP_HF_LMMS_PYTHON names that environment's Python (.ci/run makes one: a venv over the system
site-packages with lmms-eval, av<16 and filelock<4 in front). Otherwise the current Python is used when it has
lmms-eval, and the test is skipped, with its reason, when neither has it.

accelerate's `--cpu` flag uses its single-process launcher, so several CPU processes are started with its torchrun
launcher (`--multi_gpu`) and ACCELERATE_USE_CPU=1 (a gloo group).
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stop_hf.testing import write_video

TASK = """task: stop_toy
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
process_results: !function utils.process_results
generation_kwargs:
  max_new_tokens: 3
  until: ["\\n\\n"]
metric_list:
  - metric: exact
    aggregation: mean
    higher_is_better: true
"""

TASK_UTILS = """def doc_to_visual(doc):
    return [doc["video"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def process_results(doc, results):
    return {"exact": float(results[0].strip() == doc["answer"])}
"""


def lmms_python() -> str:
    """A Python with lmms-eval and this package, or a skip saying why there is none."""
    configured = os.environ.get("STOP_HF_LMMS_PYTHON")
    candidates = [configured] if configured else [sys.executable]
    for python in candidates:
        probe = subprocess.run(
            [python, "-c", "import lmms_eval, stop_hf, accelerate"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if probe.returncode == 0:
            return python
    where = f"STOP_HF_LMMS_PYTHON={configured}" if configured else f"this Python ({sys.executable})"
    reason = (
        f"lmms-eval is not installed for {where}: install the `lmms` extra in its own environment "
        "(it pins av<16) and point STOP_HF_LMMS_PYTHON at it; .ci/run does this"
    )
    print(f"SKIPPED: {reason}", file=sys.stderr)
    pytest.skip(reason)


def test_lmms_eval_under_accelerate_launch_with_two_processes(tmp_path):
    python = lmms_python()
    docs = [
        {
            "video": str(write_video(tmp_path / f"v{i}.mp4", num_frames=4, height=96, width=128, seed=i)),
            "question": "What moves in the video?",
            "answer": "a square",
        }
        for i in range(4)
    ]
    (tmp_path / "docs.json").write_text(json.dumps(docs))
    task = tmp_path / "task"
    task.mkdir()
    (task / "stop_toy.yaml").write_text(TASK.format(docs=tmp_path / "docs.json"))
    (task / "utils.py").write_text(TASK_UTILS)
    out = tmp_path / "out"
    command = [python, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["--main_process_port", str(30500 + os.getpid() % 1000), "-m", "lmms_eval"]
    command += ["--model", "llava_onevision_stop", "--tasks", "stop_toy", "--include_path", str(task)]
    command += [
        "--model_args",
        "pretrained=tiny-llava_onevision,stop_config=holitom_stop_r10,max_frames_num=4,device=cpu",
    ]
    command += ["--batch_size", "1", "--output_path", str(out), "--log_samples"]
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "hf_datasets"),
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    log = done.stdout[-4000:] + done.stderr[-4000:]
    assert done.returncode == 0, log
    for rank in (0, 1):  # each process joined the launch with its own rank
        assert f"LlavaOneVisionStop: rank {rank} of 2 on cpu" in done.stderr, log
    (results_file,) = glob.glob(str(out / "*" / "*_results.json"))
    results = json.loads(Path(results_file).read_text())
    assert results["n-samples"]["stop_toy"] == {"original": 4, "effective": 4}
    assert "exact,none" in results["results"]["stop_toy"]
    (samples_file,) = glob.glob(str(out / "*" / "*_samples_stop_toy.jsonl"))
    gathered = [json.loads(line) for line in Path(samples_file).read_text().splitlines()]
    assert sorted(s["doc_id"] for s in gathered) == [0, 1, 2, 3]  # both ranks' answers, gathered on rank 0
