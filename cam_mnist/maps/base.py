"""The shared class-activation-map pipeline; each method overrides one function.

For images x (B, H, W, C), a target layer with activations A (B, h, w, K) and target classes c (B,):
  1. one forward pass gives A and the logits y (B, classes); the score is y^c, never the softmax (unless asked);
  2. gradients dy^c/dA, for methods that need them (one backward pass, whole batch);
  3. ``channel_weights`` -- the method: (B, K) weights per channel or (B, h, w, K) weights per cell;
  4. signed map = sum_k weights_k * A^k (B, h, w); map = its ReLU, the "raw" map;
  5. bilinear upsampling to (H, W) and min-max normalisation per image to [0, 1].
Steps 1-5 are written in ``keras.ops`` and run in the backend's compiled form (:mod:`cam_mnist.core.backend`:
``tf.function``, ``jax.jit``; eager on PyTorch) over fixed-size batches (the last batch is padded), so only the
first call traces. The model may be nested in others: :mod:`cam_mnist.maps.graph` runs its layers as one flat
graph, reading its variables at every call.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
from keras import ops

from cam_mnist.core import backend
from cam_mnist.core.errors import UserError
from cam_mnist.maps.graph import FlatGraph
from cam_mnist.maps.grids import InputView, grid_for
from cam_mnist.maps.layers import Head
from cam_mnist.maps.projection import first_component

PREDICTED = -1  # target sentinel: explain the class the model predicts
# Image pixels per model pass in the methods that make many passes per map (Score-CAM, occlusion, RISE...): 104
# images of 100x100 or 20 of 224x224, so that their memory stays bounded whatever the image size or channel count
# (at 100x100, 104 images a pass ran as fast as 419 or more: docs/experiments.md).
PASS_PIXELS = 2**20
AUGMENTATION_FACTORS = (0.9, 1.0, 1.1)  # aug_smooth's brightness factors (pytorch-grad-cam's ttach.Multiply)


def resolve_targets(targets, scores):
    """(B,) targets with each PREDICTED replaced by the class of the image's highest score."""
    return ops.where(targets == PREDICTED, ops.cast(ops.argmax(scores, -1), "int32"), targets)


def pick(values, index):
    """values[b, index[b]] for every b: (B, N, ...) and (B,) -> (B, ...)."""
    index = ops.reshape(ops.cast(index, "int32"), (-1, *[1] * (len(values.shape) - 1)))
    return ops.squeeze(ops.take_along_axis(values, index, axis=1), 1)


