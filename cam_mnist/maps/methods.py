"""The channel-weighted methods: each one is its weights, with the equation it implements.

Shapes: images (B, H, W, C); activations A (B, h, w, K); grads dy^c/dA (B, h, w, K) or None; targets (B,);
the returned weights are (B, K), or (B, h, w, K) for methods that weight every cell.
"""

from __future__ import annotations

from keras import ops

from cam_mnist.maps.base import BaseCAM, as_float32, normalise, over_pairs, pick, resolve_targets
from cam_mnist.maps.grids import upsample
from cam_mnist.maps.layers import cam_weights
from cam_mnist.maps.projection import cells, top_projection


class CAM(BaseCAM):
    """Class activation mapping. Zhou et al. 2016, arXiv 1512.04150, eq. (2): M_c(x, y) = sum_k w_k^c f_k(x, y),
    with w the GAP -> logits weights (layers affine at inference after GAP folded in: :func:`cam_weights`). Needs
    no gradients; refuses a model without a GAP -> linear head, naming the layer that is not linear."""

    needs_gradients = False

    def __init__(self, model, layer=None, **kw):
        super().__init__(model, layer, **kw)
        self.kernel = cam_weights(self.head)  # () -> (K, classes), read from the current variables at every call

    def channel_weights(self, images, activations, grads, targets):
        return ops.transpose(ops.take(self.kernel(), targets, axis=1))  # (B, K)


class GradCAM(BaseCAM):
    """Grad-CAM. Selvaraju et al. 2017, arXiv 1610.02391, eq. (1): alpha_k^c = mean_ij dy^c / dA^k_ij.

    On a conv -> GAP -> linear model dy^c/dA^k_ij = w_k^c / (h w), so Grad-CAM = CAM / (h w) exactly.
    """

    def channel_weights(self, images, activations, grads, targets):
        return ops.mean(grads, axis=(1, 2))  # (B, K)


