"""In any Keras 3 image classifier's flat graph (:mod:`cam_mnist.maps.graph`): the logits to explain, the layer's
activations beside them, and the CAM weights of a GAP -> linear head."""

from __future__ import annotations

import keras
from keras import ops

from cam_mnist.core.errors import NotClassScores, UserError
from cam_mnist.maps.graph import Call, FlatGraph, InnerCall
from cam_mnist.maps.grids import GRID, Grid
from cam_mnist.maps.targets import reads_all_outputs


def _softmax_activation(layer) -> bool:
    return getattr(layer, "activation", None) is keras.activations.softmax


def _logits(graph: FlatGraph, out) -> tuple:
    """(the tensor the class scores come from, the final Dense to re-apply without its activation or None,
    whether the model is a binary classifier with one sigmoid unit) for the output ``out``."""
    last = graph.producer(out)
    named = [c for c in graph.calls if c.layer.name == "logits"]
    if named and len(graph.outputs) == 1:
        return named[0].output, None, False
    if last is None:
        return out, None, False
    activation = getattr(last.layer, "activation", None)
    if isinstance(last.layer, keras.layers.Softmax) or (
        isinstance(last.layer, keras.layers.Activation) and _softmax_activation(last.layer)
    ):
        return last.inputs[0], None, False
    if isinstance(last.layer, keras.layers.Dense) and activation in (
        keras.activations.softmax,
        keras.activations.sigmoid,
    ):
        binary = activation is keras.activations.sigmoid and out.shape[-1] == 1
        return last.inputs[0], last.layer, binary  # logits = input @ kernel + bias, in Head._finish
    if (
        isinstance(last.layer, keras.layers.Activation)
        and activation is keras.activations.sigmoid
        and out.shape[-1] == 1
    ):
        return last.inputs[0], None, True
    return out, None, False


class Head:
    """Runs the model once to give the target layer's activations and the scores to explain.

    The scores are the class logits of the model's output: a layer named ``logits``; else the input of a final
    Softmax layer (or ``Activation("softmax")``); else a final Dense with softmax activation (keras.applications'
    top), re-applied without it; else the model's output, taken to be logits already. A final Dense(1) with a
    sigmoid is a binary classifier of two classes, its logit z read as the scores (-z/2, z/2), whose softmax is the
    sigmoid's probabilities. ``target`` (:mod:`cam_mnist.maps.targets`): instead, one score per image computed from
    the output (pre-activation where the last layer is a softmax or sigmoid Dense). ``output``: the output to read,
    by name or index, which a model with several must be told.
    """

    def __init__(
        self,
        graph: FlatGraph,
        layer: Call,
        use_softmax: bool,
        *,
        guided: bool = False,
        grid: Grid = GRID,
        view=None,
        **chosen,
    ):
        self.graph, self.layer, self.guided, self.grid = graph, layer, guided, grid
        self.view = view  # a signal's or a volume's inputs seen as images (grids.InputView); None: images
        self.target, output = chosen.get("target"), chosen.get("output")
        if output is None and self.target is not None:
            output = getattr(self.target, "output", None)
        self._dense, self.binary = None, False
        if self.target is not None and reads_all_outputs(self.target):
            self._outputs = list(graph.outputs)
        else:
            out = graph.output_named(output)
            scores, self._dense, self.binary = _logits(graph, out)
            self._outputs = [scores]
            if self.target is None and len(out.shape) != 2:
                raise NotClassScores(
                    f"model {graph.source.name!r} gives {tuple(out.shape)}, not class scores (B, classes): say what "
                    "to explain with targets= (cam_mnist.maps.targets: RegionTarget for a segmentation, "
                    "RegressionTarget, BoxTarget, or any function of the output giving one score per image)"
                )
        self.use_softmax = use_softmax
        self.num_classes = 1 if self.target is not None else 2 if self.binary else int(out.shape[-1])

    @property
    def scores(self):
        """The symbolic tensor the scores are computed from (the first, where a target reads several)."""
        return self._outputs[0]

    def probabilities(self, scores):
        """What the methods that weigh by confidence read (Score-CAM, RISE): the softmax of the class scores, or
        the scores as they are where they are probabilities already (``use_softmax``) or a target's own."""
        return scores if self.use_softmax or self.target is not None else ops.softmax(scores)

    def forward(self, images, as_grid: bool = True, probe=None):
        """The target layer's activations as a grid (B, h, w, K) (:mod:`cam_mnist.maps.grids`), in the layer's own
        dtype (a mixed-precision model's are bfloat16 or float16: differentiate with respect to these, then cast),
        and the class scores in float32. ``as_grid=False``: the layer's output as it is, the tensor the scores
        depend on, to differentiate with respect to (then :meth:`Grid.to_grid` the gradient too). ``guided``: the
        backward pass of every ReLU follows guided backpropagation's rule. ``probe``: a function applied to the
        layer's output where it is made, before the layers after it read it (how its gradient is taken:
        :func:`cam_mnist.core.backend.gradient_inside`)."""
        wanted, replace = [self.layer.output, *self._outputs], {id(self.layer.output): probe} if probe else None
        activations, *outputs = self.graph.run(
            self.graph.input, self._to_model(images), wanted, guided=self.guided, replace=replace
        )
        activations = self.grid.to_grid(activations) if as_grid else activations
        return activations, self._finish(outputs)

    def scores_probed(self, images, replace: dict):
        """The class scores of ``images`` with ``replace`` ({id(tensor): function of its value}) applied where
        each tensor is made: how FullGrad marks every bias layer's output to differentiate with respect to."""
        outputs = self.graph.run(self.graph.input, self._to_model(images), self._outputs, replace=replace)
        return self._finish(outputs)

    @property
    def tail_alone(self) -> bool:
        """Whether the scores can be computed from the activations by the layers after the target alone: a layer of
        the flat graph, whose output is its grid. Otherwise (tokens, a layer inside a composite one) the model runs
        from the image with the layer's output replaced."""
        return self.grid.identity and not isinstance(self.layer, InnerCall)

    def build_tail(self) -> None:
        """Check that :meth:`scores_from` can work: the scores must depend on the image through the target layer
        alone, not also around it (a skip connection)."""
        if not self.tail_alone:
            return  # the whole model runs, with the layer's output replaced
        try:
            self.graph.between(self.layer.output, [self.scores])
        except ValueError as e:
            raise UserError(
                f"the scores depend on the image through more than layer {self.layer.path!r} ({e}), so its "
                f"channels cannot be ablated alone: choose a later layer"
            ) from None

    def scores_from(self, activations, images):
        """The class scores of ``images`` with the target layer's activations (as a grid, B, h, w, K) replaced by
        ``activations``: computed by the layers after it alone where they can be (:attr:`tail_alone`)."""
        if self.tail_alone:
            outputs = self.graph.run(self.layer.output, activations, self._outputs)
        else:
            replace = {id(self.layer.output): lambda original: self.grid.from_grid(activations, original)}
            outputs = self.graph.run(self.graph.input, self._to_model(images), self._outputs, replace=replace)
        return self._finish(outputs)

    def _to_model(self, images):
        return images if self.view is None else self.view.to_model(images)

    def _finish(self, outputs: list):
        """(B, classes) float32 scores from the values of the output tensors."""
        if self.target is not None and reads_all_outputs(self.target):
            named = dict(zip(self.graph.output_names, outputs, strict=True))
            return ops.cast(self.target(named), "float32")[:, None]  # (B, 1): the target's score
        scores = ops.cast(outputs[0], "float32")
        if self._dense is not None:
            scores = ops.matmul(scores, ops.cast(self._dense.kernel, scores.dtype))
            if self._dense.use_bias:
                scores += ops.cast(self._dense.bias, scores.dtype)
        if self.target is not None:
            return ops.cast(self.target(scores), "float32")[:, None]
        if self.binary:
            scores = ops.concatenate([-scores / 2, scores / 2], -1)  # (B, 2): class 0, class 1
        return ops.softmax(scores) if self.use_softmax else scores


