"""Sanity checks for explanation maps: do they depend on what the model learned? Adebayo et al. 2018, "Sanity
Checks for Saliency Maps", arXiv 1810.03292.

- **Cascading model-parameter randomization** (their §3.1): re-initialise the model's blocks from the top (the
  logits) down, one more at each stage, and measure how much each method's maps change. A map that stays the same
  with the network's weights replaced by random ones shows the image, not the model (an edge detector).
- **Data randomization** (their §3.2): compare the maps of the trained model with those of the same network
  trained on permuted labels, which can learn nothing that ties the digit to its class.

Similarity of two maps of one image: Spearman's rank correlation of their pixels, with and without absolute values
(of the signed maps, before each method's final ReLU or absolute value), and SSIM of the maps as the methods give
them (Wang et al. 2004, as scikit-image computes it). Arrays and models in, arrays and numbers out.
"""

from __future__ import annotations

import keras
import numpy as np
from scipy import stats

from cam_mnist import maps
from cam_mnist.core import boxes as bx
from cam_mnist.core.errors import UserError
from cam_mnist.core.memory import release_freed_memory
from cam_mnist.maps import segmentation
from cam_mnist.maps.graph import FlatGraph
from cam_mnist.scoring import localization


def blocks(model: keras.Model) -> list[list[keras.layers.Layer]]:
    """The model's layers with weights, grouped into blocks, the top (nearest the output) first: a batch
    normalisation belongs to the layer that feeds it (a conv and its batch norm are one block, also where a branch
    beside it, such as the local gate, comes between them in the model's layer list), as Adebayo et al. randomize a
    network block by block."""
    feeder = _feeders(model)
    out: list[list] = []
    block_of: dict[int, list] = {}  # id(layer) -> its block
    for layer in model.layers:  # graph order, input first
        if not layer.weights:
            continue
        if isinstance(layer, keras.layers.BatchNormalization) and out:
            # its feeder's block; a feeder without weights (or a layer called twice): the layer listed before it
            block = block_of.get(id(feeder.get(id(layer))), out[-1])
            block.append(layer)
        else:
            block = [layer]
            out.append(block)
        block_of[id(layer)] = block
    return out[::-1]


def _feeders(model: keras.Model) -> dict[int, keras.layers.Layer]:
    """id(layer) -> the layer whose output its first call takes first, as the explainers read the graph."""
    graph, feeders = FlatGraph.of(model), {}
    for call in graph.calls:
        source = graph.producer(call.inputs[0]) if call.inputs else None
        if source is not None:
            feeders.setdefault(id(call.layer), source.layer)
    return feeders


def reinitialize(layer: keras.layers.Layer, seed: int) -> None:
    """Draw every variable of ``layer`` afresh from its own initializer (``kernel`` from ``kernel_initializer``,
    a batch norm's ``moving_variance`` from ``moving_variance_initializer``...), seeded."""
    for variable in layer.weights:
        name = variable.path.rsplit("/", 1)[-1]
        initializer = getattr(layer, f"{name}_initializer", None)
        if initializer is None:
            raise UserError(f"layer {layer.name!r}: no initializer for its variable {name!r}, cannot re-initialise it")
        config = keras.initializers.serialize(keras.initializers.get(initializer))
        if "seed" in config.get("config", {}):
            config["config"]["seed"] = seed
        initializer = keras.initializers.deserialize(config)
        variable.assign(initializer(variable.shape, dtype=variable.dtype))


def cascade(model: keras.Model, seed: int = 0):
    """Re-initialise ``model``'s blocks (:func:`blocks`) in place, one more at each step, the top first; yields the
    names of the blocks re-initialised so far after each. Run it on a copy: the model's weights are replaced."""
    done = []
    for i, block in enumerate(blocks(model)):
        for j, layer in enumerate(block):
            reinitialize(layer, seed=seed * 1000 + 10 * i + j)
        done.append(block[0].name)
        yield list(done)


def copy_of(model: keras.Model) -> keras.Model:
    """A model of the same architecture with the same weights, sharing no variables with ``model``."""
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    return twin


# ------------------------------------------------------------------------------------------------------ similarity
def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) Spearman rank correlation of the pixels of paired maps (N, H, W): the Pearson correlation of their
    ranks, ties at their mean rank (as scipy.stats.spearmanr). 0 where either map is constant."""
    ra = stats.rankdata(a.reshape(len(a), -1), axis=1)
    rb = stats.rankdata(b.reshape(len(b), -1), axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    denominator = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    return np.divide((ra * rb).sum(1), denominator, out=np.zeros(len(a)), where=denominator > 0)


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) structural similarity of paired maps in [0, 1] (N, H, W), scikit-image's defaults (7x7 window)."""
    from skimage.metrics import structural_similarity

    return np.array([structural_similarity(x, y, data_range=1.0) for x, y in zip(a, b, strict=True)])


