"""Answer parsing edge cases: empty answers, extra words, letter formats."""

import pytest

from stop_hf.eval.metrics import (
    eventhallusion_yes_no,
    judge_verdict,
    mc_letter,
    relative_drop,
    strip_option_prefix,
)

OPTIONS = ["a dog runs", "a cat sleeps", "a bird flies", "a fish swims"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes", "yes"),
        ("yes.", "yes"),
        ("Yes, because the man jumps.", "yes"),
        ("No, nothing happens", "no"),
        ("  NO", "no"),
        ("", None),
        (None, None),
        ("   ", None),
        ("Maybe yes", None),  # must *start* with yes/no
        ('"Yes"', None),  # the official rule is a bare prefix test: a leading quote is not yes
        ("Yesterday it rained", "yes"),  # ... and a prefix test counts this as yes, as eval.py does
        ("Nothing", "no"),
    ],
)
def test_eventhallusion_yes_no_is_the_official_prefix_rule(text, expected):
    assert eventhallusion_yes_no(text) == expected


def test_judge_verdict_drops_bold_markers():
    assert judge_verdict("**Yes**, it is consistent") == "yes"
    assert judge_verdict("No.") == "no"
    assert judge_verdict("It is consistent") is None


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
        ("b", "B"),  # lower-case letters
        ("(c)", "C"),
        ("d.", "D"),
        ("Answer: b", "B"),
        ("The answer is a fish swims", "D"),  # "a" is an article here, not option A
        ("B. a cat sleeps", "B"),
    ],
)
def test_mc_letter(text, expected):
    assert mc_letter(text, OPTIONS) == expected


def test_mc_letter_prefers_the_option_text_over_a_leading_article():
    options = ["a cat sleeps", "a dog runs"]
    assert mc_letter("A dog runs.", options) == "B"
    assert mc_letter("A. a dog runs", options) == "A"  # an explicit letter still wins
    assert mc_letter("A because it fits", ["x", "y"]) == "A"


def test_mc_letter_without_options_and_prefix_strip():
    assert mc_letter("(E) something") == "E"
    assert strip_option_prefix("A. a dog") == "a dog"
    assert strip_option_prefix("no prefix") == "no prefix"


def test_relative_drop():
    assert relative_drop(50.0, 40.0) == pytest.approx(0.2)
    assert relative_drop(0.0, 40.0) is None
