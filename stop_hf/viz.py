"""What a pruner kept, drawn: kept-token overlays on the frames, the SToP sink-score heatmap, tokens kept per frame.

Everything here is a pure function of frames and `last_prune_report` entries (see `stop_hf.loading`), so notebooks
can draw their own pictures from the same data:

- `summarize(entry)`: the report entry as plain Python (T, N, grid, kept (t, n) pairs, merged groups, sink score,
  windows / segments, timings);
- `frames_as_seen(frames, grid, ...)`: the sampled frames at the resolution the model saw them, one per token frame;
- `overlay(images, entry)`: kept tokens outlined, merged tokens shaded by cluster (numpy only, exact pixels);
  `outlined_tokens(images, grid)` reads the outlined set back from pixels, so a test can check that the picture
  marks exactly the report's tokens;
- `kept_tokens_figure`, `sink_score_figure`, `tokens_per_frame_figure`: matplotlib figures (the `viz` extra).

Token geometry. Token `(t, n)` of a video with grid `(h, w)` covers row `n // w`, column `n % w` of the frame as the
model saw it, split into an even `h x w` lattice:
- LLaVA-OneVision: each frame is resized to 384x384; SigLIP's 27x27 patches are pooled to 14x14, so one token covers
  ~27.4 px. Token frame t is sampled frame t.
- Qwen2.5-VL: frames are resized to multiples of 28 px; one token is a 2x2 merge unit = 28x28 px; token frame t is
  the temporal patch of sampled frames 2t and 2t+1 (the first one is shown).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

#: Outline colour of kept tokens (pure green, never produced by the shading).
OUTLINE = (0, 255, 0)
#: Outline thickness in pixels, drawn inside each token's box.
THICKNESS = 2
#: Saved figures use this resolution; a figure of (w, h) inches is saved as (w * DPI, h * DPI) pixels.
DPI = 100

# 20 distinct colours for merged clusters (hand-picked, saturated, none equal to OUTLINE).
_PALETTE = np.array(
    [
        (31, 119, 180), (255, 127, 14), (214, 39, 40), (148, 103, 189), (140, 86, 75),
        (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232),
        (255, 187, 120), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210),
        (199, 199, 199), (219, 219, 141), (158, 218, 229), (57, 59, 121), (132, 60, 57),
    ],
    dtype=np.float32,
)  # fmt: skip


class VizDependencyError(ImportError):
    """matplotlib is missing."""


# ---------------------------------------------------------------------------------------------------- data
def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def kept_tokens(entry: dict[str, Any]) -> set[tuple[int, int]]:
    """The (token frame t, spatial position n) of every output token's representative: what the overlay outlines."""
    h, w = entry["grid"]
    n = h * w
    return {(int(i) // n, int(i) % n) for i in _numpy(entry["index"]).reshape(-1)}


def merged_groups(entry: dict[str, Any]) -> dict[int, list[tuple[int, int]]]:
    """Output row -> the source tokens (t, n) merged into it, for every merged output token (kind 1).

    Uses the method's `info["assignment"]` (source token -> output row); methods without it report no groups.
    """
    info = entry.get("info") or {}
    assignment = info.get("assignment")
    if assignment is None:
        return {}
    h, w = entry["grid"]
    n = h * w
    kind = _numpy(entry["kind"]).reshape(-1)
    assignment = _numpy(assignment).reshape(-1)
    merged_rows = set(np.nonzero(kind == 1)[0].tolist())
    groups: dict[int, list[tuple[int, int]]] = {}
    for source in np.nonzero(assignment >= 0)[0].tolist():
        row = int(assignment[source])
        if row in merged_rows:
            groups.setdefault(row, []).append((source // n, source % n))
    return dict(sorted(groups.items()))


def sink_scores(entry: dict[str, Any], gamma: float = 1.1) -> np.ndarray | None:
    """(N,) SToP sink score: the pruner's own (`info["sink_score"]`) or, for a baseline run, computed from the
    saliency attention the same way. None when the method used no attention."""
    info = entry.get("info") or {}
    if info.get("sink_score") is not None:
        return _numpy(info["sink_score"]).astype(np.float32).reshape(-1)
    if entry.get("attention") is None:
        return None
    from .sink import sink_score

    return _numpy(sink_score(torch.as_tensor(entry["attention"]).float(), gamma)).reshape(-1)


def tokens_per_frame(entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(copied, merged) output tokens per token frame, counted at the frame of each token's representative."""
    h, w = entry["grid"]
    frames = int(entry["frames"])
    frame_of = _numpy(entry["index"]).reshape(-1) // (h * w)
    kind = _numpy(entry["kind"]).reshape(-1)
    copied = np.bincount(frame_of[kind == 0], minlength=frames)[:frames]
    merged = np.bincount(frame_of[kind == 1], minlength=frames)[:frames]
    return copied, merged


def bands(entry: dict[str, Any]) -> tuple[str, list[tuple[int, int]]] | None:
    """HoliTom windows or FastVID segments as ("windows" | "segments", [(start, end)] inclusive), else None."""
    info = entry.get("info") or {}
    for key in ("windows", "segments"):
        if info.get(key):
            return key, [(int(a), int(b)) for a, b in info[key]]
    return None


def summarize(entry: dict[str, Any], gamma: float = 1.1) -> dict[str, Any]:
    """One `last_prune_report` entry as plain Python (JSON-ready), for notebooks and `stop-hf viz`'s report.json."""
    h, w = entry["grid"]
    sink = sink_scores(entry, gamma)
    band = bands(entry)
    copied, merged = tokens_per_frame(entry)
    return {
        "T": int(entry["frames"]),
        "N": int(h * w),
        "grid": [int(h), int(w)],
        "tokens_before": int(entry["tokens_before"]),
        "tokens_after": int(entry["tokens_after"]),
        "kept": sorted([t, n] for t, n in kept_tokens(entry)),
        "index": [int(i) for i in _numpy(entry["index"]).reshape(-1)],
        "kind": [int(k) for k in _numpy(entry["kind"]).reshape(-1)],
        "merged_groups": {
            str(row): [list(tn) for tn in group] for row, group in merged_groups(entry).items()
        },
        "sink_score": None if sink is None else [round(float(s), 6) for s in sink],
        "sink_score_source": "pruner"
        if (entry.get("info") or {}).get("sink_score") is not None
        else "attention",
        "bands": None if band is None else {"kind": band[0], "ranges": [list(r) for r in band[1]]},
        "kept_per_frame": [int(c) for c in copied],
        "merged_per_frame": [int(m) for m in merged],
        "timings": {
            "signal_seconds": float(entry.get("signal_seconds") or 0.0),
            "prune_seconds": float(entry.get("prune_seconds") or 0.0),
        },
    }


# ---------------------------------------------------------------------------------------------------- pixels
def seen_size(grid: tuple[int, int], arch: str) -> tuple[int, int]:
    """(height, width) of a frame as the model saw it (the architecture's adapter knows its geometry)."""
    from .patches import architecture

    return architecture(arch).seen_size(grid)


def frames_as_seen(
    frames: np.ndarray, grid: tuple[int, int], arch: str, token_frames: int | None = None
) -> np.ndarray:
    """(T', H', W', 3) uint8: for each token frame, its (first) sampled frame resized to the model's input size."""
    from PIL import Image

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got shape {frames.shape}")
    from .patches import architecture

    patch = architecture(arch).temporal_patch
    count = token_frames if token_frames is not None else -(-len(frames) // patch)
    height, width = seen_size(grid, arch)
    out = np.empty((count, height, width, 3), dtype=np.uint8)
    for t in range(count):
        frame = frames[min(t * patch, len(frames) - 1)]
        out[t] = np.asarray(Image.fromarray(frame.astype(np.uint8)).resize((width, height), Image.BICUBIC))
    return out


def token_box(n: int, grid: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Pixel box (y0, y1, x0, x1), end-exclusive, of spatial token n on a frame of `size` (H, W)."""
    h, w = grid
    height, width = size
    r, c = divmod(int(n), w)
    y0, y1 = round(r * height / h), round((r + 1) * height / h)
    x0, x1 = round(c * width / w), round((c + 1) * width / w)
    return y0, y1, x0, x1


def overlay(
    images: np.ndarray, entry: dict[str, Any], shade_alpha: float = 0.5, dim: float = 0.55
) -> np.ndarray:
    """Kept tokens outlined in `OUTLINE`, the sources of each merged token shaded in its cluster colour, and the
    rest dimmed. images: (T', H, W, 3) from `frames_as_seen`; returns a new uint8 array of the same shape."""
    images = np.asarray(images)
    frames = int(entry["frames"])
    if images.ndim != 4 or images.shape[0] != frames:
        raise ValueError(
            f"overlay: images {images.shape} must be (T={frames}, H, W, 3) for this report entry"
        )
    grid = tuple(entry["grid"])
    size = images.shape[1:3]
    out = images.astype(np.float32) * dim
    for row, group in merged_groups(entry).items():
        colour = _PALETTE[row % len(_PALETTE)]
        for t, n in group:
            y0, y1, x0, x1 = token_box(n, grid, size)
            region = images[t, y0:y1, x0:x1].astype(np.float32)
            out[t, y0:y1, x0:x1] = (1 - shade_alpha) * region + shade_alpha * colour
    kept, shaded = kept_tokens(entry), _shaded(entry)
    for t, n in kept - shaded:  # copied tokens at full brightness
        y0, y1, x0, x1 = token_box(n, grid, size)
        out[t, y0:y1, x0:x1] = images[t, y0:y1, x0:x1]
    out = np.clip(out, 0, 255).astype(np.uint8)
    # never let content pixels look like the outline colour
    is_outline = np.all(out == np.array(OUTLINE, dtype=np.uint8), axis=-1)
    out[is_outline, 1] = 254
    for t, n in kept:
        y0, y1, x0, x1 = token_box(n, grid, size)
        k = THICKNESS
        out[t, y0 : y0 + k, x0:x1] = OUTLINE
        out[t, y1 - k : y1, x0:x1] = OUTLINE
        out[t, y0:y1, x0 : x0 + k] = OUTLINE
        out[t, y0:y1, x1 - k : x1] = OUTLINE
    return out


def _shaded(entry: dict[str, Any]) -> set[tuple[int, int]]:
    return {tn for group in merged_groups(entry).values() for tn in group}


def outlined_tokens(images: np.ndarray, grid: tuple[int, int]) -> set[tuple[int, int]]:
    """The tokens (t, n) whose whole box border is drawn in `OUTLINE`: reads an `overlay` back from its pixels."""
    images = np.asarray(images)
    found = set()
    colour = np.array(OUTLINE, dtype=images.dtype)
    size = images.shape[1:3]
    for t in range(images.shape[0]):
        for n in range(grid[0] * grid[1]):
            y0, y1, x0, x1 = token_box(n, grid, size)
            ring = np.concatenate(
                [
                    images[t, y0, x0:x1],
                    images[t, y1 - 1, x0:x1],
                    images[t, y0:y1, x0],
                    images[t, y0:y1, x1 - 1],
                ]
            )
            if np.all(ring == colour):
                found.add((t, n))
    return found


def mosaic(images: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) -> (H, T * W, 3): token frames side by side, no gaps (so boxes stay exact)."""
    images = np.asarray(images)
    return np.concatenate(list(images), axis=1)


def unmosaic(strip: np.ndarray, frames: int) -> np.ndarray:
    """Inverse of `mosaic`."""
    strip = np.asarray(strip)
    return np.stack(np.split(strip, frames, axis=1))


# ---------------------------------------------------------------------------------------------------- synthetic
def synthetic_prune_input(images: np.ndarray, grid: tuple[int, int], sharpness: float = 2.0, seed: int = 0):
    """A `PruneInput` whose signals come from the pixels instead of a model (for illustrations on random weights).

    features / keys: each token's box average-pooled to 4x4 RGB (48 values) plus a little fixed noise;
    attention: a per-frame softmax of how far each token's colour is from the frame's mean colour (distinct,
    bright content draws "attention"), computed on the token grid; global_features: the per-frame mean feature.
    A bright patch that never moves therefore gets high attention in every frame: a planted sink.
    """
    from PIL import Image

    from .pruners import PruneInput

    images = np.asarray(images)
    t_count = images.shape[0]
    h, w = grid
    pooled = np.stack(
        [
            np.asarray(Image.fromarray(img).resize((w * 4, h * 4), Image.BOX), dtype=np.float32)
            for img in images
        ]
    )  # (T, 4h, 4w, 3)
    cells = (
        pooled.reshape(t_count, h, 4, w, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(t_count, h * w, 48) / 255.0
    )
    rng = np.random.default_rng(seed)
    features = torch.from_numpy(cells + rng.normal(0, 0.01, cells.shape).astype(np.float32))
    colour = cells.reshape(t_count, h * w, 16, 3).mean(axis=2)
    distance = np.linalg.norm(colour - colour.mean(axis=1, keepdims=True), axis=-1)
    attention = torch.softmax(torch.from_numpy(sharpness * distance).float(), dim=-1)
    return PruneInput(
        features=features,
        attention=attention,
        keys=features.clone(),
        global_features=features.mean(dim=1),
        grid=(h, w),
        attention_patches=h * w,
    )


def prune_entry(x: Any, config: Any) -> dict[str, Any]:
    """Runs the config's pure pruner on a `PruneInput` and returns a report entry shaped like `last_prune_report`'s."""
    import time

    from .config import StopConfig

    pruner = StopConfig.from_any(config).build_pruner()
    started = time.perf_counter()
    result = pruner(x)
    seconds = time.perf_counter() - started
    return {
        "frames": x.num_frames,
        "grid": x.grid,
        "tokens_before": x.num_frames * x.tokens_per_frame,
        "tokens_after": int(result.index.numel()),
        "index": result.index.cpu(),
        "kind": result.kind.cpu(),
        "info": result.info,
        "attention": x.attention.float().cpu(),
        "signal_seconds": 0.0,
        "prune_seconds": seconds,
        "placements": [],
        "result": result,
    }


# ---------------------------------------------------------------------------------------------------- figures
def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise VizDependencyError(
            "drawing needs matplotlib, which is not installed: pip install 'stop-hf[viz]'"
        ) from None
    return plt


def kept_tokens_figure(
    images: np.ndarray,
    entries: dict[str, dict[str, Any]],
    columns: int = 8,
    panel_inches: float = 2.0,
    title: str = "",
):
    """Grid of frames, one block of rows per entry (e.g. baseline, SToP): kept tokens outlined, merged shaded."""
    plt = _pyplot()
    frames = images.shape[0]
    columns = max(1, min(columns, frames))
    rows_per = -(-frames // columns)
    rows = rows_per * len(entries)
    aspect = images.shape[1] / images.shape[2]
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(panel_inches * columns, panel_inches * aspect * rows + 0.7),
        squeeze=False,
    )
    for block, (label, entry) in enumerate(entries.items()):
        drawn = overlay(images, entry)
        for t in range(rows_per * columns):
            ax = axes[block * rows_per + t // columns][t % columns]
            ax.set_xticks([])
            ax.set_yticks([])
            if t >= frames:
                ax.axis("off")
                continue
            ax.imshow(drawn[t], interpolation="nearest")
            ax.set_title(f"t={t}", fontsize=8)
            if t % columns == 0:
                ax.set_ylabel(
                    f"{label}\n{int(entry['tokens_after'])}/{int(entry['tokens_before'])}", fontsize=8
                )
    heading = "kept tokens (green outline), merged tokens (shaded by cluster), dropped tokens dimmed"
    fig.suptitle(f"{heading}\n{title}" if title else heading, fontsize=9)
    fig.subplots_adjust(
        left=0.06, right=0.99, bottom=0.01, top=1 - 0.55 / fig.get_size_inches()[1], wspace=0.04
    )
    return fig


def sink_score_figure(
    sink: np.ndarray, grid: tuple[int, int], image: np.ndarray | None = None, title: str = ""
):
    """The sink score over the spatial grid, alone and (if an image is given) over a frame."""
    plt = _pyplot()
    h, w = grid
    panels = 2 if image is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.0), squeeze=False)
    heat = np.asarray(sink, dtype=np.float32).reshape(h, w)
    ax = axes[0][0]
    shown = ax.imshow(heat, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title("sink score per position", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    if image is not None:
        ax = axes[0][1]
        ax.imshow(image, interpolation="bilinear")
        ax.imshow(
            heat,
            cmap="magma",
            vmin=0,
            vmax=1,
            alpha=0.6,
            interpolation="nearest",
            extent=(0, image.shape[1], image.shape[0], 0),
        )
        ax.set_title("over the first frame", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or "SToP sink score = minmax(mean_t attention ^ gamma)", fontsize=10)
    fig.subplots_adjust(left=0.03, right=0.97, bottom=0.03, top=0.86, wspace=0.15)
    return fig


def tokens_per_frame_figure(entries: dict[str, dict[str, Any]]):
    """Tokens kept per token frame (copied + merged), one group of bars per entry; windows/segments as bands."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.0, 3.6))
    labels = list(entries)
    width = 0.8 / max(len(labels), 1)
    frames = max(int(e["frames"]) for e in entries.values())
    band_colours = ("#dde6f5", "#f5e6d8", "#e0f0dd", "#eedff0")
    for i, label in enumerate(labels):
        entry = entries[label]
        band = bands(entry)
        if band is not None:
            kind, ranges = band
            for j, (start, end) in enumerate(ranges):
                ax.axvspan(
                    start - 0.5,
                    end + 0.5,
                    ymin=i / len(labels),
                    ymax=(i + 1) / len(labels),
                    facecolor=band_colours[j % 2 + 2 * (i % 2)],
                    edgecolor="#7f7f7f",
                    linewidth=0.8,
                    zorder=0,
                    label=f"{label}: {kind}" if j == 0 else None,
                )
        copied, merged = tokens_per_frame(entry)
        x = np.arange(len(copied)) - 0.4 + width * (i + 0.5)
        ax.bar(x, copied, width, label=f"{label}: copied", color=f"C{2 * i}", zorder=2)
        ax.bar(x, merged, width, bottom=copied, label=f"{label}: merged", color=f"C{2 * i + 1}", zorder=2)
    tallest = max(int(sum(tokens_per_frame(e), np.zeros(1)).max()) for e in entries.values())
    ax.set_xlim(-0.5, frames - 0.5)
    ax.set_ylim(0, max(tallest, 1) * 1.5)  # headroom for the legend
    ax.set_xticks(range(frames))
    ax.set_xlabel("token frame t")
    ax.set_ylabel("output tokens (at the representative's frame)")
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    note = (
        " (bands: lower half = first run, upper half = second run)"
        if any(bands(e) for e in entries.values())
        else ""
    )
    ax.set_title(f"tokens kept per frame{note}", fontsize=9)
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.14, top=0.9)
    return fig


def save(fig: Any, path: Any) -> Any:
    """Saves at `DPI` without tight cropping, so the PNG is exactly figsize * DPI pixels; closes the figure."""
    from pathlib import Path

    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def figure_pixels(fig: Any) -> tuple[int, int]:
    """(width, height) in pixels that `save` writes for this figure."""
    w, h = fig.get_size_inches()
    return int(round(w * DPI)), int(round(h * DPI))
