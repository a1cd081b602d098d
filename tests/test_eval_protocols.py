"""Each benchmark's official protocol (issue 21 item 8): the prompt text against the official code's text (copied
here from the source, cited above each test), the system message and assistant pre-fill reaching the chat template,
the official post-processing and denominators in a run, and MLVU's non-candidate answers counted as the official
script counts them."""

import json
import types
from pathlib import Path

import pytest

from stop_hf.eval import synthetic
from stop_hf.eval.benchmarks import Sample, get_benchmark
from stop_hf.eval.runner import evaluate, read_jsonl
from stop_hf.runner import Answer, VideoLLM

# OpenGVLab/Ask-Anything 4dd8210 video_chat2/mvbench.ipynb cell 16, `infer_mvbench(system=...)`
MVBENCH_NOTEBOOK_SYSTEM = (
    "Carefully watch the video and pay attention to the cause and sequence of events, the detail and movement of "
    "objects, and the action and pose of persons. Based on your observations, select the best option that "
    "accurately addresses the question.\n"
)
# JUNJIE99/MLVU fd060c1 evaluation/multiple_choice_evaluation/choice_bench.py:164
MLVU_SYSTEM = (
    "Carefully watch this video and pay attention to every detail. Based on your observations, select the best "
    "option that accurately addresses the question."
)
# MME-Benchmarks/Video-MME 06c2315 README.md:125-133, the "Without subtitles" example
VIDEOMME_README_EXAMPLE = """Select the best answer to the following multiple-choice question based on the video. \
Respond with only the letter (A, B, C, or D) of the correct option.
What is the color of the clothing worn by the persons in the video?
A. Black.
B. Gray.
C. Green.
D. Brown.
The best answer is:"""


def mc_sample(question, options, answer="A"):
    return Sample("s", Path("v.mp4"), question, answer, options)


def test_mvbench_prompt_is_the_notebooks():
    bench = get_benchmark("mvbench")
    sample = mc_sample("What is the man doing?", ["running", "jumping", "sitting"])
    # cell 12 qa_template + cell 14 (system_llm=True: system + question + question_prompt)
    assert bench.prompt(sample) == (
        MVBENCH_NOTEBOOK_SYSTEM + "Question: What is the man doing?\nOptions:\n(A) running\n(B) jumping\n"
        "(C) sitting\nOnly give the best option."
    )
    assert bench.system == MVBENCH_NOTEBOOK_SYSTEM
    assert bench.prefill == "Best option:("  # cell 16 answer_prompt
    assert bench.max_new_tokens == 100  # cell 14
    assert bench.generation_kwargs(sample) == {"system": MVBENCH_NOTEBOOK_SYSTEM, "prefill": "Best option:("}


def test_mlvu_prompt_is_the_official_scripts():
    bench = get_benchmark("mlvu")
    sample = mc_sample("How many dogs?", ["1", "2"])
    # choice_bench.py:79-90 qa_template, models/videollava/choice_bench.py:177 `+ "\nOnly give the best option."`
    assert (
        bench.prompt(sample) == "Question: How many dogs?\nOptions:\n(A) 1\n(B) 2\nOnly give the best option."
    )
    assert bench.system == MLVU_SYSTEM
    assert bench.prefill == "Best Option: ("  # choice_bench.py:166
    assert bench.generation_kwargs(sample) == {"system": MLVU_SYSTEM, "prefill": "Best Option: ("}


def test_videomme_prompt_is_the_readmes():
    bench = get_benchmark("videomme")
    options = ["Black.", "Gray.", "Green.", "Brown."]  # the loader strips the "A. " the release carries
    sample = mc_sample("What is the color of the clothing worn by the persons in the video?", options)
    assert bench.prompt(sample) == VIDEOMME_README_EXAMPLE
    assert bench.system is None and bench.prefill is None and bench.generation_kwargs(sample) == {}


@pytest.mark.parametrize("arch", ["llava_onevision", "qwen3_vl"])
def test_system_and_prefill_reach_the_chat_template(arch):
    from stop_hf.tiny import build_processor

    llm = types.SimpleNamespace(processor=build_processor(arch))  # VideoLLM.prompt only reads the processor
    plain = VideoLLM.prompt(llm, "Which?")
    text = VideoLLM.prompt(llm, "Which?", system="Watch closely.", prefill="Best option:(")
    assert text.endswith(plain.split("<|im_start|>user")[1] + "Best option:(")  # after the generation prompt
    assert text.startswith("<|im_start|>system\nWatch closely.<|im_end|>")
    assert "Watch closely." not in plain and not plain.endswith("(")
    with pytest.raises(ValueError, match="prefill=''"):
        VideoLLM.prompt(llm, "Which?", prefill="")


