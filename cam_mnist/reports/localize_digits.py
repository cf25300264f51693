"""``localize`` on a run with several digits per image: each digit scored with the map of its own class, against its
own box, a chunk of images at a time; writes ``eval/localization_digits.{json,md}`` and the examples figure."""

from __future__ import annotations

import json
import time

import numpy as np

from cam_mnist import maps
from cam_mnist.core.boxes import boxes_from_maps
from cam_mnist.core.runs import RunFolder
from cam_mnist.core.tables import metrics_markdown
from cam_mnist.maps.registry import METHODS
from cam_mnist.scoring import classification, localization
from cam_mnist.scoring.tally import chunks

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


def localize_digits(job, methods: list[str], head: str) -> dict:
    """Several digits per image, for :func:`cam_mnist.reports.localize.localize` and its ``job`` (a ``Job``): each
    digit scored with the map of its own class (see :func:`cam_mnist.scoring.localization.per_digit_metrics`);
    writes ``eval/localization_digits.{json,md,png}``. ``head``: the model's output layer (``softmax`` or
    ``sigmoid``), whose loss the accuracy table reports."""
    split, n = job.split, job.n
    probs = classification.predict_probs(job.predict, split, n)
    labels = split.labels[:n]
    found = classification.detected(probs, labels)  # (n, K)
    metrics = classification.multilabel_metrics(probs, labels, head)
    rows, examples = [], {}
    for method in methods:
        began = time.perf_counter()
        row, first, tau = _method_row(job, method, found)
        rows.append({**row, "seconds": round(time.perf_counter() - began, 1)})
        for j in range(labels.shape[1]):
            examples[f"{method}: class {j + 1}"] = (first[: job.examples, j], tau)
    for kind in ("centre", "random"):
        row, _ = _per_digit(job, found, _baseline(job, kind), n, None)
        rows.append({"method": f"baseline: {kind}", **row, "images": n, "seconds": 0.0})
    return _write(job, rows, examples, metrics)


def _class_maps(job, split, method: str, rows: slice) -> np.ndarray:
    """(n, K, H, W): the map of each digit's class, for the images ``rows`` of ``split``."""
    images = split.float_images(rows)
    k = split.labels.shape[1]
    return np.stack([maps.explain(job.model, images, method, split.labels[rows, j]) for j in range(k)], 1)


def _per_digit(job, found: np.ndarray, maps_of, m: int, tau: float | None) -> tuple[dict, np.ndarray]:
    """The metrics of the first ``m`` test images, made a chunk at a time (means weighted by the chunks' sizes),
    and the first chunk's maps."""
    split, parts, first = job.split, [], None
    for rows in chunks(m):
        chunk = maps_of(rows)
        parts.append(localization.per_digit_metrics(chunk, split.boxes[rows], split.masks[rows], found[rows], tau))
        first = chunk if first is None else first
    sizes = [len(range(m)[r]) for r in chunks(m)]
    mean = {key: float(np.average([p[key] for p in parts], weights=sizes)) for key in parts[0]}
    return {**mean, **{key: v for key, v in parts[0].items() if key.endswith("threshold")}}, first


def _method_row(job, method: str, found: np.ndarray) -> tuple[dict, np.ndarray, float]:
    """One method's row, with tau chosen on its own maps of the validation digits; its first maps and tau."""
    m = min(job.n, job.slow_images) if METHODS[method].slow else job.n
    val = job.val
    pairs = (
        (_class_maps(job, val, method, r).reshape(-1, *val.masks.shape[2:]), val.boxes[r].reshape(-1, 4))
        for r in chunks(min(len(val), m))
    )
    tau = localization.calibrate_chunks(pairs)["tau"]
    row, first = _per_digit(job, found, lambda r: _class_maps(job, job.split, method, r), m, tau)
    job.log(
        f"  {method:16s} GT-known loc {row['gt_known_loc_calibrated']:.4f} at tau {tau:.2f} (from val), "
        f"peak in its box {row['peak_in_box']:.4f}"
    )
    return {"method": method, **row, "images": m}, first, tau


def _baseline(job, kind: str):
    """The ``kind`` baseline's maps of the test images ``rows``, (n, K, H, W)."""
    split, n, k = job.split, job.n, job.split.labels.shape[1]
    shape = (n * k, *split.images.shape[1:])

    def maps_of(r):  # digit j of image i is row i*K + j of the flat baseline maps
        flat = localization.baseline_maps(
            kind, split.boxes[:n].reshape(-1, 4), shape, rows=slice(r.start * k, r.stop * k)
        )
        return flat.reshape(-1, k, *flat.shape[1:])

    return maps_of


def _write(job, rows: list[dict], examples: dict, metrics: dict) -> dict:
    """The examples figure, the table and the record, into the run's eval/; returns the record with its table."""
    from cam_mnist.viz import plotting

    out, k = RunFolder(job.run_dir).eval, job.split.labels.shape[1]
    out.mkdir(exist_ok=True)
    plotting.method_grid(
        out / "localization_digits_examples.png",
        job.split.images[: job.examples],
        job.split.boxes[: job.examples],
        {name: (maps, boxes_from_maps(maps, tau)) for name, (maps, tau) in examples.items()},
    )
    title = (
        f"{job.run_dir.name}, step {job.step}, {k} digits per image: exact match {metrics['accuracy']:.4f}, "
        f"per digit {metrics['per_digit']:.4f}; each digit scored with its own class's map"
    )
    table = metrics_markdown(rows, title, DIGIT_COLUMNS)
    record = {
        "run": job.run_dir.name, "step": job.step, "images": job.n, "validation_images": len(job.val), **metrics,
        "methods": rows,
    }  # fmt: skip
    (out / "localization_digits.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "localization_digits.md").write_text(table + "\n")
    job.log(f"\n-> {out / 'localization_digits.json'}, {out / 'localization_digits_examples.png'}")
    return {**record, "table": table}
