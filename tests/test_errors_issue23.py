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
