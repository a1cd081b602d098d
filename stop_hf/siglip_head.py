"""SigLIP's attention-pooling (MAP) head, read alone from a SigLIP checkpoint: FastVID's signals on LLaVA-OneVision.

LLaVA-OneVision drops SigLIP's head, and HF LLaVA-OV checkpoints do not ship it. FastVID (and the SToP code's FastVID)
load `head.*` and `post_layernorm.*` from the original SigLIP checkpoint and apply them to the pre-projection hidden
state the model uses as its features:

    x = post_layernorm(hidden)                                  # (T, P, H)
    y, w = MultiheadAttention(probe, x, x)                      # y (T, 1, H); w (T, 1, P), averaged over heads
    pooled = (y + mlp(layernorm(y)))[:, 0]                      # (T, H): the global frame feature (DySeg)
    probe_attention = w[:, 0]                                   # (T, P): the original FastVID's saliency (ATS)

Only those 13 tensors are ever read:
- a local `.safetensors` file or folder: `safe_open(...).get_tensor` of those keys only (memory-mapped, by name);
- a hub repo id: the file's header and then each tensor's byte range are fetched with HTTP range requests (about
  58 MB for so400m instead of the 3.5 GB checkpoint). The result is cached as a small safetensors file under the HF
  cache (`<HF_HUB_CACHE>/stop_hf-siglip-head/`), so later runs, also offline, read it from there.

No transformers import: the head is rebuilt from torch modules (the same `nn.MultiheadAttention` SigLIP uses).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

#: the SigLIP checkpoint the FastVID and SToP code load the head from.
DEFAULT_SIGLIP_CHECKPOINT = "google/siglip-so400m-patch14-384"

#: the tensors read, relative to the vision model prefix (`vision_model.` in a full SigLIP checkpoint, none in a
#: saved `SiglipVisionModel`).
HEAD_TENSORS = (
    "head.probe",
    "head.attention.in_proj_weight",
    "head.attention.in_proj_bias",
    "head.attention.out_proj.weight",
    "head.attention.out_proj.bias",
    "head.layernorm.weight",
    "head.layernorm.bias",
    "head.mlp.fc1.weight",
    "head.mlp.fc1.bias",
    "head.mlp.fc2.weight",
    "head.mlp.fc2.bias",
    "post_layernorm.weight",
    "post_layernorm.bias",
)

#: a hub repo id ("name" or "owner/name"); anything else is a local path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}


class SiglipHeadError(RuntimeError):
    """The SigLIP head could not be found or read; the message says what to download and which field to set."""


def _how_to_fix(source: str) -> str:
    return (
        f"FastVID's global frame feature (and the original FastVID's saliency) on LLaVA-OneVision come from SigLIP's "
        f"attention-pooling (MAP) head, which LLaVA-OV checkpoints do not ship. Either (1) run once online: stop_hf "
        f"then fetches only the head's tensors of {source!r} (about 58 MB for so400m, by HTTP range requests) and "
        f"caches them; or (2) download {DEFAULT_SIGLIP_CHECKPOINT!r} (or just its `vision_model.head.*` and "
        f"`vision_model.post_layernorm.*` tensors, e.g. with `python -m stop_hf.siglip_head SOURCE OUT_DIR`) to a "
        f"local folder and set stop_config.siglip_head to that folder; or (3) set stop_config.global_feature='mean' "
        f"to use the frame-mean feature instead (not the paper's signal)."
    )


# ---------------------------------------------------------------------------------------------------- finding keys
def head_keys(keys) -> dict[str, str]:
    """Map each of `HEAD_TENSORS` to its full key among `keys`, or raise SiglipHeadError.

    The vision prefix is found from the probe: `vision_model.head.probe` -> `vision_model.`; `head.probe` -> ``.
    """
    keys = set(keys)
    prefixes = sorted(k[: -len("head.probe")] for k in keys if k == "head.probe" or k.endswith(".head.probe"))
    prefixes = [p for p in prefixes if all(p + name in keys for name in HEAD_TENSORS)]
    if not prefixes:
        missing = [name for name in HEAD_TENSORS if not any(k.endswith(name) for k in keys)]
        raise SiglipHeadError(
            f"no SigLIP attention-pooling head in the checkpoint: missing tensors {missing}"
        )
    prefix = "vision_model." if "vision_model." in prefixes else prefixes[0]
    return {name: prefix + name for name in HEAD_TENSORS}


def read_head_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The head's tensors (short names -> tensors) of one safetensors file, reading only those tensors."""
    with safe_open(str(path), framework="pt") as handle:
        names = head_keys(handle.keys())
        return {name: handle.get_tensor(key) for name, key in names.items()}


