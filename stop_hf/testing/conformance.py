"""Run one conformance fixture through the public pruner path (formats: `shared/fixtures/conformance/README.md`;
FlashVID and PruneVid: `tests/fixtures/conformance_more/README.md`).

A fixture is a safetensors file: input tensors (`features`, `attention`, `keys`, `global_features`), the reference
output (`expected_embeds`, `expected_index`, `expected_kind`) and a JSON `config` metadata string. Only the
PARAMETER keys of that config are used to build a `StopConfig`; the recorded intermediate decisions (windows,
segment sizes, anchors, budgets, ...) are never read, so the pruner must rediscover them.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors import safe_open

from ..config import StopConfig
from ..pruners import PRUNERS, PruneInput, PruneResult

#: fixture config key -> pruner parameter name, per method. Keys already named like the parameter also work.
PARAMETER_KEYS: dict[str, dict[str, str]] = {
    "visionzip": {
        "spatial_tokens": "spatial_tokens",
        "dominant_ratio": "dominant_ratio",
        "sink_target_skip_topk": "sink_target_skip_topk",
    },
    "fastvid": {
        "c": "c",
        "tau": "tau",
        "d": "d",
        "p": "p",
        "beta": "beta",
        "k": "k",
        "anchor_sink_penalty_single_frame": "anchor_sink_penalty",
        "anchor_sink_penalty": "anchor_sink_penalty",
    },
    "holitom": {
        "tau": "tau",
        "beta": "beta",
        "D_split": "d_split",
        "d_split": "d_split",
        "K": "k",
        "k": "k",
        "max_window_size": "max_window_size",
        "retention_budget_correction": "budget_correction",
        "budget_correction": "budget_correction",
        "sttp_threshold": "sttp_threshold",
        "static_cluster_sink_penalty": "static_cluster_sink_penalty",
        "no_beta": "no_beta",
    },
    "flashvid": {
        "segment_threshold": "segment_threshold",
        "min_segment_num": "min_segment_num",
        "complementary_segment": "complementary_segment",
        "alpha": "alpha",
        "temporal_threshold": "temporal_threshold",
        "expansion": "expansion",
        "attention_scale": "attention_scale",
    },
    "prunevid": {
        "frame_cluster_ratio": "frame_cluster_ratio",
        "frame_dpc_k": "frame_dpc_k",
        "static_threshold": "static_threshold",
        "cluster_min_tokens": "cluster_min_tokens",
        "token_dpc_k": "token_dpc_k",
    },
}

#: boolean and integer parameters (everything else is a float).
BOOL_PARAMS = {"budget_correction", "no_beta", "complementary_segment"}
INT_PARAMS = {
    "spatial_tokens",
    "c",
    "p",
    "k",
    "sink_target_skip_topk",
    "max_window_size",
    "min_segment_num",
    "frame_dpc_k",
    "cluster_min_tokens",
    "token_dpc_k",
}

#: fixture keys that describe a fixed rule of the reference; the value must be the one the pruner implements.
FIXED_RULES: dict[str, dict[str, Any]] = {
    "flashvid": {
        "do_segment": True,
        "token_selection_method": "attn_div_v2",
        "dpc_k": "min(num_clusters, 7)",
    },
}

#: parameters that only exist in the SToP variant; a baseline case never sets them.
SINK_ONLY = {"sink_target_skip_topk", "anchor_sink_penalty", "sttp_threshold", "static_cluster_sink_penalty"}

#: recorded decisions and data descriptors: never used to configure the pruner (listed for documentation).
RECORDED_DECISIONS = (
    "windows",
    "segment_sizes",
    "anchors_per_frame",
    "target_indices_filtered",
    "total_reduced",
    "retain_ratio_adjusted",
    "static_tokens_per_window",
    "frame_retain_num",
    "salient_num",
    "context_num",
    "dominant_num",
    "contextual_num",
    "token_budget",
    "num_adts_tokens",
    "num_tstm_tokens",
    "segment_sizes",
    "dyseg_threshold_cuts",
    "dyseg_all_cuts",
    "segments",
    "duplicate_index_rows",
    "frame_cluster_num",
    "frame_cluster_labels",
    "frame_cluster_labels_refined",
    "window_sizes",
    "windows_detail",
)


def load_case(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors by name, parsed `config` metadata) of one fixture file."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (safe_open is not iterable)
    if "config" not in metadata:
        raise ValueError(f"fixture {str(path)!r} has no 'config' metadata")
    return tensors, json.loads(metadata["config"])


def _flag(value: Any) -> bool:
    """A boolean parameter; the fixtures describe an enabled rule with a descriptive string."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false", "off", "no", "none", "disabled")
    return value is not None


