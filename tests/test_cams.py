"""The CAM family on tiny models built here: exact identities, independent re-implementations, tf-keras-vis."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from cam_mnist.maps import METHODS, explain, forget, get_method, registry
from cam_mnist.maps.grids import upsample

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


def test_forget_drops_only_that_methods_objects_and_the_maps_stay_the_same(model, images):
    gradcam, cam = get_method(model, "gradcam"), get_method(model, "cam")
    before = explain(model, images, "gradcam")
    forget(model, "gradcam")
    assert get_method(model, "gradcam") is not gradcam  # a new object, traced again
    assert get_method(model, "cam") is cam  # the other methods' stay cached
    np.testing.assert_array_equal(explain(model, images, "gradcam"), before)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, x: explain(m, x, "gradcamm"), "unknown method 'gradcamm'"),
        (
            lambda m, x: explain(m, x, "gradcam", layer="nope"),
            "has no layer 'nope'; the layers a map can be made at are: conv, features",
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
    with pytest.raises(ValueError, match="CAM needs the layer 'target' to feed GlobalAveragePooling -> Dense"):
        explain(model, images, "cam", layer="target")
    explainer = get_method(model, "gradcam")
    assert explainer.layer.layer is model.layers[-3]  # the last 4-D layer, the strided conv before Flatten
    assert explainer(images).shape == (N, 16, 16)


def test_works_inside_tf_function(model, images):
    explainer = get_method(model, "gradcam++")
    maps, raw, targets = explainer._graph(tf.constant(images), tf.constant(np.zeros(N, np.int32)))
    np.testing.assert_allclose(maps.numpy(), explainer(images, 0), atol=1e-6)


@pytest.mark.parametrize("grid, size", [((25, 25), (100, 100)), ((12, 7), (100, 40)), ((30, 30), (10, 10))])
def test_upsampling_by_matrices_equals_tensorflows_resize(grid, size):
    maps = tf.random.stateless_uniform((3, *grid), seed=(0, grid[1]))
    expected = tf.image.resize(maps[..., None], size, method="bilinear")[..., 0].numpy()
    np.testing.assert_allclose(upsample(maps, size).numpy(), expected, atol=1e-6)
    # inside a graph with the batch size, or the whole map size, unknown until it runs
    for spec in (tf.TensorSpec((None, *grid)), tf.TensorSpec((None, None, None))):
        graph = tf.function(lambda m: upsample(m, size), input_signature=[spec])
        np.testing.assert_allclose(graph(maps).numpy(), expected, atol=1e-6)


# ------------------------------------------------------------------------------------------- the newer methods
def test_hirescam_equals_gradcam_on_a_gap_model_and_differs_after_a_conv_and_relu(model, images):
    # On conv -> GAP -> linear, dy/dA is w / cells at every cell: HiResCAM = Grad-CAM = CAM / cells.
    targets = np.arange(N) % 3
    _, hires = explain(model, images, "hirescam", targets, raw=True)
    _, grad = explain(model, images, "gradcam", targets, raw=True)
    _, cam = explain(model, images, "cam", targets, raw=True)
    np.testing.assert_allclose(hires, grad, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(hires * 256, cam, atol=1e-5, rtol=1e-5)
    # A conv and a ReLU after the target layer make the gradient vary from cell to cell: the two differ.
    deep = _deep_head_model()
    _, hires = explain(deep, images, "hirescam", 1, layer="target", raw=True)
    _, grad = explain(deep, images, "gradcam", 1, layer="target", raw=True)
    assert hires.max() > 1e-4 and not np.allclose(hires / hires.max(), grad / max(grad.max(), 1e-12), atol=1e-2)


def test_xgradcam_equals_its_closed_form_on_a_hand_made_relu_model(images):
    # target (K=2) -> 1x1 conv V + bias, ReLU -> GAP -> Dense W: dy^c/dA^k_ij = sum_m W_mc V_km [z^m_ij > 0] / cells,
    # and XGrad-CAM's alpha_k = sum_ij A^k_ij / sum_ab A^k_ab * dy^c/dA^k_ij (Fu et al. eq. 11).
    keras.utils.set_random_seed(5)
    x = inputs = keras.Input((16, 16, 1))
    a = layers.Conv2D(2, 3, padding="same", activation="relu", name="target")(x)
    z = layers.Conv2D(3, 1, name="mix")(a)
    y = layers.Dense(4, use_bias=False, name="logits")(layers.GlobalAveragePooling2D()(layers.ReLU()(z)))
    hand = keras.Model(inputs, y)
    acts = np.asarray(keras.Model(inputs, a)(images))  # (N, 16, 16, 2)
    v = hand.get_layer("mix").kernel.numpy()
    b = -np.median(np.einsum("nijk,km->nijm", acts, v[0, 0]), axis=(0, 1, 2))  # about half the cells off
    hand.get_layer("mix").set_weights([v, b.astype(np.float32)])
    w = hand.get_layer("logits").kernel.numpy()  # (3, 4)
    gate = (np.einsum("nijk,km->nijm", acts, v[0, 0]) + b > 0).astype(np.float32)  # (N, 16, 16, 3)
    peaks = []
    for c in range(4):  # every class: some have negative weights everywhere, and ReLU leaves nothing
        grads = np.einsum("nijm,km,m->nijk", gate, v[0, 0], w[:, c]) / 256  # dy^c/dA (N, 16, 16, 2)
        alpha = (acts / acts.sum((1, 2), keepdims=True) * grads).sum((1, 2))  # (N, 2)
        expected = np.maximum(np.einsum("nk,nijk->nij", alpha, acts), 0)
        _, ours = explain(hand, images, "xgradcam", c, layer="target", raw=True)
        np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-7)
        peaks.append(expected.max())
    assert max(peaks) > 1e-4 and 0.3 < gate.mean() < 0.7  # a real map, and the ReLU's gate closed on many cells


def test_eigencam_is_the_first_principal_direction_with_a_fixed_sign(model, images):
    features = np.asarray(keras.Model(model.inputs[0], model.get_layer("features").output)(images))  # (N, 16, 16, 6)
    _, ours = explain(model, images, "eigencam", raw=True)
    for i in range(N):
        flat = features[i].reshape(-1, 6)
        v1 = np.linalg.svd(flat, full_matrices=False)[2][0]  # numpy's sign is its own
        projection = flat @ v1
        projection *= 1 if projection.sum() >= 0 else -1  # the documented orientation
        np.testing.assert_allclose(ours[i].ravel(), np.maximum(projection, 0), rtol=1e-3, atol=1e-4)
    # Negating every channel's activations' direction is not possible for a ReLU layer, so check determinism where
    # it matters: the same images, and the same images in another batch order, give the same maps.
    again = explain(model, images[::-1], "eigencam")[::-1]
    np.testing.assert_allclose(explain(model, images, "eigencam"), again, atol=1e-5)
    # Class-agnostic: every target gives the same map.
    np.testing.assert_allclose(explain(model, images, "eigencam", 0), explain(model, images, "eigencam", 2))


def test_ablationcam_matches_zeroing_each_channel(model, images):
    tail = keras.Model(model.get_layer("features").output, model.get_layer("logits").output)
    features = np.asarray(keras.Model(model.inputs[0], model.get_layer("features").output)(images))
    c = 1
    y = np.asarray(tail(features))[:, c]
    weights = np.zeros((N, 6))
    for k in range(6):
        ablated = features.copy()
        ablated[..., k] = 0
        weights[:, k] = (y - np.asarray(tail(ablated))[:, c]) / y
    expected = np.maximum(np.einsum("nk,nijk->nij", weights, features), 0)
    _, ours = explain(model, images, "ablationcam", c, raw=True)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6)


def test_ablationcam_refuses_a_layer_with_a_path_around_it(images):
    x = inputs = keras.Input((16, 16, 1))
    a = layers.Conv2D(3, 3, padding="same", activation="relu", name="target")(x)
    skip = layers.Conv2D(3, 3, padding="same")(x)
    out = layers.Dense(2, name="logits")(layers.GlobalAveragePooling2D()(layers.Add()([a, skip])))
    with pytest.raises(ValueError, match="depend on the image through more than layer 'target'"):
        explain(keras.Model(inputs, out), images, "ablationcam", 0, layer="target")


def test_smoothgrad_with_no_noise_is_the_plain_gradient(model, images):
    x = tf.constant(images)
    with tf.GradientTape() as tape:
        tape.watch(x)
        score = model.get_layer("logits").output  # the logits, as every method explains them
        logits = keras.Model(model.inputs[0], score)(x)[:, 2]
    plain = np.abs(tape.gradient(logits, x).numpy()).sum(-1)
    _, ours = explain(model, images, "smoothgrad", 2, raw=True, sigma=0.0, samples=3)
    np.testing.assert_allclose(ours, plain, rtol=1e-5, atol=1e-8)
    _, noisy = explain(model, images, "smoothgrad", 2, raw=True, sigma=0.3, samples=3)
    assert not np.allclose(noisy, plain)


def test_integrated_gradients_are_complete(images):
    # Completeness (Sundararajan et al. §3): the attributions add up to f(x) - f(baseline), here within 1%.
    keras.utils.set_random_seed(2)
    x = inputs = keras.Input((16, 16, 1))
    x = layers.Conv2D(4, 3, padding="same", activation="tanh", name="conv")(x)
    x = layers.Dense(3, name="logits")(layers.GlobalAveragePooling2D()(x))
    tiny = keras.Model(inputs, x)
    ig = get_method(tiny, "integrated-gradients", layer="conv", steps=64)
    attributions = ig.attributions(images, 1)  # (N, 16, 16, 1), signed
    difference = np.asarray(tiny(images))[:, 1] - np.asarray(tiny(np.zeros_like(images)))[:, 1]
    np.testing.assert_allclose(attributions.sum((1, 2, 3)), difference, rtol=0.01)
    assert np.abs(difference).min() > 1e-3  # a real difference to explain


def test_rise_is_reproducible_for_a_seed(model, images):
    a = explain(model, images[:2], "rise", 1, masks=64, seed=3)
    twin = keras.models.clone_model(model)  # another object: fresh weights, then the model's own
    twin.set_weights(model.get_weights())
    b = explain(twin, images[:2], "rise", 1, masks=64, seed=3)  # masks from the seed, not from the object
    c = explain(model, images[:2], "rise", 1, masks=64, seed=4)
    np.testing.assert_array_equal(a, explain(model, images[:2], "rise", 1, masks=64, seed=3))
    np.testing.assert_allclose(b, a, atol=1e-6)
    assert a.shape == (2, 16, 16) and not np.allclose(a, c, atol=1e-3)


def test_rise_matches_its_definition(model, images):
    from cam_mnist.maps.pixels import _rise_masks

    masks = _rise_masks(32, 4, 0.5, (16, 16), seed=0)
    probs = np.stack([np.asarray(model(images[:1] * m[None, ..., None]))[0, 1] for m in masks])
    expected = np.einsum("n,nhw->hw", probs, masks) / (32 * 0.5)
    _, ours = explain(model, images[:1], "rise", 1, raw=True, masks=32, cells=4, seed=0)
    np.testing.assert_allclose(ours[0], expected, rtol=1e-5, atol=1e-6)


def test_smooth_averages_shifted_maps_shifted_back(images):
    # A model whose score is translation-equivariant away from the border: the smoothed map of a centred blob is
    # the plain map (every shift maps back onto it), while smooth=0 is the plain pipeline.
    model = _gap_model(seed=7)
    blob = np.zeros((1, 16, 16, 1), np.float32)
    blob[0, 6:10, 6:10] = 1
    plain = explain(model, blob, "gradcam", 0)
    smoothed = explain(model, blob, "gradcam", 0, smooth=1)
    np.testing.assert_allclose(smoothed[0, 3:13, 3:13], plain[0, 3:13, 3:13], atol=1e-5)
    assert not np.allclose(explain(model, images, "gradcam", 0, smooth=2), explain(model, images, "gradcam", 0))
    with pytest.raises(ValueError, match="smooth must be a shift in 0..15 pixels"):
        explain(model, images, "gradcam", smooth=16)


@pytest.mark.parametrize("method", registry.method_names(slow=False))
def test_a_mixed_precision_model_is_explained_in_float32_like_its_float32_twin(method):
    """--precision mixed_bfloat16 computes the convs in bfloat16: the maps are still made (and returned) in float32,
    and match those of the same weights in float32 to bfloat16's rounding."""
    from cam_mnist import config
    from cam_mnist.model import build_model

    settings = config.preset("tiny").model
    keras.utils.set_random_seed(0)
    full = build_model(settings, 40)
    mixed = build_model(dataclasses.replace(settings, precision="mixed_bfloat16"), 40)
    mixed.set_weights(full.get_weights())
    assert mixed.get_layer("cam_features").compute_dtype == "bfloat16" and mixed.output.dtype == "float32"
    x = np.random.default_rng(0).uniform(0, 1, (8, 40, 40, 1)).astype(np.float32)
    classes = np.asarray(full(x)).argmax(1)  # the same classes for both: a near-tie may flip in bfloat16
    a, b = explain(full, x, method, classes), explain(mixed, x, method, classes)
    assert b.dtype == np.float32 and b.shape == a.shape
    assert a.std(axis=(1, 2)).min() > 0.01  # real maps, not constant ones
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98


