"""Benchmarks read from their official local file layouts (see docs/evaluation.md).

Each benchmark: `load(data_dir) -> list[Sample]` (validates every annotation entry first: broken ones are listed
in `invalid` with file, entry and field, and left out), `prompt(sample) -> str`, `score(sample, answer) -> dict`
(the official rule's `pred` / `correct`, plus diagnostics), `aggregate(records) -> dict`. A record is the per-sample
JSON line the runner writes: the sample id, `meta`, `answer` text, the `score` dict, or `error` / `skipped`.

Denominators: every headline counts an errored sample (missing video, failed generation) as wrong, so a run can
never score above its true accuracy over all selected samples; the one exception is Video-MME's official rule,
which divides by answered questions (its runs are marked incomplete when any sample errored).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .metrics import (
    LETTERS,
    eventhallusion_ground_truth,
    eventhallusion_yes_no,
    judge_verdict,
    mc_letter,
    mean,
    mlvu_official_correct,
    mvbench_guarded_correct,
    mvbench_lmms_correct,
    mvbench_notebook_answer,
    mvbench_notebook_correct,
    strip_option_prefix,
    videocomp_official_correct,
    videomme_lmms_legacy_letter,
    videomme_lmms_letter,
    videomme_official_letter,
)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")
_ALL_EXTENSIONS = VIDEO_EXTENSIONS + tuple(e.upper() for e in VIDEO_EXTENSIONS)


@dataclass
class Sample:
    id: str
    video: Path
    question: str
    answer: str
    options: list[str] = field(default_factory=list)
    kind: str = "mc"  # "mc" | "binary" | "judge"
    meta: dict[str, Any] = field(default_factory=dict)
    #: (start, end) in seconds when the question is about one segment of the video (None: the whole file)
    window: tuple[float | None, float | None] | None = None


class AnnotationError(ValueError):
    """A broken annotation file (not one broken entry: those are listed in `Benchmark.invalid`)."""


def read_text(path: Path) -> str:
    """A UTF-8 text file; a byte that is not UTF-8 is an error naming the file, its line and column."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        lineno = raw.count(b"\n", 0, exc.start) + 1
        raise AnnotationError(
            f"{path}: line {lineno} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
            f"{exc.start - line_start + 1})"
        ) from None


def read_json(path: Path) -> Any:
    """A JSON file; a parse error names the file (and line/column)."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise AnnotationError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from exc


def read_jsonl_file(path: Path) -> list[Any]:
    rows = []
    for lineno, line in enumerate(read_text(path).split("\n"), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise AnnotationError(f"{path}: line {lineno} is not valid JSON ({exc.msg})") from exc
    return rows


def _find_video(folders: list[Path], stems: list[str]) -> Path | None:
    """The first existing `<folder>/<stem>` or `<folder>/<stem><ext>` (lower- or upper-case extension)."""
    for folder in folders:
        for stem in stems:
            for candidate in [folder / stem] + [folder / f"{stem}{ext}" for ext in _ALL_EXTENSIONS]:
                if candidate.exists():
                    return candidate
    return None


def _expected(folder: Path, stem: str) -> Path:
    """Where a missing video was expected (recorded in the per-sample error)."""
    return folder / (stem if Path(stem).suffix else f"{stem}.mp4")


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path} (see docs/evaluation.md for the expected layout)")
    return path


def _pct(flags: list[bool]) -> float | None:
    return 100.0 * sum(bool(f) for f in flags) / len(flags) if flags else None


def _counted(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records that enter a denominator: scored and errored ones (an error counts as wrong); skipped judged
    samples are not counted (they are reported as skipped)."""
    return [r for r in records if not r.get("skipped")]


def _correct(record: dict[str, Any], key: str = "correct") -> bool:
    return bool(record.get("score", {}).get(key))


def _by(records: list[dict[str, Any]], meta_key: str, key: str = "correct") -> dict[str, float | None]:
    groups: dict[str, list[bool]] = {}
    for r in records:
        groups.setdefault(str(r["meta"].get(meta_key)), []).append(_correct(r, key))
    return {k: _pct(v) for k, v in sorted(groups.items())}


def _unique_letter(rule: Callable[[str | None, str], bool], text: str | None, n: int) -> str | None:
    """The one option letter the official rule accepts for `text` (None if none or several): the `pred` that
    loyalty compares."""
    accepted = [letter for letter in LETTERS[:n] if rule(text, letter)]
    return accepted[0] if len(accepted) == 1 else None


