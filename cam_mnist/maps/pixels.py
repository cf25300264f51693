"""Maps that are not channel-weighted sums: guided backpropagation, guided Grad-CAM, occlusion, SmoothGrad,
integrated gradients, RISE. They take the same inputs and return the same (N, H, W) maps in [0, 1] as the CAM
family, by overriding ``signed_maps`` of the base (the map before its final ReLU)."""

from __future__ import annotations

import numpy as np
from keras import ops

from cam_mnist.core import backend
from cam_mnist.core.errors import UserError
from cam_mnist.core.resize import bilinear_resize
from cam_mnist.maps.base import BaseCAM, over_pairs, pick, resolve_targets
from cam_mnist.maps.grids import upsample
from cam_mnist.maps.layers import Head
from cam_mnist.maps.methods import GradCAM


class GuidedBackprop(BaseCAM):
    """Guided backpropagation. Springenberg et al. 2015, arXiv 1412.6806, §3.4: dy^c/dx with every ReLU's backward
    pass replaced by the guided rule (only positive gradients, at positive inputs). The model is not copied: its
    own layers run with the guided rule after every ReLU (:func:`cam_mnist.maps.graph.positive_gradient`), so the
    maps follow the weights as they change. The map is the positive part of the input gradient,
    summed over channels."""

    def __init__(self, model, layer=None, **kw):
        super().__init__(model, layer, **kw)
        use_softmax = self.head.use_softmax
        self.guided_head = Head(
            self.flat, self.layer, use_softmax, guided=True, grid=self.grid, view=self.view, **self.chosen
        )

    def signed_maps(self, images, targets):
        def score(x):
            _, scores = self.guided_head.forward(x)
            explained = resolve_targets(targets, scores)
            return ops.sum(pick(scores, explained)), explained

        grads, targets = backend.gradient(score, images)
        return ops.sum(grads, -1), targets  # (B, H, W)


class GuidedGradCAM(GuidedBackprop):
    """Guided Grad-CAM. Selvaraju et al. 2017, §3.1: guided backpropagation times Grad-CAM upsampled to the input."""

    def __init__(self, model, layer=None, **kw):
        super().__init__(model, layer, **kw)
        same = {key: kw[key] for key in ("use_softmax", "reshape", "output", "target") if key in kw}
        self.gradcam = GradCAM(model, self.layer.path, input_shape=self.view.shape, **same)

    def signed_maps(self, images, targets):
        guided, targets = super().signed_maps(images, targets)  # targets now resolved: both explain the same class
        coarse, _ = self.gradcam.raw_maps(images, targets)  # Grad-CAM's map, >= 0
        return guided * upsample(coarse, self.input_shape[:2]), targets


class Occlusion(BaseCAM):
    """Occlusion sensitivity. Zeiler & Fergus 2014, arXiv 1311.2901, §4.2: slide a ``patch`` x ``patch`` square of
    ``baseline`` over the image with ``stride``; each pixel's value is the mean drop of the target's score over
    the placements that cover it. Needs one forward pass per placement and no gradients."""

    inputs = ("image",)  # square patches / cells of an image

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
        self.masks = masks  # (P, H, W)
        self.coverage = masks.sum(0)  # (H, W) placements covering each pixel, >= 1
        self.baseline = baseline

    def signed_maps(self, images, targets):
        b, p = ops.shape(images)[0], self.masks.shape[0]
        _, scores = self.head.forward(images)
        targets = resolve_targets(targets, scores)
        masks = ops.convert_to_tensor(self.masks)

        def occluded_score(image, placement):  # the target's score with the patch hidden, of (n,) pairs
            keep = 1.0 - ops.take(masks, placement, axis=0)[..., None]  # (n, H, W, 1)
            hidden = ops.take(images, image, axis=0) * keep + self.baseline * (1.0 - keep)
            return pick(self.head.forward(hidden)[1], ops.take(targets, image, axis=0))

        occluded = over_pairs(occluded_score, b, p, self.pass_batch)  # (B, P)
        drop = pick(scores, targets)[:, None] - occluded
        return ops.einsum("bp,phw->bhw", drop, masks) / ops.convert_to_tensor(self.coverage), targets  # (B, H, W)


