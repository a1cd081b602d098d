"""`score_predictions` / `stop-hf score`: official prediction files and stop-hf JSONL, scored from the annotations
alone (no videos), giving the same metrics dict as a results JSON."""

import json

import pytest
from test_eval_layouts import eh_dataset, videomme_template, write

from stop_hf.cli import main
from stop_hf.eval import score_predictions, synthetic
from stop_hf.eval.runner import evaluate
from stop_hf.runner import Answer


def eh_predictions(files, predictions, judgements):
    """Stevetich/EventHallusion predictions/*.json: {split: {video_id: {entry fields..., "qa": [{question, answer,
    prediction}], "desc", "judgement"}}}, keyed by the interleave_NNN ids as the shipped files are."""
    out = {}
    for split, entries in files.items():
        out[split] = {}
        for e in entries:
            vid = (e["id"] or e["video_name"]).replace("mix", "interleave").removesuffix(".mp4")
            qa = [
                {"question": q["question"], "answer": q["answer"], "prediction": predictions[split]}
                for q in e["questions"]
            ]
            out[split][vid] = {
                **e,
                "id": vid,
                "qa": qa,
                "desc": "A description.",
                "judgement": judgements[split],
            }
    return out


def test_eventhallusion_official_predictions(tmp_path):
    # annotations: the Dec-2024 mix file with empty ids (video_name), no videos at all
    files = eh_dataset(tmp_path / "eh", "mix", ids=["mix_001", "mix_002", "mix_003"], mix_by_video_name=True)
    preds = eh_predictions(
        files,
        predictions={"entire": "No. The man is dancing.\n", "interleave": " Yes", "misleading": "Yes."},
        judgements={"entire": "**Yes**. It is consistent.", "interleave": "No.", "misleading": "Yes."},
    )
    path = write(tmp_path / "gemini_predictions.json", preds)
    res = score_predictions("eventhallusion", tmp_path / "eh", path)
    m = res["metrics"]
    # eval.py: entire 3/3 right; interleave " Yes" unparsed (3 wrong); misleading "Yes." wrong (1)
    assert m["binary_accuracy"] == pytest.approx(100 * 3 / 7) and m["binary_n"] == 7
    assert m["unparsed_rate"] == pytest.approx(100 * 3 / 7)
    # descriptions of entire (2 videos, yes) and interleave (3, no); misleading left out -> 2 / 5
    assert m["desc_accuracy"] == pytest.approx(40.0) and m["desc_n"] == 5
    assert (
        res["counts"]["evaluated"] == 12
        and res["complete"]
        and res["predictions_format"] == "eventhallusion-official"
    )


def test_videomme_official_template_with_responses(tmp_path):
    data = write(tmp_path / "vm" / "output_test_template.json", videomme_template())
    res = score_predictions("videomme", tmp_path / "vm", data)
    m = res["metrics"]
    # responses: "C. Berries." (gt C) right, "D." (gt A) wrong, "D. 3" (gt D) right, "The answer is B" (gt B) right
    assert m["accuracy"] == 75.0 and m["answered"] == 4
    assert m["by_duration"] == {"medium": 100.0, "short": pytest.approx(200 / 3)}
    assert res["predictions_format"] == "videomme-official" and res["complete"]


def test_missing_predictions_are_counted_and_make_it_incomplete(tmp_path):
    template = videomme_template()
    del template[1]["questions"][0]["response"]
    data = write(tmp_path / "vm" / "output_test_template.json", template)
    res = score_predictions("videomme", tmp_path / "vm", data)
    assert res["counts"]["not_run"] == 1 and not res["complete"]


def test_own_jsonl_rescored_equals_the_run(tmp_path):
    root = synthetic.make_mlvu(tmp_path / "mlvu")
    answers = iter(["(B) green", "C", "D"])

    class Model:
        def answer(self, video, question, max_new_tokens=16, **protocol):
            return Answer(next(answers), 1, 1, 1, 1, {})

    res = evaluate(Model(), "mlvu", root, tmp_path / "r.json", progress=False)
    scored = score_predictions("mlvu", root, tmp_path / "r.jsonl")
    assert scored["metrics"] == res["metrics"] and scored["counts"] == res["counts"]
    assert scored["predictions_format"] == "stop-hf-jsonl"


def test_cli_score_and_errors(tmp_path, capsys):
    data = write(tmp_path / "vm" / "output_test_template.json", videomme_template())
    out = tmp_path / "scored.json"
    argv = ["score", "--benchmark", "videomme", "--data", str(tmp_path / "vm"), "--predictions", str(data)]
    assert main(argv + ["--out", str(out)]) == 0
    assert json.loads(out.read_text())["metrics"]["accuracy"] == 75.0
    assert '"accuracy": 75.0' in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": ')
    assert main(argv[:-1] + [str(bad)]) == 2
    assert "bad.json" in capsys.readouterr().err
    unrelated = write(tmp_path / "unrelated.json", [{"id": "nope", "answer": "A"}])
    assert main(argv[:-1] + [str(unrelated)]) == 2
    assert "no prediction matches" in capsys.readouterr().err