# ------------------------------------------------------------------------------------ the bugs a user would hit
def test_guided_backprop_differs_from_plain_backprop_by_hand():
    # A 1x1 conv with kernel [1, 1] -> ReLU -> GAP -> Dense [1, -2]: y = -mean(relu(x)). The gradient reaching the
    # first ReLU is +1/16, the second's -2/16. Plain backprop sums them (-1/16 where x > 0: a map of 0 after the
    # ReLU); guided backprop blocks the negative one and keeps +1/16 where x > 0.
    inputs = keras.Input((4, 4, 1))
    conv = layers.Conv2D(2, 1, use_bias=False, kernel_initializer="ones", name="features")(inputs)
    act = layers.ReLU(name="relu")(conv)
    logits = layers.Dense(1, use_bias=False, name="logits")(layers.GlobalAveragePooling2D()(act))
    model = keras.Model(inputs, logits)
    model.get_layer("logits").set_weights([np.array([[1.0], [-2.0]], np.float32)])
    image = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 4, 4, 1)
    _, guided = explain(model, image, "guided-backprop", 0, raw=True)
    np.testing.assert_allclose(guided[0], np.where(image[0, ..., 0] > 0, 1 / 16, 0), atol=1e-7)
    _, plain = explain(model, image, "smoothgrad", 0, raw=True, sigma=0.0, samples=1)  # |plain gradient|
    np.testing.assert_allclose(plain[0], np.where(image[0, ..., 0] > 0, 1 / 16, 0), atol=1e-7)
    signed = get_method(model, "guided-backprop").explain(image, [0], signed=True).signed
    assert (signed >= 0).all()  # the plain gradient, -1/16, would be negative here


