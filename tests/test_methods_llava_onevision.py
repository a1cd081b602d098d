"""Every paper method x sink on/off, end to end on the tiny LLaVA-OneVision model: the splice is exact in both
position policies, the kept count matches the method's budget, and generate runs."""

from __future__ import annotations

import pytest
import torch

import stop_hf
from stop_hf import StopConfig
from stop_hf.testing import kept_logits, masked_reference_logits, spliced_reference_logits
from stop_hf.testing.reference import pruned_logits
from stop_hf.testing.siglip import save_tiny_siglip_with_head

METHODS = ["visionzip", "fastvid", "holitom"]
# every method x sink the methods support (PruneVid has no SToP variant)
CASES = [
    (m, s) for m in [*METHODS, "flashvid", "prunevid"] for s in (False, True) if not (m == "prunevid" and s)
]
# At original positions the masked reference of VisionZip, HoliTom and PruneVid runs for every architecture in
# tests/test_architectures.py (test_paper_methods_end_to_end); here only FastVID with the MAP head, which only
# LLaVA-OV has. FlashVID can emit an index twice (an ADTS copy and a cluster), which the masked reference cannot
# hold: see tests/test_flashvid_prunevid.py for its original-position check.
MASKED_CASES = [c for c in CASES if c[0] == "fastvid"]
RETENTION = 0.1


@pytest.fixture(scope="module")
def siglip_head(llava_reference, tmp_path_factory):
    """A tiny SigLIP checkpoint with its MAP head (FastVID's global feature), matching the tiny tower."""
    folder = tmp_path_factory.mktemp("siglip_head")
    save_tiny_siglip_with_head(llava_reference.config.vision_config, folder)
    return str(folder)


def config(method, siglip_head, **fields):
    """The method at RETENTION; FastVID reads its MAP head from the tiny SigLIP checkpoint."""
    extra = {"siglip_head": siglip_head} if method == "fastvid" else {}
    return StopConfig(method=method, retention=RETENTION, **extra, **fields)


def run(model, inputs):
    """Logits in pruned coordinates (the sequence the language model ran; forward itself returns prompt
    coordinates with NaN at dropped positions)."""
    return pruned_logits(model, inputs)


@pytest.mark.parametrize(("method", "sink"), MASKED_CASES)
def test_original_positions_equal_masked_reference(
    llava_model, llava_reference, llava_inputs, siglip_head, method, sink
):
    stop_hf.patch(llava_model, config(method, siglip_head, sink=sink, position_mode="original"))
    pruned = run(llava_model, llava_inputs)
    report = stop_hf.last_prune_report(llava_model)
    reference, keep = masked_reference_logits(llava_reference, llava_inputs, report)
    assert pruned.shape[1] == int(keep[0].sum())
    assert (pruned[0] - kept_logits(reference, keep)[0]).abs().max() <= 1e-5


@pytest.mark.parametrize(("method", "sink"), CASES)
def test_reference_policy_equals_spliced_reference(
    llava_model, llava_reference, llava_inputs, siglip_head, method, sink
):
    """Default positions (compact for every method: the reference code renumbers; for FastVID the SToP code's)
    and the method's token order."""
    stop_hf.patch(llava_model, config(method, siglip_head, sink=sink))
    pruned = run(llava_model, llava_inputs)
    report = stop_hf.last_prune_report(llava_model)
    expected = spliced_reference_logits(llava_reference, llava_inputs, report)[0]
    assert pruned.shape[1] == expected.shape[0]
    assert (pruned[0] - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("sink", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_kept_count_matches_budget_and_generate_runs(llava_model, llava_inputs, siglip_head, method, sink):
    stop_hf.patch(llava_model, config(method, siglip_head, sink=sink))
    with torch.no_grad():
        out = llava_model.generate(**llava_inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == llava_inputs["input_ids"].shape[1] + 3
    entry = stop_hf.last_prune_report(llava_model)[0]
    frames, tokens = entry["frames"], entry["grid"][0] * entry["grid"][1]
    kept = entry["tokens_after"] - 1  # the image_newline is always kept
    if method == "visionzip":
        assert kept == frames * 20  # the reference table: 10% of 196 -> 20 tokens per frame
    elif method == "fastvid":
        assert kept == frames * int(tokens * RETENTION)  # R = floor(N r) per frame on average
    else:
        # HoliTom's budget correction targets r*T*N; STTP may keep fewer by design (never more).
        assert kept <= round(frames * tokens * RETENTION) + frames
        if not sink:
            assert abs(kept - frames * tokens * RETENTION) <= 0.01 * frames * tokens + frames
    assert entry["index"].unique().numel() == entry["index"].numel()


def test_sink_score_is_reported(llava_model, llava_inputs):
    stop_hf.patch(llava_model, "holitom_stop_r10")
    run(llava_model, llava_inputs)
    info = stop_hf.last_prune_report(llava_model)[0]["info"]
    assert info["sink_score"].shape == (196,)
    assert float(info["sink_score"].max()) == pytest.approx(1.0) and float(info["sink_score"].min()) == 0.0
