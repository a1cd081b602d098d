"""Presets name what they reproduce (issue 21).

- `*_baseline_r*` are the paper's baseline rows as the SToP code ran them: VisionZip keeps the sink-target skip with
  mu_s = 0 ({sink: true, mu_s: 0}); HoliTom keeps the 0.3*s static-centre penalty and the eval's T = 0.8
  ({sink: true, mu_s: 0, mu_t: 0, tau: 0.8}).
- `*_original_r*` are the original repositories' behaviour: they reproduce the original-repository fixtures.
- every preset's first line cites repository, commit and file:line; `stop-hf configs` shows the family.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from stop_hf.config import PRESET_FAMILIES, StopConfig, list_presets, preset_description, preset_family
from stop_hf.pruners import PruneInput
from stop_hf.testing.conformance import config_for_case, input_for_case, load_case

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "conformance"
T, N, D = 16, 196, 32
SINKS = [0, 1, 13, 97, 182, 195]


def _input(kind: str, seed: int = 0) -> PruneInput:
    """16 frames of 14x14 tokens: `sinks` has planted high-attention positions on moving content; `static` is a static
    camera (one frame repeated with tiny noise; every third position moves) with the same sinks."""
    g = torch.Generator().manual_seed(seed)
    if kind == "static":
        feats = torch.randn(1, N, D, generator=g) + 1e-3 * torch.randn(T, N, D, generator=g)
        feats[:, ::3] = torch.randn(T, len(range(0, N, 3)), D, generator=g)
    else:
        scenes = torch.randn(4, N, D, generator=g).repeat_interleave(T // 4, dim=0)
        feats = scenes + 0.3 * torch.randn(T, N, D, generator=g)
    attention = torch.rand(T, N, generator=g) / N
    attention[:, SINKS] *= 20 + 10 * torch.rand(T, len(SINKS), generator=g)
    attention = attention / attention.sum(dim=1, keepdim=True)
    keys = torch.randn(T, N, 16, generator=g)
    return PruneInput(features=feats, attention=attention, keys=keys, grid=(14, 14))


def _same(a, b) -> bool:
    return torch.equal(a.index, b.index) and torch.equal(a.kind, b.kind) and torch.equal(a.embeds, b.embeds)


@pytest.mark.parametrize("kind", ["sinks", "static"])
@pytest.mark.parametrize("r", [10, 25])
def test_visionzip_baseline_is_the_stop_code_with_mu_s_zero(kind, r):
    preset = StopConfig.from_preset(f"visionzip_baseline_r{r}")
    explicit = StopConfig(method="visionzip", retention=r / 100, sink=True, mu_s=0.0)
    x = _input(kind)
    assert _same(preset.build_pruner()(x), explicit.build_pruner()(x))


def test_visionzip_baseline_differs_from_the_original_where_a_target_is_a_sink_position():
    """The inputs exercise the skip: some contextual target sits on a top-20 sink grid position."""
    x = _input("sinks")
    ran = {
        f: StopConfig.from_preset(f"visionzip_{f}_r10").build_pruner()(x) for f in ("baseline", "original")
    }
    assert not torch.equal(ran["baseline"].index, ran["original"].index)
    assert not torch.equal(
        ran["baseline"].info["target_indices_filtered"], ran["original"].info["target_indices_filtered"]
    )


@pytest.mark.parametrize("kind", ["sinks", "static"])
@pytest.mark.parametrize("r", [10, 15, 20, 25])
def test_holitom_baseline_is_the_stop_code_with_zero_weights_and_tau_08(kind, r):
    preset = StopConfig.from_preset(f"holitom_baseline_r{r}")
    explicit = StopConfig(
        method="holitom", retention=r / 100, sink=True, mu_s=0.0, mu_t=0.0, params={"tau": 0.8}
    )
    x = _input(kind)
    assert preset.resolved()["params"] == explicit.resolved()["params"]
    assert _same(preset.build_pruner()(x), explicit.build_pruner()(x))


def test_holitom_baseline_differs_from_the_original_on_a_static_video():
    """The static-centre penalty moves cluster centres off the sink positions the original keeps."""
    x = _input("static")
    base = StopConfig.from_preset("holitom_baseline_r15").build_pruner()(x)  # tau 0.8 in both families
    original = StopConfig.from_preset("holitom_original_r15").build_pruner()(x)
    assert not torch.equal(base.index, original.index)


ORIGINAL_FIXTURES = sorted(FIXTURES.glob("*_baseline_case*.safetensors"))
ORIGINAL_FIXTURES = [p for p in ORIGINAL_FIXTURES if p.name.startswith(("visionzip", "holitom"))]


@pytest.mark.parametrize("path", ORIGINAL_FIXTURES, ids=lambda p: p.stem)
def test_original_presets_reproduce_the_original_repositories(path):
    """visionzip_original_r* / holitom_original_r* (their sink/mu settings), with the fixture's retention, grid-dependent
    budget and tau, give the original repositories' output exactly."""
    tensors, config = load_case(path)
    r = round(config["retention"] * 100)
    preset = StopConfig.from_preset(f"{config['method']}_original_r{r}")
    case = config_for_case(config)
    assert (preset.sink, preset.mu_s, preset.mu_t) == (case.sink, case.mu_s, case.mu_t)
    run = dataclasses.replace(preset, params={**preset.params, **case.params})
    result = run.build_pruner()(input_for_case(tensors, config))
    assert torch.equal(result.index, tensors["expected_index"])
    assert torch.equal(result.kind, tensors["expected_kind"])
    torch.testing.assert_close(result.embeds, tensors["expected_embeds"], atol=1e-5, rtol=1e-5)


