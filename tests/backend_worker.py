"""Run under one Keras backend in its own process (``KERAS_BACKEND`` is fixed when Keras is imported): the maps of
every method of the registry for models saved under TensorFlow, so that tests/test_backends.py can hold them equal
to TensorFlow's; and pytorch-grad-cam beside ours on the very same model (torch only).

    KERAS_BACKEND=jax python tests/backend_worker.py maps CASES.json OUT.npz
    KERAS_BACKEND=torch python tests/backend_worker.py grad-cam OUT.json
    KERAS_BACKEND=jax python tests/backend_worker.py fit FOLDER
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import numpy as np

# Few samples in the random methods: what is compared is the same computation on each backend, not its quality.
OPTIONS = {"rise": {"masks": 48}, "smoothgrad": {"samples": 4}, "integrated-gradients": {"steps": 8}}
OPTIONS["fem"] = {"k": 1.0}  # MobileNetV2's 2 x 2 map: no cell of 4 is 2 standard deviations above their mean


def all_maps(cases_file: str, out_file: str) -> None:
    """cases: [{"name", "model" (a .keras file), "images" (a .npy file), "layer" (or null), "methods" (or null:
    every one)}]: each method's maps of the predicted class, the classes explained and the default layer's path."""
    import keras
    import keras_hub  # noqa: F401 - registers its layers, so that its models load

    from cam_mnist.maps.explainer import METHODS, default_layer, explain
    from cam_mnist.maps.segmentation import segment

    out = {"backend": np.array(keras.backend.backend())}
    for case in json.loads(open(cases_file).read()):
        model = keras.models.load_model(case["model"])
        images = np.load(case["images"])
        name, layer = case["name"], case["layer"]
        out[f"{name}/default_layer"] = np.array(default_layer(model))
        for method in case.get("methods") or METHODS:
            options = OPTIONS.get(method, {})
            maps, classes = explain(model, images, method, layer=layer, return_targets=True, **options)
            out[f"{name}/{method}"], out[f"{name}/{method}/classes"] = maps, classes
        out[f"{name}/segment"] = segment(images, out[f"{name}/cam" if "cam_mnist" in name else f"{name}/gradcam"])
    np.savez(out_file, **out)


CLASSES = [1, 2, 3]  # the class explained in each of the three images


def _comparison_model():
    """(model, its input, the output of its conv layer c2): c2 -> GAP beside two side branches whose layers the
    conventions of theirs need -- a conv of the input's size (Score-CAM) and c2 centred over its cells (Eigen-CAM),
    whose GAP is 0 and so changes no score."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((24, 24, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(inputs)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Conv2D(16, 3, activation="relu", name="c2")(x)
    same = keras.layers.Conv2D(6, 3, padding="same", name="same_size")(inputs)
    centred = keras.layers.Lambda(lambda a: a - keras.ops.mean(a, (1, 2), keepdims=True), name="centred")(x)
    pooled = [keras.layers.GlobalAveragePooling2D()(a) for a in (x, same, centred)]
    return keras.Model(inputs, keras.layers.Dense(4, name="logits")(keras.layers.Concatenate()(pooled))), inputs, x


