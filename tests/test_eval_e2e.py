"""End to end on the tiny models through the CLI: every benchmark, metrics recomputed by hand from the records."""

import json

import pytest

from stop_hf.cli import main
from stop_hf.eval import synthetic
from stop_hf.eval.metrics import (
    eventhallusion_yes_no,
    mlvu_official_correct,
    mvbench_guarded_correct,
    mvbench_notebook_answer,
    mvbench_notebook_correct,
    videocomp_official_correct,
    videomme_official_letter,
)
from stop_hf.eval.runner import read_jsonl

LETTERS = "ABCD"


def _run(tmp_path, bench, data, model, config, name, *extra):
    out = tmp_path / f"{name}.json"
    argv = [
        "eval",
        "--benchmark",
        bench,
        "--data",
        str(data),
        "--model",
        model,
        "--config",
        config,
        "--out",
        str(out),
        "--frames",
        "4",
        "--max-new-tokens",
        "3",
        "--no-progress",
        *extra,
    ]
    assert main(argv) == 0
    return json.loads(out.read_text()), read_jsonl(out.with_suffix(".jsonl"))


@pytest.mark.parametrize(
    "bench, model",
    [
        ("eventhallusion", "tiny-llava_onevision"),
        ("videocomp", "tiny-qwen2_5_vl"),
        ("mvbench", "tiny-llava_onevision"),
        ("videomme", "tiny-llava_onevision"),
        ("mlvu", "tiny-qwen2_5_vl"),
    ],
)
def test_tiny_end_to_end(tmp_path, bench, model):
    data = synthetic.MAKERS[bench](tmp_path / "data")
    res, records = _run(tmp_path, bench, data, model, "holitom_stop_r10", "pruned", "--limit", "3")
    assert res["n_samples"] == 3 and res["n_errors"] == 0
    assert res["config_name"] == "holitom_stop_r10" and res["config"]
    assert {"torch", "transformers", "stop-hf"} <= set(res["versions"]) and res["device"]["device"] == "cpu"
    answered = [r for r in records if "answer" in r]
    assert answered and all(r["video_tokens_after"] < r["video_tokens"] for r in answered)
    m = res["metrics"]
    counts = res["counts"]
    assert counts["evaluated"] + counts["skipped"] == 3 and counts["errors"] == 0 and counts["selected"] == 3
    if bench == "eventhallusion":
        binary = [r for r in records if r["kind"] == "binary"]
        hand = 100 * sum(eventhallusion_yes_no(r["answer"]) == r["gt"] for r in binary) / len(binary)
        assert m["binary_accuracy"] == pytest.approx(hand)
        assert m["desc_accuracy"] == "skipped"
    elif bench == "mvbench":  # the official Avg: correct / items
        scored = [(mvbench_notebook_answer(r["answer"]), r["gt"]) for r in records]  # "(" + the first line
        hand = 100 * sum(mvbench_notebook_correct(text, gt) for text, gt in scored) / len(records)
        assert m["accuracy"] == pytest.approx(hand)
        hand = 100 * sum(mvbench_guarded_correct(text, gt) for text, gt in scored) / len(records)
        assert m["accuracy_guarded"] == pytest.approx(hand)
    elif bench == "videocomp":
        act = [r for r in records if r["meta"]["subset"] == "activitynet"]
        hand = (
            100
            * sum(videocomp_official_correct(r["answer"], r["meta"]["official_answer"]) for r in act)
            / len(act)
        )
        assert m["activitynet"] == pytest.approx(hand)
    elif bench == "videomme":  # correct / answered
        answered = [r for r in records if videomme_official_letter(r["answer"])]
        hand = (
            100 * sum(videomme_official_letter(r["answer"]) == r["gt"] for r in answered) / len(answered)
            if answered
            else None
        )
        assert m["accuracy"] == (pytest.approx(hand) if hand is not None else None)
    else:  # MLVU: mean over tasks
        per_task = {}
        for r in records:
            per_task.setdefault(r["meta"]["task"], []).append(mlvu_official_correct(r["answer"], r["gt"]))
        assert m["m_avg"] == pytest.approx(
            sum(100 * sum(v) / len(v) for v in per_task.values()) / len(per_task)
        )


def test_reference_compare_and_missing_video(tmp_path, capsys):
    data = synthetic.make_eventhallusion(tmp_path / "eh", missing=("e1",))
    ref, ref_records = _run(tmp_path, "eventhallusion", data, "tiny-llava_onevision", "none", "unpruned")
    assert ref["config_name"] == "none" and ref["n_errors"] == 1  # e1's question (its description is skipped)
    res, records = _run(
        tmp_path,
        "eventhallusion",
        data,
        "tiny-llava_onevision",
        "visionzip_stop_r10",
        "pruned",
        "--reference",
        str(tmp_path / "unpruned.json"),
    )
    ref_pred = {r["id"]: r["score"]["pred"] for r in ref_records if "score" in r}
    both = [r for r in records if "score" in r and r["id"] in ref_pred]
    same = [r["score"]["pred"] is not None and r["score"]["pred"] == ref_pred[r["id"]] for r in both]
    assert res["vs_reference"]["loyalty"] == pytest.approx(100 * sum(same) / len(same))
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "unpruned.json"), str(tmp_path / "pruned.json")]) == 0
    table = capsys.readouterr().out
    assert "EH:binary_accuracy" in table and "visionzip_stop_r10" in table and "PDR %" in table
    assert "EH:n" in table and "3/6 e=1" in table and "! = incomplete" in table  # the denominators


