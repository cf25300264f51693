"""Weakly-supervised localization, segmentation and faithfulness of explanation maps, against known ground truth.

Everything here takes arrays: maps (N, H, W) in [0, 1], the digits' true boxes (N, 4) and masks (N, H, W), and
for faithfulness a ``predict`` function (images -> probabilities).

References: Zhou et al. 2016 (CAM box protocol, §3.1); Choe et al. 2020, arXiv 2001.07437 (MaxBoxAcc, MaxBoxAccV2);
Zhang et al. 2016, arXiv 1608.00507 (pointing game); Chattopadhay et al. 2018, arXiv 1710.11063, §5.1
(Average Drop, Increase in Confidence); Petsiuk et al. 2018, arXiv 1806.07421 (RISE deletion/insertion).
"""

from __future__ import annotations

import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

from cam_mnist.core import boxes as bx
from cam_mnist.core.resize import area_resize, bilinear_resize

MAXBOX_THRESHOLDS = np.round(np.arange(0.0, 1.0, 0.05), 2)  # wsolevaluation uses 0.01; 0.05 keeps 10k maps fast
IDEAL_BLUR_PX = 2.0  # the blurred ideal map of the ceiling rows: a map as sharp as a digit's stroke is wide
POINTING_TOLERANCE = 3  # pixels


# ---------------------------------------------------------------------------------------------------------- boxes
V2_DELTAS = (0.3, 0.5, 0.7)  # MaxBoxAccV2's IoU thresholds delta (Choe et al. 2020, §4.1)


def box_ious_by_threshold(maps: np.ndarray, true_boxes: np.ndarray, thresholds) -> dict[float, tuple]:
    """{threshold: ((N,) IoU of the largest component's box, (N,) best IoU over every component's box)}, both from
    one labelling of the N maps per threshold (:func:`cam_mnist.core.boxes.component_ious`)."""
    maps = np.asarray(maps, np.float32)
    return _by_threshold(lambda t: bx.component_ious(bx.keep_above(maps, t), true_boxes), thresholds)


def ious_by_threshold(maps: np.ndarray, true_boxes: np.ndarray, thresholds) -> dict[float, np.ndarray]:
    """{threshold: (N,) IoU of the map's protocol box (largest component) with the true box}: the CAM paper's box
    alone, without the per-component boxes of MaxBoxAccV2 (training's heatmap steps sweep it on validation)."""
    return _by_threshold(lambda t: bx.iou(bx.boxes_from_maps(maps, t), true_boxes), thresholds)


def _by_threshold(ious_at, thresholds) -> dict:
    """{threshold: ious_at(threshold)}. Labelling is most of the time; scipy's label runs without the GIL, so
    threads share the thresholds out."""
    thresholds = sorted({float(t) for t in thresholds})
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        return dict(zip(thresholds, pool.map(ious_at, thresholds), strict=True))


def best_threshold(ious: dict[float, np.ndarray], delta: float = bx.IOU_CORRECT) -> float:
    """The threshold whose boxes reach IoU >= ``delta`` most often (the lowest such, on a tie)."""
    return max(sorted(ious), key=lambda t: (ious[t] >= delta).mean())


def calibrate(maps: np.ndarray, true_boxes: np.ndarray) -> dict:
    """The map thresholds chosen on these (validation) maps, to be applied unchanged to the test split:
    ``tau`` for the CAM paper's box (largest component at IoU >= 0.5: top-1 localization and MaxBoxAcc), and
    ``v2`` {delta: tau} for MaxBoxAccV2 (each image at its best component's box, IoU >= delta). wsolevaluation's
    calibration (Choe et al. 2020, §4) over :data:`MAXBOX_THRESHOLDS`."""
    return calibrate_chunks([(maps, true_boxes)])


def calibrate_chunks(pairs) -> dict:
    """:func:`calibrate` over (maps, boxes) pairs of a split taken a chunk at a time (an iterable): the same
    thresholds as from the whole split at once, with only one chunk's maps in memory."""
    largest, best = defaultdict(list), defaultdict(list)
    for maps, true_boxes in pairs:
        for t, (a, b) in box_ious_by_threshold(maps, true_boxes, MAXBOX_THRESHOLDS).items():
            largest[t].append(a)
            best[t].append(b)
    largest = {t: np.concatenate(v) for t, v in largest.items()}
    best = {t: np.concatenate(v) for t, v in best.items()}
    return {"tau": best_threshold(largest), "v2": {d: best_threshold(best, d) for d in V2_DELTAS}}


