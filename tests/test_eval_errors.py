"""Issue 23 cases 5-7: clear errors for a resume over changed annotations, a records file with a byte that is not
UTF-8, and `stop-hf eval` arguments that cannot work (one line, exit 2, before the model loads or the eval runs)."""

import json

import pytest

import stop_hf.cli.eval as cli_eval
from stop_hf.cli import main
from stop_hf.eval import synthetic
from stop_hf.eval.benchmarks import AnnotationError
from stop_hf.eval.runner import evaluate, read_jsonl
from stop_hf.eval.score import score_predictions
from stop_hf.runner import Answer


class Always:
    def __init__(self, text):
        self.text, self.calls = text, 0

    def answer(self, video, question, max_new_tokens=16, **protocol):
        self.calls += 1
        return Answer(self.text, 1, 1, 1, 1, {})


@pytest.fixture
def mvbench(tmp_path):
    return synthetic.make_mvbench(tmp_path / "mv")


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if `stop-hf eval` gets as far as loading a model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr(cli_eval, "load_model", refuse)


def cli(capsys, *args):
    """(exit code, the error line): the error is the last line on stderr (progress and notes may precede it)."""
    rc = main(["eval", *args])
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1] if err else ""
    assert last.startswith("stop-hf eval: error: ") or rc != 2
    return rc, last


# ------------------------------------------------------------------------------------ case 5: changed ground truth
def change_answer(root, task="action_sequence", index=0, new="5"):
    path = root / "json" / f"{task}.json"
    items = json.loads(path.read_text())
    items[index]["answer"] = new
    path.write_text(json.dumps(items))


def test_resume_after_a_ground_truth_changed_is_refused(mvbench, tmp_path):
    out = tmp_path / "r.json"
    evaluate(Always("B"), "mvbench", mvbench, out, progress=False)
    change_answer(mvbench)  # action_sequence/0: "4" (B) -> "5" (C)
    llm = Always("B")
    with pytest.raises(ValueError) as info:
        evaluate(llm, "mvbench", mvbench, out, progress=False)
    message = str(info.value)
    assert "action_sequence/0" in message and "'B'" in message and "'C'" in message
    assert "--out" in message and llm.calls == 0
    evaluate(Always("B"), "mvbench", mvbench, tmp_path / "fresh.json", progress=False)  # the way out works


def test_cli_refuses_the_changed_ground_truth_before_the_model_loads(mvbench, tmp_path, capsys, no_model):
    out = tmp_path / "r.json"
    evaluate(Always("B"), "mvbench", mvbench, out, progress=False, run_info=_run_info())
    change_answer(mvbench)
    args = ["--benchmark", "mvbench", "--data", str(mvbench), "--model", "tiny-llava_onevision"]
    rc, err = cli(capsys, *args, "--config", "none", "--frames", "4", "--out", str(out), "--device", "cpu")
    assert rc == 2 and len(err.splitlines()) == 1
    assert "action_sequence/0" in err and "ground truth changed" in err


def _run_info():
    # what `stop-hf eval --model tiny-llava_onevision --config none --frames 4` records
    return {
        "model": "tiny-llava_onevision",
        "config_name": "none",
        "config": None,
        "frames": 4,
        "limit": None,
    }


# ------------------------------------------------------------------------------ case 6: invalid UTF-8 in a JSONL
def test_a_records_file_with_a_byte_that_is_not_utf8_names_file_and_line(mvbench, tmp_path):
    out = tmp_path / "r.json"
    evaluate(Always("B"), "mvbench", mvbench, out, progress=False)
    records = out.with_suffix(".jsonl")
    lines = records.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b'"B"', b'"\xff"', 1)  # line 3: the second record's answer
    records.write_bytes(b"\n".join(lines))
    for read in (
        lambda: evaluate(Always("B"), "mvbench", mvbench, out, progress=False),
        lambda: read_jsonl(records),
    ):
        with pytest.raises(
            ValueError, match=r"r\.jsonl: line 3 is not UTF-8 text \(byte 0xff at column \d+\)"
        ):
            read()


