"""The fixed panel of images whose maps a training run (or :class:`cam_mnist.train.callbacks.CAMCallback`) draws as the
weights change.

For each panel image and step: ``heatmaps/img_03/step_0000400.png`` shows the CAM of the *true* class and of the
*predicted* class side by side (with several digits: the map of each true class; without labels: the predicted
class), each with the digit's true box in white, the map's own box in magenta (the largest connected region above
the threshold tau chosen on validation at that step) and their IoU in its caption; ``heatmaps/grid/
step_0000400.png`` puts all panel images on one page and ``step_0000400.json`` beside it holds each caption's
numbers for the viewer (:mod:`cam_mnist.viz.viewer`). At the end of the run each image gets ``evolution.gif``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from PIL import Image

from cam_mnist import maps
from cam_mnist.core.atomic import atomic_write_bytes
from cam_mnist.core.boxes import boxes_from_maps, iou
from cam_mnist.core.errors import DataError
from cam_mnist.core.runs import RunFolder
from cam_mnist.data.splits import Split
from cam_mnist.maps.segmentation import segment
from cam_mnist.viz import plotting


def displayable(images: np.ndarray) -> np.ndarray:
    """Images as a person sees them: uint8 as they are; floats in [0, 1] as they are; other floats (a model's own
    normalisation) min-max scaled per image."""
    images = np.asarray(images)
    if images.dtype == np.uint8 or (images.min() >= 0 and images.max() <= 1):
        return images
    lo = images.min(axis=tuple(range(1, images.ndim)), keepdims=True)
    span = images.max(axis=tuple(range(1, images.ndim)), keepdims=True) - lo
    return (images - lo) / np.where(span > 0, span, 1)


class Panel:
    """Draws the maps of a few fixed images for a model whose weights change between calls.

    Args:
        model: a Keras classifier taking ``images``.
        images: (P, H, W[, C]) as the model takes them; ``shown``: the same as a person sees them (default:
            :func:`displayable` of ``images``).
        labels: (P,) true classes, (P, K) for K digits per image, or None (the predicted class only).
        boxes: (P, 4) true boxes (y0, x0, y1, x1), (P, K, 4), or None (no IoU).
        method: the map's method name (:mod:`cam_mnist.maps.registry`); ``options`` go to it (e.g. ``smooth=2``).
    """

    def __init__(
        self, model, images, labels=None, boxes=None, *, method="cam", layer=None, shown=None, segment=False, **options
    ):
        self.model, self.images = model, np.asarray(images, np.float32)
        self.shown = displayable(images) if shown is None else shown
        self.labels = None if labels is None else np.asarray(labels)
        self.boxes = None if boxes is None else np.asarray(boxes)
        self.segment = segment  # outline the segmentation each map seeds (cam_mnist.segmentation; light-on-dark images)
        # traced once; reads the current weights at every call
        self.explainer = maps.get_method(model, method, layer, batch_size=len(self.images), **options)

    @classmethod
    def of_split(cls, model, split: Split, size: int) -> Panel:
        """The first ``size`` images of a cluttered-MNIST split, with their labels and boxes."""
        index = slice(0, size)
        images, shown = split.float_images(index), split.images[index]
        return cls(model, images, split.labels[index], split.boxes[index], shown=shown, segment=True)

    def columns(self, probs: np.ndarray) -> tuple[list[tuple[str, np.ndarray, np.ndarray | None]], str]:
        """What each image's tiles show: (name, classes (P,), true boxes (P, 4) or None) per tile; and in words."""
        if self.labels is None:
            return [("pred", probs.argmax(1), None)], "map of the predicted class"
        if self.labels.ndim == 2:  # several digits: the map of each true class, scored against that digit's box
            return [
                ("class", self.labels[:, k], None if self.boxes is None else self.boxes[:, k])
                for k in range(self.labels.shape[1])
            ], "map of each true class"
        return [
            ("true", self.labels, self.boxes),
            ("pred", probs.argmax(1), self.boxes),
        ], "map of true | predicted class"

    def draw(self, step: int, tau: float, note: str = "") -> Drawing:
        """The maps of the current weights, boxed at ``tau`` x each map's maximum: one picture per image, one record
        per tile (class, probability, IoU) and the page of every image; ``note`` ends the page's caption."""
        probs = keras.ops.convert_to_numpy(self.model(self.images, training=False))  # (P, classes)
        columns, what = self.columns(probs)
        drawn = []
        for name, classes, truth in columns:
            maps = self.explainer(self.images, classes)  # (P, H, W)
            found = boxes_from_maps(maps, tau)  # (P, 4)
            ious = iou(found, truth) if truth is not None else [None] * len(maps)
            outlines = segment(self.images, maps) if self.segment else [None] * len(maps)
            drawn.append((name, classes, maps, found, ious, outlines))
        tiles, records = [], []
        for i in range(len(self.images)):
            row = [
                {
                    "name": name,
                    "class": int(c[i]),
                    "p": float(probs[i, c[i]]),
                    "iou": None if o[i] is None else float(o[i]),
                }
                for name, c, _, _, o, _ in drawn
            ]
            parts = [
                plotting.captioned(
                    plotting.overlay(
                        self.shown[i], m[i], None if self.boxes is None else self.boxes[i], map_box=b[i], outline=s[i]
                    ),
                    f"{r['name']} {r['class']} p={r['p']:.2f}" + ("" if r["iou"] is None else f" IoU {r['iou']:.2f}"),
                )
                for r, (_, _, m, b, _, s) in zip(row, drawn, strict=True)
            ]
            tiles.append(plotting.hstack(parts))
            records.append(row)
        truth = "white: true box, " if self.boxes is not None else ""
        outline = ", cyan: the segmentation it seeds" if self.segment else ""
        caption = f"{what}; {truth}magenta: the map's box above {tau:.2f} of its max{outline}"
        page = plotting.captioned(plotting.grid(tiles, columns=4), f"step {step}: {caption}{note}")
        return Drawing(step, tau, caption, tiles, records, [d[2] for d in drawn], page)


