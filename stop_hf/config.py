"""`StopConfig`: the one object that says how a model is pruned. Built from YAML, a dict, a preset or itself."""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .pruners import PRUNERS, Pruner
from .pruners.base import RETENTION_SPEC, ParamSpec
from .siglip_head import DEFAULT_SIGLIP_CHECKPOINT
from .sink import Sink

POSITION_MODES = ("auto", "original", "compact")
#: the signal-source fields and their allowed values.
SIGNAL_CHOICES = {
    "global_feature": ("auto", "map_head", "mean"),
    "saliency_source": ("encoder", "map_head"),
    "signal_dtype": ("float32", "model"),
}


class StopConfigError(ValueError):
    """A bad stop_config: names the field, the value and what is allowed."""


class _DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(f"key {key!r} is set twice (again on line {line})")
        self.key, self.line = key, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that rejects a key repeated in one mapping (PyYAML lets the last one silently win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise _DuplicateKeyError(key, key_node.start_mark.line + 1)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """`yaml.safe_load` that raises on a duplicated mapping key."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def _check(name: str, value: Any, spec: ParamSpec, context: str = "") -> None:
    if not spec.accepts(value):
        raise StopConfigError(f"stop_config.{name}={value!r} must be {spec.describe()}{context}")


#: Type and range of every scalar StopConfig field (method parameters declare theirs on the pruner dataclass).
#: mu_s/mu_t/gamma are bounded far above any useful value (the reference uses mu ~ 0.1-1, gamma ~ 1) so that the
#: sink arithmetic (mu_s * 729 / patches * score, attention ** gamma) can never overflow into a non-finite score.
FIELD_SPECS: dict[str, ParamSpec] = {
    "retention": RETENTION_SPEC,
    "sink": ParamSpec(bool),
    "mu_s": ParamSpec(float, 0, 1e3, optional=True),
    "mu_t": ParamSpec(float, 0, 1e3, optional=True),
    "gamma": ParamSpec(float, 0, 1e2, low_open=True),
    "saliency_layer": ParamSpec(int, optional=True),
    "prune_images": ParamSpec(bool),
    "signal_chunk_frames": ParamSpec(int, 1),
    "allow_training": ParamSpec(bool),
}

#: what `stop_config=` values mean "no pruning" everywhere (API, YAML, CLI): the model stays unpatched.
NO_PRUNING = (None, "none")


def means_no_pruning(value: Any) -> bool:
    """True for None and the string "none" (any case): load or run the model unpatched."""
    return value is None or (isinstance(value, str) and value.strip().lower() == "none")


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
    global_feature:  FastVID's per-frame global feature: auto (the architecture's reference signal: SigLIP's MAP head
                     on LLaVA-OV, the frame mean on Qwen2.5-VL) | map_head | mean (opt-in on LLaVA-OV, warns).
    saliency_source: encoder (the saliency layer's attention, as the SToP code) | map_head (SigLIP's MAP-head probe
                     attention, as the original FastVID; LLaVA-OV only).
    siglip_head:     SigLIP checkpoint the MAP head is read from: hub id or local folder/file (head tensors only).
    signal_dtype:    float32 (default) | model: the dtype the signals are computed in (the references use the
                     model's, fp16).
    allow_training:  prune in training mode (model.train()) without the one-time warning that pruning is meant for
                     inference (the selection is not differentiable; dropped tokens get no gradient).
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
    global_feature: str = "auto"
    saliency_source: str = "encoder"
    siglip_head: str = DEFAULT_SIGLIP_CHECKPOINT
    signal_dtype: str = "float32"
    allow_training: bool = False

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Checks every field (types, finiteness, ranges, method parameters) and raises `StopConfigError` naming the
        first bad one. The one validation path: the API, dicts, YAML files, presets and the CLI all end here."""
        methods = sorted(PRUNERS)
        if not isinstance(self.method, str) or self.method not in PRUNERS:
            raise StopConfigError(
                f"stop_config.method={self.method!r} is not a known method; allowed: {methods}"
            )
        _check("retention", self.retention, FIELD_SPECS["retention"])
        self.retention = float(self.retention)
        if self.method == "none" and self.retention != 1.0:
            raise StopConfigError(
                f"stop_config.retention={self.retention!r} has no effect with method 'none' (nothing would be "
                f"pruned); set stop_config.method to one of {[m for m in methods if m != 'none']}"
            )
        for name in ("sink", "mu_s", "mu_t", "gamma"):
            _check(name, getattr(self, name), FIELD_SPECS[name])
        if self.position_mode not in POSITION_MODES:
            raise StopConfigError(
                f"stop_config.position_mode={self.position_mode!r} is not allowed; allowed: {list(POSITION_MODES)}"
            )
        for name in ("saliency_layer", "prune_images", "signal_chunk_frames", "allow_training"):
            _check(name, getattr(self, name), FIELD_SPECS[name])
        for name, allowed_values in SIGNAL_CHOICES.items():
            if getattr(self, name) not in allowed_values:
                raise StopConfigError(
                    f"stop_config.{name}={getattr(self, name)!r} is not allowed; allowed: {list(allowed_values)}"
                )
        if not isinstance(self.siglip_head, str) or not self.siglip_head.strip():
            raise StopConfigError(
                f"stop_config.siglip_head={self.siglip_head!r} must be a hub id or a local path, e.g. "
                f"{DEFAULT_SIGLIP_CHECKPOINT!r}"
            )
        if not isinstance(self.params, dict):
            raise StopConfigError(
                f"stop_config.params={self.params!r} must be a mapping of method parameters, e.g. {{tau: 0.8}}"
            )
        cls = PRUNERS[self.method]
        allowed = cls.param_names()
        unknown = sorted(set(self.params) - set(allowed), key=str)
        if unknown:
            raise StopConfigError(
                f"stop_config.params has unknown key(s) {unknown} for method {self.method!r}; allowed: {allowed}"
            )
        specs = cls.param_specs()
        for name, value in self.params.items():
            _check(f"params.{name}", value, specs[name], f" (method {self.method!r})")
        if self.sink and cls.no_sink_reason:
            raise StopConfigError(f"stop_config.sink=true: {cls.no_sink_reason}")
        if self.sink and not cls.needs:
            raise StopConfigError(
                f"stop_config.sink=true needs a method that ranks tokens by attention; method {self.method!r} does "
                f"not. Allowed with sink: {sorted(k for k, v in PRUNERS.items() if v.needs)}"
            )
        if not self.sink and (self.mu_s is not None or self.mu_t is not None):
            unused = [f"{n}={getattr(self, n)!r}" for n in ("mu_s", "mu_t") if getattr(self, n) is not None]
            warnings.warn(
                f"stop_config: {', '.join(unused)} unused because sink=false (SToP is off); set sink: true to "
                "apply it, or drop it",
                UserWarning,
                stacklevel=4,
            )
        self.build_pruner()  # cross-parameter checks a method may add in its own __post_init__

    # ------------------------------------------------------------------ derived
    @property
    def is_identity(self) -> bool:
        """True when the config leaves the model untouched: method none, or retention 1.0 (every token kept; methods
        that would still merge or reorder at 1.0 are not run, so the logits stay bit-identical)."""
        return self.method == "none" or self.retention >= 1.0

    def resolved_sink(self) -> Sink | None:
        if not self.sink:
            return None
        default_mu_s, default_mu_t = PRUNERS[self.method].sink_weights
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
        unknown = sorted(set(data) - set(valid), key=str)
        if unknown:
            raise StopConfigError(f"stop_config has unknown key(s) {unknown}; valid keys: {valid}")
        if "method" not in data:
            raise StopConfigError(
                f"stop_config.method is missing (got keys {sorted(data, key=str)}); a config must name its method, "
                f"one of {sorted(PRUNERS)} ('none' for no pruning)"
            )
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> StopConfig:
        path = Path(path).expanduser()
        where = f"stop_config YAML file {str(path)!r}"
        if not path.exists():
            raise StopConfigError(f"{where} does not exist")
        if not path.is_file():
            raise StopConfigError(
                f"{where} is not a file ({'a folder' if path.is_dir() else 'not a regular file'})"
            )
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise StopConfigError(f"{where} cannot be read: {reason}") from None
        try:
            data = load_yaml(text)
        except _DuplicateKeyError as exc:
            raise StopConfigError(
                f"{where}: {exc}; a setting may appear once per mapping (otherwise the last one would silently win)"
            ) from None
        except yaml.YAMLError as exc:
            raise StopConfigError(f"{where} is malformed: {exc}") from None
        if data is None:
            raise StopConfigError(
                f"{where} is empty; it must set at least `method:` (one of {sorted(PRUNERS)}; 'none' for no pruning)"
            )
        if not isinstance(data, dict):
            raise StopConfigError(f"{where} must hold a mapping of settings, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except StopConfigError as exc:
            raise StopConfigError(f"{exc} (in {where})") from None

    @classmethod
    def from_preset(cls, name: str) -> StopConfig:
        presets = list_presets()
        if name not in presets:
            hint = ""
            if Path(name).exists():
                hint = f"; to use the local {'folder' if Path(name).is_dir() else 'file'} of that name, pass './{name}'"
            raise StopConfigError(
                f"stop_config preset {name!r} is unknown; available presets: {sorted(presets)} (a YAML path needs "
                f"a path separator, '~' or a .yaml/.yml suffix){hint}"
            )
        if Path(name).exists() and name not in _SHADOW_WARNED:
            _SHADOW_WARNED.add(name)
            warnings.warn(
                f"stop_config {name!r}: used the preset {name!r}, not the local "
                f"{'folder' if Path(name).is_dir() else 'file'} of the same name; a bare name is always a preset. "
                f"To read a local YAML file of that name, pass './{name}'",
                UserWarning,
                stacklevel=3,
            )
        return cls.from_yaml(presets[name])

    @classmethod
    def from_any(cls, value: StopConfig | dict | str | os.PathLike) -> StopConfig:
        """Accepts a StopConfig, a dict, a YAML path, a preset name, or "none" (method none).

        A string is a YAML path when it holds a path separator, starts with `~` (expanded) or ends in .yaml/.yml;
        otherwise it is a preset name, whatever the working directory holds (`./name` names a local file). A
        `pathlib.Path` is always a path."""
        if isinstance(value, StopConfig):
            return value
        if isinstance(value, dict):
            return cls.from_dict(value)
        if isinstance(value, str):
            if means_no_pruning(value):
                return cls(method="none")
            if is_config_path(value):
                return cls.from_yaml(value)
            return cls.from_preset(value)
        if isinstance(value, os.PathLike):
            return cls.from_yaml(value)
        raise StopConfigError(
            f"stop_config={value!r} has type {type(value).__name__}; allowed: StopConfig, dict, YAML path, preset name"
        )


#: bare names already warned about shadowing a preset (warned once per process).
_SHADOW_WARNED: set[str] = set()


def is_config_path(text: str) -> bool:
    """True when `text` names a YAML file (separator, `~` or .yaml/.yml suffix); else it is a preset name."""
    separators = {"/", os.sep, os.altsep} - {None}
    return text.endswith((".yaml", ".yml")) or text.startswith("~") or any(s in text for s in separators)


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


#: preset family -> what its presets reproduce (`stop-hf configs`; docs/configuration.md#preset-families). A preset's
#: family is the middle word of its name (`visionzip_baseline_r10` -> baseline); presets without one are stop-hf's own.
PRESET_FAMILIES: dict[str, str] = {
    "baseline": "the paper's baseline rows: the SToP code (rlqja1107/SToP @3bf998c) with SToP off, mu_s = mu_t = 0",
    "stop": "the paper's SToP rows: the SToP code with its default weights",
    "original": "the method's original repository, as its authors run it",
    "own": "stop-hf's own, no reference repository",
}


def preset_family(name: str) -> str:
    """The family (a key of `PRESET_FAMILIES`) of a preset name: `holitom_original_r10` -> "original"."""
    parts = name.split("_")
    return parts[1] if len(parts) == 3 and parts[1] in PRESET_FAMILIES else "own"
