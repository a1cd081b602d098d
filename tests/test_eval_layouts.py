"""Every real layout is found and parsed: fixtures with the exact structure and field names of the official files
(EventHallusion questions/*.json, Video-MME test parquet rows and output_test_template.json, MVBench json/, the
VideoComp val JSONs, MLVU json/); the count parsed equals the count in the file. Broken entries are reported with
file, entry and field, and the rest still loads."""

import json

import numpy as np
import pytest

from stop_hf.eval.benchmarks import AnnotationError, get_benchmark


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4))
    return path


# ---------------------------------------------------------------------------------------------- EventHallusion
def eh_entry(vid, answers, split, **extra):
    """One entry as in Stevetich/EventHallusion questions/*.json."""
    info = {"object": ["person", "dog"], "scene": "In a yard.", "caption": "A dog barks."}
    info["unexpected" if split == "interleave" else "bias"] = "Something else."
    return {
        "id": vid,
        "category": "pet&animal",
        "length": "00:05",
        "event_info": info,
        "questions": [
            {"type": "hallucination", "question": f"Question {k} about {vid or extra}?", "answer": a}
            for k, a in enumerate(answers)
        ],
        **extra,
    }


def eh_dataset(
    root, interleave_name="interleave", ids=None, mix_by_video_name=False, video_dir="videos", ext=".mp4"
):
    entire = [eh_entry("entire_001", ["No."], "entire"), eh_entry("entire_002", ["No.", "No."], "entire")]
    misleading = [eh_entry("misleading_001", ["No."], "misleading")]
    prefix = "mix" if interleave_name == "mix" else "interleave"
    inter_ids = ids or [f"{prefix}_001", f"{prefix}_002", f"{prefix}_003"]
    if mix_by_video_name:  # the Dec-31-2024 mix_questions.json: `id` is empty on every entry
        interleave = [eh_entry("", ["Yes."], "interleave", video_name=v) for v in inter_ids]
    else:
        interleave = [eh_entry(v, ["Yes."], "interleave") for v in inter_ids]
    write(root / "questions" / "entire_questions.json", entire)
    write(root / "questions" / "misleading_questions.json", misleading)
    write(root / "questions" / f"{interleave_name}_questions.json", interleave)
    return {"entire": entire, "interleave": interleave, "misleading": misleading}


def n_questions(files):
    return sum(len(e["questions"]) for entries in files.values() for e in entries)


def check_eh(root, files, expect_interleave_stem):
    bench = get_benchmark("eventhallusion")
    samples = bench.load(root)
    binary = [s for s in samples if s.kind == "binary"]
    assert len(binary) == n_questions(files)
    # one description per entire / interleave video (the misleading ones are left out, as the current eval.py)
    assert len([s for s in samples if s.kind == "judge"]) == len(files["entire"]) + len(files["interleave"])
    assert all(s.video.exists() for s in samples), [str(s.video) for s in samples if not s.video.exists()]
    inter = sorted({s.video.stem for s in samples if s.meta["split"] == "interleave"})
    assert inter[0] == expect_interleave_stem
    assert not bench.invalid
    return bench, samples


def test_eventhallusion_sep_2024_layout(tmp_path):
    files = eh_dataset(tmp_path)
    for split, entries in files.items():
        for e in entries:
            touch(tmp_path / "videos" / split / f"{e['id']}.mp4")
    check_eh(tmp_path, files, "interleave_001")


@pytest.mark.parametrize("video_name", ["mix_{:03d}", "mix_{:03d}.mp4"])
def test_eventhallusion_dec_2024_mix_with_empty_ids_and_videos_mix(tmp_path, video_name):
    ids = [video_name.format(i) for i in (1, 2, 3)]
    files = eh_dataset(tmp_path, "mix", ids=ids, mix_by_video_name=True)
    for e in files["entire"]:
        touch(tmp_path / "videos" / "entire" / f"{e['id']}.mp4")
    for e in files["misleading"]:
        touch(tmp_path / "videos" / "misleading" / f"{e['id']}.mp4")
    for i in (1, 2, 3):  # the official videos/mix/mix_NNN.mp4 layout
        touch(tmp_path / "videos" / "mix" / f"mix_{i:03d}.mp4")
    bench, samples = check_eh(tmp_path, files, "mix_001")
    assert {s.meta["video_key"] for s in samples if s.meta["split"] == "interleave"} == {
        "interleave_001",
        "interleave_002",
        "interleave_003",
    }


