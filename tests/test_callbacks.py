"""CAMCallback on a tiny Keras model trained with plain ``model.fit``: pictures at the right steps, maps that follow
the weights, training untouched, and a clear refusal of a model it cannot explain."""

import json

import keras
import numpy as np
import pytest

from cam_mnist.core.errors import UserError
from cam_mnist.train.callbacks import CAMCallback


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((20, 20, 1))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="features")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    return model


@pytest.fixture(scope="module")
def blobs():
    """64 images of one bright square on noise, its class by where it sits (left, middle, right): a task a tiny
    model learns in a few updates, with the square's box as ground truth."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 0.2, (64, 20, 20, 1)).astype(np.float32)
    labels, boxes = rng.integers(0, 3, 64), np.zeros((64, 4), int)
    for i, c in enumerate(labels):
        y, x = rng.integers(0, 15), 1 + 6 * c
        images[i, y : y + 5, x : x + 5] = 1.0
        boxes[i] = (y, x, y + 5, x + 5)
    return images, labels, boxes


def _fit(model, blobs, callbacks=(), epochs=2):
    images, labels, _ = blobs
    model.fit(images, labels, batch_size=16, epochs=epochs, shuffle=False, verbose=0, callbacks=list(callbacks))


def test_pictures_at_every_n_batches_and_maps_that_follow_the_weights(blobs, tmp_path):
    images, labels, boxes = blobs
    model = _model()
    cam = CAMCallback(images[:4], labels[:4], boxes[:4], every_n_batches=3, folder=tmp_path / "cams")
    _fit(model, blobs, [cam])  # 2 epochs of 4 batches: updates 1..8
    assert sorted(cam.maps) == [0, 3, 6]  # before training, then every third update
    for i in range(4):
        written = sorted(p.name for p in (tmp_path / "cams" / f"img_{i:02d}").glob("step_*.png"))
        assert written == ["step_0000000.png", "step_0000003.png", "step_0000006.png"]
    assert (tmp_path / "cams" / "img_00" / "evolution.gif").exists() and (tmp_path / "cams" / "index.html").exists()
    record = json.loads((tmp_path / "cams" / "grid" / "step_0000006.json").read_text())
    assert [t["name"] for t in record["images"][0]] == ["true", "pred"] and record["images"][0][0]["iou"] is not None

    # The maps are the method's maps of the weights at that step: those of update 8 recomputed from the model.
    from cam_mnist.maps import explain

    assert not np.allclose(cam.maps[0], cam.maps[6], atol=0.05)  # the weights moved, and the maps with them
    expected = explain(model, images[:4], "gradcam", labels[:4])  # after 8 updates
    cam_again = CAMCallback(images[:4], labels[:4], every_n_batches=100, folder=tmp_path / "again")
    _fit(model, blobs, [cam_again], epochs=1)  # a second fit continues the count at update 8
    assert sorted(cam_again.maps) == [8]
    np.testing.assert_allclose(cam_again.maps[8], expected, atol=1e-6)


@pytest.mark.parametrize("nested", [False, True])
def test_guided_backprop_maps_change_as_fit_trains(blobs, tmp_path, nested):
    # The guided methods once kept the weights of their first call: every picture showed the untrained model. Each
    # recorded map must be the map of the weights at its step: checked at the last step against a fresh model.
    from cam_mnist.maps import explain

    images, labels, _ = blobs
    model = _model(seed=1)
    if nested:  # the same network inside a Sequential, as a transfer-learning recipe nests its base
        model = keras.Sequential([keras.Input((20, 20, 1)), model])
        model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    cam = CAMCallback(images[:4], labels[:4], method="guided-backprop", every_n_batches=4, folder=tmp_path / "g")
    _fit(model, blobs, [cam])
    assert sorted(cam.maps) == [0, 4, 8]
    assert not np.allclose(cam.maps[0], cam.maps[4], atol=0.05) and not np.allclose(cam.maps[4], cam.maps[8], atol=0.05)
    fresh = _model()  # another object with the trained weights: no explainer of it was ever made
    fresh.set_weights(model.get_weights())
    np.testing.assert_allclose(cam.maps[8], explain(fresh, images[:4], "guided-backprop", labels[:4]), atol=1e-5)


def test_per_epoch_pictures_go_to_tensorboard(blobs, tmp_path):
    from cam_mnist.train.summaries import read_events

    images, _, _ = blobs
    cam = CAMCallback(images[:3], method="cam", tensorboard=tmp_path / "tb")  # no labels: the predicted class
    _fit(_model(), blobs, [cam], epochs=3)
    assert sorted(cam.maps) == [0, 4, 8, 12]  # the start and the end of each epoch of 4 updates
    events = read_events(tmp_path / "tb")
    assert [s for s, _ in events["cam/cam"]] == [0, 4, 8, 12]
    assert all(png.startswith(b"\x89PNG") for _, png in events["cam/cam"])


def test_the_callback_leaves_training_untouched(blobs, tmp_path):
    plain, watched = _model(seed=1), _model(seed=1)
    _fit(plain, blobs)
    _fit(watched, blobs, [CAMCallback(blobs[0][:4], every_n_batches=1, folder=tmp_path / "cams", method="gradcam++")])
    for a, b in zip(plain.get_weights(), watched.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_model_without_a_4d_layer_is_refused_at_train_begin(blobs, tmp_path):
    inputs = keras.Input((20, 20, 1))
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs, name="flat")
    model.compile("adam", "sparse_categorical_crossentropy")
    cam = CAMCallback(blobs[0][:2], folder=tmp_path / "cams")
    with pytest.raises(UserError, match="no layer with a 4-D"):
        _fit(model, blobs, [cam])
    assert not (tmp_path / "cams").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "nope", "folder": "x"}, "unknown method"),
        ({}, "somewhere to write"),
        ({"folder": "x", "every_n_batches": 0}, "every_n_batches"),
        ({"folder": "x", "labels": [1, 2, 3]}, "labels must have one entry per image"),
    ],
)
def test_bad_arguments_are_refused_at_once(blobs, kwargs, message):
    with pytest.raises(UserError, match=message):
        CAMCallback(blobs[0][:2], **kwargs)
