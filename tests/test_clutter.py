"""Cluttered-MNIST generator invariants on real MNIST digits."""

import dataclasses

import numpy as np
import pytest

from cam_mnist.config import DataConfig
from cam_mnist.data import clutter
from cam_mnist.data import splits as data
from cam_mnist.data.mnist import Digits

# Plain training images on the whole canvas unless a test hides or shrinks it.
SMALL = DataConfig(canvas=60, distractors=8, hide_patch=0, small_canvas=0, small_epochs=0)


@pytest.fixture(scope="module")
def test_split(digits):
    return data.held_out(digits, DataConfig(), "test")


def test_shapes_and_pixel_range(test_split):
    s = test_split
    assert s.images.shape == (10_000, 100, 100) and s.images.dtype == np.uint8
    assert s.labels.shape == (10_000,) and s.boxes.shape == (10_000, 4) and s.positions.shape == (10_000, 2)
    assert s.masks.shape == (10_000, 100, 100) and s.masks.dtype == bool
    assert s.positions.min() >= 0 and s.positions.max() <= 100 - 28
    f = s.float_images(slice(0, 10))
    assert f.shape == (10, 100, 100, 1) and f.dtype == np.float32 and 0 <= f.min() and f.max() <= 1


def test_one_test_image_per_test_digit(test_split, digits):
    np.testing.assert_array_equal(test_split.source_index, np.arange(10_000))
    np.testing.assert_array_equal(test_split.labels, digits["test"].labels)
    assert test_split.source_split == "test"


def test_digit_pixels_present_at_recorded_position(test_split, digits):
    # Clutter is added and clipped, never subtracted: every image pixel is >= the digit pixel placed there.
    for i in range(0, 10_000, 97):
        y, x = test_split.positions[i]
        window = test_split.images[i, y : y + 28, x : x + 28]
        assert (window >= digits["test"].images[i]).all()


def test_boxes_are_tight_around_masks(test_split):
    m = test_split.masks
    rows, cols = m.any(2), m.any(1)  # (N, H), (N, W)
    y0, x0 = rows.argmax(1), cols.argmax(1)
    y1, x1 = 100 - rows[:, ::-1].argmax(1), 100 - cols[:, ::-1].argmax(1)
    np.testing.assert_array_equal(test_split.boxes, np.stack([y0, x0, y1, x1], 1))
    # and the mask is the digit's own nonzero pixels, so it lies inside the digit's 28x28 square
    y, x = test_split.positions.T
    assert (test_split.boxes[:, 0] >= y).all() and (test_split.boxes[:, 2] <= y + 28).all()
    assert (test_split.boxes[:, 1] >= x).all() and (test_split.boxes[:, 3] <= x + 28).all()


def test_digit_box_hand_made():
    digit = np.zeros((1, 28, 28), np.uint8)
    digit[0, 5:9, 10:12] = 200  # rows 5..8, cols 10..11
    np.testing.assert_array_equal(clutter.digit_boxes(digit), [[5, 10, 9, 12]])


def test_clutter_is_added_and_clipped():
    pool = np.full((2, 28, 28), 200, np.uint8)
    draws = clutter.Draws(
        digit_index=np.array([[0]]),
        position=np.array([[[0, 0]]]),
        distractor_index=np.array([[1]]),
        crop_origin=np.array([[[0, 0]]]),
        distractor_position=np.array([[[20, 20]]]),
    )
    image = clutter.compose(pool, draws, canvas=40, size=8)[0]
    assert image[0, 0] == 200 and image[39, 39] == 0
    assert image[20, 20] == 255  # 200 + 200 clipped, as the reference clips to [0, 1]
    assert image[27, 27] == 255 and image[28, 28] == 0


def test_same_seed_same_bytes_other_seed_other_images(digits, tmp_path):
    a = data.held_out(digits, SMALL, "val")
    b = data.held_out(digits, SMALL, "val")
    c = data.held_out(digits, dataclasses.replace(SMALL, data_seed=1), "val")
    arrays = lambda s: data._to_arrays(s)  # noqa: E731
    assert data.content_hash(arrays(a)) == data.content_hash(arrays(b)) != data.content_hash(arrays(c))
    bytes_a = data.write_npz(tmp_path / "a.npz", arrays(a))
    bytes_b = data.write_npz(tmp_path / "b.npz", arrays(b))
    assert bytes_a == bytes_b  # the file itself, not only its arrays


