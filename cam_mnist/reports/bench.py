"""`make bench`: speed measurements of the machine it runs on, written to bench/results.json and bench/results.md.

1. float32 matmul peak (GFLOP/s) of this CPU through TensorFlow: the yardstick for the training numbers;
2. training throughput (images/s) of each preset's network, and the share of that peak it reaches
   (training FLOPs = 3 x forward FLOPs: one forward, two backward matmul-equivalents);
3. maps per second of every CAM-family method on a trained model, beside the model's own forward-pass rate (the
   floor for any method that needs one pass), and of tf-keras-vis 0.8.7's Gradcam and GradcamPlusPlus on the same
   model and images, with the correlation of their maps with ours.

Usage: python -m cam_mnist bench [--run-dir out/<run>] [--images 10000] [--slow-images 500]  (``make bench``)
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cam_mnist import config as cfg
from cam_mnist.core.cpu import cpu_name
from cam_mnist.core.errors import UserError
from cam_mnist.core.runs import LATEST, OUT, RunFolder, run_dir_or_latest
from cam_mnist.core.tables import markdown_table
from cam_mnist.data.splits import load_split
from cam_mnist.maps import get_method, registry
from cam_mnist.model import build_model, logits_model
from cam_mnist.reports import bench_backends, bench_memory
from cam_mnist.reports.bench_memory import to_markdown as memory_markdown
from cam_mnist.reports.timing import beside_the_forward_pass, best_of, forward_pass, paired_rates
from cam_mnist.train.trainer import make_optimizer

BACKEND_IMAGES = 1024  # test images of the run's model timed on each backend (8 batches of 128)


def matmul_peak(sizes=(1024, 2048, 4096)) -> float:
    """The fastest float32 square matmul over a few sizes (GFLOP/s): the yardstick of the training rows. One size
    alone can read below what the convolutions reach on a machine whose speed drifts, so it takes the best."""
    best = 0.0
    for n in sizes:
        a, b = tf.random.uniform((n, n)), tf.random.uniform((n, n))
        f = tf.function(lambda a=a, b=b: tf.reduce_sum(tf.linalg.matmul(a, b)))
        best = max(best, 2 * n**3 / best_of(lambda f=f: f().numpy(), 5) / 1e9)
    return best


def forward_flops(model: keras.Model) -> float:
    """Multiply-adds x 2 of the convolutions and dense layers for one image."""
    macs = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw, c_in, _ = layer.kernel.shape
            macs += h * w * kh * kw * c_in * c_out
        elif isinstance(layer, keras.layers.Dense):
            macs += int(np.prod(layer.kernel.shape))
    return 2.0 * macs


def training_throughput(
    rows=(("default", None), ("default", "float32"), ("seed", None)), steps: int = 10, rounds: int = 3
) -> list[dict]:
    """Images per second of a training step of each (preset, precision) in ``rows`` (None: the preset's own),
    timed in turns, ``rounds`` times, each row's best kept: the machine's speed drifts by up to 40% within an
    hour, and timing the rows in turns keeps that drift out of their ratios."""
    timed = [_training_step(preset, precision, steps) for preset, precision in rows]
    best = [float("inf")] * len(timed)
    for _ in range(rounds):
        for i, (_, run) in enumerate(timed):
            best[i] = min(best[i], best_of(run, repeats=1))
    results = []
    for (row, _), seconds in zip(timed, best, strict=True):
        rate = row["batch_size"] * steps / seconds
        row["images_per_s"] = round(rate, 1)
        row["train_gflops_per_s"] = round(3 * row.pop("forward_flops") * rate / 1e9, 1)
        results.append(row)
    return results


def _training_step(preset: str, precision: str | None, steps: int):
    """(a row describing the network, a function running ``steps`` training steps of it on random images)."""
    config = cfg.preset(preset)
    if precision:
        config.model.precision = precision
    keras.utils.set_random_seed(0)
    model = build_model(config.model, config.data.canvas)
    logits, optimizer = logits_model(model), make_optimizer(config.train)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    variables = model.trainable_variables
    b = config.train.batch_size
    images = tf.random.uniform((b, config.data.canvas, config.data.canvas, 1))
    labels = tf.random.uniform((b,), 0, 10, tf.int32)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, logits(images, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    flops = forward_flops(model)
    row = {
        "preset": preset,
        "precision": config.model.precision,
        "batch_size": b,
        "params": model.count_params(),
        "forward_mflops_per_image": round(flops / 1e6, 1),
        "forward_flops": flops,
    }
    return row, lambda: [step() for _ in range(steps)][-1].numpy()


def forward_rate(model, images, batch: int = 128) -> float:
    """Images per second of the model's own forward pass at the methods' batch size: no map can be made faster
    than the one pass every method starts with."""
    forward = forward_pass(model)
    n = len(images) - len(images) % batch or len(images)  # whole batches: one traced shape

    def run():
        for lo in range(0, n, batch):
            forward(images[lo : lo + batch])

    return n / best_of(run, repeats=1)


def cam_family(model, images, slow_images: int, forward: float) -> list[dict]:
    """Maps per second of every method and its share of the forward rate. The fast methods are timed batch by
    batch in turn with the forward pass (:func:`paired_rates`); the slow ones, whose share is a few percent at
    most, against ``forward``, measured once."""
    rows, one_pass = [], forward_pass(model)
    for name, info in registry.METHODS.items():
        explainer = get_method(model, name)
        n = min(slow_images, len(images)) if info.slow else len(images)
        b = explainer.batch_size
        n -= n % b if n >= b else 0  # whole batches, as the forward rate
        if info.slow:
            explainer(images[:b])  # trace once
            beside, rate = forward, n / best_of(lambda explainer=explainer, n=n: explainer(images[:n]), repeats=1)
        else:
            batches = [images[lo : lo + b] for lo in range(0, n, b)]
            beside, rate = paired_rates(one_pass, explainer, batches)
        rows.append(
            {
                "method": name,
                "images": n,
                "maps_per_s": round(rate, 1),
                "forward_beside": round(beside, 1),
                "share_of_forward": round(rate / beside, 3),
            }
        )
        print(f"  {name:16s} {rows[-1]['maps_per_s']:10.1f} maps/s ({n} images)", flush=True)
    return rows


def nested_application(size: int = 224, batch: int = 32, batches: int = 3, score_images: int = 2) -> dict:
    """MobileNetV2 (random weights) nested in a Sequential as the Keras transfer-learning guide builds it, on
    ``size`` x ``size`` x 3 images: CAM and Grad-CAM maps/s timed in turn with that model's own forward pass, batch
    by batch (:func:`paired_rates`), and Score-CAM's maps/s (1280 channel passes per map, ``pass_batch`` at a time)."""
    model = bench_backends.nested_mobilenet(size)
    images = np.random.default_rng(0).uniform(0, 255, (batch * batches, size, size, 3)).astype(np.float32)
    result = {"model": f"MobileNetV2 nested in a Sequential, random weights, {size}x{size}x3", "batch": batch}
    rows = beside_the_forward_pass(model, ("cam", "gradcam"), images, batch, "nested MobileNetV2")
    score = get_method(model, "scorecam", batch_size=1)
    score(images[:1])  # trace once
    seconds = best_of(lambda: score(images[:score_images]), repeats=1)
    rows.append(
        {
            "method": "scorecam",
            "layer": score.layer.path,
            "images": score_images,
            "maps_per_s": round(score_images / seconds, 3),
            "pass_batch": score.pass_batch,
            "channels": int(score.layer.shape[-1]),
        }
    )
    print(f"  nested MobileNetV2 scorecam   {score_images / seconds:8.3f} maps/s", flush=True)
    return {**result, "methods": rows}


FAST_ON_TOKENS = ("gradcam", "gradcam++", "layercam", "hirescam", "xgradcam", "eigencam")


def vision_transformer(size: int = 224, batch: int = 16, batches: int = 3, blocks: int = 4) -> dict:
    """A keras_hub ViT image classifier (patch 16, ``blocks`` blocks, width 192; random weights) on ``size`` x
    ``size`` x 3 images: the fast methods at its default layer (the last block's first norm, inside keras_hub's
    one-layer encoder, on the 14 x 14 patch grid) timed in turn with the model's own forward pass, batch by batch."""
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(size, size, 3), patch_size=16, num_layers=blocks, num_heads=3, hidden_dim=192, mlp_dim=768
    )
    model = keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=10)
    images = np.random.default_rng(0).random((batch * batches, size, size, 3)).astype(np.float32)
    rows = beside_the_forward_pass(model, FAST_ON_TOKENS, images, batch, "keras_hub ViT")
    title = f"keras_hub ViTImageClassifier (patch 16, {blocks} blocks, width 192), random weights, {size}x{size}x3"
    return {"model": title, "batch": batch, "methods": rows}


