"""The CAM network: a conv stack, then global average pooling -> bias-free linear -> softmax (Zhou et al. 2016, §2).

Every model built here is a flat Keras functional model with three named layers the CAM family relies on:
  - ``cam_features``: the (B, h, w, K) activations A^k that GAP averages (the CAM paper's f_k(x, y)); in the default
    'stack' network, each cell's ReLU output times a gate read from that cell's own pixels (``local_gate``);
  - ``logits``: the bias-free Dense layer, S_c = sum_k w_k^c * mean_xy f_k(x, y)  (paper eq. before eq. 1);
  - ``probs``: softmax over the logits (or, with the ``sigmoid`` head, a sigmoid per class), the model's output.
Keeping logits and softmax apart makes CAM weights (the Dense kernel) and gradients w.r.t. logits well defined.
The saved ``model.keras`` needs no custom objects: it takes (N, H, W, 1) float32 in [0, 1], returns probabilities.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from cam_mnist.config import ConvSpec, ModelConfig, RunConfig, map_stride

if TYPE_CHECKING:  # keras is imported where a model is built: reading checkpoints and configs needs no TensorFlow
    import keras

FEATURES, LOGITS, PROBS = "cam_features", "logits", "probs"
GATE = "gate"  # the local gate g^k, which the gate's spread term reads (train/map_terms.py)
NUM_CLASSES = 10


def _lenet(x, config: ModelConfig, synchronized: bool = False):
    # The TF1 reference exactly: conv5x5x32, pool, conv5x5x64, pool; the second pool's output feeds GAP.
    from keras import layers

    kw = {"dtype": config.precision}
    x = layers.Conv2D(32, 5, padding="same", activation="relu", name="conv1", **kw)(x)
    x = layers.MaxPooling2D(name="pool1", **kw)(x)
    x = layers.Conv2D(64, 5, padding="same", activation="relu", name="conv2", **kw)(x)
    return layers.MaxPooling2D(name=FEATURES, **kw)(x)  # (B, H/4, W/4, 64)


def _stack(inputs, config: ModelConfig, synchronized: bool = False):
    # Ours: a plain stack, one conv -> (pool) -> BN -> ReLU per entry of ``layers``; the last one's ReLU output is
    # A^k (times the local gate, where there is one). BN lets Adam use a high learning rate; its momentum is 0.9, not
    # Keras' 0.99, so that the moving statistics keep up with weights that Adam moves quickly (with 0.99
    # inference-mode accuracy lagged training for hundreds of steps: 11% against 95%).
    from keras import layers

    specs = [ConvSpec.parse(s) for s in config.layers]
    kw = {"dtype": config.precision}
    x = inputs
    for i, s in enumerate(specs, start=1):
        last = i == len(specs)
        name = "last_conv" if last else f"conv{i}"
        conv = layers.Conv2DTranspose if s.transposed else layers.Conv2D
        x = conv(
            s.width,
            s.kernel,
            s.stride,
            "same",
            dilation_rate=s.dilation,
            use_bias=not config.batch_norm,
            name=name,
            **kw,
        )(x)
        if s.pool:
            x = layers.MaxPooling2D(name=f"pool{i}", **kw)(x)
        if config.batch_norm:
            x = layers.BatchNormalization(momentum=0.9, synchronized=synchronized, name=f"{name}_bn", **kw)(x)
        x = layers.ReLU(name=FEATURES if last and not config.local_gate else f"relu{i}", **kw)(x)
    if config.local_gate:
        x = _local_gate(inputs, x, map_stride(specs), config, synchronized)
    return x


def _local_gate(inputs, context, stride: int, config: ModelConfig, synchronized: bool):
    # A^k = ReLU(stack)^k * g^k: a gate g^k in [0, 1) per map cell and channel, read from the cell's own
    # stride x stride pixels alone, so the map is M_c = sum_k w_k^c g^k ReLU(stack)^k (CAM paper eq. 2 on A). The
    # stack's receptive field (14 px wide) decides which class a cell sees; the gate whether the cell's own pixels
    # hold that channel's part of it, so the cells beside a 1, whose receptive fields only graze its stroke, can stay
    # dark. One gate shared by every channel boxed fewer 1s (docs/experiments.md, Part 7). Labels alone leave it
    # 0.47 open there; the gate's spread in the loss (``gate_spread``, preset ``spread``) closes it to about 0.27.
    from keras import layers

    kw = {"dtype": config.precision}  # 'same' pads a canvas the stride does not divide as the stack's convs do
    width = context.shape[-1]
    if config.gate_stride and config.gate_stride < stride:
        # A finer map than the stack's: each cell's ReLU output copied onto its (stride / gate_stride)^2 sub-cells,
        # which the gate then tells apart by their own pixels. Meant to box 3-px strokes; at 2 px it did not narrow
        # the 1s' boxes and cost 37% of the speed (docs/experiments.md, Part 7).
        context = layers.UpSampling2D(stride // config.gate_stride, name="gate_upsample", **kw)(context)
        stride = config.gate_stride
    bias = not (config.batch_norm or config.ink_gate)
    g = layers.Conv2D(width, stride, stride, "same", use_bias=bias, name="gate_conv", **kw)(inputs)
    if config.ink_gate:
        # g = tanh(ReLU(conv)), no bias, no batch norm: exactly 0 on a cell whose own pixels are blank, so the
        # cells beside a thin stroke close whatever the stack sees (the sigmoid form must learn to: beside a 1's
        # peak it kept 0.47 of the peak on validation, this one 0.18). The price: the map follows the image's ink, and
        # survives a randomized network (the sanity check of docs/experiments.md, Part 7): not the default.
        g = layers.ReLU(name="gate_relu", **kw)(g)
        g = layers.Activation("tanh", name=GATE, **kw)(g)
    else:
        if config.batch_norm:
            g = layers.BatchNormalization(momentum=0.9, synchronized=synchronized, name="gate_bn", **kw)(g)
        g = layers.Activation("sigmoid", name=GATE, **kw)(g)
    return layers.Multiply(name=FEATURES, **kw)([context, g])


def build_model(
    config: ModelConfig, canvas: int, num_classes: int = NUM_CLASSES, synchronized_bn: bool = False
) -> keras.Model:
    """The CAM model for ``canvas x canvas`` grey images; output: class probabilities (B, num_classes).
    ``synchronized_bn``: batch statistics over every replica of a ``tf.distribute`` strategy (see distribute.py)."""
    import keras
    from keras import layers

    inputs = keras.Input((canvas, canvas, 1), name="image")
    # Mixed precision: the conv stack computes in the policy's dtype; the head from GAP on in float32, so that the
    # logits, the probabilities and the CAM weights keep full precision (Keras' advice for the last layers).
    features = {"lenet": _lenet, "stack": _stack}[config.arch](inputs, config, synchronized_bn)
    pooled = layers.GlobalAveragePooling2D(name="gap", dtype="float32")(features)  # (B, K)
    logits = layers.Dense(num_classes, use_bias=False, name=LOGITS, dtype="float32")(pooled)  # kernel w_k^c (K, C)
    # softmax: one distribution over the classes (trained on 1/K per digit with K digits); sigmoid: each class
    # present or not, on its own (multi-label).
    probs = (
        layers.Softmax(name=PROBS, dtype="float32")(logits)
        if config.head == "softmax"
        else layers.Activation("sigmoid", name=PROBS, dtype="float32")(logits)
    )
    return keras.Model(inputs, probs, name=f"cam_{config.arch}")


def logits_model(model: keras.Model) -> keras.Model:
    """The same weights, outputting logits: what training's loss and every gradient-based map use."""
    import keras

    return keras.Model(model.inputs, model.get_layer(LOGITS).output)


def architecture_signature(model: keras.Model) -> list[str]:
    """Names and shapes of every weight: two models can share weights iff their signatures are equal."""
    return [f"{w.path}:{tuple(w.shape)}" for w in model.weights]


PREDICT_BATCH = 128  # images per forward pass of a run's model: TensorFlow keeps the memory of its largest pass


def build_for(config: RunConfig, canvas: int | None = None):
    """The run's model and a compiled ``predict`` (float images -> probabilities). The network is fully
    convolutional up to GAP, so the same weights serve any canvas size."""
    from cam_mnist.core import backend

    model = build_model(config.model, canvas or config.data.canvas)
    return model, batched(backend.compiled(lambda x: model(x, training=False), model.variables))


def batched(forward):
    """``forward`` (a compiled model call, :func:`cam_mnist.core.backend.compiled`) as a numpy function of any
    number of images, at most PREDICT_BATCH a pass: TensorFlow keeps the memory of its largest pass."""
    from cam_mnist.core import backend

    return lambda x: np.concatenate(
        [backend.to_numpy(forward(x[lo : lo + PREDICT_BATCH])) for lo in range(0, len(x), PREDICT_BATCH)]
    )
