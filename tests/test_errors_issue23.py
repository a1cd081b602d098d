"""Issue 23: the last unclear or silent cases of bad input get clear errors (or work). One test per case."""

from __future__ import annotations

import pytest

from stop_hf import StopConfig, StopConfigError


# ---------------------------------------------------------------------------------------------------- case 4
def test_duplicate_yaml_key_is_an_error_naming_the_file_and_key(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("method: uniform\nretention: 0.1\nretention: 0.9\n")
    with pytest.raises(StopConfigError, match=r"(?s)dup\.yaml.*'retention'.*line 3"):
        StopConfig.from_yaml(path)


def test_duplicate_key_in_a_nested_mapping_is_named(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("method: holitom\nretention: 0.5\nparams:\n  tau: 0.5\n  tau: 0.7\n")
    with pytest.raises(StopConfigError, match=r"(?s)dup\.yaml.*'tau'"):
        StopConfig.from_yaml(path)


def test_same_key_in_different_mappings_is_fine(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("method: holitom\nretention: 0.5\nparams:\n  tau: 0.6\n")
    assert StopConfig.from_yaml(path).params == {"tau": 0.6}


# ---------------------------------------------------------------------------------------------------- case 2
@pytest.mark.parametrize("kind", ["folder", "file"])
def test_a_local_path_named_like_a_preset_does_not_shadow_it(tmp_path, monkeypatch, kind):
    from stop_hf import config as config_module

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(config_module, "_SHADOW_WARNED", set())
    local = tmp_path / "holitom_stop_r10"
    if kind == "folder":
        local.mkdir()
    else:
        local.write_text("method: uniform\nretention: 0.5\n")
    with pytest.warns(UserWarning, match=r"preset 'holitom_stop_r10'.*'\./holitom_stop_r10'") as record:
        config = StopConfig.from_any("holitom_stop_r10")
        again = StopConfig.from_any("holitom_stop_r10")
    assert config == again == StopConfig.from_preset("holitom_stop_r10")
    assert config.method == "holitom"
    assert sum("holitom_stop_r10" in str(w.message) for w in record) == 1  # warned once
    if kind == "file":  # the file is still reachable as a path
        assert StopConfig.from_any("./holitom_stop_r10") == StopConfig(method="uniform", retention=0.5)
    else:
        with pytest.raises(StopConfigError, match="is not a file"):
            StopConfig.from_any("./holitom_stop_r10")


def test_an_unknown_bare_name_is_a_preset_error_even_when_a_file_has_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "myconfig").write_text("method: uniform\nretention: 0.5\n")
    with pytest.raises(
        StopConfigError, match=r"(?s)preset 'myconfig' is unknown.*holitom_stop_r10.*'\./myconfig'"
    ):
        StopConfig.from_any("myconfig")
    with pytest.raises(StopConfigError, match=r"preset 'nothing_here' is unknown; available presets"):
        StopConfig.from_any("nothing_here")
    assert StopConfig.from_any("./myconfig").method == "uniform"


# ---------------------------------------------------------------------------------------------------- case 1
LLAVA_PROMPT = "<|im_start|>user\n<video>what happens in the video ?<|im_end|>\n<|im_start|>assistant\n"
QWEN_PROMPT = (
    "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>what happens in the video ?<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def tiny_model(arch: str):
    import transformers
    from stop_hf.patches import SUPPORTED_MODEL_TYPES

    from stop_hf.testing import tiny_checkpoint

    return getattr(transformers, SUPPORTED_MODEL_TYPES[arch]).from_pretrained(tiny_checkpoint(arch)).eval()


def tiny_inputs(arch: str, frames: int = 4, static: bool = False) -> dict:
    import torch
    from stop_hf.patches import architecture

    from stop_hf.runner import qwen_video_element
    from stop_hf.testing import build_processor, synthetic_frames

    processor = build_processor(arch)
    clip = synthetic_frames(frames, 112, 168)
    if static:
        clip = clip[:1].repeat(frames, 0)
    if arch == "llava_onevision":
        video = torch.from_numpy(clip).permute(0, 3, 1, 2)
        return dict(processor(text=[LLAVA_PROMPT], videos=[video], return_tensors="pt"))
    element = qwen_video_element(clip, frames)
    return dict(architecture(arch).processor_inputs(processor, [QWEN_PROMPT], [element], return_tensors="pt"))


@pytest.fixture(scope="module", params=["llava_onevision", "qwen2_5_vl", "qwen3_vl"])
def patched_tiny(request):
    import stop_hf

    return (
        request.param,
        stop_hf.patch(tiny_model(request.param), "holitom_stop_r10"),
        tiny_inputs(request.param),
    )


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_pixels_through_generate_are_named(patched_tiny, value):
    import torch

    from stop_hf import StopInputError

    _, model, inputs = patched_tiny
    bad = dict(inputs, pixel_values_videos=inputs["pixel_values_videos"].clone().contiguous())
    bad["pixel_values_videos"].view(-1)[7] = value
    with torch.no_grad(), pytest.raises(StopInputError, match=r"pixel_values_videos holds non-finite values"):
        model.generate(**bad, max_new_tokens=2, do_sample=False)
    with torch.no_grad():  # the next good call works
        assert (
            model.generate(**inputs, max_new_tokens=2, do_sample=False).shape[1]
            == inputs["input_ids"].shape[1] + 2
        )


@pytest.mark.parametrize("call", ["forward", "generate"])
def test_pixels_that_overflow_in_the_vision_tower_are_named_or_work(patched_tiny, call):
    """x1e30 pixels are finite but overflow in SigLIP (LLaVA-OV) and Qwen3-VL's tower: a StopInputError naming the
    vision tower, never the placeholder-count error nor silently NaN logits."""
    import torch

    from stop_hf import StopInputError

    arch, model, inputs = patched_tiny
    bad = dict(inputs, pixel_values_videos=inputs["pixel_values_videos"] * 1e30)
    try:
        with torch.no_grad():
            if call == "forward":
                logits = model(**bad).logits
                assert torch.isfinite(logits[..., -1, :]).all()
            else:
                scores = model.generate(
                    **bad, max_new_tokens=1, do_sample=False, output_scores=True, return_dict_in_generate=True
                ).scores
                assert torch.isfinite(scores[0]).all()
    except StopInputError as exc:
        assert "vision tower's features of video 0 hold non-finite values" in str(exc)
        assert "overflow inside the vision encoder" in str(exc)
    else:
        assert arch == "qwen2_5_vl"  # its tower normalises the x1e30 input back to finite features


# ---------------------------------------------------------------------------------------------------- case 10
@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("damage", ["zeros", "partial"])
def test_qwen_mm_token_type_ids_that_do_not_mark_the_video_are_refused(arch, damage):
    import torch

    import stop_hf
    from stop_hf import StopInputError

    model = stop_hf.patch(tiny_model(arch), "holitom_stop_r10")
    inputs = tiny_inputs(arch)
    types = inputs["mm_token_type_ids"]
    assert int((types == 2).sum()) > 0
    if damage == "zeros":
        bad = torch.zeros_like(types)
        match = r"mm_token_type_ids marks no video token .*all zero"
    elif damage == "partial":
        bad = types.clone()
        bad[bad == 2] = torch.tensor([0] + [2] * (int((types == 2).sum()) - 1), dtype=bad.dtype)
        match = r"mm_token_type_ids marks \d+ video tokens but input_ids hold \d+ video placeholders"
    if damage == "zeros":  # (marks off the placeholders fail loudly in generate's own position preparation)
        with torch.no_grad(), pytest.raises(StopInputError, match=match):
            model.generate(**dict(inputs, mm_token_type_ids=bad), max_new_tokens=2, do_sample=False)
    with torch.no_grad(), pytest.raises(StopInputError, match=match):
        model(**dict(inputs, mm_token_type_ids=bad))


# ---------------------------------------------------------------------------------------------------- case 3
QWEN_ARCHS = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
FASTVID_PAPER = ["fastvid_baseline_r10", "fastvid_stop_r10", "fastvid_baseline_r25", "fastvid_stop_r25"]


@pytest.fixture(scope="module")
def corrupt_qwen_checkpoints(tmp_path_factory):
    """Per Qwen architecture, the tiny checkpoint with weights that cannot be read."""
    import shutil

    from stop_hf.testing import tiny_checkpoint

    out = {}
    for arch in QWEN_ARCHS:
        folder = tmp_path_factory.mktemp(f"corrupt_{arch}")
        for file in tiny_checkpoint(arch).iterdir():
            if file.is_file():
                shutil.copy(file, folder / file.name)
        for weights in folder.glob("*.safetensors"):
            weights.write_bytes(b"not a safetensors file")
        out[arch] = folder
    return out


@pytest.mark.parametrize("arch", QWEN_ARCHS)
def test_fastvid_paper_presets_run_on_qwen_with_the_frame_mean(arch):
    import torch
    from stop_hf.patches import SUPPORTED_MODEL_TYPES

    import stop_hf
    from stop_hf.testing import tiny_checkpoint

    inputs = tiny_inputs(arch)
    for preset in FASTVID_PAPER:
        assert StopConfig.from_preset(preset).global_feature == "auto"  # the architecture's reference signal
    model = stop_hf.from_pretrained(tiny_checkpoint(arch), stop_config="fastvid_stop_r10").eval()
    assert type(model).__name__ == SUPPORTED_MODEL_TYPES[arch]
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    report = stop_hf.last_prune_report(model)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 2
    assert report and report[0]["tokens_after"] < report[0]["tokens_before"]


@pytest.mark.parametrize("arch", QWEN_ARCHS)
@pytest.mark.parametrize("preset", ["fastvid_original_r10", "fastvid_original_r25"])
def test_fastvid_original_presets_on_qwen_fail_before_any_weight_is_read(
    arch, preset, corrupt_qwen_checkpoints
):
    import stop_hf
    from stop_hf import StopUnsupportedError

    display = {"qwen2_vl": "Qwen2-VL", "qwen2_5_vl": "Qwen2.5-VL", "qwen3_vl": "Qwen3-VL"}[arch]
    match = (
        rf"preset '{preset}': stop_config.global_feature='map_head' and saliency_source='map_head' are not "
    )
    match += rf"available on {display}"
    with pytest.raises(
        StopUnsupportedError, match=match
    ):  # the weights are unreadable: this fails before them
        stop_hf.from_pretrained(corrupt_qwen_checkpoints[arch], stop_config=preset)
    with pytest.raises(StopUnsupportedError, match=match):
        stop_hf.patch(tiny_model(arch), preset)


# ---------------------------------------------------------------------------------------------------- case 8
RUN = [
    "run",
    "--synthetic-video",
    "--question",
    "what?",
    "--frames",
    "4",
    "--max-new-tokens",
    "1",
    "--no-progress",
]


def test_run_fastvid_offline_without_the_siglip_head_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    from stop_hf.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # no head cached
    assert main([*RUN, "--config", "fastvid_stop_r10"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "stop-hf" in line or "Traceback" in line]
    assert len(err) == 1 and err[0].startswith("stop-hf run: error: stop_config.siglip_head=")  # no traceback
    assert "offline" in err[0] and "global_feature='mean'" in err[0]


@pytest.mark.parametrize("target", ["folder", "missing_parent"])
def test_run_json_path_is_checked_before_the_run(tmp_path, monkeypatch, capsys, target):
    import stop_hf.cli.run as run_module
    from stop_hf.cli import main

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before --json was checked")

    monkeypatch.setattr(run_module, "load_model", never)
    path = tmp_path if target == "folder" else tmp_path / "nope" / "out.json"
    assert main([*RUN, "--config", "uniform_r25", "--json", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    expected = "is a folder; pass a file path" if target == "folder" else "does not exist"
    assert err[0].startswith("stop-hf run: error: --json") and expected in err[0]


# ---------------------------------------------------------------------------------------------------- case 9
@pytest.mark.parametrize("arch", ["llava_onevision", "qwen2_5_vl"])
def test_a_patched_model_pickles_and_stays_patched(arch):
    import io
    import pickle

    import torch

    import stop_hf

    model = stop_hf.patch(tiny_model(arch), "holitom_stop_r10")
    inputs = tiny_inputs(arch)
    # pickled before the first forward: after one, transformers 5.24's own output-capturing hook (a local
    # function) makes any model unpicklable, patched or not
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    pickled = pickle.loads(pickle.dumps(model))
    with torch.no_grad():
        expected = model(**inputs).logits
    kept = stop_hf.last_prune_report(model)[0]["index"]
    for clone in (loaded, pickled):
        assert clone is not model and stop_hf.is_patched(clone)
        assert stop_hf.get_stop_config(clone) == stop_hf.get_stop_config(model)
        assert clone.config.stop_config == model.config.stop_config
        with torch.no_grad():
            got = clone(**inputs).logits
        assert torch.equal(torch.isnan(got), torch.isnan(expected))  # the same positions pruned
        torch.testing.assert_close(got.nan_to_num(), expected.nan_to_num(), rtol=0, atol=0)
        assert torch.equal(stop_hf.last_prune_report(clone)[0]["index"], kept)
        assert clone._stop_state is not model._stop_state  # its own hooks and state
    # the original is still patched, with its own state, and prunes as before
    assert stop_hf.is_patched(model)
    with torch.no_grad():
        again = model(**inputs).logits
    torch.testing.assert_close(again.nan_to_num(), expected.nan_to_num(), rtol=0, atol=0)
    # unpatching the copy leaves the original patched
    stop_hf.unpatch(loaded)
    assert stop_hf.is_patched(model) and not stop_hf.is_patched(loaded)


# ---------------------------------------------------------------------------------------------------- case 11
@pytest.mark.parametrize("method", ["holitom", "prunevid"])
def test_retention_is_a_ceiling_and_a_static_clip_keeps_fewer(method):
    import math

    import torch

    import stop_hf

    model = stop_hf.patch(tiny_model("llava_onevision"), {"method": method, "retention": 0.5})
    kept = {}
    for static in (False, True):
        with torch.no_grad():
            model(**tiny_inputs("llava_onevision", frames=8, static=static))
        entry = stop_hf.last_prune_report(model)[0]
        grid = entry["frames"] * entry["grid"][0] * entry["grid"][1]
        trailing = entry["tokens_before"] - grid
        budget = math.ceil(0.5 * grid) + entry["frames"] + trailing  # (rounded up per frame at most)
        assert entry["tokens_after"] <= budget  # a ceiling
        kept[static] = entry["tokens_after"]
    assert kept[True] < kept[False]  # static tokens merge over time: the static clip keeps fewer
    assert kept[True] < 0.5 * kept[False]
