"""Contract tests: every transformers internal stop_hf touches (stop_hf/compat.py) still behaves as assumed. A
failure names the internal and what changed."""

from __future__ import annotations

import pytest
import torch

from stop_hf import compat
from stop_hf.testing import build_tiny_model


@pytest.mark.parametrize("contract", compat.CONTRACTS, ids=lambda c: c.internal)
def test_contract_holds(contract):
    compat.require(contract)


def test_all_contracts_hold_at_once():
    assert compat.check_contracts() == []


def test_a_broken_internal_fails_naming_it(monkeypatch):
    import transformers.modeling_utils

    monkeypatch.setattr(transformers.modeling_utils, "slice_logits_to_keep", lambda h, n: h)
    contract = next(c for c in compat.CONTRACTS if c.internal == "modeling_utils.slice_logits_to_keep")
    with pytest.raises(
        compat.ContractError, match=r"changed the internal `modeling_utils\.slice_logits_to_keep`"
    ):
        compat.require(contract)
    assert any("slice_logits_to_keep" in failure for failure in compat.check_contracts())


def test_a_missing_internal_fails_naming_it(monkeypatch):
    import transformers.vision_utils

    monkeypatch.delattr(transformers.vision_utils, "get_vision_window_index")
    contract = next(c for c in compat.CONTRACTS if c.internal == "vision_utils.get_vision_window_index")
    with pytest.raises(compat.ContractError, match="get_vision_window_index.*ImportError"):
        compat.require(contract)


#: module attributes the patch modules read on the tiny models (same classes as the real checkpoints)
MODULE_ATTRIBUTES = {
    "llava_onevision": {
        "model.apply_pooling": (),
        "model.multi_modal_projector": (),
        "model.vision_tower": (),
        "model.language_model": (),
    },
    "qwen2_5_vl": {
        "model.visual.blocks.0.attn": ("qkv", "num_heads", "scaling"),
        "model.visual": ("blocks",),
        "model.language_model": (),
    },
    "qwen2_vl": {
        "model.visual.blocks.0.attn": ("qkv", "num_heads", "scaling"),
        "model.visual": ("blocks", "merger"),
        "model.language_model": (),
    },
    "qwen3_vl": {
        "model.visual.blocks.0.attn": ("qkv", "num_heads", "scaling"),
        "model.visual": ("blocks", "merger", "deepstack_merger_list"),
        "model.language_model": (),
    },
}


@pytest.mark.parametrize("arch", sorted(MODULE_ATTRIBUTES))
def test_module_attributes_the_patches_read(arch):
    model = build_tiny_model(arch)
    for path, attributes in MODULE_ATTRIBUTES[arch].items():
        obj = model
        for part in path.split("."):
            assert hasattr(obj, part) or part.isdigit(), (
                f"transformers changed {type(model).__name__}: no {path}"
            )
            obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
        for attribute in attributes:
            assert hasattr(obj, attribute), (
                f"transformers changed {type(obj).__name__}: no `{attribute}` on {path}"
            )
    if arch == "llava_onevision":
        layers = compat.siglip_encoder_layers(model.model.vision_tower)
        for attribute in ("q_proj", "k_proj", "head_dim", "scale"):
            assert hasattr(layers[0].self_attn, attribute), f"SigLIP attention has no `{attribute}`"
    elif arch == "qwen2_5_vl":
        assert isinstance(model.config.vision_config.fullatt_block_indexes, list)
    else:
        assert torch.is_tensor(model.model.visual.blocks[0].attn.qkv.weight)
    if arch == "qwen3_vl":
        assert list(model.config.vision_config.deepstack_visual_indexes) == [0, 1]


def test_a_language_model_without_the_deepstack_kwargs_fails_naming_it(monkeypatch):
    from transformers.models.qwen3_vl import modeling_qwen3_vl

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        raise AssertionError("never called")

    monkeypatch.setattr(modeling_qwen3_vl.Qwen3VLTextModel, "forward", forward)
    contract = next(c for c in compat.CONTRACTS if "TextModel.forward" in c.internal)
    with pytest.raises(compat.ContractError, match="deepstack_visual_embeds"):
        compat.require(contract)
