"""The models Keras users bring today: keras_hub classifiers and vision transformers (built from their config with
random weights: no preset can be downloaded here), token layers, segmentation, several outputs, regression, a
sigmoid binary head, 1-D signals and 3-D volumes. Each kind's maps are held equal to an independent computation
(by hand, or an equivalent model whose output *is* the score), not just checked for shape."""

import contextlib
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

import cam_mnist
from cam_mnist.core.errors import NotClassScores, OutputNotChosen, UserError
from cam_mnist.maps import METHODS
from cam_mnist.maps.grids import token_layout
from cam_mnist.maps.targets import BoxTarget, RegionTarget, RegressionTarget

keras_hub = pytest.importorskip("keras_hub")  # in requirements-test.txt: skipped only outside `make test`
FEW = {"smoothgrad": {"samples": 4}, "integrated-gradients": {"steps": 4}, "rise": {"masks": 32}}


@pytest.fixture(autouse=True)
def same_weights():
    """Every test builds its models from seed 0, so their random weights are the same whatever ran before in this
    process (a map compared at 1e-5 must not rest on the draw: a nearly flat map's normalisation magnifies rounding)."""
    keras.utils.set_random_seed(0)


@contextlib.contextmanager
def within(seconds: int):
    """Fails the test, instead of hanging it, when the block runs longer than ``seconds``."""

    def late(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, late)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _images(shape, n=2, seed=0):
    return np.random.default_rng(seed).random((n, *shape), np.float32)


def _by_hand(features, weights):
    """CAM by hand: ReLU(sum_k w_k A^k) (B, h, w), resized bilinearly to 32x32 and min-max normalised."""
    cam = tf.nn.relu(tf.einsum("bhwk,bk->bhw", features, weights))
    up = tf.image.resize(cam[..., None], (32, 32), method="bilinear")[..., 0].numpy()
    lo, hi = up.min((1, 2), keepdims=True), up.max((1, 2), keepdims=True)
    return np.divide(up - lo, hi - lo, out=np.zeros_like(up), where=hi > lo)


# ------------------------------------------------------------------------------------ keras_hub, built from config
def _resnet():
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 32],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
        use_pre_activation=False, image_shape=(32, 32, 3),
    )  # fmt: skip
    return keras_hub.models.ResNetImageClassifier(backbone=backbone, num_classes=5)


def _efficientnet():
    backbone = keras_hub.models.EfficientNetBackbone(
        stackwise_kernel_sizes=[3, 3], stackwise_num_repeats=[1, 1], stackwise_input_filters=[8, 8],
        stackwise_output_filters=[8, 16], stackwise_expansion_ratios=[1, 4],
        stackwise_squeeze_and_excite_ratios=[0.0, 0.25], stackwise_strides=[1, 2],
        stackwise_block_types=["fused", "unfused"], stackwise_width_coefficients=[1.0, 1.0],
        stackwise_depth_coefficients=[1.0, 1.0], stackwise_force_input_filters=[0, 0],
        stackwise_nores_option=[False, False], input_shape=(32, 32, 3), num_features=32,
    )  # fmt: skip
    return keras_hub.models.EfficientNetImageClassifier(backbone=backbone, num_classes=5)


def _densenet():
    backbone = keras_hub.models.DenseNetBackbone(stackwise_num_repeats=[1, 1], image_shape=(32, 32, 3), growth_rate=8)
    return keras_hub.models.DenseNetImageClassifier(backbone=backbone, num_classes=5)


def _mobilenet():
    backbone = keras_hub.models.MobileNetBackbone(
        stackwise_expansion=[[16, 16], [32]], stackwise_num_blocks=[2, 1], stackwise_num_filters=[[8, 8], [16]],
        stackwise_kernel_size=[[3, 3], [3]], stackwise_num_strides=[[2, 1], [2]],
        stackwise_se_ratio=[[None, None], [0.25]], stackwise_activation=[["relu", "relu"], ["hard_swish"]],
        stackwise_padding=[[1, 1], [1]], output_num_filters=32, depthwise_filters=8, depthwise_stride=2,
        depthwise_residual=False, last_layer_filter=64, image_shape=(32, 32, 3), input_num_filters=8,
    )  # fmt: skip
    return keras_hub.models.MobileNetImageClassifier(backbone=backbone, num_classes=5)


