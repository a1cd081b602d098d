"""Answer parsing edge cases: empty answers, extra words, letter formats."""

import pytest

from stop_hf.eval.metrics import mc_letter, relative_drop, strip_option_prefix, yes_no

OPTIONS = ["a dog runs", "a cat sleeps", "a bird flies", "a fish swims"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes", "yes"),
        ("yes.", "yes"),
        ("Yes, because the man jumps.", "yes"),
        ("No, nothing happens", "no"),
        ("  NO", "no"),
        ('"Yes"', "yes"),
        ("", None),
        (None, None),
        ("   ", None),
        ("Maybe yes", None),  # EventHallusion's rule: must start with yes/no
        ("Yesterday it rained", None),
        ("Nothing", None),
    ],
)
def test_yes_no(text, expected):
    assert yes_no(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A", "A"),
        ("(B)", "B"),
        ("C.", "C"),
        ("D) a fish swims", "D"),
        ("B: a cat sleeps", "B"),
        ("Answer: C", "C"),
        ("The answer is (D).", "D"),
        ("the correct option is B", "B"),
        ("a cat sleeps", "B"),  # option text
        ("I think a bird flies here", "C"),  # contains exactly one option
        ("", None),
        ("I am not sure", None),
        ("E", None),  # not one of the 4 options
    ],
)
def test_mc_letter(text, expected):
    assert mc_letter(text, OPTIONS) == expected


def test_mc_letter_without_options_and_prefix_strip():
    assert mc_letter("(E) something") == "E"
    assert strip_option_prefix("A. a dog") == "a dog"
    assert strip_option_prefix("no prefix") == "no prefix"


def test_relative_drop():
    assert relative_drop(50.0, 40.0) == pytest.approx(0.2)
    assert relative_drop(0.0, 40.0) is None