def choose_threshold(maps: np.ndarray, true_boxes: np.ndarray) -> float:
    """The map threshold tau that boxes the most digits (IoU >= 0.5) on these maps (``calibrate(...)["tau"]``)."""
    return best_threshold(ious_by_threshold(maps, true_boxes, MAXBOX_THRESHOLDS))


def box_metrics(
    maps: np.ndarray,
    correct: np.ndarray,
    true_boxes: np.ndarray,
    threshold=bx.PAPER_THRESHOLD,
    calibrated: float | None = None,
    v2: dict[float, float] | None = None,
) -> dict:
    """Box localization of ``maps`` (the true class's) against ``true_boxes``:

    - at ``threshold`` (the CAM paper's 20%): top-1 localization (right class and IoU >= 0.5), GT-known
      localization, mean IoU;
    - at ``calibrated`` (tau chosen on validation maps, :func:`calibrate`), if given: top-1 and GT-known
      localization again; GT-known at a validation tau is MaxBoxAcc at delta = 0.5 as wsolevaluation scores it;
    - with ``v2`` ({delta: tau} from :func:`calibrate`), MaxBoxAccV2: per delta the share of images whose best
      component's box reaches IoU >= delta at that tau, and their mean;
    - the share of maps whose peak lies in the true box.

    Where the prediction is right the predicted class's map is this map, and where it is wrong top-1 fails
    whatever the box, so top-1 needs no other maps. Only the thresholds named are labelled: no sweep on test.
    """
    taus = [threshold, *([] if calibrated is None else [calibrated]), *(v2 or {}).values()]
    ious = box_ious_by_threshold(maps, true_boxes, taus)
    largest = ious[float(threshold)][0]
    hit = largest >= bx.IOU_CORRECT
    result = {
        "top1_loc": float((correct & hit).mean()),
        "gt_known_loc": float(hit.mean()),
        "mean_iou": float(largest.mean()),
        "peak_in_box": float(bx.peak_in_box(maps, true_boxes).mean()),
        "iou": largest,
    }
    if calibrated is not None:
        hit = ious[float(calibrated)][0] >= bx.IOU_CORRECT
        result |= {
            "top1_loc_calibrated": float((correct & hit).mean()),
            "gt_known_loc_calibrated": float(hit.mean()),
            "calibrated_threshold": float(calibrated),
        }
    if v2:
        per_delta = {d: float((ious[float(t)][1] >= d).mean()) for d, t in v2.items()}
        result |= {f"maxboxacc_v2_{round(d * 100)}": a for d, a in per_delta.items()}
        result |= {f"maxboxacc_v2_tau_{round(d * 100)}": float(t) for d, t in v2.items()}
        result["maxboxacc_v2"] = float(np.mean(list(per_delta.values())))
    return result


def per_digit_metrics(
    maps: np.ndarray, boxes: np.ndarray, masks: np.ndarray, found: np.ndarray, calibrated: float | None = None
) -> dict:
    """Several digits per image: does the map of each digit's class find *that* digit?

    maps (N, K, H, W): the map of digit k's class; boxes (N, K, 4) and masks (N, K, H, W): each digit's truth;
    found (N, K): whether the model detected digit k's class. Top-1 localization needs the class detected and
    the box (at 20%, and at the ``calibrated`` threshold if given) at IoU >= 0.5 with digit k's box; pointing and
    peak-in-box need the map's peak on digit k. Pointing at another digit of the image is counted apart: it is
    the failure a multi-label CAM is suspected of."""
    n, k, h, w = maps.shape
    flat_maps, flat_masks = maps.reshape(n * k, h, w), masks.reshape(n * k, h, w)
    metrics = box_metrics(flat_maps, found.ravel(), boxes.reshape(n * k, 4), calibrated=calibrated)
    others = (masks.sum(1, keepdims=True) - masks).astype(bool).reshape(n * k, h, w)  # the image's other digits
    return {
        **{key: value for key, value in metrics.items() if key != "iou"},
        **pointing_metrics(flat_maps, flat_masks),
        "points_at_other_digit": float(bx.pointing_game(flat_maps, others & ~flat_masks).mean()),
    }


