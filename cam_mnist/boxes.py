"""Boxes and masks from maps, and how well they match the truth. Arrays in, arrays out.

The CAM paper's protocol (Zhou et al. 2016, §3.1): keep the pixels above 20% of the map's maximum, box the largest
connected component; a box is correct when its IoU with the true box is at least 0.5. Boxes are (y0, x0, y1, x1),
half-open, as in :mod:`cam_mnist.data`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

PAPER_THRESHOLD = 0.2  # fraction of the map's maximum (CAM paper §3.1)
IOU_CORRECT = 0.5


def largest_component_box(mask: np.ndarray) -> np.ndarray:
    """Tight box of the largest 8-connected component of a (H, W) bool mask; (0, 0, 0, 0) if the mask is empty."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count == 0:
        return np.zeros(4, np.int64)
    sizes = np.bincount(labels.ravel())[1:]  # pixels per component, background excluded
    rows, cols = ndimage.find_objects(labels)[int(sizes.argmax())]
    return np.array([rows.start, cols.start, rows.stop, cols.stop], np.int64)


def boxes_from_maps(maps: np.ndarray, threshold: float = PAPER_THRESHOLD) -> np.ndarray:
    """(N, H, W) maps -> (N, 4) boxes by the paper's protocol. An all-zero map gives the empty box."""
    maps = np.asarray(maps, np.float32)
    peak = maps.reshape(len(maps), -1).max(1)[:, None, None]  # (N, 1, 1)
    keep = (maps > threshold * peak) & (peak > 0)  # strictly above: a constant map keeps everything...
    keep |= (maps == peak) & (peak > 0)  # ...and the maximum itself always survives
    return np.stack([largest_component_box(k) for k in keep]) if len(maps) else np.zeros((0, 4), np.int64)


def box_area(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes)
    return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of paired boxes (..., 4); 0 where both are empty."""
    a, b = np.asarray(a), np.asarray(b)
    inter = box_area(np.concatenate([np.maximum(a[..., :2], b[..., :2]), np.minimum(a[..., 2:], b[..., 2:])], -1))
    union = box_area(a) + box_area(b) - inter
    return np.divide(inter, union, out=np.zeros(np.shape(inter), np.float64), where=union > 0)


def mask_iou(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """IoU of paired (N, H, W) bool masks; 0 where both are empty."""
    inter = (predicted & truth).sum((1, 2))
    union = (predicted | truth).sum((1, 2))
    return np.divide(inter, union, out=np.zeros(len(inter)), where=union > 0)


def pointing_game(maps: np.ndarray, masks: np.ndarray, tolerance: int = 0) -> np.ndarray:
    """(N,) bool: the map's maximum lies on the digit (within ``tolerance`` pixels of it). Zhang et al. 2016."""
    n, h, w = maps.shape
    flat = maps.reshape(n, -1).argmax(1)
    y, x = np.divmod(flat, w)
    if tolerance:
        masks = ndimage.binary_dilation(masks, structure=_disc(tolerance)[None])
    return masks[np.arange(n), y, x]


def _disc(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return yy**2 + xx**2 <= radius**2
