"""Answer tables per benchmark: the expected score of each tricky answer comes from that benchmark's official rule
(source cited above each table), worked out by hand from the rule, not from our code."""

import pytest

from stop_hf.eval.metrics import (
    eventhallusion_yes_no,
    judge_verdict,
    lmms_mcq_letter,
    mc_letter,
    mlvu_official_correct,
    mvbench_guarded_correct,
    mvbench_lmms_correct,
    mvbench_notebook_answer,
    mvbench_notebook_correct,
    mvbench_official_correct,
    relative_drop,
    strip_option_prefix,
    videocomp_official_correct,
    videomme_lmms_legacy_letter,
    videomme_lmms_letter,
    videomme_official_letter,
)

# Stevetich/EventHallusion eval.py `extract_pred`: pred.lower().startswith("yes") -> "Yes.", startswith("no") ->
# "No.", else None; correct iff it equals the ground truth. Nothing is stripped.
EVENTHALLUSION = [
    ("Yes", "yes"),
    ("Yes.", "yes"),
    ("yes", "yes"),
    ("yes.", "yes"),
    ("YES!", "yes"),
    (" yes", None),  # a leading space: startswith("yes") is false
    ("\nYes", None),
    ("Yes, because the man jumps.", "yes"),
    ("Yesterday it rained", "yes"),  # a bare prefix test
    ("No.", "no"),
    ("no", "no"),
    ("NO", "no"),
    ("  NO", None),
    ("No, the man is dancing", "no"),
    ("Nothing happens", "no"),
    ("Not really", "no"),
    ("None", "no"),
    ("Non", "no"),
    ("Noodles", "no"),
    ("Nein", None),
    ("", None),
    (None, None),
    ("   ", None),
    ('"Yes"', None),
    ("**Yes**", None),  # only the judge's verdict drops "*"
    ("(A)", None),
    ("A.", None),
    ("The answer is yes", None),
    ("I think no", None),
    ("Maybe yes", None),
    ("答案是C", None),
    ("是", None),
    ("La réponse est (C).", None),
    ("Oui", None),
    ("Y", None),
    ("N", None),
]


@pytest.mark.parametrize("text, expected", EVENTHALLUSION)
def test_eventhallusion_official_rule(text, expected):
    assert eventhallusion_yes_no(text) == expected


def test_eventhallusion_table_is_large_enough():
    assert len(EVENTHALLUSION) >= 30


def test_judge_verdict_drops_bold_markers():
    # eval.py `extract_yes_no_gpt`: replace("*", ""), lower(), startswith yes/no
    assert judge_verdict("**Yes**, it is consistent") == "yes"
    assert judge_verdict("No.") == "no"
    assert judge_verdict("It is consistent") is None
    assert judge_verdict(None) is None


