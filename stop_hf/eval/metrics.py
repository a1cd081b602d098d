"""Pure answer parsing and scoring helpers (no model, no I/O)."""

from __future__ import annotations

import re
import string

LETTERS = string.ascii_uppercase


def eventhallusion_yes_no(text: str | None) -> str | None:
    """EventHallusion's own binary rule: the lower-cased answer *starts with* "yes" or "no" (so "Yes, because..." is
    yes, and "Nothing" counts as no, exactly as the official eval.py does); anything else is unparsed (None).
    Only surrounding whitespace is stripped: the official predictions are stripped decodes too."""
    if not text:
        return None
    lowered = text.strip().lower()
    if lowered.startswith("yes"):
        return "yes"
    if lowered.startswith("no"):
        return "no"
    return None


def judge_verdict(text: str | None) -> str | None:
    """A judge's yes/no verdict, read as EventHallusion's eval.py reads GPT's: drop "*" (bold), lower-case,
    starts with yes/no."""
    return eventhallusion_yes_no((text or "").replace("*", ""))


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
    """The chosen option letter in an answer: "A", "(A)", "A.", "A) text", "Answer: A", "The answer is (B)", "b",
    or, failing that, the option whose text the answer equals / contains. None when nothing matches."""
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
