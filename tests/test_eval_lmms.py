"""The lmms-eval plugin with the real lmms-eval (optional extra; skipped without it): the installed entry point
resolves through lmms-eval's own model registry, and `generate_until` runs on a tiny model. Verified with
lmms-eval 0.7.3 + transformers 5.23. Without lmms-eval, tests/test_eval_lmms_standin.py covers the wrapper."""

import pytest

pytest.importorskip("lmms_eval.api.model", reason="lmms-eval (optional extra) is not installed")

from lmms_eval.api.instance import Instance  # noqa: E402
from lmms_eval.models import get_model  # noqa: E402

from stop_hf.eval import lmms as plugin  # noqa: E402
from stop_hf.testing import synthetic_frames, write_video  # noqa: E402


def test_entry_point_registration_and_generate_until(tmp_path):
    # `get_model` is what `lmms-eval --model NAME` calls; it sees our models through the installed entry point
    cls = get_model("llava_onevision_stop")
    assert cls is plugin.LlavaOneVisionStop
    assert get_model("qwen2_5_vl_stop") is plugin.Qwen2_5_VLStop

    model = cls.create_from_arg_string(
        "pretrained=tiny-llava_onevision,stop_config=holitom_stop_r10,max_frames_num=4", {"batch_size": 1}
    )
    video = str(write_video(tmp_path / "v.mp4", num_frames=4, height=96, width=128))
    docs = [{"video": video}, {"frames": list(synthetic_frames(4, 96, 128))}]
    model.task_dict = {"toy": {"test": docs}}

    def doc_to_visual(doc):
        return [doc["video"]] if "video" in doc else doc["frames"]

    requests = [
        Instance(
            "generate_until",
            (
                "<image>\nWhat moves?",
                {"max_new_tokens": 3, "until": ["\n\n"]},
                doc_to_visual,
                i,
                "toy",
                "test",
            ),
            idx=0,
            metadata={"task": "toy", "doc_id": i, "repeats": 1},
        )
        for i in range(2)
    ]
    outputs = model.generate_until(requests)
    assert len(outputs) == 2 and all(isinstance(o, str) for o in outputs)
    assert all(a.video_tokens_after < a.video_tokens for a in model.last_answers)  # pruning was on

    with pytest.raises(ValueError, match="unexpected model_args"):
        cls.create_from_arg_string("pretrained=tiny-llava_onevision,bogus=1")
    with pytest.raises(ValueError, match="use the llava_onevision_stop wrapper"):
        get_model("qwen2_5_vl_stop").create_from_arg_string("pretrained=tiny-llava_onevision")
    with pytest.raises(ValueError, match="no video"):
        plugin.StopVideoLLM._video([synthetic_frames(1, 8, 8)[0]])


def test_installed_entry_point_resolves_to_the_plugin():
    from importlib.metadata import entry_points

    from stop_hf.eval import lmms as plugin

    found = [ep for ep in entry_points(group="lmms_eval.models") if ep.name == "stop_hf"]
    assert found, "pip install stop-hf registers the lmms_eval.models entry point"
    assert found[0].load() is plugin.manifests
