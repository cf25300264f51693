"""cam_mnist: class activation maps (Zhou et al. 2016, arXiv 1512.04150) on cluttered MNIST with Keras 3.

The subpackages are the pipeline, each importing only those before it (``tests/test_package.py`` checks):
:mod:`cam_mnist.core` (errors, files, boxes, tables) → :mod:`cam_mnist.config` → :mod:`cam_mnist.data`
(cluttered MNIST with ground truth) → :mod:`cam_mnist.model` (the CAM network) → :mod:`cam_mnist.maps` (the CAM
family, :func:`explain`, :func:`segment`) → :mod:`cam_mnist.scoring` → :mod:`cam_mnist.viz` →
:mod:`cam_mnist.train` → :mod:`cam_mnist.reports` → :mod:`cam_mnist.commands` (``python -m cam_mnist``).

Names are loaded on first use (PEP 562), so importing the package, or running a command that needs no model,
does not import TensorFlow.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

from cam_mnist.core.errors import missing_backend

__version__ = "0.1.0"

# The public names, and the module each one lives in: loaded when first asked for.
_LAZY = {
    "explain": "cam_mnist.maps",
    "candidate_layers": "cam_mnist.maps",
    "segment": "cam_mnist.maps.segmentation",
    "factorize": "cam_mnist.maps.factorization",
    "CAMCallback": "cam_mnist.train.callbacks",
}
__all__ = ["explain", "segment", "factorize", "candidate_layers", "CAMCallback", "__version__"]

# Where the modules of the flat layout moved, so that code written against it keeps importing them.
MOVED = {
    "cam_mnist.cams": "cam_mnist.maps",
    "cam_mnist.registry": "cam_mnist.maps.registry",
    "cam_mnist.segmentation": "cam_mnist.maps.segmentation",
    "cam_mnist.callbacks": "cam_mnist.train.callbacks",
    "cam_mnist.cli": "cam_mnist.commands.main",
    "cam_mnist.evaluate": "cam_mnist.reports.evaluate",
    "cam_mnist.localization": "cam_mnist.scoring.localization",
    "cam_mnist.sanity": "cam_mnist.scoring.sanity",
    "cam_mnist.boxes": "cam_mnist.core.boxes",
    "cam_mnist.errors": "cam_mnist.core.errors",
    "cam_mnist.images": "cam_mnist.data.images",
    "cam_mnist.mnist": "cam_mnist.data.mnist",
}


def __getattr__(name: str):
    if name in _LAZY:
        try:
            return getattr(importlib.import_module(_LAZY[name]), name)
        except ModuleNotFoundError as e:  # KERAS_BACKEND names a backend that is not installed: say what to install
            if missing_backend(e) is None:
                raise
            raise ImportError(missing_backend(e)) from e
    raise AttributeError(f"module 'cam_mnist' has no attribute {name!r}")


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``cam_mnist.maps`` and the other old paths of :data:`MOVED` as the modules they moved to."""

    def find_spec(self, fullname, path=None, target=None):
        moved = next((new for old, new in MOVED.items() if fullname == old or fullname.startswith(old + ".")), None)
        if moved is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        old = next(o for o in MOVED if spec.name == o or spec.name.startswith(o + "."))
        return importlib.import_module(MOVED[old] + spec.name[len(old) :])

    def exec_module(self, module):
        pass  # the module it stands for is already executed


sys.meta_path.append(_MovedModules())