def grad_cam(out_file: str) -> None:
    """pytorch-grad-cam's maps and ours on one Keras model under PyTorch, where it is a ``torch.nn.Module``: their
    hooks on its Keras layer, its weights. Writes {method: (their maps, our maps...)} as lists to ``out_file``."""
    import pytorch_grad_cam as pgc
    import torch
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from cam_mnist.maps.explainer import explain

    model, inputs, c2 = _comparison_model()
    images = np.random.default_rng(0).random((3, 24, 24, 3)).astype(np.float32)
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2)  # theirs resize to input_tensor.size(-1), size(-2)

    class ChannelsFirst(torch.nn.Module):  # their input layout (N, C, H, W) in, the Keras model's (N, H, W, C)
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x.permute(0, 2, 3, 1))

    def theirs(cls, layer, targets=None):
        to_nchw = lambda a: a.permute(0, 3, 1, 2)  # noqa: E731 - their reshape_transform: activations (B, K, h, w)
        cam = cls(model=ChannelsFirst(model), target_layers=[model.get_layer(layer)], reshape_transform=to_nchw)
        return cam(input_tensor=nchw, targets=targets or [ClassifierOutputTarget(c) for c in CLASSES])

    ours = lambda method, layer: explain(model, images, method, targets=np.array(CLASSES), layer=layer)  # noqa: E731
    out = {}
    for cls, method in [(pgc.GradCAM, "gradcam"), (pgc.XGradCAM, "xgradcam"), (pgc.LayerCAM, "layercam")]:
        out[method] = (theirs(cls, "c2"), ours(method, "c2"))
    out["hirescam"] = (theirs(pgc.HiResCAM, "c2"), ours("hirescam", "c2"))
    out["gradcam++"] = (theirs(_alpha_summing_to_one(pgc.GradCAMPlusPlus), "c2"), ours("gradcam++", "c2"))
    out["gradcam++ (their alpha)"] = (theirs(pgc.GradCAMPlusPlus, "c2"), ours("gradcam++", "c2"))
    log_p = [_log_probability(c) for c in CLASSES]
    out["scorecam"] = (theirs(pgc.ScoreCAM, "same_size", log_p), ours("scorecam", "same_size"))
    out["eigencam"] = (theirs(pgc.EigenCAM, "centred"), *_either_sign(model, images, "eigencam", "centred"))
    out["ablationcam"] = _ablation_beside_theirs(inputs, c2, images, nchw)
    out |= _pytorch_grad_cams_own(model, images, nchw, theirs, ours)
    Path(out_file).write_text(json.dumps({k: [np.asarray(a).tolist() for a in v] for k, v in out.items()}))


def _pytorch_grad_cams_own(model, images, nchw, theirs, ours) -> dict:
    """The methods and options pytorch-grad-cam has beyond the papers of the first comparisons."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from cam_mnist.maps.explainer import explain

    out = {"gradcam-elementwise": (theirs(pgc.GradCAMElementWise, "c2"), ours("gradcam-elementwise", "c2"))}
    out["eigengradcam"] = (theirs(pgc.EigenGradCAM, "c2"), *_either_sign(model, images, "eigengradcam", "c2"))
    out["fem"] = (theirs(pgc.FEM, "c2"), ours("fem", "c2"))
    out["kpcacam"] = (theirs(pgc.KPCA_CAM, "c2"), *_either_sign(model, images, "kpcacam", "c2"))
    out["shapleycam"] = _shapleycam_beside_theirs(model, images, nchw)
    finer = pgc.FinerCAM(model=_channels_first(model), target_layers=[model.get_layer("c2")], reshape_transform=_nchw)
    out["finercam"] = (finer(nchw), explain(model, images, "finercam", layer="c2"))  # the predicted classes
    targets = [ClassifierOutputTarget(c) for c in CLASSES]
    cam = pgc.GradCAM(model=_channels_first(model), target_layers=[model.get_layer("c2")], reshape_transform=_nchw)
    mine = dict(targets=np.array(CLASSES), layer="c2")
    out["aug_smooth"] = (
        cam(nchw, targets, aug_smooth=True),
        explain(model, images, "gradcam", aug_smooth=True, **mine),
    )
    out["eigen_smooth"] = (
        cam(nchw, targets, eigen_smooth=True),
        *_either_sign(model, images, "gradcam", "c2", eigen_smooth=True),
    )
    both = [model.get_layer("c1"), model.get_layer("c2")]
    several = pgc.GradCAM(model=_channels_first(model), target_layers=both, reshape_transform=_nchw)
    ours_several = explain(model, images, "gradcam", np.array(CLASSES), ["c1", "c2"])
    with _exact_normalisation():  # maps of small values, where their 1e-7 shows: c1's, every bias channel's
        out["layer=[c1, c2]"] = (several(nchw, targets), ours_several)
        out["fullgrad"] = _fullgrad_beside_theirs(images)
    out |= _metrics_beside_theirs(model, images, nchw, explain(model, images, "gradcam", **mine))
    return out


def _shapleycam_beside_theirs(model, images, nchw):
    """Their ShapleyCAM weighs the layer's activations before its reshape_transform and fails on a Keras (B, h, w,
    K) layer: theirs hooks a layer that gives c2 as (B, K, h, w) (the model transposes it back), ours explains c2
    of the same model. Their target is the paper's ReST score, which ours uses."""
    import keras
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST

    from cam_mnist.maps.explainer import explain

    first = keras.layers.Lambda(lambda a: keras.ops.transpose(a, (0, 3, 1, 2)), name="c2_first")
    x = first(model.get_layer("c2").output)
    x = keras.layers.Lambda(lambda a: keras.ops.transpose(a, (0, 2, 3, 1)))(x)
    split = keras.Model(model.inputs, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x)))
    cam = pgc.ShapleyCAM(model=_channels_first(split), target_layers=[first])
    theirs = cam(input_tensor=nchw, targets=[ClassifierOutputReST(c) for c in CLASSES])
    return theirs, explain(split, images, "shapleycam", targets=np.array(CLASSES), layer="c2")