def test_eventhallusion_mix_ids_with_interleave_named_videos(tmp_path):
    files = eh_dataset(
        tmp_path, "mix"
    )  # ids mix_NNN, the released archive's videos/interleave/interleave_NNN.mp4
    for split, entries in files.items():
        for e in entries:
            touch(tmp_path / "videos" / split / f"{e['id'].replace('mix', 'interleave')}.mp4")
    check_eh(tmp_path, files, "interleave_001")


def test_eventhallusion_split_folders_directly_under_the_data_folder_and_upper_case_mp4(tmp_path):
    files = eh_dataset(tmp_path)
    for split, entries in files.items():
        for e in entries:
            touch(tmp_path / split / f"{e['id']}.MP4")
    bench, samples = check_eh(tmp_path, files, "interleave_001")
    assert all(s.video.suffix == ".MP4" for s in samples)


def test_eventhallusion_two_versions_uses_the_current_one_and_says_so(tmp_path):
    eh_dataset(tmp_path, "interleave", ids=["interleave_001"])
    files = eh_dataset(tmp_path, "mix", ids=["mix_001", "mix_002"])
    bench = get_benchmark("eventhallusion")
    samples = bench.load(tmp_path)
    inter = [s for s in samples if s.meta["split"] == "interleave" and s.kind == "binary"]
    assert len(inter) == len(files["interleave"]) == 2
    assert any(p.endswith("mix_questions.json") for p in bench.annotation_files)
    assert not any(p.endswith("interleave_questions.json") for p in bench.annotation_files)
    assert bench.notes and "mix_questions.json" in bench.notes[0]


def test_eventhallusion_broken_entries_are_reported_and_the_rest_loads(tmp_path):
    files = eh_dataset(tmp_path)
    broken = files["entire"] + [
        eh_entry("entire_003", ["N"], "entire"),  # bad ground truth
        {"id": "entire_004", "category": "x", "questions": [{"type": "hallucination", "answer": "No."}]},
        eh_entry("", ["No."], "entire"),  # names no video
    ]
    path = write(tmp_path / "questions" / "entire_questions.json", broken)
    bench = get_benchmark("eventhallusion")
    samples = bench.load(tmp_path)
    assert len(bench.invalid) == 3
    assert all(str(path) in p for p in bench.invalid)
    assert (
        "entry 2 (entire_003): field 'questions[0].answer'" in bench.invalid[0] and "'N'" in bench.invalid[0]
    )
    assert "entry 3 (entire_004): field 'questions[0].question'" in bench.invalid[1]
    assert "entry 4: field 'id/video_name'" in bench.invalid[2]
    assert len([s for s in samples if s.kind == "binary"]) == n_questions(files)


def test_json_parse_error_names_the_file(tmp_path):
    (tmp_path / "questions").mkdir()
    (tmp_path / "questions" / "entire_questions.json").write_text('[{"id": "e1",')
    with pytest.raises(AnnotationError, match="entire_questions.json: not valid JSON"):
        get_benchmark("eventhallusion").load(tmp_path)


# ------------------------------------------------------------------------------------------------- Video-MME
def videomme_question(qid, task_type, answer, **extra):
    return {
        "question_id": qid,
        "task_type": task_type,
        "question": "How many red socks are above the fireplace?",
        "options": ["A. 1.", "B. 4.", "C. 2.", "D. 3."],
        "answer": answer,
        **extra,
    }


def videomme_template():
    """BradyFU/Video-MME evaluation/output_test_template.json: grouped by video."""
    return [
        {
            "video_id": "001",
            "duration": "short",
            "domain": "Knowledge",
            "sub_category": "Humanity & History",
            "questions": [
                videomme_question("001-1", "Counting Problem", "C", response="C. Berries."),
                videomme_question("001-2", "Information Synopsis", "A", response="D."),
                videomme_question("001-3", "Counting Problem", "D", response="D. 3"),
            ],
        },
        {
            "video_id": "002",
            "duration": "medium",
            "domain": "Film & Television",
            "sub_category": "Animation",
            "questions": [videomme_question("002-1", "Object Recognition", "B", response="The answer is B")],
        },
    ]


def test_videomme_official_grouped_template(tmp_path):
    data = write(tmp_path / "output_test_template.json", videomme_template())
    touch(tmp_path / "data" / "001.mp4")
    touch(tmp_path / "data" / "002.MP4")
    bench = get_benchmark("videomme")
    samples = bench.load(tmp_path)
    assert len(samples) == sum(len(v["questions"]) for v in videomme_template()) == 4
    assert [s.id for s in samples] == ["001-1", "001-2", "001-3", "002-1"]
    assert samples[0].options == ["1.", "4.", "2.", "3."] and samples[0].answer == "C"
    assert samples[3].meta["duration"] == "medium" and samples[3].meta["task_type"] == "Object Recognition"
    assert all(s.video.exists() for s in samples)
    assert bench.annotation_files == [str(data)]


