"""Boxes and masks from maps, and how well they match the truth. Arrays in, arrays out.

The CAM paper's protocol (Zhou et al. 2016, §3.1): keep the pixels above 20% of the map's maximum, box the largest
connected component; a box is correct when its IoU with the true box is at least 0.5. wsolevaluation's MaxBoxAccV2
(Choe et al. 2020) instead boxes every component and counts an image at its best box (:func:`component_ious`).
Boxes are (y0, x0, y1, x1), half-open, as in :mod:`cam_mnist.data.splits`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

PAPER_THRESHOLD = 0.2  # fraction of the map's maximum (CAM paper §3.1)
IOU_CORRECT = 0.5


# 8-connectivity within an image, none across the batch axis: one ndimage.label call labels a whole batch.
PER_IMAGE_8_CONNECTED = np.zeros((3, 3, 3), bool)
PER_IMAGE_8_CONNECTED[1] = True


def tight_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N, 4) tight half-open box of each mask's True pixels; (0, 0, 0, 0) for an empty mask."""
    rows, cols = masks.any(2), masks.any(1)  # (N, H), (N, W)
    h, w = masks.shape[1:]
    boxes = np.stack([rows.argmax(1), cols.argmax(1), h - rows[:, ::-1].argmax(1), w - cols[:, ::-1].argmax(1)], 1)
    return np.where(rows.any(1)[:, None], boxes, 0).astype(np.int64)


def _components(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """Every 8-connected component of each (N, H, W) bool mask, from one labelling of the batch: the labels
    (N, H, W), and per component its image index (M,), its size in pixels (M,) and its bounding slices (image, rows,
    cols), in the order found (by image, then top-most, then left-most)."""
    masks = np.asarray(masks, bool)
    labels, count = ndimage.label(masks, structure=PER_IMAGE_8_CONNECTED)
    if count == 0:
        return labels, np.zeros(0, np.int64), np.zeros(0, np.int64), []
    sizes = np.bincount(labels[masks], minlength=count + 1)[1:]  # (M,) pixels per component: the kept ones only
    # find_objects gives every component's bounding slices (image, rows, cols) in one pass over the labels.
    slices = ndimage.find_objects(labels)
    return labels, np.fromiter((s[0].start for s in slices), np.int64, count), sizes, slices


def _boxes(slices: list, index) -> np.ndarray:
    """(len(index), 4) tight boxes of the components ``index``: built one by one, so only for those asked."""
    return np.array([(slices[i][1].start, slices[i][2].start, slices[i][1].stop, slices[i][2].stop) for i in index],
                    np.int64).reshape(-1, 4)  # fmt: skip


def _largest(image: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The index of each image's largest component, for the images that have one (ties: the first found)."""
    if not len(image):
        return np.zeros(0, np.int64)
    order = np.lexsort((-sizes, image))  # by image, then largest first (stable: first-found wins ties)
    return order[np.r_[True, image[order][1:] != image[order][:-1]]]


def _largest_boxes(n: int, image: np.ndarray, sizes: np.ndarray, slices: list) -> np.ndarray:
    """(n, 4) box of each image's largest component; (0, 0, 0, 0) for an image without any."""
    out = np.zeros((n, 4), np.int64)
    first = _largest(image, sizes)
    out[image[first]] = _boxes(slices, first)
    return out


def largest_components(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N, H, W) bool: each image's largest 8-connected component (ties: the first found)."""
    labels, image, sizes, _ = _components(masks)
    keep = np.zeros(len(sizes) + 1, bool)
    keep[_largest(image, sizes) + 1] = True  # label 0 is the background
    return keep[labels]


def largest_component_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N, 4) tight box of each image's largest 8-connected component; (0, 0, 0, 0) if empty.
    Ties go to the component found first (top-most, then left-most)."""
    return _largest_boxes(len(masks), *_components(masks)[1:])


def component_ious(masks: np.ndarray, true_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) IoU with the true box of the largest component's box (the CAM paper's box), and (N,) the best IoU over
    every component's box (wsolevaluation's MaxBoxAccV2 counts an image at its best box); 0 for an empty mask."""
    n = len(masks)
    _, image, sizes, slices = _components(masks)
    largest = iou(_largest_boxes(n, image, sizes, slices), true_boxes)
    best = np.zeros(n)
    np.maximum.at(best, image, iou(_boxes(slices, range(len(slices))), np.asarray(true_boxes)[image]))
    return largest, best


def keep_above(maps: np.ndarray, threshold: float) -> np.ndarray:
    """(N, H, W) bool: pixels above ``threshold`` x each map's maximum. The maximum itself is always kept, so a
    constant nonzero map keeps everything; an all-zero map keeps nothing."""
    peak = maps.reshape(len(maps), -1).max(1)[:, None, None]  # (N, 1, 1)
    return ((maps > threshold * peak) | (maps == peak)) & (peak > 0)


def boxes_from_maps(maps: np.ndarray, threshold: float = PAPER_THRESHOLD) -> np.ndarray:
    """(N, H, W) maps -> (N, 4) boxes by the paper's protocol. An all-zero map gives the empty box."""
    return largest_component_boxes(keep_above(np.asarray(maps, np.float32), threshold))


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
    y, x = np.divmod(maps.reshape(n, -1).argmax(1), w)
    return (near(masks, tolerance) if tolerance else masks)[np.arange(n), y, x]


def relevance_mass(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N,) the share of each map's total value that lies on the digit's mask: relevance mass accuracy (Arras et al.
    2022, arXiv 2003.07258). 0 for an all-zero map."""
    maps = np.asarray(maps, np.float64)
    total, inside = maps.sum((1, 2)), np.where(masks, maps, 0).sum((1, 2))
    return np.divide(inside, total, out=np.zeros(len(maps)), where=total > 0)


def peak_in_box(maps: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N,) bool: the map's maximum (its first, if tied) lies inside the half-open box (y0, x0, y1, x1)."""
    n, h, w = maps.shape
    y, x = np.divmod(maps.reshape(n, -1).argmax(1), w)
    b = np.asarray(boxes)
    return (b[:, 0] <= y) & (y < b[:, 2]) & (b[:, 1] <= x) & (x < b[:, 3])


def near(masks: np.ndarray, tolerance: int) -> np.ndarray:
    """(N, H, W) bool: the pixels within ``tolerance`` pixels of each mask (a disc-shaped dilation)."""
    return ndimage.binary_dilation(masks, structure=_disc(tolerance)[None])


def _disc(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return yy**2 + xx**2 <= radius**2
