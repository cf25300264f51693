"""``python -m cam_mnist localize``: how well each explanation method finds the digit, on the whole test split.

Writes ``eval/localization.json``, ``eval/localization.md`` (methods x metrics), ``eval/localization_examples.png``
(each method's map and box beside the true box) and ``eval/iou_histogram.png``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

FAST = ["cam", "gradcam", "gradcam++", "layercam", "guided-backprop", "guided-gradcam"]
DIGITS_DEFAULT = ["cam", "gradcam", "gradcam++"]  # several digits per image: the class-discriminative maps
SLOW = ["scorecam", "occlusion"]  # many forward passes per map: scored on the first --slow-images test images
BASELINES = ["centre", "full", "random"]
COLUMNS = [
    ("top1_loc", "top-1 loc"),
    ("gt_known_loc", "GT-known loc"),
    ("max_box_acc", "MaxBoxAcc"),
    ("mean_iou", "mean IoU"),
    ("pointing", "pointing"),
    ("pointing_3px", "pointing ±3px"),
    ("mask_iou", "mask IoU"),
    ("pixel_ap", "pixel AP"),
    ("average_drop_pct", "avg drop %"),
    ("increase_in_confidence_pct", "incr. conf. %"),
    ("deletion_auc", "deletion AUC ↓"),
    ("insertion_auc", "insertion AUC ↑"),
    ("images", "images"),
    ("seconds", "seconds"),
]


def score(name, maps_true, maps_predicted, split, n, probs, near, predict, images, faithful_n) -> dict:
    """Every metric for one method (or baseline) on the first ``n`` test images."""
    from cam_mnist import localization as loc

    predicted = probs.argmax(1)
    result = loc.box_metrics(maps_true, predicted[:n] == split.labels[:n], split.boxes[:n])
    result |= loc.pointing_metrics(maps_true, split.masks[:n], near[:n])
    result |= loc.segmentation_metrics(maps_true, split.masks[:n])
    result |= loc.average_drop_increase(predict, images[:n], maps_predicted, predicted[:n], probs[:n])
    f = min(n, faithful_n)
    result |= loc.deletion_insertion(predict, images[:f], maps_predicted[:f], predicted[:f])
    return {"method": name, "images": n, **result}


def run(args) -> None:
    from cam_mnist import checkpoint, evaluate, localization, plotting
    from cam_mnist.boxes import boxes_from_maps, near
    from cam_mnist.cams import explain

    run_dir = Path(args.run_dir) if args.run_dir else Path("out") / "latest"
    config = evaluate.load_run(run_dir)
    state = (
        checkpoint.load(checkpoint.path_for(run_dir, args.step), None)
        if args.step
        else checkpoint.latest_valid(run_dir)
    )
    if state is None:
        raise evaluate.DataError(f"{run_dir}: no readable checkpoint; train with `make train`")
    model, predict = evaluate.build_for(config)
    model.set_weights(state.model_weights)
    _, split = evaluate.split_for(config, Path(args.data_dir))
    n = min(args.images or len(split), len(split))
    if split.labels.ndim == 2:
        return run_digits(args, run_dir, state.step, model, predict, split, n)
    images = split.float_images(slice(0, n))
    probs = evaluate.predict_probs(predict, split, n)
    labels, predicted = split.labels[:n], probs.argmax(1)
    correct = predicted == labels
    wrong = np.flatnonzero(~correct)
    dilated = near(split.masks[:n], localization.POINTING_TOLERANCE)  # the same for every method: made once
    rows, examples = [], {}
    for method in args.methods or FAST + SLOW:
        m = min(n, args.slow_images) if method in SLOW else n
        began = time.perf_counter()
        maps_true = explain(model, images[:m], method, labels[:m])
        maps_predicted = maps_true.copy()  # equal wherever the prediction is right; recompute the rest
        w = wrong[wrong < m]
        if len(w):
            maps_predicted[w] = explain(model, images[w], method, predicted[w])
        row = score(method, maps_true, maps_predicted, split, m, probs, dilated, predict, images, args.faithful_images)
        row["seconds"] = round(time.perf_counter() - began, 1)
        rows.append(row)
        examples[method] = maps_true[: args.examples]
        print(
            f"  {method:16s} top-1 loc {row['top1_loc']:.4f}  pointing {row['pointing']:.4f}  ({row['seconds']}s)",
            flush=True,
        )
    for kind in BASELINES:
        maps = localization.baseline_maps(kind, split.boxes[:n], (n, *images.shape[1:3]))
        row = score(f"baseline: {kind}", maps, maps, split, n, probs, dilated, predict, images, args.faithful_images)
        rows.append({**row, "seconds": 0.0})
        examples[f"baseline: {kind}"] = maps[: args.examples]

    out = run_dir / evaluate.EVAL
    out.mkdir(exist_ok=True)
    plotting.histograms(
        out / "iou_histogram.png",
        {r["method"]: r["iou"] for r in rows},
        "IoU with the true box",
        f"{run_dir.name}, step {state.step}: IoU of the 20%-threshold box (true class)",
    )
    plotting.method_grid(
        out / "localization_examples.png",
        split.images[: args.examples],
        split.boxes[: args.examples],
        {name: (maps, boxes_from_maps(maps)) for name, maps in examples.items()},
    )
    table = markdown(rows, split_name=f"{run_dir.name}, step {state.step}, test accuracy {correct.mean():.4f}")
    clean = [{k: v for k, v in r.items() if k != "iou"} for r in rows]
    record = {
        "run": run_dir.name,
        "step": state.step,
        "test_accuracy": float(correct.mean()),
        "images": n,
        "slow_images": min(n, args.slow_images),
        "faithfulness_images": min(n, args.faithful_images),
        "methods": clean,
    }
    (out / "localization.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "localization.md").write_text(table + "\n")
    print(
        f"\n{table}\n\n-> {out / 'localization.json'}, {out / 'localization.md'}, {out / 'localization_examples.png'}"
    )


DIGIT_COLUMNS = [
    ("top1_loc", "top-1 loc"),
    ("gt_known_loc", "GT-known loc"),
    ("pointing", "pointing"),
    ("pointing_3px", "pointing ±3px"),
    ("points_at_other_digit", "points at the other digit"),
    ("images", "images"),
    ("seconds", "seconds"),
]


def run_digits(args, run_dir: Path, step: int, model, predict, split, n: int) -> None:
    """Several digits per image: each digit scored with the map of its own class (see
    :func:`cam_mnist.localization.per_digit_metrics`); writes ``eval/localization_digits.{json,md,png}``."""
    from cam_mnist import evaluate, localization, plotting
    from cam_mnist.boxes import boxes_from_maps
    from cam_mnist.cams import explain

    probs = evaluate.predict_probs(predict, split, n)
    labels = split.labels[:n]
    found = evaluate.detected(probs, labels)  # (n, K)
    metrics = evaluate.multilabel_metrics(probs, labels)
    k = labels.shape[1]
    rows, examples = [], {}
    for method in args.methods or DIGITS_DEFAULT:
        m = min(n, args.slow_images) if method in SLOW else n
        began = time.perf_counter()
        images = split.float_images(slice(0, m))
        maps = np.stack([explain(model, images, method, labels[:m, j]) for j in range(k)], 1)  # (m, K, H, W)
        row = localization.per_digit_metrics(maps, split.boxes[:m], split.masks[:m], found[:m])
        rows.append({"method": method, **row, "images": m, "seconds": round(time.perf_counter() - began, 1)})
        print(f"  {method:16s} top-1 loc {row['top1_loc']:.4f}  pointing {row['pointing']:.4f}", flush=True)
        for j in range(k):
            examples[f"{method}: class {j + 1}"] = maps[: args.examples, j]
    for kind in ("centre", "random"):
        flat = localization.baseline_maps(kind, split.boxes[:n].reshape(-1, 4), (n * k, *split.images.shape[1:]))
        maps = flat.reshape(n, k, *flat.shape[1:])
        row = localization.per_digit_metrics(maps, split.boxes[:n], split.masks[:n], found)
        rows.append({"method": f"baseline: {kind}", **row, "images": n, "seconds": 0.0})

    out = run_dir / evaluate.EVAL
    out.mkdir(exist_ok=True)
    plotting.method_grid(
        out / "localization_digits_examples.png",
        split.images[: args.examples],
        split.boxes[: args.examples],
        {name: (maps, boxes_from_maps(maps)) for name, maps in examples.items()},
    )
    title = (
        f"{run_dir.name}, step {step}, {k} digits per image: exact match {metrics['accuracy']:.4f}, "
        f"per digit {metrics['per_digit']:.4f}; each digit scored with its own class's map"
    )
    table = markdown(rows, title, DIGIT_COLUMNS)
    record = {"run": run_dir.name, "step": step, "images": n, **metrics, "methods": rows}
    (out / "localization_digits.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "localization_digits.md").write_text(table + "\n")
    print(f"\n{table}\n\n-> {out / 'localization_digits.json'}, {out / 'localization_digits_examples.png'}")


def markdown(rows: list[dict], split_name: str, columns=COLUMNS) -> str:
    lines = [
        f"Localization on the held-out test split ({split_name}).",
        "",
        "| method | " + " | ".join(label for _, label in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for r in rows:
        cells = [
            f"{r[k]:.4f}"
            if isinstance(r[k], float) and not k.endswith(("pct", "seconds"))
            else (f"{r[k]:.1f}" if isinstance(r[k], float) else str(r[k]))
            for k, _ in columns
        ]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def add_parser(commands) -> None:
    from cam_mnist.cli import command_parser

    p = command_parser(
        commands,
        "localize",
        "localization, segmentation and faithfulness of every method",
        ["                  # newest run, all methods", "--methods cam gradcam --images 2000"],
    )
    _arguments(p)
    p.set_defaults(func=run)


def default_args(**overrides):
    """The command's defaults, for callers other than the command line (``eval --localize``)."""
    import argparse

    parser = argparse.ArgumentParser()
    _arguments(parser)
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args([])
    vars(args).update(overrides)
    return args


def _arguments(p) -> None:
    p.add_argument("--run-dir", help="training run (default: out/latest)")
    p.add_argument("--step", type=int, help="checkpoint step (default: the newest readable)")
    p.add_argument(
        "--methods",
        nargs="+",
        choices=FAST + SLOW,
        help=f"methods to score (default: all; with several digits per image: {' '.join(DIGITS_DEFAULT)})",
    )
    p.add_argument("--images", type=int, help="score only the first N test images (default: all 10k)")
    p.add_argument("--slow-images", type=int, default=1000, help="test images for Score-CAM and occlusion")
    p.add_argument("--faithful-images", type=int, default=500, help="test images for deletion/insertion AUC")
    p.add_argument("--examples", type=int, default=6, help="test images in the examples figure")