def test_every_benchmark_then_compare(tmp_path, capsys):
    """`stop-hf eval` on every benchmark (tiny model, 2 samples each), unpruned and pruned, then `compare`."""
    paths = []
    for bench, make in synthetic.MAKERS.items():
        data = make(tmp_path / bench)
        for config in ("none", "holitom_stop_r10"):
            name = f"{bench}_{config}"
            _run(tmp_path, bench, data, "tiny-llava_onevision", config, name, "--limit", "2")
            paths.append(str(tmp_path / f"{name}.json"))
    capsys.readouterr()
    assert main(["compare", *paths]) == 0
    table = capsys.readouterr().out
    for column in (
        "EH:binary_accuracy",
        "VComp:activitynet",
        "MVBench:accuracy",
        "VideoMME:accuracy",
        "MLVU:m_avg",
    ):
        assert column in table
    assert table.count("/2 of ") == 10  # evaluated / selected of in benchmark, per benchmark and run


def test_compare_refuses_mismatched_and_duplicate_runs(tmp_path, capsys):
    data = synthetic.make_videomme(tmp_path / "vm")
    _run(tmp_path, "videomme", data, "tiny-llava_onevision", "none", "ref", "--limit", "2")
    _run(tmp_path, "videomme", data, "tiny-llava_onevision", "holitom_stop_r10", "p", "--limit", "1")
    capsys.readouterr()
    ref, pruned = str(tmp_path / "ref.json"), str(tmp_path / "p.json")
    assert main(["compare", ref, pruned]) == 2
    assert "not comparable (different sample sets (1 vs 2 samples))" in capsys.readouterr().err
    assert main(["compare", ref, pruned, "--allow-mismatch"]) == 0
    out = capsys.readouterr().out
    assert "NOT COMPARABLE (--allow-mismatch)" in out and "1/1 of 4 e=0" in out and "2/2 of 4 e=0" in out
    (tmp_path / "copy.json").write_text((tmp_path / "p.json").read_text())
    assert main(["compare", ref, pruned, str(tmp_path / "copy.json")]) == 2
    assert (
        "two videomme results for model 'tiny-llava_onevision' + config 'holitom_stop_r10'"
        in capsys.readouterr().err
    )
    # another frame count is refused too
    out4 = tmp_path / "f8.json"
    argv = ["eval", "--benchmark", "videomme", "--data", str(data), "--model", "tiny-llava_onevision"]
    argv += [
        "--config",
        "holitom_stop_r10",
        "--out",
        str(out4),
        "--frames",
        "8",
        "--limit",
        "2",
        "--no-progress",
    ]
    argv += ["--max-new-tokens", "3"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["compare", ref, str(out4)]) == 2
    assert "different frames: 8 vs 4" in capsys.readouterr().err


def unloadable_model_argv(data) -> list[str]:
    """`stop-hf eval` on Video-MME with a model that cannot load: what fails must fail before it is tried."""
    return [
        "eval",
        "--benchmark",
        "videomme",
        "--data",
        str(data),
        "--model",
        "tiny-nope",
        "--config",
        "none",
    ]


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--frames", "0", "--frames 0: must be >= 1"),
        ("--max-new-tokens", "0", "--max-new-tokens 0: must be >= 1"),
    ],
)
def test_impossible_settings_refused_up_front(tmp_path, capsys, flag, value, message):
    data = synthetic.make_videomme(tmp_path / "vm")
    argv = unloadable_model_argv(data)
    assert main(argv + ["--out", str(tmp_path / "r.json"), flag, value]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r.jsonl").exists()


def test_cli_user_errors(tmp_path, capsys):
    assert (
        main(
            [
                "eval",
                "--benchmark",
                "nope",
                "--data",
                str(tmp_path),
                "--model",
                "tiny-llava_onevision",
                "--config",
                "none",
            ]
        )
        == 2
    )
    assert (
        main(
            [
                "eval",
                "--benchmark",
                "mvbench",
                "--data",
                str(tmp_path / "absent"),
                "--model",
                "tiny-llava_onevision",
                "--config",
                "none",
            ]
        )
        == 2
    )
    assert main(["compare", str(tmp_path / "absent.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 3


def test_annotations_are_checked_before_the_model_loads(tmp_path, capsys):
    data = synthetic.make_mvbench(tmp_path / "mv")
    (data / "json" / "object_shuffle.json").write_text('[{"video": "o1.mp4",')
    argv = ["eval", "--benchmark", "mvbench", "--data", str(data), "--model", "tiny-nope", "--config", "none"]
    assert main(argv + ["--out", str(tmp_path / "r.json")]) == 2  # a bogus model: never reached
    err = capsys.readouterr().err
    assert "object_shuffle.json: not valid JSON" in err and "tiny-nope" not in err


def test_resume_of_another_run_refused_before_the_model_loads(tmp_path, capsys):
    data = synthetic.make_videomme(tmp_path / "vm")
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text(json.dumps({"run": {"benchmark": "videomme", "data": "/elsewhere"}}) + "\n")
    argv = unloadable_model_argv(data)
    assert main(argv + ["--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "holds records of another run" in err and "data='/elsewhere'" in err
    assert "unknown tiny model" not in err  # the model was never loaded