def over_pairs(fn, b, v: int, chunk: int):
    """``fn(image, variant)`` for every pair of B images and V variants (masks, channels, noise samples...), at most
    ``chunk`` pairs per call and one call at a time (:func:`backend.sequential_map`): how the many-pass methods
    keep their memory flat in the number of passes. The chunks are balanced, the last one padded by repeating the
    last pair. fn: ((n,) image indices, (n,) variant indices) int32 -> (n, ...) float32; returns (B, V, ...)."""
    n = b * v
    count = (n + chunk - 1) // chunk
    size = (n + count - 1) // count  # balanced: 512 pairs at most 104 a chunk are 5 chunks of 103, not 4 x 104 + 96
    rows = ops.reshape(ops.minimum(ops.arange(count * size, dtype="int32"), n - 1), (count, size))
    out = backend.sequential_map(lambda r: fn(r // v, r % v), rows)
    rest = tuple(out.shape[2:])  # what fn returns per pair
    return ops.reshape(ops.reshape(out, (-1, *rest))[:n], (b, v, *rest))


class _FirstTraceIsNotRetrace(logging.Filter):
    """TensorFlow warns about "retracing" when several objects of one class each trace their own graph once, as
    every new explainer must; the warning is wrong here and drowns the CLI's output, so only it is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


if backend.NAME == "tensorflow":
    import tensorflow as tf

    tf.get_logger().addFilter(_FirstTraceIsNotRetrace())


def as_float32(x):
    """A mixed-precision model's bfloat16 / float16 tensor in float32, in which every map is made."""
    return ops.cast(x, "float32")


def normalise(maps):
    """Min-max per map to [0, 1]; a constant map (e.g. all zeros) becomes all zeros, never NaN. (B, H, W)."""
    lo = ops.min(maps, axis=(1, 2), keepdims=True)
    span = ops.max(maps, axis=(1, 2), keepdims=True) - lo
    return ops.divide_no_nan(maps - lo, span)


def shift(x, dy: int, dx: int):
    """(B, H, W[, C]) moved ``dy`` pixels down and ``dx`` right; what moves in from outside is zero."""
    h, w = x.shape[1], x.shape[2]
    rows, cols = np.arange(h), np.arange(w)
    inside = ((rows >= dy) & (rows < h + dy))[:, None] & ((cols >= dx) & (cols < w + dx))[None, :]  # (H, W)
    inside = inside.astype(np.float32)[None] if len(x.shape) == 3 else inside.astype(np.float32)[None, ..., None]
    return ops.roll(ops.roll(x, dy, axis=1), dx, axis=2) * ops.cast(inside, x.dtype)


class Explanation(NamedTuple):
    """What one call explains: the maps (N, H, W) in [0, 1], the raw maps (N, h, w) at the layer's resolution
    before upsampling and normalisation, the (N,) classes explained (predicted ones resolved), and, when asked, the
    signed maps (N, H, W): before the method's final ReLU or absolute value, upsampled, not normalised."""

    maps: np.ndarray
    raw: np.ndarray
    targets: np.ndarray
    signed: np.ndarray | None = None


class BaseCAM:
    """A map method bound to one model and layer. Subclasses override :meth:`channel_weights` (or, for maps that
    are not channel-weighted sums, :meth:`signed_maps`). Their names live in :mod:`cam_mnist.maps.registry` alone."""

    needs_gradients = True
    # Images per graph call; methods with many forward passes per image use fewer. 64 rather than 128 took 0.1 GiB
    # off `localize`'s peak, its methods' times within the machine's drift (docs/localization.md, "How long it takes").
    default_batch_size = 64
    inputs = ("image", "signal", "volume")  # the inputs the method is defined for (grids.InputView)

    def __init__(
        self,
        model,
        layer=None,
        *,
        use_softmax: bool = False,
        batch_size: int | None = None,
        smooth: int = 0,
        input_shape: tuple | None = None,
        pass_batch: int | None = None,
        reshape=None,
        output=None,
        target=None,
        eigen_smooth: bool = False,
        aug_smooth: bool = False,
    ):
        """``layer``: the layer to explain (a name, a nested layer's path such as ``"resnet50/conv5_block3_out"``,
        or the layer object; default: the last 4-D layer, searched through nested models). ``input_shape``: the
        (H, W, C) of the images, for a model that takes any size. ``pass_batch``: images per model pass in the
        methods that make many passes per map (default: :data:`PASS_PIXELS` pixels' worth). ``reshape``: for a
        layer whose output is not a (B, h, w, K) grid, a function making it one (default: a vision transformer's
        tokens laid out on the patch grid, :mod:`cam_mnist.maps.grids`). ``output``: which output of a model with
        several to explain (name or index). ``target``: a function of the output giving one score per image to
        explain instead of a class (:mod:`cam_mnist.maps.targets`). ``eigen_smooth``: the map is the first principal
        component of the weighted activations instead of their sum over channels (pytorch-grad-cam's option, for
        the channel-weighted methods). ``aug_smooth``: the mean map over test-time augmentations, as
        pytorch-grad-cam's option (:meth:`_augmented`)."""
        self.model = model
        self.flat = FlatGraph.of(model, input_shape)
        shape = tuple(input_shape or self.flat.input.shape[1:])  # the model's input, without the batch axis
        if None in shape:
            raise UserError(f"model {model.name!r} takes inputs of any size {shape}: give input_shape=(H, W, C)")
        self.view = InputView(shape)  # a 1-D signal or a volume seen as an image (:mod:`cam_mnist.maps.grids`)
        kind = {2: "signal", 3: "image", 4: "volume"}.get(len(shape))
        if kind not in self.inputs:
            raise UserError(f"{type(self).__name__} is made for {' and '.join(self.inputs)} inputs, not {shape}")
        if (smooth or aug_smooth) and kind != "image":
            raise UserError(f"smooth and aug_smooth move images; this model takes a {kind} {shape}")
        if smooth and aug_smooth:
            raise UserError("choose one of smooth (shifts) and aug_smooth (flips and brightness), not both")
        if eigen_smooth and type(self).signed_maps is not BaseCAM.signed_maps:
            raise UserError(
                f"eigen_smooth replaces the sum over channels of a channel-weighted map; {type(self).__name__} "
                "makes its map otherwise"
            )
        self.eigen_smooth, self.aug_smooth = eigen_smooth, aug_smooth
        self.input_shape = self.view.image_shape  # (H, W, C) as every method sees it
        self.layer = self.flat.resolve(layer, shape)  # a Call: .path, .layer, .output
        self.grid = grid_for(self.layer.shape, self.view, reshape)  # its output as (B, h, w, K)
        self.chosen = {"output": output, "target": target}  # what the scores are: for every Head of this method
        self.head = Head(self.flat, self.layer, use_softmax, grid=self.grid, view=self.view, **self.chosen)
        self.batch_size = batch_size or self.default_batch_size
        self.num_classes = self.head.num_classes
        if not 0 <= smooth < min(self.input_shape[:2]):
            raise UserError(f"smooth must be a shift in 0..{min(self.input_shape[:2]) - 1} pixels, got {smooth}")
        self.smooth = smooth
        self.pass_batch = pass_batch or max(1, PASS_PIXELS // (self.input_shape[0] * self.input_shape[1]))
        if self.pass_batch < 1:
            raise UserError(f"pass_batch must be at least 1, got {pass_batch}")
        variables = model.variables  # on JAX, arguments of the compiled maps (backend.compiled)
        self._graph = backend.compiled(self._batch, variables)
        self._signed_graph = backend.compiled(lambda x, t: self._batch(x, t, signed=True), variables)

    # --------------------------------------------------------------------------------------- what methods override
    def channel_weights(self, images, activations, grads, targets):
        """(B, K) or (B, h, w, K) weights for the activations (B, h, w, K). Grads are dy^c/dA (None if unused)."""
        raise NotImplementedError

    def class_score(self, scores, targets):
        """(B,) the score y^c each image's map explains, from the (B, classes) scores and the (B,) classes."""
        return pick(scores, targets)

    def layer_gradients(self, score, images):
        """dy^c/dA at the layer (its output's shape) and what ``score`` keeps, for ``score(images, probe)``."""
        return backend.gradient_inside(score, images)

    def weighted_activations(self, activations, weights):
        """(B, h, w, K): each channel weighted, before the sum over channels."""
        return weights * activations

    def combine(self, weighted):
        """(B, h, w) from the weighted activations (B, h, w, K): their sum over channels, or with ``eigen_smooth``
        their first principal component (pytorch-grad-cam's ``get_2d_projection``)."""
        return first_component(weighted) if self.eigen_smooth else ops.sum(weighted, -1)

    def signed_maps(self, images, targets):
        """The maps before the method's final ReLU (B, h, w) at the layer's resolution, and the (B,) targets
        actually explained. Channel-weighted methods: sum_k weights_k * A^k."""

        def score(x, probe=None):  # the sum of each image's own y^c, and the layer's output (probed) it comes from
            outputs, scores = self.head.forward(x, as_grid=False, probe=probe)  # the layer's output, (B, classes)
            explained = resolve_targets(targets, scores)
            return ops.sum(self.class_score(scores, explained)), (outputs, explained)

        if self.needs_gradients:  # dy^c/dA: images are independent, so the sum's gradient is each image's own
            grads, (outputs, targets) = self.layer_gradients(score, images)
            grads = as_float32(self.grid.to_grid(grads))
        else:
            grads, (outputs, targets) = None, score(images)[1]
        activations = as_float32(self.grid.to_grid(outputs))  # (B, h, w, K) in float32 (mixed precision)
        weights = self.channel_weights(images, activations, grads, targets)
        if len(weights.shape) == 2:
            weights = weights[:, None, None, :]
        return self.combine(self.weighted_activations(activations, weights)), targets

    def raw_maps(self, images, targets):
        """The un-normalised maps (B, h, w) >= 0 at the layer's resolution, and the (B,) targets actually explained:
        the signed maps' positive part, as every method in the family defines its map."""
        signed, targets = self.signed_maps(images, targets)
        return ops.relu(signed), targets

    # ------------------------------------------------------------------------------------------------ the pipeline
    def _batch(self, images, targets, signed: bool = False):
        if signed and type(self).raw_maps is BaseCAM.raw_maps:  # one pass gives both
            before, targets = self.signed_maps(images, targets)
            raw = ops.relu(before)
        else:
            raw, targets = self.raw_maps(images, targets)
            before = self.signed_maps(images, targets)[0] if signed else None
        maps = self.grid.upsample(raw, self.input_shape[:2])
        if self.smooth:
            maps = self._smoothed(images, targets, maps)
        if self.aug_smooth:
            maps = self._augmented(images, targets, maps)
        outputs = (normalise(maps), raw, targets)
        return (*outputs, self.grid.upsample(before, self.input_shape[:2])) if signed else outputs

    def _smoothed(self, images, targets, maps):
        """``smooth``: test-time augmentation that maps back exactly (as pytorch-grad-cam's ``aug_smooth`` does with
        flips). The image is shifted by ``smooth`` pixels up, down, left and right, each map is shifted back, and
        every pixel is the mean of the maps that cover it. The classes stay those of the unshifted image."""
        total, cover = maps, ops.ones_like(maps)
        s = self.smooth
        for dy, dx in ((s, 0), (-s, 0), (0, s), (0, -s)):
            shifted, _ = self.raw_maps(shift(images, dy, dx), targets)
            total += shift(self.grid.upsample(shifted, self.input_shape[:2]), -dy, -dx)
            cover += shift(ops.ones_like(maps), -dy, -dx)
        return total / cover

    def _augmented(self, images, targets, maps):
        """``aug_smooth``, as pytorch-grad-cam defines it (its default ttach transforms): the image flipped left to
        right or not, times 0.9, 1 or 1.1; each of the six maps normalised, flipped back and averaged. The classes
        stay those of the unaugmented image (theirs, asked for the predicted class, asks each augmented image)."""
        total = normalise(maps)
        for flip in (False, True):
            for factor in AUGMENTATION_FACTORS:
                if flip or factor != 1.0:  # the unaugmented map is ``maps``
                    x = ops.flip(images, axis=2) if flip else images
                    raw, _ = self.raw_maps(x * factor, targets)
                    augmented = normalise(self.grid.upsample(raw, self.input_shape[:2]))
                    total += ops.flip(augmented, axis=2) if flip else augmented
        return total / (2 * len(AUGMENTATION_FACTORS))

    def __call__(self, images, targets="predicted", raw: bool = False):
        """Maps for N images: (N, H, W) float32 in [0, 1] (and, if ``raw``, the (N, h, w) un-normalised maps).

        ``targets``: "predicted", one class for all, or an array of N classes (one per image).
        """
        result = self.explain(images, targets)
        return (result.maps, result.raw) if raw else result.maps

    def explain(self, images, targets="predicted", signed: bool = False) -> Explanation:
        """The maps, raw maps and explained classes for N images (see :meth:`__call__`); with ``signed``, also the
        signed maps upsampled to the images' size, not normalised (for the sanity checks' rank correlations)."""
        images = self._check_images(images)
        targets = self._check_targets(targets, len(images))
        outs = None  # filled batch by batch: one copy of each map, no list of batches to concatenate
        b = self.batch_size
        for lo in range(0, len(images), b):  # batches, not images: one graph call each
            x, t = images[lo : lo + b], targets[lo : lo + b]
            n = len(x)
            if n < b and len(images) > b:  # pad the last batch so the graph keeps one shape
                x = np.concatenate([x, np.repeat(x[-1:], b - n, 0)])
                t = np.concatenate([t, np.repeat(t[-1:], b - n, 0)])
            graph = self._signed_graph if signed else self._graph
            values = [backend.to_numpy(v) for v in graph(x, t)]
            if outs is None:
                outs = [np.empty((len(images), *v.shape[1:]), v.dtype) for v in values]
            for out, value in zip(outs, values, strict=True):
                out[lo : lo + n] = value[:n]
        maps, raw, explained, *signed_maps = outs
        signed_maps = [self.view.to_input(m) for m in signed_maps] or [None]
        return Explanation(self.view.to_input(maps), raw, explained, *signed_maps)

    def _check_images(self, images) -> np.ndarray:
        images = np.asarray(images, np.float32)
        if not self.view.is_image and images.shape[1:] == self.view.shape:
            images = self.view.to_view(images)  # (N, T, C) or (N, D, H, W, C) as the view (N, H, W, C)
        if images.ndim == 3 and self.input_shape[-1] == 1 and images.shape[1:] == self.input_shape[:2]:
            images = images[..., None]  # (N, H, W) grey images are accepted for 1-channel models
        if images.ndim != 4:
            hint = " (one image? add a batch axis: images[None])" if images.shape == self.input_shape else ""
            raise UserError(
                f"images must be (N, H, W, C) (or (N, H, W) for grey models), got shape {images.shape}{hint}"
            )
        if images.shape[1:] != self.input_shape:
            raise UserError(f"images have size {images.shape[1:]}, the model takes {self.input_shape}")
        return images

    def _check_targets(self, targets, n: int) -> np.ndarray:
        if isinstance(targets, str):
            if targets != "predicted":
                raise UserError(f"targets must be 'predicted', a class index or an array of {n}, got {targets!r}")
            return np.full(n, PREDICTED, np.int32)
        t = np.asarray(targets)
        if t.ndim == 0:
            t = np.full(n, int(t))
        if t.shape != (n,):
            raise UserError(f"got {t.size} targets for {n} images: give one class per image")
        if not np.issubdtype(t.dtype, np.integer):
            raise UserError(f"targets must be integer class indices, got dtype {t.dtype}")
        bad = t[(t < 0) | (t >= self.num_classes)]
        if bad.size:
            raise UserError(f"class index {int(bad[0])} out of range: the model has {self.num_classes} classes")
        return t.astype(np.int32)
