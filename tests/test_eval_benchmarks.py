"""Each benchmark on a synthetic dataset in its official layout, with a scripted answerer: metrics vs hand values."""

import pytest

from stop_hf.eval import synthetic
from stop_hf.eval.benchmarks import get_benchmark
from stop_hf.eval.runner import compare_to_reference, evaluate, load_results, read_jsonl
from stop_hf.runner import Answer, VideoClip


class Scripted:
    """Same `.answer()` API as VideoLLM; answers by the first matching substring of the prompt."""

    def __init__(self, script, default=""):
        self.script, self.default, self.calls, self.videos = script, default, 0, []

    def answer(self, video, question, max_new_tokens=16):
        self.calls += 1
        self.videos.append(video)
        text = next((t for key, t in self.script.items() if key in question), self.default)
        return Answer(text, 10, 8, 100, 20, {"prefill": 0.01, "total": 0.02})


class YesJudge:
    name = "fake-judge"

    def __call__(self, prompt):
        return "Yes." if "Ground-truth caption" in prompt else "No."


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    return {
        name: make(root / name, missing=("m1",)) if name == "eventhallusion" else make(root / name)
        for name, make in synthetic.MAKERS.items()
    }


def test_eventhallusion_binary_and_missing_video(data, tmp_path):
    # entire e1 (No), interleave mix_001 (Yes; video interleave_001.mp4), misleading m1 (2x No, video missing)
    llm = Scripted({"turn into a cat": "Yes, because it morphs.", "move across": "yes"})
    res = evaluate(llm, "eventhallusion", data["eventhallusion"], tmp_path / "r.json", progress=False)
    m = res["metrics"]
    # scored binary: e1 wrong (yes vs no), mix_001 right -> 50 %; yes-rate 2/2
    assert m["binary_n"] == 2 and m["binary_accuracy"] == pytest.approx(50.0)
    assert m["binary_entire"] == 0.0 and m["binary_interleave"] == 100.0
    assert m["yes_rate"] == 100.0
    assert m["binary_balanced_accuracy"] == pytest.approx(50.0)
    # the missing video: both of its questions are errors (+ its description), the run continued
    assert res["n_errors"] == 2 and all("missing video" in e for e in res["errors"].values())
    # no judge: descriptions are skipped, not faked, and the model is not even run for them
    assert m["desc_accuracy"] == "skipped" and m["desc_skipped"] == 3 and llm.calls == 2


def test_eventhallusion_with_judge_and_empty_answer(data, tmp_path):
    llm = Scripted({"turn into a cat": "", "move across": "No"}, default="A red square moves.")
    res = evaluate(
        llm, "eventhallusion", data["eventhallusion"], tmp_path / "r.json", judge=YesJudge(), progress=False
    )
    m = res["metrics"]
    assert m["binary_accuracy"] == 0.0  # empty answer (entire) and wrong "No" (interleave)
    assert m["unparsed_rate"] == 50.0 and m["yes_rate"] == 0.0
    assert m["desc_accuracy"] == 100.0 and m["desc_n"] == 2  # m1's description: missing video
    assert m["overall_accuracy"] == pytest.approx(100.0 * 2 / 4)


def test_videocomp(data, tmp_path):
    llm = Scripted(
        {
            "a square moves left": "(A) a square moves left",
            "a person cooks": "a person swims",
            "cut onions": "Answer: A",
        }
    )
    res = evaluate(llm, "videocomp", data["videocomp"], tmp_path / "r.json", progress=False)
    assert res["metrics"]["activitynet"] == 100.0 and res["metrics"]["youcook2"] == 0.0
    assert res["metrics"]["accuracy"] == pytest.approx(200 / 3)
    # the full ActivityNet video is sampled only inside each query window (microseconds -> seconds); the
    # trimmed YouCook2 clip is used whole
    source = data["videocomp"] / "activitynet_video" / "v_act1.mp4"
    assert llm.videos[:2] == [VideoClip(source, 0.0, 1.0), VideoClip(source, 1.0, 2.0)]
    assert llm.videos[2] == data["videocomp"] / "videos" / "yc1_0.mp4"
    assert [r.get("window") for r in read_jsonl(tmp_path / "r.jsonl")] == [[0.0, 1.0], [1.0, 2.0], None]


def test_mvbench_mean_over_tasks(data, tmp_path):
    # action_sequence: a1 gt "4"=B, a2 gt "1"=A; object_shuffle: gt "right"=C
    llm = Scripted({"(C) 5": "B.", "(B) 2": "B", "object_shuffle": "right"})
    res = evaluate(llm, "mvbench", data["mvbench"], tmp_path / "r.json", progress=False)
    m = res["metrics"]
    assert m["by_task"] == {"action_sequence": 50.0, "object_shuffle": 100.0}
    assert m["accuracy"] == pytest.approx(75.0) and m["overall_accuracy"] == pytest.approx(200 / 3)
    assert res["n_errors"] == 0
    # STAR tasks are about [start, end] of the video, read from the official per-task folder
    star = data["mvbench"] / "video" / "star" / "Charades_v1_480"
    assert llm.videos[:2] == [VideoClip(star / "a1.mp4", 0.0, 0.5), VideoClip(star / "a2.mp4", 0.0, 0.5)]
    assert llm.videos[2] == data["mvbench"] / "video" / "perception" / "videos" / "o1.mp4"


