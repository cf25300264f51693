"""`make bench`, per Keras backend: the fast methods' maps/s as a share of that backend's own forward pass, on the
trained run's model and on a nested MobileNetV2 at 224 x 224; on PyTorch also pytorch-grad-cam's GradCAM beside
ours, on the same model object and batches, timed in turn (:func:`cam_mnist.reports.timing.paired_rates`).

Each backend runs in its own process (``KERAS_BACKEND`` is read when Keras is imported)::

    KERAS_BACKEND=jax python -m cam_mnist.reports.bench_backends MODEL.keras IMAGES.npy OUT.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

FAST = ("cam", "gradcam", "gradcam++", "layercam", "hirescam", "xgradcam", "eigencam")
BACKENDS = ("tensorflow", "jax", "torch")


def measure(model_path: str, images_path: str, out: str) -> None:
    """This process's backend: the fast methods beside its forward pass on the run's model and on MobileNetV2, and
    on PyTorch pytorch-grad-cam's GradCAM beside ours, written to ``out`` (JSON)."""
    import keras

    from cam_mnist.reports.timing import beside_the_forward_pass

    name = keras.backend.backend()
    model, images = keras.models.load_model(model_path), np.load(images_path)
    result = {
        "backend": name,
        "version": _version(name),
        "run_model": beside_the_forward_pass(model, FAST, images, 128, name),
    }
    mobilenet = nested_mobilenet(224)
    pictures = np.random.default_rng(0).uniform(0, 255, (48, 224, 224, 3)).astype("float32")
    result["mobilenet"] = beside_the_forward_pass(mobilenet, ("cam", "gradcam"), pictures, 16, f"{name} MobileNetV2")
    if name == "torch":
        result["grad_cam"] = [
            _theirs_beside_ours(model, images, "cam_features", 128),
            _theirs_beside_ours(mobilenet, pictures, "mobilenetv2_1.00_224/out_relu", 16),
        ]
    Path(out).write_text(json.dumps(result, indent=2))


def _version(name: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(name)  # each backend's package is named as the backend


def nested_mobilenet(size: int):
    """MobileNetV2 (random weights) nested in a Sequential as the Keras transfer-learning guide builds it, on
    ``size`` x ``size`` x 3 images in [0, 255]."""
    import keras

    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False, weights=None)
    return keras.Sequential(
        [
            keras.Input((size, size, 3)),
            keras.layers.Rescaling(1 / 127.5, offset=-1),  # MobileNetV2's preprocessing
            base,
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(10),
        ]
    )


def _theirs_beside_ours(model, images, layer: str, batch: int) -> dict:
    """pytorch-grad-cam's GradCAM and ours on the same model, layer and batches, timed in turn: each one forward
    and one backward pass to the layer."""
    import torch
    from pytorch_grad_cam import GradCAM

    from cam_mnist.maps import get_method
    from cam_mnist.reports.timing import paired_rates

    class ChannelsFirst(torch.nn.Module):  # their (N, C, H, W) in, the Keras model's (N, H, W, C)
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x.permute(0, 2, 3, 1))

    ours = get_method(model, "gradcam", layer, batch_size=batch)
    target = ours.layer.layer
    # Their reshape_transform gives their (B, K, h, w), in float32: they read activations through numpy, which has no
    # bfloat16 (a mixed-precision model's).
    cam = GradCAM(ChannelsFirst(), [target], reshape_transform=lambda a: a.permute(0, 3, 1, 2).float())

    def theirs(x):  # targets None: the predicted class, as ours, from their own forward pass
        return cam(torch.from_numpy(x).permute(0, 3, 1, 2), None)

    batches = [images[lo : lo + batch] for lo in range(0, len(images) - len(images) % batch, batch)]
    their_rate, our_rate = paired_rates(theirs, ours, batches)
    return {
        "model": model.name,
        "layer": ours.layer.path,
        "images": sum(len(b) for b in batches),
        "theirs_maps_per_s": round(their_rate, 1),
        "ours_maps_per_s": round(our_rate, 1),
        "speedup": round(our_rate / their_rate, 2),
    }


def run_all(model_path: Path, images: np.ndarray) -> dict:
    """Every backend in its own process; a backend that is not installed is reported as such, not measured."""
    with tempfile.TemporaryDirectory() as folder:
        return _run_all(model_path, images, Path(folder))


def _run_all(model_path: Path, images: np.ndarray, folder: Path) -> dict:
    np.save(folder / "images.npy", images)
    out = {}
    for name in BACKENDS:
        print(f"backend {name}:", flush=True)
        target = folder / f"{name}.json"
        env = {**os.environ, "KERAS_BACKEND": name, "TF_CPP_MIN_LOG_LEVEL": "2"}
        args = [sys.executable, "-m", "cam_mnist.reports.bench_backends", str(model_path), str(folder / "images.npy")]
        done = subprocess.run([*args, str(target)], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            out[name] = {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
            print(f"  {out[name]['error']}", flush=True)
            continue
        out[name] = json.loads(target.read_text())
        print(done.stdout, end="", flush=True)
    return out


def to_markdown(results: dict) -> list[str]:
    from cam_mnist.core.tables import markdown_table

    lines, header = [], ["backend", "model", "forward img/s", *FAST]
    rows = []
    for name, r in results.items():
        if "error" in r:
            rows.append([name, f"not measured: {r['error']}", "", *[""] * len(FAST)])
            continue
        for label, key in (("run's model", "run_model"), ("MobileNetV2 224", "mobilenet")):
            share = {row["method"]: f"{row['share_of_forward']:.0%}" for row in r[key]}
            forward = max(row["forward_beside"] for row in r[key])
            rows.append([f"{name} {r['version']}", label, f"{forward:.0f}", *[share.get(m, "") for m in FAST]])
    lines += ["Maps/s as a share of each backend's own forward pass (batch 128; MobileNetV2 batch 16):", ""]
    lines += [markdown_table(header, rows), ""]
    theirs = results.get("torch", {}).get("grad_cam", [])
    if theirs:
        lines += ["GradCAM on PyTorch, the same model and batches: pytorch-grad-cam 1.5.7 and ours:", ""]
        table = [
            [t["model"], t["layer"], t["theirs_maps_per_s"], t["ours_maps_per_s"], f"{t['speedup']}x"] for t in theirs
        ]
        lines += [markdown_table(["model", "layer", "theirs maps/s", "ours maps/s", "ours / theirs"], table), ""]
    return lines


if __name__ == "__main__":
    measure(*sys.argv[1:])