def config_for_case(config: dict[str, Any]) -> StopConfig:
    """A `StopConfig` built from the fixture config's parameter fields only."""
    method = config["method"]
    if method not in PARAMETER_KEYS:
        raise ValueError(f"fixture method {method!r} is not one of {sorted(PARAMETER_KEYS)}")
    variant = config.get("variant", "baseline")
    if variant not in ("baseline", "stop"):
        raise ValueError(f"fixture variant {variant!r} must be 'baseline' or 'stop'")
    sink = variant == "stop"
    if config.get("inner_llm_merge"):
        raise ValueError("fixtures with HoliTom's inner-LLM merge are not supported by the pure pruner")

    for key, want in FIXED_RULES.get(method, {}).items():
        if key in config and config[key] != want:
            raise ValueError(
                f"fixture {key}={config[key]!r} is not supported; the {method} pruner implements {want!r}"
            )
    if method == "prunevid" and "n_frame" in config and int(config["n_frame"]) != int(config["T"]):
        # the reference takes the frame-cluster count from --n_frame and requires it to equal T; the pruner uses T
        raise ValueError(f"fixture n_frame={config['n_frame']} differs from T={config['T']}")

    allowed = set(PRUNERS[method].param_names())
    params: dict[str, Any] = {}
    for key, name in PARAMETER_KEYS[method].items():
        if key not in config or name not in allowed or (name in SINK_ONLY and not sink):
            continue
        value = config[key]
        if name in BOOL_PARAMS:
            value = _flag(value)
        elif name in INT_PARAMS:
            value = None if value is None else int(value)
        else:
            value = float(value)
        params[name] = value

    if sink and method == "fastvid" and "anchor_sink_penalty_multi_frame" in config:
        single = float(params.get("anchor_sink_penalty", 0.3))
        multi = float(config["anchor_sink_penalty_multi_frame"])
        if abs(multi - 2 * single) > 1e-9:
            raise ValueError(
                f"fixture anchor_sink_penalty_multi_frame={multi} is not twice the single-frame penalty {single}; "
                "the pruner applies the single-frame penalty once more in multi-frame segments"
            )

    return StopConfig(
        method=method,
        retention=float(config["retention"]),
        sink=sink,
        mu_s=float(config.get("mu_s", 0.0)) if sink else None,
        mu_t=float(config.get("mu_t", 0.0)) if sink else None,
        gamma=float(config.get("gamma", 1.1)),
        params=params,
    )


def input_for_case(tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> PruneInput:
    return PruneInput(
        features=tensors["features"],
        attention=tensors.get("attention"),
        keys=tensors.get("keys"),
        global_features=tensors.get("global_features"),
        grid=(int(config["grid_h"]), int(config["grid_w"])),
        attention_patches=int(config.get("attention_patches", 729)),
    )


def run_case(path: str | os.PathLike) -> PruneResult:
    """Prune one fixture's inputs with the pruner its parameters describe."""
    tensors, config = load_case(path)
    pruner = config_for_case(config).build_pruner()
    return pruner(input_for_case(tensors, config))
