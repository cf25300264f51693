"""What a map explains, beyond one class of one classifier: a function of the model's outputs giving one score per
image (pytorch-grad-cam's targets, in Keras). Any callable works; these are the common ones.

A target receives the output it reads, pre-activation where the model's last layer is a softmax or sigmoid Dense
(the logits), as a (B, ...) tensor, and returns (B,) scores; a target that reads several outputs (a detector's
boxes and scores) receives them all as {name: tensor}. The map is made for that score as it is for a class's logit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from keras import ops


@dataclass(frozen=True, eq=False)
class RegionTarget:
    """A segmentation model's class ``index`` summed over a region: sum_ij mask_ij * y_ij^c, with ``mask`` (H, W)
    (bool or weights) on the output's grid (pytorch-grad-cam's SemanticSegmentationTarget)."""

    index: int
    mask: np.ndarray
    output: str | int | None = None  # which output, for a model with several

    def __call__(self, outputs):
        mask = np.asarray(self.mask, np.float32)
        if len(outputs.shape) != 4 or tuple(outputs.shape[1:3]) != mask.shape:
            raise ValueError(f"a region of {mask.shape} needs a (B, H, W, classes) output, got {tuple(outputs.shape)}")
        return ops.sum(ops.cast(outputs[..., self.index], "float32") * ops.convert_to_tensor(mask), axis=(1, 2))


@dataclass(frozen=True, eq=False)
class RegressionTarget:
    """A regression output's value ``index`` (``sign=-1``: its negative, what makes it smaller)."""

    index: int = 0
    sign: float = 1.0
    output: str | int | None = None

    def __call__(self, outputs):
        return self.sign * ops.cast(ops.reshape(outputs, (ops.shape(outputs)[0], -1))[:, self.index], "float32")


@dataclass(frozen=True, eq=False)
class BoxTarget:
    """A detector's score of class ``index`` for the predicted box that best matches ``box`` (y0, x0, y1, x1):
    reads the outputs named ``boxes`` (B, N, 4), in the same coordinates, and ``scores`` (B, N, classes)
    (pytorch-grad-cam's FasterRCNNBoxScoreTarget, for one box)."""

    box: tuple
    index: int
    boxes: str = "boxes"
    scores: str = "scores"
    output: str | int | None = field(default=None, init=False)  # reads two outputs

    def __call__(self, outputs: dict):
        boxes, scores = ops.cast(outputs[self.boxes], "float32"), ops.cast(outputs[self.scores], "float32")
        y0, x0, y1, x1 = (float(v) for v in self.box)
        top, left = ops.maximum(boxes[..., 0], y0), ops.maximum(boxes[..., 1], x0)
        bottom, right = ops.minimum(boxes[..., 2], y1), ops.minimum(boxes[..., 3], x1)
        inter = ops.relu(bottom - top) * ops.relu(right - left)
        area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]) + (y1 - y0) * (x1 - x0)
        best = ops.argmax(ops.divide_no_nan(inter, area - inter), axis=1)  # (B,) the best-matching box
        best_scores = ops.squeeze(ops.take_along_axis(scores, ops.cast(best, "int32")[:, None, None], axis=1), 1)
        return best_scores[:, self.index]


def reads_all_outputs(target) -> bool:
    """Whether ``target`` takes every output as {name: tensor} (a detector's boxes and scores)."""
    return isinstance(target, BoxTarget) or getattr(target, "reads_all_outputs", False)