@contextlib.contextmanager
def _exact_normalisation():
    """Their min-max normalisation (``scale_cam_image``) divides by max + 1e-7, which moves a map whose values are
    around 1e-3 by 1e-4; ours divides by the max exactly. For the comparisons of maps of small values, theirs with
    the exact division (0 for a constant map), the rest of their code as it is."""
    import cv2
    import pytorch_grad_cam.base_cam as base_cam
    import pytorch_grad_cam.fullgrad_cam as fullgrad_cam
    import pytorch_grad_cam.utils.image as image

    def exact(cam, target_size=None):
        result = []
        for img in cam:
            img = img - np.min(img)
            img = img / np.max(img) if np.max(img) > 0 else np.zeros_like(img)
            result.append(img if target_size is None else cv2.resize(np.float32(img), target_size))
        return np.float32(result)

    modules = (base_cam, fullgrad_cam, image)
    original = [m.scale_cam_image for m in modules]
    for m in modules:
        m.scale_cam_image = exact
    try:
        yield
    finally:
        for m, f in zip(modules, original, strict=True):
            m.scale_cam_image = f


def _nchw(a):
    """Their reshape_transform: the Keras layer's (B, h, w, K) activations as their (B, K, h, w)."""
    return a.permute(0, 3, 1, 2)


def _channels_first(model):
    """The Keras model as a torch.nn.Module taking their layout (N, C, H, W)."""
    import torch

    class ChannelsFirst(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x.permute(0, 2, 3, 1))

    return ChannelsFirst()


