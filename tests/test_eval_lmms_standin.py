"""The lmms-eval wrapper WITHOUT lmms-eval: a minimal STAND-IN of the three lmms-eval names the plugin touches
(`lmms_eval.api.model.lmms`, `lmms_eval.api.instance.Instance`, `lmms_eval.models.registry_v2.ModelManifest`),
written here from lmms-eval 0.7's documented interface, not lmms-eval itself. It checks the manifests and
`generate_until` (request unpacking, media-token stripping, `until`, pruning on) where lmms-eval is not installed;
tests/test_eval_lmms.py runs the same against the real package when it is."""

import importlib
import sys
import types
from dataclasses import dataclass, field

import pytest

import stop_hf.eval
from stop_hf.testing import synthetic_frames, write_video


class StandInLmms:
    """Stand-in for `lmms_eval.api.model.lmms`: the base class only sets what the wrappers read."""

    def __init__(self) -> None:
        self.rank, self.world_size, self.task_dict = 0, 1, {}


@dataclass
class StandInInstance:
    """Stand-in for `lmms_eval.api.instance.Instance`: a request type plus its `args` tuple."""

    request_type: str
    arguments: tuple
    idx: int = 0
    metadata: dict = field(default_factory=dict)

    @property
    def args(self):
        return self.arguments


@dataclass
class StandInManifest:
    """Stand-in for `lmms_eval.models.registry_v2.ModelManifest`."""

    model_id: str
    simple_class_path: str | None = None
    chat_class_path: str | None = None


@pytest.fixture
def plugin(monkeypatch):
    """`stop_hf.eval.lmms` imported against the stand-in modules; the real modules are restored afterwards."""
    modules = {
        "lmms_eval": types.ModuleType("lmms_eval"),
        "lmms_eval.api": types.ModuleType("lmms_eval.api"),
        "lmms_eval.api.model": types.ModuleType("lmms_eval.api.model"),
        "lmms_eval.api.instance": types.ModuleType("lmms_eval.api.instance"),
        "lmms_eval.models": types.ModuleType("lmms_eval.models"),
        "lmms_eval.models.registry_v2": types.ModuleType("lmms_eval.models.registry_v2"),
    }
    modules["lmms_eval.api.model"].lmms = StandInLmms
    modules["lmms_eval.api.instance"].Instance = StandInInstance
    modules["lmms_eval.models.registry_v2"].ModelManifest = StandInManifest
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "stop_hf.eval.lmms", raising=False)
    monkeypatch.setattr(stop_hf.eval, "lmms", None, raising=False)
    module = importlib.import_module("stop_hf.eval.lmms")
    assert module.StopVideoLLM.__mro__[1] is StandInLmms
    return module


def test_manifests_name_every_wrapper(plugin):
    manifests = {m.model_id: m.simple_class_path for m in plugin.manifests()}
    assert manifests == {
        "llava_onevision_stop": "stop_hf.eval.lmms.LlavaOneVisionStop",
        "qwen2_5_vl_stop": "stop_hf.eval.lmms.Qwen2_5_VLStop",
        "qwen2_vl_stop": "stop_hf.eval.lmms.Qwen2VLStop",
        "qwen3_vl_stop": "stop_hf.eval.lmms.Qwen3VLStop",
        "qwen3_vl_moe_stop": "stop_hf.eval.lmms.Qwen3VLMoeStop",
        "qwen3_5_stop": "stop_hf.eval.lmms.Qwen3_5Stop",
        "qwen3_5_moe_stop": "stop_hf.eval.lmms.Qwen3_5MoeStop",
        "internvl_stop": "stop_hf.eval.lmms.InternVLStop",
    }


