"""The maps: the registry of methods, the one pipeline they share, each method's override, the Keras graph reader,
and the segmentation a map seeds. :func:`explain` is the entry point (loaded on first use: it imports Keras)."""

import importlib

_EXPLAIN = (
    *("explain", "get_method", "forget", "candidate_layers", "default_layer", "METHODS", "Explanation", "BaseCAM"),
    *("CAM", "GradCAM", "GradCAMPlusPlus", "LayerCAM", "HiResCAM", "XGradCAM", "EigenCAM", "AblationCAM"),
    *("ScoreCAM", "GuidedBackprop", "GuidedGradCAM", "Occlusion", "SmoothGrad", "IntegratedGradients", "RISE"),
    *("GradCAMElementWise", "EigenGradCAM", "ShapleyCAM", "FinerCAM", "FEM", "KPCACAM", "FullGrad"),
)
_LAZY = dict.fromkeys(_EXPLAIN, "cam_mnist.maps.explainer")
_LAZY["segment"] = "cam_mnist.maps.segmentation"
_LAZY["factorize"] = "cam_mnist.maps.factorization"


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cam_mnist.maps' has no attribute {name!r}")
