"""Weakly-supervised localization, segmentation and faithfulness of explanation maps, against known ground truth.

Everything here takes arrays: maps (N, H, W) in [0, 1], the digits' true boxes (N, 4) and masks (N, H, W), and
for faithfulness a ``predict`` function (images -> probabilities).

References: Zhou et al. 2016 (CAM box protocol, §3.1); Choe et al. 2020, arXiv 2001.07437 (MaxBoxAcc);
Zhang et al. 2016, arXiv 1608.00507 (pointing game); Chattopadhay et al. 2018, arXiv 1710.11063, §5.1
(Average Drop, Increase in Confidence); Petsiuk et al. 2018, arXiv 1806.07421 (RISE deletion/insertion).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cam_mnist import boxes as bx

MAXBOX_THRESHOLDS = np.round(np.arange(0.0, 1.0, 0.05), 2)  # wsolevaluation uses 0.01; 0.05 keeps 10k maps fast
POINTING_TOLERANCE = 3  # pixels


# ---------------------------------------------------------------------------------------------------------- boxes
def box_metrics(
    maps_true: np.ndarray,
    maps_predicted: np.ndarray,
    correct: np.ndarray,
    true_boxes: np.ndarray,
    threshold: float = bx.PAPER_THRESHOLD,
) -> dict:
    """Top-1 localization (right class and IoU >= 0.5, predicted-class map), GT-known localization (true-class
    map), mean IoU, and MaxBoxAcc (GT-known accuracy at the best threshold)."""
    iou_true = bx.iou(bx.boxes_from_maps(maps_true, threshold), true_boxes)
    iou_predicted = bx.iou(bx.boxes_from_maps(maps_predicted, threshold), true_boxes)
    per_threshold = [
        float((bx.iou(bx.boxes_from_maps(maps_true, t), true_boxes) >= bx.IOU_CORRECT).mean())
        for t in MAXBOX_THRESHOLDS
    ]
    best = int(np.argmax(per_threshold))
    return {
        "top1_loc": float((correct & (iou_predicted >= bx.IOU_CORRECT)).mean()),
        "gt_known_loc": float((iou_true >= bx.IOU_CORRECT).mean()),
        "mean_iou": float(iou_true.mean()),
        "max_box_acc": per_threshold[best],
        "max_box_acc_threshold": float(MAXBOX_THRESHOLDS[best]),
        "iou": iou_true,
    }


# ------------------------------------------------------------------------------------------------ points and masks
def pointing_metrics(maps: np.ndarray, masks: np.ndarray) -> dict:
    return {
        "pointing": float(bx.pointing_game(maps, masks).mean()),
        f"pointing_{POINTING_TOLERANCE}px": float(bx.pointing_game(maps, masks, POINTING_TOLERANCE).mean()),
    }


def pixel_average_precision(maps: np.ndarray, masks: np.ndarray, bins: int = 1000) -> float:
    """Area under the precision-recall curve of map values as a pixel classifier of the digit mask, pooled over
    all images. Histograms in ``bins`` score bins keep this O(pixels) for 100M pixels."""
    scores = np.clip((maps * (bins - 1)).astype(np.int64), 0, bins - 1).ravel()
    positives = np.bincount(scores, weights=masks.ravel(), minlength=bins)[::-1]  # highest scores first
    totals = np.bincount(scores, minlength=bins)[::-1]
    tp, predicted = np.cumsum(positives), np.cumsum(totals)
    if tp[-1] == 0:
        return 0.0
    precision = np.divide(tp, predicted, out=np.zeros(bins), where=predicted > 0)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))  # step-wise area, as average precision


def segmentation_metrics(maps: np.ndarray, masks: np.ndarray, threshold: float = bx.PAPER_THRESHOLD) -> dict:
    return {
        "mask_iou": float(bx.mask_iou(bx.keep_above(maps, threshold), masks).mean()),
        "pixel_ap": pixel_average_precision(maps, masks),
    }


# ---------------------------------------------------------------------------------------------------- faithfulness
def average_drop_increase(predict, images: np.ndarray, maps: np.ndarray, targets: np.ndarray, batch: int = 500) -> dict:
    """Grad-CAM++ §5.1: Average Drop % = mean max(0, Y - O) / Y * 100, Increase in Confidence = % of images with
    O > Y, where Y is the target's probability on the image and O on the image multiplied by its map."""
    n = len(images)
    idx = np.arange(n)
    full = np.concatenate([predict(images[lo : lo + batch]) for lo in range(0, n, batch)])[idx, targets]
    masked = np.concatenate(
        [predict(images[lo : lo + batch] * maps[lo : lo + batch, ..., None]) for lo in range(0, n, batch)]
    )[idx, targets]
    return {
        "average_drop_pct": float(np.mean(np.maximum(0, full - masked) / np.maximum(full, 1e-12)) * 100),
        "increase_in_confidence_pct": float(np.mean(masked > full) * 100),
    }


