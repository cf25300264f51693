"""FullGrad (Srinivas & Fleuret 2019, arXiv 1905.00780): the input gradient and every bias's gradient, one map."""

from __future__ import annotations

import keras
from keras import ops

from cam_mnist.core import backend
from cam_mnist.core.errors import UserError
from cam_mnist.maps.base import BaseCAM, as_float32, pick, resolve_targets
from cam_mnist.maps.grids import upsample

CONVOLUTIONS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)


def bias_of(layer):
    """A function giving the (K,) bias a 2-D conv or batch normalisation adds to each channel, from its current
    variables; None for a layer that adds none. Batch normalisation at inference is x s + (beta - mean s),
    s = gamma / sqrt(var + eps): its bias is the second term (as the FullGrad authors' code reads it)."""
    if isinstance(layer, CONVOLUTIONS) and layer.use_bias:
        return lambda: ops.cast(layer.bias, "float32")
    if isinstance(layer, keras.layers.BatchNormalization) and layer.axis in (-1, 3):

        def bias():
            scale = ops.rsqrt(ops.cast(layer.moving_variance, "float32") + layer.epsilon)
            scale = scale * ops.cast(layer.gamma, "float32") if layer.scale else scale
            beta = ops.cast(layer.beta, "float32") if layer.center else 0.0
            return beta - ops.cast(layer.moving_mean, "float32") * scale

        return bias
    return None


class FullGrad(BaseCAM):
    """FullGrad. Srinivas & Fleuret 2019, arXiv 1905.00780, eq. (4)-(5) as their code computes it: the map is
    psi(|dy^c/dx (.) x|) + sum over every layer with a bias b of sum_k psi(|b_k dy^c/dz_k|), z the layer's
    pre-activation output and psi each channel min-max normalised and upsampled to the image (pytorch-grad-cam's
    ``scale_accross_batch_and_channels``). The layers with a bias are the 2-D convolutions with one and the batch
    normalisations; ``layer`` is not used. One backward pass gives every gradient
    (:func:`backend.gradients_inside`)."""

    needs_gradients = False  # of the input and of every bias layer: computed here
    inputs = ("image",)
    # Every bias layer's output and gradient are held at once: at 128 images of 100 x 100, 512 maps peaked 0.17 GB
    # above Grad-CAM's; 32 a call holds a quarter of them.
    default_batch_size = 32

    def __init__(self, model, layer=None, **kw):
        super().__init__(model, layer, **kw)
        self.biased = []  # (the layer's call, its bias, whether a ReLU follows the bias inside the layer)
        for call in self.flat.between(self.flat.input, [self.head.scores]):  # in the order they run
            bias = bias_of(call.layer)
            if bias is None or len(call.output.shape) != 4:
                continue
            activation = getattr(call.layer, "activation", keras.activations.linear)
            if activation not in (keras.activations.linear, keras.activations.relu):
                raise UserError(
                    f"FullGrad needs the gradient before the activation of {call.path!r} "
                    f"({getattr(activation, '__name__', activation)}): only linear and relu can be undone"
                )
            self.biased.append((call, bias, activation is keras.activations.relu))

    def signed_maps(self, images, targets):
        def score(x, probe):
            seen = [probe(x)]  # each probed value, the input first then the bias layers' outputs in running order
            at = lambda v: seen.append(probe(v)) or seen[-1]  # noqa: E731
            scores = self.head.scores_probed(seen[0], {id(call.output): at for call, _, _ in self.biased})
            explained = resolve_targets(targets, scores)
            return ops.sum(pick(scores, explained)), (explained, seen)

        grads, (targets, values) = backend.gradients_inside(score, images)
        size = self.input_shape[:2]
        total = _channels(ops.abs(images * as_float32(grads[0])))  # the input's part
        for (_, bias, after_relu), grad, value in zip(self.biased, grads[1:], values[1:], strict=True):
            grad = as_float32(grad)
            if after_relu:  # d/dz = d/d relu(z) where relu(z) > 0
                grad = grad * ops.cast(value > 0, "float32")
            total += upsample(_channels(ops.abs(bias() * grad)), size)
        return total, targets


def _channels(x):
    """(B, h, w, K) -> (B, h, w): each channel min-max normalised over its cells, then summed."""
    lo = ops.min(x, axis=(1, 2), keepdims=True)
    return ops.sum(ops.divide_no_nan(x - lo, ops.max(x, axis=(1, 2), keepdims=True) - lo), -1)
