"""Every localization metric of one set of maps, accumulated chunk by chunk, so memory is flat in the number of
images: per image only a few numbers are kept (IoUs at the thresholds asked, hits, drops), per set a histogram of
map values for pixel AP. Arrays in, numbers out; the metrics themselves are :mod:`cam_mnist.scoring.localization`'s.
"""

from __future__ import annotations

import numpy as np

from cam_mnist.core import boxes as bx
from cam_mnist.maps.segmentation import segment
from cam_mnist.scoring import localization as loc
from cam_mnist.scoring import road

CHUNK = 512  # images whose maps are made and scored at once: 20 MB of 100x100 maps (a multiple of explain's batch)


def chunks(n: int, size: int = CHUNK):
    """Slices covering 0..n in steps of ``size``."""
    return [slice(lo, min(lo + size, n)) for lo in range(0, n, size)]


class Tally:
    """One method's maps of N test images, scored as they come (:meth:`add`), summed up by :meth:`result`.

    Args:
        cal: the thresholds chosen on validation (:func:`cam_mnist.scoring.localization.calibrate`): ``tau`` for the CAM
            paper's box, ``v2`` {delta: tau} for MaxBoxAccV2. The paper's 20% is always scored too.
        faithful: how many of the first images the deletion / insertion curves use (0: no faithfulness).
        road: how many of those the ROAD scores use (:mod:`cam_mnist.scoring.road`; 0: none).
    """

    def __init__(self, cal: dict, faithful: int = 0, road: int = 0):
        self.cal, self.faithful, self.road = cal, faithful, min(road, faithful)
        self.taus = sorted({bx.PAPER_THRESHOLD, cal["tau"], *cal["v2"].values()})
        self.largest = {t: [] for t in self.taus}  # (n,) IoU of the largest component's box, per threshold
        self.best = {t: [] for t in cal["v2"].values()}  # (n,) IoU of the best component's box (MaxBoxAccV2)
        keys = ("peak_in_box", "pointing", "pointing_near", "relevance_mass", "mask_iou", "drop", "rise")
        self.per_image = {k: [] for k in keys}
        self.positives, self.totals = np.zeros(loc.AP_BINS, np.int64), np.zeros(loc.AP_BINS, np.int64)
        self._faithful_parts = []  # (images, maps, targets, probs) of the first ``faithful`` images

    def add(self, maps, boxes, masks, near=None) -> None:
        """Score the (n, H, W) maps of the true class against the n digits' boxes and masks (``near``: the masks
        dilated by the pointing tolerance, if already made)."""
        ious = loc.box_ious_by_threshold(maps, boxes, self.taus)
        for t in self.taus:
            self.largest[t].append(ious[t][0])
        for t in self.best:
            self.best[t].append(ious[t][1])
        near = bx.near(masks, loc.POINTING_TOLERANCE) if near is None else near
        self.per_image["peak_in_box"].append(bx.peak_in_box(maps, boxes))
        self.per_image["pointing"].append(bx.pointing_game(maps, masks))
        self.per_image["pointing_near"].append(bx.pointing_game(maps, near))
        self.per_image["relevance_mass"].append(bx.relevance_mass(maps, masks))
        self.per_image["mask_iou"].append(bx.mask_iou(bx.keep_above(maps, bx.PAPER_THRESHOLD), masks))
        positives, totals = loc.pixel_histograms(maps, masks)
        self.positives += positives
        self.totals += totals

    def add_faithfulness(self, predict, images, maps, targets, probs, first: int) -> None:
        """Average drop and increase in confidence of the maps of the classes the model predicts (n, H, W) for
        these images; the images ``first``, ``first + 1``... among the first ``faithful`` are kept for deletion and
        insertion (:meth:`result`)."""
        drop, rise = loc.confidence_changes(predict, images, maps, targets, probs)
        self.per_image["drop"].append(drop)
        self.per_image["rise"].append(rise)
        keep = max(0, min(len(images), self.faithful - first))
        if keep:
            self._faithful_parts.append((images[:keep], maps[:keep], targets[:keep], probs[:keep]))

    def ious(self, threshold: float) -> np.ndarray:
        """(n,) IoU of each image's protocol box at ``threshold``."""
        return np.concatenate(self.largest[threshold])

    def result(self, correct: np.ndarray, predict=None) -> dict:
        """Every metric, as :func:`cam_mnist.scoring.localization.box_metrics` and its siblings name them, with the
        per-image IoU at 20% under ``"iou"``. ``correct`` (n,): whether each image's class was predicted right."""
        at_20 = self.ious(bx.PAPER_THRESHOLD)
        hit = at_20 >= bx.IOU_CORRECT
        hit_tau = self.ious(self.cal["tau"]) >= bx.IOU_CORRECT
        joined = {k: np.concatenate(v) for k, v in self.per_image.items() if v}
        result = {
            "top1_loc": float((correct & hit).mean()),
            "gt_known_loc": float(hit.mean()),
            "mean_iou": float(at_20.mean()),
            "peak_in_box": float(joined["peak_in_box"].mean()),
            "iou": at_20,
            "iou_calibrated": self.ious(self.cal["tau"]),  # per image, at tau: per-class tables, the failures' gallery
            "top1_loc_calibrated": float((correct & hit_tau).mean()),
            "gt_known_loc_calibrated": float(hit_tau.mean()),
            "calibrated_threshold": float(self.cal["tau"]),
            "pointing": float(joined["pointing"].mean()),
            f"pointing_{loc.POINTING_TOLERANCE}px": float(joined["pointing_near"].mean()),
            "relevance_mass": float(joined["relevance_mass"].mean()),
            "mask_iou": float(joined["mask_iou"].mean()),
            "pixel_ap": loc.average_precision(self.positives, self.totals),
        }
        per_delta = {d: float((np.concatenate(self.best[t]) >= d).mean()) for d, t in self.cal["v2"].items()}
        result |= {f"maxboxacc_v2_{round(d * 100)}": a for d, a in per_delta.items()}
        result |= {f"maxboxacc_v2_tau_{round(d * 100)}": float(t) for d, t in self.cal["v2"].items()}
        result["maxboxacc_v2"] = float(np.mean(list(per_delta.values())))
        if "drop" in joined:
            result |= {
                "average_drop_pct": float(joined["drop"].mean() * 100),
                "increase_in_confidence_pct": float(joined["rise"].mean() * 100),
            }
        if self._faithful_parts:
            images, maps, targets, probs = (np.concatenate(p) for p in zip(*self._faithful_parts, strict=True))
            result |= loc.deletion_insertion(predict, images, maps, targets, probs=probs)
            if self.road:
                k = min(self.road, len(images))
                scores = road.road(predict, images[:k], maps[:k], targets[:k], probs[:k])
                result |= {f"road_{name}": float(v.mean()) for name, v in scores.items()}
                result["road"], result["road_images"] = scores["combined"], k  # per image: the per-class table
        return result


