"""The fixed panel of test images whose CAMs a training run draws at every heatmap step.

For each panel image and step: ``heatmaps/img_03/step_0000400.png`` shows the CAM of the *true* class and of the
*predicted* class side by side (with several digits: the map of each true class), each with the digit's true box
in white, the CAM's own box in magenta (the largest connected region above the threshold tau chosen on validation
at that step) and their IoU in its caption; ``heatmaps/grid/step_0000400.png`` puts all panel images on one page.
At the end of the run each image gets ``evolution.gif`` and the run gets ``index.html``.
"""

from __future__ import annotations

import csv
import html
from pathlib import Path

import numpy as np

from cam_mnist import plotting
from cam_mnist.boxes import boxes_from_maps, iou
from cam_mnist.data import Split

HEATMAPS = "heatmaps"


class Panel:
    """Draws the CAMs of ``split[:size]`` for a model whose weights change between calls."""

    def __init__(self, model, split: Split, size: int):
        self.images = split.images[:size]
        self.float_images = split.float_images(slice(0, size))
        self.labels = split.labels[:size]
        self.boxes = split.boxes[:size]
        self.model = model
        from cam_mnist.cams import CAM

        self.cam = CAM(model, batch_size=size)  # traced once; reads the current weights at every call

    def snapshot(self, run_dir: Path, step: int, tau: float) -> None:
        """Draw every panel image's maps at ``step``, boxed at ``tau`` x each map's maximum."""
        probs = self.model.predict_on_batch(self.float_images)  # (P, classes)
        if self.labels.ndim == 2:  # several digits: the map of each true class, scored against that digit's box
            classes = [self.labels[:, k] for k in range(self.labels.shape[1])]
            truths = [self.boxes[:, k] for k in range(self.labels.shape[1])]
            names, what = ["class"] * len(classes), "CAM of each true class"
        else:
            classes, truths = [self.labels, probs.argmax(1)], [self.boxes, self.boxes]
            names, what = ["true", "pred"], "CAM of true | predicted class"
        maps = [self.cam(self.float_images, c) for c in classes]  # each (P, H, W)
        map_boxes = [boxes_from_maps(m, tau) for m in maps]  # each (P, 4)
        ious = [iou(b, t) for b, t in zip(map_boxes, truths, strict=True)]  # each (P,)
        tiles = []
        for i in range(len(self.images)):
            pair = plotting.hstack(
                [
                    plotting.captioned(
                        plotting.overlay(self.images[i], m[i], self.boxes[i], map_box=b[i]),
                        f"{name} {int(c[i])} p={probs[i, c[i]]:.2f} IoU {o[i]:.2f}",
                    )
                    for name, c, m, b, o in zip(names, classes, maps, map_boxes, ious, strict=True)
                ]
            )
            plotting.save_png(Path(run_dir) / HEATMAPS / f"img_{i:02d}" / f"step_{step:07d}.png", pair)
            tiles.append(pair)
        caption = f"step {step}: {what}; white: true box, magenta: CAM box above {tau:.2f} of its max (tau from val)"
        page = plotting.captioned(plotting.grid(tiles, columns=4), caption)
        plotting.save_png(Path(run_dir) / HEATMAPS / "grid" / f"step_{step:07d}.png", page)


def write_gifs(run_dir: Path) -> int:
    """One ``evolution.gif`` per panel image from its step PNGs on disk (so resumed runs include every step)."""
    from PIL import Image

    folders = sorted(p for p in (Path(run_dir) / HEATMAPS).glob("img_*") if p.is_dir())
    for folder in folders:
        steps = sorted(folder.glob("step_*.png"))
        read = lambda p: np.asarray(Image.open(p).convert("RGB"))  # noqa: E731
        frames = [plotting.captioned(read(p), f"step {int(p.stem[5:])}") for p in steps]
        if frames:
            plotting.save_gif(folder / "evolution.gif", frames)
    return len(folders)


def write_index(run_dir: Path, title: str, digits: int = 1) -> Path:
    """``index.html``: every grid by step, with validation accuracy beside it, newest first. ``digits`` per image
    says what the pictures show (:meth:`Panel.snapshot` draws the true and predicted class for one digit, each
    true class for several)."""
    run_dir = Path(run_dir)
    metrics = {}
    if (run_dir / "metrics.csv").exists():
        with open(run_dir / "metrics.csv") as f:
            metrics = {int(r["step"]): r for r in csv.DictReader(f)}
    rows = []
    for png in sorted((run_dir / HEATMAPS / "grid").glob("step_*.png"), reverse=True):
        step = int(png.stem[5:])
        m = metrics.get(step, {})
        pct = lambda key, m=m: f"{float(m[key]):.2%}" if m.get(key) else "n/a"  # noqa: E731
        rows.append(
            f"<tr><td><b>step {step}</b><br>val accuracy {pct('val_accuracy')}<br>val loss {m.get('val_loss', 'n/a')}"
            f"<br>CAM top-1 loc {pct('val_loc_tau')} (tau {m.get('val_tau', 'n/a')})<br>at 20%: {pct('val_loc_20')}"
            f"<br>peak in box {pct('val_peak_in_box')}</td>"
            f"<td><img src='{png.relative_to(run_dir)}' width='800'></td></tr>"
        )
    shown = (
        "CAM of the true class (left) and of the predicted class (right)"
        if digits == 1
        else f"CAM of each of the {digits} true classes, left to right, each boxed against its own digit"
    )
    accuracy = "val accuracy: exact match of every digit. " if digits > 1 else ""
    page = (
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<h1>{html.escape(title)}</h1><p>{shown} for a fixed panel of test images; white box: the digit's true "
        f"box, magenta: the CAM's box at the threshold tau chosen on validation (IoU in each caption). {accuracy}"
        f"Localization columns: validation images.</p><table>{''.join(rows)}</table>"
    )
    path = run_dir / "index.html"
    path.write_text(page)
    return path


def progress_picture(run_dir: Path, images: list[int], steps: list[int] | None = None) -> np.ndarray:
    """The panel's maps at a few steps, one row per panel image and one column per step (the README's picture),
    from the step PNGs the run wrote. ``steps`` default to the first heatmap step after 0, one from the middle and
    the last."""
    folder = Path(run_dir) / HEATMAPS
    written = sorted(int(p.stem[5:]) for p in (folder / f"img_{images[0]:02d}").glob("step_*.png"))
    if not written:
        from cam_mnist.errors import DataError

        raise DataError(f"{folder}: no heatmaps for panel image {images[0]}; train with `make train`")
    if steps is None:
        later = [s for s in written if s > 0] or written
        steps = sorted({later[0], later[len(later) // 2], later[-1]})
    missing = [s for s in steps if s not in written]
    if missing:
        from cam_mnist.errors import DataError

        raise DataError(f"{folder}: no heatmap at step {missing[0]}; the run drew steps {', '.join(map(str, written))}")
    from PIL import Image

    read = lambda i, s: np.asarray(Image.open(folder / f"img_{i:02d}" / f"step_{s:07d}.png").convert("RGB"))  # noqa: E731
    tiles = [plotting.captioned(read(i, s), f"image {i}, step {s}") for i in images for s in steps]
    return plotting.grid(tiles, columns=len(steps))