def similarity(maps: np.ndarray, signed: np.ndarray, maps_b: np.ndarray, signed_b: np.ndarray) -> dict:
    """Mean similarity of two explanations of the same images: the maps (N, H, W) in [0, 1] as the method gives
    them, and its signed maps (before its ReLU or absolute value), for each."""
    return {
        "spearman": float(spearman(signed, signed_b).mean()),
        "spearman_abs": float(spearman(np.abs(signed), np.abs(signed_b)).mean()),
        "ssim": float(ssim(maps, maps_b).mean()),
    }


# ---------------------------------------------------------------------------------------------- the checks, run
def _explained(model, method: str, images: np.ndarray, targets: np.ndarray):
    """(maps (N, H, W) in [0, 1], signed maps (N, H, W)) of ``method`` on ``model``."""

    result = maps.get_method(model, method).explain(images, targets, signed=True)
    return result.maps, result.signed


def _gt_known(model, method, maps, test, val, segmented: bool) -> dict:
    """GT-known localization of the method's true-class ``maps`` of ``test`` (images, labels, boxes, masks) at the
    threshold chosen on its maps of ``val``, with that threshold; with ``segmented``, also that of the segmentation
    the maps seed (:mod:`cam_mnist.maps.segmentation`, its thresholds chosen again on ``val``)."""

    val_maps = _explained(model, method, val[0], val[1])[0]
    tau = localization.choose_threshold(val_maps, val[2])
    out = {"gt_known": float((bx.iou(bx.boxes_from_maps(maps, tau), test[2]) >= bx.IOU_CORRECT).mean()), "tau": tau}
    if segmented:
        found = segmentation.segment(test[0], maps, **segmentation.choose(val[0], val_maps, val[3]))
        out["gt_known_segmented"] = float((bx.iou(bx.tight_boxes(found), test[2]) >= bx.IOU_CORRECT).mean())
    return out


def model_randomization(model, methods: dict[str, int], test, val, *, segmented=(), seed: int = 0, log=print) -> dict:
    """The cascading model-parameter randomization test for every method, on a copy of ``model``.

    Args:
        methods: {method: images}: how many of the test and validation images each method is checked on.
        test, val: (images (N, H, W, C), labels (N,), boxes (N, 4), masks (N, H, W)) of test and validation images.
        segmented: the methods whose segmentation (:mod:`cam_mnist.maps.segmentation`) is checked too.

    Returns {method: [stage, ...]}, each stage a dict: ``randomized`` (the blocks re-initialised so far, the top
    first; none for the trained model), the maps' similarity to the trained model's (:func:`similarity`) and the
    GT-known localization left (tau chosen again on the randomized model's validation maps), of the segmentation
    too (``gt_known_segmented``) for the ``segmented`` methods.
    """
    head = lambda split, n: tuple(a[:n] for a in split)  # noqa: E731
    out, copy = {}, copy_of(model)
    for method, n in methods.items():  # one method at a time, through every stage: its graphs alone in memory
        reference = _explained(model, method, *head(test, n)[:2])
        left = _gt_known(model, method, reference[0], head(test, n), head(val, n), method in segmented)
        out[method] = [{"randomized": [], **similarity(*reference, *reference), **left}]
        copy.set_weights(model.get_weights())  # the cascade's seeds are fixed: every method sees the same stages
        for done in cascade(copy, seed):
            randomized = _explained(copy, method, *head(test, n)[:2])
            left = _gt_known(copy, method, randomized[0], head(test, n), head(val, n), method in segmented)
            out[method].append({"randomized": done, **similarity(*reference, *randomized), **left})
        maps.forget(model, method), maps.forget(copy, method)  # its graphs: not every method's at once
        release_freed_memory()
        log(
            f"  {method}: Spearman with the trained maps by stage "
            + ", ".join(f"{s['spearman_abs']:.2f}" for s in out[method][1:])
        )
    return out


def data_randomization(model, random_model, methods: dict[str, int], test, val) -> dict[str, dict]:
    """{method: the similarity of its maps on ``model`` and on ``random_model`` (the same network trained on
    permuted labels), and the GT-known localization left on the latter}."""
    out = {}
    for method, n in methods.items():
        images, labels = test[0][:n], test[1][:n]
        ours, theirs = _explained(model, method, images, labels), _explained(random_model, method, images, labels)
        left = _gt_known(random_model, method, theirs[0], tuple(a[:n] for a in test), tuple(a[:n] for a in val), False)
        out[method] = {**similarity(*ours, *theirs), **left, "images": n}
    return out
