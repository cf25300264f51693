""":func:`explain`: any method of the family (one pipeline, :mod:`cam_mnist.maps.base`, one override per method) on
any Keras model. :data:`METHODS` maps each name of the registry (:mod:`cam_mnist.maps.registry`) to its class.
"""

from __future__ import annotations

import weakref

import keras
import numpy as np

from cam_mnist.core.errors import UserError
from cam_mnist.core.resize import bilinear_resize
from cam_mnist.maps import registry
from cam_mnist.maps.base import BaseCAM, Explanation
from cam_mnist.maps.fullgrad import FullGrad
from cam_mnist.maps.graph import FlatGraph
from cam_mnist.maps.methods import (
    CAM,
    AblationCAM,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from cam_mnist.maps.pixels import RISE, GuidedBackprop, GuidedGradCAM, IntegratedGradients, Occlusion, SmoothGrad
from cam_mnist.maps.variants import FEM, KPCACAM, EigenGradCAM, FinerCAM, GradCAMElementWise, ShapleyCAM

METHODS: dict[str, type[BaseCAM]] = {name: info.load() for name, info in registry.METHODS.items()}


# One method object per (model, method, layer, options): its traced graph is reused, so a second call is fast.
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def get_method(model, method: str = "gradcam", layer=None, **options) -> BaseCAM:
    """The method object ``method`` bound to ``model`` (cached per model, layer and options). ``layer``: a name, a
    nested layer's path (``"mobilenetv2_1.00_96/block_13_expand_relu"``) or a layer object; default the last 4-D
    layer, searched through nested models."""
    registry.info(method)  # refuses an unknown name, listing the known ones
    per_model = _CACHE.setdefault(model, {})
    key = (method, layer, tuple(sorted(options.items())))
    if key not in per_model:
        per_model[key] = METHODS[method](model, layer, **options)
    return per_model[key]


def forget(model, method: str) -> None:
    """Drop ``model``'s cached ``method`` objects and so their traced graphs: for a caller done with a method
    (``localize`` runs every method in turn, each graph holding tens of MB). The next call traces it again."""
    per_model = _CACHE.get(model, {})
    for key in [k for k in per_model if k[0] == method]:
        del per_model[key]


def explain(
    model,
    images,
    method: str = "gradcam",
    targets="predicted",
    layer=None,
    *,
    top_k: int | None = None,
    raw: bool = False,
    return_targets: bool = False,
    **options,
):
    """Explanation maps of ``model`` for ``images`` (N, H, W[, C]): (N, H, W) float32 in [0, 1].

    Args:
        method: a name of the registry (``python -m cam_mnist methods`` lists them with their papers).
        targets: "predicted", one class index for every image, an array of N class indices, or a function of the
            model's output giving one score per image (:mod:`cam_mnist.maps.targets`: a segmentation's region, a
            regression value, a detector's box, ...).
        layer: the layer to explain: a name, a nested layer's path (``"resnet50/conv5_block3_out"``), a path into
            a composite layer (``"vit_encoder/transformer_block_2/ln_1"``) or the layer object; default: the last
            conv layer whose map has more than one cell, or, for a vision transformer, the input of its last
            attention (:func:`candidate_layers` lists them); a list of layers: their maps averaged, as
            pytorch-grad-cam averages its ``target_layers``.
        top_k: instead of ``targets``, explain each image's k most probable classes: maps (N, k, H, W), and the
            targets (with ``return_targets``) are (N, k), most probable first.
        raw: also return the un-normalised maps at the layer's resolution.
        return_targets: also return the classes explained (the predicted ones resolved).
        options: ``use_softmax`` (explain probabilities, not logits), ``batch_size``, ``smooth`` (the mean map
            over the image shifted by this many pixels each way, shifted back), occlusion's ``patch`` / ``stride``
            / ``baseline``, smoothgrad's ``samples`` / ``sigma`` / ``seed``, integrated-gradients' ``steps`` /
            ``baseline``, rise's ``masks`` / ``cells`` / ``keep`` / ``seed``; ``output`` (the output of a model
            with several, by name or index), ``reshape`` (a layer's output to a (B, h, w, K) grid, where the layout
            of a transformer's tokens cannot be inferred); ``eigen_smooth`` and ``aug_smooth`` as pytorch-grad-cam's
            (:class:`cam_mnist.maps.base.BaseCAM`); finercam's ``alpha`` / ``comparisons``, fem's ``k``, kpcacam's
            ``gamma``.

    Returns:
        ``maps``; with ``raw`` and/or ``return_targets``, the tuple ``(maps[, raw_maps][, targets])``.

    References: each method's class cites its paper and equation; :func:`cam_mnist.maps.registry.methods_table`
    lists them.
    """
    if "input_shape" not in options and _takes_any_size(model):  # bind the explainer to these images' size
        options["input_shape"] = (*np.shape(images)[1:3], model.inputs[0].shape[-1])
    if callable(targets):  # a function of the output: the explainer's one score, for every image
        options["target"], targets = targets, 0
    layers = list(layer) if isinstance(layer, list | tuple) else [layer]
    if not layers:
        raise UserError("layer= is an empty list: give a layer, or several to average their maps")
    explainers = [get_method(model, method, one, **options) for one in layers]
    explainer = explainers[0]
    if top_k is None:
        result = _explain_layers(explainers, images, targets)
    else:
        images = explainer._check_images(images)
        if not 0 < top_k <= explainer.num_classes:
            raise UserError(f"top_k must be in 1..{explainer.num_classes}, got {top_k}")
        _, scores = explainer.head.forward(images)
        classes = np.argsort(-keras.ops.convert_to_numpy(scores), axis=1)[:, :top_k]  # (N, k), most probable first
        flat = _explain_layers(explainers, np.repeat(images, top_k, axis=0), classes.reshape(-1))
        result = Explanation(*(a if a is None else a.reshape(len(images), top_k, *a.shape[1:]) for a in flat))
    extra = [result.raw] * raw + [result.targets] * return_targets
    return (result.maps, *extra) if extra else result.maps


def _explain_layers(explainers: list[BaseCAM], images, targets) -> Explanation:
    """One layer's explanation; or several layers' maps averaged, as pytorch-grad-cam averages its
    ``target_layers``: each layer's raw map min-max normalised at its own resolution, upsampled to the image, the
    mean normalised again (with ``smooth`` / ``aug_smooth``, each layer's smoothed map). ``raw`` is then the mean,
    at the image's size: the layers' grids differ."""
    first = explainers[0].explain(images, targets)
    if len(explainers) == 1:
        return first
    per_layer = [first] + [e.explain(images, first.targets) for e in explainers[1:]]  # the classes of the first
    view, size = explainers[0].view, explainers[0].input_shape[:2]
    smoothed = explainers[0].smooth or explainers[0].aug_smooth
    maps = [e.maps if smoothed else view.to_input(bilinear_resize(_minmax(e.raw), size)) for e in per_layer]
    mean = np.mean(maps, axis=0)
    return Explanation(_minmax(mean), mean, first.targets)


def _minmax(maps: np.ndarray) -> np.ndarray:
    """Each map (N, ...) min-max normalised to [0, 1]; a constant map becomes zeros."""
    axes = tuple(range(1, maps.ndim))
    lo, hi = maps.min(axis=axes, keepdims=True), maps.max(axis=axes, keepdims=True)
    return np.divide(maps - lo, hi - lo, out=np.zeros_like(maps, dtype=np.float32), where=hi > lo)


def _takes_any_size(model) -> bool:
    inputs = getattr(model, "inputs", None) if isinstance(model, keras.Model) else None
    return bool(inputs) and None in tuple(inputs[0].shape[1:3])


def candidate_layers(model, input_shape: tuple | None = None) -> list[tuple[str, str, tuple]]:
    """(path, layer type, output shape) of every layer a map can be made at (a conv layer's 4-D output, or a
    transformer's tokens), nested models and composite layers searched, in the order the model runs them.
    ``input_shape``: for a model that takes any size (needed to look inside composite layers)."""
    graph = FlatGraph.of(model, input_shape)
    shape = _known_shape(graph, input_shape)
    return [(c.path, type(c.layer).__name__, c.shape) for c in graph.candidates(shape)]


def default_layer(model, input_shape: tuple | None = None) -> str:
    """The path of the layer a map is made at when none is named (:meth:`FlatGraph.default_layer`)."""
    graph = FlatGraph.of(model, input_shape)
    return graph.default_layer(_known_shape(graph, input_shape)).path


def _known_shape(graph: FlatGraph, input_shape: tuple | None) -> tuple | None:
    shape = tuple(input_shape or graph.input.shape[1:])
    return None if None in shape else shape


__all__ = [
    "BaseCAM",
    "CAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "LayerCAM",
    "HiResCAM",
    "XGradCAM",
    "EigenCAM",
    "AblationCAM",
    "ScoreCAM",
    "GuidedBackprop",
    "GuidedGradCAM",
    "Occlusion",
    "SmoothGrad",
    "IntegratedGradients",
    "RISE",
    "GradCAMElementWise",
    "EigenGradCAM",
    "ShapleyCAM",
    "FinerCAM",
    "FEM",
    "KPCACAM",
    "FullGrad",
    "METHODS",
    "Explanation",
    "candidate_layers",
    "default_layer",
    "explain",
    "forget",
    "get_method",
]