def test_test_images_use_only_test_digits(digits):
    # Replace every non-test digit by zeros: if any test image drew on them (digit or clutter), it would change.
    blank = {k: Digits(np.zeros_like(v.images), v.labels) for k, v in digits.items() if k != "test"}
    a = data.held_out(digits, SMALL, "test")
    b = data.held_out({**blank, "test": digits["test"]}, SMALL, "test")
    np.testing.assert_array_equal(a.images, b.images)


def test_train_epochs_fresh_and_reproducible(digits):
    cfg = dataclasses.replace(SMALL, train_size=300)
    e0, e0_again, e1 = (data.train_epoch(digits, cfg, seed=3, epoch=e) for e in (0, 0, 1))
    np.testing.assert_array_equal(e0.images, e0_again.images)
    assert not np.array_equal(e0.images, e1.images)
    assert e0.source_split == "train" and len(set(e0.source_index.tolist())) == 300  # a shuffled pass, no repeats
    np.testing.assert_array_equal(e0.labels, digits["train"].labels[e0.source_index])


def test_two_digits_distinct_classes_no_overlap(digits):
    cfg = dataclasses.replace(SMALL, digits=2, canvas=80)
    s = data.held_out(digits, cfg, "test")
    assert s.labels.shape == (10_000, 2) and s.boxes.shape == (10_000, 2, 4) and s.masks.shape == (10_000, 2, 80, 80)
    assert (s.labels[:, 0] != s.labels[:, 1]).all()
    apart = np.abs(s.positions[:, 0] - s.positions[:, 1]) >= 28
    assert apart.any(1).all()
    assert not (s.masks[:, 0] & s.masks[:, 1]).any()
    np.testing.assert_array_equal(s.source_index[:, 0], np.arange(10_000))  # each test digit leads one image


def test_stored_split_round_trip(digits, tmp_path):
    split = data.held_out(digits, SMALL, "test")
    data.save_split(tmp_path, split, SMALL)
    loaded = data.read_split(tmp_path / "test.npz", "test")
    for field in ("images", "labels", "boxes", "positions", "masks", "source_index"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(split, field))
    (tmp_path / "test.npz").write_bytes((tmp_path / "test.npz").read_bytes()[:5000])
    with pytest.raises(data.DataError, match="corrupted split file"):
        data.read_split(tmp_path / "test.npz", "test")


def test_load_split_api(data_dir):
    s = data.load_split("test", data_dir=data_dir)
    assert len(s) == 10_000 and s.masks.shape == (10_000, 100, 100)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        data.load_split("dev", data_dir=data_dir)


def test_extra_train_digits_are_the_first_validation_digits_and_leave_validation(digits):
    # Blank a part of the validation digits: training images change only if they drew on that part.
    cfg = dataclasses.replace(SMALL, train_size=3000, extra_train_digits=2000)
    epoch = data.train_epoch(digits, cfg, seed=3, epoch=0)
    np.testing.assert_array_equal(
        epoch.images, data.train_epoch(_val_blanked(digits, slice(2000, None)), cfg, 3, 0).images
    )
    assert not np.array_equal(epoch.images, data.train_epoch(_val_blanked(digits, slice(2000)), cfg, 3, 0).images)
    plain = dataclasses.replace(cfg, extra_train_digits=0)  # by default training never reads a validation digit
    np.testing.assert_array_equal(
        data.train_epoch(digits, plain, 3, 0).images,
        data.train_epoch(_val_blanked(digits, slice(None)), plain, 3, 0).images,
    )
    moved = epoch.source_index >= 50_000  # indices past the train digits name validation digit index - 50k
    assert moved.sum() > 0 and (epoch.source_index < 52_000).all()
    np.testing.assert_array_equal(epoch.labels[moved], digits["val"].labels[epoch.source_index[moved] - 50_000])
    # Validation keeps the images of the other 8000 digits, unchanged and in order.
    val = data.held_out(digits, SMALL, "val")
    kept = data.held_out_of(val, cfg)
    assert len(kept) == 8000 and data.held_out_of(val, plain) is val
    for field in ("images", "labels", "boxes", "masks", "source_index"):
        np.testing.assert_array_equal(getattr(kept, field), getattr(val, field)[2000:])