def tf_keras_vis(model, images, n: int, batch: int = 128) -> list[dict]:
    """tf-keras-vis 0.8.7 on the same model (on its logits, so no model modifier) and the same images, beside ours
    timed on that model too."""
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.utils.scores import CategoricalScore

    logits = logits_model(model)
    targets = np.asarray(model.predict(images[:n], batch_size=500, verbose=0)).argmax(1)
    rows = []
    for tool_class, ours in ((Gradcam, "gradcam"), (GradcamPlusPlus, "gradcam++")):
        tool = tool_class(logits, clone=False)

        def run(tool=tool):
            return np.concatenate(
                [
                    tool(
                        CategoricalScore(list(targets[lo : min(lo + batch, n)])),
                        images[lo : min(lo + batch, n)],
                        penultimate_layer="cam_features",
                    )
                    for lo in range(0, n, batch)
                ]
            )

        run_first = run()  # warm-up, and the maps to compare
        seconds = best_of(run, repeats=1)
        explainer = get_method(model, ours)
        mine = explainer(images[:n], targets)
        our_seconds = best_of(lambda explainer=explainer: explainer(images[:n], targets), repeats=1)
        corr = np.mean(
            [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(run_first, mine, strict=True) if b.std() > 0]
        )
        rows.append(
            {
                "method": f"tf-keras-vis {tool_class.__name__}",
                "images": n,
                "maps_per_s": round(n / seconds, 1),
                "ours_maps_per_s": round(n / our_seconds, 1),
                "mean_correlation_with_ours": round(float(corr), 5),
            }
        )
        print(f"  {rows[-1]['method']:28s} {n / seconds:10.1f} maps/s, correlation with ours {corr:.5f}", flush=True)
    return rows


