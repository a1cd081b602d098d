"""The pure pruner interface: tensors in, tensors out. Nothing here knows about transformers."""

from __future__ import annotations

import math
import numbers
import threading
import warnings
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch

from ..sink import Sink

#: Output token kinds.
KIND_COPY = 0  # a source token copied unchanged
KIND_MERGED = 1  # a merged / aggregated token


@dataclass
class PruneInput:
    """Everything a pruner may read for ONE video.

    features:        (T, N, D) the tokens the LLM would see, raster order inside each frame.
    attention:       (T, N) mean attention each token receives at the saliency layer, or None.
    keys:            (T, N, Dk) head-averaged keys of that layer, or None.
    global_features: (T, Dg) one descriptor per frame, or None.
    grid:            (h, w) with h * w == N.
    attention_patches: number of keys the saliency softmax ran over per frame (729 for LLaVA-OV). The SToP
        weight mu_s is calibrated for 729 (attention ~ 1/729 per token); it is rescaled by 729 / attention_patches
        so that other encoders carry the same relative penalty.
    """

    features: torch.Tensor
    attention: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    global_features: torch.Tensor | None = None
    grid: tuple[int, int] | None = None
    attention_patches: int = 729

    def __post_init__(self) -> None:
        if self.features.dim() != 3:
            raise ValueError(f"PruneInput.features must be (T, N, D), got shape {tuple(self.features.shape)}")
        t, n, _ = self.features.shape
        if self.grid is None:
            side = int(round(n**0.5))
            if side * side != n:
                raise ValueError(f"PruneInput.grid is required for a non-square token count N={n}")
            self.grid = (side, side)
        self.grid = (int(self.grid[0]), int(self.grid[1]))
        if self.grid[0] * self.grid[1] != n:
            raise ValueError(f"PruneInput.grid={self.grid} does not multiply to N={n}")
        for name, want in (("attention", (t, n)), ("keys", (t, n)), ("global_features", (t,))):
            value = getattr(self, name)
            if value is not None and tuple(value.shape[: len(want)]) != want:
                raise ValueError(
                    f"PruneInput.{name} has shape {tuple(value.shape)}; expected leading dims {want} "
                    f"to match features {tuple(self.features.shape)}"
                )

    @property
    def num_frames(self) -> int:
        return self.features.shape[0]

    @property
    def tokens_per_frame(self) -> int:
        return self.features.shape[1]

    def require(self, *names: str, method: str) -> None:
        """Raise a clear error when a signal the method needs is missing."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(
                f"method {method!r} needs PruneInput fields {missing}, which the caller did not provide"
            )


@dataclass
class PruneResult:
    """The pruned video.

    embeds: (M, D) output tokens in the method's reference order.
    index:  (M,) int64 flat source index t * N + n of each output token's representative.
    kind:   (M,) int64, KIND_COPY or KIND_MERGED.
    info:   method diagnostics for reports and visualisation (windows, segments, sink score, ...).
    """

    embeds: torch.Tensor
    index: torch.Tensor
    kind: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind is None:
            self.kind = torch.zeros_like(self.index)


#: dataclass field metadata key holding a method parameter's `ParamSpec`.
PARAM_SPEC = "stop_hf_param"


@dataclass(frozen=True)
class ParamSpec:
    """The type and range of one method parameter, declared once beside its field (see `param`).

    kind: bool, int or float (floats also accept integers; every number must be finite). `low`/`high` bound the
    value (None: unbounded), inclusive unless `low_open`/`high_open`. `optional` also allows None.
    """

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False

    def describe(self) -> str:
        """What is allowed, e.g. 'a number in [0, 1]', 'an integer >= 1', 'true or false'."""
        if self.kind is bool:
            text = "true or false"
        else:
            noun = "an integer" if self.kind is int else "a finite number"
            low, high = (self._number(v) for v in (self.low, self.high))
            if self.low is not None and self.high is not None:
                left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
                text = f"{noun} in {left}{low}, {high}{right}"
            elif self.low is not None:
                text = f"{noun} {'>' if self.low_open else '>='} {low}"
            elif self.high is not None:
                text = f"{noun} {'<' if self.high_open else '<='} {high}"
            else:
                text = noun
        return f"{text} or null" if self.optional else text

    def _number(self, value: float | None) -> str:
        if value is None:
            return ""
        return str(int(value)) if self.kind is int else f"{value:g}"

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if self.kind is bool:
            return isinstance(value, bool)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if self.kind is int and not isinstance(value, numbers.Integral):
            return False
        number = float(value)
        if not math.isfinite(number):
            return False
        if self.low is not None and (number <= self.low if self.low_open else number < self.low):
            return False
        return self.high is None or not (number >= self.high if self.high_open else number > self.high)


def param(
    default: Any,
    kind: type,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> Any:
    """A pruner parameter field with its declared type and range: `tau: float = param(0.8, float, 0, 1)`."""
    spec = ParamSpec(kind, low, high, low_open, high_open, optional)
    return field(default=default, metadata={PARAM_SPEC: spec})


def _inferred_spec(f: Any) -> ParamSpec:
    """For a field declared without `param`: the type of its default (or its annotation when the default is None),
    any finite value."""
    annotation = str(f.type)
    optional = f.default is None or "None" in annotation
    for kind in (bool, int, float):
        if type(f.default) is kind or (f.default is None and kind.__name__ in annotation):
            return ParamSpec(kind, optional=optional)
    return ParamSpec(float, optional=optional)


@dataclass
class Pruner:
    """Base class: one small dataclass per method holding its parameters, with a single `prune` method.

    Subclasses declare their parameters as dataclass fields and set `name`. `sink` is None for the original
    method and a `Sink` for the SToP variant.
    """

    name: ClassVar[str] = ""
    #: signals the method reads besides features; the patch modules compute only these.
    needs: ClassVar[tuple[str, ...]] = ()
    #: why the method has no SToP variant (shown when a config asks for `sink: true`); empty when it has one or
    #: when it simply ranks no tokens by attention.
    no_sink_reason: ClassVar[str] = ""
    #: SToP's default (mu_s, mu_t) for this method, from the SToP reference code; (0, 0) where it has no variant.
    sink_weights: ClassVar[tuple[float, float]] = (0.0, 0.0)

    retention: float = 1.0
    sink: Sink | None = None

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raises ValueError naming the first parameter outside its declared type and range."""
        problem = self.problem("retention", self.retention)
        if problem is None and self.sink is not None and not isinstance(self.sink, Sink):
            problem = f"sink={self.sink!r} must be a Sink or None"
        for name in self.param_names():
            problem = problem or self.problem(name, getattr(self, name))
        if problem:
            raise ValueError(f"{self.name} {problem}")

    @classmethod
    def param_specs(cls) -> dict[str, ParamSpec]:
        """Method parameter -> its declared `ParamSpec` (inferred from the default for undeclared fields)."""
        return {
            f.name: f.metadata.get(PARAM_SPEC) or _inferred_spec(f)
            for f in fields(cls)
            if f.name not in ("retention", "sink")
        }

    @classmethod
    def problem(cls, name: str, value: Any) -> str | None:
        """None when `value` is allowed for parameter `name`, else '<name>=<value> must be <what is allowed>'."""
        spec = RETENTION_SPEC if name == "retention" else cls.param_specs().get(name)
        if spec is None:
            return f"has no parameter {name!r}; parameters: {cls.param_names()}"
        if spec.accepts(value):
            return None
        return f"{name}={value!r} must be {spec.describe()}"

    def prune(self, x: PruneInput) -> PruneResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x: PruneInput) -> PruneResult:
        return self.prune(x)

    def ranking(self, x: PruneInput) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The score tokens are ranked by, (T, N) float32, and the sink score (N,) or None.

        Without sink this is the attention itself; with sink it is STSP's `attention - mu_s' * s`.
        """
        attention = x.attention.float()
        if self.sink is None:
            return attention, None
        sink_score = self.sink.score(attention)
        return self.sink.stsp(attention, sink_score, x.attention_patches), sink_score

    @classmethod
    def param_names(cls) -> list[str]:
        """Method-specific parameter names (everything but retention and sink)."""
        return [f.name for f in fields(cls) if f.name not in ("retention", "sink")]


#: where the generalisations are documented: docs/configuration.md, section "Where the reference crashes".
GENERALISATIONS_DOC = "docs/configuration.md#where-the-reference-crashes"

#: every case where a reference implementation crashes and stop-hf returns an output instead: case -> docs anchor
#: (a heading under "Where the reference crashes" in docs/configuration.md).
GENERALISATIONS: dict[str, str] = {
    "visionzip_no_contextual": "visionzip-no-contextual-tokens",
    "visionzip_target_past_end": "visionzip-sink-target-past-the-end",
    "fastvid_fewer_frames_than_c": "fastvid-fewer-frames-than-c",
    "fastvid_no_anchors": "fastvid-d-0",
    "holitom_baseline_d_split": "holitom-baseline-d-split",
    "flashvid_no_temporal_merge": "flashvid-temporal-threshold-1",
    "flashvid_full_budget": "flashvid-full-budget",
    "prunevid_short_video": "prunevid-fewer-than-7-frames",
    "prunevid_grid": "prunevid-n-196",
}

_warned: set[str] = set()
_warned_lock = threading.Lock()


def generalise(info: dict[str, Any], case: str, detail: str) -> None:
    """Record, in `info["generalisations"]` (and so in `last_prune_report`), that this call ran `case`: an input where
    the reference code crashes and stop-hf returns the output documented at GENERALISATIONS[case]. The first time a
    case occurs in the process, a UserWarning names it and the docs section."""
    anchor = GENERALISATIONS[case]
    entry = {"case": case, "detail": detail, "docs": f"docs/configuration.md#{anchor}"}
    if entry not in info.setdefault("generalisations", []):
        info["generalisations"].append(entry)
    with _warned_lock:
        first = case not in _warned
        _warned.add(case)
    if first:
        warnings.warn(
            f"stop_hf: {case}: {detail}. The reference code crashes on this input; stop-hf generalises it as "
            f"documented in docs/configuration.md#{anchor} (warned once per process; recorded in "
            "last_prune_report's info['generalisations'])",
            UserWarning,
            stacklevel=3,
        )


#: retention, shared by every method: the fraction of video tokens kept.
RETENTION_SPEC = ParamSpec(float, 0.0, 1.0, low_open=True)


def copy_result(x: PruneInput, flat_index: torch.Tensor, **info: Any) -> PruneResult:
    """A result made only of source tokens, copied unchanged, at `flat_index` (M,) in the given order."""
    flat = x.features.reshape(-1, x.features.shape[-1])
    flat_index = flat_index.to(device=flat.device, dtype=torch.long)
    return PruneResult(
        embeds=flat[flat_index], index=flat_index, kind=torch.zeros_like(flat_index), info=info
    )


def topk_lowest_index(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest values along the last dim; ties go to the lower index. (..., N) -> (..., k)."""
    if k <= 0:
        return scores.new_zeros(scores.shape[:-1] + (0,), dtype=torch.long)
    # A stable descending sort keeps equal values in index order, so ties resolve to the lower index.
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


#: method name -> pruner class; filled by `@register_pruner` as each method's module is imported.
PRUNERS: dict[str, type[Pruner]] = {}


def register_pruner(cls: type[Pruner]) -> type[Pruner]:
    """Class decorator: registers a pruner under its `name`. A second class under a taken name raises."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no `name`; set `name: ClassVar[str]` before registering it")
    registered = PRUNERS.get(cls.name)
    if registered is not None and (registered.__module__, registered.__qualname__) != (
        cls.__module__,
        cls.__qualname__,
    ):
        raise ValueError(
            f"pruner name {cls.name!r} is already registered by {registered.__module__}.{registered.__qualname__}; "
            f"cannot register {cls.__module__}.{cls.__qualname__} under it"
        )
    PRUNERS[cls.name] = cls
    return cls
