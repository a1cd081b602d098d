"""Tiny synthetic datasets in each benchmark's official layout (generated videos + annotation files), for tests and
for trying `stop-hf eval` without downloading anything."""

from __future__ import annotations

import json
from pathlib import Path

from ..video import write_video


def _video(path: Path, seed: int, num_frames: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, num_frames=num_frames, height=96, width=128, seed=seed)


def make_eventhallusion(root: str | Path, num_frames: int = 4, missing: tuple[str, ...] = ()) -> Path:
    """entire: e1 (No.); interleave: mix_001 in `mix_questions.json` (Yes.; its video is
    `videos/interleave/interleave_001.mp4`, as in the current upstream release); misleading: m1 (two questions, No.).
    Videos in `missing` are not written (to exercise error recording)."""
    root = Path(root)
    (root / "questions").mkdir(parents=True, exist_ok=True)
    layout = {
        "entire": [("e1", ["Does the red square turn into a cat?"], "No.")],
        "interleave": [("mix_001", ["Does the red square move across the frame?"], "Yes.")],
        "misleading": [("m1", ["Does a dog appear?", "Is there an explosion?"], "No.")],
    }
    for seed, (split, entries) in enumerate(layout.items()):
        data = []
        for vid, questions, answer in entries:
            data.append(
                {
                    "id": vid,
                    "category": "synthetic",
                    "length": 2,
                    "event_info": {
                        "object": "red square",
                        "scene": "texture",
                        "caption": "A red square moves.",
                    },
                    "questions": [
                        {"type": "hallucination", "question": q, "answer": answer} for q in questions
                    ],
                }
            )
            if vid not in missing:
                name = vid.replace("mix", "interleave", 1)
                _video(root / "videos" / split / f"{name}.mp4", seed, num_frames)
        filename = "mix_questions.json" if split == "interleave" else f"{split}_questions.json"
        (root / "questions" / filename).write_text(json.dumps(data, indent=1))
    return root


def make_videocomp(root: str | Path, num_frames: int = 8) -> Path:
    """ActivityNet: two questions on the full source video `activitynet_video/v_act1.mp4` (8 frames at 4 fps = 2 s),
    each about its query window (times in microseconds, as in the official files); YouCook2: one question on a
    trimmed clip `videos/yc1_0.mp4`, used whole."""
    root = Path(root)
    act = [
        {
            "video_id": "act1",
            "key": "act1_0",
            "question": "Which caption matches the video?\n(A) a square moves left\n(B) a square moves right",
            "answer": "A",
            "type": "temporal reordering",
            "query_video/start_time": 0,
            "query_video/end_time": 1_000_000,
        },
        {
            "video_id": "act1",
            "key": "act1_1",
            "question": "Which caption matches the video?",
            "options": ["a person cooks", "a person swims"],
            "answer": "a person swims",
            "type": "action word replacement",
            "query_video/start_time": 1_000_000,
            "query_video/end_time": 2_000_000,
        },
    ]
    yc = [
        {
            "video_id": "yc1",
            "key": "yc1_0",
            "question": "Which caption matches the video?\n(A) cut onions then fry\n(B) fry then cut onions",
            "answer": "B",
            "type": "temporal reordering",
            "query_video/start_time": 0,
            "query_video/end_time": 1_000_000,
        }
    ]
    (root).mkdir(parents=True, exist_ok=True)
    (root / "activitynet_comp_val.json").write_text(json.dumps(act))
    (root / "youcook2_comp_val.json").write_text(json.dumps(yc))
    _video(root / "activitynet_video" / "v_act1.mp4", 0, num_frames)
    _video(root / "videos" / "yc1_0.mp4", 1, num_frames)
    return root


def make_mvbench(root: str | Path, num_frames: int = 4) -> Path:
    root = Path(root)
    (root / "json").mkdir(parents=True, exist_ok=True)
    tasks = {  # action_sequence is a STAR task: its questions are about the [start, end] seconds given
        "action_sequence": (
            "star/Charades_v1_480",
            [("a1.mp4", ["3", "4", "5"], "4"), ("a2.mp4", ["1", "2"], "1")],
        ),
        "object_shuffle": ("perception/videos", [("o1.mp4", ["left", "middle", "right"], "right")]),
    }
    seed = 0
    for task, (folder, items) in tasks.items():
        data = []
        for video, candidates, answer in items:
            item = {
                "video": video,
                "question": f"{task} question?",
                "candidates": candidates,
                "answer": answer,
            }
            if task == "action_sequence":
                item |= {"start": 0.0, "end": 0.5}
            data.append(item)
            _video(root / "video" / folder / video, seed, num_frames)
            seed += 1
        (root / "json" / f"{task}.json").write_text(json.dumps(data))
    return root


def make_videomme(
    root: str | Path, num_frames: int | tuple[int, ...] = 4, questions: int = 4, per_video: int = 1
) -> Path:
    """Annotations as `videomme/test.json` (the parquet's rows; parquet is read when pandas/pyarrow are present).

    `questions` rows, `per_video` of them on each video (the real release asks 3 per video); `num_frames` may be a
    tuple of frame counts cycled over the videos (videos of several lengths, for batching by frame count)."""
    root = Path(root)
    (root / "videomme").mkdir(parents=True, exist_ok=True)
    counts = (num_frames,) if isinstance(num_frames, int) else tuple(num_frames)
    durations, answers = ("short", "short", "medium", "long"), "ACBD"
    rows = []
    for i in range(questions):
        video = i // per_video
        rows.append(
            {
                "video_id": f"{video:03d}",
                "duration": durations[video % 4],
                "domain": "Knowledge",
                "sub_category": "Synthetic",
                "url": "",
                "videoID": f"vid{video}",
                "question_id": f"{video:03d}-{i % per_video + 1}",
                "task_type": "Counting Problem" if i % 2 else "Action Recognition",
                "question": ("What moves in the video?", "Which object is the main one here?")[
                    i % per_video % 2
                ],
                "options": ["A. a square", "B. a circle", "C. a dog", "D. nothing"],
                "answer": answers[i % 4],
            }
        )
        if i % per_video == 0:
            _video(root / "data" / f"vid{video}.mp4", video, counts[video % len(counts)])
    (root / "videomme" / "test.json").write_text(json.dumps(rows))
    return root


def make_mlvu(root: str | Path, num_frames: int = 4) -> Path:
    """The HF `MLVU/MVLU` dev layout: `json/<n>_<task>.json` and `video/<n>_<task>/<video>`; two tasks."""
    root = Path(root)
    (root / "json").mkdir(parents=True, exist_ok=True)
    tasks = {
        "1_plotQA": ("plotQA", [("p1.mp4", ["red", "green", "blue", "yellow"], "green")]),
        "4_count": ("count", [("c1.mp4", ["1", "2", "3", "4"], "3"), ("c2.mp4", ["2", "4", "6", "8"], "2")]),
    }
    seed = 0
    for stem, (question_type, items) in tasks.items():
        data = []
        for video, candidates, answer in items:
            data.append(
                {
                    "video": video,
                    "duration": 2,
                    "question": f"{question_type} question?",
                    "candidates": candidates,
                    "answer": answer,
                    "question_type": question_type,
                }
            )
            _video(root / "video" / stem / video, seed, num_frames)
            seed += 1
        (root / "json" / f"{stem}.json").write_text(json.dumps(data, indent=4))
    return root


MAKERS = {
    "eventhallusion": make_eventhallusion,
    "videocomp": make_videocomp,
    "mvbench": make_mvbench,
    "videomme": make_videomme,
    "mlvu": make_mlvu,
}