def _vit():
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32
    )
    return keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=5)


def _deit():
    backbone = keras_hub.models.DeiTBackbone(
        image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32
    )
    return keras_hub.models.DeiTImageClassifier(backbone=backbone, num_classes=5)


def _dinov2():
    # A DINOv2 backbone with 4 register tokens and a linear head on its class token, as users fine-tune it.
    backbone = keras_hub.models.DINOV2Backbone(
        patch_size=8, num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32, num_register_tokens=4,
        image_shape=(32, 32, 3), position_embedding_shape=(32, 32, 3),
    )  # fmt: skip
    images = keras.Input((32, 32, 3))
    return keras.Model(images, keras.layers.Dense(5, name="head")(backbone(images)[:, 0]))


@pytest.mark.parametrize("build", [_resnet, _efficientnet, _densenet])
def test_keras_hub_cnn_classifiers_answer_at_once_with_the_cam_computed_by_hand(build):
    # The hang users met (an alias of a backbone's input to itself) is gone; the CAM is the backbone's features
    # weighed by the classifier's Dense, as computed here without the toolkit.
    model, x = build(), _images((32, 32, 3), 3)
    with within(60):
        maps, classes = cam_mnist.explain(model, x, "cam", return_targets=True)
    features = model.backbone(x)
    kernel = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][-1].kernel
    np.testing.assert_allclose(maps, _by_hand(features, tf.gather(kernel, classes, axis=1).numpy().T), atol=2e-5)


def test_keras_hub_mobilenet_default_layer_is_one_whose_map_has_cells():
    # Its head pools, then convolves: the last 4-D layer is 1 x 1, whose map is constant. The default skips it.
    model = _mobilenet()
    with within(60):
        explainer = cam_mnist.maps.get_method(model, "gradcam")
        maps = cam_mnist.explain(model, _images((32, 32, 3)), "gradcam")
    assert np.prod(explainer.layer.shape[1:3]) > 1, explainer.layer.path
    assert cam_mnist.maps.default_layer(model) == explainer.layer.path != cam_mnist.maps.candidate_layers(model)[-1][0]
    assert maps.std() > 0


def test_keras_hub_vit_gradcam_at_the_last_blocks_first_norm_equals_the_computation_by_hand():
    # pytorch-grad-cam's advice for ViTs: the last block's first norm, reached inside keras_hub's ViTEncoder (one
    # layer running every block) by a hook. Here the same block is run by hand with a tape on that norm's output.
    model, x = _vit(), _images((32, 32, 3))
    with within(60):
        explainer = cam_mnist.maps.get_method(model, "gradcam")
        maps, classes = cam_mnist.explain(model, x, "gradcam", return_targets=True)
    assert explainer.layer.path == f"{model.backbone.name}/vit_encoder/transformer_block_2/ln_1"
    listed = [path for path, _, _ in cam_mnist.maps.candidate_layers(model)]  # what `layers` prints
    assert explainer.layer.path in listed and cam_mnist.maps.default_layer(model) == explainer.layer.path
    backbone = model.backbone
    encoder = backbone.get_layer("vit_encoder")
    h = encoder.encoder_layers[0](encoder.dropout(backbone.get_layer("vit_patching_and_embedding")(x)))
    block = encoder.encoder_layers[1]
    with tf.GradientTape() as tape:
        a = block.layer_norm_1(h)  # (B, 1 + 16, C): the class token, then 4 x 4 patches
        tape.watch(a)
        y = block.dropout(block.mha(a, a)) + h
        y = encoder.layer_norm(y + block.mlp(block.layer_norm_2(y)))
        score = tf.gather(model.get_layer("predictions")(y[:, 0]), classes, batch_dims=1)
    grads = tf.reshape(tape.gradient(score, a)[:, 1:], (-1, 4, 4, a.shape[-1]))
    features = tf.reshape(a[:, 1:], (-1, 4, 4, a.shape[-1]))
    np.testing.assert_allclose(maps, _by_hand(features, tf.reduce_mean(grads, (1, 2)).numpy()), atol=2e-5)


