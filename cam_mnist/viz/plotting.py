"""Every picture the project makes, so they all look the same. The only module that imports matplotlib.

Overlays and grids are composed as uint8 arrays with numpy and written with Pillow: a training run writes
hundreds of them, and a matplotlib figure per image would cost more than the training step it shows.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on CI or servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from scipy import ndimage  # noqa: E402

from cam_mnist.core.atomic import atomic_write_bytes  # noqa: E402

_JET = (matplotlib.colormaps["jet"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)  # (256, 3) LUT
BOX_COLOUR = np.array([255, 255, 255], np.uint8)  # the digit's true box
MAP_BOX_COLOUR = np.array([255, 0, 255], np.uint8)  # the box drawn from a map: magenta is in no jet colour
OUTLINE_COLOUR = np.array([0, 255, 255], np.uint8)  # the edge of the segmentation a map seeds: cyan


def overlay(
    image: np.ndarray, heatmap: np.ndarray, box=None, *, alpha: float = 0.5, scale: int = 2, map_box=None, outline=None
) -> np.ndarray:
    """The image with ``heatmap`` (H, W) in [0, 1] coloured over it, the true ``box`` (y0, x0, y1, x1) outlined in
    white (or boxes (K, 4): one per digit), ``map_box``, the box drawn from the map, in magenta, and the edge of the
    ``outline`` mask (H, W) bool (the segmentation the map seeds) in cyan.

    ``image`` is (H, W), (H, W, 1) or (H, W, 3), uint8 or float in [0, 1]. Returns (H*scale, W*scale, 3) uint8.
    """
    base = np.asarray(image)
    base = base.astype(np.float32) / 255 if base.dtype == np.uint8 else base.astype(np.float32)
    base = base[..., None] if base.ndim == 2 else base  # (H, W, 1) grey or (H, W, 3) colour
    colour = _JET[np.clip(np.asarray(heatmap) * 255, 0, 255).astype(np.uint8)].astype(np.float32)
    out = ((1 - alpha) * base * 255 + alpha * colour).astype(np.uint8)
    out = out.repeat(scale, 0).repeat(scale, 1)
    if box is not None:
        for b in np.asarray(box).reshape(-1, 4):
            draw_box(out, b * scale)
    if outline is not None:
        mask = np.asarray(outline, bool).repeat(scale, 0).repeat(scale, 1)
        out[mask & ~ndimage.binary_erosion(mask)] = OUTLINE_COLOUR  # the mask's own edge pixels
    if map_box is not None and np.any(map_box):  # an all-zero map has the empty box: nothing to draw
        draw_box(out, np.asarray(map_box) * scale, colour=MAP_BOX_COLOUR)
    return out


def draw_box(rgb: np.ndarray, box, colour=BOX_COLOUR, width: int = 1) -> None:
    """Outline the half-open box (y0, x0, y1, x1) in place on an (H, W, 3) image."""
    y0, x0, y1, x1 = (int(v) for v in box)
    y1, x1 = min(y1, rgb.shape[0]) - 1, min(x1, rgb.shape[1]) - 1
    rgb[y0 : y0 + width, x0 : x1 + 1] = colour
    rgb[y1 - width + 1 : y1 + 1, x0 : x1 + 1] = colour
    rgb[y0 : y1 + 1, x0 : x0 + width] = colour
    rgb[y0 : y1 + 1, x1 - width + 1 : x1 + 1] = colour


def captioned(rgb: np.ndarray, caption: str, height: int = 14) -> np.ndarray:
    """``rgb`` with a black strip above it holding ``caption``."""
    strip = Image.new("RGB", (rgb.shape[1], height))
    ImageDraw.Draw(strip).text((2, 1), caption, fill=(255, 255, 255))
    return np.concatenate([np.asarray(strip), rgb], 0)


def hstack(tiles: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """Tiles of equal height side by side with a black gap."""
    spacer = np.zeros((tiles[0].shape[0], gap, 3), np.uint8)
    return np.concatenate([t for tile in tiles for t in (tile, spacer)][:-1], 1)


def grid(tiles: list[np.ndarray], columns: int, gap: int = 4) -> np.ndarray:
    """Equal-sized tiles in rows of ``columns``."""
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // columns)
    out = np.zeros((rows * (h + gap) - gap, columns * (w + gap) - gap, 3), np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tile
    return out


def save_png(path: Path, rgb: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())


def save_gif(path: Path, frames: list[np.ndarray], ms_per_frame: int = 300) -> None:
    """An animated GIF that loops over ``frames`` (equal-sized RGB arrays), holding the last one longer."""
    images = [Image.fromarray(f) for f in frames]
    durations = [ms_per_frame] * (len(images) - 1) + [ms_per_frame * 5]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    atomic_write_bytes(Path(path), buf.getvalue())


def save_figure(path: Path, fig) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def line_plot(
    path: Path,
    series: dict[str, tuple[np.ndarray, np.ndarray]],
    xlabel: str,
    ylabel: str,
    title: str,
    *,
    hlines: dict[str, float] | None = None,
    ylim=None,
) -> None:
    """One line per entry of ``series`` (label -> (x, y)), dashed horizontal reference lines from ``hlines``."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for label, (x, y) in series.items():
        ax.plot(x, y, marker="o", markersize=3, label=label)
    for label, value in (hlines or {}).items():
        ax.axhline(value, linestyle="--", color="grey", label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(path, fig)


def frontier(path: Path, series: dict, panels: list, targets: dict, xlabel: str, trade: tuple[str, str]) -> None:
    """One panel per (key, title, y range) of ``panels``; in each, one line per run of ``series`` (run -> key ->
    (x, y); a run without ``key`` is left out of that panel), and the target of ``targets[key]`` dashed. A last
    panel puts each run's newest point of the two keys of ``trade`` (x, y) against each other, labelled with the
    run's name and last x of ``xlabel`` (its minutes): the trade between them at a glance."""
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(5.2 * (len(panels) + 1), 4.4))
    for ax, (key, title, ylim) in zip(axes, panels, strict=False):
        for i, (run, values) in enumerate(series.items()):  # tab20's colours, then again with another line style
            if key in values:
                style = ("-", ":", "-.")[i // 20 % 3]
                ax.plot(*values[key], marker="o", markersize=3, label=run, color=plt.cm.tab20(i % 20), linestyle=style)
        if key in targets:
            ax.axhline(targets[key], linestyle="--", color="grey", label=f"target {targets[key]:.3g}")
        ax.set(title=title, xlabel=xlabel, ylim=ylim)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    ax, (kx, ky) = axes[-1], trade
    for i, (run, values) in enumerate(series.items()):
        (x, vx), (_, vy) = values[kx], values[ky]
        ax.scatter(vx[-1], vy[-1], color=plt.cm.tab20(i % 20), s=24)
        ax.annotate(f"{run}, {x[-1]:.0f}", (vx[-1], vy[-1]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    for key, line in ((kx, ax.axvline), (ky, ax.axhline)):
        if key in targets:
            line(targets[key], linestyle="--", color="grey")
    ax.set(title=f"newest {ky} against {kx} (label: {xlabel})", xlabel=kx, ylabel=ky)
    ax.title.set_fontsize(8)
    ax.grid(alpha=0.3)
    save_figure(path, fig)


def stage_plot(path: Path, stages: list[str], panels: dict[str, dict[str, np.ndarray]], title: str) -> None:
    """One panel per entry of ``panels`` (title -> {line: (S,) values}), the S ``stages`` named on the x axis."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.4), sharex=True)
    for ax, (name, series) in zip(np.atleast_1d(axes), panels.items(), strict=True):
        for i, (line, values) in enumerate(series.items()):
            style = ("-", "--", ":")[i // 10 % 3]
            ax.plot(
                range(len(stages)),
                values,
                marker="o",
                markersize=3,
                label=line,
                color=plt.cm.tab10(i % 10),
                linestyle=style,
            )
        ax.set(title=name, ylim=(-0.05, 1.05))
        ax.set_xticks(range(len(stages)), stages, rotation=30, ha="right")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    save_figure(path, fig)


def confusion_plot(path: Path, matrix: np.ndarray, title: str) -> None:
    """A (C, C) confusion matrix (rows: true class, columns: predicted), counts written in each cell."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(np.log1p(matrix), cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if i == j else "black")
    ax.set(
        xlabel="predicted class", ylabel="true class", title=title, xticks=range(len(matrix)), yticks=range(len(matrix))
    )
    save_figure(path, fig)


def data_samples(path: Path, images: np.ndarray, boxes: np.ndarray, labels: np.ndarray, columns: int = 8) -> None:
    """A grid of cluttered images with their true boxes drawn and labels written above."""
    tiles = []
    for image, box, label in zip(images, boxes, labels, strict=True):
        tile = overlay(image, np.zeros(image.shape[:2]), box.reshape(-1, 4)[0], alpha=0.0)
        for extra in box.reshape(-1, 4)[1:]:
            draw_box(tile, extra * 2)
        tiles.append(captioned(tile, f"label {np.atleast_1d(label).tolist()}"))
    save_png(path, grid(tiles, columns))


def histograms(path: Path, series: dict[str, np.ndarray], xlabel: str, title: str, bins: int = 20) -> None:
    """One step histogram per entry of ``series`` (label -> values in [0, 1]), on shared bins."""
    fig, ax = plt.subplots(figsize=(7, 4))
    edges = np.linspace(0, 1, bins + 1)
    for label, values in series.items():
        ax.hist(
            values,
            bins=edges,
            histtype="step",
            linewidth=1.5,
            label=label,
            linestyle="--" if label.startswith("baseline") else "-",
        )
    ax.set(xlabel=xlabel, ylabel="images", title=title)
    ax.legend(fontsize=7)
    save_figure(path, fig)


def method_grid(path: Path, images: np.ndarray, true_boxes: np.ndarray, methods: dict) -> None:
    """Rows: images; columns: methods (name -> (maps, boxes)). Each tile: the map, its box (magenta) and the true
    box (white); ``true_boxes`` is (N, 4), or (N, K, 4) for K digits per image."""
    rows = []
    for i, (image, truth) in enumerate(zip(images, true_boxes, strict=True)):
        tiles = []
        for name, (maps, boxes) in methods.items():
            tile = overlay(image, maps[i], truth, map_box=boxes[i])
            tiles.append(captioned(tile, name[:30]) if i == 0 else tile)
        rows.append(hstack(tiles))
    width = max(r.shape[1] for r in rows)
    save_png(path, np.concatenate([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0))) for r in rows], 0))
