"""Every transformers internal stop_hf relies on, in one place, each with a contract check.

stop_hf hooks into transformers from outside (forward hooks, an instance-level method wrapper, a classmethod
override), so it depends on a few names and behaviours that are not public API. They are all listed here; the rest
of the package reaches them through this module. `CONTRACTS` holds one check per internal: `tests/test_compat.py`
runs them, so a transformers release that changes one fails with a message naming it (see `check_contracts`).
Tested range: the `transformers` pin in pyproject.toml.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

#: the kwarg (and output field) under which the models pass the KV cache, newest name first: transformers 5.24
#: renamed `past_key_values` to `cache` (generation/utils.py `ALL_CACHE_NAMES`, every modeling_*.py forward).
CACHE_KWARGS = ("cache", "past_key_values")

#: cache classes pre-sized to the unpruned prompt (static cache / torch.compile): pruning cannot shrink them.
PRESIZED_CACHE_CLASSES = ("StaticCache", "HybridCache", "SlidingWindowCache")

#: the generate/forward kwarg carrying pre-computed encoder outputs ({"video": ...}) instead of pixel values.
MM_ENCODER_OUTPUTS_KWARG = "mm_encoder_outputs"

#: the per-model attribute where Qwen-VL models keep the mRoPE offset between decode steps.
ROPE_DELTAS_ATTRIBUTE = "rope_deltas"

#: the base-model method that encodes videos; the patch modules wrap it per instance.
VIDEO_FEATURES_METHOD = "get_video_features"


def transformers_version() -> str:
    import transformers

    return transformers.__version__


class ModelClassUnavailableError(ImportError):
    """The installed transformers does not ship a model class that a registered architecture needs."""


def has_model_class(name: str) -> bool:
    """Whether the installed transformers exports the model class `name` (a release may predate it)."""
    import transformers

    try:
        return isinstance(getattr(transformers, name), type)
    except (
        AttributeError,
        ImportError,
    ):  # transformers' lazy module raises either for an absent/unloadable name
        return False


def model_class(name: str) -> type:
    """A model class exported by transformers (e.g. "Qwen2_5_VLForConditionalGeneration"); a clear
    ModelClassUnavailableError when this release has none of that name (the registry only holds class names, so
    stop_hf imports and serves its other architectures on such a release)."""
    if not has_model_class(name):
        raise ModelClassUnavailableError(
            f"stop_hf: transformers {transformers_version()} has no model class {name}, so the architecture that "
            "loads as it cannot be patched on this release. Install a transformers release that ships it within "
            "stop_hf's supported range (the transformers pin of the stop-hf package)."
        )
    import transformers

    return getattr(transformers, name)


def backbone_class_name(model_type: str) -> str | None:
    """The class `AutoModel` loads for `model_type` (the backbone without LM head), or None."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    return MODEL_MAPPING_NAMES.get(model_type)


def inherited_from_pretrained(owner: type, cls: type, *args: Any, **kwargs: Any) -> Any:
    """Calls the `from_pretrained` that `owner` inherits (PreTrainedModel's classmethod), bound to `cls`."""
    return super(owner, cls).from_pretrained(*args, **kwargs)


def transformers_release() -> tuple[int, int]:
    """(major, minor) of the installed transformers."""
    from packaging.version import Version

    return Version(transformers_version()).release[:2]


#: the first release whose models select the `logits_to_keep` rows through `modeling_utils.slice_logits_to_keep`;
#: before it each forward inlined `hidden[:, slice(-n, None) if isinstance(n, int) else n, :]`
#: (transformers v5.19.0 models/qwen2_5_vl/modeling_qwen2_5_vl.py:1405, v5.21.0 modeling_utils.py:5008)
SHARED_SLICE_LOGITS_RELEASE = (5, 21)