# ------------------------------------------------------------------------------------------------ points and masks
def pointing_metrics(maps: np.ndarray, masks: np.ndarray, near=None) -> dict:
    """The pointing game on the digit's mask and within POINTING_TOLERANCE pixels of it. ``near``: that dilated
    mask, if already made (it is the same for every method)."""
    near = bx.near(masks, POINTING_TOLERANCE) if near is None else near
    return {
        "pointing": float(bx.pointing_game(maps, masks).mean()),
        f"pointing_{POINTING_TOLERANCE}px": float(bx.pointing_game(maps, near).mean()),
    }


AP_BINS = 1000  # score bins of pixel AP's histograms: O(pixels) for 100M pixels


def pixel_histograms(maps: np.ndarray, masks: np.ndarray, bins: int = AP_BINS) -> tuple[np.ndarray, np.ndarray]:
    """(bins,) counts of the digit's pixels and of all pixels per map-value bin, highest values first: summed over
    chunks of images they give :func:`average_precision` of the whole set."""
    scores = (np.asarray(maps, np.float32) * (bins - 1)).astype(np.intp)
    np.clip(scores, 0, bins - 1, out=scores)
    positives = np.bincount(scores[np.asarray(masks, bool)], minlength=bins)[::-1]
    return positives, np.bincount(scores.ravel(), minlength=bins)[::-1]


def average_precision(positives: np.ndarray, totals: np.ndarray) -> float:
    """Area under the precision-recall curve from :func:`pixel_histograms` (step-wise, as average precision)."""
    tp, predicted = np.cumsum(positives), np.cumsum(totals)
    if tp[-1] == 0:
        return 0.0
    precision = np.divide(tp, predicted, out=np.zeros(len(tp)), where=predicted > 0)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def pixel_average_precision(maps: np.ndarray, masks: np.ndarray, bins: int = AP_BINS) -> float:
    """Area under the precision-recall curve of map values as a pixel classifier of the digit mask, pooled over
    all images. Histograms in ``bins`` score bins keep this O(pixels) for 100M pixels."""
    return average_precision(*pixel_histograms(maps, masks, bins))


def segmentation_metrics(maps: np.ndarray, masks: np.ndarray, threshold: float = bx.PAPER_THRESHOLD) -> dict:
    return {
        "mask_iou": float(bx.mask_iou(bx.keep_above(maps, threshold), masks).mean()),
        "pixel_ap": pixel_average_precision(maps, masks),
    }


# ---------------------------------------------------------------------------------------------------- faithfulness
def confidence_changes(
    predict, images: np.ndarray, maps: np.ndarray, targets: np.ndarray, probs=None, batch: int = 500
) -> tuple[np.ndarray, np.ndarray]:
    """Per image, Grad-CAM++ §5.1's drop max(0, Y - O) / Y and whether O > Y, where Y is the target's probability
    on the image and O on the image multiplied by its map. ``probs``: the model's probabilities on ``images`` if
    already known (they are the same for every method)."""
    n = len(images)
    idx = np.arange(n)
    if probs is None:
        probs = np.concatenate([predict(images[lo : lo + batch]) for lo in range(0, n, batch)])
    full = probs[idx, targets]
    masked = np.concatenate(
        [predict(images[lo : lo + batch] * maps[lo : lo + batch, ..., None]) for lo in range(0, n, batch)]
    )[idx, targets]
    return np.maximum(0, full - masked) / np.maximum(full, 1e-12), masked > full


def average_drop_increase(
    predict, images: np.ndarray, maps: np.ndarray, targets: np.ndarray, probs=None, batch: int = 500
) -> dict:
    """Grad-CAM++ §5.1: Average Drop % = mean max(0, Y - O) / Y * 100, Increase in Confidence = % of images with
    O > Y (:func:`confidence_changes`)."""
    drop, rise = confidence_changes(predict, images, maps, targets, probs, batch)
    return {"average_drop_pct": float(np.mean(drop) * 100), "increase_in_confidence_pct": float(np.mean(rise) * 100)}


def auc(y: np.ndarray) -> np.ndarray:
    """Area under curves sampled at equally spaced x in [0, 1] (trapezoids). y: (..., steps + 1)."""
    return (y[..., 1:] + y[..., :-1]).sum(-1) / (2 * (y.shape[-1] - 1))


