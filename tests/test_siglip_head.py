"""SigLIP's attention-pooling head read alone from a checkpoint: exact, partial reads, hub range reads, clear errors.

Nothing here touches the network: checkpoints are local folders; the hub is either offline or a fake session."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from stop_hf import siglip_head
from stop_hf.siglip_head import (
    DEFAULT_SIGLIP_CHECKPOINT,
    HEAD_TENSORS,
    SiglipHeadError,
    load_siglip_head,
    read_head_tensors,
)
from stop_hf.testing import tiny_llava_onevision_config
from stop_hf.testing.siglip import save_tiny_siglip_with_head

VISION = tiny_llava_onevision_config().vision_config


@pytest.fixture(scope="module")
def head_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("siglip_head")
    model = save_tiny_siglip_with_head(VISION, folder)
    return folder, model


def _independent(model, hidden):
    """SiglipVisionModel's own post_layernorm + head, and the probe attention of its own MultiheadAttention."""
    with torch.no_grad():
        post = model.post_layernorm(hidden)
        pooled = model.head(post)
        probe = model.head.probe.repeat(hidden.shape[0], 1, 1)
        weights = model.head.attention(probe, post, post)[1][:, 0]
    return pooled, weights


def test_head_equals_siglip_vision_model(head_checkpoint):
    folder, model = head_checkpoint
    head = load_siglip_head(str(folder), num_heads=VISION.num_attention_heads, hidden_size=VISION.hidden_size)
    hidden = torch.randn(3, 729, VISION.hidden_size)
    pooled, probe = head(hidden)
    expected_pooled, expected_probe = _independent(model, hidden)
    assert pooled.shape == (3, VISION.hidden_size) and probe.shape == (3, 729)
    torch.testing.assert_close(pooled, expected_pooled, atol=1e-5, rtol=0)
    torch.testing.assert_close(probe, expected_probe, atol=1e-7, rtol=0)
    torch.testing.assert_close(probe.sum(dim=-1), torch.ones(3))
    assert probe.std() > 1e-4  # the probe is peaked: a uniform attention would not test anything


def test_only_the_head_tensors_are_read(head_checkpoint, monkeypatch):
    folder, model = head_checkpoint
    read: list[str] = []
    real_safe_open = siglip_head.safe_open

    class Spy:
        def __init__(self, *args, **kwargs):
            self.handle = real_safe_open(*args, **kwargs)

        def __enter__(self):
            self.inner = self.handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def keys(self):
            return self.inner.keys()

        def get_tensor(self, name):
            read.append(name)
            return self.inner.get_tensor(name)

    monkeypatch.setattr(siglip_head, "safe_open", Spy)
    load_siglip_head(str(folder), num_heads=VISION.num_attention_heads)
    all_keys = set(model.state_dict())
    assert len(all_keys) > 3 * len(HEAD_TENSORS)  # the checkpoint holds the whole tower
    assert sorted(read) == sorted(HEAD_TENSORS)


def test_full_siglip_checkpoint_names_and_extract(head_checkpoint, tmp_path):
    """A full SiglipModel checkpoint prefixes the tower with `vision_model.`; `python -m stop_hf.siglip_head` extracts it."""
    folder, _ = head_checkpoint
    tensors = read_head_tensors(folder / "model.safetensors")
    from safetensors.torch import save_file

    full = tmp_path / "full"
    full.mkdir()
    named = {f"vision_model.{k}": v for k, v in tensors.items()}
    named["text_model.head.weight"] = torch.zeros(2, 2)  # SiglipModel's text head: not the one we want
    save_file(named, str(full / "model.safetensors"))
    assert siglip_head.main([str(full), str(tmp_path / "out")]) == 0
    extracted = read_head_tensors(tmp_path / "out" / "model.safetensors")
    assert all(torch.equal(extracted[k], tensors[k]) for k in HEAD_TENSORS)


def test_hidden_size_mismatch_is_refused(head_checkpoint):
    folder, _ = head_checkpoint
    with pytest.raises(SiglipHeadError, match="hidden size 64.*1152"):
        load_siglip_head(str(folder), num_heads=4, hidden_size=1152)


def test_checkpoint_without_head_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"post_layernorm.weight": torch.ones(4)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(SiglipHeadError, match="siglip_head"):
        load_siglip_head(str(tmp_path), num_heads=1)
    with pytest.raises(SiglipHeadError, match=r"stop_config.siglip_head=.*missing tensors \['head.probe'"):
        load_siglip_head(str(tmp_path / "model.safetensors"), num_heads=1)


def test_offline_without_head_names_download_and_field(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(SiglipHeadError) as error:
        load_siglip_head(DEFAULT_SIGLIP_CHECKPOINT, num_heads=16)
    message = str(error.value)
    for needle in (DEFAULT_SIGLIP_CHECKPOINT, "stop_config.siglip_head", "offline", "global_feature='mean'"):
        assert needle in message


def test_missing_local_path_is_refused(tmp_path):
    with pytest.raises(SiglipHeadError, match="does not exist"):
        load_siglip_head(str(tmp_path / "nowhere" / "siglip"), num_heads=4)


def test_hub_fetch_reads_only_the_head_byte_ranges(head_checkpoint, tmp_path, monkeypatch):
    """The hub path: header + one ranged GET per head tensor, cached as a small file; later loads read the cache."""
    import huggingface_hub
    import huggingface_hub.utils as hf_utils
    from huggingface_hub import constants

    folder, model = head_checkpoint
    blob = (folder / "model.safetensors").read_bytes()
    header_size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + header_size])
    header.pop("__metadata__", None)
    tensors = {
        key: SimpleNamespace(dtype=v["dtype"], shape=v["shape"], data_offsets=v["data_offsets"])
        for key, v in header.items()
    }
    metadata = SimpleNamespace(
        weight_map=dict.fromkeys(tensors, "model.safetensors"),
        files_metadata={"model.safetensors": SimpleNamespace(tensors=tensors)},
    )
    served: list[int] = []

    class Session:
        def get(self, url, headers, timeout):
            start, end = (int(v) for v in headers["range"].removeprefix("bytes=").split("-"))
            served.append(end - start + 1)
            return SimpleNamespace(content=blob[start : end + 1], status_code=206)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", lambda repo, revision=None: metadata)
    monkeypatch.setattr(hf_utils, "get_session", lambda: Session())
    monkeypatch.setattr(hf_utils, "hf_raise_for_status", lambda response: None)

    head = load_siglip_head("someone/tiny-siglip", num_heads=VISION.num_attention_heads)
    head_bytes = sum(
        t.numel() * t.element_size() for t in read_head_tensors(folder / "model.safetensors").values()
    )
    assert sum(served) == head_bytes + 8  # the header length, then exactly the head's bytes
    assert sum(served) < len(blob) / 3
    cached = siglip_head.head_cache_path("someone/tiny-siglip")
    assert cached.is_file() and Path(cached).parent.parent == tmp_path

    hidden = torch.randn(2, 729, VISION.hidden_size)
    expected_pooled, expected_probe = _independent(model, hidden)
    pooled, probe = head(hidden)
    torch.testing.assert_close(pooled, expected_pooled, atol=1e-5, rtol=0)
    torch.testing.assert_close(probe, expected_probe, atol=1e-7, rtol=0)

    served.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the cache serves it now, offline too
    load_siglip_head("someone/tiny-siglip", num_heads=VISION.num_attention_heads)
    assert served == []
