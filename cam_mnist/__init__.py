"""cam_mnist: class activation maps (Zhou et al. 2016, arXiv 1512.04150) on cluttered MNIST with Keras 3.

The library works on arrays and models: :mod:`cam_mnist.data` (cluttered MNIST with ground truth),
:mod:`cam_mnist.model` (the CAM network), :mod:`cam_mnist.cams` (the CAM family, :func:`explain`),
:mod:`cam_mnist.segmentation` (the segmentation a map seeds), :mod:`cam_mnist.sanity` (the sanity checks).
The command line is ``python -m cam_mnist``.
"""


def explain(model, images, method="gradcam", targets="predicted", layer=None, **options):
    """Explanation maps (N, H, W) in [0, 1]; see :func:`cam_mnist.cams.explain` for ``top_k``, ``raw`` and
    ``return_targets`` (imported lazily: TensorFlow)."""
    from cam_mnist.cams import explain as _explain

    return _explain(model, images, method=method, targets=targets, layer=layer, **options)


def segment(images, maps, method="grow", **thresholds):
    """The object's pixels (N, H, W) bool that each map seeds in its image: :func:`cam_mnist.segmentation.segment`."""
    from cam_mnist.segmentation import segment as _segment

    return _segment(images, maps, method, **thresholds)


__version__ = "0.1.0"
__all__ = ["explain", "segment", "__version__"]
