"""The explanation methods, written once: name, class, paper, what each needs and how many passes it makes.

Everything that lists methods reads this table: :func:`cam_mnist.maps.explain` and ``get_method`` (the classes),
the command line's choices, ``localize`` (which methods are slow and scored on a subset), ``make bench`` and the
methods table of docs/methods.md (``python -m cam_mnist methods`` prints it). It imports no Keras, so the command
line can build its parser without it; :meth:`MethodInfo.load` imports the class when a map is made.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from cam_mnist.core.errors import UserError
from cam_mnist.core.tables import markdown_table


@dataclass(frozen=True)
class MethodInfo:
    name: str
    cls: str  # "module:Class" of its :class:`cam_mnist.maps.base.BaseCAM` subclass
    paper: str
    needs: str  # what it reads of the model beyond one forward pass
    passes: str  # model passes per map
    slow: bool = False  # many passes per map: localize and bench score it on a subset of the images
    pixel_level: bool = False  # a map at the input's resolution, not the layer's grid upsampled
    class_agnostic: bool = False  # the same map whatever the class (useless to tell two digits apart)

    def load(self) -> type:
        module, name = self.cls.split(":")
        return getattr(importlib.import_module(module), name)


_M, _P, _V = "cam_mnist.maps.methods", "cam_mnist.maps.pixels", "cam_mnist.maps.variants"
_F = "cam_mnist.maps.fullgrad"
_ROWS = [
    MethodInfo(
        "cam", f"{_M}:CAM", "Zhou et al. 2016, arXiv 1512.04150", "weights of the GAP -> linear head", "1 forward"
    ),
    MethodInfo(
        "gradcam",
        f"{_M}:GradCAM",
        "Selvaraju et al. 2017, arXiv 1610.02391",
        "gradients at the layer",
        "1 forward + 1 backward",
    ),
    MethodInfo(
        "gradcam++",
        f"{_M}:GradCAMPlusPlus",
        "Chattopadhay et al. 2018, arXiv 1710.11063",
        "gradients at the layer",
        "1 forward + 1 backward",
    ),
    MethodInfo(
        "layercam",
        f"{_M}:LayerCAM",
        "Jiang et al. 2021, IEEE TIP 30",
        "gradients at the layer",
        "1 forward + 1 backward",
    ),
    MethodInfo(
        "hirescam",
        f"{_M}:HiResCAM",
        "Draelos & Carin 2020, arXiv 2011.08891",
        "gradients at the layer",
        "1 forward + 1 backward",
    ),
    MethodInfo(
        "xgradcam",
        f"{_M}:XGradCAM",
        "Fu et al. 2020, arXiv 2008.02312",
        "gradients at the layer",
        "1 forward + 1 backward",
    ),
    MethodInfo(
        "eigencam",
        f"{_M}:EigenCAM",
        "Muhammad & Yeasin 2020, arXiv 2008.00299",
        "the layer's activations only (class-agnostic)",
        "1 forward",
        class_agnostic=True,
    ),
    MethodInfo(
        "gradcam-elementwise",
        f"{_V}:GradCAMElementWise",
        "pytorch-grad-cam (Gildenblat et al. 2021)",
        "gradients at the layer",
        "1 forward + 1 backward",
    ),
    MethodInfo(
        "eigengradcam",
        f"{_V}:EigenGradCAM",
        "pytorch-grad-cam; Muhammad & Yeasin 2020",
        "gradients at the layer",
        "1 forward + 1 backward",
    ),
    MethodInfo(
        "shapleycam",
        f"{_V}:ShapleyCAM",
        "Cai 2025, arXiv 2501.06261",
        "gradients and a Hessian-vector product at the layer",
        "1 forward + 2 backward",
    ),
    MethodInfo(
        "finercam",
        f"{_V}:FinerCAM",
        "Zhang et al. 2025, arXiv 2501.11309",
        "gradients at the layer",
        "1 forward + 1 backward",
    ),
    MethodInfo(
        "fem",
        f"{_V}:FEM",
        "Fuad et al. 2020, IPTA",
        "the layer's activations only (class-agnostic)",
        "1 forward",
        class_agnostic=True,
    ),
    MethodInfo(
        "kpcacam",
        f"{_V}:KPCACAM",
        "Karmani et al. 2024, arXiv 2410.00267",
        "the layer's activations only (class-agnostic)",
        "1 forward + an eigendecomposition of the cells' hw x hw kernel matrix",
        slow=True,  # 38 maps/s on the default's 25 x 25 map, against Grad-CAM's 1683: the eigendecomposition
        class_agnostic=True,
    ),
    MethodInfo(
        "ablationcam",
        f"{_M}:AblationCAM",
        "Desai & Ramaswamy 2020, WACV",
        "the layers after the target layer",
        "1 forward + K passes of the layers after it",
        slow=True,
    ),
    MethodInfo(
        "scorecam",
        f"{_M}:ScoreCAM",
        "Wang et al. 2020, arXiv 1910.01279",
        "forward passes only",
        "1 + K forward (one per channel)",
        slow=True,
    ),
    MethodInfo(
        "guided-backprop",
        f"{_P}:GuidedBackprop",
        "Springenberg et al. 2015, arXiv 1412.6806",
        "gradients to the input",
        "1 forward + 1 backward",
        pixel_level=True,
    ),
    MethodInfo(
        "guided-gradcam",
        f"{_P}:GuidedGradCAM",
        "Selvaraju et al. 2017, arXiv 1610.02391",
        "gradients to the input and the layer",
        "2 forward + 2 backward",
        pixel_level=True,
    ),
    MethodInfo(
        "fullgrad",
        f"{_F}:FullGrad",
        "Srinivas & Fleuret 2019, arXiv 1905.00780",
        "gradients to the input and every bias",
        "1 forward + 1 backward",
        pixel_level=True,
    ),
    MethodInfo(
        "occlusion",
        f"{_P}:Occlusion",
        "Zeiler & Fergus 2014, arXiv 1311.2901",
        "forward passes only",
        "1 + 1 forward per patch placement",
        slow=True,
        pixel_level=True,
    ),
    MethodInfo(
        "smoothgrad",
        f"{_P}:SmoothGrad",
        "Smilkov et al. 2017, arXiv 1706.03825",
        "gradients to the input",
        "16 forward + 16 backward (noisy copies)",
        slow=True,
        pixel_level=True,
    ),
    MethodInfo(
        "integrated-gradients",
        f"{_P}:IntegratedGradients",
        "Sundararajan et al. 2017, arXiv 1703.01365",
        "gradients to the input",
        "33 forward + 33 backward (path steps)",
        slow=True,
        pixel_level=True,
    ),
    MethodInfo(
        "rise",
        f"{_P}:RISE",
        "Petsiuk et al. 2018, arXiv 1806.07421",
        "forward passes only",
        "1 + 500 forward (random masks)",
        slow=True,
        pixel_level=True,
    ),
]
METHODS: dict[str, MethodInfo] = {m.name: m for m in _ROWS}


def method_names(**wanted: bool) -> list[str]:
    """Method names in registry order; ``slow=False``, ``pixel_level=True``, ``class_agnostic=False``... keep only
    those whose field has that value."""
    return [name for name, m in METHODS.items() if all(getattr(m, key) == value for key, value in wanted.items())]


def info(name: str) -> MethodInfo:
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}: choose one of {', '.join(METHODS)}")
    return METHODS[name]


def methods_table() -> str:
    """The registry as a Markdown table (docs/methods.md's)."""
    rows = [[f"`{m.name}`", m.paper, m.needs, m.passes] for m in METHODS.values()]
    return markdown_table(["method", "paper", "needs", "passes per map"], rows)