@pytest.mark.parametrize(
    "build, extra, methods",
    [
        (_vit, 1, list(METHODS)),
        (_deit, 2, ["gradcam", "eigencam", "ablationcam"]),
        (_dinov2, 5, ["gradcam", "scorecam"]),
    ],
)
def test_every_method_on_keras_hub_transformers_within_seconds(build, extra, methods):
    # Class, distillation and register tokens are dropped from the grid; every method of the registry answers on
    # the ViT, CAM by its own refusal (a ViT has no GAP -> linear head over its patch tokens); a few on the others.
    model, x = build(), _images((32, 32, 3))
    with within(240):
        explainer = cam_mnist.maps.get_method(model, "gradcam")
        assert (explainer.grid.extra, explainer.grid.h, explainer.grid.w) == (extra, 4, 4)
        for method in methods:
            if method == "cam":
                with pytest.raises(UserError, match="GlobalAveragePooling"):
                    cam_mnist.explain(model, x, method)
                continue
            maps = cam_mnist.explain(model, x, method, **FEW.get(method, {}))
            assert maps.shape == (2, 32, 32) and np.isfinite(maps).all(), method


# ----------------------------------------------------------------------------------------------------------- tokens
def _token_model(composite: bool):
    """A small ViT-like model over 4 x 4 patch tokens, its attention block either as graph layers or inside one
    composite layer that calls the same layer objects (so both share every weight)."""
    norm, attention, dense = (
        keras.layers.LayerNormalization(name="norm1"),
        keras.layers.MultiHeadAttention(2, 8, name="attention"),
        keras.layers.Dense(5, name="logits"),
    )
    images = keras.Input((32, 32, 3))
    patches = keras.layers.Conv2D(16, 8, strides=8, name="patch_embedding")(images)  # (B, 4, 4, 16)
    tokens = keras.layers.Reshape((16, 16), name="tokens")(patches)  # (B, 16 tokens, 16)
    if composite:

        class Block(keras.layers.Layer):
            def __init__(self):
                super().__init__(name="block")
                self.norm, self.attention = norm, attention

            def call(self, x):
                y = self.norm(x)
                return x + self.attention(y, y)

        out = Block()(tokens)
    else:
        y = norm(tokens)
        out = keras.layers.Add(name="residual")([tokens, attention(y, y)])
    model = keras.Model(images, dense(keras.layers.GlobalAveragePooling1D(name="pool")(out)))
    return model


@pytest.fixture(scope="module")
def token_models():
    flat = _token_model(composite=False)
    composite = _token_model(composite=True)
    composite.set_weights(flat.get_weights())
    return flat, composite


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam", "eigencam", "ablationcam", "scorecam"])
def test_a_layer_inside_a_composite_layer_gives_the_flat_graphs_maps(token_models, method):
    flat, composite = token_models
    x = _images((32, 32, 3), 3)
    assert cam_mnist.maps.get_method(flat, "gradcam").layer.path == "norm1"  # the default: attention's input
    assert cam_mnist.maps.get_method(composite, "gradcam").layer.path == "block/norm1"
    np.testing.assert_allclose(
        cam_mnist.explain(composite, x, method, targets=2), cam_mnist.explain(flat, x, method, targets=2), atol=2e-5
    )


def test_a_token_layer_made_by_reshape_gives_the_conv_layers_maps(token_models):
    # The tokens are the patch conv's output row by row: the map on the inferred 4 x 4 grid is the conv's map.
    flat, _ = token_models
    x = _images((32, 32, 3), 3)
    for method in ("gradcam", "hirescam", "eigencam"):
        on_tokens = cam_mnist.explain(flat, x, method, layer="tokens", targets=1)
        on_conv = cam_mnist.explain(flat, x, method, layer="patch_embedding", targets=1)
        np.testing.assert_allclose(on_tokens, on_conv, atol=1e-6)
    # reshape= does by hand what the inference does: the same maps
    by_hand = cam_mnist.explain(
        flat, x, "gradcam", layer="tokens", targets=1, reshape=lambda t: keras.ops.reshape(t, (-1, 4, 4, 16))
    )
    np.testing.assert_allclose(by_hand, cam_mnist.explain(flat, x, "gradcam", layer="tokens", targets=1), atol=1e-6)


