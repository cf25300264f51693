"""Models nobody here wrote, nested the way users nest them: every map equals the map of its flat twin.

The twin of a nested model is built here by hand, independently of :mod:`cam_mnist.maps.graph`: the outer head's
own layer objects called on the base's own output tensor, ``keras.Model(base.input, head(base.output))``, fed the
images the outer model's preprocessing would hand the base. Same variables, one graph: a nested model explained
right gives exactly its twin's maps.
"""

import keras
import numpy as np
import pytest
from keras import layers

from cam_mnist.core.errors import UserError
from cam_mnist.maps import candidate_layers, explain, get_method, registry

FAST = registry.method_names(slow=False)
SLOW = registry.method_names(slow=True)


def _nest(base, head_layers, pre=None, functional=False):
    """(nested model, its flat twin, the images the twin takes for the model's images). ``functional``: the
    transfer-learning guide's ``x = base(x, training=False)`` in a functional model; else a Sequential."""
    shape = tuple(base.inputs[0].shape[1:])
    pre = pre or layers.Rescaling(1 / 255.0, name="rescaling")  # named: Keras numbers a second one rescaling_1
    if functional:
        inputs = keras.Input(shape)
        x = base(pre(inputs), training=False)
        for layer in head_layers:
            x = layer(x)
        nested = keras.Model(inputs, x)
    else:
        nested = keras.Sequential([keras.Input(shape), pre, base, *head_layers])
    x = base.output
    for layer in head_layers:
        x = layer(x)
    twin = keras.Model(base.inputs[0], x)
    return nested, twin, lambda images: np.asarray(pre(images))


def _images(shape, n=2, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, *shape)).astype(np.float32)


def _head(classes=5, dropout=True):
    return [layers.GlobalAveragePooling2D(), *([layers.Dropout(0.3)] if dropout else []), layers.Dense(classes)]


def _assert_same_maps(nested, twin, to_twin, images, method, layer=None, twin_layer=None, **options):
    targets = np.arange(len(images)) % 3
    ours, raw = explain(nested, images, method, targets, layer=layer, raw=True, **options)
    theirs, twin_raw = explain(twin, to_twin(images), method, targets, layer=twin_layer or layer, raw=True, **options)
    assert ours.shape == theirs.shape and raw.max() > 0, method  # a real map
    # A map of input gradients scales with the preprocessing (x / 255 before the base): raw maps are compared at the
    # same scale, each divided by its maximum; the maps themselves exactly.
    scale = lambda m: m / np.maximum(m.max(axis=(1, 2), keepdims=True), 1e-30)  # noqa: E731
    np.testing.assert_allclose(scale(raw), scale(twin_raw), atol=1e-4, err_msg=method)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, err_msg=method)


