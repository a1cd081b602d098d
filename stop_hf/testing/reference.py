"""The reference oracles. `reference_logits` picks the one the architecture names (`ArchAdapter.lm_reference`).

The masked reference: a full-length forward of the UNPATCHED model in which dropped video tokens are masked
out as keys, merged tokens replace their representative's embedding, and every token keeps its original position.
A pruned prefill (position_mode='original') must reproduce its logits at the kept positions.

The positions are whatever the unpatched model hands its language model: 1-D ids for LLaVA-OV, the (3, B, L) mRoPE
ids of `get_rope_index` for Qwen2.5-VL (which needs `mm_token_type_ids`, as its processor returns them).

The shortened reference (`shortened_reference_logits`): the unpatched language model fed exactly the kept tokens of each
row (kept embeddings, merged tokens at their representatives, each at its original position), nothing masked. It holds
for any LLM, including hybrid ones whose linear-attention layers carry a recurrent state through every position and
ignore a 4-D mask (Qwen3.5), where the masked reference is no oracle."""

from __future__ import annotations

from typing import Any

import torch


def _per_token_lm_kwargs(model: Any) -> tuple[str, ...]:
    """The architecture's other per-token language-model kwargs (Qwen3-VL's deepstack injection): the reference
    passes them on at full length, dropped positions included."""
    from stop_hf.patches import adapter_for

    return adapter_for(model).pruned_lm_kwargs


def _require_embeddings(report: list[dict[str, Any]]) -> None:
    if any("result" not in entry for entry in report):
        raise ValueError(
            "the masked reference needs the pruned embeddings: run the pruned call inside "
            "`with stop_hf.report_embeddings():`"
        )


