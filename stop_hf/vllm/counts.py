"""The vLLM plugin's pure logic: serving options, prompt-time token counts, the exact-count rule and the position
channels. No vLLM or transformers imports here (the main test suite runs it without vLLM).

vLLM fixes a video's placeholder count when the prompt is processed, before the encoder runs, and nothing masks a
placeholder whose embedding would be missing. So every served video has a count known from its shape:
- methods whose count follows from the shape (none, uniform, random, visionzip) keep it: `target_count` runs the
  same pruner on a synthetic input of that shape (cached) and the model checks the real result has it;
- content-dependent methods (fastvid's rare +-1, holitom, flashvid, prunevid) need `count_rule: exact`: the target
  is the method's own budget (`reference_budget`) and `fit_count` trims the result by the method's own ranking score
  or tops it up with the next-ranked source tokens; how many tokens it changed is reported per video.
  Where the prompt fixes each temporal patch's count (Qwen3-VL's timestamped groups), the budget is split per temporal
  patch (`frame_targets`) and the same trim / top-up runs within each temporal patch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from typing import Any

import torch

from ..config import StopConfig, StopConfigError, means_no_pruning
from ..pruners import KIND_COPY, PruneInput, PruneResult

#: `count_rule` values: `shape` (default) serves only methods whose count follows from the shape; `exact` serves
#: every method at its reference budget (trim / top up, reported).
COUNT_RULES = ("shape", "exact")
#: methods whose kept count depends on the video's content (measured: docs/research/vllm.md)
CONTENT_COUNT_METHODS = ("fastvid", "flashvid", "holitom", "prunevid")
#: keys the plugin reads from `additional_config` and from `mm_processor_kwargs`
CONFIG_KEY, RULE_KEY = "stop_config", "stop_count_rule"
#: the architectures (vLLM class names) the plugin serves -> stop_hf adapter name
SERVED_ARCHITECTURES = {
    "Qwen2_5_VLForConditionalGeneration": "qwen2_5_vl",
    "Qwen2VLForConditionalGeneration": "qwen2_vl",
    "LlavaOnevisionForConditionalGeneration": "llava_onevision",
    "Qwen3VLForConditionalGeneration": "qwen3_vl",
    "Qwen3VLMoeForConditionalGeneration": "qwen3_vl_moe",
    "InternVLForConditionalGeneration": "internvl",
    "Qwen3_5ForConditionalGeneration": "qwen3_5",
    "Qwen3_5MoeForConditionalGeneration": "qwen3_5_moe",
}
#: 1-D position models: vLLM numbers the pruned prompt sequentially (HF's `compact`)
ONE_D_ARCHITECTURES = ("llava_onevision",)
#: one `<t seconds><|vision_start|>...<|vision_end|>` group per temporal patch: the prompt fixes every frame's count
PER_FRAME_ARCHITECTURES = ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe", "internvl")
#: 1-D position models served at HF's `original` positions: the plugin turns on vLLM's per-request position
#: bookkeeping (M-RoPE's, all three rows equal) and the LLM reads row 0 (InternVL: `Frame{i}:` labels separate the
#: groups, so HF refuses `compact` there)
ORIGINAL_1D_ARCHITECTURES = ("internvl",)


@dataclass(frozen=True)
class ServeOptions:
    """One video's pruning in vLLM: the validated StopConfig, the count rule and the architecture's position mode."""

    config: StopConfig
    count_rule: str = "shape"
    position_mode: str = "original"

    @property
    def active(self) -> bool:
        return not self.config.is_identity

    def to_json(self) -> str:
        return json.dumps(
            {
                "config": self.config.to_dict(),
                "count_rule": self.count_rule,
                "position_mode": self.position_mode,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> ServeOptions:
        data = json.loads(text)
        return cls(StopConfig.from_dict(data["config"]), data["count_rule"], data["position_mode"])

    def encode(self) -> torch.Tensor:
        """(L,) uint8: the options as a tensor, so they travel to the model as a per-video multimodal field."""
        return torch.tensor(list(self.to_json().encode()), dtype=torch.uint8)

    @classmethod
    def decode(cls, tensor: torch.Tensor) -> ServeOptions:
        return cls.from_json(bytes(tensor.to(torch.uint8).cpu().tolist()).decode())


def serve_options(stop_config: Any, count_rule: Any = None, arch: str = "qwen2_5_vl") -> ServeOptions:
    """Validates a stop config (preset, YAML path, dict, StopConfig, "none") and a count rule for `arch` the way the
    HF kwarg is validated; raises StopConfigError naming the field."""
    if isinstance(stop_config, str) and stop_config.lstrip().startswith("{"):
        try:  # a JSON mapping (the server's mm_processor_kwargs, the engine default)
            stop_config = json.loads(stop_config)
        except json.JSONDecodeError as exc:
            raise StopConfigError(f"stop_config={stop_config!r} is not valid JSON: {exc}") from None
    config = StopConfig(method="none") if means_no_pruning(stop_config) else StopConfig.from_any(stop_config)
    rule = "shape" if count_rule is None else count_rule
    if rule not in COUNT_RULES:
        raise StopConfigError(f"{RULE_KEY}={rule!r} is not allowed; allowed: {list(COUNT_RULES)}")
    if config.prune_images:
        raise StopConfigError(
            "stop_config.prune_images=true is not supported in vLLM; images pass unpruned (false)"
        )
    mode = config.position_mode
    if arch in ONE_D_ARCHITECTURES:
        # vLLM numbers a 1-D prompt sequentially: only HF's `compact` layout can be served exactly
        if mode == "original":
            raise StopConfigError(
                "stop_config.position_mode='original' is not supported by vLLM on 1-D position models (vLLM numbers "
                "the pruned prompt sequentially); allowed here: compact"
            )
        mode = "compact"
    elif arch in ORIGINAL_1D_ARCHITECTURES:
        if mode == "compact":
            raise StopConfigError(
                f"stop_config.position_mode='compact' is not supported for {arch} (its frame groups are separated by "
                "text, as in the HF patch); allowed: auto, original"
            )
        mode = "original"
    else:
        if mode == "compact":
            raise StopConfigError(
                "stop_config.position_mode='compact' is not supported for 3-D mRoPE positions; allowed: auto, original"
            )
        mode = "original"
    if not config.is_identity and config.method in CONTENT_COUNT_METHODS and rule != "exact":
        per_frame = (
            f" ({arch}'s prompt fixes each frame's (temporal patch's) count: the budget is split per temporal patch)"
            if arch in PER_FRAME_ARCHITECTURES
            else ""
        )
        raise StopConfigError(
            f"stop_config.method={config.method!r} keeps a content-dependent number of tokens, but vLLM fixes the "
            f"count before encoding; set {RULE_KEY}='exact' (trim by the method's score / top up with the "
            f"next-ranked tokens to the method's budget{per_frame}, reported per video)"
        )
    return ServeOptions(config, rule, mode)


def vision_depth(arch: str, hf_config: Any) -> tuple[int, int]:
    """(blocks of the checkpoint's vision tower, blocks vLLM builds and runs). vLLM's LLaVA-OV tower stops at
    `vision_feature_layer` (an int here: -1 builds every layer, -2 all but the last); Qwen towers run every block."""
    vision = hf_config.vision_config
    if arch in ONE_D_ARCHITECTURES:
        depth = int(vision.num_hidden_layers)
        feature = getattr(hf_config, "vision_feature_layer", -1)
        if not isinstance(feature, int):
            feature = max(f % depth for f in feature)
        return depth, feature % depth + 1
    depth = int(getattr(vision, "depth", None) or vision.num_hidden_layers)  # Qwen: depth; InternViT: layers
    return depth, depth


def served_fields(options: ServeOptions, arch: str, hf_config: Any) -> ServeOptions:
    """Checks a request's options against what vLLM's tower for `arch` computes, when the request is processed (an
    error there fails that request; raised in the encoder it takes the whole engine step down), and resolves
    `saliency_layer` against the checkpoint's vision depth (the HF path's indexing)."""
    config = options.config
    if not options.active:
        return options
    # the MAP-head fields are checked by stop_hf.vllm.siglip.check_map_head (served on LLaVA-OV, refused elsewhere)
    layer = config.saliency_layer
    if layer is None:
        return options
    depth, built = vision_depth(arch, hf_config)
    if not -depth <= layer < depth or layer % depth >= built:
        raise StopConfigError(
            f"stop_config.saliency_layer={layer} is not a vision block vLLM runs for this checkpoint: allowed "
            f"[{-depth}, {depth - 1}] resolving below {built} (vLLM's tower stops at its feature layer)"
        )
    return dataclasses.replace(options, config=dataclasses.replace(config, saliency_layer=layer % depth))


def reference_budget(options: ServeOptions, frames: int, tokens_per_frame: int) -> int:
    """The count a content-dependent method aims at: its per-frame budget times frames (fastvid, flashvid), or
    round(T * N * retention) (holitom, prunevid)."""
    pruner = options.config.build_pruner()
    if hasattr(pruner, "budgets"):
        return frames * int(pruner.budgets(tokens_per_frame)[0])
    return max(
        1, min(frames * tokens_per_frame, int(round(frames * tokens_per_frame * options.config.retention)))
    )


def target_count(options: ServeOptions, frames: int, grid: tuple[int, int]) -> int:
    """Grid tokens a video of `frames` x `grid` keeps in vLLM (trailing tokens such as LLaVA-OV's newline excluded)."""
    tokens = frames * grid[0] * grid[1]
    if not options.active:
        return tokens
    if options.config.method in CONTENT_COUNT_METHODS:
        return reference_budget(options, frames, grid[0] * grid[1])
    return _probe_count(options.to_json(), frames, grid)


def frame_targets(options: ServeOptions, frames: int, tokens_per_frame: int) -> list[int]:
    """(T,) a content-dependent method's budget split per frame (temporal patch): its per-frame budget (fastvid,
    flashvid), or round(T * N * retention) spread as evenly as it goes, earlier frames taking the remainder
    (holitom, prunevid, whose own counts per frame follow the content)."""
    pruner = options.config.build_pruner()
    if hasattr(pruner, "budgets"):
        return [int(pruner.budgets(tokens_per_frame)[0])] * frames
    base, extra = divmod(reference_budget(options, frames, tokens_per_frame), frames)
    return [base + 1] * extra + [base] * (frames - extra)


def frame_counts(options: ServeOptions, frames: int, grid: tuple[int, int]) -> list[int]:
    """(T,) tokens each frame (temporal patch) keeps in vLLM, for architectures whose prompt has one group per
    frame: the pruner's own per-frame counts on an input of that shape (shape-determined methods), or the budget
    split per frame (content-dependent methods, `count_rule: exact`)."""
    n = grid[0] * grid[1]
    if not options.active:
        return [n] * frames
    if options.config.method in CONTENT_COUNT_METHODS:
        return frame_targets(options, frames, n)
    return list(_probe_frame_counts(options.to_json(), frames, grid))


def kept_frame_counts(index: torch.Tensor, frames: int, n: int) -> list[int]:
    """(M,) flat t * N + n indices -> how many fall in each of the `frames` frames."""
    return torch.bincount(index.long().cpu() // n, minlength=frames).tolist()


def synthetic_input(frames: int, grid: tuple[int, int], width: int = 8) -> PruneInput:
    """A deterministic input of the given shape with every signal (the count of shape-determined methods)."""
    generator = torch.Generator().manual_seed(0)
    n = grid[0] * grid[1]
    attention = torch.rand(frames, n, generator=generator)
    return PruneInput(
        features=torch.randn(frames, n, width, generator=generator),
        attention=attention / attention.sum(dim=-1, keepdim=True),
        keys=torch.randn(frames, n, width, generator=generator),
        global_features=torch.randn(frames, width, generator=generator),
        grid=grid,
        attention_patches=n,
    )


@functools.lru_cache(maxsize=256)
def _probe_count(options_json: str, frames: int, grid: tuple[int, int]) -> int:
    options = ServeOptions.from_json(options_json)
    return int(options.config.build_pruner()(synthetic_input(frames, grid)).index.numel())


@functools.lru_cache(maxsize=256)
def _probe_frame_counts(options_json: str, frames: int, grid: tuple[int, int]) -> tuple[int, ...]:
    options = ServeOptions.from_json(options_json)
    index = options.config.build_pruner()(synthetic_input(frames, grid)).index
    return tuple(kept_frame_counts(index, frames, grid[0] * grid[1]))


def ranking_score(pruner: Any, x: PruneInput) -> torch.Tensor:
    """(T * N,) the score the method ranks source tokens by: its attention ranking (SToP's STSP-corrected when sink
    is on); the feature norm for methods without attention."""
    if x.attention is not None:
        return pruner.ranking(x)[0].reshape(-1).float()
    return x.features.float().norm(dim=-1).reshape(-1)


def rank_within_groups(values: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """(M,) values, (M,) group ids -> (M,) each value's rank in its group, largest first, ties to the lower index."""
    order = torch.sort(values, descending=True, stable=True).indices
    order = order[torch.sort(groups[order], stable=True).indices]
    sorted_groups = groups[order]
    first = torch.searchsorted(sorted_groups, sorted_groups, right=False)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device) - first
    return rank


def fit_count(
    result: PruneResult, x: PruneInput, pruner: Any, target: int | list[int]
) -> tuple[PruneResult, int]:
    """The result with exactly `target` tokens, and target minus the method's own count (0: unchanged).

    `target` is the whole video's count, or a list with each frame's count (the fit then runs within each frame,
    by the frame of each token's representative). Too many: the output tokens whose representatives rank lowest by
    the method's score are dropped (order kept). Too few: the highest-ranked source tokens not yet represented are
    appended as copies, in rank order. `info["count_rule"]` records the counts and how many were trimmed / added."""
    frames, n = x.features.shape[:2]
    targets = torch.tensor([target] if isinstance(target, int) else list(target), dtype=torch.long)
    group_tokens = frames * n if targets.numel() == 1 else n
    index = result.index
    groups = (index // group_tokens).cpu()
    counts = torch.bincount(groups, minlength=targets.numel())
    total, count = int(targets.sum()), int(index.numel())
    if torch.equal(counts, targets):
        fitted = PruneResult(result.embeds, index, result.kind, dict(result.info))
    else:
        score = ranking_score(pruner, x).cpu()
        keep = rank_within_groups(score[index.cpu()], groups) < targets[groups]
        keep = keep.to(index.device)
        deficit = (targets - counts).clamp(min=0)
        taken = torch.zeros_like(score, dtype=torch.bool)
        taken[index.cpu()] = True
        source_groups = torch.arange(score.numel()) // group_tokens
        rank = rank_within_groups(score.masked_fill(taken, float("-inf")), source_groups)
        chosen = (rank < deficit[source_groups]) & ~taken
        # appended in group order, then rank order (one group: the rank order)
        extra = chosen.nonzero().squeeze(-1)
        extra = extra[torch.sort(source_groups[extra] * score.numel() + rank[extra]).indices].to(index.device)
        flat = x.features.reshape(-1, x.features.shape[-1])
        fitted = PruneResult(
            torch.cat([result.embeds[keep], flat[extra].to(result.embeds.dtype)]),
            torch.cat([index[keep], extra]),
            torch.cat([result.kind[keep], torch.full_like(extra, KIND_COPY)]),
            dict(result.info),
        )
    trimmed, added = _trimmed_added(counts, targets)
    fitted.info["count_rule"] = {
        "reference_tokens": count,
        "served_tokens": total,
        "changed": total - count,
        "trimmed": trimmed,
        "added": added,
    }
    return fitted, total - count


def _trimmed_added(counts: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    """How many tokens the fit drops and appends, from the per-group counts and targets."""
    diff = targets - counts
    return int((-diff).clamp(min=0).sum()), int(diff.clamp(min=0).sum())


def placement_order(result: PruneResult, position_mode: str) -> torch.Tensor:
    """(M,) the order the result's tokens fill the video's placeholders: representative order (`original`, each at
    its representative's position, as HF's splice) or the pruner's own order (`compact`)."""
    if position_mode == "original":
        return torch.sort(result.index, stable=True).indices
    return torch.arange(result.index.numel(), device=result.index.device)


def relative_mrope(index: torch.Tensor, grid: tuple[int, int], t_factor: float) -> torch.Tensor:
    """(M,) flat t * N + n indices -> (M, 3) (t, h, w) offsets from the video's first position, as vLLM numbers an
    unpruned video (t scaled by seconds per grid x tokens per second, truncated)."""
    n = grid[0] * grid[1]
    t, rest = index // n, index % n
    t_pos = t if t_factor == 1.0 else (t.double() * t_factor).long()
    return torch.stack([t_pos, rest // grid[1], rest % grid[1]], dim=-1)


#: extra channels appended to every multimodal embedding while the plugin is active: (hi, lo) base-256 digits of the
#: t, h, w offsets (exact even in bf16) and a flag (1: the token's positions are corrected)
POSITION_CHANNELS = 7


def append_positions(embeds: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor:
    """(M, D) embeddings + (M, 3) offsets (None: no correction) -> (M, D + POSITION_CHANNELS)."""
    extra = embeds.new_zeros(embeds.shape[0], POSITION_CHANNELS)
    if offsets is not None:
        offsets = offsets.to(embeds.device)
        extra[:, 0:6:2] = torch.div(offsets, 256, rounding_mode="floor").to(embeds.dtype)
        extra[:, 1:6:2] = (offsets % 256).to(embeds.dtype)
        extra[:, 6] = 1
    return torch.cat([embeds, extra], dim=-1)


def split_positions(embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of `append_positions`: (embeddings (M, D), offsets (M, 3) int64, corrected (M,) bool)."""
    extra = embeds[:, -POSITION_CHANNELS:].float().round().long()
    offsets = extra[:, 0:6:2] * 256 + extra[:, 1:6:2]
    return embeds[:, :-POSITION_CHANNELS], offsets, extra[:, 6] == 1


def report_entry(
    options: ServeOptions,
    before: int,
    after: int,
    changed: int,
    seconds: float,
    trimmed: int = 0,
    added: int = 0,
) -> dict[str, Any]:
    """What the plugin logs per video (and `stop-hf bench --engine vllm` reads). `count_changed` is served minus
    the method's own count; `tokens_trimmed` / `tokens_added` count what the exact rule dropped / appended (both 0:
    the method's own selection is served)."""
    return {
        "method": options.config.method,
        "sink": options.config.sink,
        "retention": options.config.retention,
        "count_rule": options.count_rule,
        "tokens_before": before,
        "tokens_after": after,
        "count_changed": changed,
        "tokens_trimmed": trimmed,
        "tokens_added": added,
        "prune_seconds": round(seconds, 6),
    }