class Benchmark:
    name = ""
    max_new_tokens = 16
    #: the official protocol's system message and the start of the assistant's reply it pre-fills (None: none);
    #: `VideoLLM.answer(system=, prefill=)` builds them into the chat template
    system: str | None = None
    prefill: str | None = None
    #: the metrics that headline the paper's tables (and feed the relative drop)
    headline: list[str] = []

    def __init__(self) -> None:
        #: broken annotation entries found by the last `load`: "file: entry i (id): field 'x': problem"
        self.invalid: list[str] = []
        #: the annotation files the last `load` read, and why where there was a choice
        self.annotation_files: list[str] = []
        self.notes: list[str] = []

    def load(self, data_dir: str | Path) -> list[Sample]:
        self.invalid, self.annotation_files, self.notes = [], [], []
        samples = self._load(Path(data_dir))
        if not samples:
            detail = f"; {len(self.invalid)} broken entries, first: {self.invalid[0]}" if self.invalid else ""
            raise AnnotationError(f"no valid {self.name} samples in {data_dir}{detail}")
        ids = [s.id for s in samples]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise AnnotationError(f"{self.name}: sample id {dup!r} appears twice in {data_dir}")
        return samples

    def _load(self, root: Path) -> list[Sample]:
        raise NotImplementedError

    def _read_list(self, path: Path, what: str = "items") -> list:
        """Records `path` as an annotation file of this run and reads it: a JSON list, or an error naming it."""
        self.annotation_files.append(str(path))
        data = read_json(path)
        if not isinstance(data, list):
            raise AnnotationError(f"{path}: expected a list of {what}, got {type(data).__name__}")
        return data

    def _bad(self, path: Path, index: int, entry_id: Any, field_name: str, problem: str) -> None:
        label = f"entry {index}" + (f" ({entry_id})" if entry_id not in (None, "") else "")
        self.invalid.append(f"{path}: {label}: field {field_name!r}: {problem}")

    def prompt(self, sample: Sample) -> str:
        return sample.question

    def generation_kwargs(self, sample: Sample) -> dict[str, str]:
        """The `system` / `prefill` arguments of `VideoLLM.answer` for `sample` (only those the protocol sets)."""
        return {k: v for k, v in (("system", self.system), ("prefill", self.prefill)) if v is not None}

    def protocol(self) -> dict[str, Any]:
        """What the model is asked, for the run identity: a resumed run with another prompt, system message,
        pre-fill or generation length is refused."""
        probe = Sample("probe", Path("probe"), "QUESTION?", "A", ["OPTION 1", "OPTION 2"])
        return {
            "system": self.system,
            "prefill": self.prefill,
            "max_new_tokens": self.max_new_tokens,
            "prompt": self.prompt(probe),
        }

    def score(self, sample: Sample, answer: str | None) -> dict[str, Any]:
        raise NotImplementedError

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError

    def unparsed(self, record: dict[str, Any]) -> bool:
        return "score" in record and record["score"].get("pred") is None


#: the ground-truth letter the official `qa_template` gives an item whose answer is not among its candidates:
#: `chr(ord('A') + answer_idx)` with answer_idx -1 (OpenGVLab/Ask-Anything 4dd8210 video_chat2/mvbench.ipynb
#: cell 12 `qa_template`; JUNJIE99/MLVU fd060c1 evaluation/multiple_choice_evaluation/choice_bench.py:79-90). No
#: option is "@", so the official `check_ans` scores such an item wrong whatever the model says (MLVU), or right
#: only for MVBench's letter-less answers; it stays in every denominator, as there.
NOT_A_CANDIDATE = chr(ord("A") - 1)


def _candidates(
    bench: Benchmark, path: Path, i: int, item: Any, entry_id: Any
) -> tuple[list[str], str] | None:
    """MVBench / MLVU items: `candidates` list and an `answer` -> (candidates, answer letter). An answer that is
    not among the candidates is kept, as the official scripts keep it, with the letter `NOT_A_CANDIDATE`; it is
    named in `bench.notes`."""
    if not isinstance(item, dict):
        bench._bad(path, i, entry_id, "(entry)", f"expected an object, got {type(item).__name__}")
        return None
    for key in ("video", "question", "candidates", "answer"):
        if item.get(key) in (None, ""):
            bench._bad(path, i, entry_id, key, "missing")
            return None
    candidates = item["candidates"]
    if not isinstance(candidates, list) or len(candidates) < 2 or len(candidates) > len(LETTERS):
        bench._bad(path, i, entry_id, "candidates", f"expected a list of 2..26 options, got {candidates!r}")
        return None
    candidates = [str(c) for c in candidates]
    if str(item["answer"]) not in candidates:
        label = f"entry {i}" + (f" ({entry_id})" if entry_id not in (None, "") else "")
        bench.notes.append(
            f"{path}: {label}: answer {item['answer']!r} is not one of the candidates {candidates}: kept and "
            f"scored against the letter {NOT_A_CANDIDATE!r}, as the official script does (never a right option)"
        )
        return candidates, NOT_A_CANDIDATE
    return candidates, LETTERS[candidates.index(str(item["answer"]))]