def test_the_token_layout_is_inferred_from_the_count_and_the_aspect_ratio():
    assert token_layout(197, (224, 224)) == (1, 14, 14)  # ViT-B/16: a class token
    assert token_layout(198, (224, 224)) == (2, 14, 14)  # DeiT: class and distillation tokens
    assert token_layout(261, (224, 224)) == (5, 16, 16)  # DINOv2/14 with 4 registers
    assert token_layout(33, (32, 64)) == (1, 4, 8)  # a wide image: 4 rows of 8
    with pytest.raises(UserError, match="reshape="):
        token_layout(1, (32, 64))  # one token cannot lie on a grid twice as wide as high


# ---------------------------------------------------------------------------------------------------------- targets
def _conv(x, name="conv"):
    return keras.layers.Conv2D(6, 3, padding="same", activation="relu", name=name)(x)


def test_a_segmentation_region_equals_a_model_whose_output_is_that_sum():
    images = keras.Input((16, 16, 3))
    positive = keras.initializers.RandomUniform(0.0, 1.0, seed=0)  # a region score that grows with the features
    pixel_logits = keras.layers.Conv2D(4, 1, kernel_initializer=positive, name="pixel_logits")
    segmentation = keras.Model(images, pixel_logits(_conv(images)))
    x = _images((16, 16, 3), 3)
    with pytest.raises(NotClassScores, match=r"gives \(None, 16, 16, 4\), not class scores.*RegionTarget"):
        cam_mnist.explain(segmentation, x, "gradcam")
    mask = np.zeros((16, 16), bool)
    mask[4:9, 5:12] = True
    summed = keras.layers.Lambda(lambda y: keras.ops.sum(y[..., 2] * mask.astype("float32"), axis=(1, 2))[:, None])
    region_model = keras.Model(images, summed(segmentation.output))
    for method in ("gradcam", "layercam", "ablationcam"):
        maps = cam_mnist.explain(segmentation, x, method, targets=RegionTarget(2, mask), layer="conv")
        assert maps.std() > 0.05, method
        np.testing.assert_allclose(maps, cam_mnist.explain(region_model, x, method, layer="conv"), atol=1e-5)