def test_read_clip_samples_inside_the_window_only(data):
    """8 frames at 4 fps: the window [1.0, 1.75] s holds frames 4..7; frames come from there only."""
    from stop_hf.runner import read_clip
    from stop_hf.testing.video import read_video

    source = data["videocomp"] / "activitynet_video" / "v_act1.mp4"
    every = read_video(source, 8)
    frames, fps, inside = read_clip(VideoClip(source, 1.0, 1.75), 2)
    assert fps == 4.0 and inside == 4 and frames.shape[0] == 2
    assert (frames[0] == every[4]).all() and (frames[1] == every[7]).all()
    with pytest.raises(ValueError, match="no frames in the window"):
        read_clip(VideoClip(source, 5.0, 6.0), 2)
    with pytest.raises(ValueError, match="must be after"):
        VideoClip(source, 2.0, 1.0)


def test_videomme_by_duration_and_limit(data, tmp_path):
    answers = iter(["A", "The answer is C.", "D", "(D) nothing"])
    llm = Scripted({})
    llm.answer = lambda video, q, max_new_tokens=16: Answer(next(answers), 1, 1, 1, 1, {})
    res = evaluate(llm, "videomme", data["videomme"], tmp_path / "r.json", progress=False)
    m = res["metrics"]
    assert m["accuracy"] == 75.0
    assert m["by_duration"] == {"long": 100.0, "medium": 0.0, "short": 100.0}
    res = evaluate(
        Scripted({}, "A"), "videomme", data["videomme"], tmp_path / "l.json", limit=2, progress=False
    )
    assert res["n_samples"] == 2 and res["metrics"]["accuracy"] == 50.0


def test_resume_and_reference(data, tmp_path):
    out = tmp_path / "pruned.json"
    first = Scripted({}, "A")
    evaluate(first, "videomme", data["videomme"], out, limit=2, progress=False)
    second = Scripted({}, "A")
    res = evaluate(second, "videomme", data["videomme"], out, progress=False)
    assert second.calls == 2 and len(read_jsonl(out.with_suffix(".jsonl"))) == 4  # resumed, not redone
    # a torn last line (killed mid-write) is ignored
    with open(out.with_suffix(".jsonl"), "a") as f:
        f.write('{"id": "trunc')
    assert len(read_jsonl(out.with_suffix(".jsonl"))) == 4
    # pruned: all "A" -> 25 %
    ref_llm = Scripted({})
    ref_answers = iter(["A", "C", "B", "A"])  # 3/4 correct; agrees with "A" on samples 1 and 4
    ref_llm.answer = lambda video, q, max_new_tokens=16: Answer(next(ref_answers), 1, 1, 1, 1, {})
    ref = evaluate(ref_llm, "videomme", data["videomme"], tmp_path / "ref2.json", progress=False)
    cmp = compare_to_reference(res, ref)
    assert cmp["relative_drop"]["accuracy"] == pytest.approx(100 * (75 - 25) / 75)
    assert cmp["pdr"] == pytest.approx(100 * (75 - 25) / 75)
    assert cmp["loyalty"] == 50.0
    loaded = load_results(tmp_path / "ref2.json")
    for key in ("versions", "device", "metrics"):
        assert key in loaded
    assert {"torch", "transformers", "stop-hf"} <= set(loaded["versions"])


def test_unknown_benchmark_and_missing_layout(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark"):
        get_benchmark("nope")
    with pytest.raises(FileNotFoundError, match="expected layout"):
        get_benchmark("mvbench").load(tmp_path)
    assert get_benchmark("Video-MME").name == "videomme"


def test_compare_table_pdr_by_hand(data, tmp_path):
    from stop_hf.cli.compare import build_rows, format_table

    def run(name, config, script):
        llm = Scripted(script)
        res = evaluate(
            llm,
            "videocomp",
            data["videocomp"],
            tmp_path / f"{name}.json",
            progress=False,
            run_info={"model": "m", "config_name": config},
        )
        return res

    ref = run("ref", "none", {"left": "A", "cooks": "B", "onions": "B"})  # act 100, yc 100
    pruned = run("p", "visionzip_baseline_r10", {"left": "A", "cooks": "A", "onions": "B"})  # act 50, yc 100
    header, rows = build_rows([ref, pruned])
    row = dict(zip(header, rows[1]))
    assert row["VComp:activitynet"] == 50.0 and row["VComp:youcook2"] == 100.0
    assert row["PDR %"] == pytest.approx((50.0 + 0.0) / 2)  # mean of the two relative drops
    assert row["loyalty %"] == pytest.approx(200 / 3)
    assert dict(zip(header, rows[0]))["PDR %"] is None
    assert "visionzip_baseline_r10" in format_table([ref, pruned])


def test_resume_refuses_records_of_another_run(data, tmp_path):
    """Resuming into a JSONL written with another config would mix two runs' answers in one score."""
    out = tmp_path / "r.json"
    pruned = {"model": "m", "config_name": "visionzip_stop_r10", "frames": 8}
    evaluate(Scripted({}, "A"), "videomme", data["videomme"], out, limit=1, run_info=pruned, progress=False)
    resumed = Scripted({}, "A")
    evaluate(resumed, "videomme", data["videomme"], out, run_info=pruned, progress=False)
    assert resumed.calls == 3
    with pytest.raises(ValueError, match="config_name='visionzip_stop_r10'.*different --out"):
        evaluate(
            Scripted({}, "A"),
            "videomme",
            data["videomme"],
            out,
            run_info={**pruned, "config_name": "none"},
            progress=False,
        )