# Video-MME official: BradyFU/Video-MME README -> thanku-all/parse_answer eval_your_results.py
# `extract_characters_regex` (strip, drop answer prefixes, >10 words without A-D -> "", else the first capital A-D
# anywhere). lmms-eval <= 0.7.1 lmms_eval/tasks/videomme/utils.py (legacy): same scan, a shorter prefix list (no
# "Answer:", "Option:", "The correct answer/option"). lmms-eval 0.7.2/0.7.3 `_task_utils/mcq_extract.py`: every
# shape is a candidate; a standalone letter at the start (10) / end (9), then "answer is X"-style phrases (7, the
# later letter after the first phrase), "(X)" 6, "X." 5, "X:" 4, "X)" 3, "X " 2, any X 0; ties: the later position.
VIDEOMME = [  # (answer, official letter, lmms-eval 0.7.2/0.7.3 letter, lmms-eval <= 0.7.1 letter)
    ("A", "A", "A", "A"),
    ("(B)", "B", "B", "B"),
    ("C.", "C", "C", "C"),
    ("  D  ", "D", "D", "D"),
    ("The answer is B", "B", "B", "B"),
    ("The best answer is A", "A", "A", "A"),
    ("**C**", "C", "C", "C"),
    ("答案是C", "C", "C", "C"),
    ("La réponse est (C).", "C", "C", "C"),
    ("I think it's C.", "C", "C", "C"),
    ("Berries.", "B", "B", "B"),  # the B of the option text
    ("Option: A", "A", "A", "A"),
    ("The answer: A", "A", "A", "A"),
    ("The correct option is B", "B", "B", "B"),
    ("The best option is D", "D", "D", "D"),
    ("Dogs run", "D", "D", "D"),
    ("Cats", "C", "C", "C"),
    ("A. Apples.", "A", "A", "A"),
    ("D. The three kinds are of the same number.", "D", "D", "D"),
    ("B\nBecause the dog runs", "B", "B", "B"),  # a letter, then a newline
    ("D\n", "D", "D", "D"),
    ("C is the answer", "C", "C", "C"),
    ("Both A and B", "B", "B", "B"),  # 0.7.2: the standalone B at the end
    ("(C) because B is wrong", "C", "C", "C"),
    ("My choice is D", "D", "D", "D"),
    ("I choose B", "B", "B", "B"),
    ("Option B", "B", "B", "B"),
    ("B or C? C", "B", "B", "B"),
    ("A or B", "A", "A", "A"),
    ("The best answer is:B", "B", "B", "B"),
    ("b", "", "", ""),  # lower-case letters are never read
    ("(a)", "", "", ""),
    ("a cat sleeps", "", "", ""),
    ("Yes.", "", "", ""),
    ("No.", "", "", ""),
    ("None of the above", "", "", ""),
    ("E", "", "", ""),
    ("", "", "", ""),  # an empty answer
    ("   ", "", "", ""),
    (None, "", "", ""),
    ("the video shows a man walking his dog in the park today", "", "", ""),  # > 10 words, no A-D
    # the shapes where lmms-eval 0.7.2/0.7.3 and <= 0.7.1 read different letters
    ("Based on the video, the answer is C", "B", "C", "B"),  # <= 0.7.1: the first capital A-D wins
    ("Best option: C", "B", "C", "B"),  # "Best option:" is never removed (missing comma in the list)
    ("Best option: (C)", "B", "C", "B"),
    ("Answer: D", "D", "D", "A"),  # <= 0.7.1 keeps "Answer:" and takes its A
    ("Answer:C", "C", "C", "A"),
    ("Answer: C", "C", "C", "A"),
    ("Definitely B", "D", "B", "D"),
    ("Definitely (A)", "D", "A", "D"),
    ("Correct answer: D", "C", "D", "C"),
    ("Correct option: B", "C", "B", "C"),
    ("Clearly, the answer is A", "C", "A", "C"),
    ("After watching, the answer is D", "A", "D", "A"),
    ("All of them; D", "A", "D", "A"),
    ("The video shows a dog. Answer: B", "B", "B", "A"),
    ("Choice (D)", "C", "D", "C"),
    ("Answer (B)", "A", "B", "A"),
    ("ANSWER: D", "A", "D", "A"),
    ("Best answer: A", "B", "A", "B"),
    ("The answer is (A), not (B)", "A", "B", "A"),  # 0.7.2: the later letter after the phrase
    ("I think the answer is C because A is wrong", "C", "A", "C"),
    ("BD", "B", "D", "B"),
    ("So the answer is B. Because C moves", "B", "C", "B"),
]
#: how many shapes of the table the two lmms-eval extractors read differently (for the docs' claim)
LMMS_SHAPES_THAT_DIFFER = 22


@pytest.mark.parametrize("text, official, lmms, legacy", VIDEOMME)
def test_videomme_official_and_lmms_extraction(text, official, lmms, legacy):
    assert videomme_official_letter(text) == official
    assert videomme_lmms_letter(text) == lmms
    assert videomme_lmms_legacy_letter(text) == legacy


def test_the_lmms_extractors_differ_on_the_listed_shapes():
    differ = [row for row in VIDEOMME if row[2] != row[3]]
    assert len(differ) == LMMS_SHAPES_THAT_DIFFER
    assert {"Answer: C", "Best option: (C)", "Definitely B"} <= {row[0] for row in differ}


def test_lmms_mcq_letter_default_choices_reach_h():
    # mcq_extract.py:17: choices default to A-H; Video-MME passes A-D
    assert lmms_mcq_letter("F.") == "F" and videomme_lmms_letter("F.") == ""
    assert lmms_mcq_letter("H") == "H" and lmms_mcq_letter("Z") == ""


def test_lmms_mcq_letter_matches_the_installed_lmms_eval():
    """Where lmms-eval is installed (the CI lmms venv), our extraction equals its own on the whole table."""
    mcq = pytest.importorskip("lmms_eval.tasks._task_utils.mcq_extract")
    for text, _, lmms, _ in VIDEOMME:
        assert mcq.extract_mcq_answer(text, choices=["A", "B", "C", "D"]) == lmms, text


def test_videomme_table_is_large_enough():
    assert len(VIDEOMME) >= 30