class SegmentationTally:
    """The segmentations seeded by one method's maps (:func:`cam_mnist.maps.segmentation.segment` with the thresholds
    ``params`` chosen on validation), scored as they come: the tight box of the segmented pixels against the
    digit's box, the mask against the digit's mask, and pixel AP of the map kept on the segmented pixels."""

    def __init__(self, params: dict, method: str = "grow"):
        self.params, self.method = params, method
        self.box_iou, self.mask_iou = [], []
        self.positives, self.totals = np.zeros(loc.AP_BINS, np.int64), np.zeros(loc.AP_BINS, np.int64)

    def add(self, images, maps, boxes, masks) -> None:
        found = segment(images, maps, self.method, **self.params)
        self.box_iou.append(bx.iou(bx.tight_boxes(found), boxes))
        self.mask_iou.append(bx.mask_iou(found, masks))
        positives, totals = loc.pixel_histograms(np.where(found, maps, 0), masks)
        self.positives += positives
        self.totals += totals

    def result(self, correct: np.ndarray) -> dict:
        ious = np.concatenate(self.box_iou)
        hit = ious >= bx.IOU_CORRECT
        return {
            "top1_loc_calibrated": float((correct & hit).mean()),
            "gt_known_loc_calibrated": float(hit.mean()),
            "mean_iou": float(ious.mean()),
            "iou_calibrated": ious,
            "mask_iou": float(np.concatenate(self.mask_iou).mean()),
            "pixel_ap": loc.average_precision(self.positives, self.totals),
            "segmentation": {"method": self.method, **self.params},
        }