def _local_head_file(folder: Path) -> Path:
    """The safetensors file of a local checkpoint folder that holds the head."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        probe = head_keys(weight_map)["head.probe"]
        return folder / weight_map[probe]
    candidates = sorted(folder.glob("*.safetensors"))
    for candidate in candidates:
        with safe_open(str(candidate), framework="pt") as handle:
            try:
                head_keys(handle.keys())
            except SiglipHeadError:
                continue
        return candidate
    raise SiglipHeadError(
        f"stop_config.siglip_head={str(folder)!r} is a folder with no safetensors file holding a SigLIP head "
        f"(looked at {[c.name for c in candidates]}). " + _how_to_fix(DEFAULT_SIGLIP_CHECKPOINT)
    )


# ---------------------------------------------------------------------------------------------------- hub
def head_cache_path(repo_id: str, revision: str | None = None) -> Path:
    """Where the head fetched from the hub is cached: one small safetensors file per repo and revision."""
    from huggingface_hub import constants

    name = f"{repo_id.replace('/', '--')}--{revision or 'main'}.safetensors"
    return Path(constants.HF_HUB_CACHE) / "stop_hf-siglip-head" / name


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "")
    return bool(constants.HF_HUB_OFFLINE) or flag.strip().lower() in ("1", "true", "yes", "on")


def fetch_head_from_hub(
    repo_id: str, revision: str | None = None, timeout: float = 30.0
) -> dict[str, torch.Tensor]:
    """The head's tensors from a hub repo, by HTTP range requests: the header, then each tensor's bytes.

    `huggingface_hub.get_safetensors_metadata` reads the headers (weight map, dtypes, shapes, offsets) with range
    requests; a tensor's bytes start at 8 + header size + data_offsets[0] in its file.
    """
    from huggingface_hub import get_safetensors_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    metadata = get_safetensors_metadata(repo_id, revision=revision)
    names = head_keys(metadata.weight_map)
    headers = build_hf_headers()
    session = get_session()

    def ranged(url: str, start: int, end: int) -> bytes:
        response = session.get(url, headers={**headers, "range": f"bytes={start}-{end - 1}"}, timeout=timeout)
        hf_raise_for_status(response)
        content = response.content
        if len(content) != end - start:
            raise SiglipHeadError(
                f"the hub answered {len(content)} bytes for the range {start}-{end - 1} of {url}; expected {end - start}"
            )
        return content

    tensors, header_end = {}, {}
    for name, key in names.items():
        filename = metadata.weight_map[key]
        info = metadata.files_metadata[filename].tensors[key]
        url = hf_hub_url(repo_id, filename, revision=revision)
        if filename not in header_end:
            header_end[filename] = 8 + int.from_bytes(ranged(url, 0, 8), "little")
        start, end = info.data_offsets
        data = ranged(url, header_end[filename] + start, header_end[filename] + end)
        if info.dtype not in _SAFETENSORS_DTYPES:
            raise SiglipHeadError(
                f"tensor {key!r} of {repo_id!r} has dtype {info.dtype}; expected a float dtype"
            )
        tensor = torch.frombuffer(bytearray(data), dtype=_SAFETENSORS_DTYPES[info.dtype])
        tensors[name] = tensor.reshape(info.shape).clone()
    return tensors


def save_head(tensors: dict[str, torch.Tensor], path: str | os.PathLike, source: str = "") -> Path:
    """Writes the head's tensors as their own small safetensors file, under the full-checkpoint names."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    named = {f"vision_model.{name}": t.contiguous() for name, t in tensors.items()}
    save_file(named, str(partial), metadata={"source": source, "format": "pt"})
    partial.replace(path)  # atomic: a concurrent reader sees the old file or the whole new one
    return path