CITATION = re.compile(r"[\w.-]+/[\w.-]+ @[0-9a-f]{7}\b.*\.(py|sh):\d+")


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_every_preset_cites_repository_commit_and_line(name):
    family = preset_family(name)
    assert family in PRESET_FAMILIES
    description = preset_description(list_presets()[name])
    if family == "own":
        assert "stop-hf's own" in description
    else:
        assert CITATION.search(description), description
    if family in ("baseline", "stop"):
        assert "rlqja1107/SToP @3bf998c" in description


def test_every_method_with_an_original_repository_has_original_presets():
    presets = list_presets()
    for method in ("visionzip", "holitom", "fastvid"):
        for r in (10, 15, 20, 25):
            assert f"{method}_original_r{r}" in presets and f"{method}_baseline_r{r}" in presets
            assert preset_family(f"{method}_original_r{r}") == "original"


def test_configs_cli_shows_the_family(capsys):
    import argparse

    from stop_hf.cli.configs import list_configs

    assert list_configs(argparse.Namespace()) == 0
    lines = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert lines["visionzip_original_r10"].split()[0] == "original"
    assert lines["holitom_baseline_r25"].split()[0] == "baseline"
    assert lines["uniform_r10"].split()[0] == "own"


@pytest.mark.parametrize(
    ("n", "retention", "tokens"),
    [
        (196, 0.3, 58),  # int(58.8): the SToP eval truncates (eval/utils/utils_eval.py:81-83), not 59
        (196, 0.15, 30),  # the table, not int(29.4)
        (196, 0.25, 50),  # the table, not int(49.0)
        (196, 0.33, 64),  # int(64.68)
        (240, 0.15, 36),  # int(36.0)
        (240, 0.3, 72),
        (729, 0.1, 72),  # int(72.9)
    ],
)
def test_visionzip_retention_to_tokens_follows_the_stop_rule(n, retention, tokens):
    from stop_hf.pruners import PRUNERS

    pruner = PRUNERS["visionzip"](retention=retention)
    assert pruner.tokens_per_frame(n) == tokens
    side = {196: (14, 14), 240: (12, 20), 729: (27, 27)}[n]
    g = torch.Generator().manual_seed(0)
    x = PruneInput(
        features=torch.randn(2, n, 8, generator=g),
        attention=torch.rand(2, n, generator=g),
        keys=torch.randn(2, n, 4, generator=g),
        grid=side,
    )
    assert pruner(x).index.numel() == 2 * tokens


def test_docs_table_names_every_preset_family():
    text = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    table = text[text.index("### Preset families") :]
    for name in list_presets():
        prefix = name.rsplit("_r", 1)[0] if preset_family(name) != "own" else name
        assert f"`{prefix}_r*`" in table or f"`{name}`" in table, name
