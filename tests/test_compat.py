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


SLICE_CONTRACT = "modeling_utils.slice_logits_to_keep"
SHARED_SLICE = compat.transformers_release() >= compat.SHARED_SLICE_LOGITS_RELEASE


@pytest.mark.skipif(
    not SHARED_SLICE,
    reason=f"transformers {compat.transformers_version()} has no shared slice_logits_to_keep to break (each forward "
    "inlines the slice); test_a_selection_unlike_the_models_fails_the_slice_contract covers it",
)
def test_a_broken_internal_fails_naming_it(monkeypatch):
    import transformers.modeling_utils

    monkeypatch.setattr(transformers.modeling_utils, "slice_logits_to_keep", lambda h, n: h)
    contract = next(c for c in compat.CONTRACTS if c.internal == SLICE_CONTRACT)
    with pytest.raises(
        compat.ContractError, match=r"changed the internal `modeling_utils\.slice_logits_to_keep`"
    ):
        compat.require(contract)
    assert any("slice_logits_to_keep" in failure for failure in compat.check_contracts())


def test_a_selection_unlike_the_models_fails_the_slice_contract(monkeypatch):
    """On every release: compat's row selection is checked against what the models' forward returns, so models
    that select other rows than compat (here: compat taking tensor positions in reverse) fail naming the internal."""
    selected = compat.slice_logits_to_keep

    def reversed_positions(hidden, keep):
        return selected(hidden, keep.flip(0) if torch.is_tensor(keep) else keep)

    monkeypatch.setattr(compat, "slice_logits_to_keep", reversed_positions)
    contract = next(c for c in compat.CONTRACTS if c.internal == SLICE_CONTRACT)
    with pytest.raises(
        compat.ContractError, match=r"slice_logits_to_keep.*logits_to_keep=tensor\(\[1, 3\]\)"
    ):
        compat.require(contract)


@pytest.mark.parametrize("release", [(5, 19), (5, 20), compat.SHARED_SLICE_LOGITS_RELEASE, (5, 24)])
@pytest.mark.parametrize("keep", [0, 1, 3, (0, 2)])
def test_the_slice_is_the_same_rows_on_either_side_of_the_gate(monkeypatch, release, keep):
    """Before 5.21 compat inlines the models' own slice; from 5.21 it calls the shared helper: the same rows."""
    hidden = torch.arange(24.0).reshape(2, 4, 3)
    keep = torch.tensor(keep) if isinstance(keep, tuple) else keep
    expected = (
        hidden
        if isinstance(keep, int) and keep == 0
        else hidden[:, -keep:]
        if isinstance(keep, int)
        else hidden[:, keep]
    )
    if release >= compat.SHARED_SLICE_LOGITS_RELEASE and not SHARED_SLICE:
        pytest.skip(f"transformers {compat.transformers_version()} has no shared slice_logits_to_keep")
    monkeypatch.setattr(compat, "transformers_release", lambda: release)
    assert torch.equal(compat.slice_logits_to_keep(hidden, keep), expected)


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


# ------------------------------------------------------------------------------------------------ decode inputs
DECODE_CONTRACT = "generate's decode-step inputs to the language model"


@pytest.fixture(scope="module")
def decode_calls():
    """The language-model calls of a 3-token generate on the tiny Qwen2.5-VL (prefill + 2 decode steps)."""
    from stop_hf.patches import architecture

    return compat.lm_calls_of_generate(architecture("qwen2_5_vl"))


def test_decode_contract_is_registered():
    assert any(c.internal == DECODE_CONTRACT for c in compat.CONTRACTS)


def test_decode_steps_hand_the_language_model_what_translate_decode_expects(decode_calls):
    assert len(decode_calls) == 3 and decode_calls[0]["past"] == 0
    for step, call in enumerate(decode_calls[1:], start=1):
        compat.check_decode_step(call, step)


def test_a_renamed_cache_kwarg_fails_the_decode_contract(monkeypatch, decode_calls):
    """transformers 5.24 renamed `past_key_values` to `cache`: with only one of the two names known, exactly one
    release passes, and the other fails naming the internal and the kwargs it got."""
    outcomes = {}
    for name in compat.CACHE_KWARGS:
        monkeypatch.setattr(compat, "CACHE_KWARGS", (name,))
        try:
            compat.check_decode_step(decode_calls[1], 1)
            outcomes[name] = None
        except ValueError as exc:
            outcomes[name] = str(exc)
    monkeypatch.undo()
    assert sorted(message is None for message in outcomes.values()) == [False, True], outcomes
    used = next(name for name, message in outcomes.items() if message is None)
    (failure,) = (message for message in outcomes.values() if message is not None)
    assert "no KV cache" in failure and f"'{used}'" in failure  # it names the kwarg the release does use

    contract = next(c for c in compat.CONTRACTS if c.internal == DECODE_CONTRACT)
    stale = next(name for name in compat.CACHE_KWARGS if name != used)
    monkeypatch.setattr(compat, "CACHE_KWARGS", (stale,))
    with pytest.raises(compat.ContractError, match=r"changed the internal `generate's decode-step inputs"):
        compat.require(contract)


def _altered(call, **kwargs):
    return {**call, "kwargs": {**call["kwargs"], **kwargs}}


def test_a_mask_in_cache_coordinates_fails_the_decode_contract(decode_calls):
    call = decode_calls[2]
    mask = call["kwargs"]["attention_mask"]
    with pytest.raises(ValueError, match="attention_mask"):
        compat.check_decode_step(_altered(call, attention_mask=mask[:, 1:]), 2)  # one column short
    with pytest.raises(ValueError, match="attention_mask"):
        compat.check_decode_step(_altered(call, attention_mask=None), 2)


