"""Maps that are not channel-weighted sums: guided backpropagation, guided Grad-CAM, occlusion. They take the same
inputs and return the same (N, H, W) maps in [0, 1] as the CAM family, by overriding ``raw_maps`` of the base."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from cam_mnist.cams.base import PREDICTED, BaseCAM, upsample
from cam_mnist.cams.layers import Head
from cam_mnist.cams.methods import GradCAM
from cam_mnist.errors import UserError


@tf.custom_gradient
def guided_relu(x):
    """ReLU whose backward pass lets through only positive gradients at positive inputs (Springenberg et al.)."""

    def grad(dy):
        return dy * tf.cast(dy > 0, dy.dtype) * tf.cast(x > 0, dy.dtype)

    return tf.nn.relu(x), grad


def _guided_copy(model: keras.Model) -> keras.Model:
    """The model with every ReLU (layer or activation) replaced by :func:`guided_relu`, sharing no state."""

    def swap(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.ReLU):
            return keras.layers.Activation(guided_relu, name=layer.name)
        if config.get("activation") == "relu":
            config["activation"] = guided_relu
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=swap)
    copy.set_weights(model.get_weights())
    return copy


class GuidedBackprop(BaseCAM):
    """Guided backpropagation. Springenberg et al. 2015, arXiv 1412.6806, §3.4: dy^c/dx with every ReLU's backward
    pass replaced by the guided rule. The map is the positive part of the input gradient, summed over channels."""

    name = "guided-backprop"

    def __init__(self, model, layer=None, **kw):
        super().__init__(model, layer, **kw)
        guided = _guided_copy(model)
        self.guided_head = Head(guided, guided.get_layer(self.layer.name), self.head.use_softmax)

    def raw_maps(self, images, targets):
        with tf.GradientTape() as tape:
            tape.watch(images)
            _, scores = self.guided_head.forward(images)
            targets = tf.where(targets == PREDICTED, tf.argmax(scores, -1, output_type=tf.int32), targets)
            score = tf.gather(scores, targets, batch_dims=1)
        return tf.nn.relu(tf.reduce_sum(tape.gradient(score, images), -1)), targets  # (B, H, W)


class GuidedGradCAM(GuidedBackprop):
    """Guided Grad-CAM. Selvaraju et al. 2017, §3.1: guided backpropagation times Grad-CAM upsampled to the input."""

    name = "guided-gradcam"

    def __init__(self, model, layer=None, **kw):
        super().__init__(model, layer, **kw)
        self.gradcam = GradCAM(model, self.layer.name, use_softmax=self.head.use_softmax)

    def raw_maps(self, images, targets):
        guided, targets = super().raw_maps(images, targets)  # targets now resolved: both explain the same class
        coarse, _ = self.gradcam.raw_maps(images, targets)
        return guided * upsample(coarse, self.input_shape[:2]), targets


class Occlusion(BaseCAM):
    """Occlusion sensitivity. Zeiler & Fergus 2014, arXiv 1311.2901, §4.2: slide a ``patch`` x ``patch`` square of
    ``baseline`` over the image with ``stride``; each pixel's value is the mean drop of the target's score over
    the placements that cover it. Needs one forward pass per placement and no gradients."""

    name = "occlusion"
    needs_gradients = False
    default_batch_size = 8

    def __init__(self, model, layer=None, patch: int = 16, stride: int = 8, baseline: float = 0.0, **kw):
        super().__init__(model, layer, **kw)
        h, w = self.input_shape[:2]
        if not (0 < patch <= min(h, w) and stride > 0):
            raise UserError(f"occlusion patch must be in 1..{min(h, w)} and stride positive, got {patch}, {stride}")
        starts = lambda n: sorted(set(range(0, n - patch + 1, stride)) | {n - patch})  # noqa: E731 - cover the edge
        masks = np.zeros((len(starts(h)) * len(starts(w)), h, w), np.float32)
        for i, (y, x) in enumerate((y, x) for y in starts(h) for x in starts(w)):
            masks[i, y : y + patch, x : x + patch] = 1
        self.masks = tf.constant(masks)  # (P, H, W)
        self.coverage = tf.constant(masks.sum(0))  # (H, W) placements covering each pixel, >= 1
        self.baseline = baseline

    def raw_maps(self, images, targets):
        b, p = tf.shape(images)[0], self.masks.shape[0]
        _, scores = self.head.forward(images)
        targets = tf.where(targets == PREDICTED, tf.argmax(scores, -1, output_type=tf.int32), targets)
        keep = 1.0 - self.masks[None, :, :, :, None]  # (1, P, H, W, 1)
        occluded = images[:, None] * keep + self.baseline * (1.0 - keep)  # (B, P, H, W, C)
        _, occluded_scores = self.head.forward(tf.reshape(occluded, (-1, *self.input_shape)))  # (B*P, classes)
        occluded_scores = tf.reshape(occluded_scores, (b, p, -1))
        drop = tf.gather(scores, targets, batch_dims=1)[:, None] - tf.gather(
            occluded_scores, targets, axis=2, batch_dims=1
        )
        return tf.nn.relu(tf.einsum("bp,phw->bhw", drop, self.masks) / self.coverage), targets  # (B, H, W)
