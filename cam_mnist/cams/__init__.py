"""The CAM family: one pipeline (:mod:`cam_mnist.cams.base`), one override per method."""

from cam_mnist.cams.base import BaseCAM
from cam_mnist.cams.methods import CAM, GradCAM

METHODS = {m.name: m for m in (CAM, GradCAM)}

__all__ = ["BaseCAM", "CAM", "GradCAM", "METHODS"]