def save_random_siglip_head(
    folder: str | os.PathLike, hidden_size: int, intermediate_size: int, seed: int = 0
) -> Path:
    """A random MAP head (+ post_layernorm) of the given width as its own checkpoint `folder/model.safetensors`, for
    benchmarks of models with random weights (the head's cost is part of FastVID's signal cost). Returns the folder."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.02

    h, i = hidden_size, intermediate_size
    tensors = {
        "head.probe": torch.randn(1, 1, h, generator=g),
        "head.attention.in_proj_weight": rand(3 * h, h),
        "head.attention.in_proj_bias": torch.zeros(3 * h),
        "head.attention.out_proj.weight": rand(h, h),
        "head.attention.out_proj.bias": torch.zeros(h),
        "head.layernorm.weight": torch.ones(h),
        "head.layernorm.bias": torch.zeros(h),
        "head.mlp.fc1.weight": rand(i, h),
        "head.mlp.fc1.bias": torch.zeros(i),
        "head.mlp.fc2.weight": rand(h, i),
        "head.mlp.fc2.bias": torch.zeros(h),
        "post_layernorm.weight": torch.ones(h),
        "post_layernorm.bias": torch.zeros(h),
    }
    save_head(tensors, Path(folder) / "model.safetensors", source="random")
    return Path(folder)


def resolve_head_file(source: str, revision: str | None = None) -> Path:
    """A local safetensors file that holds the head of `source` (a file, a folder, or a hub repo id)."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        return _local_head_file(path)
    if not _HUB_ID.fullmatch(source):
        raise SiglipHeadError(f"stop_config.siglip_head={source!r} does not exist. " + _how_to_fix(source))
    cached = head_cache_path(source, revision)
    if cached.is_file():
        return cached
    if _hub_offline():
        raise SiglipHeadError(
            f"stop_config.siglip_head={source!r} is not cached at {str(cached)!r} and the hub is offline "
            f"(HF_HUB_OFFLINE). " + _how_to_fix(source)
        )
    try:
        tensors = fetch_head_from_hub(source, revision)
    except SiglipHeadError:
        raise
    except Exception as exc:  # network, auth, missing repo: all end in the same instructions
        raise SiglipHeadError(
            f"stop_config.siglip_head={source!r}: fetching the head from the hub failed "
            f"({type(exc).__name__}: {exc}). " + _how_to_fix(source)
        ) from None
    return save_head(tensors, cached, source=f"{source}@{revision or 'main'}")


# ---------------------------------------------------------------------------------------------------- module
class SiglipMapHead(nn.Module):
    """`post_layernorm` + SigLIP's attention-pooling head. forward: (B, P, H) -> pooled (B, H), probe attention (B, P)."""

    def __init__(
        self, hidden_size: int, intermediate_size: int, num_heads: int, layer_norm_eps: float
    ) -> None:
        super().__init__()
        self.post_layernorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.probe = nn.Parameter(torch.empty(1, 1, hidden_size))
        self.attention = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
        self.layernorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, torch.Tensor], num_heads: int, layer_norm_eps: float = 1e-6
    ) -> SiglipMapHead:
        hidden = tensors["head.probe"].shape[-1]
        intermediate = tensors["head.mlp.fc1.weight"].shape[0]
        if hidden % num_heads:
            raise SiglipHeadError(
                f"SigLIP head hidden size {hidden} is not divisible by {num_heads} attention heads"
            )
        with torch.device("meta"):
            head = cls(hidden, intermediate, num_heads, layer_norm_eps)
        state = {
            name.removeprefix("head.").replace("mlp.", ""): tensor for name, tensor in tensors.items()
        }  # post_layernorm.*, probe, attention.*, layernorm.*, fc1.*, fc2.*
        head.load_state_dict(state, strict=True, assign=True)
        return head.eval().requires_grad_(False)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.post_layernorm(hidden)
        probe = self.probe.expand(x.shape[0], -1, -1)
        y, weights = self.attention(probe, x, x, need_weights=True, average_attn_weights=True)
        y = y + self.fc2(F.gelu(self.fc1(self.layernorm(y)), approximate="tanh"))
        return y[:, 0], weights[:, 0]