def slice_logits_to_keep(hidden: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
    """The rows `logits_to_keep` selects, exactly as the models' own forward selects them."""
    if transformers_release() < SHARED_SLICE_LOGITS_RELEASE:
        rows = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        return hidden[:, rows]
    from transformers.modeling_utils import slice_logits_to_keep as slice_rows

    return slice_rows(hidden, logits_to_keep)


def is_presized_cache(past_key_values: Any) -> bool:
    """True for caches sized to the unpruned prompt (static / compileable ones)."""
    compileable = getattr(past_key_values, "is_compileable", False)
    if callable(compileable):
        compileable = compileable()
    return bool(compileable) or type(past_key_values).__name__ in PRESIZED_CACHE_CLASSES


def cache_of(kwargs: dict[str, Any]) -> Any:
    """The KV cache a forward call received (whichever name the caller or the model code used), or None."""
    return next((kwargs[name] for name in CACHE_KWARGS if kwargs.get(name) is not None), None)


def output_cache(output: Any) -> Any:
    """The KV cache a model output carries (`output.cache`, or `output.past_key_values` before 5.24), or None."""
    # the declared field only: 5.24's `past_key_values` property would log a deprecation warning
    declared = {f.name for f in dataclasses.fields(output)} if dataclasses.is_dataclass(output) else set()
    name = next((name for name in CACHE_KWARGS if name in declared), None)
    return None if name is None else getattr(output, name)


def cache_input(model: Any, cache: Any) -> dict[str, Any]:
    """`{name: cache}` for calling `model` with a KV cache, under the name its forward declares (no deprecation
    warning on 5.24+, where `past_key_values` became `cache`)."""
    parameters = inspect.signature(type(model).forward).parameters
    return {next((name for name in CACHE_KWARGS if name in parameters), CACHE_KWARGS[-1]): cache}


def encoder_outputs_video(kwargs: dict[str, Any]) -> Any:
    """The pre-computed video encoder output passed through `mm_encoder_outputs`, or None."""
    return (kwargs.get(MM_ENCODER_OUTPUTS_KWARG) or {}).get("video")


def pooled_output(output: Any) -> Any:
    """The per-video LLM-ready features of a `get_video_features` output (its `pooler_output`)."""
    return output.pooler_output if hasattr(output, "pooler_output") else output[1]


def last_hidden_state(output: Any) -> Any:
    return output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]


def vision_window_index(
    grid_thw: torch.Tensor, merge: int, window_size: int, patch_size: int
) -> torch.Tensor:
    """Qwen2.5-VL's window permutation of merge units (window order -> raster order is its inverse)."""
    from transformers.vision_utils import get_vision_window_index

    window_index, _ = get_vision_window_index(
        grid_thw, spatial_merge_size=merge, window_size=window_size, patch_size=patch_size
    )
    return window_index


def rotary_vision(model_type: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """`apply_rotary_pos_emb_vision(q, k, cos, sin)` of a Qwen-VL vision tower's modeling module."""
    import importlib

    module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    return module.apply_rotary_pos_emb_vision


def siglip_encoder_layers(tower: Any) -> Any:
    """The encoder layers of a SigLIP tower (transformers 5.x dropped the `vision_model` wrapper on some paths)."""
    return getattr(tower, "vision_model", tower).encoder.layers


def grow_generate_mask(model: Any, attention_mask: torch.Tensor) -> torch.Tensor:
    """The attention mask `generate` passes to the next decode step after one new token."""
    from transformers.utils.generic import ModelOutput

    kwargs = model._update_model_kwargs_for_generation(ModelOutput(), {"attention_mask": attention_mask})
    return kwargs["attention_mask"]


# ---------------------------------------------------------------------------------------------------- contracts
@dataclass(frozen=True)
class Contract:
    """One transformers internal and the check that it still behaves as stop_hf assumes."""

    internal: str
    assumption: str
    check: Callable[[], None]


class ContractError(AssertionError):
    pass


def _fail(contract: Contract, detail: str) -> ContractError:
    return ContractError(
        f"transformers {transformers_version()} changed the internal `{contract.internal}`: stop_hf assumes "
        f"{contract.assumption}, but {detail}. Update stop_hf/compat.py (and the transformers pin in pyproject.toml)."
    )


def _from_pretrained_is_classmethod() -> None:
    from transformers import PreTrainedModel

    if not isinstance(PreTrainedModel.__dict__.get("from_pretrained"), classmethod):
        raise ValueError(
            f"PreTrainedModel.from_pretrained is {PreTrainedModel.__dict__.get('from_pretrained')!r}"
        )


def _registered() -> list[Any]:
    """The registered architectures' adapters (the contracts below check what each of them relies on)."""
    from stop_hf.patches import ARCHITECTURES

    return [cls() for cls in ARCHITECTURES.values()]


def _backbone_of(adapter: Any) -> str:
    return adapter.model_class.removesuffix("ForConditionalGeneration") + "Model"


def _backbones_mapped() -> None:
    for adapter in _registered():
        for model_type in adapter.model_types:
            found = backbone_class_name(model_type)
            if found != _backbone_of(adapter):
                raise ValueError(
                    f"MODEL_MAPPING_NAMES[{model_type!r}] is {found!r}, not {_backbone_of(adapter)!r}"
                )


#: the `logits_to_keep` values the slicing contract probes: all rows, the last n, explicit positions
_PROBE_LOGITS_TO_KEEP = (0, 2, (1, 3))


def _slice_logits_to_keep() -> None:
    rows = torch.arange(10.0).reshape(1, 5, 2)
    if not torch.equal(slice_logits_to_keep(rows, 0), rows) or not torch.equal(
        slice_logits_to_keep(rows, 2), rows[:, -2:]
    ):
        raise ValueError("slice_logits_to_keep(h, 0) is not h or slice_logits_to_keep(h, 2) is not h[:, -2:]")
    # and the models' own forward selects the same rows (it calls the shared helper from 5.21, inlines it before)
    for adapter in _registered():
        torch.manual_seed(0)
        model = model_class(adapter.model_class)(adapter.tiny_config()).eval()
        ids = torch.tensor(_PROBE_IDS)
        with torch.no_grad():
            full = model(input_ids=ids, use_cache=False).logits
            for keep in _PROBE_LOGITS_TO_KEEP:
                keep = torch.tensor(keep) if isinstance(keep, tuple) else keep
                kept = model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits
                expected = slice_logits_to_keep(full, keep)
                if kept.shape != expected.shape or not torch.allclose(kept, expected, atol=1e-5, rtol=1e-4):
                    raise ValueError(
                        f"{adapter.name}: forward(logits_to_keep={keep!r}) returns logits of shape "
                        f"{tuple(kept.shape)} that are not slice_logits_to_keep(full logits) "
                        f"{tuple(expected.shape)}"
                    )


def _cache_names() -> None:
    import transformers

    missing = [name for name in PRESIZED_CACHE_CLASSES if not hasattr(transformers, name)]
    dynamic = transformers.DynamicCache()
    if missing and len(missing) == len(PRESIZED_CACHE_CLASSES):
        raise ValueError(f"none of {PRESIZED_CACHE_CLASSES} exists any more")
    if is_presized_cache(dynamic):
        raise ValueError("DynamicCache reports itself compileable / pre-sized")


def _mask_growth() -> None:
    from transformers import GenerationMixin

    class Probe(GenerationMixin):
        pass

    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    grown = grow_generate_mask(Probe(), mask)
    expected = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], dim=-1)
    if not torch.equal(grown, expected):
        raise ValueError(
            f"one step grows mask {mask.tolist()} to {grown.tolist()}, not by one column of ones"
        )


