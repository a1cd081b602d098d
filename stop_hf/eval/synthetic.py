"""Tiny synthetic datasets in each benchmark's official layout (generated videos + annotation files), for tests and
for trying `stop-hf eval` without downloading anything."""

from __future__ import annotations

import json
from pathlib import Path

from ..testing.video import write_video


def _video(path: Path, seed: int, num_frames: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, num_frames=num_frames, height=96, width=128, seed=seed)


def make_eventhallusion(root: str | Path, num_frames: int = 4, missing: tuple[str, ...] = ()) -> Path:
    """entire: v1 (No.); interleave: v2 (Yes.); misleading: v3 (two questions, No.). Videos in `missing` are not
    written (to exercise error recording)."""
    root = Path(root)
    (root / "questions").mkdir(parents=True, exist_ok=True)
    layout = {
        "entire": [("e1", ["Does the red square turn into a cat?"], "No.")],
        "interleave": [("i1", ["Does the red square move across the frame?"], "Yes.")],
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
                _video(root / "videos" / split / f"{vid}.mp4", seed, num_frames)
        (root / "questions" / f"{split}_questions.json").write_text(json.dumps(data, indent=1))
    return root


def make_videocomp(root: str | Path, num_frames: int = 4) -> Path:
    root = Path(root)
    act = [
        {
            "video_id": "v_act1",
            "key": "v_act1_0",
            "question": "Which caption matches the video?\n(A) a square moves left\n(B) a square moves right",
            "answer": "A",
            "query_video/start_time": 0.0,
            "query_video/end_time": 1.0,
        },
        {
            "video_id": "v_act2",
            "key": "v_act2_0",
            "question": "Which caption matches the video?",
            "options": ["a person cooks", "a person swims"],
            "answer": "a person swims",
            "query_video/start_time": 0.0,
            "query_video/end_time": 1.0,
        },
    ]
    yc = [
        {
            "video_id": "yc1",
            "key": "yc1_0",
            "question": "Which caption matches the video?\n(A) cut onions then fry\n(B) fry then cut onions",
            "answer": "B",
            "query_video/start_time": 0.0,
            "query_video/end_time": 1.0,
        }
    ]
    (root).mkdir(parents=True, exist_ok=True)
    (root / "activitynet_comp_val.json").write_text(json.dumps(act))
    (root / "youcook2_comp_val.json").write_text(json.dumps(yc))
    for seed, key in enumerate(["v_act1_0", "v_act2_0", "yc1_0"]):
        _video(root / "videos" / f"{key}.mp4", seed, num_frames)
    return root


def make_mvbench(root: str | Path, num_frames: int = 4) -> Path:
    root = Path(root)
    (root / "json").mkdir(parents=True, exist_ok=True)
    tasks = {
        "action_count": (
            "star/Charades_v1_480",
            [("a1.mp4", ["3", "4", "5"], "4"), ("a2.mp4", ["1", "2"], "1")],
        ),
        "object_shuffle": ("perception/videos", [("o1.mp4", ["left", "middle", "right"], "right")]),
    }
    seed = 0
    for task, (folder, items) in tasks.items():
        data = []
        for video, candidates, answer in items:
            data.append(
                {"video": video, "question": f"{task} question?", "candidates": candidates, "answer": answer}
            )
            _video(root / "video" / folder / video, seed, num_frames)
            seed += 1
        (root / "json" / f"{task}.json").write_text(json.dumps(data))
    return root


def make_videomme(root: str | Path, num_frames: int = 4) -> Path:
    """Annotations as `videomme/test.json` (the parquet's rows; parquet is read when pandas/pyarrow are present)."""
    root = Path(root)
    (root / "videomme").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (duration, answer) in enumerate([("short", "A"), ("short", "C"), ("medium", "B"), ("long", "D")]):
        rows.append(
            {
                "video_id": f"{i:03d}",
                "duration": duration,
                "domain": "Knowledge",
                "sub_category": "Synthetic",
                "url": "",
                "videoID": f"vid{i}",
                "question_id": f"{i:03d}-1",
                "task_type": "Counting Problem" if i % 2 else "Action Recognition",
                "question": "What moves in the video?",
                "options": ["A. a square", "B. a circle", "C. a dog", "D. nothing"],
                "answer": answer,
            }
        )
        _video(root / "data" / f"vid{i}.mp4", i, num_frames)
    (root / "videomme" / "test.json").write_text(json.dumps(rows))
    return root


MAKERS = {
    "eventhallusion": make_eventhallusion,
    "videocomp": make_videocomp,
    "mvbench": make_mvbench,
    "videomme": make_videomme,
}