# MVBench, as OpenGVLab/Ask-Anything video_chat2/mvbench.ipynb runs it: the output (after the "Best option:("
# pre-fill) is cut to its first stripped line and prefixed with "(" (cell 14), then `check_ans` (cell 15): the
# lower-cased first " "-token without "." is a substring of "(x)", or contains "(x)". "(" alone is a substring of
# every "(x)": an empty or letter-less output counts correct. The guarded form also needs a letter a-g in the
# token. The rule stop-hf used before (guarded, on the raw output, no cut, no "("): the last column.
MVBENCH_NOTEBOOK = [  # (generated text, gt letter, notebook, guarded, before)
    ("A", "A", True, True, True),
    ("a", "A", True, True, True),
    ("(B)", "B", True, True, True),
    ("B)", "B", True, True, True),
    ("B) two", "B", True, True, True),
    ("C.", "C", True, True, True),
    ("c", "C", True, True, True),
    ("A) apples", "A", True, True, True),
    ("(A) apples", "A", True, True, True),
    ("a dog runs", "A", True, True, True),  # "(a" is a substring of "(a)"
    ("D", "A", False, False, False),
    ("E", "A", False, False, False),
    ("", "A", True, False, False),  # an empty answer: "(" is in "(a)"
    ("   ", "B", True, False, False),
    ("\n", "C", True, False, False),
    (".", "A", True, False, False),  # "(." without "." is "("
    ("B\nBecause the man jumps", "B", True, True, False),  # a letter, then a newline: the first line is kept
    ("B\nBecause the man jumps", "A", False, False, False),
    ("A.\nThe dog", "A", True, True, False),
    ("A)\nB)", "A", True, True, False),
    (" A", "A", True, True, False),  # stripped before the "(" is added
    (")", "A", False, False, False),  # "()" is not in "(a)"
    ("The answer is B", "B", False, False, False),
    ("The video shows", "A", False, False, False),
    ("Option A", "A", False, False, False),
    ("AB", "A", False, False, False),
    ("B.C.", "B", False, False, False),
    ("**C**", "C", False, False, False),
    ("答案是C", "C", False, False, False),
    ("A:", "A", False, False, False),
    ("A,", "A", False, False, False),
    ("[A]", "A", False, False, False),
    ("yes", "A", False, False, False),
    (")B", "B", False, False, False),
]


@pytest.mark.parametrize("text, gt, notebook, guarded, before", MVBENCH_NOTEBOOK)
def test_mvbench_notebook_check_ans(text, gt, notebook, guarded, before):
    scored = mvbench_notebook_answer(text)
    assert scored == "(" + text.strip().split("\n")[0]
    assert mvbench_notebook_correct(scored, gt) is notebook
    assert mvbench_guarded_correct(scored, gt) is guarded
    assert mvbench_official_correct(text, gt) is before


def test_mvbench_notebook_table_is_large_enough():
    assert len(MVBENCH_NOTEBOOK) >= 30


# the guarded rule on the raw answer (stop-hf's MVBench rule before the notebook protocol)
MVBENCH = [  # (answer, ground-truth letter, correct)
    ("A", "A", True),
    ("a", "A", True),
    ("(B)", "B", True),
    ("(b)", "B", True),
    ("C.", "C", True),
    ("c.", "C", True),
    ("A)", "A", True),
    ("(A) apples", "A", True),
    ("(D) the man", "D", True),
    ("(C", "C", True),
    ("C)", "C", True),
    ("b", "B", True),
    ("a dog runs", "A", True),  # the article "a" is read as option A
    ("(A)(B)", "A", True),  # "(a)" is inside the token
    ("D", "A", False),
    ("E", "A", False),
    ("The answer is B", "B", False),
    ("**C**", "C", False),
    ("答案是C", "C", False),
    ("La réponse est (C).", "C", False),
    ("", "A", False),
    (" yes", "A", False),  # first token "" has no letter
    (" A", "A", False),
    ("Yes.", "A", False),
    ("Option A", "A", False),  # "option" holds no a-g letter
    ("Answer: (C)", "C", False),
    ("B.C.", "B", False),
    ("AB", "A", False),
    ("A\nB", "A", False),
    ("(", "A", False),
    (".", "A", False),
    ("A,", "A", False),
    ("A:", "A", False),
    ("[A]", "A", False),
]


@pytest.mark.parametrize("text, gt, correct", MVBENCH)
def test_mvbench_official_check_ans(text, gt, correct):
    assert mvbench_official_correct(text, gt) is correct


def test_mvbench_table_is_large_enough():
    assert len(MVBENCH) >= 30


