"""Benchmarks read from their official local file layouts (see docs/evaluation.md).

Each benchmark: `load(data_dir) -> list[Sample]`, `prompt(sample) -> str`, `score(sample, answer_text) -> dict`,
`aggregate(records) -> dict`. A record is the per-sample JSON line the runner writes: the sample id, `meta`,
`answer` text, the `score` dict (or `error` / `skipped`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .metrics import LETTERS, eventhallusion_yes_no, judge_verdict, mc_letter, mean, strip_option_prefix

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")


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


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _find_video(folders: list[Path], stem: str) -> Path:
    """The first existing `<folder>/<stem>` or `<folder>/<stem><ext>`; else the first candidate (missing files are
    recorded as per-sample errors by the runner, never dropped)."""
    candidates = []
    for folder in folders:
        candidates.append(folder / stem)
        candidates += [folder / f"{stem}{ext}" for ext in VIDEO_EXTENSIONS]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return folders[0] / (stem if Path(stem).suffix else f"{stem}.mp4")


def _find_existing(folders: list[Path], stems: list[str]) -> Path | None:
    """The first existing video among `stems` in `folders`, else None."""
    for stem in stems:
        found = _find_video(folders, stem)
        if found.is_file():
            return found
    return None


def _pct(correct: list[bool]) -> float | None:
    return 100.0 * mean([float(c) for c in correct]) if correct else None


class Benchmark:
    name = ""
    max_new_tokens = 16
    #: the metric that headlines the paper's tables (and feeds the relative drop)
    headline: list[str] = []

    def load(self, data_dir: str | Path) -> list[Sample]:
        raise NotImplementedError

    def prompt(self, sample: Sample) -> str:
        return sample.question

    def score(self, sample: Sample, answer: str) -> dict[str, Any]:
        raise NotImplementedError

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError

    # shared helpers
    @staticmethod
    def scored(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in records if "score" in r]


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path} (see docs/evaluation.md for the expected layout)")
    return path


# ---------------------------------------------------------------------------------------------- multiple choice
class _MultipleChoice(Benchmark):
    def score(self, sample: Sample, answer: str) -> dict[str, Any]:
        pred = mc_letter(answer, sample.options)
        return {"pred": pred, "correct": pred == sample.answer}

    def _mc_aggregate(self, records: list[dict[str, Any]], by: list[str]) -> dict[str, Any]:
        scored = self.scored(records)
        out: dict[str, Any] = {
            "accuracy": _pct([r["score"]["correct"] for r in scored]),
            "n": len(scored),
            "unparsed_rate": _pct([r["score"]["pred"] is None for r in scored]),
        }
        for key in by:
            groups: dict[str, list[bool]] = {}
            for r in scored:
                groups.setdefault(str(r["meta"].get(key)), []).append(r["score"]["correct"])
            out[f"by_{key}"] = {k: _pct(v) for k, v in sorted(groups.items())}
        return out


#: MVBench's video folder per task under `video/` (the layout of HF `OpenGVLab/MVBench`, as its README lists it)
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
#: tasks whose question is about the segment [start, end] (seconds) of the video, given in each item
MVBENCH_BOUNDED = {
    "action_sequence",
    "action_prediction",
    "object_interaction",
    "action_localization",
    "episodic_reasoning",
}


class MVBench(_MultipleChoice):
    """HF `OpenGVLab/MVBench`: `json/<task>.json` (lists of {video, question, candidates, answer[, start, end]})
    and `video/<task folder>/<video>` (`MVBENCH_FOLDERS`). The STAR / STA / TVQA tasks (`MVBENCH_BOUNDED`) ask
    about the [start, end] segment only. Metric: per-task accuracy and their mean (`accuracy`, MVBench's "Avg").
    `episodic_reasoning` ships frame folders, not video files: those samples are recorded as errors."""

    name = "mvbench"
    headline = ["accuracy"]

    def load(self, data_dir):
        root = Path(data_dir)
        files = sorted(_require(root / "json", "MVBench json/ folder").glob("*.json"))
        if not files:
            raise FileNotFoundError(f"no MVBench task files in {root / 'json'}")
        index = self._video_index(root / "video")
        samples = []
        for file in files:
            task = file.stem
            for i, item in enumerate(_read_json(file)):
                candidates = [str(c) for c in item["candidates"]]
                answer = LETTERS[candidates.index(str(item["answer"]))]
                rel = str(item["video"])
                official = root / "video" / MVBENCH_FOLDERS.get(task, task) / rel
                video = (
                    official
                    if official.is_file()
                    else index.get(rel) or index.get(Path(rel).name) or official
                )
                window = None
                if task in MVBENCH_BOUNDED and item.get("start") is not None and item.get("end") is not None:
                    window = (float(item["start"]), float(item["end"]))
                samples.append(
                    Sample(
                        f"{task}/{i}",
                        video,
                        str(item["question"]),
                        answer,
                        candidates,
                        meta={"task": task},
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
        options = "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(sample.options))
        return f"Question: {sample.question}\nOptions:\n{options}\nOnly give the best option."

    def aggregate(self, records):
        out = self._mc_aggregate(records, ["task"])
        out["overall_accuracy"] = out["accuracy"]
        per_task = [v for v in out["by_task"].values() if v is not None]
        out["accuracy"] = mean(per_task)
        return out


class VideoMME(_MultipleChoice):
    """HF `lmms-eval/Video-MME`: `videomme/test-*.parquet` (or a JSON/JSONL with the same fields) and `data/<videoID>.mp4`.
    Fields: videoID, question_id, duration, domain, sub_category, task_type, question, options ["A. ..."], answer.
    Metric: accuracy, by duration (short/medium/long), domain and task type."""

    name = "videomme"
    headline = ["accuracy"]

    def load(self, data_dir):
        root = Path(data_dir)
        rows = self._rows(root)
        samples = []
        for row in rows:
            options = [strip_option_prefix(str(o)) for o in row["options"]]
            samples.append(
                Sample(
                    str(row["question_id"]),
                    _find_video([root / "data", root / "videos", root], str(row["videoID"])),
                    str(row["question"]),
                    str(row["answer"]).strip().upper()[:1],
                    options,
                    meta={k: row.get(k) for k in ("duration", "domain", "task_type", "videoID")},
                )
            )
        return samples

    @staticmethod
    def _rows(root: Path) -> list[dict[str, Any]]:
        folder = root / "videomme"
        parquets = sorted(folder.glob("*.parquet"))
        if parquets:
            try:
                import pandas as pd
            except ImportError as exc:
                raise ValueError(
                    "reading Video-MME's parquet needs pandas and pyarrow (pip install pandas pyarrow), "
                    "or convert it to videomme/test.json"
                ) from exc

            return [r for p in parquets for r in pd.read_parquet(p).to_dict("records")]
        for name in ("test.json", "test.jsonl"):
            path = folder / name
            if path.is_file():
                if name.endswith(".jsonl"):
                    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
                return _read_json(path)
        raise FileNotFoundError(
            f"no Video-MME annotations in {folder} (test-*.parquet, test.json or test.jsonl)"
        )

    def prompt(self, sample):
        options = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(sample.options))
        return (
            "Select the best answer to the following multiple-choice question based on the video. "
            "Respond with only the letter (A, B, C, or D) of the correct option.\n"
            f"{sample.question}\n{options}\nAnswer with the option's letter from the given choices directly."
        )

    def aggregate(self, records):
        return self._mc_aggregate(records, ["duration", "domain", "task_type"])


class VideoComp(_MultipleChoice):
    """`activitynet_comp_val.json` / `youcook2_comp_val.json` (lists of {video_id, question, answer, key,
    query_video/start_time, query_video/end_time, options?}). Videos: the full source videos,
    `activitynet_video/v_<video_id>.{mp4,mkv,webm}` and `raw_videos/video/<video_id>.{mp4,mkv,webm}` (ActivityNet
    Captions / YouCook2 as downloaded), of which only the query window is sampled (the times are microseconds);
    or already-trimmed clips `videos/[<subset>/]<key>.mp4`, used whole. `question` holds the captions as lettered
    options unless an `options` list is given; `answer` is the letter or the correct option's text.
    Metric: accuracy per subset (Act, YC)."""

    name = "videocomp"
    headline = ["activitynet", "youcook2"]
    SUBSETS = {"activitynet": "activitynet_comp_val.json", "youcook2": "youcook2_comp_val.json"}
    SOURCE_FOLDERS = {"activitynet": ("activitynet_video", "v_"), "youcook2": ("raw_videos/video", "")}
    MICROSECONDS = 1_000_000

    def load(self, data_dir):
        root = Path(data_dir)
        samples = []
        for subset, filename in self.SUBSETS.items():
            path = root / filename
            if not path.is_file():
                continue
            folders = [root / "videos" / subset, root / "videos"]
            source_folder, prefix = self.SOURCE_FOLDERS[subset]
            for i, item in enumerate(_read_json(path)):
                options = [str(o) for o in item.get("options", [])]
                inline = not options
                if inline:  # captions written into the question as "(A) ..." lines: parse them for scoring
                    options = re.findall(
                        r"^\s*\(?[A-Z][\).]\s*(.+?)\s*$", str(item["question"]), re.MULTILINE
                    )
                answer = str(item["answer"]).strip()
                if options and answer not in LETTERS[: len(options)]:
                    answer = LETTERS[options.index(answer)]
                key = str(item.get("key") or item["video_id"])
                video_id = str(item["video_id"])
                window = None
                video = _find_video(folders, key)  # a trimmed clip: used whole
                if not video.is_file():
                    names = (
                        [f"{prefix}{video_id}", video_id]
                        if prefix and not video_id.startswith(prefix)
                        else [video_id]
                    )
                    video = _find_existing([root / source_folder], names) or _find_video(
                        [root / source_folder], names[0]
                    )
                    window = self._window(item)
                meta = {
                    "subset": subset,
                    "inline_options": inline,
                    "start": item.get("query_video/start_time"),
                    "end": item.get("query_video/end_time"),
                }
                samples.append(
                    Sample(
                        f"{subset}/{key}/{i}",
                        video,
                        str(item["question"]),
                        answer,
                        options,
                        meta=meta,
                        window=window,
                    )
                )
        if not samples:
            raise FileNotFoundError(f"neither of {sorted(self.SUBSETS.values())} found in {root}")
        return samples

    @classmethod
    def _window(cls, item: dict[str, Any]) -> tuple[float | None, float | None] | None:
        start, end = item.get("query_video/start_time"), item.get("query_video/end_time")
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

    def aggregate(self, records):
        out = self._mc_aggregate(records, ["subset"])
        for subset in self.SUBSETS:
            out[subset] = out["by_subset"].get(subset)
        return out


# ---------------------------------------------------------------------------------------------- EventHallusion
EH_SPLITS = ("entire", "interleave", "misleading")
EH_DESC_PROMPT = "Please describe this video in detail."
EH_BINARY_SUFFIX = "\nPlease answer yes or no:"  # the official inference scripts' suffix


class EventHallusion(Benchmark):
    """`questions/{entire,interleave|mix,misleading}_questions.json` and `videos/<split>/<id>.mp4` (or `videos/<id>.mp4`).
    The newer `mix_questions.json` replaces `interleave_questions.json`; its ids `mix_NNN` name the videos
    `videos/interleave/interleave_NNN.mp4`.

    Binary: correct iff the lower-cased answer starts with "yes"/"no" and equals the ground truth (the official
    eval.py rule, `eventhallusion_yes_no`); answers that start with neither are wrong and counted in `unparsed_rate`. Reported per split and overall, with
    the yes-rate. Description (one per video): judged by an LLM; without a judge it is reported as skipped."""

    name = "eventhallusion"
    headline = ["binary_accuracy", "desc_accuracy"]
    max_new_tokens = 16
    desc_max_new_tokens = 256

    def load(self, data_dir):
        root = Path(data_dir)
        qdir = _require(root / "questions", "EventHallusion questions/ folder")
        samples = []
        for split in EH_SPLITS:
            names = [f"{split}_questions.json"] + (["mix_questions.json"] if split == "interleave" else [])
            path = next((qdir / n for n in names if (qdir / n).is_file()), None)
            if path is None:
                continue
            for entry in _read_json(path):
                vid = str(entry["id"])
                folders = [root / "videos" / split, root / "videos", root]
                stems = [vid, vid.replace("mix", "interleave", 1)] if vid.startswith("mix") else [vid]
                video = _find_existing(folders, stems) or _find_video(folders, stems[-1])
                info = entry.get("event_info", {})
                meta = {"split": split, "video_id": vid}
                for j, q in enumerate(entry.get("questions", [])):
                    gt = eventhallusion_yes_no(str(q["answer"]))
                    samples.append(
                        Sample(
                            f"{split}/{vid}/q{j}",
                            video,
                            str(q["question"]),
                            gt or "",
                            kind="binary",
                            meta=meta,
                        )
                    )
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
        if not samples:
            raise FileNotFoundError(f"no EventHallusion question files in {qdir}")
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

    def judge_score(self, sample: Sample, verdict: str) -> dict[str, Any]:
        pred = judge_verdict(verdict)
        return {"pred": pred, "correct": pred == "yes", "verdict": verdict}

    def aggregate(self, records):
        binary = [r for r in self.scored(records) if r["kind"] == "binary"]
        desc = [r for r in self.scored(records) if r["kind"] == "judge"]
        out: dict[str, Any] = {
            "binary_accuracy": _pct([r["score"]["correct"] for r in binary]),
            "binary_n": len(binary),
            "yes_rate": _pct([r["score"]["pred"] == "yes" for r in binary]),
            "unparsed_rate": _pct([r["score"]["pred"] is None for r in binary]),
        }
        for split in EH_SPLITS:
            rows = [r for r in binary if r["meta"]["split"] == split]
            if rows:
                out[f"binary_{split}"] = _pct([r["score"]["correct"] for r in rows])
                out[f"yes_rate_{split}"] = _pct([r["score"]["pred"] == "yes" for r in rows])
        # balanced accuracy over the ground-truth classes (each split is single-polarity)
        per_class = [
            _pct([r["score"]["correct"] for r in binary if r["score"].get("gt", None) == c])
            for c in ("yes", "no")
        ]
        per_class = [p for p in per_class if p is not None]
        out["binary_balanced_accuracy"] = mean(per_class) if per_class else None
        skipped = [r for r in records if r.get("skipped") and r["kind"] == "judge"]
        if desc:
            out["desc_accuracy"] = _pct([r["score"]["correct"] for r in desc])
            out["desc_n"] = len(desc)
            for split in EH_SPLITS:
                rows = [r for r in desc if r["meta"]["split"] == split]
                if rows:
                    out[f"desc_{split}"] = _pct([r["score"]["correct"] for r in rows])
            correct = sum(r["score"]["correct"] for r in binary) + sum(r["score"]["correct"] for r in desc)
            out["overall_accuracy"] = 100.0 * correct / (len(binary) + len(desc))
        else:
            out["desc_accuracy"] = "skipped" if skipped else None
            out["overall_accuracy"] = "skipped" if skipped else None
        out["desc_skipped"] = len(skipped)
        return out


REGISTRY: dict[str, type[Benchmark]] = {
    cls.name: cls for cls in (EventHallusion, VideoComp, MVBench, VideoMME)
}


def get_benchmark(name: str) -> Benchmark:
    key = name.lower().replace("-", "").replace("_", "")
    for registered, cls in REGISTRY.items():
        if registered == key:
            return cls()
    raise ValueError(f"unknown benchmark {name!r}; available: {sorted(REGISTRY)}")
