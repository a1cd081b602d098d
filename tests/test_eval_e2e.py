"""End to end on the tiny models through the CLI: every benchmark, metrics recomputed by hand from the records."""

import json

import pytest

from stop_hf.cli import main
from stop_hf.eval import synthetic
from stop_hf.eval.metrics import eventhallusion_yes_no, mc_letter
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
    if bench == "eventhallusion":
        binary = [r for r in records if r["kind"] == "binary"]
        hand = 100 * sum(eventhallusion_yes_no(r["answer"]) == r["gt"] for r in binary) / len(binary)
        assert m["binary_accuracy"] == pytest.approx(hand)
        assert m["yes_rate"] == pytest.approx(
            100 * sum(eventhallusion_yes_no(r["answer"]) == "yes" for r in binary) / len(binary)
        )
        assert m["desc_accuracy"] == "skipped"
    elif bench == "mvbench":
        per_task = {}
        for r in records:
            per_task.setdefault(r["meta"]["task"], []).append(r["score"]["pred"] == r["gt"])
        hand = sum(100 * sum(v) / len(v) for v in per_task.values()) / len(per_task)
        assert m["accuracy"] == pytest.approx(hand)
    else:
        hand = 100 * sum(r["score"]["pred"] == r["gt"] for r in records) / len(records)
        assert m["accuracy"] == pytest.approx(hand)
        if bench == "videomme":
            opts = ["a square", "a circle", "a dog", "nothing"]
            assert all(r["score"]["pred"] == mc_letter(r["answer"], opts) for r in records)


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
    same = [r["score"]["pred"] == ref_pred[r["id"]] for r in records if "score" in r]
    assert res["vs_reference"]["loyalty"] == pytest.approx(100 * sum(same) / len(same))
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "unpruned.json"), str(tmp_path / "pruned.json")]) == 0
    table = capsys.readouterr().out
    assert "EH:binary_accuracy" in table and "visionzip_stop_r10" in table and "PDR %" in table


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
