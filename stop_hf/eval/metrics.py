"""Pure answer parsing and scoring rules (no model, no I/O).

Each benchmark's *official* rule is implemented here from its published scorer; the source is cited beside each
rule. `mc_letter` is our own lenient parser, kept only as a diagnostic (`lenient_*` metrics), never the headline.
"""

from __future__ import annotations

import re
import string

LETTERS = string.ascii_uppercase


# --------------------------------------------------------------------------------------------- EventHallusion
def eventhallusion_yes_no(text: str | None) -> str | None:
    """EventHallusion's binary rule: the lower-cased answer *starts with* "yes" or "no" (so "Yes, because..." is
    yes, and "Nothing" counts as no); anything else is unparsed (None).
    Rule: Stevetich/EventHallusion eval.py `extract_pred` (lower(), startswith "yes" / "no"; nothing is stripped,
    so " yes" is unparsed; stop-hf's own answers are stripped decodes already)."""
    if not text:
        return None
    lowered = text.lower()
    if lowered.startswith("yes"):
        return "yes"
    if lowered.startswith("no"):
        return "no"
    return None


def judge_verdict(text: str | None) -> str | None:
    """A judge's yes/no verdict, read as EventHallusion's eval.py `extract_yes_no_gpt` reads GPT's: drop "*"
    (bold), lower-case, starts with yes/no (Stevetich/EventHallusion eval.py)."""
    return eventhallusion_yes_no((text or "").replace("*", ""))


def eventhallusion_ground_truth(answer: object) -> str | None:
    """The annotation's "Yes." / "No." as yes/no; None for anything else (a broken entry, e.g. "N")."""
    value = str(answer).strip().lower().rstrip(".")
    return value if value in ("yes", "no") else None


# ------------------------------------------------------------------------------------------------- Video-MME
# BradyFU/Video-MME README -> thanku-all/parse_answer eval_your_results.py `extract_characters_regex`. The list
# is reproduced as the official code evaluates it: two missing commas there concatenate neighbouring prefixes
# ("The best option isThe correct option is", "Best answer:Best option:"), so those two never match on their own.
_VIDEOMME_OFFICIAL_PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option isThe correct option is",
    "Best answer:Best option:",
    "Answer:",
    "Option:",
    "The correct answer",
    "The correct option",
)
# lmms-eval <= 0.7.1 lmms_eval/tasks/videomme/utils.py `extract_characters_regex` (EvolvingLMMs-Lab/lmms-eval
# v0.7.1 88b23e2 lmms_eval/tasks/videomme/utils.py:256-275): the same scan with a shorter prefix list (what most
# video-LLM papers report, through lmms-eval). Kept as `lmms_eval_legacy_accuracy`.
_VIDEOMME_LMMS_PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option isThe correct option is",
    "Best answer:Best option:",
)


def _videomme_scan(text: str | None, prefixes: tuple[str, ...]) -> str:
    if text is None:
        return ""
    s = text.strip()
    for prefix in prefixes:
        s = s.replace(prefix, "")
    # more than 10 words and no capital A-D anywhere: no answer
    if len(s.split()) > 10 and not re.search("[ABCD]", s):
        return ""
    match = re.search("[ABCD]", s)  # the first capital A-D anywhere ("Berries." -> B)
    return match[0] if match else ""


def videomme_official_letter(text: str | None) -> str:
    """Video-MME's official extraction (eval_your_results.py): "" when nothing is extracted."""
    return _videomme_scan(text, _VIDEOMME_OFFICIAL_PREFIXES)


def videomme_lmms_legacy_letter(text: str | None) -> str:
    """lmms-eval's (<= 0.7.1) Video-MME extraction: "" when nothing is extracted."""
    return _videomme_scan(text, _VIDEOMME_LMMS_PREFIXES)


# lmms-eval 0.7.2 / 0.7.3 `extract_mcq_answer` (EvolvingLMMs-Lab/lmms-eval v0.7.2 cb45ac4
# lmms_eval/tasks/_task_utils/mcq_extract.py:19-158; the 0.7.3 wheel's file differs only by an unused import),
# which Video-MME's `extract_characters_regex` calls with choices A-D (tasks/videomme/utils.py:256-259).
# Every shape found gives a (priority, position) candidate; the highest priority wins, then the later position.
_MCQ_PHRASES = (
    "the answer is",
    "answer is",
    "the correct answer is",
    "correct answer is",
    "the best answer is",
    "best answer is",
    "the correct option is",
    "correct option is",
    "the best option is",
    "best option is",
    "the choice is",
    "choice is",
    "the correct choice is",
    "correct choice is",
    "i choose",
    "i select",
    "i pick",
    "my answer is",
    "my choice is",
    "\uc635\uc158",  # Korean "option"
    "\uc815\ub2f5\uc740",  # Korean "the answer is"
    "\ub2f5\uc740",
    "\ub2f5:",
    "\u7b54\u6848\u662f",  # Chinese "the answer is"
    "\u7b54\u6848\u4e3a",
    "\u9009",  # Chinese "choose"
    "\u7b54\u3048\u306f",  # Japanese "the answer is"
)
#: the letter shapes searched, each with its priority (mcq_extract.py:53-63): "(A)" 6, "A." 5, "A:" 4, "A)" 3,
#: "A " 2; a phrase followed by the letter 7, a standalone letter at the start 10 / at the end 9
_MCQ_SHAPES = (("({})", 6), ("{}.", 5), ("{}:", 4), ("{})", 3), ("{} ", 2))


