"""cam_mnist: class activation maps (Zhou et al. 2016, arXiv 1512.04150) on cluttered MNIST with Keras 3.

The library works on arrays and models: :mod:`cam_mnist.data` (cluttered MNIST with ground truth),
:mod:`cam_mnist.model` (the CAM network), :mod:`cam_mnist.cams` (the CAM family, :func:`explain`).
The command line is ``python -m cam_mnist``.
"""


def explain(model, images, method="gradcam", targets="predicted", layer=None, **options):
    """Explanation maps (N, H, W) in [0, 1]; see :func:`cam_mnist.cams.explain` for ``top_k``, ``raw`` and
    ``return_targets`` (imported lazily: TensorFlow)."""
    from cam_mnist.cams import explain as _explain

    return _explain(model, images, method=method, targets=targets, layer=layer, **options)


__version__ = "0.1.0"
__all__ = ["explain", "__version__"]