class _MultipleChoice(Benchmark):
    """Shared pieces: the lenient diagnostic parse next to the official one."""

    def _lenient(self, sample: Sample, answer: str | None) -> dict[str, Any]:
        pred = mc_letter(answer, sample.options)
        return {"lenient_pred": pred, "lenient_correct": pred == sample.answer}

    def _base_metrics(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        rows = _counted(records)
        return {
            "n": len(rows),
            "unparsed_rate": _pct([self.unparsed(r) for r in rows if "score" in r]),
            "lenient_accuracy": _pct([_correct(r, "lenient_correct") for r in rows]),
        }

    @staticmethod
    def _official_question(sample: Sample) -> str:
        """The official `qa_template` (MVBench notebook cell 12, MLVU choice_bench.py:79-88): "Question: ...\n
        Options:\n(A) ...\n(B) ..." with the trailing newline stripped."""
        options = "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(sample.options))
        return f"Question: {sample.question}\nOptions:\n{options}"


def _fraction(flags: list[bool]) -> dict[str, int]:
    """A metric's numerator and denominator, reported beside it."""
    return {"correct": sum(bool(f) for f in flags), "n": len(flags)}


# --------------------------------------------------------------------------------------------------- MVBench
#: MVBench's video folder per task under `video/` (OpenGVLab/Ask-Anything video_chat2/mvbench.ipynb
#: `data_list`; `fine_grained_pose` ships as video there, `episodic_reasoning` as frame folders)
MVBENCH_FOLDERS = {
    "action_sequence": "star/Charades_v1_480",
    "action_prediction": "star/Charades_v1_480",
    "action_antonym": "ssv2_video",
    "fine_grained_action": "Moments_in_Time_Raw/videos",
    "unexpected_action": "FunQA_test/test",
    "object_existence": "clevrer/video_validation",
    "object_interaction": "star/Charades_v1_480",
    "object_shuffle": "perception/videos",
    "moving_direction": "clevrer/video_validation",
    "action_localization": "sta/sta_video",
    "scene_transition": "scene_qa/video",
    "action_count": "perception/videos",
    "moving_count": "clevrer/video_validation",
    "moving_attribute": "clevrer/video_validation",
    "state_change": "perception/videos",
    "fine_grained_pose": "nturgbd",
    "character_order": "perception/videos",
    "egocentric_navigation": "vlnqa",
    "episodic_reasoning": "tvqa/frames_fps3_hq",
    "counterfactual_inference": "clevrer/video_validation",
}
#: lmms-eval's folders where they differ (lmms_eval/tasks/mvbench/utils.py DATA_LIST); `*_segment` folders hold
#: clips already cut to [start, end], which must not be trimmed a second time
MVBENCH_LMMS_FOLDERS = {
    "action_sequence": "star/Charades_segment",
    "action_prediction": "star/Charades_segment",
    "object_interaction": "star/Charades_segment",
    "action_localization": "sta/sta_video_segment",
    "episodic_reasoning": "tvqa/video_fps3_hq_segment",
    "fine_grained_pose": "nturgbd_convert",
    "action_antonym": "ssv2_video_mp4",
}
#: tasks whose question is about the segment [start, end] (seconds) of the video, given in each item
MVBENCH_BOUNDED = {
    "action_sequence",
    "action_prediction",
    "object_interaction",
    "action_localization",
    "episodic_reasoning",
}
#: frame folders are sampled at this rate (the notebook's `read_frame(..., fps=3)` for tvqa/frames_fps3_hq)
MVBENCH_FRAME_FPS = 3.0


def is_pre_cut(path: Path, video_root: Path) -> bool:
    """True for a clip in one of lmms-eval's `*_segment` folders under `video_root` (already cut to the window)."""
    try:
        parts = path.relative_to(video_root).parts
    except ValueError:
        return False
    return any(part.endswith("_segment") for part in parts[:-1])


class MVBench(_MultipleChoice):
    """HF `OpenGVLab/MVBench`: `json/<task>.json` (lists of {video, question, candidates, answer[, start, end]})
    and `video/<task folder>/<video>` (`MVBENCH_FOLDERS`, or lmms-eval's `MVBENCH_LMMS_FOLDERS`). The STAR / STA /
    TVQA tasks (`MVBENCH_BOUNDED`) ask about the [start, end] segment only (not re-cut in `*_segment` folders).
    Protocol: the notebook's (OpenGVLab/Ask-Anything 4dd8210 video_chat2/mvbench.ipynb cells 14-16): its system
    message, also prepended to the user text; the reply pre-filled with "Best option:("; 100 new tokens; "(" + the
    output's first line scored by `check_ans` as the notebook runs it. `accuracy` = correct / items over all tasks
    (the notebook's "Avg"; an empty or letter-less answer counts correct there), `accuracy_guarded` the same with
    such answers wrong, `by_task`; `denominators` gives each metric's correct / n."""

    name = "mvbench"
    headline = ["accuracy"]
    # mvbench.ipynb cell 16: infer_mvbench(system=..., question_prompt="\nOnly give the best option.",
    # answer_prompt="Best option:(", return_prompt='(', system_llm=True); cell 14: max_new_tokens=100
    system = (
        "Carefully watch the video and pay attention to the cause and sequence of events, the detail and movement "
        "of objects, and the action and pose of persons. Based on your observations, select the best option that "
        "accurately addresses the question.\n"
    )
    prefill = "Best option:("
    max_new_tokens = 100

    def _load(self, root):
        files = sorted(_require(root / "json", "MVBench json/ folder").glob("*.json"))
        if not files:
            raise FileNotFoundError(f"no MVBench task files in {root / 'json'}")
        index = self._video_index(root / "video")
        samples = []
        for file in files:
            task = file.stem
            data = self._read_list(file)
            for i, item in enumerate(data):
                parsed = _candidates(self, file, i, item, None)
                if parsed is None:
                    continue
                candidates, answer = parsed
                rel = str(item["video"])
                folders = [MVBENCH_FOLDERS.get(task, task), MVBENCH_LMMS_FOLDERS.get(task)]
                video = next(
                    (root / "video" / f / rel for f in folders if f and (root / "video" / f / rel).exists()),
                    None,
                )
                video = video or index.get(rel) or index.get(Path(rel).name)
                video = video or root / "video" / MVBENCH_FOLDERS.get(task, task) / rel
                window = None
                bounded = (
                    task in MVBENCH_BOUNDED and item.get("start") is not None and item.get("end") is not None
                )
                pre_cut = is_pre_cut(video, root / "video")
                if bounded and not pre_cut:
                    try:
                        window = (float(item["start"]), float(item["end"]))
                    except (TypeError, ValueError):
                        self._bad(
                            file, i, rel, "start/end", f"not numbers: {item['start']!r}, {item['end']!r}"
                        )
                        continue
                meta = {"task": task, "pre_cut": pre_cut} if bounded else {"task": task}
                samples.append(
                    Sample(
                        f"{task}/{i}",
                        video,
                        str(item["question"]),
                        answer,
                        candidates,
                        meta=meta,
                        window=window,
                    )
                )
        return samples

    @staticmethod
    def _video_index(folder: Path) -> dict[str, Path]:
        """MVBench keeps each task's clips in a source-specific subfolder; index them by name and relative path."""
        index: dict[str, Path] = {}
        if folder.is_dir():
            for path in folder.rglob("*"):
                if path.is_file():
                    index.setdefault(path.name, path)
                    parts = path.relative_to(folder).parts
                    for k in range(1, len(parts)):
                        index.setdefault("/".join(parts[k:]), path)
        return index

    def prompt(self, sample):
        # cell 14 with system_llm=True: `system + data_sample['question'] + question_prompt`
        return f"{self.system}{self._official_question(sample)}\nOnly give the best option."

    def score(self, sample, answer):
        scored = mvbench_notebook_answer(answer)  # "(" + the first line, what cell 16 passes to check_ans
        n = len(sample.options)
        guarded = mvbench_guarded_correct(scored, sample.answer)
        return {
            "pred": _unique_letter(lambda t, x: mvbench_guarded_correct(t or "", x), scored, n),
            "scored_answer": scored,
            "correct": mvbench_notebook_correct(scored, sample.answer),
            "guarded_correct": guarded,
            "lmms_correct": mvbench_lmms_correct(answer, sample.answer),
            "lmms_answered": bool(answer),
            **self._lenient(sample, answer),
        }

    def aggregate(self, records):
        rows = _counted(records)
        out = {"accuracy": _pct([_correct(r) for r in rows]), **self._base_metrics(records)}
        out["accuracy_guarded"] = _pct([_correct(r, "guarded_correct") for r in rows])
        out["by_task"] = _by(rows, "task")
        out["by_task_guarded"] = _by(rows, "task", "guarded_correct")
        out["task_mean"] = mean([v for v in out["by_task"].values() if v is not None])
        out["tasks_with_errors"] = sorted({r["meta"]["task"] for r in rows if "error" in r})
        # lmms-eval mvbench_aggregate_results: correct / answered (non-empty prediction)
        answered = [r for r in rows if r.get("score", {}).get("lmms_answered")]
        out["lmms_eval_accuracy"] = _pct([_correct(r, "lmms_correct") for r in answered])
        out["denominators"] = {
            "accuracy": _fraction([_correct(r) for r in rows]),
            "accuracy_guarded": _fraction([_correct(r, "guarded_correct") for r in rows]),
            "lmms_eval_accuracy": _fraction([_correct(r, "lmms_correct") for r in answered]),
            # scored but letter-less answers ("(" + output without a letter a-g): correct only by the notebook
            "letterless_answers": sum(
                "score" in r and not any(c in r["score"]["scored_answer"].lower() for c in "abcdefg")
                for r in rows
            ),
            "answer_not_in_candidates": sum(r.get("gt") == NOT_A_CANDIDATE for r in rows),
        }
        return out


# ------------------------------------------------------------------------------------------------- Video-MME
VIDEOMME_FIELDS = ("question_id", "question", "options", "answer")


class VideoMME(_MultipleChoice):
    """HF `lmms-eval/Video-MME` (`videomme/test-*.parquet`, or the same rows as JSON/JSONL) or the official grouped
    JSON (`output_test_template.json`: [{video_id, duration, domain, sub_category, questions: [...]}]); videos
    `data/<videoID>.mp4` (or `videos/`, `video/`, the data folder itself).
    Official metric (eval_your_results.py): `accuracy` = correct / answered, where answered = a letter was
    extracted; also `accuracy_all` (correct / all selected questions), lmms-eval 0.7.2/0.7.3's
    `lmms_eval_accuracy` (`mcq_extract`) and `lmms_eval_legacy_accuracy` (lmms-eval <= 0.7.1's extraction).
    Prompt: the README's subtitle-free prompt, ending "The best answer is:"."""

    name = "videomme"
    headline = ["accuracy"]
    #: Video-MME's official denominator leaves unanswered questions out, so errors mark the run incomplete
    errors_leave_denominator = True

    def _load(self, root):
        rows = self._rows(root)
        samples = []
        source = Path(self.annotation_files[0])
        folders = [root / "data", root / "videos", root / "video", root]
        for i, row in enumerate(rows):
            qid = row.get("question_id") if isinstance(row, dict) else None
            if not isinstance(row, dict):
                self._bad(source, i, None, "(entry)", f"expected an object, got {type(row).__name__}")
                continue
            missing = [k for k in VIDEOMME_FIELDS if row.get(k) is None]
            if missing:
                self._bad(source, i, qid, missing[0], "missing")
                continue
            raw_options = row["options"]
            if hasattr(raw_options, "tolist"):  # a numpy array from parquet
                raw_options = raw_options.tolist()
            if not isinstance(raw_options, list) or len(raw_options) < 2:
                self._bad(source, i, qid, "options", f"expected a list of options, got {raw_options!r}")
                continue
            options = [strip_option_prefix(str(o)) for o in raw_options]
            answer = str(row["answer"]).strip()
            if answer not in LETTERS[: len(options)] or len(answer) != 1:
                self._bad(
                    source,
                    i,
                    qid,
                    "answer",
                    f"{row['answer']!r} is not a letter of the {len(options)} options",
                )
                continue
            video_name = str(row.get("videoID") or row.get("video_id") or "")
            if not video_name:
                self._bad(source, i, qid, "videoID", "missing")
                continue
            video = _find_video(folders, [video_name]) or _expected(folders[0], video_name)
            meta = {k: row.get(k) for k in ("duration", "domain", "sub_category", "task_type", "videoID")}
            meta["videoID"] = video_name
            samples.append(Sample(str(qid), video, str(row["question"]), answer, options, meta=meta))
        return samples

    def _rows(self, root: Path) -> list[Any]:
        folder = root / "videomme"
        parquets = sorted(folder.glob("*.parquet")) or sorted(root.glob("test-*.parquet"))
        if parquets:
            try:
                import pandas as pd
            except ImportError as exc:
                raise ValueError(
                    "reading Video-MME's parquet needs pandas and pyarrow (pip install pandas pyarrow), "
                    "or convert it to videomme/test.json"
                ) from exc
            self.annotation_files += [str(p) for p in parquets]
            rows = []
            for p in parquets:
                try:
                    rows += pd.read_parquet(p).to_dict("records")
                except Exception as exc:  # noqa: BLE001 - pyarrow raises many types; name the file
                    raise AnnotationError(f"{p}: cannot read the parquet file ({exc})") from exc
            return rows
        candidates = [folder / "test.json", folder / "test.jsonl", root / "test.json", root / "test.jsonl"]
        candidates += [root / "output_test_template.json", folder / "output_test_template.json"]
        candidates += [root / "evaluation" / "output_test_template.json"]
        for path in candidates:
            if path.is_file():
                self.annotation_files.append(str(path))
                data = read_jsonl_file(path) if path.suffix == ".jsonl" else read_json(path)
                return flatten_videomme(data, path)
        raise FileNotFoundError(
            f"no Video-MME annotations in {root}: expected videomme/test-*.parquet, videomme/test.json(l) or the "
            "official grouped output_test_template.json (see docs/evaluation.md)"
        )

    def prompt(self, sample):
        # MME-Benchmarks/Video-MME 06c2315 README.md:124-133 ("Without subtitles"): instruction, question,
        # options "A. ...", then "The best answer is:"
        options = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(sample.options))
        return (
            "Select the best answer to the following multiple-choice question based on the video. "
            "Respond with only the letter (A, B, C, or D) of the correct option.\n"
            f"{sample.question}\n{options}\nThe best answer is:"
        )

    def score(self, sample, answer):
        official = videomme_official_letter(answer)
        lmms = videomme_lmms_letter(answer)
        legacy = videomme_lmms_legacy_letter(answer)
        return {
            "pred": official or None,
            "correct": official == sample.answer,
            "lmms_pred": lmms or None,
            # lmms-eval videomme_process_results compares case-insensitively (tasks/videomme/utils.py:288)
            "lmms_correct": lmms.lower() == sample.answer.lower(),
            "lmms_legacy_pred": legacy or None,
            "lmms_legacy_correct": legacy.lower() == sample.answer.lower(),
            **self._lenient(sample, answer),
        }

    def aggregate(self, records):
        rows = _counted(records)
        answered = [r for r in rows if "score" in r and r["score"].get("pred")]
        out: dict[str, Any] = {
            # eval_your_results.py: correct / answered, overall and per duration / domain / sub-category / task type
            "accuracy": _pct([_correct(r) for r in answered]),
            "answered": len(answered),
            "accuracy_all": _pct([_correct(r) for r in rows]),
            # lmms-eval videomme_aggregate_results: every question counts
            "lmms_eval_accuracy": _pct([_correct(r, "lmms_correct") for r in rows]),
            "lmms_eval_legacy_accuracy": _pct([_correct(r, "lmms_legacy_correct") for r in rows]),
            **self._base_metrics(records),
        }
        for key in ("duration", "domain", "sub_category", "task_type"):
            out[f"by_{key}"] = _by(answered, key)
        out["denominators"] = {
            "accuracy": _fraction([_correct(r) for r in answered]),
            "accuracy_all": _fraction([_correct(r) for r in rows]),
            "lmms_eval_accuracy": _fraction([_correct(r, "lmms_correct") for r in rows]),
            "lmms_eval_legacy_accuracy": _fraction([_correct(r, "lmms_legacy_correct") for r in rows]),
        }
        return out


