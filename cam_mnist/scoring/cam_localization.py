"""CAM localization of a model's current weights on a split: what training reports at every heatmap step and
``eval`` for every checkpoint (each digit scored with the CAM of its true class against its own box)."""

from __future__ import annotations

import numpy as np

from cam_mnist import maps
from cam_mnist.core.boxes import IOU_CORRECT, PAPER_THRESHOLD, peak_in_box
from cam_mnist.data.splits import Split
from cam_mnist.scoring import localization
from cam_mnist.scoring.classification import detected
from cam_mnist.scoring.tally import chunks


def cam_localization(model, split: Split, probs: np.ndarray, tau: float | None = None) -> dict:
    """CAM localization of the model's current weights on ``split``, each digit scored with the map of its true
    class against its own box:

    - ``loc_20``: top-1 localization by the CAM paper's protocol (box above 20% of the map's max, IoU >= 0.5,
      class named: argmax, or among the top K with K digits); ``gt_known_20``: the same without the class;
    - ``loc_tau``: top-1 localization at the threshold ``tau`` chosen on validation (:func:`localization.
      choose_threshold`); with ``tau=None`` it is chosen on ``split`` itself, which is what training reports on
      its validation images;
    - ``per_class``: ``loc_tau`` of each class present, {class: share}; ``worst_class``: the lowest of them (the
      digit 1 for a map wider than its stroke);
    - ``peak_in_box``: the map's maximum lies in the digit's box.
    Where the class is predicted, the predicted class's map is the true class's, so no other maps are needed."""
    sweep = localization.MAXBOX_THRESHOLDS if tau is None else [tau]
    ious, peak = _map_ious(model, split, [PAPER_THRESHOLD, *sweep])
    tau = localization.best_threshold({float(t): ious[float(t)] for t in sweep}) if tau is None else tau
    found = detected(probs, split.labels).ravel()
    boxed, classes = found & (ious[tau] >= IOU_CORRECT), split.labels.ravel()
    per_class = {int(c): float(boxed[classes == c].mean()) for c in np.unique(classes)}
    return {
        "loc_20": float((found & (ious[PAPER_THRESHOLD] >= IOU_CORRECT)).mean()),
        "gt_known_20": float((ious[PAPER_THRESHOLD] >= IOU_CORRECT).mean()),
        "loc_tau": float(boxed.mean()),
        "tau": float(tau),
        "per_class": per_class,
        "worst_class": min(per_class.values()),
        "peak_in_box": float(peak.mean()),
    }


def validation_threshold(model, val: Split) -> float:
    """The map threshold tau that boxes the most validation digits with their true class's CAM: chosen here once,
    then applied unchanged to the test split (:func:`localization.choose_threshold`)."""
    return localization.best_threshold(_map_ious(model, val, localization.MAXBOX_THRESHOLDS)[0])


def _map_ious(model, split: Split, thresholds) -> tuple[dict[float, np.ndarray], np.ndarray]:
    """{threshold: (N*K,) IoU of each digit's protocol box} from the CAM of its true class, and (N*K,) whether the
    map's peak lies in the digit's box: made a chunk of images at a time, so no N x H x W array is held."""
    ious, peaks = {}, []
    for rows in chunks(len(split)):
        part = split.subset(rows)
        maps, boxes = true_class_maps(model, part), part.boxes.reshape(-1, 4)  # (n*K, H, W), (n*K, 4)
        for t, value in localization.ious_by_threshold(maps, boxes, thresholds).items():
            ious.setdefault(t, []).append(value)
        peaks.append(peak_in_box(maps, boxes))
    return {t: np.concatenate(v) for t, v in ious.items()}, np.concatenate(peaks)


def true_class_maps(model, split: Split) -> np.ndarray:
    """CAM of each digit's true class: (N*K, H, W), digit k of image i at row i*K + k (K = 1 for one digit)."""
    cam = maps.get_method(model, "cam")  # reads the current weights at every call
    images, n = split.float_images(), len(split)
    labels = split.labels.reshape(n, -1)  # (N, K)
    return np.stack([cam(images, labels[:, k]) for k in range(labels.shape[1])], 1).reshape(-1, *images.shape[1:3])