def auc(y: np.ndarray) -> np.ndarray:
    """Area under curves sampled at equally spaced x in [0, 1] (trapezoids). y: (..., steps + 1)."""
    return (y[..., 1:] + y[..., :-1]).sum(-1) / (2 * (y.shape[-1] - 1))


def deletion_insertion(
    predict, images: np.ndarray, maps: np.ndarray, targets: np.ndarray, steps: int = 20, blur_sigma: float = 5.0
) -> dict:
    """RISE (Petsiuk et al. 2018): delete the most salient pixels first (to 0) / insert them first into a blurred
    image, in ``steps`` equal chunks; the AUC of the target's probability. Low deletion and high insertion are
    better. images (N, H, W, 1), maps (N, H, W)."""
    n, h, w, _ = images.shape
    order = np.argsort(-maps.reshape(n, -1), axis=1, kind="stable")  # most salient first
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(h * w)[None].repeat(n, 0), axis=1)
    rank = rank.reshape(n, h, w, 1)
    blurred = ndimage.gaussian_filter(images, sigma=(0, blur_sigma, blur_sigma, 0))
    curves = {"deletion": [], "insertion": []}
    for k in np.linspace(0, h * w, steps + 1).astype(int):
        revealed = rank < k  # the k most salient pixels
        curves["deletion"].append(predict(np.where(revealed, 0.0, images).astype(np.float32))[np.arange(n), targets])
        curves["insertion"].append(
            predict(np.where(revealed, images, blurred).astype(np.float32))[np.arange(n), targets]
        )
    return {f"{name}_auc": float(auc(np.stack(values, 1)).mean()) for name, values in curves.items()}


# ------------------------------------------------------------------------------------------------------- baselines
def baseline_maps(kind: str, true_boxes: np.ndarray, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Maps that know nothing about the image, so a reader sees what each method adds:
    ``centre``: the indicator of a centred box of the average digit-box size (its protocol box is that box);
    ``full``: a constant map (its box is the whole image); ``random``: smooth noise (12x12 noise, upsampled),
    like the CAM of an untrained network."""
    n, h, w = shape
    if kind == "centre":
        size = np.round((true_boxes[:, 2:] - true_boxes[:, :2]).mean(0)).astype(int)  # (height, width)
        y0, x0 = (h - size[0]) // 2, (w - size[1]) // 2
        maps = np.zeros(shape, np.float32)
        maps[:, y0 : y0 + size[0], x0 : x0 + size[1]] = 1
        return maps
    if kind == "full":
        return np.ones(shape, np.float32)
    if kind == "random":
        coarse = np.random.default_rng(seed).random((n, 12, 12), np.float32)
        return np.clip(ndimage.zoom(coarse, (1, h / 12, w / 12), order=1), 0, 1)
    raise ValueError(f"unknown baseline {kind!r}: choose centre, full or random")