def flatten_videomme(data: Any, path: Path) -> list[dict[str, Any]]:
    """Video-MME rows from the flat form (one row per question) or the official grouped form
    ([{video_id, duration, domain, sub_category, questions: [{question_id, task_type, question, options, answer,
    response?}]}], BradyFU/Video-MME evaluation/output_test_template.json)."""
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: expected a list, got {type(data).__name__}")
    rows: list[Any] = []
    for video in data:
        if isinstance(video, dict) and isinstance(video.get("questions"), list):
            shared = {k: v for k, v in video.items() if k != "questions"}
            rows += [{**shared, **q} if isinstance(q, dict) else q for q in video["questions"]]
        else:
            rows.append(video)
    return rows


# ------------------------------------------------------------------------------------------------- VideoComp
class VideoComp(_MultipleChoice):
    """`activitynet_comp_val.json` / `youcook2_comp_val.json` (google-deepmind/video_comp: lists of {key, video_id,
    type, query_video/start_time, query_video/end_time, question, answer, ...}). Videos: the full source videos,
    `activitynet_video/v_<video_id>.{mp4,mkv,webm}` and `raw_videos/video/<video_id>.{mp4,mkv,webm}`, of which only
    the query window is sampled (times in microseconds); or already-trimmed clips `videos/[<subset>/]<key>.mp4`.
    Official rule (README): exact match `answer == output` or `"(answer)" == output`. Metrics: accuracy per subset
    (Act, YC; headline), per disruption `type`, and the official "all" = product of the per-type accuracies."""

    name = "videocomp"
    headline = ["activitynet", "youcook2"]
    SUBSETS = {"activitynet": "activitynet_comp_val.json", "youcook2": "youcook2_comp_val.json"}
    SOURCE_FOLDERS = {"activitynet": ("activitynet_video", "v_"), "youcook2": ("raw_videos/video", "")}
    MICROSECONDS = 1_000_000

    def _load(self, root):
        samples = []
        for subset, filename in self.SUBSETS.items():
            path = root / filename
            if not path.is_file():
                continue
            data = self._read_list(path)
            source_folder, prefix = self.SOURCE_FOLDERS[subset]
            for i, item in enumerate(data):
                sample = self._sample(root, path, subset, i, item, source_folder, prefix)
                if sample is not None:
                    samples.append(sample)
        if not samples and not self.annotation_files:
            raise FileNotFoundError(f"neither of {sorted(self.SUBSETS.values())} found in {root}")
        return samples

    def _sample(self, root, path, subset, i, item, source_folder, prefix) -> Sample | None:
        if not isinstance(item, dict):
            self._bad(path, i, None, "(entry)", f"expected an object, got {type(item).__name__}")
            return None
        key = item.get("key")
        for name in ("video_id", "question", "answer"):
            if item.get(name) in (None, ""):
                self._bad(path, i, key, name, "missing")
                return None
        options = [str(o) for o in item.get("options", [])]
        inline = not options
        if (
            inline
        ):  # the captions written into the question as "(A) ..." lines: parsed for the prompt/diagnostic
            options = re.findall(r"^\s*\(?[A-Z][\).]\s*(.+?)\s*$", str(item["question"]), re.MULTILINE)
        official_answer = str(item["answer"])
        answer = official_answer.strip()
        answer = re.sub(r"^\(([A-Z])\)$", r"\1", answer)  # "(A)" names option A too
        if options and answer not in LETTERS[: len(options)]:
            if answer not in options:
                self._bad(
                    path, i, key, "answer", f"{answer!r} is neither an option letter nor an option's text"
                )
                return None
            answer = LETTERS[options.index(answer)]
        video_id = str(item["video_id"])
        key = str(key or video_id)
        window = None
        video = _find_video([root / "videos" / subset, root / "videos"], [key])  # a trimmed clip: used whole
        if video is None:
            names = (
                [f"{prefix}{video_id}", video_id]
                if prefix and not video_id.startswith(prefix)
                else [video_id]
            )
            video = _find_video([root / source_folder], names) or _expected(root / source_folder, names[0])
            window = self._window(item)
        meta = {
            "subset": subset,
            "type": item.get("type"),
            "inline_options": inline,
            "official_answer": official_answer,
            "start": item.get("query_video/start_time"),
            "end": self._end(item),
        }
        return Sample(
            f"{subset}/{key}/{i}", video, str(item["question"]), answer, options, meta=meta, window=window
        )

    @staticmethod
    def _end(item: dict[str, Any]) -> Any:
        # the README spells it `query_videl/end_time`; the released files use `query_video/end_time`
        return item.get("query_video/end_time", item.get("query_videl/end_time"))

    @classmethod
    def _window(cls, item: dict[str, Any]) -> tuple[float | None, float | None] | None:
        start, end = item.get("query_video/start_time"), cls._end(item)
        if start is None and end is None:
            return None
        return tuple(None if t is None else float(t) / cls.MICROSECONDS for t in (start, end))

    def prompt(self, sample):
        if sample.options and not sample.meta.get("inline_options"):
            options = "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(sample.options))
            body = f"{sample.question}\n{options}"
        else:
            body = sample.question
        return f"{body}\nAnswer with the option's letter from the given choices directly."

    def score(self, sample, answer):
        official = sample.meta.get("official_answer", sample.answer)
        correct = videocomp_official_correct(answer, official)
        # the pred loyalty compares: the letter the exact-match rule accepts, if any
        pred = None
        for letter in LETTERS[: max(len(sample.options), 1)]:
            if answer is not None and answer in (letter, f"({letter})"):
                pred = letter
        if correct and pred is None:
            pred = sample.answer
        return {"pred": pred, "correct": correct, **self._lenient(sample, answer)}

    def aggregate(self, records):
        rows = _counted(records)
        out: dict[str, Any] = {"accuracy": _pct([_correct(r) for r in rows]), **self._base_metrics(records)}
        out["by_subset"] = _by(rows, "subset")
        for subset in self.SUBSETS:
            subset_rows = [r for r in rows if r["meta"].get("subset") == subset]
            out[subset] = _pct([_correct(r) for r in subset_rows])
            by_type = _by([r for r in subset_rows if r["meta"].get("type") is not None], "type")
            out[f"{subset}_by_type"] = by_type
            out[f"{subset}_all"] = self.product(by_type)
        out["by_type"] = _by([r for r in rows if r["meta"].get("type") is not None], "type")
        out["all"] = self.product(out["by_type"])
        return out

    @staticmethod
    def product(by_type: dict[str, float | None]) -> float | None:
        """README: "all" = the product of the per-type binary accuracies (as fractions), reported in %."""
        values = [v for v in by_type.values() if v is not None]
        return 100.0 * math.prod(v / 100.0 for v in values) if values else None