def test_prefill_on_a_tiny_model_single_and_batched(tmp_path):
    """The pre-fill ends the model's input; `Answer.text` is the continuation; a batch equals its single runs."""
    from stop_hf.testing import write_video

    llm = VideoLLM.tiny("llava_onevision", num_frames=4)
    videos = [
        write_video(tmp_path / f"v{i}.mp4", num_frames=4, height=96, width=128, seed=i) for i in range(2)
    ]
    kwargs = {"system": "Watch.", "prefill": "Best option:("}
    inputs = llm.prepare(videos[0], "Which?", **kwargs)
    tail = llm.processor.tokenizer("Best option:(", add_special_tokens=False)["input_ids"]
    assert inputs["input_ids"][0, -len(tail) :].tolist() == tail
    single = [llm.answer(v, q, max_new_tokens=3, **kwargs) for v, q in zip(videos, ["Which?", "Why?"])]
    batch = llm.answer_batch(videos, ["Which?", "Why?"], max_new_tokens=3, **kwargs)
    assert [a.text for a in batch] == [a.text for a in single]
    assert [a.prompt_tokens for a in batch] == [a.prompt_tokens for a in single]
    assert not single[0].text.startswith("Best option")


class Recorder:
    """`VideoLLM.answer`'s API: answers from a script keyed by the prompt's question and records the protocol."""

    def __init__(self, script):
        self.script, self.seen = script, []

    def answer(self, video, question, max_new_tokens=16, **protocol):
        self.seen.append((max_new_tokens, protocol))
        text = next(t for key, t in self.script.items() if key in question)
        return Answer(text, 1, 1, 1, 1, {})


def test_mvbench_run_scores_as_the_notebook_with_the_guarded_metric_beside(tmp_path):
    # samples: action_sequence/0 (gt B), action_sequence/1 (gt A), object_shuffle/0 (gt C)
    root = synthetic.make_mvbench(tmp_path / "mv")
    script = {"(A) 3\n(B) 4": "B\nBecause the count is four", "(A) 1\n(B) 2": "", "(A) left": "."}
    llm = Recorder(script)
    res = evaluate(llm, "mvbench", root, tmp_path / "r.json", progress=False)
    m = res["metrics"]
    bench = get_benchmark("mvbench")
    assert llm.seen == [(100, {"system": bench.system, "prefill": "Best option:("})] * 3
    # notebook: "(b" right (first line), "(" and "(." right for any option; guarded: only the first
    assert m["accuracy"] == 100.0 and m["accuracy_guarded"] == pytest.approx(100 / 3)
    assert m["denominators"]["accuracy"] == {"correct": 3, "n": 3}
    assert m["denominators"]["accuracy_guarded"] == {"correct": 1, "n": 3}
    assert m["denominators"]["letterless_answers"] == 2
    records = {r["id"]: r for r in read_jsonl(tmp_path / "r.jsonl")}
    assert records["action_sequence/0"]["answer"] == "B\nBecause the count is four"  # stored as generated
    assert records["action_sequence/0"]["score"]["scored_answer"] == "(B"
    assert records["action_sequence/1"]["score"]["pred"] is None  # "(" names no option


def test_mlvu_keeps_non_candidate_answers_and_counts_them_wrong(tmp_path):
    root = synthetic.make_mlvu(tmp_path / "mlvu")
    path = next((root / "json").glob("*.json"))
    items = json.loads(path.read_text())
    items.append({**items[0], "answer": "not an option"})  # as the two real 2_needle entries
    path.write_text(json.dumps(items))
    # choice_bench.py check_ans cuts at ")": the model names the option whose text is the old answer, and "@"
    res = evaluate(Recorder({"Question": "@) x"}), "mlvu", root, tmp_path / "a.json", progress=False)
    assert res["counts"]["invalid_entries"] == 0 and res["complete"]
    assert any("'not an option' is not one of the candidates" in n for n in res["notes"])
    assert res["metrics"]["denominators"]["answer_not_in_candidates"] == 1
    n = res["counts"]["selected"]
    # "@" is the official letter of such an item (answer_idx -1): the official rule finds it equal
    assert res["metrics"]["denominators"]["accuracy"] == {"correct": 1, "n": n}
    res = evaluate(Recorder({"Question": "A"}), "mlvu", root, tmp_path / "b.json", progress=False)
    kept = [r for r in read_jsonl(tmp_path / "b.jsonl") if r["gt"] == "@"]
    assert len(kept) == 1 and kept[0]["score"]["correct"] is False  # in the denominator, wrong
    assert res["metrics"]["denominators"]["accuracy"]["n"] == n


def test_a_resume_with_another_protocol_is_refused(tmp_path, monkeypatch):
    root = synthetic.make_mvbench(tmp_path / "mv")
    llm = Recorder({"Question": "A"})
    evaluate(llm, "mvbench", root, tmp_path / "r.json", progress=False, limit=1)
    from stop_hf.eval.benchmarks import MVBench

    monkeypatch.setattr(MVBench, "prefill", "Answer: (")
    with pytest.raises(ValueError, match="protocol="):
        evaluate(llm, "mvbench", root, tmp_path / "r.json", progress=False)


def test_runs_under_different_protocols_are_not_compared(tmp_path, monkeypatch):
    from stop_hf.eval.benchmarks import MVBench
    from stop_hf.eval.runner import compare_to_reference

    root = synthetic.make_mvbench(tmp_path / "mv")
    first = evaluate(Recorder({"Question": "A"}), "mvbench", root, tmp_path / "a.json", progress=False)
    monkeypatch.setattr(MVBench, "system", "Watch.")
    second = evaluate(Recorder({"Question": "A"}), "mvbench", root, tmp_path / "b.json", progress=False)
    with pytest.raises(ValueError, match=r"different protocols \(prompt, system differ\)"):
        compare_to_reference(second, first)
    assert compare_to_reference(first, first)["mismatches"] == []