@pytest.mark.parametrize(
    ("wrapper", "arch"),
    [("LlavaOneVisionStop", "llava_onevision"), ("Qwen3VLStop", "qwen3_vl"), ("InternVLStop", "internvl")],
)
def test_generate_until_on_a_tiny_model(plugin, tmp_path, wrapper, arch):
    model = getattr(plugin, wrapper)(
        pretrained=f"tiny-{arch}", stop_config="visionzip_stop_r10", max_frames_num="4"
    )
    video = str(write_video(tmp_path / "v.mp4", num_frames=4, height=96, width=128))
    model.task_dict = {"toy": {"test": [{"video": video}, {"frames": list(synthetic_frames(4, 96, 128))}]}}

    def doc_to_visual(doc):
        return [doc["video"]] if "video" in doc else doc["frames"]

    requests = [
        StandInInstance(
            "generate_until",
            (
                "<image>\nWhat moves?",
                {"max_new_tokens": 3, "until": ["\n\n"]},
                doc_to_visual,
                i,
                "toy",
                "test",
            ),
        )
        for i in range(2)
    ]
    outputs = model.generate_until(requests)
    assert len(outputs) == 2 and all(isinstance(o, str) for o in outputs)
    assert [a.text for a in model.last_answers] == [o.split("\n\n")[0] for o in outputs]
    assert all(a.video_tokens_after < a.video_tokens for a in model.last_answers)  # pruning was on
    with pytest.raises(ValueError, match="unexpected model_args"):
        plugin.LlavaOneVisionStop(pretrained="tiny-llava_onevision", bogus=1)
    for bad in (0, "auto"):
        with pytest.raises(ValueError, match="must be an integer >= 1"):
            plugin.LlavaOneVisionStop(pretrained="tiny-llava_onevision", batch_size=bad)


@pytest.mark.parametrize("arch", ["llava_onevision", "qwen3_vl"])
def test_batch_size_above_one_gives_the_records_of_batch_size_one(plugin, tmp_path, arch):
    """5 documents (two frame counts, two generation lengths, two `until`s) at batch size 3 and 1: the same
    outputs, token counts and order; the batched run makes fewer `generate` calls."""
    model = getattr(plugin, plugin.WRAPPERS[f"{arch}_stop"].__name__)(
        pretrained=f"tiny-{arch}", stop_config="visionzip_stop_r10", max_frames_num="4"
    )
    videos = [
        str(write_video(tmp_path / f"v{i}.mp4", num_frames=4, height=96, width=128, seed=i)) for i in range(3)
    ]
    docs = [{"video": videos[0]}, {"video": videos[1]}, {"frames": list(synthetic_frames(2, 96, 128))}]
    docs += [{"video": videos[2]}, {"video": videos[0]}]
    model.task_dict = {"toy": {"test": docs}}

    def doc_to_visual(doc):
        return [doc["video"]] if "video" in doc else doc["frames"]

    settings = [
        {"max_new_tokens": 4, "until": ["\n\n"]},
        {"max_new_tokens": 4, "until": ["\n\n"]},
        {"max_new_tokens": 4},
        {"max_new_tokens": 3, "until": "xyz"},
        {"max_new_tokens": 4, "until": ["\n\n"]},
    ]
    questions = ["What moves?", "Which colour?", "How many?", "Where?", "Why?"]
    requests = [
        StandInInstance("generate_until", (f"<image>\n{q}", g, doc_to_visual, i, "toy", "test"))
        for i, (q, g) in enumerate(zip(questions, settings))
    ]

    def run(batch_size):
        model._batch_size = batch_size
        calls = []
        generate = model.llm.model.generate
        model.llm.model.generate = lambda *a, **k: calls.append(1) or generate(*a, **k)
        try:
            outputs = model.generate_until(requests)
        finally:
            model.llm.model.generate = generate
        counts = [(a.video_tokens, a.video_tokens_after, a.prompt_tokens) for a in model.last_answers]
        return outputs, counts, len(calls)

    single, batched = run(1), run(3)
    assert batched[0] == single[0] and batched[1] == single[1]
    assert single[2] == 5 and batched[2] < 5
    assert len({c[0] for c in single[1]}) == 2  # two frame counts were mixed in the requests
    assert model.batch_size == 3
