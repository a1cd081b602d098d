"""Loading and patching: every loading path prunes as asked (or loads unpruned when asked), configs are validated
before any weight is read, and a failed `patch` leaves the model exactly as it was."""

from __future__ import annotations

import copy
import json
import time

import pytest
import torch
from conftest import logits_of

import stop_hf
from stop_hf import StopConfig, StopConfigError
from stop_hf.testing import build_processor, synthetic_frames, tiny_checkpoint
from stop_hf.testing.reference import identical

ARCHS = ("llava_onevision", "qwen2_5_vl")
LLAVA_PROMPT = "<|im_start|>user\n<video>what happens in the video ?<|im_end|>\n<|im_start|>assistant\n"
QWEN_PROMPT = (
    "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>what happens in the video ?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
STORED, ASKED = "uniform_r10", "uniform_r25"


def model_class(arch: str):
    import transformers
    from stop_hf.patches import SUPPORTED_MODEL_TYPES

    return getattr(transformers, SUPPORTED_MODEL_TYPES[arch])


@pytest.fixture(scope="module", params=ARCHS)
def arch(request):
    return request.param


@pytest.fixture(scope="module")
def reference(arch):
    """The never-patched tiny model of `arch` (the oracle)."""
    return model_class(arch).from_pretrained(tiny_checkpoint(arch)).eval()


@pytest.fixture(scope="module")
def inputs(arch):
    processor = build_processor(arch)
    frames = synthetic_frames(4, 112, 168, sink_patch=(10, 10, 30))
    if arch == "qwen2_5_vl":
        from stop_hf.patches import architecture

        from stop_hf.runner import qwen_video_element

        element = qwen_video_element(frames, 4)
        return dict(
            architecture(arch).processor_inputs(processor, [QWEN_PROMPT], [element], return_tensors="pt")
        )
    clip = torch.from_numpy(frames).permute(0, 3, 1, 2)
    return dict(processor(text=[LLAVA_PROMPT], videos=[clip], return_tensors="pt"))


@pytest.fixture(scope="module")
def stored_checkpoint(arch, tmp_path_factory):
    """A checkpoint saved from a patched model: its config.json stores STORED."""
    folder = tmp_path_factory.mktemp(f"stored_{arch}")
    model = stop_hf.from_pretrained(tiny_checkpoint(arch), stop_config=STORED)
    model.save_pretrained(folder)
    build_processor(arch).save_pretrained(folder)
    assert json.loads((folder / "config.json").read_text())["stop_config"]["retention"] == 0.1
    return folder


# ---------------------------------------------------------------------------------------------------- load matrix
def _load(path_name: str, arch: str, checkpoint, kwargs: dict):
    from transformers import AutoModelForImageTextToText, AutoModelForMultimodalLM, pipeline

    if path_name == "model class":
        return model_class(arch).from_pretrained(checkpoint, **kwargs)
    if path_name == "AutoModelForImageTextToText":
        return AutoModelForImageTextToText.from_pretrained(checkpoint, **kwargs)
    if path_name == "AutoModelForMultimodalLM":
        return AutoModelForMultimodalLM.from_pretrained(checkpoint, **kwargs)
    if path_name == "stop_hf.from_pretrained":
        return stop_hf.from_pretrained(checkpoint, **kwargs)
    assert path_name == "pipeline"
    return pipeline("image-text-to-text", model=str(checkpoint), model_kwargs=kwargs).model


PATHS = (
    "model class",
    "AutoModelForImageTextToText",
    "AutoModelForMultimodalLM",
    "stop_hf.from_pretrained",
    "pipeline",
)
KWARGS = {
    "kwarg": {"stop_config": ASKED},
    "no kwarg": {},
    "None": {"stop_config": None},
    "'none'": {"stop_config": "none"},
}


@pytest.mark.parametrize("path_name", PATHS)
@pytest.mark.parametrize("stored", [True, False], ids=["stored config", "no stored config"])
@pytest.mark.parametrize("kwarg", list(KWARGS))
def test_load_matrix(arch, stored_checkpoint, path_name, stored, kwarg):
    """Documented rule: the kwarg wins; without it a stored config is applied; None / "none" load unpruned. The
    model's config always says what the model does (so `save_pretrained` writes the truth)."""
    if path_name == "pipeline" and kwarg in ("None", "'none'") and not stored:
        pytest.skip("same as no kwarg without a stored config")
    checkpoint = stored_checkpoint if stored else tiny_checkpoint(arch)
    model = _load(path_name, arch, checkpoint, dict(KWARGS[kwarg]))
    expected = {"kwarg": ASKED, "no kwarg": STORED if stored else None}.get(kwarg)
    if expected is None:
        assert not stop_hf.is_patched(model)
        assert "stop_config" not in model.config.__dict__, "an unpruned model must not claim a stop_config"
    else:
        assert stop_hf.is_patched(model)
        assert stop_hf.get_stop_config(model) == StopConfig.from_any(expected)
        assert model.config.stop_config == StopConfig.from_any(expected).to_dict()


def test_stored_config_prunes_like_the_saved_model(arch, stored_checkpoint, inputs):
    from transformers import AutoModelForImageTextToText

    saved = stop_hf.patch(model_class(arch).from_pretrained(tiny_checkpoint(arch)).eval(), STORED)
    loaded = AutoModelForImageTextToText.from_pretrained(stored_checkpoint).eval()
    assert identical(logits_of(loaded, inputs), logits_of(saved, inputs))


def test_unpatch_and_resave_keep_config_and_behaviour_consistent(
    arch, stored_checkpoint, reference, inputs, tmp_path
):
    model = model_class(arch).from_pretrained(stored_checkpoint).eval()
    stop_hf.unpatch(model)
    assert "stop_config" not in model.config.__dict__
    model.save_pretrained(tmp_path)
    assert "stop_config" not in json.loads((tmp_path / "config.json").read_text())
    reloaded = model_class(arch).from_pretrained(tmp_path).eval()
    assert not stop_hf.is_patched(reloaded)
    assert torch.equal(logits_of(reloaded, inputs), logits_of(reference, inputs))


# ---------------------------------------------------------------------------------------------------- validate first
@pytest.fixture(scope="module")
def corrupt_checkpoint(arch, stored_checkpoint, tmp_path_factory):
    """The stored checkpoint with weights that cannot be read."""
    import shutil

    folder = tmp_path_factory.mktemp(f"corrupt_{arch}")
    for file in stored_checkpoint.iterdir():
        if file.is_file():
            shutil.copy(file, folder / file.name)
    for weights in folder.glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    return folder


@pytest.mark.parametrize("path_name", PATHS)
def test_bad_config_fails_before_any_weight_is_read(arch, corrupt_checkpoint, path_name):
    bad = {"method": "holitom", "retention": 0.1, "params": {"tau": -0.5}}
    # pipeline() re-raises each candidate class's error inside one ValueError; the config error is in it
    error = ValueError if path_name == "pipeline" else StopConfigError
    with pytest.raises(error, match=r"params\.tau=-0\.5 must be a finite number in \[0, 1\]"):
        _load(path_name, arch, corrupt_checkpoint, {"stop_config": bad})
    # the weights are really unreadable: without the bad config, loading fails on them
    with pytest.raises(Exception) as err:  # noqa: PT011 - whatever safetensors / HF raise
        _load("model class", arch, corrupt_checkpoint, {"stop_config": None})
    assert not isinstance(err.value, StopConfigError)


def test_bad_stored_config_fails_before_weights_and_names_its_origin(arch, corrupt_checkpoint, tmp_path):
    config = json.loads((corrupt_checkpoint / "config.json").read_text())
    config["stop_config"]["gamma"] = float("nan")
    (corrupt_checkpoint / "config.json").write_text(json.dumps(config))
    started = time.perf_counter()
    with pytest.raises(StopConfigError) as err:
        model_class(arch).from_pretrained(corrupt_checkpoint)
    assert time.perf_counter() - started < 5  # generous; measured in the report, not asserted tightly
    message = str(err.value)
    assert "gamma=nan" in message and "config.json" in message and "stop_config=None" in message


# ---------------------------------------------------------------------------------------------------- patch()
def _hook_count(model) -> int:
    return sum(
        len(registry)
        for module in model.modules()
        for name, registry in vars(module).items()
        if "hooks" in name and isinstance(registry, dict)
    )


def _instance_wrappers(model) -> list[str]:
    return [name for module in model.modules() for name in vars(module) if name == "get_video_features"]


BAD_LAYER = {"method": "holitom", "retention": 0.2, "sink": True, "saliency_layer": 99}


def test_failed_patch_leaves_the_model_as_it_was(arch, reference, inputs):
    model = copy.deepcopy(reference)
    expected = logits_of(reference, inputs)
    hooks = _hook_count(model)
    with pytest.raises(StopConfigError, match=r"saliency_layer=99 is out of range"):
        stop_hf.patch(model, BAD_LAYER)
    assert not stop_hf.is_patched(model) and "stop_config" not in model.config.__dict__
    assert _hook_count(model) == hooks and not _instance_wrappers(model)
    assert torch.equal(logits_of(model, inputs), expected)
    stop_hf.patch(model, {**BAD_LAYER, "saliency_layer": -1})
    pruned = logits_of(model, inputs)
    assert stop_hf.last_prune_report(model) and pruned.shape[0] == expected.shape[0]
    stop_hf.unpatch(model)
    assert torch.equal(logits_of(model, inputs), expected)


def test_failure_while_installing_is_rolled_back(arch, reference, inputs, monkeypatch):
    """Even a failure inside the adapter, after some hooks are installed, leaves nothing behind; a model that was
    patched keeps its previous config and behaviour."""
    import stop_hf.loading as loading

    monkeypatch.setattr(loading, "_check_against_model", lambda *args: None)  # let the adapter fail midway
    model = copy.deepcopy(reference)
    expected = logits_of(reference, inputs)
    hooks = _hook_count(model)
    with pytest.raises(ValueError, match="saliency_layer=99"):
        stop_hf.patch(model, BAD_LAYER)
    assert not stop_hf.is_patched(model) and "stop_config" not in model.config.__dict__
    assert _hook_count(model) == hooks and not _instance_wrappers(model)
    assert torch.equal(logits_of(model, inputs), expected)

    stop_hf.patch(model, "visionzip_stop_r10")
    before = logits_of(model, inputs)
    with pytest.raises(ValueError, match="saliency_layer=99"):
        stop_hf.patch(model, BAD_LAYER)
    assert stop_hf.get_stop_config(model) == StopConfig.from_any("visionzip_stop_r10")
    assert model.config.stop_config == StopConfig.from_any("visionzip_stop_r10").to_dict()
    assert identical(logits_of(model, inputs), before)


def test_patch_with_none_means_unpruned(arch, reference, inputs):
    model = copy.deepcopy(reference)
    for value in (None, "none", "None"):
        stop_hf.patch(model, "uniform_r10")
        stop_hf.patch(model, value)
        assert not stop_hf.is_patched(model) and "stop_config" not in model.config.__dict__
    assert torch.equal(logits_of(model, inputs), logits_of(reference, inputs))


def test_non_finite_pixels_get_their_own_message(arch, reference, inputs):
    from stop_hf.validation import StopInputError

    model = stop_hf.patch(copy.deepcopy(reference), "holitom_stop_r10")
    bad = dict(inputs)
    bad["pixel_values_videos"] = inputs["pixel_values_videos"].clone().contiguous()
    bad["pixel_values_videos"].view(-1)[7] = float("nan")
    with pytest.raises(StopInputError, match=r"pixel_values_videos holds non-finite values \(1 NaN, 0 inf"):
        logits_of(model, bad)
    bad["pixel_values_videos"].view(-1)[7] = float("inf")
    with pytest.raises(StopInputError, match=r"0 NaN, 1 inf"):
        logits_of(model, bad)
    assert torch.isfinite(logits_of(model, inputs)).any()  # the next good call works


# ---------------------------------------------------------------------------------------------------- Qwen recipe
def test_qwen_model_card_recipe_with_a_generated_mp4(tmp_path):
    """The documented Qwen2.5-VL flow on transformers 5.23 + qwen-vl-utils 0.0.14: PyAV-decoded frames through
    `process_vision_info` (frames + sample fps), the processor with `video_metadata`, then `generate`."""
    from qwen_vl_utils import process_vision_info

    from stop_hf.runner import qwen_video_element
    from stop_hf.testing import write_video

    path = write_video(tmp_path / "clip.mp4", synthetic_frames(12, 112, 168), fps=4)
    model = stop_hf.from_pretrained(tiny_checkpoint("qwen2_5_vl"), stop_config="holitom_stop_r10").eval()
    processor = build_processor("qwen2_5_vl")
    messages = [
        {"role": "user", "content": [qwen_video_element(path, num_frames=6), {"type": "text", "text": "hi"}]}
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    _, videos, video_kwargs = process_vision_info(
        messages, return_video_kwargs=True, return_video_metadata=True
    )
    frames, metadata = zip(*videos)
    inputs = processor(
        text=[text],
        videos=list(frames),
        video_metadata=list(metadata),
        do_resize=False,  # qwen-vl-utils already resized to multiples of 28
        cap_pixels_per_frame=True,
        return_tensors="pt",
        **video_kwargs,
    )
    # 6 of 12 frames at 4 fps: sampled at 2 fps, two frames per temporal patch -> 1 s per grid step
    assert inputs["second_per_grid_ts"].tolist() == [1.0]
    output = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 3
    report = stop_hf.last_prune_report(model)
    assert report and report[0]["tokens_after"] < report[0]["tokens_before"]


def test_placeholder_count_mismatch_is_named(arch, reference, inputs):
    """One video placeholder token too few: a clear error naming the video tokens, patched as unpatched."""
    video_token = reference.config.video_token_id
    ids = inputs["input_ids"]
    first = int((ids[0] == video_token).nonzero()[0, 0])
    bad = dict(inputs)
    bad["input_ids"] = torch.cat([ids[:, :first], ids[:, first + 1 :]], dim=1)
    bad["attention_mask"] = inputs["attention_mask"][:, 1:]
    model = stop_hf.patch(copy.deepcopy(reference), "holitom_stop_r10")
    for candidate in (reference, model):
        with pytest.raises(ValueError, match=r"(?i)video.*tokens.*(do not match|mismatch)"):
            logits_of(candidate, bad)


@pytest.mark.parametrize("stored", [True, False], ids=["stored config", "no stored config"])
@pytest.mark.parametrize("kwarg", list(KWARGS))
def test_backbone_loads_unpruned_and_says_so(arch, stored_checkpoint, stored, kwarg):
    """`AutoModel` gives the backbone without the LM head, which stop-hf does not patch: it warns whenever a
    config was asked for or stored, and its config never claims one."""
    import warnings

    from transformers import AutoModel

    checkpoint = stored_checkpoint if stored else tiny_checkpoint(arch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = AutoModel.from_pretrained(checkpoint, **KWARGS[kwarg])
    ours = [str(w.message) for w in caught if str(w.message).startswith("stop_hf:")]
    asked = kwarg == "kwarg" or (kwarg == "no kwarg" and stored)
    assert len(ours) == (1 if asked else 0), ours
    if asked:
        assert "loaded UNPRUNED" in ours[0] and type(model).__name__ in ours[0]
    assert not stop_hf.is_patched(model) and "stop_config" not in model.config.__dict__


def test_unsupported_class_with_stop_config_is_refused_before_reading_files(tmp_path):
    """A class stop_hf does not patch, given a pruning stop_config=, names itself and the supported classes; the
    path does not exist, so the refusal comes before any file (config or weights) is read. None loads as usual."""
    import transformers
    from stop_hf.patches import ADAPTERS

    from stop_hf import StopUnsupportedError

    missing = tmp_path / "no-such-checkpoint"
    with pytest.raises(
        StopUnsupportedError, match="does not support Gemma3ForConditionalGeneration"
    ) as error:
        transformers.Gemma3ForConditionalGeneration.from_pretrained(missing, stop_config="visionzip_stop_r10")
    assert all(name in str(error.value) for name in ADAPTERS)
    with pytest.raises(OSError):  # unpruned: HF's own load runs (and finds nothing)
        transformers.Gemma3ForConditionalGeneration.from_pretrained(missing, stop_config=None)
