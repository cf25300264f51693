"""Where a run's CAM is too wide: per class on validation, GT-known localization at the tau chosen there, the mean
width x height of the map's box and of the true box, how strongly the cells beside a map's peak fire, and the 1s
boxed by how wide their true box is (the map's box keeps about one width whatever the stroke's).

    .venv/bin/python scripts/map_widths.py out/default out/default-v1      # docs/experiments.md, Part 7
"""

import sys
from pathlib import Path

import keras
import numpy as np

from cam_mnist import maps as cams
from cam_mnist.config import load_run
from cam_mnist.core import boxes as bx
from cam_mnist.data.splits import DATA_DIR
from cam_mnist.reports import evaluate
from cam_mnist.scoring import localization


def size(boxes: np.ndarray) -> str:  # (y0, x0, y1, x1) -> mean "width x height"
    return f"{(boxes[:, 3] - boxes[:, 1]).mean():.1f} x {(boxes[:, 2] - boxes[:, 0]).mean():.1f}"


def by_true_width(found: np.ndarray, truth: np.ndarray, hit: np.ndarray) -> str:
    """'true width lo-hi px: share boxed (n), map's box w px' per 3-px bin of the true box's width."""
    true_w, found_w = truth[:, 3] - truth[:, 1], found[:, 3] - found[:, 1]
    rows = []
    for lo in range(0, int(true_w.max()) + 1, 3):
        s = (true_w >= lo) & (true_w < lo + 3)
        if s.any():
            rows.append(f"{lo}-{lo + 2} px: {hit[s].mean():.0%} of {s.sum()}, map's box {found_w[s].mean():.1f} px")
    return "; ".join(rows)


def neighbours(cells: np.ndarray) -> np.ndarray:
    """Mean over maps of (left, right, up, down) neighbour of the peak cell, each / the peak (peaks off the edge)."""
    ratios = []
    for m in cells:
        i, j = np.unravel_index(m.argmax(), m.shape)
        if 0 < i < m.shape[0] - 1 and 0 < j < m.shape[1] - 1:
            ratios.append([m[i, j - 1], m[i, j + 1], m[i - 1, j], m[i + 1, j]] / m[i, j])
    return np.mean(ratios, axis=0)


for run in map(Path, sys.argv[1:]):
    config, model = load_run(run), keras.models.load_model(run / "model.keras")
    val = evaluate.validation_for(config, config.data, DATA_DIR)
    truth, labels = val.boxes.reshape(-1, 4), val.labels.ravel()
    # the true class's CAM, upsampled as scored, and its cells (w >= 0 under the min gauge: ReLU changes nothing)
    maps, cells = cams.explain(model, val.float_images(), "cam", labels, raw=True)
    tau = localization.choose_threshold(maps, truth)
    found = bx.boxes_from_maps(maps, tau)
    hit = bx.iou(found, truth) >= bx.IOU_CORRECT
    print(f"{run}: tau {tau:.2f}, GT-known {hit.mean():.4f}; per class 0-9:", *(f"{hit[labels == c].mean():.2f}"
                                                                                for c in range(10)))  # fmt: skip
    for c in (1, 0, 8):
        beside = [round(float(v), 2) for v in neighbours(cells[labels == c])]
        print(f"  {c}s: map's box {size(found[labels == c])} px, true box {size(truth[labels == c])} px; beside the "
              f"peak (left, right, up, down) {beside}")  # fmt: skip
    ones = labels == 1
    print("  1s by their true box's width:", by_true_width(found[ones], truth[ones], hit[ones]))