def test_small_canvas_epochs_hold_the_same_digits_among_as_dense_clutter(digits):
    plain = dataclasses.replace(SMALL, train_size=300)
    small = dataclasses.replace(plain, small_canvas=40, small_epochs=1)
    e0, e0_plain, e1, e1_plain = (
        data.train_epoch(digits, c, seed=3, epoch=e, with_masks=True) for e in (0, 1) for c in (small, plain)
    )
    assert e0.images.shape == (300, 40, 40) and e0_plain.images.shape == (300, 60, 60)
    np.testing.assert_array_equal(e0.source_index, e0_plain.source_index)  # the same digits, in the same order
    assert (e0.boxes >= 0).all() and (e0.boxes[:, 2:] <= 40).all()  # each digit whole on the small canvas
    for a, b in (("images", "images"), ("labels", "labels")):  # past small_epochs, the run's own images
        np.testing.assert_array_equal(getattr(e1, a), getattr(e1_plain, b))

    def clutter_density(split):  # ink per pixel outside the digit's own pixels
        return (split.images * ~split.masks).sum() / (~split.masks).sum()

    # 8 distractors on 60x60, round(8 * (40/60)^2) = 4 on 40x40: 1.0 of the density, give or take clipping's overlaps
    assert 0.8 < clutter_density(e0) / clutter_density(e0_plain) < 1.25


def _val_blanked(digits: dict[str, Digits], index: slice) -> dict[str, Digits]:
    """``digits`` with the validation digits at ``index`` zeroed."""
    images = digits["val"].images.copy()
    images[index] = 0
    return {**digits, "val": Digits(images, digits["val"].labels)}


@pytest.mark.parametrize(
    "field, value",
    [
        ("extra_train_digits", -1),
        ("extra_train_digits", 10_000),
        ("hide_patch", -1),
        ("hide_prob", 1.0),
        ("small_canvas", 27),  # a 28x28 digit does not fit
        ("small_canvas", 100),  # not smaller than the canvas
    ],
)
def test_bad_data_settings_are_refused(field, value):
    from cam_mnist.config import RunConfig, validate

    with pytest.raises(ValueError, match=f"{field} must be"):
        epochs = {"small_epochs": 1} if field == "small_canvas" else {}  # a small canvas comes with its epochs
        validate(RunConfig.from_dict({"data": {field: value, **epochs}}))


def test_a_small_canvas_needs_its_epochs_and_room_for_the_hidden_squares():
    from cam_mnist.config import RunConfig, validate

    with pytest.raises(ValueError, match=r"small_canvas \(0\) and small_epochs \(2\) go together"):
        validate(RunConfig.from_dict({"data": {"small_canvas": 0, "small_epochs": 2}}))
    with pytest.raises(ValueError, match=r"hide_patch \(40\) must fit the small canvas \(32 pixels\)"):
        validate(RunConfig.from_dict({"data": {"small_canvas": 32, "small_epochs": 1, "hide_patch": 40}}))


def test_hide_and_seek_blanks_grid_squares_of_training_images_only(digits):
    plain = dataclasses.replace(SMALL, train_size=300)
    hidden = dataclasses.replace(plain, hide_patch=8, hide_prob=0.5)
    a, a_again, b = (data.train_epoch(digits, c, seed=3, epoch=0) for c in (hidden, hidden, plain))
    np.testing.assert_array_equal(a.images, a_again.images)  # reproducible from (seed, epoch)
    for field in ("labels", "positions", "boxes", "source_index"):  # its own stream: every other draw as before
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    blanked = (a.images == 0) & (b.images > 0)
    assert ((a.images == b.images) | blanked).all()  # pixels are kept or blanked, never changed otherwise
    share = blanked.sum() / (b.images > 0).sum()
    assert 0.4 < share < 0.6  # half of the ink, give or take
    # Blanked pixels come in whole 8x8 squares: in each image, 8 consecutive rows or columns share a pattern.
    square = clutter.hide_patches(np.full((1, 40, 40), 255, np.uint8), 8, 0.5, np.random.default_rng(0))[0] > 0
    rows = np.unique(square, axis=0)
    assert 2 <= len(rows) <= 6 and len(np.unique(square, axis=1).T) <= 6  # at most 6 distinct grid rows / columns