def lmms_mcq_letter(text: str | None, choices: str = "ABCDEFGH") -> str:
    """lmms-eval 0.7.2/0.7.3 multiple-choice extraction: the choice letter, or "" when none is found."""
    if not text or not text.strip():
        return ""
    body = text.strip()
    for char in ",.!?;:'\"":  # stripped one after the other, as mcq_extract.py:89-90 does
        body = body.strip(char)
    padded = f" {body} "
    found: list[tuple[int, int, str]] = []  # (priority, position, letter)
    for shape, priority in _MCQ_SHAPES:
        found += [(priority, padded.rfind(shape.format(c)), c) for c in choices if shape.format(c) in padded]
    lowered = padded.lower()
    for phrase in _MCQ_PHRASES:
        start = lowered.find(phrase)  # the first occurrence only; the letter is searched case-sensitively
        if start != -1:
            after = start + len(phrase)
            found += [(7, padded.find(c, after), c) for c in choices if padded.find(c, after) != -1]
    core = padded.strip()
    for c in choices:
        if core.startswith(c) and (len(core) == 1 or not core[1].isalpha()):
            found.append((10, 0, c))
        if core.endswith(c) and (len(core) == 1 or not core[-2].isalpha()):
            found.append((9, len(padded) - 1, c))
    if not found:  # any occurrence at all, the last one winning
        found = [(0, padded.rfind(c), c) for c in choices if c in padded]
    return max(found)[2] if found else ""


def videomme_lmms_letter(text: str | None) -> str:
    """lmms-eval 0.7.2/0.7.3's Video-MME extraction (`extract_mcq_answer(s, choices=["A", "B", "C", "D"])`)."""
    return lmms_mcq_letter(text, "ABCD")


# --------------------------------------------------------------------------------------------------- MVBench
# OpenGVLab/Ask-Anything 4dd8210 video_chat2/mvbench.ipynb, cell 14 `infer_mvbench` and cell 16 (the call):
# the reply is pre-filled with "Best option:(" and 100 tokens are generated; the output is cut to its first line
# (`return_prompt + llm_message.strip().split('\n')[0]`, return_prompt "("), and cell 15 `check_ans` compares that
# string's first space-separated token with the ground truth's "(x)".
MVBENCH_RETURN_PROMPT = "("


def mvbench_notebook_answer(text: str | None) -> str:
    """What the notebook scores for a generated `text`: "(" + its first line, stripped (cell 14)."""
    return MVBENCH_RETURN_PROMPT + (text or "").strip().split("\n")[0]


def mvbench_notebook_correct(pred: str, gt_letter: str) -> bool:
    """MVBench's `check_ans` exactly as the notebook runs it (cell 15), on the notebook's answer string
    (`mvbench_notebook_answer`): the lower-cased first space-separated token without "." is a substring of
    "(x)", or "(x)" is a substring of it. So "(" (an empty output) and "(" + "." count correct for every option."""
    option = pred.lower().split(" ")[0]
    gt_option = f"({gt_letter.lower()})"
    return option.replace(".", "") in gt_option or gt_option in option


def mvbench_guarded_correct(pred: str | None, gt_letter: str) -> bool:
    """`check_ans` in the guarded form VideoChat2-derived evaluators ship (e.g. PLLaVA tasks/eval/mvbench): the
    same test, but a first token without a letter a-g is wrong, so an empty or letter-less answer never counts.
    stop-hf's `accuracy_guarded`, run on the same answer string as the notebook's rule."""
    option = (pred or "").lower().split(" ")[0]
    if not any(c in option for c in "abcdefg"):
        return False  # "model doesn't follow instructions"
    return mvbench_notebook_correct(pred or "", gt_letter)


#: the rule stop-hf used before the notebook protocol (the guarded test on the whole answer as generated, no
#: first-line cut, no "(" prefix); kept for `stop-hf score` comparisons with earlier results
def mvbench_official_correct(text: str | None, gt_letter: str) -> bool:
    return mvbench_guarded_correct(text, gt_letter)


_LMMS_PUNCT = [
    ";",
    r"/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
]
_LMMS_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_LMMS_COMMA = re.compile(r"(\d)(\,)(\d)")