def test_videomme_flat_rows_and_broken_entries(tmp_path):
    rows = []
    for i, answer in enumerate(["A", "E", "B"]):  # "E" with four options is a broken ground truth
        rows.append(
            {
                "video_id": f"{i:03d}",
                "duration": "short",
                "domain": "Knowledge",
                "sub_category": "Astronomy",
                "url": "https://www.youtube.com/watch?v=x",
                "videoID": f"yt{i}",
                **videomme_question(f"{i:03d}-1", "Counting Problem", answer),
            }
        )
    rows.append({k: v for k, v in rows[0].items() if k != "options"} | {"question_id": "009-1"})
    path = write(tmp_path / "videomme" / "test.json", rows)
    bench = get_benchmark("videomme")
    samples = bench.load(tmp_path)
    assert [s.id for s in samples] == ["000-1", "002-1"]
    assert samples[0].video == tmp_path / "data" / "yt0.mp4"  # missing: an error at run time, not dropped
    assert bench.invalid == [
        f"{path}: entry 1 (001-1): field 'answer': 'E' is not a letter of the 4 options",
        f"{path}: entry 3 (009-1): field 'options': missing",
    ]


def test_videomme_parquet(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    row = {
        "video_id": "001",
        "duration": "short",
        "domain": "Knowledge",
        "sub_category": "Astronomy",
        "url": "u",
        "videoID": "yt0",
        **videomme_question("001-1", "Counting Problem", "D"),
    }
    row["options"] = np.array(row["options"], dtype=object)
    (tmp_path / "videomme").mkdir()
    pd.DataFrame([row]).to_parquet(tmp_path / "videomme" / "test-00000-of-00001.parquet")
    samples = get_benchmark("videomme").load(tmp_path)
    assert len(samples) == 1 and samples[0].options[3] == "3."


# --------------------------------------------------------------------------------------------------- MVBench
def mv_item(video, answer="4", **extra):
    return {
        "video": video,
        "question": "What happened?",
        "candidates": ["3", "4", "5"],
        "answer": answer,
        **extra,
    }


def test_mvbench_official_layout_lmms_segments_and_frame_folders(tmp_path):
    write(tmp_path / "json" / "action_sequence.json", [mv_item("a.mp4", start=1.0, end=3.0)])
    write(tmp_path / "json" / "object_interaction.json", [mv_item("b.mp4", start=1.0, end=3.0)])
    write(tmp_path / "json" / "fine_grained_pose.json", [mv_item("p.mp4")])
    write(tmp_path / "json" / "episodic_reasoning.json", [mv_item("s01e01_seg", start=0.0, end=2.0)])
    touch(tmp_path / "video" / "star" / "Charades_v1_480" / "a.mp4")
    touch(tmp_path / "video" / "star" / "Charades_segment" / "b.mp4")  # lmms-eval's pre-cut clip
    touch(tmp_path / "video" / "nturgbd" / "p.mp4")  # a video in the official notebook
    touch(tmp_path / "video" / "tvqa" / "frames_fps3_hq" / "s01e01_seg" / "00001.jpg")
    samples = {s.meta["task"]: s for s in get_benchmark("mvbench").load(tmp_path)}
    assert len(samples) == 4 and all(s.video.exists() for s in samples.values())
    assert samples["action_sequence"].window == (1.0, 3.0)
    assert samples["object_interaction"].window is None and samples["object_interaction"].meta["pre_cut"]
    assert samples["fine_grained_pose"].video.parent.name == "nturgbd"
    assert samples["episodic_reasoning"].video.is_dir() and samples["episodic_reasoning"].window == (0.0, 2.0)


def test_mvbench_frame_folder_reader(tmp_path):
    from PIL import Image

    from stop_hf.eval.frames import read_frame_folder

    for i in range(12):  # 4 s at 3 fps; pixel value = frame index
        Image.fromarray(np.full((4, 4, 3), i, dtype=np.uint8)).save(tmp_path / f"{i:05d}.png")
    frames = read_frame_folder(tmp_path, 3, window=(1.0, 2.0), fps=3.0)  # frames 3..6
    assert frames.shape == (3, 4, 4, 3)
    assert set(frames[:, 0, 0, 0].tolist()) <= set(range(3, 7))
    with pytest.raises(ValueError, match="no frames in the window"):
        read_frame_folder(tmp_path, 2, window=(10.0, 11.0))


def test_mvbench_broken_items_reported(tmp_path):
    path = write(
        tmp_path / "json" / "action_count.json",
        [mv_item("a.mp4"), mv_item("b.mp4", answer="9"), {"video": "c.mp4"}],
    )
    bench = get_benchmark("mvbench")
    samples = bench.load(tmp_path)
    # an answer that is not a candidate is kept with the notebook's letter "@" (qa_template's answer_idx -1)
    assert [s.answer for s in samples] == ["B", "@"]
    assert bench.notes == [
        f"{path}: entry 1: answer '9' is not one of the candidates ['3', '4', '5']: kept and scored against the "
        "letter '@', as the official script does (never a right option)"
    ]
    assert bench.invalid == [f"{path}: entry 2: field 'question': missing"]


# ------------------------------------------------------------------------------------------------- VideoComp
def vc_item(key, video_id, answer, kind):
    """google-deepmind/video_comp val JSON fields."""
    return {
        "key": key,
        "video_id": video_id,
        "type": kind,
        "original_video/start_time": 0,
        "original_video/end_time": 60_000_000,
        "query_video/start_time": 5_000_000,
        "query_video/end_time": 25_000_000,
        "positive_text": "A man cuts onions, then fries them.",
        "negative_text": "A man fries onions, then cuts them.",
        "positive_start_time": [5.0, 15.0],
        "positive_end_time": [15.0, 25.0],
        "negative_start_time": [5.0, 15.0],
        "negative_end_time": [15.0, 25.0],
        "question": "Which text matches the video?\n(A) A man cuts onions, then fries them.\n"
        "(B) A man fries onions, then cuts them.",
        "answer": answer,
    }


def test_videocomp_val_files(tmp_path):
    act = [
        vc_item("k1", "abc", "A", "temporal reordering"),
        vc_item("k2", "abc", "B", "action word replacement"),
    ]
    yc = [vc_item("y1", "GLd3aX16zBg", "A", "segment-level mismatch")]
    write(tmp_path / "activitynet_comp_val.json", act)
    write(tmp_path / "youcook2_comp_val.json", yc)
    touch(tmp_path / "activitynet_video" / "v_abc.mkv")
    touch(tmp_path / "raw_videos" / "video" / "GLd3aX16zBg.webm")
    samples = get_benchmark("videocomp").load(tmp_path)
    assert len(samples) == len(act) + len(yc)
    assert all(s.video.exists() for s in samples)
    assert samples[0].window == (5.0, 25.0) and samples[0].options[1] == "A man fries onions, then cuts them."
    assert [s.meta["type"] for s in samples] == [
        "temporal reordering",
        "action word replacement",
        "segment-level mismatch",
    ]


# ------------------------------------------------------------------------------------------------------ MLVU
@pytest.mark.parametrize("nested", [False, True])
def test_mlvu_dev_layout(tmp_path, nested):
    base = tmp_path / "MLVU" if nested else tmp_path
    items = [
        {
            "video": "movie101_66.mp4",
            "duration": 246,
            "question": "What color is the main male character in the video?",
            "candidates": ["Yellow", "Red", "Green", "Blue"],
            "answer": "Yellow",
            "question_type": "plotQA",
        },
        {
            "video": "movie101_67.mp4",
            "duration": 246,
            "question": "Where?",
            "candidates": ["a", "b", "c", "d"],
            "answer": "d",
            "question_type": "plotQA",
        },
    ]
    write(base / "json" / "1_plotQA.json", items)
    write(base / "json" / "9_summary.json", [{"video": "s.mp4", "question": "Summarize", "answer": "..."}])
    for item in items:
        touch(base / "video" / "1_plotQA" / item["video"])
    bench = get_benchmark("mlvu")
    samples = bench.load(tmp_path)
    assert len(samples) == len(items) and [s.answer for s in samples] == ["A", "D"]
    assert all(s.video.exists() for s in samples) and samples[0].meta["task"] == "plotQA"
    assert not any("9_summary" in f for f in bench.annotation_files)  # a generation task: not multiple choice


def test_videocomp_parenthesised_answer_and_broken_entry(tmp_path):
    items = [
        vc_item("k1", "abc", "(B)", "temporal reordering"),
        vc_item("k2", "abc", "C", "temporal reordering"),
    ]
    path = write(tmp_path / "activitynet_comp_val.json", items)
    bench = get_benchmark("videocomp")
    samples = bench.load(tmp_path)
    assert [s.answer for s in samples] == ["B"]
    assert bench.score(samples[0], "(B)")["correct"] and bench.score(samples[0], "((B))")["correct"]
    assert not bench.score(samples[0], "B")["correct"]  # exact match against the file's "(B)"
    assert bench.invalid == [
        f"{path}: entry 1 (k2): field 'answer': 'C' is neither an option letter nor an option's text"
    ]
