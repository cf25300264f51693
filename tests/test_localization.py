"""Localization metrics on hand-made maps with known answers, and faithfulness on a tiny model."""

import keras
import numpy as np
import pytest
from keras import layers

from cam_mnist import boxes as bx
from cam_mnist import localization as loc


def test_iou_known_values():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 0, 0], [0, 0, 4, 4]])
    b = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [0, 0, 0, 0], [4, 4, 8, 8]])
    np.testing.assert_allclose(bx.iou(a, b), [1.0, 25 / 175, 0.0, 0.0])


def test_paper_protocol_keeps_largest_component_above_20_percent():
    m = np.zeros((1, 20, 20), np.float32)
    m[0, 2:5, 2:5] = 1.0  # small, strongest blob
    m[0, 10:18, 8:16] = 0.5  # large blob above 20% of the max
    m[0, 0, 19] = 0.15  # below 20%: dropped
    np.testing.assert_array_equal(bx.boxes_from_maps(m), [[10, 8, 18, 16]])
    np.testing.assert_array_equal(bx.boxes_from_maps(m, threshold=0.6), [[2, 2, 5, 5]])  # only the peak survives


def test_diagonal_pixels_are_connected():
    m = np.zeros((1, 6, 6), np.float32)
    m[0, [0, 1, 2], [0, 1, 2]] = 1  # 8-connected diagonal: one component of 3
    m[0, 5, 5] = m[0, 5, 4] = 1  # a separate component of 2
    np.testing.assert_array_equal(bx.boxes_from_maps(m), [[0, 0, 3, 3]])


def test_zero_and_constant_maps_are_defined():
    maps = np.stack([np.zeros((8, 8), np.float32), np.full((8, 8), 0.3, np.float32)])
    np.testing.assert_array_equal(bx.boxes_from_maps(maps), [[0, 0, 0, 0], [0, 0, 8, 8]])
    masks = np.zeros((2, 8, 8), bool)
    masks[:, 0, 0] = True
    assert bx.pointing_game(maps, masks).tolist() == [True, True]  # argmax of a flat map is the first pixel
    seg = loc.segmentation_metrics(maps, masks)
    assert np.isfinite(list(seg.values())).all()


def test_pointing_game_and_tolerance():
    maps = np.zeros((2, 10, 10), np.float32)
    maps[0, 5, 5] = maps[1, 5, 8] = 1
    masks = np.zeros((2, 10, 10), bool)
    masks[:, 5, 5] = True
    assert bx.pointing_game(maps, masks).tolist() == [True, False]
    assert bx.pointing_game(maps, masks, tolerance=3).tolist() == [True, True]  # 3 px away
    assert bx.pointing_game(maps, masks, tolerance=2).tolist() == [True, False]


def test_mask_iou_synthetic():
    predicted = np.zeros((2, 4, 4), bool)
    truth = np.zeros((2, 4, 4), bool)
    predicted[0, :2], truth[0, 1:3] = True, True  # 4 shared of 12
    np.testing.assert_allclose(bx.mask_iou(predicted, truth), [4 / 12, 0.0])


def test_auc_on_known_curves():
    np.testing.assert_allclose(loc.auc(np.linspace(0, 1, 11)), 0.5)  # y = x
    np.testing.assert_allclose(loc.auc(np.ones(5)), 1.0)
    np.testing.assert_allclose(loc.auc(np.array([[1.0, 0.0, 0.0]])), [0.25])


def test_pixel_ap_perfect_and_chance():
    masks = np.zeros((1, 10, 10), bool)
    masks[0, :3] = True
    assert loc.pixel_average_precision(masks.astype(np.float32), masks) == pytest.approx(1.0)
    noise = np.random.default_rng(0).random((1, 10, 10)).astype(np.float32)
    assert loc.pixel_average_precision(noise, masks) == pytest.approx(0.3, abs=0.15)  # chance = positive rate


def test_box_metrics_counts_class_and_iou():
    truth = np.array([[2, 2, 6, 6]] * 3)
    maps = np.zeros((3, 10, 10), np.float32)
    maps[:, 2:6, 2:6] = 1
    maps[2] = 0
    maps[2, 0:2, 0:2] = 1  # wrong place
    r = loc.box_metrics(maps, np.array([True, False, True]), truth)
    assert r["top1_loc"] == pytest.approx(1 / 3)  # image 1 is boxed right but misclassified
    assert r["gt_known_loc"] == pytest.approx(2 / 3) and r["max_box_acc"] == pytest.approx(2 / 3)


def test_baselines():
    truth = np.array([[0, 0, 20, 10], [50, 50, 70, 60]])
    centre = loc.baseline_maps("centre", truth, (2, 100, 100))
    np.testing.assert_array_equal(bx.boxes_from_maps(centre), [[40, 45, 60, 55]] * 2)
    np.testing.assert_array_equal(
        bx.boxes_from_maps(loc.baseline_maps("full", truth, (2, 100, 100))), [[0, 0, 100, 100]] * 2
    )
    random = loc.baseline_maps("random", truth, (2, 100, 100))
    assert random.shape == (2, 100, 100) and 0 <= random.min() and random.max() <= 1


@pytest.fixture(scope="module")
def brightness_model():
    """p(class 1) rises with the image's mean brightness: faithfulness has known directions on it."""
    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(1, 1, use_bias=False, kernel_initializer="ones")(inputs)
    logits = layers.Dense(2, use_bias=False)(layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, layers.Softmax()(logits))
    model.layers[-2].set_weights([np.array([[-4.0, 4.0]], np.float32)])
    return lambda images: np.asarray(model(images))


def test_average_drop_and_increase(brightness_model):
    images = np.ones((2, 8, 8, 1), np.float32)
    ones, half = np.ones((2, 8, 8), np.float32), np.full((2, 8, 8), 0.5, np.float32)
    keep = loc.average_drop_increase(brightness_model, images, ones, np.array([1, 1]))
    assert keep == {"average_drop_pct": 0.0, "increase_in_confidence_pct": 0.0}
    darker = loc.average_drop_increase(brightness_model, images, half, np.array([1, 1]))
    full, dimmed = brightness_model(images)[0, 1], brightness_model(images * 0.5)[0, 1]
    assert darker["average_drop_pct"] == pytest.approx((full - dimmed) / full * 100, rel=1e-5)
    assert (
        loc.average_drop_increase(brightness_model, images, half, np.array([0, 0]))["increase_in_confidence_pct"] == 100
    )


def test_deletion_insertion_directions(brightness_model):
    images = np.zeros((1, 8, 8, 1), np.float32)
    images[0, :4] = 1  # bright top half
    good = np.zeros((1, 8, 8), np.float32)
    good[0, :4] = 1  # points at the evidence
    bad = 1 - good
    target = np.array([1])
    g = loc.deletion_insertion(brightness_model, images, good, target, steps=8, blur_sigma=1)
    b = loc.deletion_insertion(brightness_model, images, bad, target, steps=8, blur_sigma=1)
    assert g["deletion_auc"] < b["deletion_auc"] and g["insertion_auc"] > b["insertion_auc"]
