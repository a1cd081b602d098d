"""Input checks that run where model inputs enter a patched model, so bad input is named as such instead of
surfacing later as a misleading error (or a silently wrong pruning) deep inside the hooks."""

from __future__ import annotations

from typing import Any

import torch

#: model-input kwargs that carry pixels.
PIXEL_INPUTS = ("pixel_values_videos", "pixel_values")


class StopInputError(ValueError):
    """Bad model input (not a bad config): names the input and what is wrong with it."""


def check_finite_pixels(name: str, pixels: Any) -> None:
    """Raises `StopInputError` when a floating-point pixel tensor holds NaN or inf (one fused reduction).

    Non-finite pixels make every attention score non-finite, so a pruner cannot rank tokens; unpatched, the model
    would silently return NaN logits."""
    if not isinstance(pixels, torch.Tensor) or not pixels.is_floating_point():
        return
    if bool(torch.isfinite(pixels).all()):
        return
    nan = int(torch.isnan(pixels).sum())
    inf = int(torch.isinf(pixels).sum())
    raise StopInputError(
        f"{name} holds non-finite values ({nan} NaN, {inf} inf of {pixels.numel()}, shape {tuple(pixels.shape)}); "
        "check the frames and the processor (e.g. a division by a zero std, or a corrupt decode)"
    )


def pixel_check_pre_hook(module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
    """A forward pre-hook (with_kwargs) for the multimodal base model: checks every pixel input it receives."""
    for name in PIXEL_INPUTS:
        check_finite_pixels(name, kwargs.get(name))
    return None


def check_finite_videos(pixels: Any, records: list[Any]) -> None:
    """Raises `StopInputError` when a video's encoder output (its features or the signals captured for pruning)
    holds NaN or inf although its pixels are finite: the pixel values overflow inside the vision tower (e.g. pixels
    scaled far outside the processor's range). Pruning would rank or match non-finite tokens; unpatched, the model
    would silently return NaN logits."""
    for number, record in enumerate(records):
        for name in ("features", "attention", "keys", "global_features"):
            values = getattr(record, name, None)
            if not isinstance(values, torch.Tensor) or not values.is_floating_point():
                continue
            if bool(torch.isfinite(values).all()):
                continue
            nan, inf = int(torch.isnan(values).sum()), int(torch.isinf(values).sum())
            largest = (
                float(pixels.abs().max()) if isinstance(pixels, torch.Tensor) and pixels.numel() else 0.0
            )
            what = "features" if name == "features" else f"{name} signal"
            raise StopInputError(
                f"the vision tower's {what} of video {number} hold non-finite values ({nan} NaN, {inf} inf of "
                f"{values.numel()}) although pixel_values_videos are finite (largest |value| {largest:.3g}): the "
                "pixels overflow inside the vision encoder. Pass pixels as the model's processor makes them "
                "(normalised, about [-1, 1] or [-3, 3]), in a dtype that holds the encoder's activations "
                "(float32 or bfloat16)"
            )
