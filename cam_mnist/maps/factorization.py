"""Deep Feature Factorization (Collins et al. 2018, arXiv 1806.10206): a layer's activations over a set of images
factorized into a few concepts, each with a map per image. Concepts, not class maps, so it is a function of its
own rather than a method of the registry: :func:`factorize`."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from keras import ops

from cam_mnist.core import backend
from cam_mnist.core.errors import UserError
from cam_mnist.core.resize import bilinear_resize
from cam_mnist.maps.base import BaseCAM
from cam_mnist.maps.layers import cam_weights


class Concepts(NamedTuple):
    """``concepts`` (K, n): each concept's value in the layer's K channels; ``maps`` (N, n, H, W): where each
    concept is in each image, min-max normalised per map; ``scores`` (n, classes): the class scores of each concept
    read through the model's GAP -> linear head (None where the layer has no such head)."""

    concepts: np.ndarray
    maps: np.ndarray
    scores: np.ndarray | None


def nmf(x: np.ndarray, n: int, iterations: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative W (R, n), H (n, C) with x ~ W H in the Frobenius norm, by Lee & Seung's multiplicative
    updates (2001, Theorem 1: the error never increases), from scikit-learn's random start for ``init="random"``:
    |N(0, 1)| * sqrt(mean(x) / n)."""
    rng = np.random.default_rng(seed)
    scale = np.sqrt(max(float(x.mean()), 1e-12) / n)
    w = (np.abs(rng.standard_normal((x.shape[0], n))) * scale).astype(np.float64)
    h = (np.abs(rng.standard_normal((n, x.shape[1]))) * scale).astype(np.float64)
    x = x.astype(np.float64)
    for _ in range(iterations):
        h *= (w.T @ x) / np.maximum(w.T @ w @ h, 1e-12)
        w *= (x @ h.T) / np.maximum(w @ (h @ h.T), 1e-12)
    return w, h


def factorize(model, images, n_components: int = 5, layer=None, *, iterations: int = 200, seed: int = 0, **kw):
    """Deep Feature Factorization of ``model``'s ``layer`` (default: the maps' default layer) over ``images``
    (N, H, W[, C]), as Collins et al. §3 and pytorch-grad-cam's ``DeepFeatureFactorization``: the activations, one
    column per cell of every image (K x N h w), offset per channel to be non-negative, factorized by NMF into
    ``n_components`` concepts (K x n, the offset added back) and their (n x N h w) weights, which are the maps,
    upsampled to the images. Returns :class:`Concepts`. ``kw``: ``input_shape``, ``reshape``, ``output``, as for
    :func:`cam_mnist.maps.explain`."""
    if n_components < 1:
        raise UserError(f"n_components must be at least 1, got {n_components}")
    reader = BaseCAM(model, layer, **kw)  # the layer resolved, its grid, the images checked as every method does
    images = reader._check_images(images)
    activations = np.concatenate(
        [
            backend.to_numpy(ops.cast(reader.head.forward(ops.convert_to_tensor(images[lo : lo + 128]))[0], "float32"))
            for lo in range(0, len(images), 128)
        ]
    )  # (N, h, w, K)
    n, h, w, k = activations.shape
    columns = activations.reshape(-1, k).T  # (K, N h w)
    offset = columns.min(axis=1, keepdims=True)
    weights, loadings = nmf(columns - offset, n_components, iterations, seed)
    concepts = (weights + offset).astype(np.float32)  # (K, n)
    maps = loadings.reshape(n_components, n, h, w).transpose(1, 0, 2, 3).reshape(n * n_components, h, w)
    maps = bilinear_resize(maps.astype(np.float32), reader.input_shape[:2])
    lo = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - lo
    maps = np.divide(maps - lo, span, out=np.zeros_like(maps), where=span > 0)
    try:
        head = backend.to_numpy(cam_weights(reader.head)())  # (K, classes)
        scores = concepts.T @ head
    except UserError:  # no GAP -> linear head after this layer: concepts without class scores
        scores = None
    return Concepts(concepts, maps.reshape(n, n_components, *maps.shape[1:]), scores)