# ------------------------------------------------------------------------------------------------ CAM's weights
GLOBAL_AVERAGE_POOLING = (
    keras.layers.GlobalAveragePooling1D,  # over time: a signal's CAM
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D,  # over a volume
)
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
        return lambda: ops.cast(layer.kernel, "float32")
    if isinstance(layer, keras.layers.BatchNormalization) and layer.axis in (-1, 1):
        # y = gamma (x - mean) / sqrt(var + eps) + beta with the moving statistics: a scale per channel
        def scale():
            s = ops.rsqrt(ops.cast(layer.moving_variance, "float32") + layer.epsilon)
            return s * ops.cast(layer.gamma, "float32") if layer.scale else s

        return scale
    if isinstance(layer, keras.layers.Rescaling):
        return lambda: ops.convert_to_tensor(layer.scale, "float32")
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
        if len(users) == 1 and isinstance(users[0].layer, GLOBAL_AVERAGE_POOLING):
            gap = users[0]
        elif len(users) == 1 and isinstance(users[0].layer, IDENTITY_AT_INFERENCE):
            tensor = users[0].output
        else:
            raise UserError(
                f"CAM needs the layer {layer.path!r} to feed GlobalAveragePooling -> Dense directly (the CAM "
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
        parts.append(lambda: ops.cast(head._dense.kernel, "float32"))
    parts = [p for p in parts if p is not None]

    def weights():
        w = None  # (K, K') so far; None: the identity
        for part in parts:
            p = part()
            if len(p.shape) < 2:  # a scale per channel (BatchNormalization, Rescaling)
                w = ops.diag(ops.broadcast_to(p, [gap.shape[-1]])) if w is None else w * p[None, :]
            else:
                w = p if w is None else ops.matmul(w, p)
        if w is None:
            raise UserError(f"CAM found no linear layer after the global average pool of {layer.path!r}")
        if head.binary:  # one sigmoid unit: the classes' scores are -z/2 and z/2 (Head)
            w = ops.concatenate([-w / 2, w / 2], 1)
        return w  # (K, classes)

    return weights
