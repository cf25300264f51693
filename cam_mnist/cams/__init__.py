"""The CAM family: one pipeline (:mod:`cam_mnist.cams.base`), one override per method, and :func:`explain`."""

from __future__ import annotations

import weakref

import numpy as np

from cam_mnist.cams.base import BaseCAM
from cam_mnist.cams.methods import CAM, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM
from cam_mnist.cams.pixels import GuidedBackprop, GuidedGradCAM, Occlusion

METHODS: dict[str, type[BaseCAM]] = {
    m.name: m for m in (CAM, GradCAM, GradCAMPlusPlus, ScoreCAM, LayerCAM, GuidedBackprop, GuidedGradCAM, Occlusion)
}

# One method object per (model, method, layer, options): its traced graph is reused, so a second call is fast.
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def get_method(model, method: str = "gradcam", layer: str | None = None, **options) -> BaseCAM:
    """The method object ``method`` bound to ``model`` (cached per model and options)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    per_model = _CACHE.setdefault(model, {})
    key = (method, layer, tuple(sorted(options.items())))
    if key not in per_model:
        per_model[key] = METHODS[method](model, layer, **options)
    return per_model[key]


def explain(
    model,
    images,
    method: str = "gradcam",
    targets="predicted",
    layer: str | None = None,
    top_k: int | None = None,
    raw: bool = False,
    **options,
):
    """Explanation maps of ``model`` for ``images`` (N, H, W[, C]): (N, H, W) float32 in [0, 1].

    Args:
        method: one of ``cam``, ``gradcam``, ``gradcam++``, ``scorecam``, ``layercam``, ``guided-backprop``,
            ``guided-gradcam``, ``occlusion``.
        targets: "predicted", one class index for every image, or an array of N class indices.
        layer: the 4-D layer to explain; default: the last 4-D layer of the model.
        top_k: instead of ``targets``, explain each image's k most probable classes: returns (N, k, H, W),
            and the classes are in ``get_method(...).last_targets`` reshaped to (N, k).
        raw: also return the un-normalised maps at the layer's resolution.
        options: ``use_softmax`` (explain probabilities, not logits), ``batch_size``, occlusion's ``patch`` /
            ``stride`` / ``baseline``.

    References:
        Zhou et al. 2016, arXiv 1512.04150 (CAM); Selvaraju et al. 2017, arXiv 1610.02391 (Grad-CAM);
        Chattopadhay et al. 2018, arXiv 1710.11063 (Grad-CAM++); Wang et al. 2020, arXiv 1910.01279 (Score-CAM);
        Jiang et al. 2021, IEEE TIP (Layer-CAM); Springenberg et al. 2015, arXiv 1412.6806 (guided backprop);
        Zeiler & Fergus 2014, arXiv 1311.2901 (occlusion).
    """
    explainer = get_method(model, method, layer, **options)
    if top_k is None:
        return explainer(images, targets, raw=raw)
    images = explainer._check_images(images)
    if not 0 < top_k <= explainer.num_classes:
        raise ValueError(f"top_k must be in 1..{explainer.num_classes}, got {top_k}")
    _, scores = explainer.head.forward(images)
    classes = np.argsort(-np.asarray(scores), axis=1)[:, :top_k]  # (N, k), most probable first
    result = explainer(np.repeat(images, top_k, axis=0), classes.reshape(-1), raw=raw)
    n = len(images)
    reshape = lambda a: a.reshape(n, top_k, *a.shape[1:])  # noqa: E731
    return tuple(map(reshape, result)) if raw else reshape(result)


__all__ = [
    "BaseCAM",
    "CAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "ScoreCAM",
    "LayerCAM",
    "GuidedBackprop",
    "GuidedGradCAM",
    "Occlusion",
    "METHODS",
    "explain",
    "get_method",
]