def _fullgrad_beside_theirs(images):
    """Their FullGrad finds torch.nn.Conv2d and BatchNorm2d modules, which a Keras model has none of: the same
    network written in torch, its weights copied from a Keras model's (conv -> ReLU -> batch norm -> pool -> conv
    -> ReLU -> GAP -> linear), theirs on the torch one, ours on the Keras one."""
    import keras
    import pytorch_grad_cam as pgc
    import torch
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from cam_mnist.maps.explainer import explain

    keras.utils.set_random_seed(1)
    inputs = keras.Input((24, 24, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(inputs)
    norm = keras.layers.BatchNormalization(epsilon=1e-3)
    x = keras.layers.MaxPooling2D()(norm(x))
    x = keras.layers.Conv2D(16, 3, activation="relu", name="c2")(x)
    dense = keras.layers.Dense(4)
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(x)))
    rng = np.random.default_rng(2)
    for variable in (norm.gamma, norm.beta, norm.moving_mean):
        variable.assign(rng.normal(0, 0.5, variable.shape).astype(np.float32) + (variable is norm.gamma))
    norm.moving_variance.assign(rng.uniform(0.5, 2, 8).astype(np.float32))
    c1, bn = torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8, eps=1e-3)
    c2, linear = torch.nn.Conv2d(8, 16, 3), torch.nn.Linear(16, 4)
    net = torch.nn.Sequential(
        c1, torch.nn.ReLU(), bn, torch.nn.MaxPool2d(2), c2, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), linear,
    )  # fmt: skip
    value = lambda v: torch.from_numpy(np.array(keras.ops.convert_to_numpy(v)))  # noqa: E731
    with torch.no_grad():
        for conv, name in ((c1, "c1"), (c2, "c2")):
            conv.weight.copy_(value(model.get_layer(name).kernel).permute(3, 2, 0, 1))
            conv.bias.copy_(value(model.get_layer(name).bias))
        bn.weight.copy_(value(norm.gamma)), bn.bias.copy_(value(norm.beta))
        bn.running_mean.copy_(value(norm.moving_mean)), bn.running_var.copy_(value(norm.moving_variance))
        linear.weight.copy_(value(dense.kernel).T), linear.bias.copy_(value(dense.bias))
    net.eval()
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    theirs = pgc.FullGrad(model=net, target_layers=[])(nchw, [ClassifierOutputTarget(c) for c in CLASSES])
    return theirs, explain(model, images, "fullgrad", targets=np.array(CLASSES))


def _metrics_beside_theirs(model, images, nchw, maps) -> dict:
    """ROAD (noise 0: theirs draws torch's random numbers, ours numpy's) and the confidence drop and increase of
    one set of maps, theirs and ours per image, the target the softmax probability of each image's class."""
    import keras
    from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
    from pytorch_grad_cam.metrics.perturbation_confidence import (
        PerturbationConfidenceMetric,
        RemoveLeastRelevantFirst,
        RemoveMostRelevantFirst,
    )
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    from cam_mnist.scoring import localization, road

    net, targets = _channels_first(model), [ClassifierOutputSoftmaxTarget(c) for c in CLASSES]
    predict = lambda x: keras.ops.convert_to_numpy(keras.ops.softmax(model(x)))  # noqa: E731
    out = {}
    for name, remove in (("morf", RemoveMostRelevantFirst), ("lerf", RemoveLeastRelevantFirst)):
        per_percentile = [
            PerturbationConfidenceMetric(remove(p, NoisyLinearImputer(noise=0)))(nchw, maps, targets, net)
            for p in road.PERCENTILES
        ]
        out[f"road_{name}"] = np.mean(per_percentile, axis=0)
    out["road_combined"] = (out["road_lerf"] - out["road_morf"]) / 2
    ours = road.road(predict, images, maps, np.array(CLASSES), noise=0.0)
    result = {f"road_{k}": (out[f"road_{k}"], v) for k, v in ours.items()}
    whole = predict(images)[np.arange(len(images)), CLASSES]
    drop, rise = localization.confidence_changes(predict, images, maps, np.array(CLASSES))
    result["confidence drop"] = (DropInConfidence()(nchw, maps, targets, net), drop * whole)  # theirs: not / Y
    result["confidence increase"] = (IncreaseInConfidence()(nchw, maps, targets, net), rise.astype(np.float32))
    return result


def _alpha_summing_to_one(grad_cam_plus_plus):
    """Their GradCAMPlusPlus with alpha normalised to sum to 1 over the cells, as the authors' code and tf-keras-vis."""

    class AlphaSummingToOne(grad_cam_plus_plus):
        def get_cam_weights(self, input_tensor, target_layers, targets, activations, grads):
            g2 = grads**2
            alpha = g2 / (2 * g2 + activations.sum(axis=(2, 3), keepdims=True) * g2 * grads + 1e-6)
            alpha = np.where(grads != 0, alpha, 0)
            alpha = alpha / np.maximum(alpha.sum(axis=(2, 3), keepdims=True), 1e-12)
            return (np.maximum(grads, 0) * alpha).sum(axis=(2, 3))

    return AlphaSummingToOne