def test_predictions_and_annotations_with_a_bad_byte_name_the_line(mvbench, tmp_path):
    predictions = tmp_path / "p.jsonl"
    predictions.write_bytes(b'{"id": "action_sequence/0", "answer": "B"}\n{"id": "x", "answer": "\xfe"}\n')
    with pytest.raises(
        AnnotationError, match=r"p\.jsonl: line 2 is not UTF-8 text \(byte 0xfe at column 24\)"
    ):
        score_predictions("mvbench", mvbench, predictions)
    path = mvbench / "json" / "object_shuffle.json"
    path.write_bytes(path.read_bytes().replace(b"right", b"r\xffght", 1))
    with pytest.raises(AnnotationError, match=r"object_shuffle\.json: line 1 is not UTF-8 text \(byte 0xff"):
        score_predictions("mvbench", mvbench, predictions)


# -------------------------------------------------------------------------------- case 7: eval's own arguments
@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--device", "bogus"], "--device='bogus' is not a device"),
        (["--model", "/missing/path"], "--model '/missing/path' does not exist"),
        (["--reference", "missing.json"], "results file not found: missing.json"),
        (["--dtype", "fp8"], "--dtype"),
    ],
)
def test_eval_argument_errors_are_one_line_exit_2_before_the_model(
    mvbench, tmp_path, capsys, no_model, flags, expected
):
    base = {"--model": "tiny-llava_onevision", "--device": "cpu"}
    for flag, value in zip(flags[::2], flags[1::2]):
        base[flag] = value
    args = [x for pair in base.items() for x in pair]
    rc, err = cli(
        capsys,
        "--benchmark",
        "mvbench",
        "--data",
        str(mvbench),
        "--config",
        "none",
        *args,
        "--out",
        str(tmp_path / "r.json"),
    )
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert expected in err
    assert not (tmp_path / "r.jsonl").exists()  # nothing ran


def test_a_reference_that_cannot_be_compared_fails_before_the_eval(mvbench, tmp_path, capsys, no_model):
    other = tmp_path / "ref.json"
    evaluate(Always("B"), "mvbench", mvbench, other, progress=False, limit=1, run_info={"frames": 8})
    args = [
        "--benchmark",
        "mvbench",
        "--data",
        str(mvbench),
        "--model",
        "tiny-llava_onevision",
        "--config",
        "none",
    ]
    rc, err = cli(
        capsys,
        *args,
        "--device",
        "cpu",
        "--frames",
        "4",
        "--reference",
        str(other),
        "--out",
        str(tmp_path / "r.json"),
    )
    assert (
        rc == 2 and "not comparable" in err and "different sample sets" in err and "different frames" in err
    )
    eh = synthetic.make_eventhallusion(tmp_path / "eh")
    wrong = tmp_path / "eh.json"
    evaluate(Always("No"), "eventhallusion", eh, wrong, progress=False)
    rc, err = cli(
        capsys, *args, "--device", "cpu", "--reference", str(wrong), "--out", str(tmp_path / "r.json")
    )
    assert rc == 2 and "is a eventhallusion run; this eval is mvbench" in err


def test_a_model_that_cannot_be_loaded_is_one_line(mvbench, tmp_path, capsys, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("org/name is not a local folder and is not a valid model identifier\nmore lines")

    monkeypatch.setattr(cli_eval, "load_model", fail)
    args = ["--benchmark", "mvbench", "--data", str(mvbench), "--model", "org/name", "--config", "none"]
    rc, err = cli(capsys, *args, "--device", "cpu", "--out", str(tmp_path / "r.json"))
    assert rc == 2 and err == (
        "stop-hf eval: error: --model 'org/name' could not be loaded: org/name is not a local folder and is not a "
        "valid model identifier"
    )