# lmms-eval lmms_eval/tasks/mvbench/utils.py `mcq_acc`: "X. text" -> X; else punctuation handling, lower-case,
# the first standalone a-e letter, compared with the processed ground truth
@pytest.mark.parametrize(
    "text, gt, correct",
    [
        ("A", "A", True),
        ("(B) two", "B", True),
        ("The answer is B", "B", True),
        ("a dog", "A", True),
        ("**C**", "C", True),
        ("C. three", "C", True),
        ("答案是C", "C", False),  # CJK letters are word characters: no boundary before C
        ("", "A", False),
        ("E", "A", False),
    ],
)
def test_mvbench_lmms_mcq_acc(text, gt, correct):
    assert mvbench_lmms_correct(text, gt) is correct


# VideoComp: google-deepmind/video_comp README "Evaluation and Metrics": correct iff f"{answer}" == result or
# f"({answer})" == result (exact string equality).
VIDEOCOMP = [  # (output, answer, correct)
    ("A", "A", True),
    ("(A)", "A", True),
    ("B", "B", True),
    ("(B)", "B", True),
    ("A.", "A", False),
    ("A)", "A", False),
    ("(A", "A", False),
    (" A", "A", False),
    ("A ", "A", False),
    ("A\n", "A", False),
    ("a", "A", False),
    ("(a)", "A", False),
    ("**A**", "A", False),
    ("The answer is A", "A", False),
    ("Answer: A", "A", False),
    ("(A) a square moves left", "A", False),
    ("a square moves left", "A", False),
    ("答案是A", "A", False),
    ("La réponse est (A).", "A", False),
    ("", "A", False),
    (None, "A", False),
    ("B", "A", False),
    ("(B)", "A", False),
    ("A", "B", False),
    ("Yes.", "A", False),
    ("yes", "A", False),
    ("AB", "A", False),
    ("((A))", "A", False),
    ("[A]", "A", False),
    ("A or B", "A", False),
]


@pytest.mark.parametrize("text, answer, correct", VIDEOCOMP)
def test_videocomp_exact_match(text, answer, correct):
    assert videocomp_official_correct(text, answer) is correct


def test_videocomp_table_is_large_enough():
    assert len(VIDEOCOMP) >= 30


# MLVU: JUNJIE99/MLVU evaluation/multiple_choice_evaluation/choice_bench.py `check_ans`: if ")" is in the
# prediction it becomes the one character before the first ")"; then pred == ground-truth letter.
MLVU = [  # (answer, ground-truth letter, correct)
    ("A", "A", True),
    ("(A)", "A", True),
    ("A)", "A", True),
    ("A) apples", "A", True),
    ("(A) apples", "A", True),
    ("The answer is (B)", "B", True),
    ("Best Option: (D)", "D", True),
    ("La réponse est (C).", "C", True),
    ("(B) because (C)", "B", True),
    ("C) or D)", "C", True),
    ("A dog (B)", "B", True),
    ("B", "B", True),
    ("A.", "A", False),
    (" A", "A", False),
    ("a", "A", False),
    ("(a)", "A", False),
    ("A\n", "A", False),
    ("**C**", "C", False),
    ("答案是C", "C", False),
    ("", "A", False),
    (None, "A", False),
    (")", "A", False),
    ("The answer is B", "B", False),
    ("apples", "A", False),
    ("Yes", "A", False),
    ("(E)", "A", False),
    ("AB", "A", False),
    ("(B)", "A", False),
    ("A dog (B)", "A", False),
    ("answer: a)", "A", False),
]


@pytest.mark.parametrize("text, gt, correct", MLVU)
def test_mlvu_official_check_ans(text, gt, correct):
    assert mlvu_official_correct(text, gt) is correct


def test_mlvu_table_is_large_enough():
    assert len(MLVU) >= 30


# the lenient parser: stop-hf's own diagnostic (`lenient_*` metrics), never a headline
OPTIONS = ["a dog runs", "a cat sleeps", "a bird flies", "a fish swims"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A", "A"),
        ("(B)", "B"),
        ("C.", "C"),
        ("D) a fish swims", "D"),
        ("Answer: C", "C"),
        ("The answer is (D).", "D"),
        ("a cat sleeps", "B"),
        ("I think a bird flies here", "C"),
        ("", None),
        ("E", None),
        ("b", "B"),
        ("The answer is a fish swims", "D"),
    ],
)
def test_lenient_mc_letter(text, expected):
    assert mc_letter(text, OPTIONS) == expected


def test_prefix_strip_and_relative_drop():
    assert strip_option_prefix("A. a dog") == "a dog"
    assert strip_option_prefix("no prefix") == "no prefix"
    assert relative_drop(50.0, 40.0) == pytest.approx(0.2)
    assert relative_drop(0.0, 40.0) is None
