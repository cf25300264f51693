"""From the map to the object's mask: a segmentation seeded by any method's map and constrained to the image,
the third use of a class-activation map (Kolesnikov & Lampert 2016, "Seed, Expand and Constrain", arXiv 1603.06098).

The map says *where* the object is, as a blob about a receptive field wide; the image says *which pixels* are
the object's. Three ways to join them, each given images (N, H, W[, C]) and maps (N, H, W) in [0, 1]:

- ``ink``, the baseline: the map's region (the largest component above ``region`` x its maximum, the CAM paper's
  box region) intersected with the pixels brighter than ``ink``;
- ``grow``, seeded region growing (Adams & Bischof 1994): the seeds are the bright pixels where the map is
  confident (above ``seed`` x its maximum); the object is every bright pixel connected to a seed (8-connected)
  within the map's reach (above ``region`` x its maximum). A thin 1 is then the 1's own strokes, not the cell's
  receptive field, and a clutter crop that does not touch the digit stays out;
- ``random-walker`` (Grady 2006, as scikit-image implements it): the same seeds as foreground, the pixels the map
  leaves cold (below ``region``) or that are dark as background, every other pixel given to the label a random walk
  on the image's intensities reaches first. It needs no connectivity, at ~100x the time.

Brightness is the mean over channels; light-on-dark, as MNIST (invert dark-on-light pictures first, as ``explain
--invert auto`` does). The thresholds are chosen on validation (:func:`choose`) and applied to test once.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import ndimage

from cam_mnist.core import boxes as bx
from cam_mnist.core.errors import UserError

METHODS = ("grow", "ink", "random-walker")
# The thresholds tried on validation, per method (fractions of each map's maximum; ink: pixel values in [0, 1]).
GRID = {
    "grow": {"seed": (0.3, 0.4, 0.5, 0.6), "region": (0.0, 0.05, 0.1), "ink": (0.0, 0.05)},
    "ink": {"region": (0.15, 0.2, 0.25, 0.3), "ink": (0.0, 0.05, 0.1)},
    "random-walker": {"seed": (0.5,), "region": (0.05, 0.1), "ink": (0.0,)},
}
DEFAULTS = {"grow": {"seed": 0.5, "region": 0.05, "ink": 0.0}, "ink": {"region": 0.2, "ink": 0.0}}
DEFAULTS["random-walker"] = {"seed": 0.5, "region": 0.05, "ink": 0.0}


def segment(images: np.ndarray, maps: np.ndarray, method: str = "grow", **thresholds) -> np.ndarray:
    """(N, H, W) bool: the object's pixels in each image, seeded by its map (see the module's doc). ``thresholds``:
    ``seed``, ``region`` and ``ink`` (default :data:`DEFAULTS`, the values chosen on validation for the default run)."""
    if method not in METHODS:
        raise UserError(f"unknown segmentation {method!r}: choose one of {', '.join(METHODS)}")
    params = {**DEFAULTS[method], **thresholds}
    images = np.asarray(images, np.float32)
    bright = (images.mean(-1) if images.ndim == 4 else images) > params["ink"]  # (N, H, W)
    peak = np.asarray(maps).reshape(len(maps), -1).max(1)[:, None, None]
    reach = bx.keep_above(maps, params["region"]) if params["region"] else np.asarray(maps) > 0
    if method == "ink":
        return bx.largest_components(reach) & bright
    seeds = bright & bx.keep_above(maps, params["seed"]) & (peak > 0)
    if method == "grow":
        return _connected_to(seeds, bright & reach)
    return _random_walker(images, seeds, ~(bright & reach))


def _connected_to(seeds: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """The 8-connected components of ``allowed`` that hold a seed, in every image at once (one labelling)."""
    labels, count = ndimage.label(allowed, structure=bx.PER_IMAGE_8_CONNECTED)
    keep = np.zeros(count + 1, bool)
    keep[labels[seeds & allowed]] = True
    keep[0] = False
    return keep[labels]


def _random_walker(images: np.ndarray, foreground: np.ndarray, background: np.ndarray) -> np.ndarray:
    from skimage.segmentation import random_walker

    grey = images.mean(-1) if images.ndim == 4 else images
    out = np.zeros(foreground.shape, bool)
    for i in range(len(grey)):
        if not foreground[i].any():
            continue  # no seed: nothing is the object
        labels = np.where(foreground[i], 1, np.where(background[i], 2, 0)).astype(np.int32)
        out[i] = random_walker(grey[i], labels, beta=130, mode="cg_j") == 1
    return out


def choose(images: np.ndarray, maps: np.ndarray, masks: np.ndarray, method: str = "grow") -> dict:
    """The thresholds of :data:`GRID` whose segmentations of these (validation) images overlap their true masks
    most (mean mask IoU); ties to the first in grid order."""
    grid = GRID[method]
    best, best_iou = None, -1.0
    for values in itertools.product(*grid.values()):
        params = dict(zip(grid, values, strict=True))
        iou = float(bx.mask_iou(segment(images, maps, method, **params), masks).mean())
        if iou > best_iou:
            best, best_iou = params, iou
    return best