# ---------------------------------------------------------------------------------------------- a small base, fully
def _small_base(name="base"):
    """A functional base with a skip connection, batch norm and a ReLU6, like the applications' blocks."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((24, 20, 3))  # not square: height and width must not be swapped
    x = layers.Conv2D(8, 3, strides=2, padding="same", name="stem")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    y = layers.Conv2D(8, 3, padding="same", activation="relu", name="block_conv")(x)
    x = layers.Add(name="block_add")([x, y])
    x = layers.Conv2D(12, 1, activation="relu", name="out_relu")(x)
    return keras.Model(inputs, x, name=name)


@pytest.fixture(scope="module")
def small():
    return _nest(_small_base(), _head(dropout=True))


@pytest.mark.parametrize("method", FAST)
def test_a_nested_sequential_gives_its_flat_twins_maps(small, method):
    nested, twin, to_twin = small
    _assert_same_maps(nested, twin, to_twin, _images((24, 20, 3), 3), method)


@pytest.mark.parametrize("method", SLOW)
def test_the_slow_methods_on_a_nested_model_give_the_twins_maps(small, method):
    nested, twin, to_twin = small
    options = {"masks": 40} if method == "rise" else {"samples": 3} if method == "smoothgrad" else {}
    options |= {"steps": 4} if method == "integrated-gradients" else {}
    _assert_same_maps(nested, twin, to_twin, _images((24, 20, 3), 2), method, pass_batch=7, **options)


def test_a_nested_layer_is_named_by_path_by_name_or_by_object(small):
    nested, twin, to_twin = small
    base = nested.layers[1]
    images = _images((24, 20, 3), 2)
    by_path = explain(nested, images, "gradcam", 1, layer="base/block_conv")
    np.testing.assert_array_equal(by_path, explain(nested, images, "gradcam", 1, layer="block_conv"))
    np.testing.assert_array_equal(by_path, explain(nested, images, "gradcam", 1, layer=base.get_layer("block_conv")))
    np.testing.assert_allclose(by_path, explain(twin, to_twin(images), "gradcam", 1, layer="block_conv"), atol=1e-5)
    assert get_method(nested, "gradcam").layer.path == "base/out_relu"  # the default: the last 4-D layer
    paths = [path for path, _, _ in candidate_layers(nested)]
    assert paths[0] == "rescaling" and paths[1:] == [
        "base/stem",
        "base/stem_bn",
        "base/stem_relu",
        "base/block_conv",
        "base/block_add",
        "base/out_relu",
    ]
    assert candidate_layers(nested)[-1][1:] == ("Conv2D", (None, 12, 10, 12))


def test_layer_mistakes_name_the_layers_there_are(small):
    nested = small[0]
    images = _images((24, 20, 3), 1)
    with pytest.raises(
        UserError, match="has no layer 'nope'; the layers a map can be made at are: rescaling, base/stem, .*out_relu"
    ):
        explain(nested, images, "gradcam", layer="nope")
    with pytest.raises(UserError, match=r"layer 'global_average_pooling2d.*' has output shape \(None, 12\), not 4-D"):
        explain(nested, images, "gradcam", layer=nested.layers[2].name)
    inputs = keras.Input((24, 20, 3))  # two bases side by side, each with a 'block_conv'
    both = layers.Concatenate()([_small_base("a")(inputs), _small_base("b")(inputs)])
    twice = keras.Model(inputs, layers.Dense(2)(layers.GlobalAveragePooling2D()(both)))
    with pytest.raises(UserError, match="layer name 'block_conv' is in several models; give its path: a/block_conv, b"):
        explain(twice, images, "gradcam", layer="block_conv")
    assert get_method(twice, "gradcam", "b/block_conv").layer.layer is twice.layers[2].get_layer("block_conv")


def test_a_wrapped_model_explained_twice_deep(small):
    # a model nested in a model nested in a model: the path names every level
    nested, twin, to_twin = small
    outer = keras.Sequential([keras.Input((24, 20, 3)), keras.Sequential([keras.Input((24, 20, 3)), nested])])
    images = _images((24, 20, 3), 2)
    path = get_method(outer, "cam").layer.path
    assert path.endswith("/base/out_relu") and path.count("/") == 3
    np.testing.assert_allclose(explain(outer, images, "cam", 2), explain(twin, to_twin(images), "cam", 2), atol=1e-5)


# --------------------------------------------------------------------------------------------- CAM through the head
def test_cam_folds_dropout_and_batch_norm_after_gap_and_still_equals_cells_times_gradcam():
    base = _small_base()
    bn = layers.BatchNormalization()
    nested = keras.Sequential([keras.Input((24, 20, 3)), base, layers.GlobalAveragePooling2D(), bn, layers.Dense(4)])
    bn.set_weights([np.linspace(0.5, 2, 12), np.linspace(-1, 1, 12), np.linspace(0, 1, 12), np.linspace(1, 3, 12)])
    images = _images((24, 20, 3), 3) / 255
    _, cam = explain(nested, images, "cam", [0, 1, 3], raw=True)
    _, grad = explain(nested, images, "gradcam", [0, 1, 3], raw=True)
    np.testing.assert_allclose(cam, grad * 12 * 10, rtol=1e-4, atol=1e-6)  # the CAM paper's identity, cells = 120
    # by hand: w = diag(gamma / sqrt(var + eps)) W
    gamma, _, _, var = bn.get_weights()
    w = (gamma / np.sqrt(var + bn.epsilon))[:, None] * nested.layers[-1].kernel.numpy()
    features = np.asarray(base(images))  # (3, 12, 10, 12)
    expected = np.maximum(np.einsum("nhwk,kn->nhw", features, w[:, [0, 1, 3]]), 0)
    np.testing.assert_allclose(cam, expected, rtol=1e-4, atol=1e-6)


def test_cam_refuses_a_head_that_is_not_linear_naming_the_layer():
    base = _small_base()
    norm = keras.Sequential(
        [
            keras.Input((24, 20, 3)),
            base,
            layers.GlobalAveragePooling2D(),
            layers.LayerNormalization(name="ln"),
            layers.Dense(4),
        ]
    )
    with pytest.raises(UserError, match=r"layer 'ln' \(LayerNormalization\) is not: use gradcam"):
        explain(norm, _images((24, 20, 3), 1), "cam")
    assert explain(norm, _images((24, 20, 3), 1), "gradcam").shape == (1, 24, 20)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "eigencam", "ablationcam", "guided-backprop"])
def test_a_subclassed_model_gives_its_functional_twins_maps(method):
    # A subclassed model has no graph: its layers are reached by hooks while it runs, as one layer of a functional
    # wrapper. Its maps are those of the same layers wired as a functional model.
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = layers.Conv2D(4, 3, activation="relu", name="conv")
            self.gap, self.dense = layers.GlobalAveragePooling2D(), layers.Dense(3)

        def call(self, x):
            return self.dense(self.gap(self.conv(x)))

    net, x = Net(), _images((8, 8, 1), 3)
    with pytest.raises(UserError, match="has not been called yet: call it on a batch once, or give input_shape"):
        explain(net, x, method)
    net(x)
    inputs = keras.Input((8, 8, 1))
    twin = keras.Model(inputs, net.dense(net.gap(net.conv(inputs))))  # the very same layer objects
    np.testing.assert_allclose(explain(net, x, method, targets=1), explain(twin, x, method, targets=1), atol=1e-6)
    assert get_method(net, method).layer.path.endswith("conv")


# ------------------------------------------------------------------------------------------------- no stale weights
@pytest.mark.parametrize("method", ["guided-backprop", "guided-gradcam", "cam", "gradcam"])
def test_maps_follow_new_weights(small, method):
    nested = keras.models.clone_model(small[0])  # its own weights, changed below
    images = _images((24, 20, 3), 2)
    before = explain(nested, images, method, 1)
    nested.set_weights(
        [w * np.random.default_rng(i).uniform(0.2, 1.8, w.shape) for i, w in enumerate(nested.get_weights())]
    )
    after = explain(nested, images, method, 1)
    clone = keras.models.clone_model(nested)
    clone.set_weights(nested.get_weights())
    fresh = explain(clone, images, method, 1)  # a model never explained before: nothing cached
    assert not np.allclose(before, after, atol=1e-3)
    np.testing.assert_allclose(after, fresh, atol=1e-5)


# ------------------------------------------------------------------------------------------- keras.applications
# Families with random weights (no pretrained weights offline) at small inputs. Each family: nested in a Sequential
# (MobileNetV2, DenseNet121, ConvNeXtTiny) or in a functional model as the Keras guide writes it (ResNet50,
# EfficientNetB0), maps equal to the flat twin's; the applications' own flat classifiers too.
APPLICATIONS = {
    "MobileNetV2": (lambda s: keras.applications.MobileNetV2(input_shape=s, include_top=False, weights=None), 96),
    "ResNet50": (lambda s: keras.applications.ResNet50(input_shape=s, include_top=False, weights=None), 64),
    "EfficientNetB0": (lambda s: keras.applications.EfficientNetB0(input_shape=s, include_top=False, weights=None), 64),
    "DenseNet121": (lambda s: keras.applications.DenseNet121(input_shape=s, include_top=False, weights=None), 64),
    "ConvNeXtTiny": (lambda s: keras.applications.ConvNeXtTiny(input_shape=s, include_top=False, weights=None), 64),
}
NESTED_BY_FUNCTIONAL = {"ResNet50", "EfficientNetB0"}


@pytest.fixture(scope="module")
def applications():
    built = {}

    def get(name):
        if name not in built:
            keras.utils.set_random_seed(0)
            make, size = APPLICATIONS[name]
            base = make((size, size, 3))
            built[name] = (*_nest(base, _head(), functional=name in NESTED_BY_FUNCTIONAL), (size, size, 3))
        return built[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("name", list(APPLICATIONS))
def test_keras_applications_nested_give_their_flat_twins_maps(applications, name):
    nested, twin, to_twin, shape = applications(name)
    methods = FAST if name == "MobileNetV2" else ["cam", "gradcam"]  # every fast method on one family: traces cost
    for method in methods:
        _assert_same_maps(nested, twin, to_twin, _images(shape, 2), method)


@pytest.mark.slow
def test_a_layer_deep_inside_an_application_by_path(applications):
    nested, twin, to_twin, shape = applications("MobileNetV2")
    path = "mobilenetv2_1.00_96/block_13_expand_relu"
    assert get_method(nested, "gradcam", path).layer.shape == (None, 6, 6, 576)
    images = _images(shape, 2)
    _assert_same_maps(nested, twin, to_twin, images, "gradcam", layer=path, twin_layer="block_13_expand_relu")


@pytest.mark.slow
def test_flat_applications_cam_through_dropout_and_refused_at_layer_norm():
    keras.utils.set_random_seed(0)
    images = _images((64, 64, 3), 2)
    # EfficientNetB0's top: GAP -> Dropout -> Dense(softmax): CAM folds the dropout, and equals cells x Grad-CAM
    efficient = keras.applications.EfficientNetB0(input_shape=(64, 64, 3), weights=None, classes=4)
    _, cam = explain(efficient, images, "cam", [0, 3], raw=True)
    _, grad = explain(efficient, images, "gradcam", [0, 3], raw=True)
    assert cam.shape == (2, 2, 2) and cam.max() > 0
    np.testing.assert_allclose(cam, grad * 4, rtol=1e-3, atol=1e-6 * cam.max())
    # ConvNeXtTiny's top: GAP -> LayerNormalization -> Dense: not linear, and the refusal names the layer
    convnext = keras.applications.ConvNeXtTiny(input_shape=(64, 64, 3), weights=None, classes=4)
    with pytest.raises(UserError, match=r"layer 'convnext_tiny_head_layernorm' \(LayerNormalization\) is not"):
        explain(convnext, images, "cam")
    assert explain(convnext, images, "gradcam").shape == (2, 64, 64)
