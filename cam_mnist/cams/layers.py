"""Finding, in any Keras 3 functional image model, the layer to explain and the logits to explain it with."""

from __future__ import annotations

import keras
import tensorflow as tf

from cam_mnist.errors import UserError


def resolve_layer(model: keras.Model, name: str | None):
    """The layer called ``name``, or the last layer with a 4-D (B, h, w, K) output when no name is given."""
    if name is not None:
        try:
            layer = model.get_layer(name)
        except ValueError:
            names = ", ".join(layer.name for layer in _explainable(model))
            raise UserError(f"model {model.name!r} has no layer {name!r}; its 4-D layers are: {names}") from None
        if not _is_4d(layer):
            raise UserError(f"layer {name!r} has output shape {layer.output.shape}, not 4-D (B, h, w, K)")
        return layer
    candidates = _explainable(model)
    if candidates:
        return candidates[-1]
    raise UserError(f"model {model.name!r} has no layer with a 4-D (B, h, w, K) output to explain")


def _explainable(model) -> list:
    return [layer for layer in model.layers if _is_4d(layer) and not isinstance(layer, keras.layers.InputLayer)]


def _is_4d(layer) -> bool:
    try:
        return len(layer.output.shape) == 4
    except (AttributeError, ValueError):  # layers used more than once have no single output
        return False


class Head:
    """Runs the model once to give the target layer's activations and the class scores (logits by default).

    The logits are found as: a layer named ``logits``; else the input of a final Softmax layer; else a final
    Dense with softmax activation, re-applied without it; else the model's output, taken to be logits already.
    """

    def __init__(self, model: keras.Model, layer, use_softmax: bool):
        last = model.layers[-1]
        self._dense = None
        if _has_layer(model, "logits"):
            scores = model.get_layer("logits").output
        elif isinstance(last, keras.layers.Softmax):
            scores = last.input
        elif isinstance(last, keras.layers.Dense) and last.activation is keras.activations.softmax:
            scores, self._dense = last.input, last  # logits = input @ kernel + bias, computed in forward()
        else:
            scores = model.outputs[0]
        if len(model.inputs) != 1:
            raise UserError(f"model {model.name!r} has {len(model.inputs)} inputs; explanations need one image input")
        self._model = keras.Model(model.inputs[0], [layer.output, scores])
        self._layer, self._scores, self._tail = layer, scores, None
        self.use_softmax = use_softmax
        self.num_classes = int(model.outputs[0].shape[-1])

    def forward(self, images):
        """The target layer's activations, in the layer's own dtype (a mixed-precision model's are bfloat16 or
        float16: differentiate with respect to these, then cast), and the class scores in float32."""
        activations, scores = self._model(images, training=False)
        return activations, self._finish(tf.cast(scores, tf.float32))

    def build_tail(self) -> None:
        """Make :meth:`scores_from` available: the model's layers after the target layer, as a model of its own.
        Refused where the scores also depend on the image through another path (a skip connection around it)."""
        if self._tail is None:
            try:
                self._tail = keras.Model(self._layer.output, self._scores)
            except (ValueError, KeyError) as e:
                raise UserError(
                    f"the scores depend on the image through more than layer {self._layer.name!r} "
                    f"({type(e).__name__}), so its channels cannot be ablated alone: choose a later layer"
                ) from None

    def scores_from(self, activations):
        """The class scores computed from the target layer's activations (B, h, w, K) alone."""
        return self._finish(self._tail(activations, training=False))

    def _finish(self, scores):
        if self._dense is not None:
            scores = tf.matmul(scores, self._dense.kernel)
            if self._dense.use_bias:
                scores += self._dense.bias
        if self.use_softmax:
            scores = tf.nn.softmax(scores)
        return scores


def _has_layer(model, name: str) -> bool:
    return any(layer.name == name for layer in model.layers)


def gap_linear_kernel(model: keras.Model, layer) -> tf.Variable:
    """The (K, classes) kernel w_k^c of a layer -> GlobalAveragePooling2D -> Dense head, which CAM needs.

    Refuses any other head: CAM's weights mean something only when the class score is linear in the GAP of ``layer``.
    """
    for gap in model.layers:
        if isinstance(gap, keras.layers.GlobalAveragePooling2D) and gap.input is layer.output:
            for dense in model.layers:
                if isinstance(dense, keras.layers.Dense) and dense.input is gap.output:
                    return dense.kernel
    raise UserError(
        f"CAM needs the layer {layer.name!r} to feed GlobalAveragePooling2D -> Dense directly (the CAM paper's "
        f"architecture); model {model.name!r} has no such head: use gradcam instead"
    )
