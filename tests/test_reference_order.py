"""The last pruner-level differences to the reference code (issue 13): FastVID's anchor path, HoliTom + SToP with
d_split > 0, and the float order at decision points."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stop_hf.pruners import PruneInput
from stop_hf.pruners.fastvid import FastVIDPruner
from stop_hf.pruners.holitom import HoliTomPruner
from stop_hf.sink import Sink, frame_sink_scores, sink_score


def _input(t=8, n=196, d=16, seed=0, **kwargs):
    g = torch.Generator().manual_seed(seed)
    return PruneInput(
        features=torch.randn(t, n, d, generator=g),
        attention=torch.rand(t, n, generator=g) / 729 + 1e-5,
        global_features=torch.randn(t, 32, generator=g),
        grid=(14, 14) if n == 196 else (n, 1),
        **kwargs,
    )


# ------------------------------------------------------------------------------------------------ sink score order
def _reference_sink(attention, gamma):
    """The SToP code's expression: minmax over tokens of (mean over frames, repeated per frame) ** gamma."""
    repeated = attention.mean(0).repeat(attention.shape[0], 1) ** gamma
    lo, hi = repeated.amin(dim=1)[..., None], repeated.amax(dim=1)[..., None]
    return (repeated - lo) / (hi - lo + 1e-12)


@pytest.mark.parametrize("t,n", [(1, 196), (2, 196), (3, 240), (5, 196), (32, 240)])
def test_frame_sink_scores_are_the_reference_bits(t, n):
    attention = torch.rand(t, n, generator=torch.Generator().manual_seed(t)) / 729
    scores = frame_sink_scores(attention, 1.1)
    assert torch.equal(scores, _reference_sink(attention, 1.1))
    assert torch.equal(sink_score(attention, 1.1), scores[0])


def test_rows_can_differ_in_the_last_bit_only():
    attention = torch.rand(3, 240, generator=torch.Generator().manual_seed(1)) / 729
    scores = frame_sink_scores(attention, 1.1)
    assert (scores - scores[0]).abs().max() < 1e-6


# ------------------------------------------------------------------------------------------------ FastVID anchors
def test_anchor_path_follows_the_anchor_count_not_the_segment_length():
    """Nc = 1, p = 2, a 3-frame segment: floor(1 * 3 / ceil(3 / 2)) = 1 = Nc, so frames 2 and 0 take the
    single-frame path (own tokens only) although the segment has several frames."""
    pruner = FastVIDPruner(retention=0.02, d=0.5, p=2, c=1, tau=0.0)  # R = 3 of 196 tokens: Ns = 2, Nc = 1
    assert pruner.budgets(196) == (3, 2, 1)
    x = _input(t=3)
    result = pruner(x)
    assert result.info["segments"] == [(0, 2)]
    assert result.info["anchors_per_frame"] == [1, 0, 1]
    frame_of_row = result.index // 196
    assignment = result.info["assignment"].view(3, 196)
    # every merged token absorbs tokens of its own frame only; frame 1's remaining tokens are dropped
    for frame in (0, 2):
        rows = assignment[frame][assignment[frame] >= 0]
        assert (frame_of_row[rows] == frame).all()
    merged_rows = torch.nonzero(result.kind == 1).squeeze(-1)
    assert sorted(frame_of_row[merged_rows].tolist()) == [0, 2]


def test_multi_frame_path_when_anchor_count_exceeds_nc():
    pruner = FastVIDPruner(retention=0.1, p=4, c=1, tau=0.0)  # R = 19: Ns = 12, Nc = 7; L = 3 -> 21 anchors
    result = pruner(_input(t=3))
    assert result.info["anchors_per_frame"] == [0, 0, 21]
    assignment = result.info["assignment"].view(3, 196)
    merged = torch.nonzero(result.kind == 1).squeeze(-1)
    fed = torch.isin(assignment, merged)
    assert fed[0].any() and fed[1].any() and fed[2].any()  # the whole segment feeds frame 2's anchors


# ------------------------------------------------------------------------------------------------ HoliTom
def test_holitom_similarity_is_normalised_first():
    x = _input(t=6, d=64, seed=3)
    tau = 0.0
    work = x.features.float()
    unit = F.normalize(work, dim=-1)
    expected = F.cosine_similarity(unit[:-1], unit[1:], dim=-1) > tau
    # tau = 0 makes about half the pairs static: the windows follow that similarity exactly
    result = HoliTomPruner(retention=0.3, tau=tau)(x)
    from stop_hf.pruners.holitom import select_static_windows

    assert result.info["windows"] == select_static_windows(expected, 1024)[0]


@pytest.mark.parametrize("d_split", [0.3, 0.5])
def test_holitom_stop_with_d_split_keeps_only_the_dominant_part(d_split):
    """The SToP code keeps round(ceil(M * r) * (1 - D)) dynamic tokens per frame and no contextual tokens."""
    x = _input(t=4, d=32, seed=5)
    sink = Sink(mu_s=0.04, mu_t=0.07)
    result = HoliTomPruner(retention=0.2, tau=0.99, d_split=d_split, sink=sink)(x)
    windows = result.info["windows"]
    r_adj = result.info["retain_ratio_adjusted"]
    static = result.info["static_tokens_per_window"]
    expected = 0
    for (start, end), n_static in zip(windows, static):
        m = 196 - n_static
        expected += (end - start + 1) * round(math.ceil(m * r_adj) * (1 - d_split))
        expected += round(n_static * r_adj)
    assert result.index.numel() == expected
    frame_of = result.index // 196
    copies = result.kind == 0
    # no dynamic token is merged: every merged token is a static centre (at the window's first frame)
    starts = {s for s, _ in windows}
    assert all(int(f) in starts for f in frame_of[~copies])


def test_holitom_baseline_with_d_split_adds_contextual_centres():
    x = _input(t=4, d=32, seed=5)
    plain = HoliTomPruner(retention=0.2, tau=0.99)(x)
    split = HoliTomPruner(retention=0.2, tau=0.99, d_split=0.5)(x)
    assert split.index.numel() == plain.index.numel()  # the budget is the same, half of it merged
    assert int((split.kind == 1).sum()) > int((plain.kind == 1).sum())
