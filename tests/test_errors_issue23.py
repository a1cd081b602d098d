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
