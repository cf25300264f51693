"""Overlays show the image itself: checked pixel by pixel against the input, for grey and colour images."""

import numpy as np
import pytest

from cam_mnist.viz import plotting


@pytest.mark.parametrize("shape", [(6, 5), (6, 5, 1)])
def test_grey_overlay_without_heatmap_is_the_image(shape):
    image = np.arange(30, dtype=np.uint8).reshape(shape) * 8
    out = plotting.overlay(image, np.zeros((6, 5)), alpha=0.0, scale=1)
    assert out.shape == (6, 5, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], image.reshape(6, 5))


def test_colour_overlay_keeps_colours_and_scales():
    image = np.zeros((4, 4, 3), np.float32)
    image[..., 2] = 1.0  # blue
    out = plotting.overlay(image, np.zeros((4, 4)), alpha=0.0, scale=2)
    assert out.shape == (8, 8, 3) and (out[..., 2] == 255).all() and (out[..., :2] == 0).all()


def test_box_is_drawn_on_its_edges_only():
    out = plotting.overlay(np.zeros((10, 10), np.uint8), np.zeros((10, 10)), box=(2, 3, 6, 8), alpha=0.0, scale=1)
    white = (out == 255).all(-1)
    assert white[2, 3:8].all() and white[5, 3:8].all() and white[2:6, 3].all() and white[2:6, 7].all()
    assert not white[3:5, 4:7].any() and white.sum() == 2 * 5 + 2 * 2