#: the prompt of the decode-inputs probe: two rows, the first left-padded (token ids are plain words of the tiny
#: tokenizer, none of them a special or vision token)
_PROBE_IDS = ((0, 0, 101, 102, 103), (104, 105, 106, 107, 108))
_PROBE_MASK = ((0, 0, 1, 1, 1), (1, 1, 1, 1, 1))
_PROBE_NEW_TOKENS = 3


def lm_calls_of_generate(adapter: Any, new_tokens: int = _PROBE_NEW_TOKENS) -> list[dict[str, Any]]:
    """What `generate` hands the inner language model of `adapter`'s tiny model at each forward, on the probe
    prompt (text only: a pruned prefill changes what the LM receives, not what generate passes).

    Each call: `kwargs` (the LM's kwargs as received), `past` (the cache length at entry, or None without a cache),
    `output_cache` (the cache the LM's output carries)."""
    torch.manual_seed(0)
    model = model_class(adapter.model_class)(adapter.tiny_config()).eval()
    language_model = adapter.language_model(model)
    calls: list[dict[str, Any]] = []

    def before(module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
        cache = cache_of(kwargs)
        calls.append({"kwargs": dict(kwargs), "past": None if cache is None else cache.get_seq_length()})

    def after(module: Any, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        calls[-1]["output_cache"] = output_cache(output)

    handles = [
        language_model.register_forward_pre_hook(before, with_kwargs=True),
        language_model.register_forward_hook(after, with_kwargs=True),
    ]
    try:
        with torch.no_grad():
            model.generate(
                input_ids=torch.tensor(_PROBE_IDS),
                attention_mask=torch.tensor(_PROBE_MASK),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
            )
    finally:
        for handle in handles:
            handle.remove()
    return calls


def check_decode_step(call: dict[str, Any], step: int, name: str = "") -> None:
    """What `stop_hf.hooks.translate_decode` relies on at decode step `step` (1 = the first token after the
    prefill) of the probe prompt; raises ValueError naming what differs."""
    where = f"{name} decode step {step}: the language model received"
    kwargs = call["kwargs"]
    prompt = torch.tensor(_PROBE_MASK)
    batch, length = prompt.shape
    cache = cache_of(kwargs)
    if cache is None:
        raise ValueError(f"{where} no KV cache under any of {CACHE_KWARGS}; its kwargs are {sorted(kwargs)}")
    if call["past"] != length + step - 1:
        raise ValueError(f"{where} a cache of length {call['past']}, not {length + step - 1}")
    if call.get("output_cache") is not cache:
        raise ValueError(f"{where} a cache that its output does not return under any of {CACHE_KWARGS}")
    embeds = kwargs.get("inputs_embeds")
    if embeds is None or tuple(embeds.shape[:2]) != (batch, 1):
        raise ValueError(
            f"{where} inputs_embeds of shape {getattr(embeds, 'shape', None)}, not ({batch}, 1, D)"
        )
    # translate_decode swaps the first `original_length` columns for the pruned prefill mask: generate must keep
    # growing the ORIGINAL-length mask by one column of ones per step
    mask = kwargs.get("attention_mask")
    grown = torch.cat([prompt, torch.ones(batch, step, dtype=prompt.dtype)], dim=-1)
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or not torch.equal(mask.long().cpu(), grown):
        shown = mask.tolist() if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(
            f"{where} attention_mask {shown}, not the prompt mask grown by {step} columns of ones"
        )
    # decode positions come in original coordinates (one per real token so far), which translate_decode shifts
    # by the pruned prefill's offset (1-D) or keeps (mRoPE, original mode)
    positions = kwargs.get("position_ids")
    expected = grown.sum(-1, keepdim=True) - 1  # (B, 1)
    if not isinstance(positions, torch.Tensor) or positions.dim() not in (2, 3):
        raise ValueError(f"{where} position_ids {positions!r}, not a (B, 1) or (R, B, 1) tensor")
    rows = positions if positions.dim() == 3 else positions[None]
    if tuple(rows.shape[1:]) != (batch, 1) or not torch.equal(rows.cpu(), expected[None].expand_as(rows)):
        raise ValueError(
            f"{where} position_ids {positions.tolist()}, not {expected.tolist()} (one position per real token "
            "so far, in prompt coordinates) in every row"
        )


def _decode_inputs() -> None:
    for adapter in _registered():
        calls = lm_calls_of_generate(adapter)
        if len(calls) != _PROBE_NEW_TOKENS:
            raise ValueError(
                f"{adapter.name}: generate ran the language model {len(calls)} times for {_PROBE_NEW_TOKENS} "
                "tokens, not once per token"
            )
        if calls[0]["past"] not in (None, 0):
            raise ValueError(f"{adapter.name}: the prefill received a cache of length {calls[0]['past']}")
        for step, call in enumerate(calls[1:], start=1):
            check_decode_step(call, step, adapter.name)


def _mm_encoder_outputs() -> None:
    from transformers import GenerationMixin

    source = inspect.getsource(GenerationMixin)
    if MM_ENCODER_OUTPUTS_KWARG not in source:
        raise ValueError(f"generate no longer mentions `{MM_ENCODER_OUTPUTS_KWARG}`")


def _video_features_method() -> None:
    # each adapter names its method and pixel kwarg (default get_video_features / pixel_values_videos; InternVL
    # encodes frames as images)
    for adapter in _registered():
        name, method_name, pixels = (
            _backbone_of(adapter),
            adapter.video_features_method,
            adapter.video_pixels_arg,
        )
        method = getattr(model_class(name), method_name, None)
        if method is None:
            raise ValueError(f"{name} has no {method_name}")
        if pixels not in inspect.signature(method).parameters:
            raise ValueError(f"{name}.{method_name} does not take {pixels}")


def _rope_deltas() -> None:
    for name in (_backbone_of(a) for a in _registered() if not a.positions_1d):  # the mRoPE models
        source = inspect.getsource(model_class(name))
        if f"self.{ROPE_DELTAS_ATTRIBUTE}" not in source:
            raise ValueError(f"{name} no longer keeps self.{ROPE_DELTAS_ATTRIBUTE}")


def _window_index() -> None:
    grid = torch.tensor([[1, 4, 4]])
    index = vision_window_index(grid, merge=2, window_size=112, patch_size=14)
    if sorted(index.tolist()) != list(range(4)):
        raise ValueError(
            f"window index of a 1x4x4 grid is {index.tolist()}, not a permutation of 4 merge units"
        )


def _rotary_vision() -> None:
    for model_type in (a.model_types[0] for a in _registered() if not a.positions_1d):  # Qwen-VL towers
        rotate = rotary_vision(model_type)
        q = torch.randn(3, 2, 4)
        cos, sin = torch.ones(3, 4), torch.zeros(3, 4)
        q_out, k_out = rotate(q, q.clone(), cos, sin)
        if not torch.allclose(q_out, q) or not torch.allclose(k_out, q):
            raise ValueError(f"{model_type} apply_rotary_pos_emb_vision(q, k, cos=1, sin=0) is not (q, k)")


def _pruned_lm_kwargs() -> None:
    import importlib

    for adapter in _registered():
        for model_type in adapter.model_types if adapter.pruned_lm_kwargs else ():
            module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
            text_models = [
                v for k, v in vars(module).items() if k.endswith("TextModel") and isinstance(v, type)
            ]
            if not text_models:
                raise ValueError(f"modeling_{model_type} has no *TextModel")
            for cls in text_models:
                missing = set(adapter.pruned_lm_kwargs) - set(inspect.signature(cls.forward).parameters)
                if missing:
                    raise ValueError(f"{cls.__name__}.forward no longer takes {sorted(missing)}")


CONTRACTS: tuple[Contract, ...] = (
    Contract(
        "PreTrainedModel.from_pretrained",
        "a classmethod that a subclass can override and reach through super()",
        _from_pretrained_is_classmethod,
    ),
    Contract(
        "models.auto.modeling_auto.MODEL_MAPPING_NAMES",
        "it maps each supported model_type to its backbone class (AutoModel)",
        _backbones_mapped,
    ),
    Contract(
        "modeling_utils.slice_logits_to_keep",
        "0 keeps every row, an int n keeps the last n, a tensor keeps those positions, as each model's forward "
        f"selects them (inlined in the forward before {'.'.join(map(str, SHARED_SLICE_LOGITS_RELEASE))})",
        _slice_logits_to_keep,
    ),
    Contract(
        "cache classes " + "/".join(PRESIZED_CACHE_CLASSES),
        "pre-sized caches are these classes or report is_compileable, and DynamicCache does not",
        _cache_names,
    ),
    Contract(
        "GenerationMixin._update_model_kwargs_for_generation",
        "each decode step appends one column of ones to the original-length attention mask",
        _mask_growth,
    ),
    Contract(
        "generate's decode-step inputs to the language model",
        "each decode step hands the inner language model its KV cache under a name in CACHE_KWARGS (and gets it "
        "back in the output under that name), a (B, 1) inputs_embeds, the original-length 2-D mask grown by one "
        "column of ones per step, and position ids (B, 1) or (R, B, 1) counting the real tokens so far (prompt "
        "coordinates)",
        _decode_inputs,
    ),
    Contract(
        "generate's mm_encoder_outputs",
        f"pre-computed encoder outputs travel as `{MM_ENCODER_OUTPUTS_KWARG}`",
        _mm_encoder_outputs,
    ),
    Contract(
        f"*Model.{VIDEO_FEATURES_METHOD}",
        "the base model encodes videos in the adapter's video_features_method, taking its video_pixels_arg",
        _video_features_method,
    ),
    Contract(
        f"Qwen-VL {ROPE_DELTAS_ATTRIBUTE}",
        f"Qwen-VL base models keep the mRoPE offset in self.{ROPE_DELTAS_ATTRIBUTE}",
        _rope_deltas,
    ),
    Contract(
        "vision_utils.get_vision_window_index",
        "it returns the window permutation of merge units first",
        _window_index,
    ),
    Contract(
        "<model>TextModel.forward per-token multimodal kwargs",
        "the language model takes the per-token kwargs an adapter slices (Qwen3-VL: visual_pos_masks, "
        "deepstack_visual_embeds)",
        _pruned_lm_kwargs,
    ),
    Contract(
        "modeling_<qwen-vl>.apply_rotary_pos_emb_vision",
        "apply_rotary_pos_emb_vision(q, k, cos, sin) returns the rotated (q, k)",
        _rotary_vision,
    ),
)


def check_contracts() -> list[str]:
    """Runs every contract; returns the failure messages (empty when this transformers matches)."""
    failures = []
    for contract in CONTRACTS:
        try:
            contract.check()
        except Exception as exc:  # any change (missing name, new signature, other values) is a failure
            failures.append(str(_fail(contract, f"{type(exc).__name__}: {exc}")))
    return failures


def require(contract: Contract) -> None:
    """Raises ContractError naming the internal when `contract` does not hold."""
    try:
        contract.check()
    except Exception as exc:
        raise _fail(contract, f"{type(exc).__name__}: {exc}") from exc