# ------------------------------------------------------------------------------------------------------ MLVU
class MLVU(_MultipleChoice):
    """MLVU dev, multiple-choice tasks (HF `MLVU/MVLU`): `json/<n>_<task>.json` (lists of {video, duration,
    question, candidates, answer, question_type}) and `video/<n>_<task>/<video>` (also under `MLVU/`).
    Official rule (JUNJIE99/MLVU evaluation/multiple_choice_evaluation/choice_bench.py `check_ans`): cut the answer
    to the character before its first ")" (if any), then compare with the letter. Metrics: `by_task` and `m_avg`
    (mean over tasks, the paper's M-Avg; headline), `accuracy` over items. An item whose answer is not among its
    candidates (two `2_needle` entries) is kept and always wrong, as choice_bench.py counts it.
    Protocol: the official system message and "Best Option: (" pre-fill (choice_bench.py:163-167, the
    videollava script's run of it models/videollava/choice_bench.py:177-191); the output is scored as generated."""

    name = "mlvu"
    headline = ["m_avg"]
    system = (
        "Carefully watch this video and pay attention to every detail. Based on your observations, select the "
        "best option that accurately addresses the question."
    )
    prefill = "Best Option: ("
    # evaluation/models/videochat2/choice_bench.py:436 (the videollava script samples up to 1024 tokens)
    max_new_tokens = 100
    #: the dev-set multiple-choice files; 8_sub_scene / 9_summary are generation tasks (judged), not read
    GENERATION_TASKS = ("8_sub_scene", "9_summary")

    def _load(self, root):
        base = next((r for r in (root, root / "MLVU") if (r / "json").is_dir()), None)
        if base is None:
            raise FileNotFoundError(f"MLVU json/ folder not found in {root} (see docs/evaluation.md)")
        files = [f for f in sorted((base / "json").glob("*.json")) if f.stem not in self.GENERATION_TASKS]
        if not files:
            raise FileNotFoundError(f"no MLVU multiple-choice task files in {base / 'json'}")
        samples = []
        for file in files:
            data = self._read_list(file)
            bare = re.sub(r"^\d+_", "", file.stem)
            folders = [base / "video" / file.stem, base / "video" / bare, base / "video"]
            for i, item in enumerate(data):
                parsed = _candidates(self, file, i, item, None)
                if parsed is None:
                    continue
                candidates, answer = parsed
                name = str(item["video"])
                video = _find_video(folders, [name]) or _expected(folders[0], name)
                task = str(item.get("question_type") or bare)
                samples.append(
                    Sample(
                        f"{file.stem}/{i}",
                        video,
                        str(item["question"]),
                        answer,
                        candidates,
                        meta={"task": task},
                    )
                )
        return samples

    def prompt(self, sample):
        # qa_template, then `question + "\nOnly give the best option."` (models/videollava/choice_bench.py:177)
        return f"{self._official_question(sample)}\nOnly give the best option."

    def score(self, sample, answer):
        return {
            "pred": _unique_letter(mlvu_official_correct, answer, len(sample.options)),
            "correct": mlvu_official_correct(answer, sample.answer),
            **self._lenient(sample, answer),
        }

    def aggregate(self, records):
        rows = _counted(records)
        out: dict[str, Any] = {**self._base_metrics(records)}
        out["by_task"] = _by(rows, "task")
        # choice_bench.py: final_res["Avg"] = mean of the per-task accuracies
        out["m_avg"] = mean([v for v in out["by_task"].values() if v is not None])
        out["accuracy"] = _pct([_correct(r) for r in rows])
        out["denominators"] = {
            "accuracy": _fraction([_correct(r) for r in rows]),
            "by_task": {
                task: _fraction([_correct(r) for r in rows if str(r["meta"].get("task")) == task])
                for task in out["by_task"]
            },
            "answer_not_in_candidates": sum(r.get("gt") == NOT_A_CANDIDATE for r in rows),
        }
        return out