def capture_lm_inputs(model: Any, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Runs the model once and returns what its inner language model received (embeds, mask, positions, and the
    architecture's other per-token arguments)."""
    captured: dict[str, torch.Tensor] = {}
    names = ("inputs_embeds", "attention_mask", "position_ids", *_per_token_lm_kwargs(model))

    def grab(module, args, kwargs):
        captured.update({k: kwargs.get(k) for k in names})

    handle = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    return captured


def masked_reference_logits(
    unpatched_model: Any, inputs: dict[str, Any], report: list[dict[str, Any]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, L, V) of the masked/merged full-length reference, and the kept mask (B, L) in prompt order.

    `report` is `stop_hf.last_prune_report(patched_model)` for the same inputs.
    """
    output, keep = masked_reference_output(unpatched_model, inputs, report)
    with torch.no_grad():
        return unpatched_model.lm_head(output.last_hidden_state), keep


def masked_reference_output(
    unpatched_model: Any, inputs: dict[str, Any], report: list[dict[str, Any]], **lm_kwargs: Any
) -> tuple[Any, torch.Tensor]:
    """The masked/merged full-length reference's language-model output (`lm_kwargs`, e.g.
    `output_attentions=True`, go to the language model) and the kept mask (B, L)."""
    lm_inputs, embeds, pad, positions = _unpruned_lm_inputs(unpatched_model, inputs)
    embeds = embeds.clone()
    batch, length, _ = embeds.shape
    keep = torch.ones(batch, length, dtype=torch.bool)
    _require_embeddings(report)
    for entry in report:
        result = entry["result"]
        for (row, _), grid in zip(entry["placements"], entry["positions"], strict=True):
            keep[row, grid] = False
            keep[row, grid[result.index]] = True
            embeds[row, grid[result.index]] = result.embeds.to(embeds.dtype)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    attend = causal[None] & keep[:, None, :] & pad[:, None, :]
    attend = attend | torch.eye(length, dtype=torch.bool)[None]
    mask = attend[:, None]
    if lm_kwargs.get("output_attentions"):  # eager attention adds the mask: it must be additive, not boolean
        mask = torch.zeros(mask.shape, dtype=embeds.dtype).masked_fill(~mask, torch.finfo(embeds.dtype).min)
    with torch.no_grad():
        per_token = {k: v for k, v in lm_inputs.items() if k in _per_token_lm_kwargs(unpatched_model)}
        output = unpatched_model.model.language_model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, **{**per_token, **lm_kwargs}
        )
    return output, keep & pad


def pruned_logits(model: Any, inputs: dict[str, Any]) -> torch.Tensor:
    """Logits (B, L', V) of a patched model in PRUNED coordinates (the sequence its language model ran), for
    comparing with `spliced_reference_logits`; `model(**inputs).logits` is in prompt coordinates."""
    captured: dict[str, torch.Tensor] = {}

    def grab(module, args, output):
        captured["hidden"] = output.last_hidden_state

    handle = model.model.language_model.register_forward_hook(grab)
    try:
        with torch.no_grad():
            model(**inputs)
            return model.lm_head(captured["hidden"])
    finally:
        handle.remove()


def identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical, NaN included (a pruned forward fills dropped prompt positions with NaN)."""
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    return torch.equal(nan_a, nan_b) and torch.equal(a.masked_fill(nan_a, 0), b.masked_fill(nan_b, 0))


def kept_logits(logits: torch.Tensor, keep: torch.Tensor) -> list[torch.Tensor]:
    """Per row, the logits at kept positions, in order: a list of (K_b, V)."""
    return [logits[b][keep[b]] for b in range(logits.shape[0])]


def spliced_reference_logits(
    unpatched_model: Any, inputs: dict[str, Any], report: list[dict[str, Any]]
) -> torch.Tensor:
    """Logits (1, L', V) of the UNPATCHED language model fed the pruned sequence built by hand from `report`:
    each video's output tokens in the method's reference order, sequential positions (position_mode='compact').
    Batch size 1."""
    _require_embeddings(report)
    lm_inputs = capture_lm_inputs(unpatched_model, inputs)
    embeds = lm_inputs["inputs_embeds"][0]
    placements = sorted(
        ((start, entry) for entry in report for row, start in entry["placements"] if row == 0),
        key=lambda p: p[0],
    )
    pieces, previous = [], 0
    for start, entry in placements:
        grid_tokens = entry["frames"] * entry["grid"][0] * entry["grid"][1]
        video_end = start + entry["tokens_before"]
        pieces += [
            embeds[previous:start],
            entry["result"].embeds.to(embeds.dtype),
            embeds[start + grid_tokens : video_end],
        ]
        previous = video_end
    pieces.append(embeds[previous:])
    sequence = torch.cat(pieces)[None]
    with torch.no_grad():
        hidden = unpatched_model.model.language_model(
            inputs_embeds=sequence,
            attention_mask=torch.ones(sequence.shape[:2], dtype=torch.long),
            position_ids=torch.arange(sequence.shape[1])[None],
        ).last_hidden_state
        return unpatched_model.lm_head(hidden)


def _kept_row(
    report: list[dict[str, Any]], row: int, embeds: torch.Tensor, real: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One row of the pruned prefill in `position_mode='original'`, built by hand from `report`: (columns (K,) the
    prompt column of every emitted token, embeds (K, D)), sorted by column, each video's tokens in representative
    order (as `stop_hf.hooks.splice_row` emits them)."""
    fixed = real.clone()
    columns, values = [], []
    for entry in report:
        result = entry["result"]
        for (placed_row, _), grid in zip(entry["placements"], entry["positions"], strict=True):
            if placed_row != row:
                continue
            fixed[grid] = False
            order, perm = torch.sort(result.index, stable=True)
            columns.append(grid[order])
            values.append(result.embeds[perm].to(embeds.dtype))
    kept = fixed.nonzero().squeeze(-1)
    columns, values = torch.cat([kept, *columns]), torch.cat([embeds[kept], *values])
    perm = torch.argsort(columns, stable=True)
    return columns[perm], values[perm]


def shortened_reference_logits(
    unpatched_model: Any, inputs: dict[str, Any], report: list[dict[str, Any]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, L, V) in prompt coordinates of the UNPATCHED language model run, row by row, on exactly the kept
    tokens (no padding, no mask): kept embeddings, merged tokens written at their representatives, every token at its
    original position; NaN where nothing was computed. Also the kept mask (B, L). Where two tokens share a column
    (FlashVID), the later one's logits are shown, as in a pruned forward.

    `report` is `stop_hf.last_prune_report(patched_model)` for the same inputs (inside `report_embeddings()`)."""
    if _per_token_lm_kwargs(unpatched_model):
        raise NotImplementedError(
            "the shortened reference does not slice per-token language-model kwargs "
            f"({_per_token_lm_kwargs(unpatched_model)}); use masked_reference_logits"
        )
    _require_embeddings(report)
    lm_inputs, embeds, pad, positions = _unpruned_lm_inputs(unpatched_model, inputs)
    batch, length, _ = embeds.shape
    out = torch.full((batch, length, unpatched_model.lm_head.out_features), float("nan"))
    keep = torch.zeros(batch, length, dtype=torch.bool)
    for b in range(batch):
        columns, row = _kept_row(report, b, embeds[b], pad[b])
        row_positions = positions[..., b : b + 1, columns]
        with torch.no_grad():
            hidden = unpatched_model.model.language_model(
                inputs_embeds=row[None],
                attention_mask=torch.ones(1, columns.numel(), dtype=torch.long),
                position_ids=row_positions,
            ).last_hidden_state
            logits = unpatched_model.lm_head(hidden)[0].float()
        out[b, columns] = logits  # a repeated column keeps its last write: index_put_ in order on CPU
        keep[b, columns] = True
    return out, keep


def reference_logits(
    unpatched_model: Any, inputs: dict[str, Any], report: list[dict[str, Any]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The architecture's reference (`ArchAdapter.lm_reference`): masked or shortened; (B, L, V) logits and the kept
    mask (B, L)."""
    from stop_hf.patches import adapter_for

    kind = adapter_for(unpatched_model).lm_reference
    if kind == "shortened":
        return shortened_reference_logits(unpatched_model, inputs, report)
    if kind == "masked":
        return masked_reference_logits(unpatched_model, inputs, report)
    raise ValueError(f"lm_reference={kind!r}; allowed: masked, shortened")


def _unpruned_lm_inputs(
    unpatched_model: Any, inputs: dict[str, Any]
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor, torch.Tensor]:
    """The unpruned language-model inputs of `inputs`: the captured kwargs, `inputs_embeds` (B, L, D), the padding
    mask (B, L) bool and the positions (B, L) or (C, B, L) (1-D arange when the model passes none)."""
    lm_inputs = capture_lm_inputs(unpatched_model, inputs)
    embeds = lm_inputs["inputs_embeds"]
    batch, length, _ = embeds.shape
    pad = lm_inputs.get("attention_mask")
    pad = torch.ones(batch, length, dtype=torch.bool) if pad is None else pad.bool()
    positions = lm_inputs.get("position_ids")
    if positions is None:
        positions = torch.arange(length)[None].expand(batch, length)
    return lm_inputs, embeds, pad, positions