class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++. Chattopadhay et al. 2018, arXiv 1710.11063, eq. (19) with the exponential closed form:

        alpha_ij^kc = g^2 / (2 g^2 + sum_ab A^k_ab g^3),   g = dY^c/dA^k_ij,
        w_k^c = sum_ij alpha_ij^kc ReLU(dS^c/dA^k_ij),   S^c = exp(Y^c).

    For S = exp(Y) on a piecewise-linear network, the n-th derivative is S g^n, so S cancels in alpha; in w it is a
    positive per-image factor, which we drop (it overflows float32 for logits above 88 and cancels when the map is
    normalised). As in the authors' code (and tf-keras-vis), alpha is normalised to sum to 1 over positions.
    """

    def channel_weights(self, images, activations, grads, targets):
        g2 = ops.square(grads)
        denominator = 2.0 * g2 + ops.sum(activations, axis=(1, 2), keepdims=True) * g2 * grads
        alpha = ops.divide_no_nan(g2, denominator)  # 0 where the gradient is 0
        alpha = ops.divide_no_nan(alpha, ops.sum(alpha, axis=(1, 2), keepdims=True))
        return ops.sum(alpha * ops.relu(grads), axis=(1, 2))  # (B, K)


class LayerCAM(BaseCAM):
    """Layer-CAM. Jiang et al. 2021, IEEE TIP 30, eq. (4)-(5): every cell weighted by its own positive gradient,
    w_ij^kc = ReLU(dy^c/dA^k_ij), map = ReLU(sum_k w_ij^kc A^k_ij)."""

    def channel_weights(self, images, activations, grads, targets):
        return ops.relu(grads)  # (B, h, w, K)


class ScoreCAM(BaseCAM):
    """Score-CAM. Wang et al. 2020, arXiv 1910.01279, Algorithm 1: each channel, upsampled and min-max normalised
    to a mask H^k, masks the input; its weight is the softmax probability of the target for X * H^k.

    Needs K forward passes per image and no gradients: the (image, channel) pairs run ``pass_batch`` at a time.
    """

    needs_gradients = False
    inputs = ("image", "signal")  # each channel upsampled into a mask of the input
    default_batch_size = 8

    def channel_weights(self, images, activations, grads, targets):
        b, k = ops.shape(activations)[0], activations.shape[3]
        channels = ops.transpose(activations, (0, 3, 1, 2))  # (B, K, h, w): once, not in every chunk of pairs

        def target_probability(image, channel):  # p^c(X * H^k) of (n,) (image, channel) pairs
            maps = ops.take(channels, image, axis=0)  # (n, K, h, w)
            masks = normalise(upsample(pick(maps, channel), self.input_shape[:2]))  # (n, H, W)
            _, scores = self.head.forward(ops.take(images, image, axis=0) * masks[..., None])  # (n, classes)
            return pick(self.head.probabilities(scores), ops.take(targets, image, axis=0))

        return over_pairs(target_probability, b, k, self.pass_batch)  # (B, K)


class HiResCAM(BaseCAM):
    """HiResCAM. Draelos & Carin 2020, arXiv 2011.08891, eq. (5): M = sum_k dy^c/dA^k (.) A^k, each cell's
    activation times its own gradient, where Grad-CAM first averages the gradient over the cells.

    On a conv -> GAP -> linear model dy^c/dA^k_ij = w_k^c / (h w) at every cell, so HiResCAM = Grad-CAM = CAM / (h w).
    """

    def channel_weights(self, images, activations, grads, targets):
        return grads  # (B, h, w, K)


class XGradCAM(BaseCAM):
    """XGrad-CAM. Fu et al. 2020, arXiv 2008.02312, eq. (11): alpha_k^c = sum_ij (A^k_ij / sum_ab A^k_ab) dy^c/dA^k_ij,
    the gradient averaged with the activations as weights (Grad-CAM averages it uniformly). The division is taken
    out of the sum, so it runs on (B, K) numbers instead of every cell."""

    def channel_weights(self, images, activations, grads, targets):
        total = ops.sum(activations, axis=(1, 2))  # (B, K): sum_ab A^k_ab
        return ops.divide_no_nan(ops.sum(activations * grads, axis=(1, 2)), total)  # (B, K)


class AblationCAM(BaseCAM):
    """Ablation-CAM. Desai & Ramaswamy 2020 (WACV), eq. (2)-(3): w_k^c = (y^c - y^c_k) / y^c, where y^c_k is the
    score with channel k of the layer set to zero; map = ReLU(sum_k w_k^c A^k). Needs no gradients: K passes of
    the layers after the target layer per image (its tail, which must depend on the image through it alone)."""

    needs_gradients = False
    default_batch_size = 8  # images per call; their K ablated copies run ``pass_batch`` at a time

    def __init__(self, model, layer=None, **kw):
        super().__init__(model, layer, **kw)
        self.head.build_tail()  # refuses a layer that is not the only path from the image to the scores

    def channel_weights(self, images, activations, grads, targets):
        b, k = ops.shape(activations)[0], activations.shape[3]
        y = pick(self.head.scores_from(activations, images), targets)[:, None]  # (B, 1)

        def ablated_score(image, channel):  # y^c_k of (n,) (image, channel) pairs: the score with channel k zeroed
            keep = 1.0 - ops.one_hot(channel, k, dtype=activations.dtype)  # (n, K)
            ablated = ops.take(activations, image, axis=0) * keep[:, None, None, :]
            scores = self.head.scores_from(ablated, ops.take(images, image, axis=0))  # (n, classes)
            return pick(scores, ops.take(targets, image, axis=0))

        y_k = over_pairs(ablated_score, b, k, self.pass_batch)  # (B, K)
        return ops.divide_no_nan(y - y_k, y)  # (B, K)


class EigenCAM(BaseCAM):
    """Eigen-CAM. Muhammad & Yeasin 2020, arXiv 2008.00299, eq. (3)-(4): the activations (h w x K) projected on
    their first right singular vector V_1, class-agnostic (the target only names what is reported).

    The sign of a singular vector is arbitrary; it is fixed here so that the projection sums to >= 0 over the
    cells, the orientation in which the activations themselves (non-negative after a ReLU) point. Computed from
    the smaller Gram matrix: A^T A (K x K), whose top eigenvector is V_1, or, where the map has fewer cells than
    channels, A A^T (hw x hw), whose top eigenvector U_1 gives A V_1 = sigma_1 U_1 (a 7 x 7 map of 1280 channels:
    a 49 x 49 problem, where PyTorch's eigh of the rank-49 1280 x 1280 matrix returned NaN).
    """

    needs_gradients = False

    def signed_maps(self, images, targets):
        activations, scores = self.head.forward(images)
        activations = as_float32(activations)
        targets = resolve_targets(targets, scores)
        flat, shape = cells(activations)
        projection = top_projection(flat)  # A V_1, (B, h w)
        sign = ops.where(ops.sum(projection, 1, keepdims=True) < 0, -1.0, 1.0)
        return ops.reshape(sign * projection, shape), targets
