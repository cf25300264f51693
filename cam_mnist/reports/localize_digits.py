"""``localize`` on a run with several digits per image: each digit scored with the map of its own class, against its
own box, a chunk of images at a time; writes ``eval/localization_digits.{json,md}`` and the examples figure."""

from __future__ import annotations

import json
import time

import numpy as np

from cam_mnist.core.runs import RunFolder
from cam_mnist.core.tables import metrics_markdown
from cam_mnist.maps.registry import METHODS
from cam_mnist.scoring import classification

DIGIT_COLUMNS = [
    ("gt_known_loc_calibrated", "GT-known loc, τ from val"),
    ("calibrated_threshold", "τ (val)"),
    ("top1_loc_calibrated", "top-1 loc, τ from val"),
    ("top1_loc", "top-1 loc @20%"),
    ("gt_known_loc", "GT-known @20%"),
    ("peak_in_box", "peak in its box"),
    ("pointing", "pointing"),
    ("pointing_3px", "pointing ±3px"),
    ("points_at_other_digit", "points at the other digit"),
    ("images", "images"),
    ("seconds", "seconds"),
]


def localize_digits(run_dir, step, model, predict, split, val, n, methods, slow_images, n_examples, log, head) -> dict:
    """Several digits per image: each digit scored with the map of its own class (see
    :func:`cam_mnist.localization.per_digit_metrics`); writes ``eval/localization_digits.{json,md,png}``."""
    from cam_mnist.core.boxes import boxes_from_maps
    from cam_mnist.maps import explain
    from cam_mnist.scoring import localization
    from cam_mnist.scoring.tally import chunks
    from cam_mnist.viz import plotting

    def class_maps(split, method, rows):  # (n, K, H, W): the map of each digit's class, for the images ``rows``
        images = split.float_images(rows)
        return np.stack([explain(model, images, method, split.labels[rows, j]) for j in range(k)], 1)

    def per_digit(maps_of, m, tau):  # the metrics of the first m images, a chunk at a time: means weighted by size
        parts, first = [], None
        for rows in chunks(m):
            maps = maps_of(rows)
            parts.append(localization.per_digit_metrics(maps, split.boxes[rows], split.masks[rows], found[rows], tau))
            first = maps if first is None else first
        sizes = [len(range(m)[r]) for r in chunks(m)]
        mean = {key: float(np.average([p[key] for p in parts], weights=sizes)) for key in parts[0]}
        return {**mean, **{key: v for key, v in parts[0].items() if key.endswith("threshold")}}, first

    probs = classification.predict_probs(predict, split, n)
    labels = split.labels[:n]
    found = classification.detected(probs, labels)  # (n, K)
    metrics = classification.multilabel_metrics(probs, labels, head)
    k = labels.shape[1]
    rows, examples = [], {}
    for method in methods:
        m = min(n, slow_images) if METHODS[method].slow else n
        began = time.perf_counter()
        v = min(len(val), m)
        pairs = (
            (class_maps(val, method, r).reshape(-1, *val.masks.shape[2:]), val.boxes[r].reshape(-1, 4))
            for r in chunks(v)
        )
        tau = localization.calibrate_chunks(pairs)["tau"]
        row, maps = per_digit(lambda r, method=method: class_maps(split, method, r), m, tau)
        rows.append({"method": method, **row, "images": m, "seconds": round(time.perf_counter() - began, 1)})
        log(
            f"  {method:16s} GT-known loc {row['gt_known_loc_calibrated']:.4f} at tau {tau:.2f} (from val), "
            f"peak in its box {row['peak_in_box']:.4f}"
        )
        for j in range(k):
            examples[f"{method}: class {j + 1}"] = (maps[:n_examples, j], tau)
    for kind in ("centre", "random"):
        shape = (n * k, *split.images.shape[1:])

        def baseline(r, kind=kind, shape=shape):  # digit j of image i is row i*K + j of the flat baseline maps
            flat = localization.baseline_maps(
                kind, split.boxes[:n].reshape(-1, 4), shape, rows=slice(r.start * k, r.stop * k)
            )
            return flat.reshape(-1, k, *flat.shape[1:])

        row, _ = per_digit(baseline, n, None)
        rows.append({"method": f"baseline: {kind}", **row, "images": n, "seconds": 0.0})

    out = RunFolder(run_dir).eval
    out.mkdir(exist_ok=True)
    plotting.method_grid(
        out / "localization_digits_examples.png",
        split.images[:n_examples],
        split.boxes[:n_examples],
        {name: (maps, boxes_from_maps(maps, tau)) for name, (maps, tau) in examples.items()},
    )
    title = (
        f"{run_dir.name}, step {step}, {k} digits per image: exact match {metrics['accuracy']:.4f}, "
        f"per digit {metrics['per_digit']:.4f}; each digit scored with its own class's map"
    )
    table = metrics_markdown(rows, title, DIGIT_COLUMNS)
    record = {"run": run_dir.name, "step": step, "images": n, "validation_images": len(val), **metrics, "methods": rows}
    (out / "localization_digits.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "localization_digits.md").write_text(table + "\n")
    log(f"\n-> {out / 'localization_digits.json'}, {out / 'localization_digits_examples.png'}")
    return {**record, "table": table}
