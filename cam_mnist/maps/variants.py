"""The channel-weighted methods pytorch-grad-cam (Gildenblat et al., PyPI ``grad-cam``) adds to the CAM family:
each overrides one step of :class:`cam_mnist.maps.base.BaseCAM` -- the score it explains, the gradient it takes,
the channels' weights, how weighted channels are combined.

Shapes as in :mod:`cam_mnist.maps.methods`: activations A (B, h, w, K), grads dy^c/dA (B, h, w, K), targets (B,).
"""

from __future__ import annotations

from keras import ops

from cam_mnist.core import backend
from cam_mnist.core.errors import UserError
from cam_mnist.maps.base import BaseCAM, pick
from cam_mnist.maps.methods import GradCAM
from cam_mnist.maps.projection import first_component, kernel_component


class GradCAMElementWise(BaseCAM):
    """Grad-CAM element-wise (pytorch-grad-cam's): M = sum_k ReLU(dy^c/dA^k (.) A^k), HiResCAM's product of each
    cell's gradient and activation with a ReLU before the sum over channels, so that no channel's negative
    evidence cancels another's positive."""

    def channel_weights(self, images, activations, grads, targets):
        return grads  # (B, h, w, K)

    def weighted_activations(self, activations, weights):
        return ops.relu(weights * activations)


class EigenGradCAM(BaseCAM):
    """Eigen-Grad-CAM (pytorch-grad-cam's): Eigen-CAM's first principal component (Muhammad & Yeasin 2020, eq. 3-4)
    taken of the cells of dy^c/dA (.) A, centred over the cells as pytorch-grad-cam does, instead of A: class
    discriminative where Eigen-CAM is not."""

    def channel_weights(self, images, activations, grads, targets):
        return grads  # (B, h, w, K)

    def combine(self, weighted):
        return first_component(weighted)


class ShapleyCAM(GradCAM):
    """ShapleyCAM. Cai 2025, arXiv 2501.06261, eq. (10): the channel weights are the mean over cells of
    dy/dA - 1/2 (d^2 y / dA^2) A, a second-order estimate of each channel's Shapley value, with the paper's ReST
    score y = y^c - CE(y, c) = y^c + log p^c (eq. 12), whose Hessian is not zero where a logit's would be on a
    piecewise-linear head. The Hessian-vector product: :func:`backend.gradient_and_hessian_product_inside`."""

    def class_score(self, scores, targets):
        return pick(scores, targets) + pick(ops.log_softmax(scores, axis=-1), targets)

    def layer_gradients(self, score, images):
        grads, product, kept = backend.gradient_and_hessian_product_inside(score, images)
        return grads - 0.5 * product, kept


class FinerCAM(GradCAM):
    """Finer-CAM. Zhang et al. 2025, arXiv 2501.11309, eq. (4)-(5): Grad-CAM of the difference between the target's
    logit and those of the ``comparisons`` classes scored most like it, y = sum_j p_j (y^c - alpha y^j) / sum_j p_j,
    p the softmax: what tells the target apart from its look-alikes, not what it shares with them."""

    def __init__(self, model, layer=None, alpha: float = 1.0, comparisons: int = 3, **kw):
        super().__init__(model, layer, **kw)
        if comparisons < 1:
            raise UserError(f"finercam needs comparisons >= 1, got {comparisons}")
        self.alpha, self.comparisons = alpha, min(comparisons, self.num_classes - 1)
        if self.comparisons < 1:
            raise UserError("finercam compares classes: the model has one score")

    def class_score(self, scores, targets):
        own = pick(scores, targets)  # (B,)
        distance = ops.abs(scores - own[:, None]) + ops.one_hot(targets, scores.shape[-1]) * 1e30  # not itself
        _, nearest = ops.top_k(-distance, self.comparisons)  # (B, n) the classes scored most like the target
        others = ops.take_along_axis(scores, nearest, axis=1)
        p = ops.take_along_axis(ops.softmax(scores, axis=-1), nearest, axis=1)
        return ops.sum(p * (own[:, None] - self.alpha * others), axis=1) / (ops.sum(p, axis=1) + 1e-9)


class FEM(BaseCAM):
    """Feature Explanation Method. Fuad et al. 2020 (IPTA), eq. (1)-(3): a channel's weight is the share of its
    cells above its mean + k standard deviations over the cells (the k-sigma rule), how much of it stands out;
    class-agnostic, no gradients."""

    needs_gradients = False

    def __init__(self, model, layer=None, k: float = 2.0, **kw):
        super().__init__(model, layer, **kw)
        shape = self.layer.shape
        if len(shape) == 4 and None not in shape[1:3] and (shape[1] * shape[2] - 1) ** 0.5 <= k:
            # n values lie at most sqrt(n - 1) standard deviations above their mean: no cell could pass
            raise UserError(
                f"FEM's k-sigma rule cannot pick a cell of the {shape[1]}x{shape[2]} map of {self.layer.path!r}: "
                f"none lies more than {(shape[1] * shape[2] - 1) ** 0.5:.2f} standard deviations above the mean; "
                f"choose k below that (k={k} now) or an earlier layer"
            )
        self.k = k

    def channel_weights(self, images, activations, grads, targets):
        mean = ops.mean(activations, axis=(1, 2), keepdims=True)
        threshold = mean + self.k * ops.std(activations, axis=(1, 2), keepdims=True)
        return ops.mean(ops.cast(activations > threshold, "float32"), axis=(1, 2))  # (B, K)


class KPCACAM(BaseCAM):
    """KPCA-CAM. Karmani et al. 2024, arXiv 2410.00267, §3: Eigen-CAM's principal component taken in a kernel's
    feature space, the first kernel principal component of the cells (sigmoid kernel, gamma 1/K, as
    pytorch-grad-cam's default): :func:`cam_mnist.maps.projection.kernel_component`. Class-agnostic."""

    needs_gradients = False

    def __init__(self, model, layer=None, gamma: float | None = None, **kw):
        super().__init__(model, layer, **kw)
        self.gamma = gamma

    def channel_weights(self, images, activations, grads, targets):
        return ops.ones((ops.shape(activations)[0], activations.shape[3]))  # (B, K): the activations as they are

    def combine(self, weighted):
        return kernel_component(weighted, self.gamma)
