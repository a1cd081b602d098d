"""Pure answer parsing and scoring helpers (no model, no I/O)."""

from __future__ import annotations

import re
import string

LETTERS = string.ascii_uppercase

_YES_NO = re.compile(r"^[\s\"'(\[*]*(yes|no)\b", re.IGNORECASE)


def yes_no(text: str | None) -> str | None:
    """'yes' / 'no' when the answer *starts* with it (EventHallusion's rule: "Yes, because..." is yes), else None."""
    if not text:
        return None
    match = _YES_NO.match(text)
    return match.group(1).lower() if match else None


def normalize_text(text: str) -> str:
    text = text.lower().strip()
    text = re.sub(r"^\(?[a-z][\).:]\s+", "", text)  # a leading "(a) " / "a. " option marker
    text = text.translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


_LETTER_PATTERNS = [
    r"^\s*\(?([A-Z])\)?\s*$",  # "A", "(A)"
    r"^\s*\(?([A-Z])[\).:,]",  # "A.", "(A) text", "A: text", "A) text"
    r"(?:answer|option|choice)\s*(?:is)?\s*[:\-]?\s*\(?([A-Z])\b\)?",  # "Answer: A", "the answer is (B)"
    r"^\s*([A-Z])\s",  # "A because ..."
]


def mc_letter(text: str | None, options: list[str] | None = None) -> str | None:
    """The chosen option letter in an answer: "A", "(A)", "A.", "A) text", "Answer: A", "The answer is (B)",
    or, failing that, the option whose text the answer equals / contains. None when nothing matches."""
    if not text or not text.strip():
        return None
    n = len(options) if options else 26
    valid = set(LETTERS[:n])
    stripped = text.strip()
    for pattern in _LETTER_PATTERNS:
        flags = re.IGNORECASE if pattern.startswith("(?:") else 0
        match = re.search(pattern, stripped, flags)
        if match and match.group(1).upper() in valid:
            return match.group(1).upper()
    if options:
        answer = normalize_text(stripped)
        normalized = [normalize_text(o) for o in options]
        for i, option in enumerate(normalized):
            if option and answer == option:
                return LETTERS[i]
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