def load_siglip_head(
    source: str = DEFAULT_SIGLIP_CHECKPOINT,
    *,
    num_heads: int,
    layer_norm_eps: float = 1e-6,
    hidden_size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    revision: str | None = None,
) -> SiglipMapHead:
    """The MAP head of `source` (hub id, folder or safetensors file), on `device` in `dtype`.

    num_heads / layer_norm_eps: the SigLIP tower's (the head has no config of its own; LLaVA-OV's tower is the same
    architecture). hidden_size: checked against the head's, so a head from another SigLIP size fails clearly.
    """
    path = resolve_head_file(source, revision)
    try:
        tensors = read_head_tensors(path)
    except SiglipHeadError as exc:
        raise SiglipHeadError(
            f"stop_config.siglip_head={source!r} ({str(path)!r}): {exc}. "
            + _how_to_fix(DEFAULT_SIGLIP_CHECKPOINT)
        ) from None
    found = tensors["head.probe"].shape[-1]
    if hidden_size is not None and found != hidden_size:
        raise SiglipHeadError(
            f"stop_config.siglip_head={source!r} has hidden size {found}, but the model's vision tower has "
            f"{hidden_size}: use the SigLIP checkpoint the model's tower comes from"
        )
    head = SiglipMapHead.from_tensors(tensors, num_heads, layer_norm_eps)
    return head.to(device=device, dtype=dtype)


def map_head_use(config, needs) -> tuple[bool, bool]:
    """(the MAP head's pooled output is the global feature, its probe attention is the saliency) for a method with
    these `needs`: `global_feature` auto/map_head and `saliency_source: map_head` (the HF patch and the vLLM plugin)."""
    head_global = "global_features" in needs and config.global_feature in ("auto", "map_head")
    probe_saliency = "attention" in needs and config.saliency_source == "map_head"
    return head_global, probe_saliency


def explicit_map_head_fields(config, needs) -> list[str]:
    """The fields that explicitly ask for a MAP-head signal, as `name='map_head'` (`global_feature: auto` resolves to
    the frame mean on a tower without the head, so it is not one of them)."""
    wanted = {
        "global_feature": "global_features" in needs and config.global_feature == "map_head",
        "saliency_source": map_head_use(config, needs)[1],
    }
    return [f"{name}='map_head'" for name, wants in wanted.items() if wants]


def refuse_map_head(config, needs, architecture: str) -> None:
    """For a tower without SigLIP's MAP head: a `StopUnsupportedError` naming the field if the method would read a
    MAP-head signal (`global_feature: auto` resolves to the frame mean there, so only an explicit map_head fails)."""
    from .hooks import StopUnsupportedError  # hooks imports config, which imports this module

    refused = explicit_map_head_fields(config, needs)
    if refused:
        raise StopUnsupportedError(
            f"stop_config.{' and '.join(refused)} {'is' if len(refused) == 1 else 'are'} not available on "
            f"{architecture}: its vision tower has no SigLIP attention-pooling head. Allowed here: global_feature "
            f"'auto' or 'mean' (the frame mean, as FastVID's own {architecture} code), saliency_source 'encoder' "
            "(e.g. the presets fastvid_stop_r10, fastvid_baseline_r10; fastvid_original_* is the original LLaVA-OV "
            "FastVID and needs the MAP head)"
        )


def main(argv: list[str] | None = None) -> int:
    """`python -m stop_hf.siglip_head SOURCE OUT_DIR`: save only the head of SOURCE as OUT_DIR/model.safetensors."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(
            "usage: python -m stop_hf.siglip_head SOURCE OUT_DIR  (SOURCE: hub id, folder or .safetensors file)"
        )
        return 2
    source, out = args
    tensors = read_head_tensors(resolve_head_file(source))
    path = save_head(tensors, Path(out) / "model.safetensors", source=source)
    print(f"saved {len(tensors)} tensors to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