def test_a_model_with_two_outputs_must_be_told_which():
    images = keras.Input((16, 16, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(_conv(images))
    cls, value = keras.layers.Dense(3, name="cls")(pooled), keras.layers.Dense(1, name="value")(pooled)
    two = keras.Model(images, {"class": cls, "value": value})
    x = _images((16, 16, 3), 3)
    with pytest.raises(OutputNotChosen, match=r"has 2 outputs \(class, value\): say which"):
        cam_mnist.explain(two, x, "gradcam")
    with pytest.raises(UserError, match="has no output 'nope'"):
        cam_mnist.explain(two, x, "gradcam", output="nope")
    alone = keras.Model(images, cls)
    for method in ("cam", "gradcam"):
        np.testing.assert_allclose(
            cam_mnist.explain(two, x, method, output="class", targets=1), cam_mnist.explain(alone, x, method, targets=1)
        )
    # a regression output and its negative: the value's map, and the map of what makes it smaller
    value_model = keras.Model(images, value)
    up = cam_mnist.explain(two, x, "gradcam", targets=RegressionTarget(output="value"))
    down = cam_mnist.explain(two, x, "gradcam", targets=RegressionTarget(sign=-1, output="value"))
    np.testing.assert_allclose(up, cam_mnist.explain(value_model, x, "gradcam"), atol=1e-6)
    np.testing.assert_allclose(down, cam_mnist.explain(value_model, x, "gradcam", targets=lambda v: -v[:, 0]))


def test_a_sigmoid_binary_classifier_explains_both_classes_and_cam_folds_the_sigmoid():
    images = keras.Input((16, 16, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(_conv(images))
    binary = keras.Model(images, keras.layers.Dense(1, activation="sigmoid", name="p")(pooled))
    logit = keras.Model(images, keras.layers.Dense(1, name="z")(pooled))
    logit.get_layer("z").set_weights(binary.get_layer("p").get_weights())
    x = _images((16, 16, 3), 4)
    _, classes = cam_mnist.explain(binary, x, "cam", return_targets=True)
    np.testing.assert_array_equal(classes, (np.asarray(binary(x))[:, 0] > 0.5).astype(int))
    np.testing.assert_allclose(
        cam_mnist.explain(binary, x, "cam", targets=1), cam_mnist.explain(logit, x, "gradcam", targets=0), atol=1e-5
    )
    np.testing.assert_allclose(
        cam_mnist.explain(binary, x, "cam", targets=0),
        cam_mnist.explain(logit, x, "gradcam", targets=lambda z: -z[:, 0]),
        atol=1e-5,
    )


def test_a_detector_box_target_reads_the_best_matching_boxes_score():
    # A toy detector: 4 fixed boxes (the quadrants) each scored from its quadrant of the feature map.
    images = keras.Input((16, 16, 3))
    features = _conv(images)
    quadrants = [features[:, r : r + 8, c : c + 8] for r in (0, 8) for c in (0, 8)]
    dense = keras.layers.Dense(2, name="box_logits")
    scores = keras.ops.stack([dense(keras.ops.mean(q, axis=(1, 2))) for q in quadrants], axis=1)  # (B, 4, 2)
    corners = np.array([[r, c, r + 8, c + 8] for r in (0, 8) for c in (0, 8)], np.float32)
    boxes = keras.layers.Lambda(lambda s: keras.ops.broadcast_to(corners, (keras.ops.shape(s)[0], 4, 4)))(scores)
    detector = keras.Model(images, {"boxes": boxes, "scores": scores})
    x = _images((16, 16, 3), 2)
    maps = cam_mnist.explain(detector, x, "gradcam", targets=BoxTarget((9, 1, 15, 7), 1), layer="conv")
    lower_left = keras.Model(images, scores[:, 2, 1:])  # the box (8, 0, 16, 8) matches best
    np.testing.assert_allclose(maps, cam_mnist.explain(lower_left, x, "gradcam", layer="conv"), atol=1e-6)


# ------------------------------------------------------------------------------------------------ 1-D and 3-D inputs
def test_a_signal_classifier_gets_its_cam_over_time_computed_by_hand():
    signals = keras.Input((64, 2))
    h = keras.layers.Conv1D(8, 5, padding="same", activation="relu", name="c1")(signals)
    h = keras.layers.Conv1D(6, 3, strides=2, padding="same", activation="relu", name="c2")(h)
    model = keras.Model(signals, keras.layers.Dense(3, name="out")(keras.layers.GlobalAveragePooling1D()(h)))
    x = _images((64, 2), 4)
    maps, classes = cam_mnist.explain(model, x, "cam", return_targets=True)
    features = keras.Model(model.input, model.get_layer("c2").output)(x)  # (B, 32, 6)
    cam = tf.nn.relu(tf.einsum("btk,kb->bt", features, tf.gather(model.get_layer("out").kernel, classes, axis=1)))
    up = tf.image.resize(cam[:, None, :, None], (1, 64), method="bilinear").numpy()[:, 0, :, 0]
    up = (up - up.min(1, keepdims=True)) / (up.max(1, keepdims=True) - up.min(1, keepdims=True))
    np.testing.assert_allclose(maps, up, atol=1e-5)
    assert cam_mnist.explain(model, x, "gradcam").shape == (4, 64)
    with pytest.raises(UserError, match="Occlusion is made for image inputs, not \\(64, 2\\)"):
        cam_mnist.explain(model, x, "occlusion")


def test_a_volume_classifier_gets_its_map_over_the_volume_computed_by_hand():
    volumes = keras.Input((8, 12, 12, 1))
    h = keras.layers.Conv3D(5, 3, strides=2, padding="same", activation="relu", name="v")(volumes)  # (B, 4, 6, 6, 5)
    model = keras.Model(volumes, keras.layers.Dense(3, name="out")(keras.layers.GlobalAveragePooling3D()(h)))
    x = _images((8, 12, 12, 1), 2)
    maps, classes = cam_mnist.explain(model, x, "cam", return_targets=True)
    features = keras.Model(model.input, model.get_layer("v").output)(x)
    cam = tf.nn.relu(tf.einsum("bdhwk,kb->bdhw", features, tf.gather(model.get_layer("out").kernel, classes, axis=1)))
    # trilinear, as separable linear resizes: each depth slice's (h, w), then the depth
    up = tf.image.resize(tf.reshape(cam, (-1, 6, 6, 1)), (12, 12), method="bilinear")  # (B*4, 12, 12, 1)
    up = tf.image.resize(tf.reshape(up, (2, 4, 144, 1)), (8, 144), method="bilinear")  # depth 4 -> 8
    up = tf.reshape(up, (2, 8, 12, 12)).numpy()
    lo, hi = up.min((1, 2, 3), keepdims=True), up.max((1, 2, 3), keepdims=True)
    np.testing.assert_allclose(maps, (up - lo) / (hi - lo), atol=1e-5)
    assert cam_mnist.explain(model, x, "gradcam").shape == (2, 8, 12, 12)
    with pytest.raises(UserError, match="ScoreCAM is made for image and signal inputs"):
        cam_mnist.explain(model, x, "scorecam")


def test_the_command_line_explains_a_region_and_a_chosen_output(tmp_path, run_cli):
    from PIL import Image

    images = keras.Input((32, 32, 3))
    features = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv")(images)
    keras.Model(images, keras.layers.Conv2D(3, 1, activation="softmax", name="seg")(features)).save(
        tmp_path / "seg.keras"
    )
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    heads = {"cls": keras.layers.Dense(4, activation="softmax")(pooled), "val": keras.layers.Dense(1)(pooled)}
    keras.Model(images, heads).save(tmp_path / "two.keras")
    picture = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    Image.fromarray(picture).save(tmp_path / "pic.png")
    x = picture[None].astype(np.float32) / 255
    common = ["--invert", "no", "--no-pictures"]

    result = run_cli("explain", tmp_path / "pic.png", "--model", tmp_path / "seg.keras", *common)
    assert result.returncode == 2 and "--class C --region Y0 X0 Y1 X1" in result.stderr, result.stderr
    out = tmp_path / "region"
    region = ["--class", "1", "--region", "4", "6", "20", "24", "--method", "gradcam", "--out", out]
    result = run_cli("explain", tmp_path / "pic.png", "--model", tmp_path / "seg.keras", *region, *common)
    assert result.returncode == 0, result.stderr
    mask = np.zeros((32, 32), np.float32)
    mask[4:20, 6:24] = 1
    segmentation = keras.models.load_model(tmp_path / "seg.keras")
    expected = cam_mnist.explain(segmentation, x, "gradcam", targets=RegionTarget(1, mask))
    np.testing.assert_allclose(np.load(out / "maps_gradcam.npy")[:, 0], expected, atol=1e-3)  # stored in float16

    result = run_cli("explain", tmp_path / "pic.png", "--model", tmp_path / "two.keras", *common)
    assert result.returncode == 2 and "--output NAME" in result.stderr, result.stderr
    out = tmp_path / "output"
    chosen = ["--output", "cls", "--method", "cam", "--out", out]
    result = run_cli("explain", tmp_path / "pic.png", "--model", tmp_path / "two.keras", *chosen, *common)
    assert result.returncode == 0, result.stderr
    two = keras.models.load_model(tmp_path / "two.keras")
    expected = cam_mnist.explain(two, x, "cam", output="cls")
    np.testing.assert_allclose(np.load(out / "maps_cam.npy")[:, 0], expected, atol=1e-3)


def test_the_examples_of_docs_keras_md_run(repo_root):
    # Every Python block of docs/keras.md's section on today's models runs as written (its asserts included).
    text = (repo_root / "docs" / "keras.md").read_text()
    section = text[text.index("## The models Keras users bring today") :]
    blocks = section.split("```python\n")[1:]
    assert len(blocks) == 5
    for block in blocks:
        exec(compile(block[: block.index("```")], "docs/keras.md", "exec"), {})
