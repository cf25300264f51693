"""In any Keras 3 image classifier's flat graph (:mod:`cam_mnist.maps.graph`): the logits to explain, the layer's
activations beside them, and the CAM weights of a GAP -> linear head."""

from __future__ import annotations

import keras
import tensorflow as tf

from cam_mnist.core.errors import UserError
from cam_mnist.maps.graph import Call, FlatGraph


def _softmax_activation(layer) -> bool:
    return getattr(layer, "activation", None) is keras.activations.softmax


class Head:
    """Runs the model once to give the target layer's activations and the class scores (logits by default).

    The logits are found as: a layer named ``logits``; else the input of a final Softmax layer (or
    ``Activation("softmax")``); else a final Dense with softmax activation (keras.applications' top), re-applied
    without it; else the model's output, taken to be logits already.
    """

    def __init__(self, graph: FlatGraph, layer: Call, use_softmax: bool, guided: bool = False):
        last = graph.producer(graph.output)
        named = [c for c in graph.calls if c.layer.name == "logits"]
        self._dense = None
        if named:
            scores = named[0].output
        elif isinstance(last.layer, keras.layers.Softmax) or (
            isinstance(last.layer, keras.layers.Activation) and _softmax_activation(last.layer)
        ):
            scores = last.inputs[0]
        elif isinstance(last.layer, keras.layers.Dense) and _softmax_activation(last.layer):
            scores, self._dense = last.inputs[0], last.layer  # logits = input @ kernel + bias, in forward()
        else:
            scores = graph.output
        self.graph, self.layer, self.scores, self.guided = graph, layer, scores, guided
        self.use_softmax = use_softmax
        self.num_classes = int(graph.output.shape[-1])

    def forward(self, images):
        """The target layer's activations, in the layer's own dtype (a mixed-precision model's are bfloat16 or
        float16: differentiate with respect to these, then cast), and the class scores in float32. ``guided``: the
        backward pass of every ReLU follows guided backpropagation's rule."""
        activations, scores = self.graph.run(
            self.graph.input, images, [self.layer.output, self.scores], guided=self.guided
        )
        return activations, self._finish(tf.cast(scores, tf.float32))

    def build_tail(self) -> None:
        """Check that :meth:`scores_from` can work: the scores must depend on the image through the target layer
        alone, not also around it (a skip connection)."""
        try:
            self.graph.between(self.layer.output, [self.scores])
        except ValueError as e:
            raise UserError(
                f"the scores depend on the image through more than layer {self.layer.path!r} ({e}), so its "
                f"channels cannot be ablated alone: choose a later layer"
            ) from None

    def scores_from(self, activations):
        """The class scores computed from the target layer's activations (B, h, w, K) alone."""
        (scores,) = self.graph.run(self.layer.output, activations, [self.scores])
        return self._finish(tf.cast(scores, tf.float32))

    def _finish(self, scores):
        if self._dense is not None:
            scores = tf.matmul(scores, tf.cast(self._dense.kernel, scores.dtype))
            if self._dense.use_bias:
                scores += tf.cast(self._dense.bias, scores.dtype)
        if self.use_softmax:
            scores = tf.nn.softmax(scores)
        return scores


# ------------------------------------------------------------------------------------------------ CAM's weights
# Layers that are the identity at inference: between the layer and GAP, or between GAP and the linear head.
IDENTITY_AT_INFERENCE = (
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianDropout,
    keras.layers.GaussianNoise,
    keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization,
    keras.layers.Identity,
    keras.layers.Flatten,  # of a (B, K) vector
)


def _linear_part(layer):
    """The (K, K') matrix (or (K,) diagonal) of a layer that is affine at inference, as a function of its current
    variables; None for the identity. Raises TypeError for any other layer."""
    if isinstance(layer, IDENTITY_AT_INFERENCE) or (
        isinstance(layer, keras.layers.Activation) and layer.activation is keras.activations.linear
    ):
        return None
    if isinstance(layer, keras.layers.Dense) and layer.activation is keras.activations.linear:
        return lambda: tf.cast(layer.kernel, tf.float32)
    if isinstance(layer, keras.layers.BatchNormalization) and layer.axis in (-1, 1):
        # y = gamma (x - mean) / sqrt(var + eps) + beta with the moving statistics: a scale per channel
        def scale():
            s = tf.math.rsqrt(tf.cast(layer.moving_variance, tf.float32) + layer.epsilon)
            return s * tf.cast(layer.gamma, tf.float32) if layer.scale else s

        return scale
    if isinstance(layer, keras.layers.Rescaling):
        return lambda: tf.constant(layer.scale, tf.float32)
    raise TypeError(type(layer).__name__)


def cam_weights(head: Head):
    """A function giving the (K, classes) CAM weights w_k^c of the target layer, from the model's current variables.

    CAM (Zhou et al. 2016, eq. 2) needs the class score linear in the global average pool of the layer:
    S_c = sum_k w_k^c mean_xy f_k(x, y) + b_c. Between the layer and GAP only inference-time identities (Dropout
    and its kin) may stand; after GAP, any chain of layers that is affine at inference (Dropout, BatchNormalization,
    Dense without activation, the final Dense before a softmax) is folded into w. Anything else is refused, naming
    the layer that breaks linearity.
    """
    graph, layer = head.graph, head.layer
    tensor, gap = layer.output, None
    while gap is None:
        users = graph.consumers(tensor)
        if len(users) == 1 and isinstance(users[0].layer, keras.layers.GlobalAveragePooling2D):
            gap = users[0]
        elif len(users) == 1 and isinstance(users[0].layer, IDENTITY_AT_INFERENCE):
            tensor = users[0].output
        else:
            raise UserError(
                f"CAM needs the layer {layer.path!r} to feed GlobalAveragePooling2D -> Dense directly (the CAM "
                f"paper's architecture); model {graph.source.name!r} has no such head: use gradcam instead"
            )
    try:
        tail = graph.between(gap.output, [head.scores])
    except ValueError:
        raise UserError(
            f"CAM needs the class scores to depend on layer {layer.path!r} only through its global average pool; "
            f"in model {graph.source.name!r} they do not: use gradcam instead"
        ) from None
    parts = []
    for inner in tail:
        try:
            parts.append(_linear_part(inner.layer))
        except TypeError:
            raise UserError(
                f"CAM needs the head after GlobalAveragePooling2D to be linear at inference; layer {inner.path!r} "
                f"({type(inner.layer).__name__}) is not: use gradcam, which needs no particular head"
            ) from None
    if head._dense is not None:  # the final Dense whose softmax the logits leave out
        parts.append(lambda: tf.cast(head._dense.kernel, tf.float32))
    parts = [p for p in parts if p is not None]

    def weights() -> tf.Tensor:
        w = None  # (K, K') so far; None: the identity
        for part in parts:
            p = part()
            if p.shape.rank < 2:  # a scale per channel (BatchNormalization, Rescaling)
                w = tf.linalg.diag(tf.broadcast_to(p, [gap.shape[-1]])) if w is None else w * p[None, :]
            else:
                w = p if w is None else tf.matmul(w, p)
        if w is None:
            raise UserError(f"CAM found no linear layer after the global average pool of {layer.path!r}")
        return w  # (K, classes)

    return weights