def _rgb_strided_model(seed=2, precision="float32"):
    """Non-square RGB input (20 x 16 x 3), a strided conv: a (10 x 8) map, coarser than the image, upsampled."""
    keras.utils.set_random_seed(seed)
    x = inputs = keras.Input((20, 16, 3))
    x = layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="features", dtype=precision)(x)
    x = layers.Dense(3, use_bias=False, name="logits")(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, layers.Softmax(name="probs")(x))


SMALL = {"occlusion": {"patch": 8, "stride": 4}, "rise": {"masks": 32}, "smoothgrad": {"samples": 3}}
SMALL["integrated-gradients"] = {"steps": 4}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_on_a_non_square_rgb_model_with_a_strided_layer(method):
    model = _rgb_strided_model()
    images = np.random.default_rng(1).random((5, 20, 16, 3), np.float32)
    targets = np.array([0, 1, 2, 0, 1])
    maps, raw = explain(model, images, method, targets, raw=True, **SMALL.get(method, {}))
    assert maps.shape == (5, 20, 16) and maps.min() >= 0 and maps.max() <= 1
    assert (maps.std(axis=(1, 2)) > 0.01).sum() >= 3  # maps that vary (one occlusion placement could not)
    if not registry.info(method).pixel_level:  # the layer's grid, upsampled as tf.image.resize does it
        assert raw.shape == (5, 10, 8)
        up = tf.image.resize(raw[..., None], (20, 16), method="bilinear")[..., 0].numpy()
        lo, hi = up.min(axis=(1, 2), keepdims=True), up.max(axis=(1, 2), keepdims=True)
        np.testing.assert_allclose(maps, (up - lo) / np.where(hi > lo, hi - lo, 1), atol=1e-5)
    one_by_one = [
        explain(model, images[i : i + 1], method, targets[i : i + 1], **SMALL.get(method, {})) for i in range(5)
    ]
    np.testing.assert_allclose(maps, np.concatenate(one_by_one), atol=1e-5)