# ---------------------------------------------------------------------------------------------- EventHallusion
EH_SPLITS = ("entire", "interleave", "misleading")
EH_DESC_PROMPT = "Please describe this video in detail."
EH_BINARY_SUFFIX = "\nPlease answer yes or no:"  # the official inference scripts' suffix
#: question files per split, the current one first: upstream master replaced interleave_questions.json by
#: mix_questions.json (Dec 2024)
EH_FILES = {
    "entire": ["entire_questions.json"],
    "interleave": ["mix_questions.json", "interleave_questions.json"],
    "misleading": ["misleading_questions.json"],
}
#: the video folder names a split may have (`videos/interleave/` in the released archive, `videos/mix/` too)
EH_FOLDERS = {"entire": ["entire"], "interleave": ["interleave", "mix"], "misleading": ["misleading"]}


def eh_video_key(name: str) -> str:
    """One key for a video however a file names it: "mix_001", "interleave_001", "mix_001.mp4" -> "interleave_001"."""
    stem = Path(name).stem if Path(name).suffix.lower() in VIDEO_EXTENSIONS else name
    return re.sub(r"^(mix|interleave)_", "interleave_", stem)


def eh_split(name: str) -> str:
    return "interleave" if name == "mix" else name


class EventHallusion(Benchmark):
    """`questions/{entire,mix|interleave,misleading}_questions.json` (or the files directly in the data folder) and
    `videos/<split>/<name>.mp4`, `<split>/<name>.mp4` or `videos/<name>.mp4`; the interleave split's videos may be
    `interleave_NNN` or `mix_NNN`, in `interleave/` or `mix/`. Entries name their video by `id`, or by `video_name`
    when `id` is empty (the Dec-2024 mix_questions.json).

    Binary: Stevetich/EventHallusion eval.py (`eventhallusion_yes_no`), per split and overall; errors count as
    wrong. Description (one per entire / interleave video; the current eval.py and the SToP authors' loader leave
    the misleading videos out): judged by an LLM; without a judge it is reported as skipped."""

    name = "eventhallusion"
    headline = ["binary_accuracy", "desc_accuracy"]
    max_new_tokens = 16
    desc_max_new_tokens = 256
    DESC_SPLITS = ("entire", "interleave")

    def _question_files(self, root: Path) -> dict[str, Path]:
        folders = [root / "questions", root]
        found: dict[str, Path] = {}
        for split, names in EH_FILES.items():
            present = [f / n for f in folders for n in names if (f / n).is_file()]
            if not present:
                continue
            found[split] = present[0]
            if len({p.name for p in present}) > 1:
                self.notes.append(
                    f"both {present[0].name} and {present[-1].name} exist: using the current {present[0].name}"
                )
        return found

    def _load(self, root):
        files = self._question_files(root)
        if not files:
            raise FileNotFoundError(
                f"no EventHallusion question files in {root / 'questions'} or {root} "
                "(see docs/evaluation.md for the expected layout)"
            )
        samples = []
        for split, path in files.items():
            data = self._read_list(path, "videos")
            folders = [root / "videos" / f for f in EH_FOLDERS[split]] + [root / f for f in EH_FOLDERS[split]]
            folders += [root / "videos", root]
            for i, entry in enumerate(data):
                samples += self._entry_samples(path, split, i, entry, folders)
        return samples

    def _entry_samples(self, path, split, i, entry, folders) -> list[Sample]:
        if not isinstance(entry, dict):
            self._bad(path, i, None, "(entry)", f"expected an object, got {type(entry).__name__}")
            return []
        name = str(entry.get("id") or "").strip() or str(entry.get("video_name") or "").strip()
        if not name:
            self._bad(path, i, None, "id/video_name", "both empty: the entry names no video")
            return []
        vid = Path(name).stem if Path(name).suffix.lower() in VIDEO_EXTENSIONS else name
        key = eh_video_key(vid)
        stems = list(dict.fromkeys([name, vid, key, re.sub(r"^interleave_", "mix_", key)]))
        questions = entry.get("questions")
        if not isinstance(questions, list) or not questions:
            self._bad(path, i, vid, "questions", "missing or empty")
            return []
        parsed = []
        for j, q in enumerate(questions):
            if not isinstance(q, dict) or not str(q.get("question") or "").strip():
                self._bad(path, i, vid, f"questions[{j}].question", "missing")
                return []
            gt = eventhallusion_ground_truth(q.get("answer"))
            if gt is None:
                self._bad(
                    path, i, vid, f"questions[{j}].answer", f"{q.get('answer')!r} is not 'Yes.' or 'No.'"
                )
                return []
            parsed.append((str(q["question"]), gt))
        video = _find_video(folders, stems) or _expected(folders[0], vid)
        meta = {"split": split, "video_id": vid, "video_key": key}
        samples = [
            Sample(f"{split}/{vid}/q{j}", video, question, gt, kind="binary", meta=meta)
            for j, (question, gt) in enumerate(parsed)
        ]
        if split in self.DESC_SPLITS:
            info = entry.get("event_info") if isinstance(entry.get("event_info"), dict) else {}
            samples.append(
                Sample(
                    f"{split}/{vid}/desc",
                    video,
                    EH_DESC_PROMPT,
                    json.dumps(info, sort_keys=True),
                    kind="judge",
                    meta={**meta, "event_info": info},
                )
            )
        return samples

    def prompt(self, sample):
        return sample.question + (EH_BINARY_SUFFIX if sample.kind == "binary" else "")

    def score(self, sample, answer):
        pred = eventhallusion_yes_no(answer)
        return {"pred": pred, "gt": sample.answer, "correct": pred == sample.answer}

    def judge_prompt(self, sample: Sample, answer: str) -> str:
        """Our wording of the per-split referee question (the official prompts live in the EventHallusion repo)."""
        info = sample.meta.get("event_info", {})
        split = sample.meta["split"]
        ground_truth = info.get("caption") or json.dumps(info)
        question = {
            "entire": "Is the description consistent with the ground-truth event, without inventing events?",
            "interleave": "Does the description mention the unexpected event given in the ground truth?",
            "misleading": "Is the description free of events unrelated to the ground truth?",
        }[split]
        extra = {k: v for k, v in info.items() if k != "caption"}
        return (
            "You are evaluating a video description.\n"
            f"Ground-truth caption: {ground_truth}\nGround-truth event details: {json.dumps(extra)}\n"
            f"Model description: {answer}\n{question} Answer with only 'yes' or 'no'."
        )

    def judge_score(self, sample: Sample, verdict: str | None) -> dict[str, Any]:
        pred = judge_verdict(verdict)
        return {"pred": pred, "correct": pred == "yes", "verdict": verdict}

    def aggregate(self, records):
        binary = [r for r in records if r["kind"] == "binary"]
        desc = [r for r in _counted(records) if r["kind"] == "judge"]
        scored = [r for r in binary if "score" in r]
        out: dict[str, Any] = {
            # eval.py: correct / all questions (an errored question is wrong, never dropped)
            "binary_accuracy": _pct([_correct(r) for r in binary]),
            "binary_n": len(binary),
            "yes_rate": _pct([r["score"]["pred"] == "yes" for r in scored]),
            "unparsed_rate": _pct([r["score"]["pred"] is None for r in scored]),
        }
        for split in EH_SPLITS:
            rows = [r for r in binary if r["meta"]["split"] == split]
            if rows:
                out[f"binary_{split}"] = _pct([_correct(r) for r in rows])
                out[f"yes_rate_{split}"] = _pct([r["score"]["pred"] == "yes" for r in rows if "score" in r])
        # balanced accuracy over the ground-truth classes (each split is single-polarity)
        per_class = [_pct([_correct(r) for r in binary if r.get("gt") == c]) for c in ("yes", "no")]
        per_class = [p for p in per_class if p is not None]
        out["binary_balanced_accuracy"] = mean(per_class) if per_class else None
        skipped = [r for r in records if r.get("skipped") and r["kind"] == "judge"]
        if desc:
            out["desc_accuracy"] = _pct([_correct(r) for r in desc])
            out["desc_n"] = len(desc)
            for split in self.DESC_SPLITS:
                rows = [r for r in desc if r["meta"]["split"] == split]
                if rows:
                    out[f"desc_{split}"] = _pct([_correct(r) for r in rows])
            correct = sum(_correct(r) for r in binary) + sum(_correct(r) for r in desc)
            out["overall_accuracy"] = 100.0 * correct / (len(binary) + len(desc))
        else:
            out["desc_accuracy"] = "skipped" if skipped else None
            out["overall_accuracy"] = "skipped" if skipped else None
        out["desc_skipped"] = len(skipped)
        return out


REGISTRY: dict[str, type[Benchmark]] = {
    cls.name: cls for cls in (EventHallusion, VideoComp, MVBench, VideoMME, MLVU)
}


def get_benchmark(name: str) -> Benchmark:
    key = name.lower().replace("-", "").replace("_", "")
    for registered, cls in REGISTRY.items():
        if registered == key:
            return cls()
    raise ValueError(f"unknown benchmark {name!r}; available: {sorted(REGISTRY)}")
