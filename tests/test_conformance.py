"""Every conformance fixture reproduces through `stop_hf.testing.conformance.run_case`, and SToP removes sinks.

Fixtures: tests/fixtures/<set>, shipped with the repository (conformance, conformance_more, conformance_extra), so
a clone runs them; ../shared/fixtures/<set> is read only when a set is missing there."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stop_hf.testing.conformance import RECORDED_DECISIONS, config_for_case, load_case, run_case

LOCAL = Path(__file__).resolve().parent / "fixtures"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


def fixture_dir(name: str) -> Path:
    """The repository's copy (tests/fixtures/<name>) when present, else the shared checkout's."""
    for root in (LOCAL, SHARED):
        if (root / name).is_dir():
            return root / name
    return LOCAL / name


FIXTURE_DIRS = [fixture_dir("conformance"), fixture_dir("conformance_more")]
FILES = sorted(p for d in FIXTURE_DIRS if d.is_dir() for p in d.glob("*.safetensors"))
MISSING = pytest.mark.skipif(not FILES, reason=f"conformance fixtures not found in {FIXTURE_DIRS}")
#: non-default-parameter cases from the reference code, shipped with the tests (see the folder's README)
EXTRA_FILES = sorted(
    (Path(__file__).resolve().parent / "fixtures" / "conformance_extra").glob("*.safetensors")
)


def _ids(path):
    return path.stem if path is not None else "no-fixtures"


@MISSING
@pytest.mark.parametrize("path", FILES or [None], ids=_ids)
def test_fixture_reproduces(path):
    _assert_reproduces(path)


@pytest.mark.parametrize("path", EXTRA_FILES, ids=_ids)
def test_extra_fixture_reproduces(path):
    _assert_reproduces(path)


def _assert_reproduces(path):
    tensors, config = load_case(path)
    result = run_case(path)
    expected_index = tensors["expected_index"]
    assert result.index.shape == expected_index.shape, f"M={result.index.numel()} vs {expected_index.numel()}"
    assert torch.equal(result.index, expected_index)
    assert torch.equal(result.kind, tensors["expected_kind"])
    assert result.embeds.shape == tensors["expected_embeds"].shape
    torch.testing.assert_close(result.embeds, tensors["expected_embeds"], atol=1e-5, rtol=1e-5)
    # kind-0 rows are bit-exact copies of source rows
    flat = tensors["features"].reshape(-1, tensors["features"].shape[-1])
    copies = result.kind == 0
    assert torch.equal(result.embeds[copies], flat[result.index[copies]])


@MISSING
@pytest.mark.parametrize("path", FILES or [None], ids=_ids)
def test_fixture_decisions_match_diagnostics(path):
    """The recorded intermediate decisions (never used as inputs) match what the pruner rediscovered."""
    _, config = load_case(path)
    info = run_case(path).info
    if "windows" in config:
        assert [list(w) for w in info["windows"]] == config["windows"]
        assert info["total_reduced"] == config["total_reduced"]
        assert info["static_tokens_per_window"] == config["static_tokens_per_window"]
        assert info["retain_ratio_adjusted"] == pytest.approx(config["retain_ratio_adjusted"], rel=1e-12)
    if "anchors_per_frame" in config:
        assert info["anchors_per_frame"] == config["anchors_per_frame"]
        assert [e - s + 1 for s, e in info["segments"]] == config["segment_sizes"]
    if "target_indices_filtered" in config:
        assert info["target_indices_filtered"].tolist() == config["target_indices_filtered"]
    if config["method"] == "flashvid":
        assert info["segment_sizes"] == config["segment_sizes"]
        budgets = (info["token_budget"], info["num_adts_tokens"], info["num_tstm_tokens"])
        assert budgets == (config["token_budget"], config["num_adts_tokens"], config["num_tstm_tokens"])
        segments = [seg for seg in config["segments"] if seg["length"] > 0]
        per_frame = [n for seg in segments for n in seg["tstm_tokens_per_frame"]]
        assert info["tstm_tokens_per_frame"] == per_frame
        ratios = [seg["adaptive_contextual_ratio"] for seg in segments]
        assert info["adaptive_contextual_ratio"] == pytest.approx(ratios, rel=1e-12)
    if config["method"] == "prunevid":
        assert info["frame_cluster_labels"] == config["frame_cluster_labels"]
        assert info["frame_cluster_labels_refined"] == config["frame_cluster_labels_refined"]
        assert [w["size"] for w in info["windows_detail"]] == config["window_sizes"]
        for mine, ref in zip(info["windows_detail"], config["windows_detail"]):
            assert mine["static"] == ref["static_positions"]
            assert mine["retain_ratio"] == ref["retain_ratio"]  # the float32 value, exactly


@MISSING
@pytest.mark.parametrize("path", FILES or [None], ids=_ids)
def test_config_ignores_recorded_decisions(path):
    _, config = load_case(path)
    stripped = {k: v for k, v in config.items() if k not in RECORDED_DECISIONS}
    assert config_for_case(config) == config_for_case(stripped)


def _sink_count(index: torch.Tensor, n: int, planted: list[int]) -> int:
    return int(torch.isin(index % n, torch.tensor(planted)).sum())


PAIRS = sorted(
    {
        str(p.parent / p.name.replace("_baseline_", "_{}_"))
        for p in FILES
        if (p.parent / p.name.replace("_baseline_", "_stop_")).exists() and "_baseline_" in p.name
    }
)


@MISSING
@pytest.mark.parametrize("pattern", PAIRS or [None], ids=lambda p: Path(p).stem if p else "no-pairs")
def test_stop_keeps_fewer_sink_tokens(pattern):
    base_path, stop_path = Path(pattern.format("baseline")), Path(pattern.format("stop"))
    base_tensors, base_cfg = load_case(base_path)
    stop_tensors, stop_cfg = load_case(stop_path)
    assert torch.equal(base_tensors["features"], stop_tensors["features"])  # same inputs
    planted, n = base_cfg["planted_sink_positions"], base_cfg["N"]
    base_count = _sink_count(run_case(base_path).index, n, planted)
    stop_count = _sink_count(run_case(stop_path).index, n, planted)
    assert stop_count < base_count
    assert (base_count, stop_count) == (base_cfg["sink_tokens_in_output"], stop_cfg["sink_tokens_in_output"])
