"""Where the reference code crashes and stop-hf returns an output instead (issue 21): each case is documented in
docs/configuration.md#where-the-reference-crashes, warns once per process naming the case and its section, and is
recorded in the result's info["generalisations"] (hence in `last_prune_report`)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

from stop_hf.pruners import PRUNERS, PruneInput
from stop_hf.pruners import base as pruner_base
from stop_hf.pruners.base import GENERALISATIONS
from stop_hf.sink import Sink

DOCS = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def _input(t=4, h=14, w=14, d=16, seed=0, static=False) -> PruneInput:
    g = torch.Generator().manual_seed(seed)
    n = h * w
    if static:
        features = torch.randn(1, n, d, generator=g).expand(t, n, d).contiguous()
    else:
        features = torch.randn(1, n, d, generator=g) + 0.5 * torch.randn(t, n, d, generator=g)
    return PruneInput(
        features=features,
        attention=torch.rand(t, n, generator=g) + 1e-3,
        keys=torch.randn(t, n, 4, generator=g),
        global_features=torch.randn(t, 8, generator=g),
        grid=(h, w),
    )


#: case -> (pruner, input) that runs it
CASES = {
    "visionzip_no_contextual": lambda: (PRUNERS["visionzip"](retention=0.1, dominant_ratio=1.0), _input()),
    # 4x4 grid: the top-20 sink positions are all 16, so every contextual target would be pushed past the end
    "visionzip_target_past_end": lambda: (
        PRUNERS["visionzip"](retention=0.5, sink=Sink(0.03)),
        _input(h=4, w=4),
    ),
    "fastvid_fewer_frames_than_c": lambda: (PRUNERS["fastvid"](retention=0.25), _input(t=4)),
    "fastvid_no_anchors": lambda: (PRUNERS["fastvid"](retention=0.25, d=0.0, c=2), _input(t=4)),
    "holitom_baseline_d_split": lambda: (PRUNERS["holitom"](retention=0.25, d_split=0.5), _input()),
    "flashvid_no_temporal_merge": lambda: (
        PRUNERS["flashvid"](retention=0.25, temporal_threshold=1.0),
        _input(),
    ),
    # one static segment, B = N: the hard threshold merges, and the soft threshold would ask top-k for 0
    "flashvid_full_budget": lambda: (
        PRUNERS["flashvid"](retention=0.25, expansion=4.0, min_segment_num=1),
        _input(t=4, static=True),
    ),
    "prunevid_short_video": lambda: (PRUNERS["prunevid"](retention=0.25), _input(t=4)),
    "prunevid_grid": lambda: (PRUNERS["prunevid"](retention=0.25), _input(t=8, h=8, w=8)),
}


@pytest.fixture
def fresh_warnings(monkeypatch):
    """A process that has not warned about any case yet."""
    monkeypatch.setattr(pruner_base, "_warned", set())


def test_every_generalisation_has_a_case_here():
    assert set(CASES) == set(GENERALISATIONS)


@pytest.mark.parametrize("case", sorted(CASES))
def test_generalisation_warns_once_and_is_recorded(case, fresh_warnings):
    pruner, x = CASES[case]()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = pruner(x)
        second = pruner(x)
    mine = [w for w in caught if case in str(w.message)]
    assert len(mine) == 1, [str(w.message) for w in caught]  # once per process, however often it runs
    message = str(mine[0].message)
    assert f"docs/configuration.md#{GENERALISATIONS[case]}" in message and issubclass(
        mine[0].category, UserWarning
    )
    for result in (first, second):  # recorded on every call, not only the warned one
        entries = [e for e in result.info["generalisations"] if e["case"] == case]
        assert len(entries) == 1
        assert entries[0]["docs"] == f"docs/configuration.md#{GENERALISATIONS[case]}" and entries[0]["detail"]
        assert result.index.numel() > 0 and torch.isfinite(result.embeds).all()


@pytest.mark.parametrize("case", sorted(GENERALISATIONS))
def test_generalisation_is_documented_at_its_anchor(case):
    text = DOCS.read_text()
    assert "### Where the reference crashes" in text
    anchor = GENERALISATIONS[case]
    at = text.index(f'<a id="{anchor}"></a>')
    section = text[at : text.find("<a id=", at + 1)]
    assert re.search(r"^#### .+\(`" + case + r"`\)$", section, re.M), section[:200]


@pytest.mark.parametrize(
    "pruner",
    [
        PRUNERS["visionzip"](retention=0.1),
        PRUNERS["visionzip"](retention=0.1, sink=Sink(0.03)),
        PRUNERS["fastvid"](retention=0.1, c=4),
        PRUNERS["holitom"](retention=0.1),
        PRUNERS["flashvid"](retention=0.1),
        PRUNERS["prunevid"](retention=0.1),
    ],
    ids=lambda p: f"{p.name}{'+sink' if p.sink else ''}",
)
def test_ordinary_inputs_record_no_generalisation(pruner, fresh_warnings):
    x = _input(t=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = pruner(x)
    assert "generalisations" not in result.info


def test_last_prune_report_carries_the_generalisations(llava_model, llava_inputs, fresh_warnings):
    import stop_hf

    stop_hf.patch(llava_model, {"method": "visionzip", "retention": 0.1, "params": {"dominant_ratio": 1.0}})
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        llava_model(**llava_inputs)
    assert any("visionzip_no_contextual" in str(w.message) for w in caught)
    (entry,) = stop_hf.last_prune_report(llava_model)
    cases = [e["case"] for e in entry["info"]["generalisations"]]
    assert cases == ["visionzip_no_contextual"]
