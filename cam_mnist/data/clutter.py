"""Cluttered MNIST: a vectorised port of DeepMind's ``mnist_cluttered.lua`` that also records ground truth.

The algorithm (Mnih et al. 2014's cluttered MNIST; github.com/deepmind/mnist-cluttered):
  1. start from a black ``canvas x canvas`` image;
  2. ``distractors`` times: take a random digit of the same pool, crop a random ``s x s`` window of it, and *add*
     it at a uniformly random position;
  3. add the 28x28 digit at a uniformly random position (top-left in ``0..canvas-28``);
  4. clip to [0, 1].
Pixels are kept as integers (uint8 MNIST bytes summed in uint16, clipped at 255), so an image's float value is
``byte / 255`` and the whole pipeline is exact and bit-reproducible.

All random draws happen up front from one ``numpy.random.Generator`` (PCG64: the same stream on every machine),
then images are composed in chunks with fancy indexing: one vectorised add per distractor, none per image.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from cam_mnist.config import DataConfig
from cam_mnist.core.boxes import tight_boxes
from cam_mnist.core.errors import UserError

DIGIT = 28  # side of an MNIST digit
_CHUNK = 4096  # images composed at once: bounds the uint16 scratch canvas to ~80 MB at 100x100


@dataclass(frozen=True)
class Draws:
    """Every random choice behind N images, K digits and D distractors each (all int32)."""

    digit_index: np.ndarray  # (N, K) index into the digit pool
    position: np.ndarray  # (N, K, 2) top-left (y, x) of each 28x28 digit
    distractor_index: np.ndarray  # (N, D) which pool digit each clutter crop comes from
    crop_origin: np.ndarray  # (N, D, 2) top-left of the crop inside that digit
    distractor_position: np.ndarray  # (N, D, 2) top-left of the crop on the canvas

    def take(self, rows) -> Draws:
        """The draws of the images ``rows`` (a slice or indices)."""
        return Draws(*(getattr(self, f.name)[rows] for f in fields(self)))


def draw(
    rng: np.random.Generator, labels: np.ndarray, n: int, config: DataConfig, digit_index: np.ndarray | None = None
) -> Draws:
    """Draw everything random about ``n`` images of ``config``'s clutter (canvas, distractors and their size,
    digits per image) from ``rng``.

    ``digit_index`` (N, K) fixes which pool digits are placed (e.g. one test image per test digit); otherwise they
    are drawn. With K > 1 the digits of an image have distinct classes and non-overlapping 28x28 squares.
    """
    canvas, distractors, size, digits = config.canvas, config.distractors, config.distractor_size, config.digits
    pool = len(labels)
    if digit_index is None:
        digit_index = rng.integers(0, pool, (n, digits))
    digit_index = np.asarray(digit_index, np.int64).reshape(n, -1)
    position = rng.integers(0, canvas - DIGIT + 1, (n, digits, 2))
    if digits > 1:
        digit_index, position = _resolve_conflicts(rng, labels, digit_index, position, canvas)
    return Draws(
        digit_index=digit_index.astype(np.int32),
        position=position.astype(np.int32),
        distractor_index=rng.integers(0, pool, (n, distractors)).astype(np.int32),
        crop_origin=rng.integers(0, DIGIT - size + 1, (n, distractors, 2)).astype(np.int32),
        distractor_position=rng.integers(0, canvas - size + 1, (n, distractors, 2)).astype(np.int32),
    )


def _conflicts(labels: np.ndarray, digit_index: np.ndarray, position: np.ndarray) -> np.ndarray:
    """(N,) True where two digits of an image share a class or their 28x28 squares overlap."""
    k = digit_index.shape[1]
    i, j = np.triu_indices(k, 1)
    same_class = labels[digit_index[:, i]] == labels[digit_index[:, j]]  # (N, pairs)
    apart = np.abs(position[:, i] - position[:, j]) >= DIGIT  # (N, pairs, 2): separated along y or x
    return (same_class | ~apart.any(-1)).any(-1)


def _resolve_conflicts(rng, labels, digit_index, position, canvas, max_rounds: int = 1000):
    # Rejection sampling, vectorised: redraw every conflicting image's digits and positions until none is left.
    digits = digit_index.shape[1]
    for _ in range(max_rounds):
        bad = np.flatnonzero(_conflicts(labels, digit_index, position))
        if bad.size == 0:
            return digit_index, position
        digit_index[bad, 1:] = rng.integers(0, len(labels), (bad.size, digits - 1))
        position[bad] = rng.integers(0, canvas - DIGIT + 1, (bad.size, digits, 2))
    raise UserError(f"cannot place {digits} non-overlapping digits on a {canvas}x{canvas} canvas")


def _paste(canvas: np.ndarray, patches: np.ndarray, origin: np.ndarray) -> None:
    """canvas[n, y+i, x+j] += patches[n, i, j] for every image n at once. canvas (N,H,W), patches (N,h,w)."""
    n, h, w = patches.shape
    rows = origin[:, 0, None, None] + np.arange(h)[None, :, None]  # (N, h, 1)
    cols = origin[:, 1, None, None] + np.arange(w)[None, None, :]  # (N, 1, w)
    canvas[np.arange(n)[:, None, None], rows, cols] += patches


def _crop(pool: np.ndarray, index: np.ndarray, origin: np.ndarray, size: int) -> np.ndarray:
    """pool[index[n], y:y+size, x:x+size] for every n. Returns (N, size, size)."""
    rows = origin[:, 0, None, None] + np.arange(size)[None, :, None]
    cols = origin[:, 1, None, None] + np.arange(size)[None, None, :]
    return pool[index[:, None, None], rows, cols]


@dataclass(frozen=True)
class Hiding:
    """Hide-and-seek's random choices for N images: which grid squares stay visible and the grid's offset."""

    keep: np.ndarray  # (N, gh, gw) bool: the square is kept
    shift: np.ndarray  # (N, 2): the grid's offset in pixels

    def take(self, rows) -> Hiding:
        return Hiding(self.keep[rows], self.shift[rows])


def draw_hiding(n: int, size: tuple[int, int], patch: int, prob: float, rng: np.random.Generator) -> Hiding:
    """Hide-and-seek's draws for n images of ``size`` (H, W): each ``patch`` x ``patch`` square of a grid shifted at
    random per image is blanked with probability ``prob``."""
    h, w = size
    cells = (h // patch + 2, w // patch + 2)  # one spare cell each side for the shift
    return Hiding(rng.random((n, *cells)) >= prob, rng.integers(0, patch, (n, 2)))


def hide(images: np.ndarray, patch: int, hiding: Hiding) -> np.ndarray:
    """Hide-and-seek (Singh & Lee 2017, arXiv 1704.04232): blank the squares ``hiding`` drew. A network that cannot
    count on seeing a digit's most telling part learns to recognise it from every part, so its map covers the
    whole digit. (N, H, W) uint8 -> (N, H, W) uint8."""
    n, h, w = images.shape
    rows = (np.arange(h)[None, :] + hiding.shift[:, :1]) // patch  # (N, H): each pixel row's grid cell
    cols = (np.arange(w)[None, :] + hiding.shift[:, 1:]) // patch  # (N, W)
    visible = hiding.keep[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]  # (N, H, W)
    return images * visible


def hide_patches(images: np.ndarray, patch: int, prob: float, rng: np.random.Generator) -> np.ndarray:
    """:func:`hide` with squares drawn from ``rng`` (:func:`draw_hiding`)."""
    return hide(images, patch, draw_hiding(len(images), images.shape[1:], patch, prob, rng))


def compose(pool: np.ndarray, draws: Draws, canvas: int, size: int) -> np.ndarray:
    """The images (N, canvas, canvas) uint8 that ``draws`` describes, built from the digit ``pool`` (P, 28, 28)."""
    n = len(draws.digit_index)
    out = np.empty((n, canvas, canvas), np.uint8)
    for lo in range(0, n, _CHUNK):
        hi = min(lo + _CHUNK, n)
        acc = np.zeros((hi - lo, canvas, canvas), np.uint16)  # sums of up to D+K bytes fit easily
        for d in range(draws.distractor_index.shape[1]):
            crop = _crop(pool, draws.distractor_index[lo:hi, d], draws.crop_origin[lo:hi, d], size)
            _paste(acc, crop, draws.distractor_position[lo:hi, d])
        for k in range(draws.digit_index.shape[1]):
            _paste(acc, pool[draws.digit_index[lo:hi, k]], draws.position[lo:hi, k])
        np.minimum(acc, 255, out=acc)  # the reference's clip to [0, 1]
        out[lo:hi] = acc
    return out


def digit_boxes(pool: np.ndarray) -> np.ndarray:
    """Tight box (y0, x0, y1, x1), half-open, of each 28x28 digit's nonzero pixels. (P, 28, 28) -> (P, 4)."""
    return tight_boxes(pool > 0).astype(np.int32)


def ground_truth_boxes(pool: np.ndarray, draws: Draws, pool_boxes: np.ndarray | None = None) -> np.ndarray:
    """(N, K, 4) tight canvas boxes of the placed digits: the digit's own box shifted by its position.
    ``pool_boxes``: :func:`digit_boxes` of the pool, if already known (it takes 0.1 s for 50k digits)."""
    local = (digit_boxes(pool) if pool_boxes is None else pool_boxes)[draws.digit_index]  # (N, K, 4)
    return local + np.concatenate([draws.position, draws.position], -1)


def digit_masks(pool: np.ndarray, draws: Draws, canvas: int) -> np.ndarray:
    """(N, K, canvas, canvas) bool: where each placed digit's own pixels are nonzero (clutter excluded)."""
    n, k = draws.digit_index.shape
    masks = np.zeros((n, k, canvas, canvas), bool)
    for j in range(k):
        plane = np.zeros((n, canvas, canvas), np.uint8)
        _paste(plane, (pool[draws.digit_index[:, j]] > 0).astype(np.uint8), draws.position[:, j])
        masks[:, j] = plane.astype(bool)
    return masks
