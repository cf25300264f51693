"""The channel-weighted methods: each is its weights, with the equation it implements."""

from __future__ import annotations

import tensorflow as tf

from cam_mnist.cams.base import BaseCAM
from cam_mnist.cams.layers import gap_linear_kernel


class CAM(BaseCAM):
    """Class activation mapping. Zhou et al. 2016, arXiv 1512.04150, eq. (2): M_c(x, y) = sum_k w_k^c f_k(x, y),
    with w the GAP -> logits weights. Needs no gradients; refuses a model without a GAP -> linear head."""

    name = "cam"
    needs_gradients = False

    def __init__(self, model, layer=None, **kw):
        super().__init__(model, layer, **kw)
        self.kernel = gap_linear_kernel(model, self.layer)  # (K, classes)

    def channel_weights(self, activations, grads, scores, targets):
        return tf.transpose(tf.gather(self.kernel, targets, axis=1))  # (B, K)


class GradCAM(BaseCAM):
    """Grad-CAM. Selvaraju et al. 2017, arXiv 1610.02391, eq. (1): alpha_k^c = mean_ij dy^c / dA^k_ij."""

    name = "gradcam"

    def channel_weights(self, activations, grads, scores, targets):
        return tf.reduce_mean(grads, axis=(1, 2))  # (B, K)
