"""Properties every paper pruner keeps on arbitrary shapes: budgets, valid indices, determinism, no NaN."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stop_hf.pruners import DEFAULT_SINK_WEIGHTS, KIND_COPY, KIND_MERGED, PRUNERS, PruneInput
from stop_hf.sink import Sink

METHODS = ("visionzip", "fastvid", "holitom", "flashvid", "prunevid")
SINK_METHODS = tuple(m for m in METHODS if m != "prunevid")  # PruneVid has no SToP variant
CASES = [(m, s) for m in METHODS for s in (False, True) if s is False or m in SINK_METHODS]


def make_pruner(method: str, retention: float, sink: bool, **params):
    weights = DEFAULT_SINK_WEIGHTS[method]
    if method == "flashvid":  # expansion 1.25 x retention > 1 is refused (more tokens than a frame has)
        retention = min(retention, 0.8)
    return PRUNERS[method](retention=retention, sink=Sink(*weights) if sink else None, **params)


def make_input(t, h, w, d, seed=0, features=None, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    n = h * w
    if features is None:
        base = torch.randn(1, n, d, generator=g)
        features = base + 0.5 * torch.randn(t, n, d, generator=g)  # some temporal redundancy
    return PruneInput(
        features=features.to(dtype=dtype, device=device),
        attention=(torch.rand(t, n, generator=g) + 1e-3).to(dtype=dtype, device=device),
        keys=torch.randn(t, n, 4, generator=g).to(dtype=dtype, device=device),
        global_features=torch.randn(t, 5, generator=g).to(dtype=dtype, device=device),
        grid=(h, w),
    )


def budget(method: str, pruner, t: int, n: int) -> float:
    r = pruner.retention
    if method == "visionzip":
        return t * min(n, math.floor(n * r) + 1)
    if method == "fastvid":
        return t * max(1, math.floor(n * r))
    if (
        method == "flashvid"
    ):  # B = ceil(1.25 N r) per frame; a ceil per frame in the tree merge adds at most 1
        return t * (pruner.budgets(n)[0] + 1)
    if method == "prunevid":  # rho = r N W / (...) + 0.005; up to 14 unclustered tokens per group (+1 guard)
        return min(t * n, (r + 0.005) * t * n + 30 * t)
    return r * t * n + 2 * t  # HoliTom: ceil per frame, round per window (and one guard token per window)


def check_result(method, sink, pruner, x, result):
    t, n, d = x.features.shape
    m = result.index.numel()
    assert result.embeds.shape == (m, d)
    assert result.embeds.dtype == x.features.dtype
    assert result.index.dtype == torch.int64 and result.kind.dtype == torch.int64
    assert result.kind.shape == (m,)
    assert 1 <= m <= budget(method, pruner, t, n)
    assert int(result.index.min()) >= 0 and int(result.index.max()) < t * n
    assert bool(((result.kind == KIND_COPY) | (result.kind == KIND_MERGED)).all())
    assert torch.isfinite(result.embeds.float()).all()
    flat = x.features.reshape(-1, d)
    copies = result.kind == KIND_COPY
    assert torch.equal(result.embeds[copies], flat[result.index[copies]])
    if (
        method == "flashvid"
    ):  # an ADTS copy and a cluster can share an index, and a pick can repeat (reference)
        if pruner.distinct_picks:
            assert result.index[copies].unique().numel() == int(copies.sum())
    elif not (method == "visionzip" and sink):  # the reference's sink target skip may repeat a target
        assert result.index.unique().numel() == m
    assignment = result.info["assignment"]
    assert assignment.shape == (t * n,)
    assert int(assignment.min()) >= -1 and int(assignment.max()) < m
    # a copied token is assigned to its own row (to one of its copies where the reference repeats a pick)
    own = assignment[result.index[copies]]
    assert torch.equal(result.index[own], result.index[copies]) and bool(
        (result.kind[own] == KIND_COPY).all()
    )
    if sink:
        assert result.info["sink_score"].shape == (n,)
    if method == "holitom":
        windows = result.info["windows"]
        assert windows[0][0] == 0 and windows[-1][1] == t - 1
        assert all(b[0] == a[1] + 1 for a, b in zip(windows, windows[1:]))
    if method in ("fastvid", "flashvid"):
        segments = result.info["segments"]
        assert segments[0][0] == 0 and segments[-1][1] == t - 1


@pytest.mark.parametrize("method,sink", CASES)
@settings(max_examples=12, deadline=None)
@given(
    t=st.integers(1, 12),
    h=st.integers(1, 16),
    w=st.integers(1, 16),
    d=st.integers(1, 8),
    retention=st.floats(min_value=1e-3, max_value=1.0),
    seed=st.integers(0, 2**16),
)
def test_random_inputs(method, sink, t, h, w, d, retention, seed):
    pruner = make_pruner(method, retention, sink)
    x = make_input(t, h, w, d, seed)
    first = pruner(x)
    check_result(method, sink, pruner, x, first)
    second = pruner(x)
    assert torch.equal(first.index, second.index)
    assert torch.equal(first.kind, second.kind)
    assert torch.equal(first.embeds, second.embeds)


@pytest.mark.parametrize("method,sink", CASES)
@pytest.mark.parametrize("fill", ["zeros", "constant", "repeated-frame"])
@settings(max_examples=4, deadline=None)
@given(t=st.integers(1, 9), h=st.integers(1, 9), w=st.integers(2, 9), retention=st.floats(0.05, 1.0))
def test_degenerate_features_no_nan(method, sink, fill, t, h, w, retention):
    n, d = h * w, 6
    if fill == "zeros":
        features = torch.zeros(t, n, d)
    elif fill == "constant":
        features = torch.full((t, n, d), 0.7)
    else:
        features = torch.randn(1, n, d).expand(t, n, d).contiguous()
    x = make_input(t, h, w, d, features=features)
    pruner = make_pruner(method, retention, sink)
    result = pruner(x)
    check_result(method, sink, pruner, x, result)
    # all-constant attention too (sink score is then all zero)
    x.attention = torch.full((t, n), 1 / 729)
    check_result(method, sink, pruner, x, pruner(x))


@pytest.mark.parametrize("method,sink", CASES)
def test_low_precision_matches_float32(method, sink):
    x16 = make_input(6, 7, 9, 8, seed=3, dtype=torch.bfloat16)
    x32 = PruneInput(
        features=x16.features.float(),
        attention=x16.attention.float(),
        keys=x16.keys.float(),
        global_features=x16.global_features.float(),
        grid=x16.grid,
    )
    pruner = make_pruner(method, 0.2, sink)
    r16, r32 = pruner(x16), pruner(x32)
    assert r16.embeds.dtype == torch.bfloat16
    assert torch.equal(r16.index, r32.index)
    torch.testing.assert_close(r16.embeds.float(), r32.embeds, atol=1e-2, rtol=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("method,sink", CASES)
def test_cuda_matches_cpu(method, sink):
    pruner = make_pruner(method, 0.15, sink)
    cpu = pruner(make_input(8, 14, 14, 16, seed=5))
    gpu = pruner(make_input(8, 14, 14, 16, seed=5, device="cuda"))
    assert gpu.embeds.device.type == "cuda"
    assert torch.equal(cpu.index, gpu.index.cpu())
    torch.testing.assert_close(cpu.embeds, gpu.embeds.cpu(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_missing_signal_raises(method):
    cls = PRUNERS[method]
    for field in cls.needs:
        x = make_input(3, 4, 4, 8)
        setattr(x, field, None)
        with pytest.raises(ValueError, match=field):
            cls(retention=0.25)(x)


class RecordingSink(Sink):
    """A Sink that records the attention_patches every STSP call receives."""

    def stsp(self, attention, score, attention_patches=729):
        CALLS.append(attention_patches)
        return super().stsp(attention, score, attention_patches)


CALLS: list[int] = []


@pytest.mark.parametrize("method", SINK_METHODS)
def test_stsp_receives_attention_patches(method):
    CALLS.clear()
    x = make_input(4, 6, 6, 8)
    x.attention_patches = 196
    PRUNERS[method](retention=0.3, sink=RecordingSink(*DEFAULT_SINK_WEIGHTS[method]))(x)
    assert CALLS and set(CALLS) == {196}


def test_fastvid_short_video_uses_effective_c():
    pruner = make_pruner("fastvid", 0.25, False)
    x = make_input(3, 14, 14, 8)
    assert pruner.c > 3
    result = pruner(x)
    assert result.info["segments"] == [(0, 0), (1, 1), (2, 2)]


def test_holitom_static_video_collapses():
    x = make_input(6, 5, 5, 8, features=torch.randn(1, 25, 8).expand(6, 25, 8).contiguous())
    result = make_pruner("holitom", 0.2, False)(x)
    assert result.info["windows"] == [(0, 5)]
    assert bool((result.kind == KIND_MERGED).all())
    assert result.index.numel() == round(25 * min(0.2 * 6, 1.0))


def test_params_round_trip_defaults():
    defaults = {
        "visionzip": {"spatial_tokens": None, "dominant_ratio": 54 / 64, "sink_target_skip_topk": 20},
        "fastvid": {"c": 8, "tau": 0.9, "d": 0.4, "p": 4, "beta": 0.6, "k": 4, "anchor_sink_penalty": 0.3},
        "holitom": {
            "tau": 0.8,
            "beta": 0.6,
            "d_split": 0.0,
            "k": 7,
            "max_window_size": 1024,
            "budget_correction": True,
            "sttp_threshold": 0.8,
            "static_cluster_sink_penalty": 0.3,
        },
    }
    for method, expected in defaults.items():
        pruner = PRUNERS[method]()
        values = {f.name: getattr(pruner, f.name) for f in dataclasses.fields(pruner)}
        for key, value in expected.items():
            assert values[key] == value, (method, key)
    assert DEFAULT_SINK_WEIGHTS["visionzip"] == (0.03, 0.0)
    assert DEFAULT_SINK_WEIGHTS["fastvid"] == (0.02, 0.0)
    assert DEFAULT_SINK_WEIGHTS["holitom"] == (0.04, 0.07)


def test_visionzip_budget_table():
    pruner = PRUNERS["visionzip"]
    assert [pruner(retention=r).tokens_per_frame(196) for r in (0.10, 0.15, 0.20, 0.25)] == [20, 30, 40, 50]
    assert pruner(retention=0.15).tokens_per_frame(240) == 36
    assert pruner(retention=0.15, spatial_tokens=7).tokens_per_frame(240) == 7


@pytest.mark.parametrize("method", METHODS)
def test_bad_params_raise(method):
    bad = {
        "visionzip": {"spatial_tokens": 0},
        "fastvid": {"p": 0},
        "holitom": {"max_window_size": 0},
        "flashvid": {"dpc_k": 0},
        "prunevid": {"token_dpc_k": 0},
    }[method]
    with pytest.raises(ValueError):
        PRUNERS[method](**bad)