def test_cam_on_a_non_square_model_equals_numpy_with_height_and_width_in_place():
    model = _rgb_strided_model()
    images = np.zeros((1, 20, 16, 3), np.float32)
    images[0, 2:6, 10:14] = 1.0  # a bright square near the top right: the map must peak there, not transposed
    features = np.asarray(keras.Model(model.inputs[0], model.get_layer("features").output)(images))  # (1, 10, 8, 6)
    kernel = model.get_layer("logits").kernel.numpy()
    c = int(np.argmax(np.einsum("nhwk,kc->c", features, kernel)))
    _, raw = explain(model, images, "cam", c, raw=True)
    np.testing.assert_allclose(raw[0], np.maximum(features[0] @ kernel[:, c], 0), atol=1e-6)


def test_layercam_gradcampp_and_hirescam_by_hand_where_they_differ_from_cam(images):
    # After a conv, a ReLU and a dense layer the gradient at the target layer varies from cell to cell and is
    # negative in places: Layer-CAM keeps its positive part, HiResCAM all of it, Grad-CAM++ weighs by eq. (19).
    model = _deep_head_model()
    target = keras.Model(model.inputs[0], model.get_layer("target").output)
    x = tf.constant(images)
    c = 2
    with tf.GradientTape() as tape:
        a = target(x)
        tape.watch(a)
        rest = model.layers[2:]
        y = a
        for layer in rest:
            y = layer(y)
        score = y[:, c]
    g, a = tape.gradient(score, a).numpy(), a.numpy()  # (N, 16, 16, 5)
    assert g.min() < 0 < g.max()  # negative gradients: dropping a ReLU would show
    expected = {
        "layercam": np.maximum((np.maximum(g, 0) * a).sum(-1), 0),
        "hirescam": np.maximum((g * a).sum(-1), 0),
    }
    g2, g3 = g**2, g**3
    denominator = 2 * g2 + a.sum((1, 2), keepdims=True) * g3
    alpha = np.divide(g2, denominator, out=np.zeros_like(g2), where=denominator != 0)
    alpha /= np.where(alpha.sum((1, 2), keepdims=True) != 0, alpha.sum((1, 2), keepdims=True), 1)
    weights = (alpha * np.maximum(g, 0)).sum((1, 2))  # (N, K)
    expected["gradcam++"] = np.maximum(np.einsum("nk,nhwk->nhw", weights, a), 0)
    for method, value in expected.items():
        _, ours = explain(model, images, method, c, layer="target", raw=True)
        assert value.max() > 1e-4, method
        np.testing.assert_allclose(ours, value, rtol=1e-4, atol=1e-6 * value.max(), err_msg=method)


@pytest.mark.parametrize("method", registry.method_names(slow=True))
def test_the_slow_methods_on_a_bfloat16_model_match_its_float32_twin(method):
    full, mixed = _rgb_strided_model(seed=3), _rgb_strided_model(seed=3, precision="mixed_bfloat16")
    mixed.set_weights(full.get_weights())
    assert mixed.get_layer("features").compute_dtype == "bfloat16"
    x = np.random.default_rng(2).random((3, 20, 16, 3), np.float32)
    classes = np.asarray(full(x)).argmax(1)
    a = explain(full, x, method, classes, **SMALL.get(method, {}))
    b = explain(mixed, x, method, classes, **SMALL.get(method, {}))
    assert b.dtype == np.float32 and a.std(axis=(1, 2)).min() > 0.01
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95, method
