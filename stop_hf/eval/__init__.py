"""Benchmark evaluation: `runner.evaluate` runs a model, `score_predictions` scores any system's answers."""

from __future__ import annotations

from typing import Any

__all__ = ["score_predictions"]


def __getattr__(name: str) -> Any:  # lazy: `stop_hf.eval.metrics` stays importable without torch
    if name == "score_predictions":
        from .score import score_predictions

        return score_predictions
    raise AttributeError(name)
