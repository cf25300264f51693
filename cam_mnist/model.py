"""The CAM network: a conv stack, then global average pooling -> bias-free linear -> softmax (Zhou et al. 2016, §2).

Every model built here is a flat Keras functional model with three named layers the CAM family relies on:
  - ``cam_features``: the (B, h, w, K) activations A^k that GAP averages (the CAM paper's f_k(x, y));
  - ``logits``: the bias-free Dense layer, S_c = sum_k w_k^c * mean_xy f_k(x, y)  (paper eq. before eq. 1);
  - ``probs``: softmax over the logits (or a sigmoid per class for several digits per image), the model's output.
Keeping logits and softmax apart makes CAM weights (the Dense kernel) and gradients w.r.t. logits well defined.
The saved ``model.keras`` needs no custom objects: it takes (N, H, W, 1) float32 in [0, 1], returns probabilities.
"""

from __future__ import annotations

import keras
from keras import layers

from cam_mnist.config import ConvSpec, ModelConfig

FEATURES, LOGITS, PROBS = "cam_features", "logits", "probs"
NUM_CLASSES = 10


def _lenet(x, config: ModelConfig):
    # The TF1 reference exactly: conv5x5x32, pool, conv5x5x64, pool; the second pool's output feeds GAP.
    x = layers.Conv2D(32, 5, padding="same", activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(name="pool1")(x)
    x = layers.Conv2D(64, 5, padding="same", activation="relu", name="conv2")(x)
    return layers.MaxPooling2D(name=FEATURES)(x)  # (B, H/4, W/4, 64)


def _fast(x, config: ModelConfig):
    # Ours: a stride-2 first conv and early downsampling do the cheap work at full resolution; 3x3 convs at 1/4
    # resolution (``quarter_convs`` of them: the default's two see a digit's strokes 7x7 cells large) and then at
    # 1/8 give each map cell a receptive field wider than a 28x28 digit (53 pixels for the default, 59 with the
    # stem pooled, 67 with one conv at 1/4 and three at 1/8); the last conv before GAP is the CAM paper's "extra
    # conv" (§3.1). BN lets Adam use a high learning rate.
    def block(x, filters, kernel, stride, name, relu, pool=None):
        """conv -> BN -> ReLU (-> max-pool ``pool``), or with ``pool_first`` conv -> max-pool -> BN -> ReLU."""
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=not config.batch_norm, name=name)(x)
        if pool and config.pool_first:
            # Pool straight after the conv: BN and ReLU then see 4x fewer values. Keras' BN is unfused, and
            # normalising the two large early layers cost a third of a training step (measured: 14% faster).
            x = layers.MaxPooling2D(name=pool)(x)
        if config.batch_norm:
            # momentum 0.9, not Keras' 0.99: the moving statistics must keep up with weights that Adam moves
            # quickly, or inference-mode accuracy lags training for hundreds of steps (measured: 11% vs 95%).
            x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
        x = layers.ReLU(name=relu)(x)
        if pool and not config.pool_first:
            x = layers.MaxPooling2D(name=pool)(x)
        return x

    w, q = config.widths, config.quarter_convs
    pooled_stem = config.stem_stride == 2 and config.stem_pool
    x = block(x, w[0], 5, config.stem_stride, "conv1", "relu1", "pool1" if pooled_stem else None)
    # q 3x3 convs at 1/4 resolution, the last of them pooled to 1/8; then the rest at 1/8. Without the stem's pool
    # the first of them takes stride 2 from the 1/2-resolution map: a learned downsampling that weighs all four
    # stem outputs of each cell where max-pooling keeps one (measured: +0.2 points at the same speed, README).
    strided = config.stem_stride == 2 and not config.stem_pool
    for i, width in enumerate(w[1:-1], start=2):
        stride = 2 if strided and i == 2 else 1
        x = block(x, width, 3, stride, f"conv{i}", f"relu{i}", "pool2" if i == q + 1 else None)
    # The extra conv before GAP; its ReLU output is the CAM's A^k.
    return block(x, w[-1], config.last_kernel, 1, "last_conv", FEATURES)  # (B, H/8, W/8, K)


def _stack(x, config: ModelConfig):
    # A plain stack, one conv -> (pool) -> BN -> ReLU per entry of ``layers``; the last one's ReLU output is A^k.
    specs = [ConvSpec.parse(s) for s in config.layers]
    for i, s in enumerate(specs, start=1):
        last = i == len(specs)
        name = "last_conv" if last else f"conv{i}"
        x = layers.Conv2D(
            s.width, s.kernel, s.stride, "same", dilation_rate=s.dilation, use_bias=not config.batch_norm, name=name
        )(x)
        if s.pool:
            x = layers.MaxPooling2D(name=f"pool{i}")(x)
        if config.batch_norm:
            x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
        x = layers.ReLU(name=FEATURES if last else f"relu{i}")(x)
    return x


def build_model(config: ModelConfig, canvas: int, num_classes: int = NUM_CLASSES) -> keras.Model:
    """The CAM model for ``canvas x canvas`` grey images; output: class probabilities (B, num_classes)."""
    if config.arch == "fast" and len(config.widths) < 3:
        raise ValueError(f"the 'fast' arch needs at least 3 widths, got {config.widths}")
    inputs = keras.Input((canvas, canvas, 1), name="image")
    features = {"lenet": _lenet, "fast": _fast, "stack": _stack}[config.arch](inputs, config)
    pooled = layers.GlobalAveragePooling2D(name="gap")(features)  # (B, K)
    logits = layers.Dense(num_classes, use_bias=False, name=LOGITS)(pooled)  # (B, C); kernel w_k^c is (K, C)
    # softmax: exactly one digit per image; sigmoid: each class present or not (several digits, multi-label).
    probs = (
        layers.Softmax(name=PROBS)(logits)
        if config.head == "softmax"
        else layers.Activation("sigmoid", name=PROBS)(logits)
    )
    return keras.Model(inputs, probs, name=f"cam_{config.arch}")


def logits_model(model: keras.Model) -> keras.Model:
    """The same weights, outputting logits: what training's loss and every gradient-based map use."""
    return keras.Model(model.inputs, model.get_layer(LOGITS).output)


def architecture_signature(model: keras.Model) -> list[str]:
    """Names and shapes of every weight: two models can share weights iff their signatures are equal."""
    return [f"{w.path}:{tuple(w.shape)}" for w in model.weights]
