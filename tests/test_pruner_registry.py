"""The pruner registry: `@register_pruner` on the class, SToP default weights on the class, duplicate names raise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from stop_hf.pruners import DEFAULT_SINK_WEIGHTS, PRUNERS, Pruner, register_pruner

EXPECTED_WEIGHTS = {
    "visionzip": (0.03, 0.0),
    "fastvid": (0.02, 0.0),
    "holitom": (0.04, 0.07),
    "flashvid": (0.02, 0.0),
    "prunevid": (0.0, 0.0),
    "uniform": (0.0, 0.0),
    "random": (0.0, 0.0),
    "none": (0.0, 0.0),
}


def test_every_method_is_registered_with_its_sink_weights_on_the_class():
    assert set(PRUNERS) == set(EXPECTED_WEIGHTS)
    for name, weights in EXPECTED_WEIGHTS.items():
        assert PRUNERS[name].name == name
        assert PRUNERS[name].sink_weights == weights
        assert DEFAULT_SINK_WEIGHTS[name] == weights
    assert dict(DEFAULT_SINK_WEIGHTS) == EXPECTED_WEIGHTS


def test_a_duplicate_name_raises_naming_both_classes():
    with pytest.raises(
        ValueError, match=r"'holitom' is already registered by stop_hf\.pruners\.holitom\.HoliTomPruner"
    ):

        @register_pruner
        @dataclass
        class Impostor(Pruner):
            name: ClassVar[str] = "holitom"

    assert PRUNERS["holitom"].__module__ == "stop_hf.pruners.holitom"


def test_a_nameless_pruner_raises():
    with pytest.raises(ValueError, match="has no `name`"):

        @register_pruner
        @dataclass
        class Nameless(Pruner):
            pass


def test_a_new_method_registers_with_its_weights(monkeypatch):
    monkeypatch.setattr("stop_hf.pruners.base.PRUNERS", dict(PRUNERS))
    import stop_hf.pruners.base as base

    @register_pruner
    @dataclass
    class Mine(Pruner):
        name: ClassVar[str] = "mine_for_test"
        sink_weights: ClassVar[tuple[float, float]] = (0.5, 0.25)

    assert base.PRUNERS["mine_for_test"] is Mine
    assert Mine.sink_weights == (0.5, 0.25)
    assert "mine_for_test" not in PRUNERS  # the real registry was not touched
