"""The `stop-hf` command end to end, as a user runs it (`python -m stop_hf ...` in a subprocess), on the embedded tiny
models: run, viz, configs, config show, and one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stop_hf.config import list_presets
from stop_hf.testing.video import synthetic_frames, write_video

TIMEOUT = 240


def _start(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "stop_hf", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = process.communicate(timeout=TIMEOUT)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return _finish(_start(*args, cwd=cwd))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def video(workdir):
    return write_video(workdir / "sink.mp4", synthetic_frames(8, 240, 320, sink_patch=(20, 20, 60)))


def test_configs_lists_every_preset_one_line_each(workdir):
    result = cli("configs", cwd=workdir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    presets = list_presets()
    assert len(lines) == len(presets)
    for line, name in zip(lines, presets):
        assert line.split()[0] == name and len(line.split()) > 1


def test_config_show_prints_every_default(workdir):
    result = cli("config", "show", "holitom_stop_r10", cwd=workdir)
    assert result.returncode == 0, result.stderr
    import yaml

    shown = yaml.safe_load(result.stdout)
    assert shown["method"] == "holitom" and shown["sink"] is True
    assert shown["mu_s"] == 0.04 and shown["mu_t"] == 0.07  # reference defaults, not null
    assert {"tau", "beta", "k"} <= set(shown["params"])
    assert {"position_mode", "saliency_layer", "signal_chunk_frames", "gamma"} <= set(shown)


def test_run_compare_prints_both_answers_and_the_time_split(workdir, video):
    out = workdir / "run.json"
    result = cli(
        "run", "--video", str(video), "--question", "What moves?", "--frames", "4",
        "--max-new-tokens", "3", "--compare", "--json", str(out), cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for needle in (
        "video tokens",
        "prompt tokens",
        "vision ms",
        "pruning ms",
        "prefill ms",
        "decode ms",
        "answers:",
    ):
        assert needle in text
    assert "unpruned" in text and "holitom_stop_r10" in text
    assert "decoding frames" in result.stderr  # progress bars (frame decoding, generation) go to stderr
    runs = json.loads(out.read_text())["runs"]
    unpruned, pruned = runs["unpruned"], runs["holitom_stop_r10"]
    assert unpruned["video_tokens"] == unpruned["video_tokens_after"] == pruned["video_tokens"]
    assert pruned["video_tokens_after"] < 0.2 * pruned["video_tokens"]
    assert pruned["prompt_tokens_after"] < unpruned["prompt_tokens_after"]
    for key in ("vision", "pruning", "prefill", "decode"):
        assert pruned["timings"][key] >= 0
    assert f"video tokens {unpruned['video_tokens']} -> {unpruned['video_tokens']}" in " ".join(text.split())


def test_run_qwen_with_a_yaml_config(workdir, video):
    config = workdir / "mine.yaml"
    config.write_text("method: visionzip\nretention: 0.25\nsink: true\n")
    result = cli(
        "run", "--arch", "qwen2_5_vl", "--video", str(video), "--question", "What moves?", "--frames", "4",
        "--max-new-tokens", "2", "--config", str(config), "--no-progress", cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "answer:" in result.stdout and "method visionzip, retention 0.25, SToP on" in result.stdout
    assert "280 -> 70" in result.stdout  # 2 temporal patches x 10x14 merged tokens, 25% kept


@pytest.mark.parametrize("signals", ["model", "synthetic"])
def test_viz_writes_pngs_marking_exactly_the_reported_tokens(workdir, video, signals):
    from PIL import Image

    from stop_hf import viz

    out = workdir / f"viz_{signals}"
    result = cli(
        "viz", "--video", str(video), "--frames", "4", "--signals", signals, "--out", str(out),
        "--no-progress", cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected_sizes = {
        "kept_tokens.png": (800, 470),  # 4 frames in one row of 2 in panels; 2 runs; +0.7 in header
        "sink_score.png": (840, 400),
        "tokens_per_frame.png": (800, 360),
    }
    for name, size in expected_sizes.items():
        image = Image.open(out / name)
        assert image.size == size, name
        assert np.asarray(image.convert("RGB"), dtype=np.float32).std() > 20, f"{name} looks blank"
    report = json.loads((out / "report.json").read_text())
    assert report["signals"] == signals and set(report["runs"]) == {"baseline", "stop"}
    assert report["runs"]["baseline"]["config"] == "visionzip_baseline_r10"
    for key, run in report["runs"].items():
        strip = np.asarray(Image.open(out / f"overlay_{key}.png").convert("RGB"))
        assert strip.shape == (384, 4 * 384, 3)
        marked = viz.outlined_tokens(viz.unmosaic(strip, run["T"]), tuple(run["grid"]))
        assert marked == {tuple(k) for k in run["kept"]}
        assert sorted(t * run["N"] + n for t, n in marked) == sorted(run["index"])
        assert len(run["sink_score"]) == run["N"] == 196


def _bad_inputs(workdir: Path, video: Path) -> dict[str, tuple[tuple[str, ...], str]]:
    garbage = workdir / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    empty = workdir / "empty.yaml"
    empty.write_text("")
    no_method = workdir / "no_method.yaml"
    no_method.write_text("retention: 0.1\n")
    return {
        "missing video": (("run", "--video", "nope.mp4", "--question", "hi"), "does not exist"),
        "unreadable video": (("run", "--video", str(garbage), "--question", "hi"), "could not be decoded"),
        "question without video": (("run", "--question", "hi"), "needs a video"),
        "unknown preset": (
            ("run", "--video", str(video), "--question", "hi", "--config", "nope_r10"),
            "unknown",
        ),
        "unknown preset (viz)": (
            ("viz", "--video", str(video), "--out", "x", "--config", "nope_stop_r10"),
            "unknown",
        ),
        "unknown preset (show)": (("config", "show", "nope"), "unknown"),
        "empty question": (("run", "--video", str(video), "--question", " "), "empty"),
        "viz without a video": (("viz", "--out", "x"), "needs a video"),
        "bogus device": (
            ("run", "--video", str(video), "--question", "hi", "--device", "bogus"),
            "--device='bogus'",
        ),
        "device not on this machine": (
            ("run", "--video", str(video), "--question", "hi", "--device", "cuda:7"),
            "--device='cuda:7'",
        ),
        "missing model folder": (
            ("run", "--video", str(video), "--question", "hi", "--model", "./no/such/model"),
            "--model './no/such/model' does not exist",
        ),
        "model path is a file": (
            ("run", "--video", str(video), "--question", "hi", "--model", str(video)),
            "is a file",
        ),
        "viz --out is a file": (("viz", "--video", str(video), "--out", str(video)), "--out"),
        "bench --frames 0": (("bench", "--frames", "0"), "--frames=0"),
        "bench bad retention": (("bench", "--retention", "1.5"), "--retention 1.5"),
        "demo bogus device": (("demo", "--device", "bogus"), "--device='bogus'"),
        "bad dtype": (("run", "--video", str(video), "--question", "hi", "--dtype", "int3"), "--dtype"),
        "empty YAML config": (
            ("run", "--video", str(video), "--question", "hi", "--config", str(empty)),
            "is empty",
        ),
        "YAML config is a folder": (
            ("run", "--video", str(video), "--question", "hi", "--config", str(workdir) + "/"),
            "is not a file",
        ),
        "config without a method": (
            ("run", "--video", str(video), "--question", "hi", "--config", str(no_method)),
            "stop_config.method is missing",
        ),
    }


def _check_error(name: str, code: int, stdout: str, stderr: str, message: str) -> None:
    assert code == 2, f"{name}: {stderr}"
    assert "Traceback" not in stderr, name
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stop-hf ") and message in lines[0], f"{name}: {lines}"
    assert stdout == ""


def test_bad_input_subprocess(workdir, video):
    """Two cases as a user sees them (a fresh process each, run concurrently)."""
    cases = _bad_inputs(workdir, video)
    picked = ("unreadable video", "question without video", "bogus device", "bench --frames 0")
    started = {name: _start(*cases[name][0], cwd=workdir) for name in picked}
    for name, process in started.items():
        result = _finish(process)
        _check_error(name, result.returncode, result.stdout, result.stderr, cases[name][1])


def test_bad_input_gives_one_line_errors_and_exit_code_2(workdir, video, capsys, monkeypatch):
    """Every case through the same entry point (`stop_hf.cli.main`, what `python -m stop_hf` calls), in-process."""
    from stop_hf.cli import main

    monkeypatch.chdir(workdir)
    for name, (args, message) in _bad_inputs(workdir, video).items():
        code = main(list(args))
        captured = capsys.readouterr()
        _check_error(name, code, captured.out, captured.err, message)


def test_run_honours_device_and_dtype_for_the_tiny_model():
    import argparse

    import torch

    from stop_hf.cli.run import load_model

    args = argparse.Namespace(model=None, arch="llava_onevision", frames=2, device="cpu", dtype="fp16")
    llm = load_model(args)
    assert llm.model.dtype == torch.float16 and llm.model.device.type == "cpu"


def test_run_with_config_none_is_unpruned(workdir, video, capsys, monkeypatch):
    from stop_hf.cli import main

    monkeypatch.chdir(workdir)
    args = ["run", "--video", str(video), "--question", "hi", "--config", "none", "--frames", "2"]
    assert main([*args, "--max-new-tokens", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "config: none (none (unpruned))" in out
    tokens = next(line for line in out.splitlines() if line.startswith("video tokens")).split()[-3:]
    assert tokens[0] == tokens[2], out