def test_positions_not_in_prompt_coordinates_fail_the_decode_contract(decode_calls):
    call = decode_calls[1]
    positions = call["kwargs"]["position_ids"]
    with pytest.raises(ValueError, match="position_ids"):
        compat.check_decode_step(_altered(call, position_ids=positions + 1), 1)
    with pytest.raises(ValueError, match="position_ids"):
        compat.check_decode_step(_altered(call, position_ids=None), 1)


def test_cache_input_uses_the_name_the_forward_declares():
    import warnings

    model = build_tiny_model("llava_onevision")
    ids = torch.tensor([[101, 102, 103]])
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        cache = compat.output_cache(out)
        assert cache is not None and cache.get_seq_length() == 3
        (name,) = compat.cache_input(model, cache)
        assert name in compat.CACHE_KWARGS
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no deprecation warning for the cache's name
            step = model(input_ids=ids[:, -1:], **compat.cache_input(model, cache), use_cache=True)
    assert compat.output_cache(step) is cache and cache.get_seq_length() == 4


def test_the_pin_is_the_tested_range():
    """pyproject.toml's transformers pin admits exactly the minor releases .ci/run tests (TESTED_TRANSFORMERS), and
    the transformers running this suite is one of them."""
    import re
    from pathlib import Path

    import tomllib
    import transformers
    from packaging.requirements import Requirement
    from packaging.version import Version

    root = Path(__file__).resolve().parents[1]
    dependencies = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [Requirement(d) for d in dependencies if Requirement(d).name == "transformers"]
    listed = (
        re.search(r"TESTED_TRANSFORMERS=\(([^)]*)\)", (root / ".ci" / "run").read_text()).group(1).split()
    )
    tested = {Version(v).release[:2] for v in listed}
    assert all(Version(v) in pin.specifier for v in listed), (pin, listed)
    lowest, highest = min(tested), max(tested)
    admitted = {
        (5, minor)
        for minor in range(lowest[1] - 3, highest[1] + 4)
        if Version(f"5.{minor}.0") in pin.specifier
    }
    assert admitted == tested, (
        f"the pin {pin.specifier} admits {sorted(admitted)}; .ci/run tests {sorted(tested)}"
    )
    assert Version(transformers.__version__).release[:2] in tested


# ------------------------------------------------------------------------------------------ release differences
def test_video_placeholders_without_the_video_are_refused():
    """transformers before 5.23 chunks a prefill by dropping the pixels from every chunk (the unpatched model then
    ignores the video): a patched model refuses a multi-token forward with placeholders and no video, but not a
    decode step that generated the placeholder id, nor a prompt without placeholders, nor the identity config."""
    from stop_hf.patches import architecture

    import stop_hf
    from stop_hf import StopUnsupportedError

    model = build_tiny_model("qwen2_5_vl")
    video = architecture("qwen2_5_vl").video_token_id(model)
    text = torch.tensor([[101, 102, 103, 104]])
    with_placeholders = torch.tensor([[101, video, video, 104]])
    stop_hf.patch(model, "uniform_r25")
    with torch.no_grad():
        with pytest.raises(
            StopUnsupportedError, match=r"2 video placeholder tokens but no video.*prefill_chunk_size"
        ):
            model(input_ids=with_placeholders)
        assert model(input_ids=text).logits.shape[:2] == (1, 4)
        assert model(input_ids=torch.tensor([[video]])).logits.shape[:2] == (1, 1)
    stop_hf.unpatch(model)
    stop_hf.patch(model, {"method": "none"})
    with torch.no_grad():
        assert model(input_ids=with_placeholders).logits.shape[:2] == (1, 4)


def test_an_absent_model_class_is_refused_by_name():
    assert compat.has_model_class("Qwen2_5_VLForConditionalGeneration")
    assert not compat.has_model_class("NoSuchVLForConditionalGeneration")
    with pytest.raises(
        compat.ModelClassUnavailableError, match=r"transformers \S+ has no model class NoSuchVL"
    ):
        compat.model_class("NoSuchVLForConditionalGeneration")


def test_a_registered_architecture_missing_from_this_release_is_tolerated(monkeypatch):
    """An architecture whose class this transformers lacks (a newer model on an older release): the other
    architectures keep their from_pretrained kwarg, and loading that one is refused naming the class."""
    from types import SimpleNamespace

    from stop_hf.patches import ARCHITECTURES

    from stop_hf import loading

    absent = type(
        "AbsentAdapter",
        (ARCHITECTURES["qwen2_vl"],),
        {
            "name": "absent_vl",
            "model_class": "AbsentVLForConditionalGeneration",
            "model_types": ("absent_vl",),
        },
    )
    monkeypatch.setitem(ARCHITECTURES, "absent_vl", absent)
    loading.uninstall_from_pretrained_kwarg()
    try:
        loading.install_from_pretrained_kwarg()
        installed = {cls.__name__ for cls in loading._KWARG_CLASSES}
        assert (
            "Qwen2_5_VLForConditionalGeneration" in installed
            and "AbsentVLForConditionalGeneration" not in installed
        )
        with pytest.raises(compat.ModelClassUnavailableError, match="AbsentVLForConditionalGeneration"):
            loading._model_class_for(SimpleNamespace(model_type="absent_vl"))
    finally:
        loading.uninstall_from_pretrained_kwarg()
        monkeypatch.undo()
        loading.install_from_pretrained_kwarg()
