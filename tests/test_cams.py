"""The CAM family on tiny models built here: exact identities, independent re-implementations, tf-keras-vis."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from cam_mnist.cams import METHODS, explain, get_method

N = 6


def _gap_model(seed=0, channels=1, classes=3, softmax_layer=True):
    """Input -> conv -> conv 'features' -> GAP -> bias-free Dense 'logits' -> Softmax: the CAM architecture."""
    keras.utils.set_random_seed(seed)
    x = inputs = keras.Input((16, 16, channels))
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(x)
    x = layers.Conv2D(6, 3, padding="same", activation="relu", name="features")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    if softmax_layer:
        x = layers.Softmax(name="probs")(layers.Dense(classes, use_bias=False, name="logits")(x))
    else:
        x = layers.Dense(classes, activation="softmax", name="head")(x)
    return keras.Model(inputs, x)


def _deep_head_model(seed=1):
    """A target layer followed by a non-linear head, so gradients vary across the map."""
    keras.utils.set_random_seed(seed)
    x = inputs = keras.Input((16, 16, 1))
    x = layers.Conv2D(5, 3, padding="same", activation="relu", name="target")(x)
    x = layers.Conv2D(7, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(4, name="logits")(x)
    return keras.Model(inputs, x)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((N, 16, 16, 1), np.float32)


@pytest.fixture(scope="module")
def model():
    return _gap_model()


def test_cam_equals_cells_times_gradcam(model, images):
    targets = np.arange(N) % 3
    _, cam = explain(model, images, "cam", targets, raw=True)
    _, grad = explain(model, images, "gradcam", targets, raw=True)
    cells = cam.shape[1] * cam.shape[2]
    assert cells == 256
    np.testing.assert_allclose(cam, cells * grad, atol=1e-5, rtol=1e-5)
    assert cam.max() > 1e-3  # not trivially zero


def test_cam_matches_numpy(model, images):
    targets = np.array([0, 1, 2, 2, 1, 0])
    _, raw = explain(model, images, "cam", targets, raw=True)
    features = np.asarray(keras.Model(model.inputs[0], model.get_layer("features").output)(images))  # (N, h, w, K)
    kernel = model.get_layer("logits").kernel.numpy()  # (K, classes)
    expected = np.maximum(np.einsum("nhwk,kn->nhw", features, kernel[:, targets]), 0)
    np.testing.assert_allclose(raw, expected, atol=1e-6)


def _tf_keras_vis(kind, model, images, targets, layer):
    pytest.importorskip("tf_keras_vis")
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.utils.scores import CategoricalScore

    tool = {"gradcam": Gradcam, "gradcam++": GradcamPlusPlus}[kind](model, clone=True)
    return np.asarray(
        tool(CategoricalScore(list(targets)), images, penultimate_layer=layer, normalize_cam=False, expand_cam=False)
    )


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_agrees_with_tf_keras_vis(method, images):
    model = _deep_head_model()  # outputs logits, so tf-keras-vis needs no model modifier
    targets = np.array([0, 1, 2, 3, 1, 2])
    _, ours = explain(model, images, method, targets, layer="target", raw=True)
    theirs = _tf_keras_vis(method, model, images, targets, "target")
    assert ours.shape == theirs.shape == (N, 16, 16)
    for a, b in zip(ours, theirs, strict=True):
        if b.max() > 0:
            assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.999


def test_scorecam_matches_definition(model, images):
    targets = np.array([2, 0, 1, 1, 0, 2])
    _, raw = explain(model, images, "scorecam", targets, raw=True)
    features = np.asarray(keras.Model(model.inputs[0], model.get_layer("features").output)(images))
    for i in range(2):  # the reference loop: one masked forward pass per channel
        weights = []
        for k in range(features.shape[-1]):
            m = features[i, :, :, k]  # already at input size here (16x16 'same' convs)
            m = (m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else np.zeros_like(m)
            weights.append(np.asarray(model(images[i : i + 1] * m[None, :, :, None]))[0, targets[i]])
        expected = np.maximum(np.einsum("hwk,k->hw", features[i], np.array(weights)), 0)
        np.testing.assert_allclose(raw[i], expected, atol=1e-5)


def test_occlusion_matches_definition():
    # y_0 = mean(image) exactly: occluding a patch drops it by (patch sum) / (H W).
    inputs = keras.Input((16, 16, 1))
    features = layers.Conv2D(1, 1, use_bias=False, kernel_initializer="ones", name="features")(inputs)
    logits = layers.Dense(2, use_bias=False, name="logits")(layers.GlobalAveragePooling2D()(features))
    model = keras.Model(inputs, logits)
    model.get_layer("logits").set_weights([np.array([[1.0, -1.0]], np.float32)])
    image = np.random.default_rng(3).random((1, 16, 16, 1), np.float32)
    _, raw = explain(model, image, "occlusion", 0, raw=True, patch=8, stride=4)
    expected, coverage = np.zeros((16, 16)), np.zeros((16, 16))
    for y in range(0, 9, 4):
        for x in range(0, 9, 4):
            expected[y : y + 8, x : x + 8] += image[0, y : y + 8, x : x + 8, 0].sum() / 256
            coverage[y : y + 8, x : x + 8] += 1
    np.testing.assert_allclose(raw[0], expected / coverage, rtol=1e-5)


def test_guided_gradcam_is_guided_times_gradcam(model, images):
    targets = np.arange(N) % 3
    _, guided = explain(model, images, "guided-backprop", targets, raw=True)
    _, coarse = explain(model, images, "gradcam", targets, raw=True)
    _, both = explain(model, images, "guided-gradcam", targets, raw=True)
    np.testing.assert_allclose(both, guided * coarse, rtol=1e-5, atol=1e-8)  # 16x16 maps: upsampling is identity
    assert (guided >= 0).all() and guided.max() > 0


def test_guided_backprop_blocks_negative_gradients():
    # One ReLU unit y = relu(-x) summed: the plain gradient is negative where x < 0; guided passes only positives.
    inputs = keras.Input((4, 4, 1))
    conv = layers.Conv2D(1, 1, use_bias=False, kernel_initializer="ones", name="features")(inputs)
    act = layers.ReLU(name="relu")(conv)
    logits = layers.Dense(1, use_bias=False, kernel_initializer="ones", name="logits")(
        layers.GlobalAveragePooling2D()(act)
    )
    model = keras.Model(inputs, logits)
    image = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 4, 4, 1)
    _, raw = explain(model, image, "guided-backprop", 0, raw=True, layer="features")
    np.testing.assert_allclose(raw[0], np.where(image[0, ..., 0] > 0, 1 / 16, 0), atol=1e-7)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_contract(method, model, images):
    targets = np.array([0, 1, 2, 0, 1, 2])
    maps = explain(model, images, method, targets)
    assert maps.shape == (N, 16, 16) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1 and not np.isnan(maps).any()
    one_by_one = np.concatenate([explain(model, images[i : i + 1], method, targets[i : i + 1]) for i in range(N)])
    np.testing.assert_allclose(maps, one_by_one, atol=1e-5)
    for flat in (np.zeros((2, 16, 16, 1), np.float32), np.full((2, 16, 16, 1), 0.5, np.float32)):
        out = explain(model, flat, method, 1)
        assert not np.isnan(out).any() and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("method", list(METHODS))
def test_predicted_targets_and_batches(method, images):
    model = _gap_model(seed=4)
    # 6 images at batch 4: a full batch, then a padded one
    maps, targets = explain(model, images, method, batch_size=4, return_targets=True)
    np.testing.assert_array_equal(targets, np.asarray(model(images)).argmax(1))
    np.testing.assert_allclose(maps, explain(model, images, method, targets), atol=1e-5)


def test_logits_not_softmax_by_default(images):
    model = _gap_model(softmax_layer=False)  # Dense(activation="softmax"): logits must be recomputed
    dense = model.get_layer("head")
    logits = keras.Model(model.inputs, layers.Dense(3, name="plain")(model.get_layer("gap").output))
    logits.get_layer("plain").set_weights(dense.get_weights())
    _, ours = explain(model, images, "gradcam", 1, raw=True)
    _, reference = explain(logits, images, "gradcam", 1, raw=True)
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-7)
    _, on_softmax = explain(model, images, "gradcam", 1, raw=True, use_softmax=True)
    assert not np.allclose(on_softmax, ours)


def test_top_k_orders_classes(model, images):
    maps, raw, classes = explain(model, images, "cam", top_k=2, raw=True, return_targets=True)
    assert maps.shape == (N, 2, 16, 16) and raw.shape[:2] == (N, 2)
    order = np.argsort(-np.asarray(model(images)), axis=1)[:, :2]
    np.testing.assert_array_equal(classes, order)  # the classes explained come back with the maps, best first
    np.testing.assert_allclose(maps[:, 1], explain(model, images, "cam", order[:, 1]), atol=1e-6)


def test_second_call_reuses_the_graph(model, images):
    explainer = get_method(model, "gradcam")
    explainer(images)
    traced = explainer._graph.experimental_get_tracing_count()
    explainer(images[::-1])
    assert explainer._graph.experimental_get_tracing_count() == traced


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, x: explain(m, x, "gradcamm"), "unknown method 'gradcamm'"),
        (
            lambda m, x: explain(m, x, "gradcam", layer="nope"),
            "has no layer 'nope'; its 4-D layers are: conv, features",
        ),
        (lambda m, x: explain(m, x, "gradcam", layer="gap"), "layer 'gap' has output shape .* not 4-D"),
        (lambda m, x: explain(m, x, "cam", targets=3), "class index 3 out of range: the model has 3 classes"),
        (lambda m, x: explain(m, x, "cam", targets=[0, 1]), "got 2 targets for 6 images"),
        (lambda m, x: explain(m, x[0], "cam"), r"images must be \(N, H, W, C\).*add a batch axis"),
        (
            lambda m, x: explain(m, np.zeros((2, 20, 20, 1)), "cam"),
            r"images have size \(20, 20, 1\), the model takes \(16, 16, 1\)",
        ),
        (lambda m, x: explain(m, x, "cam", targets="true"), "targets must be 'predicted'"),
        (lambda m, x: explain(m, x, "occlusion", patch=40), "occlusion patch must be in 1..16"),
    ],
)
def test_bad_input_messages(call, message, model, images):
    with pytest.raises(ValueError, match=message):
        call(model, images)


def test_cam_refuses_model_without_gap_head(images):
    model = _deep_head_model()
    with pytest.raises(ValueError, match="CAM needs the layer 'target' to feed GlobalAveragePooling2D -> Dense"):
        explain(model, images, "cam", layer="target")
    explainer = get_method(model, "gradcam")
    assert explainer.layer.name == model.layers[-3].name  # the last 4-D layer, the strided conv before Flatten
    assert explainer(images).shape == (N, 16, 16)


def test_works_inside_tf_function(model, images):
    explainer = get_method(model, "gradcam++")
    maps, raw, targets = explainer._graph(tf.constant(images), tf.constant(np.zeros(N, np.int32)))
    np.testing.assert_allclose(maps.numpy(), explainer(images, 0), atol=1e-6)