def main(
    run_dir: str | None = None,
    *,
    images: int = 10_000,
    slow_images: int = 200,
    reference_images: int = 2000,
    out: str | Path = "bench",
    application: bool = True,
    memory: bool = True,
    backends: bool = True,
) -> dict:
    """Every measurement, written to ``out/results.json`` and ``out/results.md``: the machine, training throughput,
    the maps of the run's model (``run_dir``, default out/latest) beside its forward pass and beside tf-keras-vis,
    a nested keras.applications network (``application``), the maps on every Keras backend (``backends``) and peak
    memory at two sizes (``memory``)."""
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": cpu_name(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
        "date": time.strftime("%Y-%m-%d"),
    }
    peak = matmul_peak()
    results["matmul_peak_gflops"] = round(peak, 1)
    print(f"float32 matmul peak: {peak:.1f} GFLOP/s", flush=True)
    results["training"] = training_throughput()
    for row in results["training"]:
        row["share_of_matmul_peak"] = round(row["train_gflops_per_s"] / peak, 3)
        print(
            f"training {row['preset']} ({row['precision']}): {row['images_per_s']} images/s, "
            f"{row['share_of_matmul_peak']:.1%} of peak",
            flush=True,
        )
    try:
        model_path = RunFolder(run_dir_or_latest(run_dir)).model
    except UserError:  # no run yet: the training numbers above still stand
        model_path = RunFolder(run_dir or OUT / LATEST).model
    if model_path.exists():
        results |= run_maps(model_path, images, slow_images, reference_images)
    else:
        print(f"no trained model at {model_path}: CAM-family timings skipped (run `make train` first)")
    if application:
        print("a keras.applications network, nested as users nest it:", flush=True)
        results["application"] = nested_application()
        print("a keras_hub vision transformer, its maps on the patch grid:", flush=True)
        results["transformer"] = vision_transformer()
    if backends and model_path.exists():
        print("every Keras backend, each in its own process (and pytorch-grad-cam beside ours on PyTorch):", flush=True)
        run_config = cfg.RunConfig.load(RunFolder(model_path.parent).config)
        x = load_split("test", run_config.data).float_images(slice(0, BACKEND_IMAGES))
        results["backends"] = bench_backends.run_all(model_path, x)
    if memory and model_path.exists():
        print("peak memory and wall time at two sizes of each command's work:", flush=True)
        results["memory"] = bench_memory.rows(model_path.parent)
    out = Path(out)
    out.mkdir(exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(to_markdown(results))
    print(f"-> {out / 'results.json'}, {out / 'results.md'}")
    return results


def run_maps(model_path: Path, images: int, slow_images: int, reference_images: int) -> dict:
    """The maps of a trained run's model: every method beside the model's forward pass, and tf-keras-vis beside
    ours on the same weights."""
    model = keras.models.load_model(model_path)
    run_config = cfg.RunConfig.load(RunFolder(model_path.parent).config)
    x = load_split("test", run_config.data).float_images(slice(0, images))
    print(f"CAM family on {model_path.resolve().parent.name} ({len(x)} test images):", flush=True)
    results = {"cam_run": model_path.resolve().parent.name, "forward_images_per_s": round(forward_rate(model, x), 1)}
    print(f"  {'forward pass':16s} {results['forward_images_per_s']:10.1f} images/s", flush=True)
    results["cams"] = cam_family(model, x, slow_images, results["forward_images_per_s"])
    # tf-keras-vis 0.8.7 cannot resize a bfloat16 map (scipy's zoom: "data type not supported"), so the two
    # libraries are compared on the same weights computed in float32.
    reference_model = model
    if run_config.model.precision != "float32":
        reference_model = build_model(
            dataclasses.replace(run_config.model, precision="float32"), run_config.data.canvas
        )
        reference_model.set_weights(model.get_weights())
    results["reference_precision"] = "float32"
    results["reference"] = tf_keras_vis(reference_model, x, min(reference_images, len(x)))
    theirs = {r["method"].split()[-1]: r for r in results["reference"]}
    speedup = lambda name: round(theirs[name]["ours_maps_per_s"] / theirs[name]["maps_per_s"], 1)  # noqa: E731
    results["speedup"] = {
        "gradcam_vs_tf_keras_vis_gradcam": speedup("Gradcam"),
        "gradcam++_vs_tf_keras_vis_gradcam++": speedup("GradcamPlusPlus"),
    }
    print(f"speed-ups: {results['speedup']}")
    return results


def to_markdown(r: dict) -> str:
    """``bench/results.md``: the results of :func:`main` as tables, each under the sentence that says what it timed."""
    m = r["machine"]
    parts = [
        f"Measured {r['date']} on {m['cpus']} CPU cores ({m.get('cpu', 'CPU not recorded')}), "
        f"TensorFlow {m['tensorflow']}, Keras {m['keras']}. float32 matmul peak: {r['matmul_peak_gflops']} GFLOP/s."
        "\n\n" + _training_markdown(r["training"])
    ]
    if "cams" in r:
        parts += _maps_markdown(r)
    if "memory" in r:
        parts.append(memory_markdown(r["memory"]))
    if "application" in r:
        parts.append(_application_markdown(r["application"]))
    if "transformer" in r:
        parts.append(_application_markdown(r["transformer"]))
    if "backends" in r:
        parts.append("\n".join(bench_backends.to_markdown(r["backends"])))
    return "\n\n".join(parts) + "\n"


def _training_markdown(training: list[dict]) -> str:
    header = ["preset", "precision", "batch", "images/s", "forward MFLOP/image", "training GFLOP/s"]
    keys = ["preset", "precision", "batch_size", "images_per_s", "forward_mflops_per_image", "train_gflops_per_s"]
    rows = [[t[k] for k in keys] + [f"{t['share_of_matmul_peak']:.1%}"] for t in training]
    return markdown_table([*header, "share of matmul peak"], rows)


def _maps_markdown(r: dict) -> list[str]:
    ours = markdown_table(
        ["method", "images", "maps/s", "forward pass beside it", "share of the forward rate"],
        [
            [c["method"], c["images"], c["maps_per_s"], c["forward_beside"], f"{c['share_of_forward']:.0%}"]
            for c in r["cams"]
        ],
    )
    reference = markdown_table(
        ["method", "images", "tf-keras-vis maps/s", "ours maps/s", "speed-up", "correlation of the maps"],
        [
            [c["method"], c["images"], c["maps_per_s"], c["ours_maps_per_s"]]
            + [f"{c['ours_maps_per_s'] / c['maps_per_s']:.1f}x", c["mean_correlation_with_ours"]]
            for c in r["reference"]
        ],
    )
    return [
        f"Maps per second on `{r['cam_run']}` (100x100 test images, predicted class), beside the model's "
        f"forward pass: {r['forward_images_per_s']} images/s (for the fast methods, the forward pass timed "
        f"in turn with each, batch by batch, each batch's fastest of three):\n\n" + ours,
        f"tf-keras-vis 0.8.7 and ours on the same weights in {r['reference_precision']}:\n\n" + reference,
    ]


def _application_markdown(a: dict) -> str:
    score = a["methods"][-1]
    rows = [
        [m["method"], f"`{m['layer']}`", m["images"], m["maps_per_s"], m.get("forward_beside", "–")]
        + [f"{m['share_of_forward']:.0%}" if "share_of_forward" in m else "–"]
        for m in a["methods"]
    ]
    scored = ""
    if score["method"] == "scorecam":
        scored = f" (Score-CAM: {score['channels']} channel passes per map, {score['pass_batch']} at a time)"
    return (
        f"{a['model']}, batch {a['batch']}: maps per second beside that model's own forward pass{scored}:\n\n"
        + markdown_table(
            ["method", "layer", "images", "maps/s", "forward pass beside it", "share of the forward rate"], rows
        )
    )