def _input_gradients(head: Head, images, targets):
    """dy^c/dx (B, H, W, C) of each image's own target's score."""
    return backend.gradient(lambda x: (ops.sum(pick(head.forward(x)[1], targets)), ()), images)[0]


def _weighted_input_gradient(method: BaseCAM, images, targets, points, weights):
    """sum_s weights_s dy^c/dx (x_s) (B, H, W, C), at the points x_s = points(images, s) (SmoothGrad's noisy copies,
    integrated gradients' path): one gradient per (image, point) pair, ``pass_batch`` pairs at a time.
    points: ((n, H, W, C) images, (n,) point indices) -> (n, H, W, C); weights (S,)."""

    def weighted_gradient(image, s):
        x = points(ops.take(images, image, axis=0), s)
        grads = _input_gradients(method.head, x, ops.take(targets, image, axis=0))
        return grads * ops.take(weights, s, axis=0)[:, None, None, None]

    grads = over_pairs(weighted_gradient, ops.shape(images)[0], weights.shape[0], method.pass_batch)  # (B, S, H, W, C)
    return ops.sum(grads, 1)


def _resolve(head: Head, images, targets):
    """Targets with PREDICTED replaced by the class the model predicts for the (unperturbed) image."""
    _, scores = head.forward(images)
    return resolve_targets(targets, scores)


class SmoothGrad(BaseCAM):
    """SmoothGrad. Smilkov et al. 2017, arXiv 1706.03825, eq. (3): the input gradient averaged over ``samples``
    copies of the image with Gaussian noise of standard deviation ``sigma`` x (max - min) of the image; the map is
    its absolute value summed over channels. The noise is drawn once from ``seed``: the same maps every call.
    With ``sigma`` 0 it is the plain gradient ("vanilla saliency", Simonyan et al. 2013)."""

    needs_gradients = False  # of the input, not of the layer: computed here
    default_batch_size = 16

    def __init__(self, model, layer=None, samples: int = 16, sigma: float = 0.15, seed: int = 0, **kw):
        super().__init__(model, layer, **kw)
        if samples < 1 or sigma < 0:
            raise UserError(f"smoothgrad needs samples >= 1 and sigma >= 0, got {samples}, {sigma}")
        self.sigma = sigma
        self.noise = np.random.default_rng(seed).standard_normal((samples, *self.input_shape)).astype(np.float32)

    def mean_gradient(self, images, targets):
        """The input gradient averaged over the noisy copies (B, H, W, C), and the (B,) targets resolved."""
        targets = _resolve(self.head, images, targets)
        n, noise = self.noise.shape[0], ops.convert_to_tensor(self.noise)
        span = lambda x: ops.max(x, (1, 2, 3), keepdims=True) - ops.min(x, (1, 2, 3), keepdims=True)  # noqa: E731
        noisy = lambda x, i: x + self.sigma * span(x) * ops.take(noise, i, axis=0)  # noqa: E731 - (n, H, W, C)
        return _weighted_input_gradient(self, images, targets, noisy, ops.full([n], 1.0 / n)), targets

    def raw_maps(self, images, targets):
        mean, targets = self.mean_gradient(images, targets)
        return ops.sum(ops.abs(mean), -1), targets  # the absolute value of each channel, summed

    def signed_maps(self, images, targets):
        mean, targets = self.mean_gradient(images, targets)
        return ops.sum(mean, -1), targets