def _lmms_mvbench_process(answer: str) -> str:
    """lmms-eval lmms_eval/tasks/mvbench/utils.py `mcq_acc.process` (commit 75571cfe)."""
    match = re.match(r"^([A-E])\.\s*(.+)$", answer.strip(), re.IGNORECASE)
    if match:
        return match.group(1).upper()
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    out = text
    for p in _LMMS_PUNCT:
        if (p + " " in text or " " + p in text) or re.search(_LMMS_COMMA, text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _LMMS_PERIOD.sub("", out, 32)  # lmms-eval passes re.UNICODE (32) as `count`
    out = out.strip("'").strip('"').strip(")").strip("(").strip().lower()
    letter = re.search(r"\b([A-E])\b", out, re.IGNORECASE)
    return letter.group(1).upper() if letter else out


def mvbench_lmms_correct(text: str | None, gt_letter: str) -> bool:
    """lmms-eval's MVBench `mcq_acc(gt_letter, pred)`: both sides processed, then compared."""
    return _lmms_mvbench_process(text or "") == _lmms_mvbench_process(gt_letter)


# ------------------------------------------------------------------------------------------------- VideoComp
def videocomp_official_correct(text: str | None, answer: str) -> bool:
    """google-deepmind/video_comp README "Evaluation and Metrics": the output matches iff
    `f"{answer}" == result or f"({answer})" == result` (exact string equality, nothing stripped or parsed)."""
    return text is not None and (text == f"{answer}" or text == f"({answer})")


# ------------------------------------------------------------------------------------------------------ MLVU
def mlvu_official_option(text: str | None) -> str:
    """JUNJIE99/MLVU evaluation/multiple_choice_evaluation/choice_bench.py `check_ans`: if the prediction holds
    ")", it is cut to the one character before the first ")"; the result is compared with the letter as is."""
    pred = text or ""
    if ")" in pred:
        i = pred.index(")")
        pred = pred[i - 1 : i] if i > 0 else ""  # the official slice; at index 0 it is empty
    return pred


def mlvu_official_correct(text: str | None, gt_letter: str) -> bool:
    return mlvu_official_option(text) == gt_letter


# ---------------------------------------------------------------------------------- lenient (diagnostic only)
def normalize_text(text: str) -> str:
    text = text.lower().strip()
    text = re.sub(r"^\(?[a-z][\).:]\s+", "", text)  # a leading "(a) " / "a. " option marker
    text = text.translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


_LETTER_PATTERNS = [
    r"^\s*\(?([A-Z])\)?\s*$",  # "A", "(A)"
    r"^\s*\(?([A-Z])[\).:,]",  # "A.", "(A) text", "A: text", "A) text"
    # "Answer: A", "the answer is (B)", "Option: b"; a lower-case letter only when nothing follows it, so that
    # "the answer is a cat" is not read as option A
    r"(?i:answer|option|choice)\s*(?:is)?\s*[:\-]?\s*\(?(?:([A-Z])\b|([A-Za-z])(?=\s*[\).]?\s*$))",
    r"^\s*\(?([a-z])\)?[.:]?\s*$",  # a bare lower-case letter: "b", "(b)", "b."
]
#: "A because ...": tried only after the option texts, so "A dog runs" picks the option "a dog runs", not A
_LEADING_LETTER = r"^\s*([A-Z])\s"


def _letter(pattern: str, text: str, valid: set[str]) -> str | None:
    match = re.search(pattern, text)
    if match:
        letter = next(g for g in match.groups() if g).upper()
        if letter in valid:
            return letter
    return None


def mc_letter(text: str | None, options: list[str] | None = None) -> str | None:
    """stop-hf's lenient parser (a diagnostic, not any benchmark's official rule): "A", "(A)", "A.", "A) text",
    "Answer: A", "The answer is (B)", "b", or, failing that, the option whose text the answer equals / contains.
    None when nothing matches."""
    if not text or not text.strip():
        return None
    n = len(options) if options else 26
    valid = set(LETTERS[:n])
    stripped = text.strip()
    for pattern in _LETTER_PATTERNS:
        letter = _letter(pattern, stripped, valid)
        if letter:
            return letter
    normalized = [normalize_text(o) for o in options or []]
    answer = normalize_text(stripped)
    for i, option in enumerate(normalized):
        if option and answer == option:
            return LETTERS[i]
    letter = _letter(_LEADING_LETTER, stripped, valid)
    if letter:
        return letter
    contained = [i for i, option in enumerate(normalized) if option and option in answer]
    if len(contained) == 1:
        return LETTERS[contained[0]]
    return None


def strip_option_prefix(option: str) -> str:
    """'A. a dog' -> 'a dog' (Video-MME options carry their letter)."""
    return re.sub(r"^\s*\(?[A-Z][\).:]\s*", "", option)


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def relative_drop(reference: float, value: float) -> float | None:
    """(reference - value) / reference, the paper's per-metric drop (PDR averages these). None if reference is 0."""
    if reference in (0, None) or value is None:
        return None
    return (reference - value) / reference
