"""`StopConfig`: the one object that says how a model is pruned. Built from YAML, a dict, a preset or itself."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .pruners import DEFAULT_SINK_WEIGHTS, PRUNERS, Pruner
from .sink import Sink

POSITION_MODES = ("auto", "original", "compact")


class StopConfigError(ValueError):
    """A bad stop_config: names the field, the value and what is allowed."""


@dataclass
class StopConfig:
    """How to prune the video tokens of a model.

    method:          none | uniform | random | visionzip | fastvid | holitom.
    retention:       fraction of video tokens kept, 0 < r <= 1.
    sink:            apply SToP (STSP ranking penalty, STTP temporal relaxation and the method's sink rules).
    mu_s, mu_t:      SToP weights; None takes the method's reference default. mu_s is calibrated for 729 attention
                     patches per frame (LLaVA-OV) and rescaled by 729 / patches for other encoders.
    gamma:           sink-score sharpening exponent.
    params:          method parameters (e.g. {"tau": 0.65} for holitom); unset ones take the reference defaults.
    position_mode:   auto (the architecture's reference policy) | original (representative's original position,
                     with gaps) | compact (sequential positions over the pruned sequence).
    saliency_layer:  vision layer whose attention is recomputed; None is the architecture default.
    prune_images:    also prune image tokens (default: images pass through unpruned).
    signal_chunk_frames: frames per chunk when recomputing vision attention (bounds memory).
    """

    method: str = "none"
    retention: float = 1.0
    sink: bool = False
    mu_s: float | None = None
    mu_t: float | None = None
    gamma: float = 1.1
    params: dict[str, Any] = field(default_factory=dict)
    position_mode: str = "auto"
    saliency_layer: int | None = None
    prune_images: bool = False
    signal_chunk_frames: int = 8

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        if self.method not in PRUNERS:
            raise StopConfigError(
                f"stop_config.method={self.method!r} is not a known method; allowed: {sorted(PRUNERS)}"
            )
        if isinstance(self.retention, bool) or not isinstance(self.retention, (int, float)):
            raise StopConfigError(f"stop_config.retention={self.retention!r} must be a number in (0, 1]")
        if not 0 < float(self.retention) <= 1:
            raise StopConfigError(
                f"stop_config.retention={self.retention!r} is out of range; allowed: 0 < r <= 1"
            )
        self.retention = float(self.retention)
        if not isinstance(self.sink, bool):
            raise StopConfigError(f"stop_config.sink={self.sink!r} must be true or false")
        for name in ("mu_s", "mu_t"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
            ):
                raise StopConfigError(f"stop_config.{name}={value!r} must be a non-negative number or null")
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float)) or self.gamma <= 0:
            raise StopConfigError(f"stop_config.gamma={self.gamma!r} must be a positive number")
        if self.position_mode not in POSITION_MODES:
            raise StopConfigError(
                f"stop_config.position_mode={self.position_mode!r} is not allowed; allowed: {list(POSITION_MODES)}"
            )
        if self.saliency_layer is not None and (
            isinstance(self.saliency_layer, bool) or not isinstance(self.saliency_layer, int)
        ):
            raise StopConfigError(
                f"stop_config.saliency_layer={self.saliency_layer!r} must be an integer or null"
            )
        if not isinstance(self.prune_images, bool):
            raise StopConfigError(f"stop_config.prune_images={self.prune_images!r} must be true or false")
        if not isinstance(self.signal_chunk_frames, int) or self.signal_chunk_frames < 1:
            raise StopConfigError(
                f"stop_config.signal_chunk_frames={self.signal_chunk_frames!r} must be a positive integer"
            )
        if not isinstance(self.params, dict):
            raise StopConfigError(
                f"stop_config.params={self.params!r} must be a mapping of method parameters"
            )
        allowed = PRUNERS[self.method].param_names()
        unknown = sorted(set(self.params) - set(allowed))
        if unknown:
            raise StopConfigError(
                f"stop_config.params has unknown key(s) {unknown} for method {self.method!r}; allowed: {allowed}"
            )
        if self.sink and not PRUNERS[self.method].needs:
            raise StopConfigError(
                f"stop_config.sink=true needs a method that ranks tokens by attention; method {self.method!r} does "
                f"not. Allowed with sink: {sorted(k for k, v in PRUNERS.items() if v.needs)}"
            )
        self.build_pruner()  # type-checks params by construction

    # ------------------------------------------------------------------ derived
    @property
    def is_identity(self) -> bool:
        """True when the config leaves the model untouched: method none, or retention 1.0 (every token kept; methods
        that would still merge or reorder at 1.0 are not run, so the logits stay bit-identical)."""
        return self.method == "none" or self.retention >= 1.0

    def resolved_sink(self) -> Sink | None:
        if not self.sink:
            return None
        default_mu_s, default_mu_t = DEFAULT_SINK_WEIGHTS[self.method]
        return Sink(
            mu_s=default_mu_s if self.mu_s is None else float(self.mu_s),
            mu_t=default_mu_t if self.mu_t is None else float(self.mu_t),
            gamma=float(self.gamma),
        )

    def build_pruner(self) -> Pruner:
        cls = PRUNERS[self.method]
        try:
            return cls(retention=self.retention, sink=self.resolved_sink(), **self.params)
        except (TypeError, ValueError) as exc:
            raise StopConfigError(
                f"stop_config.params={self.params!r} invalid for method {self.method!r}: {exc}"
            ) from None

    def resolved(self) -> dict[str, Any]:
        """Every setting with its default filled in, as a user would want to read it."""
        out = self.to_dict()
        pruner = self.build_pruner()
        out["params"] = {name: getattr(pruner, name) for name in pruner.param_names()}
        sink = self.resolved_sink()
        if sink is not None:
            out["mu_s"], out["mu_t"] = sink.mu_s, sink.mu_t
        return out

    # ------------------------------------------------------------------ round-trip
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StopConfig:
        if not isinstance(data, dict):
            raise StopConfigError(f"stop_config must be a mapping, got {type(data).__name__}")
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise StopConfigError(f"stop_config has unknown key(s) {unknown}; valid keys: {valid}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> StopConfig:
        path = Path(path)
        if not path.is_file():
            raise StopConfigError(f"stop_config YAML file {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise StopConfigError(f"stop_config YAML file {str(path)!r} is malformed: {exc}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise StopConfigError(
                f"stop_config YAML file {str(path)!r} must hold a mapping of settings, got {type(data).__name__}"
            )
        return cls.from_dict(data)

    @classmethod
    def from_preset(cls, name: str) -> StopConfig:
        presets = list_presets()
        if name not in presets:
            raise StopConfigError(
                f"stop_config preset {name!r} is unknown; available presets: {sorted(presets)}"
            )
        return cls.from_yaml(presets[name])

    @classmethod
    def from_any(cls, value: StopConfig | dict | str | os.PathLike) -> StopConfig:
        """Accepts a StopConfig, a dict, a YAML path or a preset name."""
        if isinstance(value, StopConfig):
            return value
        if isinstance(value, dict):
            return cls.from_dict(value)
        if isinstance(value, (str, os.PathLike)):
            text = str(value)
            if text.endswith((".yaml", ".yml")) or os.sep in text or Path(text).is_file():
                return cls.from_yaml(text)
            return cls.from_preset(text)
        raise StopConfigError(
            f"stop_config={value!r} has type {type(value).__name__}; allowed: StopConfig, dict, YAML path, preset name"
        )


def presets_dir() -> Path:
    import importlib

    return Path(next(iter(importlib.import_module("stop_hf.configs").__path__)))


def list_presets() -> dict[str, Path]:
    """Preset name -> YAML path, from the shipped `configs/` folder."""
    return {p.stem: p for p in sorted(presets_dir().glob("*.yaml"))}


def preset_description(path: Path) -> str:
    """The first comment line of a preset file."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""
