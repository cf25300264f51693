"""Turning a user's picture into what a model takes. Arrays in, arrays out (reading files is the CLI's job)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from cam_mnist.core.errors import UserError


def to_model_input(
    picture: Image.Image, size: tuple[int, int], channels: int, fit: str = "resize", invert: str = "auto"
) -> tuple[np.ndarray, list[str]]:
    """A PIL picture -> (H, W, C) float32 in [0, 1] for a model taking ``size`` (H, W) and ``channels``.

    fit: "resize" stretches to the model's size; "canvas" keeps the aspect ratio, shrinks the picture only if it
    is larger than the canvas, and centres it on a black canvas (cluttered MNIST puts a 28x28 digit on 100x100).
    invert: "yes", "no", or "auto" (invert when the picture is mostly bright, i.e. dark ink on light paper,
    because MNIST digits are light on black). Returns the array and notes on what was done.
    """
    notes = []
    picture = picture.convert("L" if channels == 1 else "RGB")
    h, w = size
    width, height = picture.size
    if fit == "resize":
        scale_to = (w, h)
    elif fit == "canvas":  # shrink (never enlarge) to fit, keeping the aspect ratio
        scale = min(1.0, w / width, h / height)
        scale_to = (max(1, round(width * scale)), max(1, round(height * scale)))
    else:
        raise UserError(f"fit must be 'resize' or 'canvas', got {fit!r}")
    if scale_to != (width, height):
        picture = picture.resize(scale_to, Image.BILINEAR)
        notes.append(f"resized {width}x{height} -> {scale_to[0]}x{scale_to[1]}")
    array = np.asarray(picture, np.float32) / 255
    if invert == "yes" or (invert == "auto" and array.mean() > 0.5):
        array = 1 - array  # before padding, so the canvas stays black
        notes.append("inverted (dark on light)")
    if array.shape[:2] != (h, w):
        canvas = np.zeros((h, w, *array.shape[2:]), np.float32)
        top, left = (h - array.shape[0]) // 2, (w - array.shape[1]) // 2
        canvas[top : top + array.shape[0], left : left + array.shape[1]] = array
        array = canvas
        notes.append(f"centred on a {w}x{h} black canvas")
    return (array[..., None] if channels == 1 else array).astype(np.float32), notes