def _log_probability(index: int):
    """Their Score-CAM softmaxes the target's scores over channels: of log p^c, that is p^c / sum_k p^c(k)."""
    import torch

    return lambda output: torch.log_softmax(output, -1)[index]


def _either_sign(model, images, method, layer, **options):
    """Our map for either sign of a principal component (arbitrary in an SVD; theirs keeps numpy's): the signed
    map before the ReLU, times 1 and -1, each ReLU'd, upsampled and normalised as the pipeline does."""
    import keras

    from cam_mnist.maps.explainer import get_method
    from cam_mnist.maps.grids import upsample

    tensors = [keras.ops.convert_to_tensor(a) for a in (images, np.array(CLASSES, np.int32))]
    signed = get_method(model, method, layer, **options).signed_maps(*tensors)[0]  # (B, h, w) before the ReLU
    size = images.shape[1:3]
    return [_minmax(keras.ops.convert_to_numpy(upsample(keras.ops.relu(s * signed), size))) for s in (1, -1)]


def _ablation_beside_theirs(inputs, c2, images, nchw):
    """Their AblationCAM swaps a module attribute for its ablation layer, which a Keras graph does not call
    through: the model is split at c2 (its own layers on each side) around a torch.nn.Identity that theirs
    replaces."""
    import keras
    import pytorch_grad_cam as pgc
    import torch
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from cam_mnist.maps.explainer import explain

    plain = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(c2)))

    class Split(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features, self.target = keras.Model(inputs, c2), torch.nn.Identity()

        def forward(self, x):
            a = self.target(self.features(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))  # (B, K, h, w)
            return plain.layers[-1](a.mean((2, 3)))  # GAP, then the model's own Dense

    split = Split()
    cam = pgc.AblationCAM(model=split, target_layers=[split.target])
    theirs = cam(input_tensor=nchw, targets=[ClassifierOutputTarget(c) for c in CLASSES])
    return theirs, explain(plain, images, "ablationcam", targets=np.array(CLASSES), layer="c2")


def fit(folder: str) -> None:
    """``CAMCallback`` in ``model.fit`` on this backend: a small model trained one epoch, its maps drawn every two
    updates. Writes the steps drawn, how much the maps moved between drawings and how far the last drawing is from
    the maps of the trained weights, to ``folder``/fit.json."""
    import keras

    from cam_mnist import CAMCallback
    from cam_mnist.maps.explainer import explain

    keras.utils.set_random_seed(0)
    inputs = keras.Input((24, 24, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    images, labels = rng.random((64, 24, 24, 1)).astype(np.float32), rng.integers(0, 3, 64)
    drawn = Path(folder) / "maps"
    callback = CAMCallback(images[:2], labels[:2], method="cam", every_n_batches=2, folder=drawn)
    model.fit(images, labels, batch_size=8, epochs=1, callbacks=[callback], verbose=0)
    steps = sorted(callback.maps)
    pairs = zip(steps[:-1], steps[1:], strict=True)
    now = explain(model, images[:2], "cam", targets=labels[:2])
    result = {
        "steps": steps,
        "moved": [float(np.abs(callback.maps[a] - callback.maps[b]).max()) for a, b in pairs],
        "last_vs_trained": float(np.abs(callback.maps[steps[-1]] - now).max()),
        "page": (drawn / "index.html").exists(),
    }
    (Path(folder) / "fit.json").write_text(json.dumps(result))


def _minmax(maps: np.ndarray) -> np.ndarray:
    lo = maps.min(axis=(1, 2), keepdims=True)
    return (maps - lo) / np.maximum(maps.max(axis=(1, 2), keepdims=True) - lo, 1e-12)


if __name__ == "__main__":
    task, *args = sys.argv[1:]
    {"maps": all_maps, "grad-cam": grad_cam, "fit": fit}[task](*args)