def deletion_insertion(
    predict,
    images: np.ndarray,
    maps: np.ndarray,
    targets: np.ndarray,
    *,
    steps: int = 20,
    blur_sigma: float = 5.0,
    probs: np.ndarray | None = None,
) -> dict:
    """RISE (Petsiuk et al. 2018): delete the most salient pixels first (to 0) / insert them first into a blurred
    image, in ``steps`` equal chunks; the AUC of the target's probability. Low deletion and high insertion are
    better. images (N, H, W, 1), maps (N, H, W). ``probs``: the model's probabilities on ``images`` if already
    known: the deletion curve starts and the insertion curve ends on the whole image, so two passes are saved."""
    n, h, w, _ = images.shape
    idx = np.arange(n)
    order = np.argsort(-maps.reshape(n, -1), axis=1, kind="stable")  # most salient first
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(h * w)[None].repeat(n, 0), axis=1)
    rank = rank.reshape(n, h, w, 1)
    blurred = ndimage.gaussian_filter(images, sigma=(0, blur_sigma, blur_sigma, 0))
    whole = None if probs is None else np.asarray(probs)[idx, targets]

    def target_prob(x: np.ndarray, unchanged: bool) -> np.ndarray:
        return whole if unchanged and whole is not None else predict(x.astype(np.float32))[idx, targets]

    curves = {"deletion": [], "insertion": []}
    for k in np.linspace(0, h * w, steps + 1).astype(int):
        revealed = rank < k  # the k most salient pixels
        curves["deletion"].append(target_prob(np.where(revealed, 0.0, images), unchanged=k == 0))
        curves["insertion"].append(target_prob(np.where(revealed, images, blurred), unchanged=k == h * w))
    return {f"{name}_auc": float(auc(np.stack(values, 1)).mean()) for name, values in curves.items()}


# ------------------------------------------------------------------------------------------------------- baselines
def baseline_maps(
    kind: str, true_boxes: np.ndarray, shape: tuple[int, int, int], seed: int = 0, rows: slice | None = None
) -> np.ndarray:
    """Maps that know nothing about the image, so a reader sees what each method adds:
    ``centre``: the indicator of a centred box of the average digit-box size (its protocol box is that box);
    ``full``: a constant map (its box is the whole image); ``random``: smooth noise (12x12 noise, upsampled),
    like the CAM of an untrained network. ``shape`` (N, H, W) and ``true_boxes`` are the whole split's; ``rows``
    (a slice) asks for the maps of those images only, the same as the whole split's maps there."""
    n, h, w = shape
    rows = slice(0, n) if rows is None else rows
    count = len(range(n)[rows])
    if kind == "centre":
        size = np.round((true_boxes[:, 2:] - true_boxes[:, :2]).mean(0)).astype(int)  # (height, width)
        y0, x0 = (h - size[0]) // 2, (w - size[1]) // 2
        maps = np.zeros((count, h, w), np.float32)
        maps[:, y0 : y0 + size[0], x0 : x0 + size[1]] = 1
        return maps
    if kind == "full":
        return np.ones((count, h, w), np.float32)
    if kind == "random":
        coarse = np.random.default_rng(seed).random((n, 12, 12), np.float32)[rows]
        return np.clip(bilinear_resize(coarse, (h, w)), 0, 1)
    raise ValueError(f"unknown baseline {kind!r}: choose centre, full or random")


# --------------------------------------------------------------------------------------------------- the ceiling
def ideal_maps(masks: np.ndarray, grid: tuple[int, int], blur_px: float = 0.0) -> np.ndarray:
    """The best a map on a ``grid`` (h, w) can do: each digit's mask averaged over the grid's cells (optionally
    blurred by a Gaussian of ``blur_px`` canvas pixels), upsampled back bilinearly as every CAM is, and scaled to
    a maximum of 1. Boxing these maps shows how much of a method's gap to 100% the grid alone explains.
    masks (N, H, W) bool -> (N, H, W) float32."""
    n, h, w = masks.shape
    cells = area_resize(masks.astype(np.float32), grid)  # (N, gh, gw): the share of each cell the digit covers
    if blur_px:
        cells = ndimage.gaussian_filter(cells, (0, blur_px * grid[0] / h, blur_px * grid[1] / w))
    maps = bilinear_resize(cells, (h, w))
    peak = maps.reshape(n, -1).max(1)[:, None, None]
    return np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)
