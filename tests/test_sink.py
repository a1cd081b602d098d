"""Unit tests for the SToP sink score and its STSP / STTP corrections."""

from __future__ import annotations

import pytest
import torch

from stop_hf.sink import REFERENCE_ATTENTION_PATCHES, Sink, sink_score


def _attention(t=5, n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(t, n, generator=g) + 1e-3


def test_score_range_and_formula():
    att = _attention()
    s = sink_score(att, gamma=1.1)
    assert s.shape == (att.shape[1],)
    assert float(s.min()) == pytest.approx(0.0, abs=1e-7)
    assert float(s.max()) == pytest.approx(1.0, abs=1e-6)
    p = att.mean(0) ** 1.1
    torch.testing.assert_close(s, (p - p.min()) / (p.max() - p.min() + 1e-12))


def test_score_is_shared_over_frames():
    att = _attention(t=7)
    s = Sink(gamma=1.1).score(att)
    torch.testing.assert_close(Sink(gamma=1.1).score(att[torch.randperm(7)]), s)
    # one score per position, regardless of the frame count (mean over frames)
    torch.testing.assert_close(Sink().score(torch.cat([att, att])), s)


def test_score_gamma_sharpens_and_constant_is_zero():
    att = _attention()
    lin = sink_score(att, gamma=1.0)
    mean = att.mean(0)
    torch.testing.assert_close(lin, (mean - mean.min()) / (mean.max() - mean.min() + 1e-12))
    const = sink_score(torch.full((4, 9), 0.25), gamma=1.1)
    assert torch.equal(const, torch.zeros(9))
    zero = sink_score(torch.zeros(3, 9), gamma=1.1)
    assert torch.isfinite(zero).all() and torch.equal(zero, torch.zeros(9))


def test_score_keeps_dtype():
    att = _attention().to(torch.bfloat16)
    assert sink_score(att).dtype == torch.bfloat16


def test_stsp_arithmetic_and_spatial_weight():
    att = _attention()
    sink = Sink(mu_s=0.03, mu_t=0.07)
    s = sink.score(att)
    torch.testing.assert_close(sink.stsp(att, s), att - 0.03 * s)
    assert sink.spatial_weight() == pytest.approx(0.03)
    assert sink.spatial_weight(196) == pytest.approx(0.03 * REFERENCE_ATTENTION_PATCHES / 196)
    torch.testing.assert_close(sink.stsp(att, s, 196), att - 0.03 * 729 / 196 * s)
    assert Sink(mu_s=0.0).stsp(att, s) is att


def test_sttp_arithmetic():
    sim = torch.rand(4, 12) * 2 - 1
    s = torch.linspace(0, 1, 12)
    torch.testing.assert_close(Sink(mu_t=0.07).sttp(sim, s), sim + 0.07 * s)
    assert Sink(mu_t=0.0).sttp(sim, s) is sim
