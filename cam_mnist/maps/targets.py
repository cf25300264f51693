"""What a map explains, beyond one class of one classifier: a function of the model's outputs giving one score per
image (pytorch-grad-cam's targets, in Keras). Any callable works; these are the common ones.

A target receives the output it reads, pre-activation where the model's last layer is a softmax or sigmoid Dense
(the logits), as a (B, ...) tensor, and returns (B,) scores; a target that reads several outputs (a detector's
boxes and scores) receives them all as {name: tensor}. The map is made for that score as it is for a class's logit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf


@dataclass(frozen=True, eq=False)
class RegionTarget:
    """A segmentation model's class ``index`` summed over a region: sum_ij mask_ij * y_ij^c, with ``mask`` (H, W)
    (bool or weights) on the output's grid (pytorch-grad-cam's SemanticSegmentationTarget)."""

    index: int
    mask: np.ndarray
    output: str | int | None = None  # which output, for a model with several

    def __call__(self, outputs):
        mask = tf.constant(np.asarray(self.mask, np.float32))
        if outputs.shape.rank != 4 or tuple(outputs.shape[1:3]) != tuple(mask.shape):
            raise ValueError(f"a region of {tuple(mask.shape)} needs a (B, H, W, classes) output, got {outputs.shape}")
        return tf.reduce_sum(tf.cast(outputs[..., self.index], tf.float32) * mask, axis=(1, 2))


@dataclass(frozen=True, eq=False)
class RegressionTarget:
    """A regression output's value ``index`` (``sign=-1``: its negative, what makes it smaller)."""

    index: int = 0
    sign: float = 1.0
    output: str | int | None = None

    def __call__(self, outputs):
        return self.sign * tf.cast(tf.reshape(outputs, (tf.shape(outputs)[0], -1))[:, self.index], tf.float32)


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
        boxes, scores = tf.cast(outputs[self.boxes], tf.float32), tf.cast(outputs[self.scores], tf.float32)
        y0, x0, y1, x1 = (float(v) for v in self.box)
        top, left = tf.maximum(boxes[..., 0], y0), tf.maximum(boxes[..., 1], x0)
        bottom, right = tf.minimum(boxes[..., 2], y1), tf.minimum(boxes[..., 3], x1)
        inter = tf.nn.relu(bottom - top) * tf.nn.relu(right - left)
        area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]) + (y1 - y0) * (x1 - x0)
        best = tf.argmax(tf.math.divide_no_nan(inter, area - inter), axis=1)  # (B,) the best-matching box
        return tf.gather(tf.gather(scores, best, batch_dims=1), self.index, axis=1)


def reads_all_outputs(target) -> bool:
    """Whether ``target`` takes every output as {name: tensor} (a detector's boxes and scores)."""
    return isinstance(target, BoxTarget) or getattr(target, "reads_all_outputs", False)
