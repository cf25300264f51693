"""ROAD: RemOve And Debias (Rong et al. 2022, arXiv 2202.00449), faithfulness without retraining. The pixels a map
ranks first (MoRF) or last (LeRF) are removed and filled in by noisy linear imputation, so that what the model sees
no longer tells it where the removed pixels were (the "class information leakage" of a black mask, their §3);
a faithful map makes the target's probability fall fast when its top pixels go and slowly when its bottom ones do.
Arrays in, numbers out; computed as pytorch-grad-cam's ``ROADMostRelevantFirstAverage`` and siblings do."""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import spsolve

PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)  # their standard thresholds, averaged
NOISE = 0.01  # the imputation's noise (absolute; their default)
# Rong et al. eq. (5): each removed pixel is the weighted mean of its 8 neighbours, the direct ones twice the
# diagonal ones.
NEIGHBOURS = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((0, -1), 1 / 6),
              ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))  # fmt: skip


def impute(images: np.ndarray, removed: np.ndarray, noise: float = NOISE, rng=None) -> np.ndarray:
    """Noisy linear imputation (Rong et al. §4): every removed pixel equals the weighted mean of its neighbours
    inside the image (removed or not), a sparse linear system per image over its removed pixels, plus Gaussian
    noise of std ``noise``. images (N, H, W, C) float, removed (N, H, W) bool; returns a new array. (One system
    per image: faster than one block-diagonal system for many, 0.14 s against 0.19 s an image over the nine
    percentiles, docs/experiments.md.)"""
    rng = np.random.default_rng(0) if rng is None else rng
    return np.stack([_impute_one(image, gone, noise, rng) for image, gone in zip(images, removed, strict=True)])


def _impute_one(image: np.ndarray, removed: np.ndarray, noise: float, rng) -> np.ndarray:
    h, w, c = image.shape
    flat = image.reshape(-1, c).astype(np.float64)
    unknown = np.flatnonzero(removed.reshape(-1))
    if unknown.size == 0:
        return image.copy()
    variable = np.full(h * w, -1)
    variable[unknown] = np.arange(unknown.size)
    y, x = unknown // w, unknown % w
    diagonal, rows, cols, values = np.zeros(unknown.size), [], [], []
    rhs = np.zeros((unknown.size, c))
    for (dy, dx), weight in NEIGHBOURS:
        at = np.flatnonzero((y + dy >= 0) & (y + dy < h) & (x + dx >= 0) & (x + dx < w))
        neighbour = unknown[at] + dy * w + dx
        diagonal[at] -= weight  # minus the sum of the weights of the neighbours inside the image
        is_unknown = variable[neighbour] >= 0
        rows.append(at[is_unknown]), cols.append(variable[neighbour[is_unknown]])
        values.append(np.full(is_unknown.sum(), weight))
        np.subtract.at(rhs, at[~is_unknown], weight * flat[neighbour[~is_unknown]])  # the known neighbours
    index = np.arange(unknown.size)
    rows, cols, values = (np.concatenate(a) for a in ([*rows, index], [*cols, index], [*values, diagonal]))
    system = sparse.csc_matrix((values, (rows, cols)), shape=(unknown.size, unknown.size))
    solution = spsolve(system, rhs).reshape(unknown.size, c)
    flat[unknown] = solution + noise * rng.standard_normal(solution.shape)
    return flat.reshape(image.shape).astype(image.dtype)


def removed_pixels(maps: np.ndarray, percentile: float, most_relevant: bool) -> np.ndarray:
    """(N, H, W) bool: the pixels at or above each map's ``percentile``-th percentile, the top (100 - p)% (MoRF), or
    of 1 - map, its bottom ones (LeRF): pytorch-grad-cam's ``RemoveMostRelevantFirst`` / ``...LeastRelevantFirst``."""
    ranked = maps if most_relevant else 1.0 - maps
    threshold = np.percentile(ranked.reshape(len(maps), -1), percentile, axis=1)
    return ranked >= threshold[:, None, None]


def road(predict, images, maps, targets, probs=None, *, percentiles=PERCENTILES, noise=NOISE, seed=0) -> dict:
    """Per image (N,): the change in the target's probability, imputed minus whole, averaged over ``percentiles``,
    removing the most relevant pixels first (``morf``, lower is more faithful) and the least relevant first
    (``lerf``, higher is more faithful), and ``combined`` = (lerf - morf) / 2 (their ``ROADCombined``, higher is
    better). images (N, H, W, C), maps (N, H, W), targets (N,); ``predict``: images -> probabilities."""
    idx = np.arange(len(images))
    whole = (predict(images) if probs is None else np.asarray(probs))[idx, targets]
    rng = np.random.default_rng(seed)
    result = {}
    for name, most in (("morf", True), ("lerf", False)):
        changes = [
            predict(impute(images, removed_pixels(maps, p, most), noise, rng))[idx, targets] - whole
            for p in percentiles
        ]
        result[name] = np.mean(changes, axis=0)
    result["combined"] = (result["lerf"] - result["morf"]) / 2
    return result
