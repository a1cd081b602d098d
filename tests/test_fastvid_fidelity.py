"""FastVID as the paper ran it on LLaVA-OneVision (issue 13): SigLIP's MAP head as a signal source, the presets'
positions, and the errors and warnings around the head. No network: the head is a tiny local checkpoint."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import stop_hf.patches.llava_onevision as llava_patch
import torch
from stop_hf.patches import architecture

import stop_hf
from stop_hf import StopConfig, StopUnsupportedError
from stop_hf.pruners.fastvid import FastVIDPruner
from stop_hf.siglip_head import DEFAULT_SIGLIP_CHECKPOINT, SiglipHeadError
from stop_hf.testing import kept_logits, masked_reference_logits, spliced_reference_logits
from stop_hf.testing.reference import pruned_logits
from stop_hf.testing.siglip import save_tiny_siglip_with_head


@pytest.fixture(scope="module")
def siglip(llava_reference, tmp_path_factory):
    """(folder, SiglipVisionModel with head): the tiny LLaVA-OV tower's geometry, saved as its own checkpoint."""
    folder = tmp_path_factory.mktemp("tiny_siglip_head")
    model = save_tiny_siglip_with_head(llava_reference.config.vision_config, folder)
    return folder, model


@pytest.fixture()
def captured_inputs(monkeypatch):
    """Every PruneInput FastVID is called with."""
    seen = []
    original = FastVIDPruner.prune

    def spy(self, x):
        seen.append(x)
        return original(self, x)

    monkeypatch.setattr(FastVIDPruner, "prune", spy)
    return seen


def _projector_inputs(reference, inputs):
    """The pre-projection hidden states (T, 729, H) of the UNPATCHED model: what its projector receives."""
    grabbed = []
    handle = reference.model.multi_modal_projector.register_forward_pre_hook(
        lambda module, args: grabbed.append(args[0].detach().clone())
    )
    try:
        with torch.no_grad():
            reference(**inputs)
    finally:
        handle.remove()
    return grabbed[0]


def _config(folder, **overrides):
    settings = {
        "method": "fastvid",
        "retention": 0.1,
        "siglip_head": str(folder),
        "global_feature": "map_head",
    }
    return StopConfig(**{**settings, **overrides})


def test_map_head_signals_equal_siglip_vision_model(
    siglip, llava_model, llava_reference, llava_inputs, captured_inputs
):
    folder, siglip_model = siglip
    stop_hf.patch(llava_model, _config(folder, saliency_source="map_head"))
    with torch.no_grad():
        llava_model(**llava_inputs)
    x = captured_inputs[-1]

    hidden = _projector_inputs(llava_reference, llava_inputs)  # (T, 729, H), independent of stop_hf
    with torch.no_grad():
        post = siglip_model.post_layernorm(hidden)
        expected_global = siglip_model.head(post)
        probe = siglip_model.head.probe.repeat(hidden.shape[0], 1, 1)
        probe_attention = siglip_model.head.attention(probe, post, post)[1][:, 0]  # (T, 729), head mean
        expected_attention = llava_reference.model.apply_pooling(probe_attention[..., None])[..., 0]

    assert x.global_features.shape == expected_global.shape == (8, hidden.shape[-1])
    assert x.attention.shape == expected_attention.shape == (8, 196)
    torch.testing.assert_close(x.global_features.float(), expected_global, atol=1e-5, rtol=0)
    torch.testing.assert_close(x.attention.float(), expected_attention, atol=1e-5, rtol=0)
    assert x.attention_patches == 729
    assert expected_attention.std() > 1e-5  # a peaked probe: the comparison is not between two uniform maps


def test_encoder_saliency_with_map_head_global_feature(
    siglip, llava_model, llava_reference, llava_inputs, captured_inputs, monkeypatch
):
    """The SToP code's FastVID: MAP-head global feature, encoder attention for saliency."""
    folder, siglip_model = siglip
    stop_hf.patch(llava_model, _config(folder, saliency_source="encoder"))
    with torch.no_grad():
        llava_model(**llava_inputs)
    x = captured_inputs[-1]
    hidden = _projector_inputs(llava_reference, llava_inputs)
    with torch.no_grad():
        expected_global = siglip_model.head(siglip_model.post_layernorm(hidden))
    torch.testing.assert_close(x.global_features.float(), expected_global, atol=1e-5, rtol=0)
    # the saliency is the encoder attention: the same as without the head at all
    stop_hf.unpatch(llava_model)
    monkeypatch.setattr(llava_patch, "_MEAN_FEATURE_WARNED", True)  # (the warning has its own test)
    stop_hf.patch(llava_model, _config(folder, global_feature="mean"))
    with torch.no_grad():
        llava_model(**llava_inputs)
    assert torch.equal(captured_inputs[-1].attention, x.attention)
    assert not torch.allclose(captured_inputs[-1].global_features, x.global_features)


