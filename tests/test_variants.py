"""pytorch-grad-cam's methods and options in our pipeline, each against an independent computation on tiny models
built here (their equality with pytorch-grad-cam itself: tests/test_backends.py), Deep Feature Factorization and
ROAD's imputation by hand."""

import keras
import numpy as np
import pytest
from keras import layers

from cam_mnist import factorize
from cam_mnist.core.errors import UserError
from cam_mnist.core.resize import bilinear_resize
from cam_mnist.maps import explain
from cam_mnist.maps.factorization import nmf
from cam_mnist.scoring import road


def _gap_model(classes=3, seed=0):
    """conv -> conv 'features' -> GAP -> Dense 'logits' (bias-free): the CAM architecture, logits out."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16, 16, 1))
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    x = layers.Conv2D(6, 3, padding="same", activation="relu", name="features")(x)
    logits = layers.Dense(classes, use_bias=False, name="logits")(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, logits)


@pytest.fixture(scope="module")
def model():
    return _gap_model()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((4, 16, 16, 1), np.float32)


def _features(model, images):
    return np.asarray(keras.Model(model.inputs, model.get_layer("features").output)(images))  # (B, h, w, K)


def _minmax(maps):
    lo, hi = maps.min(axis=(1, 2), keepdims=True), maps.max(axis=(1, 2), keepdims=True)
    return np.divide(maps - lo, hi - lo, out=np.zeros_like(maps), where=hi > lo)


def _raw(model, images, method, targets, **options):
    return explain(model, images, method, targets, layer="features", raw=True, **options)[1]


TARGETS = np.array([0, 1, 2, 0])


# ------------------------------------------------------------------------------------------ the methods by hand
def test_gradcam_elementwise_is_the_sum_of_positive_products(model, images):
    a, w = _features(model, images), model.get_layer("logits").kernel.numpy()  # dy^c/dA = w^c / (h w) everywhere
    grads = w[:, TARGETS].T[:, None, None, :] / (16 * 16)
    np.testing.assert_allclose(_raw(model, images, "gradcam-elementwise", TARGETS), np.maximum(grads * a, 0).sum(-1),
                               rtol=1e-5, atol=1e-7)  # fmt: skip
    # ...which is not Grad-CAM's: there a channel's negative weight cancels another's positive one
    assert np.abs(_raw(model, images, "gradcam", TARGETS) - np.maximum(grads * a, 0).sum(-1)).max() > 1e-4


def _first_component(x):
    """numpy: each image's cells (h w x K) centred, projected on their first right singular vector, the value
    of largest magnitude positive."""
    out = []
    for cells in x.reshape(len(x), -1, x.shape[-1]):
        centred = cells - cells.mean(0)
        projection = centred @ np.linalg.svd(centred, full_matrices=False)[2][0]
        out.append(projection * np.sign(projection[np.abs(projection).argmax()]))
    return np.stack(out).reshape(x.shape[:3])


def test_eigengradcam_and_eigen_smooth_are_the_first_principal_component(model, images):
    a, w = _features(model, images), model.get_layer("logits").kernel.numpy()
    grads = np.broadcast_to(w[:, TARGETS].T[:, None, None, :] / (16 * 16), a.shape)
    np.testing.assert_allclose(
        _raw(model, images, "eigengradcam", TARGETS), np.maximum(_first_component(grads * a), 0), atol=1e-6
    )
    weights = grads.mean(axis=(1, 2), keepdims=True)  # Grad-CAM's, then the component instead of the sum
    np.testing.assert_allclose(
        _raw(model, images, "gradcam", TARGETS, eigen_smooth=True),
        np.maximum(_first_component(weights * a), 0),
        atol=1e-6,
    )


def test_eigen_smooth_is_refused_where_a_method_makes_no_weighted_sum(model, images):
    with pytest.raises(UserError, match="eigen_smooth replaces the sum over channels.*GuidedBackprop"):
        explain(model, images, "guided-backprop", eigen_smooth=True)


def test_kpcacam_is_scikit_learns_kernel_pca(model, images):
    decomposition = pytest.importorskip("sklearn.decomposition")  # installed with pytorch-grad-cam (make backends)
    a = _features(model, images)
    expected = []
    for cells in a.reshape(len(a), -1, a.shape[-1]):
        centred = cells - cells.mean(0)  # as pytorch-grad-cam centres before the kernel PCA
        projection = decomposition.KernelPCA(1, kernel="sigmoid").fit_transform(centred)[:, 0]
        expected.append(projection * np.sign(projection[np.abs(projection).argmax()]))
    expected = np.maximum(np.stack(expected).reshape(a.shape[:3]), 0)
    np.testing.assert_allclose(_raw(model, images, "kpcacam", TARGETS), expected, atol=1e-4 * expected.max())


def test_fem_weighs_the_share_of_cells_beyond_k_sigma(model, images):
    a = _features(model, images)
    for k in (1.0, 2.0):
        share = (a > a.mean(axis=(1, 2), keepdims=True) + k * a.std(axis=(1, 2), keepdims=True)).mean(axis=(1, 2))
        expected = np.maximum((share[:, None, None, :] * a).sum(-1), 0)
        np.testing.assert_allclose(_raw(model, images, "fem", TARGETS, k=k), expected, rtol=1e-5, atol=1e-7)


def test_fem_refuses_a_map_too_small_for_its_k(images):
    inputs = keras.Input((16, 16, 1))
    x = layers.Conv2D(4, 3, strides=8, padding="same", activation="relu", name="tiny")(inputs)  # 2 x 2 cells
    model = keras.Model(inputs, layers.Dense(3)(layers.GlobalAveragePooling2D()(x)))
    with pytest.raises(UserError, match="2x2 map of 'tiny'.*1.73 standard deviations"):
        explain(model, images, "fem")
    assert explain(model, images, "fem", k=1.0).max() > 0  # below sqrt(3): a cell can pass


def test_shapleycam_adds_the_hessian_term_of_the_rest_score(model, images):
    # y = W^T mean(A); ReST s = y_c + log p_c. ds/dA = (2 w_c - W p) / n at every cell; its Hessian-vector product
    # with A is -W (diag(p) - p p^T) y / n (y = W^T mean(A) is the derivative of y along A). Weights: their mean.
    a, w = _features(model, images), model.get_layer("logits").kernel.numpy().astype(np.float64)
    n = 16 * 16
    expected = []
    for cells, c in zip(a, TARGETS, strict=True):
        y = w.T @ cells.mean((0, 1))
        p = np.exp(y - y.max()) / np.exp(y - y.max()).sum()
        gradient = (2 * w[:, c] - w @ p) / n
        hessian_a = -w @ ((np.diag(p) - np.outer(p, p)) @ y) / n
        expected.append(np.maximum(cells @ (gradient - 0.5 * hessian_a), 0))
    np.testing.assert_allclose(_raw(model, images, "shapleycam", TARGETS), np.stack(expected), rtol=1e-4, atol=1e-8)


def test_finercam_with_alpha_0_is_gradcam_and_with_one_comparison_the_difference_of_two_cams(model, images):
    np.testing.assert_allclose(
        _raw(model, images, "finercam", TARGETS, alpha=0.0), _raw(model, images, "gradcam", TARGETS), atol=1e-7
    )
    # alpha 1, one comparison j (the class scored nearest the target): y = y_c - y_j, CAM of the weights w_c - w_j
    a, w = _features(model, images), model.get_layer("logits").kernel.numpy()
    y = a.mean((1, 2)) @ w
    distance = np.abs(y - y[np.arange(4), TARGETS][:, None])
    distance[np.arange(4), TARGETS] = np.inf
    nearest = distance.argmin(1)
    expected = np.maximum(np.einsum("bhwk,kb->bhw", a, w[:, TARGETS] - w[:, nearest]) / (16 * 16), 0)
    np.testing.assert_allclose(_raw(model, images, "finercam", TARGETS, comparisons=1), expected, atol=1e-7)


def test_fullgrad_of_a_bias_free_model_is_the_input_times_its_gradient(images):
    # No bias anywhere: FullGrad's map is |x dy/dx| alone, normalised (the one input channel).
    keras.utils.set_random_seed(3)
    inputs = keras.Input((16, 16, 1))
    x = layers.Conv2D(4, 3, padding="same", activation="relu", use_bias=False)(inputs)
    model = keras.Model(inputs, layers.Dense(3, use_bias=False)(layers.GlobalAveragePooling2D()(x)))
    import tensorflow as tf

    x = tf.convert_to_tensor(images)
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(tf.gather(model(x), TARGETS, axis=1, batch_dims=1))
    expected = _minmax(np.abs(images * tape.gradient(total, x).numpy())[..., 0])
    np.testing.assert_allclose(explain(model, images, "fullgrad", TARGETS), expected, atol=1e-5)


def test_fullgrad_names_an_activation_it_cannot_undo(images):
    inputs = keras.Input((16, 16, 1))
    x = layers.Conv2D(4, 3, activation="tanh", name="squashed")(inputs)
    model = keras.Model(inputs, layers.Dense(3)(layers.GlobalAveragePooling2D()(x)))
    with pytest.raises(UserError, match="'squashed' \\(tanh\\)"):
        explain(model, images, "fullgrad")


# ------------------------------------------------------------------------------------------------ the options
def test_aug_smooth_is_the_mean_of_six_normalised_maps_mapped_back(model, images):
    expected = 0
    for flip in (False, True):
        for factor in (0.9, 1.0, 1.1):
            x = images[:, :, ::-1] if flip else images
            m = explain(model, np.ascontiguousarray(x * factor), "gradcam", TARGETS)
            expected = expected + (m[:, :, ::-1] if flip else m)
    smoothed = explain(model, images, "gradcam", TARGETS, aug_smooth=True)
    np.testing.assert_allclose(smoothed, _minmax(expected), atol=1e-5)


def test_several_layers_average_each_layers_map_normalised_at_its_own_resolution(images):
    keras.utils.set_random_seed(5)
    inputs = keras.Input((16, 16, 1))
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="fine")(inputs)
    x = layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="coarse")(x)
    model = keras.Model(inputs, layers.Dense(3)(layers.GlobalAveragePooling2D()(x)))
    each = [explain(model, images, "gradcam", TARGETS, layer, raw=True)[1] for layer in ("fine", "coarse")]
    assert each[1].shape == (4, 8, 8)
    expected = _minmax(np.mean([bilinear_resize(_minmax(r), (16, 16)) for r in each], 0))
    both = explain(model, images, "gradcam", TARGETS, ["fine", "coarse"])
    np.testing.assert_allclose(both, expected, atol=1e-6)
    assert np.abs(both - explain(model, images, "gradcam", TARGETS, "coarse")).max() > 0.05  # not one layer's
    with pytest.raises(UserError, match="layer= is an empty list"):
        explain(model, images, "gradcam", TARGETS, [])


# ------------------------------------------------------------------------------------ deep feature factorization
def test_nmf_fits_as_well_as_scikit_learn_and_never_worsens():
    decomposition = pytest.importorskip("sklearn.decomposition")
    x = np.random.default_rng(1).random((16, 300))
    errors = [np.linalg.norm(x - np.matmul(*nmf(x, 4, iterations=i))) for i in (10, 50, 200)]
    assert errors[0] >= errors[1] >= errors[2]
    theirs = decomposition.NMF(4, init="random", random_state=0, max_iter=1000)
    reference = np.linalg.norm(x - theirs.fit_transform(x) @ theirs.components_)
    assert errors[2] < 1.02 * reference, (errors, reference)


def test_factorize_recovers_concepts_and_reads_them_through_the_head(model, images):
    found = factorize(model, images, n_components=3, layer="features")
    assert found.concepts.shape == (6, 3) and found.maps.shape == (4, 3, 16, 16)
    assert found.maps.min() >= 0 and found.maps.max() <= 1
    np.testing.assert_allclose(found.scores, found.concepts.T @ model.get_layer("logits").kernel.numpy(), rtol=1e-5)
    # the concepts and their weights reconstruct the activations about as well as scikit-learn's NMF would
    a = _features(model, images).reshape(-1, 6).T
    offset = a.min(1, keepdims=True)
    w, h = nmf(a - offset, 3)
    assert np.linalg.norm(a - offset - w @ h) < 0.5 * np.linalg.norm(a - offset)
    with pytest.raises(UserError, match="n_components must be at least 1"):
        factorize(model, images, n_components=0)


# ------------------------------------------------------------------------------------------------------- ROAD
def test_imputation_is_the_weighted_mean_of_the_neighbours():
    image = np.arange(9, dtype=np.float64).reshape(1, 3, 3, 1) ** 2
    removed = np.zeros((1, 3, 3), bool)
    removed[0, 1, 1] = True  # the centre: 1/6 of each direct neighbour, 1/12 of each diagonal one
    expected = image[0, [0, 1, 1, 2], [1, 0, 2, 1], 0].sum() / 6 + image[0, [0, 0, 2, 2], [0, 2, 0, 2], 0].sum() / 12
    out = road.impute(image, removed, noise=0.0)
    assert out[0, 1, 1, 0] == pytest.approx(expected)
    np.testing.assert_array_equal(out[~removed], image[~removed])  # the rest untouched
    removed[0, 0, 0] = True  # a corner and the centre, each in the other's equation: the weights of the corner's 3
    out = road.impute(image, removed, noise=0.0)  # neighbours inside the image sum to 1/3
    corner = (out[0, 1, 1, 0] / 12 + (image[0, 0, 1, 0] + image[0, 1, 0, 0]) / 6) / (1 / 12 + 2 / 6)
    assert out[0, 0, 0, 0] == pytest.approx(corner)


def test_imputation_fills_a_linear_ramp_exactly_and_noise_is_seeded():
    ramp = (np.arange(20)[:, None] * 0.3 + np.arange(20)[None, :] * 0.1).reshape(1, 20, 20, 1)
    removed = np.zeros((1, 20, 20), bool)
    removed[0, 5:15, 3:12] = True
    np.testing.assert_allclose(road.impute(ramp, removed, noise=0.0), ramp, atol=1e-9)
    noisy = [road.impute(ramp, removed, rng=np.random.default_rng(7)) for _ in range(2)]
    np.testing.assert_array_equal(noisy[0], noisy[1])
    noise = (noisy[0] - ramp)[removed]  # the imputation's noise, std 0.01, on the removed pixels alone
    assert 0.008 < noise.std() < 0.012 and (noisy[0] == ramp)[~removed].all()


def test_road_removes_each_percentile_and_scores_a_map_that_points_at_what_the_model_reads():
    maps = np.random.default_rng(0).random((2, 10, 10)).astype(np.float32)
    assert road.removed_pixels(maps, 30, True).sum() == 140 and road.removed_pixels(maps, 30, False).sum() == 140
    # A model whose class-1 probability is the mean of the left half: a map ranking the left half first makes
    # the probability fall when its top pixels go (MoRF) and stay when its bottom ones do (LeRF); the opposite map
    # scores the opposite way.
    images = np.zeros((2, 10, 10, 1), np.float32)
    images[:, :, :5] = 1.0

    def predict(x):
        left = np.clip(x[:, :, :5, 0].mean((1, 2)), 0, 1)
        return np.stack([1 - left, left], 1)

    left_first = np.broadcast_to(np.linspace(1, 0, 10)[None, None, :], (2, 10, 10)).astype(np.float32)
    good = road.road(predict, images, left_first, np.array([1, 1]), noise=0.0)
    bad = road.road(predict, images, 1 - left_first, np.array([1, 1]), noise=0.0)
    assert (good["morf"] < bad["morf"]).all() and (good["lerf"] > bad["lerf"]).all()
    assert (good["combined"] > 0).all() and (bad["combined"] < 0).all()
    np.testing.assert_allclose(good["combined"], (good["lerf"] - good["morf"]) / 2)


def test_the_hessian_product_through_a_layer_normalization_is_its_finite_difference():
    # ShapleyCAM's (d^2 y / dA^2) A through Keras' LayerNormalization: on TensorFlow its moments stop the mean's
    # gradient, which loses a second-derivative term (20% of it here) unless the backend computes them without.
    import tensorflow as tf

    from cam_mnist.core import backend

    keras.utils.set_random_seed(0)
    norm, dense = layers.LayerNormalization(), layers.Dense(3)
    a = tf.constant(np.random.default_rng(0).normal(size=(2, 5, 8)).astype(np.float32))

    def score(x, probe):
        v = probe(x * 1.0)
        return tf.reduce_sum(tf.sin(dense(norm(v)))), (v,)

    _, product, _ = backend.gradient_and_hessian_product_inside(score, a)
    step = 1e-3
    gradient_at = lambda s: backend.gradient_inside(lambda x, p: score(x * (1 + s), p), a)[0]  # noqa: E731
    finite = (gradient_at(step) - gradient_at(-step)) / (2 * step)  # d/ds of the gradient at A (1 + s): H A
    np.testing.assert_allclose(product.numpy(), finite.numpy(), atol=2e-3 * np.abs(finite.numpy()).max())
