"""Resizing maps as matrix products: an (N, h, w) stack becomes rows @ map @ cols.T, with fixed (n_out, n_in)
interpolation matrices. Bilinear upsampling here equals ``tf.image.resize(..., "bilinear")`` (half-pixel centres)
to float rounding; the CAM pipeline uses the same matrices inside its graph, where two small matrix products run
faster than TensorFlow's resize kernel on one-channel maps."""

from __future__ import annotations

import numpy as np


def bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 weights of bilinear resizing with half-pixel centres, as ``tf.image.resize`` does."""
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    weights = np.zeros((n_out, n_in))
    np.add.at(weights, (np.arange(n_out), lo), 1 - (src - lo))
    np.add.at(weights, (np.arange(n_out), hi), src - lo)
    return weights.astype(np.float32)


def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32: output cell i averages the input pixels it covers, partial pixels by their share."""
    edges = np.arange(n_out + 1) * n_in / n_out
    pixel = np.arange(n_in)
    overlap = np.clip(np.minimum(edges[1:, None], pixel + 1) - np.maximum(edges[:-1, None], pixel), 0, None)
    return (overlap / overlap.sum(1, keepdims=True)).astype(np.float32)


def area_resize(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, H, W) -> (N, h, w), each output cell the mean of the input area it covers."""
    return _separable(maps, area_weights(maps.shape[1], size[0]), area_weights(maps.shape[2], size[1]))


def bilinear_resize(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) -> (N, H, W) bilinear with half-pixel centres: the CAM pipeline's upsampling, in numpy."""
    return _separable(maps, bilinear_weights(maps.shape[1], size[0]), bilinear_weights(maps.shape[2], size[1]))


def _separable(maps: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """rows @ map @ cols.T for every map: two batched matrix products (an unoptimised three-operand einsum loops
    over every index at once and took minutes for 10k maps)."""
    return np.matmul(rows, np.matmul(maps.astype(np.float32), cols.T))