class IntegratedGradients(BaseCAM):
    """Integrated Gradients. Sundararajan et al. 2017, arXiv 1703.01365, eq. (1) by the trapezoidal rule over
    ``steps`` intervals: IG_i = (x_i - x'_i) * integral_0^1 dy^c/dx_i (x' + a (x - x')) da, from the black image
    x' = ``baseline``. Completeness (their §3): sum_i IG_i = y^c(x) - y^c(x'). The map is the positive part of IG
    summed over channels; :meth:`attributions` gives IG itself."""

    needs_gradients = False  # of the input along the path: computed here
    default_batch_size = 8

    def __init__(self, model, layer=None, steps: int = 32, baseline: float = 0.0, **kw):
        super().__init__(model, layer, **kw)
        if steps < 1:
            raise UserError(f"integrated-gradients needs steps >= 1, got {steps}")
        self.baseline = baseline
        weights = np.ones(steps + 1, np.float32)
        weights[[0, -1]] = 0.5  # the trapezoidal rule
        self.alphas = np.linspace(0, 1, steps + 1).astype(np.float32)
        self.weights = weights / steps
        self._attributions = backend.compiled(self._ig, model.variables)

    def _ig(self, images, targets):
        alphas = ops.convert_to_tensor(self.alphas)
        on_path = lambda x, i: self.baseline + ops.take(alphas, i, axis=0)[:, None, None, None] * (x - self.baseline)  # noqa: E731
        weights = ops.convert_to_tensor(self.weights)
        average = _weighted_input_gradient(self, images, targets, on_path, weights)  # (B, H, W, C)
        return (images - self.baseline) * average  # (B, H, W, C)

    def attributions(self, images, targets) -> np.ndarray:
        """Integrated gradients (N, H, W, C) of each image's target class, signed."""
        images = self._check_images(images)
        targets = self._check_targets(targets, len(images))
        return backend.to_numpy(self._attributions(images, targets))

    def signed_maps(self, images, targets):
        targets = _resolve(self.head, images, targets)
        return ops.sum(self._ig(images, targets), -1), targets


class RISE(BaseCAM):
    """RISE. Petsiuk et al. 2018, arXiv 1806.07421, eq. (6): S_c = sum_i p_c(x (.) M_i) M_i / (N E[M]), over ``masks``
    random masks: a ``cells`` x ``cells`` grid of cells kept with probability ``keep``, upsampled bilinearly and
    shifted at random by up to one cell (their §3.2). The masks are drawn once from ``seed``. ``masks`` forward
    passes per image, no gradients."""

    inputs = ("image",)  # square patches / cells of an image

    needs_gradients = False
    default_batch_size = 2

    def __init__(self, model, layer=None, masks: int = 500, cells: int = 8, keep: float = 0.5, seed: int = 0, **kw):
        super().__init__(model, layer, **kw)
        if masks < 1 or cells < 1 or not 0 < keep <= 1:
            raise UserError(f"rise needs masks >= 1, cells >= 1 and keep in (0, 1], got {masks}, {cells}, {keep}")
        self.keep = keep
        self.masks = _rise_masks(masks, cells, keep, self.input_shape[:2], seed)  # (N, H, W)

    def signed_maps(self, images, targets):
        targets = _resolve(self.head, images, targets)

        masks = ops.convert_to_tensor(self.masks)

        def masked_probability(image, mask):  # p^c(x (.) M_i) of (n,) (image, mask) pairs
            _, scores = self.head.forward(ops.take(images, image, axis=0) * ops.take(masks, mask, axis=0)[..., None])
            return pick(self.head.probabilities(scores), ops.take(targets, image, axis=0))

        n = self.masks.shape[0]
        p = over_pairs(masked_probability, ops.shape(images)[0], n, self.pass_batch)  # (B, N)
        return ops.einsum("bn,nhw->bhw", p, masks) / (n * self.keep), targets


def _rise_masks(n: int, cells: int, keep: float, size: tuple[int, int], seed: int) -> np.ndarray:
    """(n, H, W) float32 masks: binary cells x cells grids, upsampled bilinearly to (cells + 1) cell sizes and
    cropped at a random offset within one cell (Petsiuk et al. §3.2)."""
    rng = np.random.default_rng(seed)
    h, w = size
    ch, cw = -(-h // cells), -(-w // cells)
    grids = (rng.random((n, cells, cells)) < keep).astype(np.float32)
    up = bilinear_resize(grids, ((cells + 1) * ch, (cells + 1) * cw))
    dy, dx = rng.integers(0, ch, n), rng.integers(0, cw, n)
    return np.stack([up[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)]).astype(np.float32)