PAPER_PRESETS = ["fastvid_baseline_r10", "fastvid_stop_r10", "fastvid_baseline_r25", "fastvid_stop_r25"]
ORIGINAL_PRESETS = ["fastvid_original_r10", "fastvid_original_r25"]


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_paper_presets_give_compact_positions(siglip, llava_model, llava_reference, llava_inputs, preset):
    """fastvid_{baseline,stop}_r*: the SToP code's FastVID, compact positions, equal to the spliced reference."""
    config = StopConfig.from_preset(preset)
    # auto: compact positions and the MAP head on LLaVA-OV (original positions, frame mean on Qwen-VL; issue 23)
    assert (config.position_mode, config.global_feature, config.saliency_source) == (
        "auto",
        "auto",
        "encoder",
    )
    assert architecture("llava_onevision").default_position_mode("fastvid") == "compact"
    stop_hf.patch(llava_model, dataclasses.replace(config, siglip_head=str(siglip[0])))
    pruned = pruned_logits(llava_model, llava_inputs)  # the sequence the language model ran
    report = stop_hf.last_prune_report(llava_model)
    expected = spliced_reference_logits(llava_reference, llava_inputs, report)[0]
    assert pruned.shape[1] == expected.shape[0] < llava_inputs["input_ids"].shape[1]
    assert (pruned[0] - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("preset", ORIGINAL_PRESETS)
def test_original_presets_give_original_positions(siglip, llava_model, llava_reference, llava_inputs, preset):
    """fastvid_original_r*: the original FastVID, original positions, equal to the masked reference."""
    config = StopConfig.from_preset(preset)
    assert (config.position_mode, config.global_feature, config.saliency_source) == (
        "original",
        "map_head",
        "map_head",
    )
    stop_hf.patch(llava_model, dataclasses.replace(config, siglip_head=str(siglip[0])))
    pruned = pruned_logits(llava_model, llava_inputs)  # the sequence the language model ran
    report = stop_hf.last_prune_report(llava_model)
    reference, keep = masked_reference_logits(llava_reference, llava_inputs, report)
    assert pruned.shape[1] == int(keep[0].sum()) < llava_inputs["input_ids"].shape[1]
    assert (pruned[0] - kept_logits(reference, keep)[0]).abs().max() <= 1e-5


def test_compact_and_original_presets_differ(siglip, llava_model, llava_inputs):
    """The two position policies give different logits for the same kept set (the test above is not vacuous)."""
    folder = str(siglip[0])
    logits = {}
    for mode in ("compact", "original"):
        model = llava_model
        stop_hf.patch(model, _config(folder, position_mode=mode))
        logits[mode] = pruned_logits(model, llava_inputs)
        stop_hf.unpatch(model)
    assert logits["compact"].shape == logits["original"].shape
    assert (logits["compact"] - logits["original"]).abs().max() > 1e-3


def test_offline_without_head_names_download_and_field(llava_model, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(SiglipHeadError) as error:
        stop_hf.patch(llava_model, StopConfig.from_preset("fastvid_stop_r10"))
    message = str(error.value)
    assert DEFAULT_SIGLIP_CHECKPOINT in message and "stop_config.siglip_head" in message
    assert "global_feature='mean'" in message
    assert not stop_hf.is_patched(llava_model)  # nothing half-installed


def test_mean_global_feature_is_opt_in_and_warns_once(
    llava_model, llava_inputs, captured_inputs, monkeypatch
):
    monkeypatch.setattr(llava_patch, "_MEAN_FEATURE_WARNED", False)
    config = StopConfig(method="fastvid", retention=0.1, global_feature="mean")
    with pytest.warns(UserWarning, match="not the paper's signal"):
        stop_hf.patch(llava_model, config)
    with torch.no_grad():
        llava_model(**llava_inputs)
    x = captured_inputs[-1]
    stop_hf.unpatch(llava_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stop_hf.patch(llava_model, config)  # once per process
    assert x.global_features.shape == (8, llava_model.config.vision_config.hidden_size)


@pytest.fixture()
def qwen_model():
    from transformers import Qwen2_5_VLForConditionalGeneration

    from stop_hf.testing import tiny_checkpoint

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint("qwen2_5_vl")).eval()


def test_qwen_refuses_map_head_sources(qwen_model):
    for field in ("global_feature", "saliency_source"):
        with pytest.raises(StopUnsupportedError, match=field):
            stop_hf.patch(qwen_model, StopConfig(method="fastvid", retention=0.2, **{field: "map_head"}))
        assert not stop_hf.is_patched(qwen_model)
