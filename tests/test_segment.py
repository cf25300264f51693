"""The segmentation a map seeds (cam_mnist.segmentation), on hand-made images whose every pixel's answer is known."""

import numpy as np
import pytest

from cam_mnist.core import boxes as bx
from cam_mnist.maps import segmentation


@pytest.fixture
def scene():
    """One image: a thin bright stroke (the digit, with a faint edge), a clutter crop touching nothing, dark
    elsewhere; the map a blob over the stroke that also covers the crop's near corner, weaker there."""
    image = np.zeros((1, 30, 30), np.float32)
    image[0, 5:20, 10:12] = 0.9  # the stroke: 15 x 2
    image[0, 5:20, 12] = 0.03  # its faint anti-aliased edge, part of the digit
    image[0, 22:26, 16:20] = 0.8  # clutter, apart from the stroke
    digit = image[0] > 0
    digit[22:26, 16:20] = False
    yy, xx = np.mgrid[:30, :30]
    maps = np.exp(-((yy - 12) ** 2 + (xx - 12) ** 2) / (2 * 8.0**2))[None].astype(np.float32)  # wide blob
    return image, maps, digit[None]


def test_growing_from_the_maps_seeds_keeps_the_stroke_and_leaves_the_clutter(scene):
    image, maps, digit = scene
    found = segmentation.segment(image, maps, "grow", seed=0.5, region=0.0, ink=0.0)
    np.testing.assert_array_equal(found, digit)  # every stroke pixel, its faint edge too; no clutter, no dark pixel
    np.testing.assert_array_equal(bx.tight_boxes(found), bx.tight_boxes(digit))  # the 1's own box
    # A higher ink threshold drops the faint edge; seeds nowhere near the stroke find nothing.
    assert segmentation.segment(image, maps, "grow", seed=0.5, region=0.0, ink=0.05).sum() == digit.sum() - 15
    far = np.zeros_like(maps)
    far[0, 28, 0] = 1.0
    assert not segmentation.segment(image, far, "grow", seed=0.5, region=0.0, ink=0.0).any()


def test_the_ink_baseline_keeps_the_clutter_its_region_covers(scene):
    image, maps, digit = scene
    found = segmentation.segment(image, maps, "ink", region=0.2, ink=0.0)
    region = maps[0] > 0.2 * maps[0].max()
    np.testing.assert_array_equal(found[0], region & (image[0] > 0))
    assert found[0, 22:26, 16:20].any() and (found & digit).sum() == digit.sum()  # clutter in, as it is in reach


def test_random_walker_takes_the_seeded_stroke(scene):
    pytest.importorskip("skimage")
    image, maps, digit = scene
    found = segmentation.segment(image, maps, "random-walker", seed=0.5, region=0.05, ink=0.0)
    assert bx.mask_iou(found, digit)[0] > 0.9 and not found[0, 22:26, 16:20].any()


def test_thresholds_are_chosen_by_mask_iou_on_the_images_given(scene):
    image, maps, digit = scene
    chosen = segmentation.choose(image, maps, digit, "grow")
    assert chosen["ink"] == 0.0  # the only ink threshold that keeps the faint edge
    assert bx.mask_iou(segmentation.segment(image, maps, "grow", **chosen), digit)[0] == 1.0


def test_an_unknown_segmentation_is_refused():
    with pytest.raises(ValueError, match="unknown segmentation 'crf': choose one of grow, ink, random-walker"):
        segmentation.segment(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), "crf")


def test_the_package_level_segment_stays_the_function_once_the_module_is_imported(scene):
    # A submodule named like the package's function would replace it on import (Python binds the submodule to
    # the package's attribute): the library's module is `segmentation`, so `cam_mnist.segment` is always callable.
    import cam_mnist
    import cam_mnist.maps.segmentation  # noqa: F401  (what localize, the panel and explain import)

    image, maps, digit = scene
    np.testing.assert_array_equal(cam_mnist.segment(image, maps, "grow"), segmentation.segment(image, maps, "grow"))
