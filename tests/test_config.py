"""StopConfig: construction from every accepted form, round-trips and validation messages."""

from __future__ import annotations

import pytest
import yaml

from stop_hf import StopConfig, StopConfigError, list_presets


def test_defaults_are_identity():
    config = StopConfig()
    assert config.method == "none" and config.is_identity


def test_from_dict_yaml_preset_instance_round_trip(tmp_path):
    config = StopConfig(method="uniform", retention=0.25, position_mode="original")
    assert StopConfig.from_any(config) is config
    assert StopConfig.from_any(config.to_dict()) == config
    path = tmp_path / "c.yaml"
    config.to_yaml(path)
    assert StopConfig.from_any(str(path)) == config
    assert StopConfig.from_any(path) == config
    assert yaml.safe_load(path.read_text())["retention"] == 0.25
    assert StopConfig.from_any("uniform_r25") == StopConfig.from_yaml(list_presets()["uniform_r25"])


def test_every_preset_loads_and_has_a_description():
    from stop_hf.config import preset_description

    presets = list_presets()
    assert "uniform_r10" in presets
    for name, path in presets.items():
        StopConfig.from_preset(name)
        assert preset_description(path), f"{name} lacks a first-line comment"


def test_unknown_key_is_named_with_valid_keys():
    with pytest.raises(StopConfigError) as err:
        StopConfig.from_dict({"method": "uniform", "retentoin": 0.5})
    assert "retentoin" in str(err.value) and "retention" in str(err.value) and "valid keys" in str(err.value)


@pytest.mark.parametrize("value", [0, 0.0, 1.5, -0.1, "half", True])
def test_retention_out_of_range(value):
    with pytest.raises(StopConfigError) as err:
        StopConfig(method="uniform", retention=value)
    message = str(err.value)
    assert f"retention={value!r}" in message and ("(0, 1]" in message or "0 < r <= 1" in message)


def test_unknown_key_in_a_yaml_file_is_named(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("method: uniform\nretention: 0.5\nmu_S: 0.1\n")
    with pytest.raises(StopConfigError) as err:
        StopConfig.from_any(path)
    assert "'mu_S'" in str(err.value) and "'mu_s'" in str(err.value)


def test_unknown_method_lists_allowed():
    with pytest.raises(StopConfigError) as err:
        StopConfig(method="tome")
    message = str(err.value)
    assert "method='tome'" in message and "allowed" in message
    assert all(name in message for name in ("none", "uniform", "random", "visionzip", "fastvid", "holitom"))


def test_unknown_method_param_is_named():
    with pytest.raises(StopConfigError, match="bogus"):
        StopConfig(method="random", retention=0.5, params={"bogus": 1})


def test_bad_position_mode():
    with pytest.raises(StopConfigError, match="position_mode"):
        StopConfig(method="uniform", retention=0.5, position_mode="shuffled")


def test_sink_needs_an_attention_method():
    with pytest.raises(StopConfigError, match="sink"):
        StopConfig(method="uniform", retention=0.5, sink=True)


def test_missing_yaml_file(tmp_path):
    with pytest.raises(StopConfigError, match=r"YAML file '.*nope\.yaml' does not exist"):
        StopConfig.from_any(str(tmp_path / "nope.yaml"))


def test_malformed_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("method: [uniform\nretention: 0.5\n")
    with pytest.raises(StopConfigError, match=r"(?s)YAML file '.*bad\.yaml' is malformed: .*line 1"):
        StopConfig.from_any(str(path))


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- uniform\n- 0.5\n")
    with pytest.raises(StopConfigError, match="mapping"):
        StopConfig.from_any(str(path))


def test_unknown_preset_lists_available():
    with pytest.raises(StopConfigError) as err:
        StopConfig.from_any("holitom_r99")
    assert "holitom_r99" in str(err.value) and "uniform_r10" in str(err.value)


def test_wrong_type():
    with pytest.raises(StopConfigError, match="allowed"):
        StopConfig.from_any(3.5)


def test_retention_one_is_identity_for_every_method():
    from stop_hf.pruners import PRUNERS

    for method in PRUNERS:
        assert StopConfig(method=method, retention=1.0).is_identity


def test_patch_keeps_its_own_copy_of_the_config(tmp_path):
    """Editing the StopConfig object after patching cannot desynchronise a patched model."""
    import stop_hf
    from stop_hf.testing import build_tiny_model

    model = build_tiny_model("qwen2_5_vl")
    config = StopConfig(method="uniform", retention=0.5)
    stop_hf.patch(model, config)
    config.retention = 1.0
    assert stop_hf.get_stop_config(model).retention == 0.5
    assert model.config.stop_config["retention"] == 0.5