@dataclass
class Drawing:
    """What :meth:`Panel.draw` drew at one step."""

    step: int
    tau: float
    caption: str
    tiles: list[np.ndarray]  # one picture per image: its tiles side by side
    records: list[list[dict]]  # per image, per tile: name, class, p (its probability), iou (None without boxes)
    maps: list[np.ndarray]  # per tile column: (P, H, W) maps in [0, 1]
    page: np.ndarray  # every image on one captioned page

    def save(self, folder: Path) -> None:
        """``folder/img_XX/step_N.png`` per image, ``folder/grid/step_N.png`` and the records beside it as
        ``step_N.json`` (what the viewer reads)."""
        folder, name = Path(folder), f"step_{self.step:07d}"
        for i, tile in enumerate(self.tiles):
            plotting.save_png(folder / f"img_{i:02d}" / f"{name}.png", tile)
        plotting.save_png(folder / "grid" / f"{name}.png", self.page)
        record = {"step": self.step, "tau": self.tau, "caption": self.caption, "images": self.records}
        atomic_write_bytes(folder / "grid" / f"{name}.json", json.dumps(record).encode())


def write_gifs(folder: Path) -> int:
    """One ``evolution.gif`` per panel image of ``folder`` (a run's ``heatmaps/``) from its step PNGs on disk (so
    resumed runs include every step)."""

    folders = sorted(p for p in Path(folder).glob("img_*") if p.is_dir())
    for images in folders:
        steps = sorted(images.glob("step_*.png"))
        read = lambda p: np.asarray(Image.open(p).convert("RGB"))  # noqa: E731
        frames = [plotting.captioned(read(p), f"step {int(p.stem[5:])}") for p in steps]
        if frames:
            plotting.save_gif(images / "evolution.gif", frames)
    return len(folders)


def progress_picture(run_dir: Path, images: list[int], steps: list[int] | None = None) -> np.ndarray:
    """The panel's maps at a few steps, one row per panel image and one column per step (the README's picture),
    from the step PNGs the run wrote. ``steps`` default to the first heatmap step after 0, one from the middle and
    the last."""
    folder = RunFolder(run_dir).heatmaps
    written = sorted(int(p.stem[5:]) for p in (folder / f"img_{images[0]:02d}").glob("step_*.png"))
    if not written:
        raise DataError(f"{folder}: no heatmaps for panel image {images[0]}; train with `make train`")
    if steps is None:
        later = [s for s in written if s > 0] or written
        steps = sorted({later[0], later[len(later) // 2], later[-1]})
    missing = [s for s in steps if s not in written]
    if missing:
        raise DataError(f"{folder}: no heatmap at step {missing[0]}; the run drew steps {', '.join(map(str, written))}")

    read = lambda i, s: np.asarray(Image.open(folder / f"img_{i:02d}" / f"step_{s:07d}.png").convert("RGB"))  # noqa: E731
    tiles = [plotting.captioned(read(i, s), f"image {i}, step {s}") for i in images for s in steps]
    return plotting.grid(tiles, columns=len(steps))
