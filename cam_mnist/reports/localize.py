"""Scoring a trained run's explanations against the digits' true boxes and masks, on the whole test split: the
library function behind ``python -m cam_mnist localize`` and ``eval --localize``.

:func:`localize` writes ``eval/localization.json``, ``eval/localization.md`` (methods x metrics),
``eval/localization_examples.png`` (each method's map and box beside the true box) and ``eval/iou_histogram.png``,
and returns the record it wrote. The metrics themselves are :mod:`cam_mnist.scoring.localization` (arrays in, numbers
out); this module runs the model over a run's checkpoint and the held-out splits and puts the numbers in tables.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cam_mnist import maps
from cam_mnist.core.boxes import IOU_CORRECT, boxes_from_maps
from cam_mnist.core.memory import release_freed_memory
from cam_mnist.core.runs import RunFolder, run_dir_or_latest
from cam_mnist.core.tables import cell, metrics_markdown
from cam_mnist.data.splits import Split
from cam_mnist.maps import segmentation
from cam_mnist.maps.registry import METHODS, info, method_names
from cam_mnist.reports import evaluate
from cam_mnist.reports import sanity as sanity_report
from cam_mnist.reports.localize_digits import localize_digits
from cam_mnist.scoring import classification, localization
from cam_mnist.scoring import localization as loc
from cam_mnist.scoring.tally import SegmentationTally, Tally, chunks
from cam_mnist.train import checkpoint
from cam_mnist.viz import gallery as failures

# Several digits per image: the class-discriminative maps of the layer (the pixel-level ones barely change with
# the class, a class-agnostic one not at all), and not the slow ones.
DIGITS_DEFAULT = method_names(slow=False, pixel_level=False, class_agnostic=False)
BASELINES = ["centre", "full", "random"]
FAITHFULNESS_BASELINE = "random"
# How many images each part scores by default: the whole test split for the fast methods; fewer where a map costs
# hundreds of passes, so that every method fits one time budget (docs/localization.md, "How long it takes").
SLOW_IMAGES = 200  # test and validation images of the slow methods
FAITHFUL_IMAGES = 500  # test images of the deletion and insertion curves (40 passes each)
ROAD_IMAGES = 100  # of those, the images of ROAD (18 imputations each, a sparse solve of up to 9000 pixels)
SANITY_IMAGES, SANITY_SLOW_IMAGES = 200, 10  # test and validation images of the sanity checks, 7 stages each
GALLERY = 8  # the worst failures of each kind drawn
TWIN_CHECK = 1000  # test images whose maps two methods must share, beside every validation map, to be twins
SEGMENTATION_CHOICE = 500  # validation images the segmentation's thresholds are chosen on (24 settings each)
COLUMNS = [
    ("top1_loc_calibrated", "top-1 loc, τ from val"),
    ("calibrated_threshold", "τ (val)"),
    ("top1_loc", "top-1 loc @20%"),
    ("gt_known_loc", "GT-known @20%"),
    ("gt_known_loc_calibrated", "MaxBoxAcc δ50"),
    ("maxboxacc_v2", "MaxBoxAccV2"),
    ("maxboxacc_v2_by_delta", "V2 at δ 30/50/70 (τ)"),
    ("mean_iou", "mean IoU @20%"),
    ("peak_in_box", "peak in box"),
    ("pointing", "pointing"),
    ("pointing_3px", "pointing ±3px"),
    ("relevance_mass", "mass on digit"),
    ("mask_iou", "mask IoU"),
    ("pixel_ap", "pixel AP"),
    ("average_drop_pct", "avg drop %"),
    ("increase_in_confidence_pct", "incr. conf. %"),
    ("deletion_auc", "deletion AUC ↓"),
    ("insertion_auc", "insertion AUC ↑"),
    ("road_morf", "ROAD MoRF ↓"),
    ("road_lerf", "ROAD LeRF ↑"),
    ("road_combined", "ROAD ↑"),
    ("images", "images"),
    ("seconds", "seconds"),
]


def score(
    name: str,
    maps_of,
    split,
    m: int,
    cal: dict,
    correct,
    *,
    probs=None,
    predict=None,
    faithful=0,
    road=0,
    segmentation=None,
):
    """Every metric of one method (or baseline) on the first ``m`` test images, made and scored a chunk at a time
    (:class:`cam_mnist.scoring.tally.Tally`): boxes at the paper's 20% and at the thresholds ``cal`` chosen on
    validation maps of the same method (top-1 localization, MaxBoxAcc and MaxBoxAccV2 all take tau from validation,
    none from test). ``maps_of(rows)`` gives (true-class maps, predicted-class maps or None) of the test images
    ``rows`` (a slice); with the latter, faithfulness too. ``segmentation``: the thresholds (chosen on validation) of
    the segmentation the maps seed, scored too. Returns the row, the first chunk's true-class maps, and the
    segmentation's row (or None)."""

    tally, first = Tally(cal, faithful=min(m, faithful), road=road), None
    segments = None if segmentation is None else SegmentationTally(segmentation)
    for rows in _scoring_chunks(m):
        maps, predicted_maps = maps_of(rows)
        tally.add(maps, split.boxes[rows], split.masks[rows])
        if segments is not None:
            segments.add(split.float_images(rows), maps, split.boxes[rows], split.masks[rows])
        if predicted_maps is not None:
            targets = probs[rows].argmax(1)
            tally.add_faithfulness(predict, split.float_images(rows), predicted_maps, targets, probs[rows], rows.start)
        first = maps if first is None else first
    result = tally.result(correct[:m], predict)
    deltas = sorted(cal["v2"])
    result["maxboxacc_v2_by_delta"] = "/".join(f"{result[f'maxboxacc_v2_{round(d * 100)}']:.2f}" for d in deltas)
    result["maxboxacc_v2_by_delta"] += " (" + "/".join(f"{cal['v2'][d]:.2f}" for d in deltas) + ")"
    seg_row = None
    if segments is not None:
        seg_row = {"method": f"{name} + segmentation", "images": m, **segments.result(correct[:m])}
        seg_row["calibrated_threshold"] = segmentation["seed"]
    return {"method": name, "images": m, **result}, first, seg_row


def _scoring_chunks(m: int) -> list[slice]:
    """The first TWIN_CHECK images (the maps that identify a method), then chunks of the rest: each chunk's maps
    are made in explain's batches of 64 exactly where a single call over all the images made them."""

    head = min(m, TWIN_CHECK)
    return [slice(0, head)] + [slice(head + r.start, head + r.stop) for r in chunks(m - head)]


def _same_maps(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...], atol: float = 1e-5) -> bool:
    """Whether two methods gave the same maps (within float rounding), so that every score of one is the
    other's: on a conv -> GAP -> linear model CAM, Grad-CAM, HiResCAM and XGrad-CAM are one map (tested
    identities). Checked on a few images first: most pairs differ there."""
    return all(
        x.shape == y.shape and np.allclose(x[:16], y[:16], atol=atol) for x, y in zip(a, b, strict=True)
    ) and all(np.allclose(x, y, atol=atol) for x, y in zip(a, b, strict=True))


def ceiling(split, val, grid: tuple[int, int]) -> list[tuple[str, object, dict]]:
    """The ideal-map rows: (name, maps of test images ``rows``, thresholds chosen on the validation ideal maps) for
    the map's own grid, sharp and blurred (:func:`cam_mnist.scoring.localization.ideal_maps`)."""

    rows = []
    for blur in (0.0, loc.IDEAL_BLUR_PX):
        name = f"ceiling: ideal {grid[0]}x{grid[1]} map" + (f", blurred {blur:g} px" if blur else "")
        pairs = ((loc.ideal_maps(val.masks[r], grid, blur), val.boxes[r]) for r in chunks(len(val)))
        maps = lambda r, blur=blur: (loc.ideal_maps(split.masks[r], grid, blur), None)  # noqa: E731
        rows.append((name, maps, loc.calibrate_chunks(pairs)))
    return rows


def localize(
    run_dir: str | Path | None = None,
    data_dir: str | Path = "data",
    *,
    step: int | None = None,
    methods: list[str] | None = None,
    images: int | None = None,
    slow_images: int = SLOW_IMAGES,
    faithful_images: int = FAITHFUL_IMAGES,
    road_images: int = ROAD_IMAGES,
    examples: int = 6,
    sanity_images: int = SANITY_IMAGES,
    sanity_slow_images: int = SANITY_SLOW_IMAGES,
    random_labels_run: str | Path | None = None,
    gallery: int = GALLERY,
    log=print,
) -> dict:
    """Score ``methods`` (default: every registered one) on the run's test split; write the tables and figures
    into ``<run>/eval`` and return the record of ``localization.json`` (``localization_digits.json`` for several
    digits per image), with the Markdown tables under ``"table"``.

    Args:
        run_dir: a training run (default: ``out/latest``).
        step: the checkpoint to score (default: the newest readable one).
        images: score only the first N test images (default: all of them).
        slow_images: test images for the slow methods (many passes per map: Score-CAM, occlusion).
        faithful_images: test images for the deletion / insertion curves.
        road_images: the first of those scored by ROAD too (:mod:`cam_mnist.scoring.road`; 0: none).
        examples: test images in the examples figure.
        sanity_images, sanity_slow_images: test (and validation) images of the sanity checks
            (:mod:`cam_mnist.scoring.sanity`) for the fast and the slow methods; 0: no sanity checks.
        random_labels_run: a run of the same network trained on permuted labels (``--preset random-labels``), for
            the data randomization test (default: ``random-labels`` beside the run, where it exists).
        gallery: the worst cases of each kind of failure drawn in ``eval/failures_*.png`` (0: none).
    """

    for method in methods or []:
        info(method)  # refuses an unknown name, listing the known ones
    run_dir, data_dir = run_dir_or_latest(run_dir), Path(data_dir)
    config, model, predict, state = checkpoint.load_trained(run_dir, step)
    settings, split = evaluate.split_for(config, data_dir)
    val = evaluate.validation_for(config, settings, data_dir)
    n = min(images or len(split), len(split))
    job = Job(
        run_dir=run_dir, step=state.step, model=model, predict=predict, split=split, val=val, n=n,
        slow_images=slow_images, faithful_images=faithful_images, road_images=road_images, examples=examples,
        log=log,
    )  # fmt: skip
    if split.labels.ndim == 2:
        return localize_digits(job, methods or DIGITS_DEFAULT, config.model.head)
    methods = methods or list(METHODS)
    record, tables = _localize_one(job, methods)
    if sanity_images:
        random_run = Path(random_labels_run) if random_labels_run else run_dir.parent / sanity_report.RANDOM_LABELS
        checks = sanity_report.run(
            model, split, val, methods, n_fast=sanity_images, n_slow=sanity_slow_images, random_run=random_run, log=log
        )
        record |= checks
        tables.append(sanity_report.markdown(checks))
        sanity_report.figure(RunFolder(run_dir).eval / "randomization.png", checks, run_dir.name)
    if gallery:
        record["failures"] = failures.draw(model, split, record, run_dir, gallery)
    record.pop("probs"), record.pop("cam_iou")
    out, table = RunFolder(run_dir).eval, "\n\n".join(tables)
    (out / "localization.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "localization.md").write_text(table + "\n")
    log(f"\n-> {out / 'localization.json'}, {out / 'localization.md'}, {out / 'localization_examples.png'}")
    return {**record, "table": table}


@dataclass
class Job:
    """What every method of one ``localize`` run is scored with: the run's model at one checkpoint, its test split
    (the first ``n`` images) and validation split, and how many images each part takes."""

    run_dir: Path
    step: int
    model: object
    predict: object  # float images -> probabilities, batched
    split: Split
    val: Split
    n: int
    slow_images: int
    faithful_images: int
    road_images: int
    examples: int  # images in the examples figure
    log: object


@dataclass
class _Predictions:
    """The model's answers on the job's first ``n`` test images, which every method's scores read."""

    probs: np.ndarray  # (n, classes)
    labels: np.ndarray  # (n,)
    predicted: np.ndarray  # (n,)
    correct: np.ndarray  # (n,) bool
    wrong: np.ndarray  # indices of the wrong predictions

    @classmethod
    def of(cls, job: Job) -> _Predictions:
        probs = classification.predict_probs(job.predict, job.split, job.n)
        labels, predicted = job.split.labels[: job.n], probs.argmax(1)
        return cls(probs, labels, predicted, predicted == labels, np.flatnonzero(predicted != labels))


def _localize_one(job: Job, methods: list[str]) -> tuple[dict, list[str]]:
    """One digit per image: every metric of every method, the ceiling rows and the baselines. Maps are made and
    scored a chunk of images at a time, so memory does not grow with the number of images."""

    seen = _Predictions.of(job)
    rows, examples, scored, segmented, twin_segments = [], {}, [], [], {}
    for method in methods:
        began = time.perf_counter()
        row, seg_row, first, tau = _method_row(job, seen, method, scored, twin_segments)
        row["seconds"] = round(time.perf_counter() - began, 1)
        maps.forget(job.model, method)  # its graphs: memory stays that of one method at a time, not of all of them
        release_freed_memory()
        rows.append(row)
        if seg_row is not None:
            segmented.append({**seg_row, "seconds": 0.0})
        examples[method] = (first[: job.examples].copy(), tau)
        job.log(
            f"  {method:20s} top-1 loc {row['top1_loc_calibrated']:.4f} at tau {tau:.2f} (from val), "
            f"{row['top1_loc']:.4f} at 20%, peak in box {row['peak_in_box']:.4f}  ({row['seconds']}s)"
            + (f", the same maps as {row['same_maps_as']}" if "same_maps_as" in row else "")
        )
    rows += segmented  # each method's segmentation, after every method's own row
    grid = tuple(maps.get_method(job.model, "cam").layer.shape[1:3])  # the CAM layer's map, e.g. (25, 25)
    rows += _reference_rows(job, seen, grid, examples)
    _figures(job, rows, examples)
    title = f"{job.run_dir.name}, step {job.step}, test accuracy {seen.correct.mean():.4f}"
    tables = [metrics_markdown(rows, title, COLUMNS), per_class(rows, seen.labels, seen.correct)]
    for r in rows:
        r.pop("v2_thresholds", None)  # shown in maxboxacc_v2_tau_*
    record = {
        "run": job.run_dir.name,
        "step": job.step,
        "test_accuracy": float(seen.correct.mean()),
        "images": job.n,
        "validation_images": len(job.val),
        "slow_images": min(job.n, job.slow_images),
        "faithfulness_images": min(job.n, job.faithful_images),
        "road_images": min(job.n, job.faithful_images, job.road_images),
        "methods": [{k: v for k, v in r.items() if k not in ("iou", "iou_calibrated", "road")} for r in rows],
        "probs": seen.probs,  # for the failures' gallery; not written
        "cam_iou": next((r["iou_calibrated"] for r in rows if r["method"] == "cam"), None),
    }
    return record, tables


def _method_row(job: Job, seen: _Predictions, method: str, scored: list, twin_segments: dict):
    """One method's row, its segmentation's row (or None), its first chunk's maps and its tau. Twins (e.g. CAM,
    Grad-CAM and HiResCAM on a conv -> GAP -> linear model) are scored once: what identifies a method's maps is
    every validation map, every map of a wrong prediction's class and the first TWIN_CHECK true-class test maps,
    on a grid of every 4th pixel; a twin's other test maps are not made. ``scored`` and ``twin_segments`` collect
    the methods scored so far."""

    model, split = job.model, job.split
    m = min(job.n, job.slow_images) if METHODS[method].slow else job.n
    v = job.val.head(min(len(job.val), m))  # tau from this method's own maps of the validation images
    val_maps = [maps.explain(model, v.float_images(r), method, v.labels[r]) for r in chunks(len(v))]  # val_size maps
    w = seen.wrong[seen.wrong < m]
    wrong_maps = (
        maps.explain(model, split.float_images(w), method, seen.predicted[w]) if len(w) else np.zeros((0, 1, 1))
    )
    head = _scoring_chunks(m)[0]
    first = maps.explain(model, split.float_images(head), method, seen.labels[head])
    # (copies: a strided view would keep the whole chunk's maps alive until the end, one chunk per method)
    thin = lambda x: np.ascontiguousarray(x[:, ::4, ::4])  # noqa: E731
    fingerprint = (np.concatenate([thin(x) for x in val_maps]), thin(wrong_maps), thin(first))
    twin = next((row for earlier, row in scored if _same_maps(earlier, fingerprint)), None)
    if twin is not None:
        row = {**twin, "method": method, "same_maps_as": twin.get("same_maps_as", twin["method"])}
        seg_row = twin_segments.get(twin["method"])
        if seg_row is not None:
            same = f"{row['same_maps_as']} + segmentation"
            seg_row = {**seg_row, "method": f"{method} + segmentation", "same_maps_as": same}
        return row, seg_row, first, twin["calibrated_threshold"]
    cal = localization.calibrate_chunks(zip(val_maps, (v.boxes[r] for r in chunks(len(v))), strict=True))

    def maps_of(r):
        true = first if r == head else maps.explain(model, split.float_images(r), method, seen.labels[r])
        own = true.copy()  # the predicted class's maps: the true class's wherever the prediction is right
        inside = (w >= r.start) & (w < r.stop)
        own[w[inside] - r.start] = wrong_maps[inside]
        return true, own

    seg = None
    if not METHODS[method].slow:  # the segmentation its maps seed: thresholds chosen on validation
        k = min(len(v), SEGMENTATION_CHOICE)
        seg = segmentation.choose(v.float_images(slice(0, k)), val_maps[0][:k], v.masks[:k])
    faithful = {"probs": seen.probs, "predict": job.predict, "faithful": job.faithful_images, "road": job.road_images}
    row, _, seg_row = score(method, maps_of, split, m, cal, seen.correct, **faithful, segmentation=seg)
    row["v2_thresholds"] = cal["v2"]
    scored.append((fingerprint, row))
    twin_segments[method] = seg_row
    return row, seg_row, first, cal["tau"]


def _reference_rows(job: Job, seen: _Predictions, grid: tuple[int, int], examples: dict) -> list[dict]:
    """The rows every method is read against: the ideal maps of the model's grid (the ceiling) and the baselines
    (a centre box, the whole image, a random map); their first maps go into ``examples``."""

    split, val, n = job.split, job.val, job.n
    rows = []
    for name, maps_of, cal in ceiling(split, val, grid):
        row, first, _ = score(name, maps_of, split, n, cal, seen.correct)
        rows.append({**row, "seconds": 0.0})
        examples[name] = (first[: job.examples].copy(), cal["tau"])
    for kind in BASELINES:
        make = (
            lambda r, kind=kind: localization.baseline_maps(  # noqa: E731
                kind, split.boxes[:n], (n, *split.masks.shape[1:]), rows=r
            )
        )
        val_rows = (
            (localization.baseline_maps(kind, val.boxes, val.masks.shape, rows=r), val.boxes[r])
            for r in chunks(len(val))
        )
        cal = localization.calibrate_chunks(val_rows)
        # Faithfulness of one map that knows nothing of the image, the random one, is the reference every method
        # is read against. The centre box is a localization baseline, and a constant map has nothing to measure:
        # the image times 1 is the image (no drop), and it ranks no pixel above another.
        own = kind == FAITHFULNESS_BASELINE
        maps_of = lambda r, make=make, own=own: (make(r), make(r) if own else None)  # noqa: E731
        faithful = {"probs": seen.probs, "predict": job.predict, "faithful": job.faithful_images}
        faithful["road"] = job.road_images
        row, first, _ = score(f"baseline: {kind}", maps_of, split, n, cal, seen.correct, **faithful)
        rows.append({**row, "seconds": 0.0})
        examples[f"baseline: {kind}"] = (first[: job.examples].copy(), cal["tau"])
    return rows


def _figures(job: Job, rows: list[dict], examples: dict) -> None:
    """``eval/iou_histogram.png`` and ``eval/localization_examples.png``."""
    from cam_mnist.viz import plotting

    out = RunFolder(job.run_dir).eval
    out.mkdir(exist_ok=True)
    plotting.histograms(
        out / "iou_histogram.png",
        {r["method"]: r["iou"] for r in rows if "iou" in r},  # the maps' own boxes, not the segmentations'
        "IoU with the true box",
        f"{job.run_dir.name}, step {job.step}: IoU of the 20%-threshold box (true class)",
    )
    plotting.method_grid(
        out / "localization_examples.png",
        job.split.images[: job.examples],
        job.split.boxes[: job.examples],
        {name: (maps, boxes_from_maps(maps, tau)) for name, (maps, tau) in examples.items()},
    )


def per_class(rows: list[dict], labels: np.ndarray, correct: np.ndarray) -> str:
    """Top-1 and GT-known localization (tau from validation) of each digit class, into each row
    (``per_class_top1_loc``, ``per_class_gt_known_loc``); returns the top-1 table: where the maps fail."""

    classes = np.unique(labels)
    lines = [
        "Top-1 localization (τ from val) per digit class: the share of each class's test images classified right "
        "*and* boxed at IoU ≥ 0.5.",
        "",
        "| method | images | " + " | ".join(str(c) for c in classes) + " |",
        "|---|---|" + "---|" * len(classes),
    ]
    for r in rows:
        hit, m = r["iou_calibrated"] >= IOU_CORRECT, r["images"]
        of = [labels[:m] == c for c in classes]
        mean = lambda x, k: round(float(x[k].mean()), 4) if k.any() else None  # noqa: E731 - None: no such image
        r["per_class_top1_loc"] = [mean(hit & correct[:m], k) for k in of]
        r["per_class_gt_known_loc"] = [mean(hit, k) for k in of]
        name = r["method"] + (f" (= {r['same_maps_as']})" if "same_maps_as" in r else "")
        lines.append(f"| {name} | {m} | " + " | ".join(cell("", v) for v in r["per_class_top1_loc"]) + " |")
    return "\n".join(lines + ["", *_per_class_road(rows, labels, classes)])


def _per_class_road(rows: list[dict], labels: np.ndarray, classes: np.ndarray) -> list[str]:
    """The ROAD score (combined, higher is more faithful) of each digit class, into each row that has one
    (``per_class_road``); the table's lines."""
    scored = [r for r in rows if "road" in r]
    if not scored:
        return []
    lines = [
        "ROAD (combined: (LeRF − MoRF) / 2 of the target's probability, higher is more faithful) per digit class, "
        f"on the first {scored[0]['road_images']} test images.",
        "",
        "| method | images | " + " | ".join(str(c) for c in classes) + " |",
        "|---|---|" + "---|" * len(classes),
    ]
    for r in scored:
        k, per_image = r["road_images"], r["road"]
        of = [labels[:k] == c for c in classes]
        r["per_class_road"] = [round(float(per_image[c].mean()), 4) if c.any() else None for c in of]
        name = r["method"] + (f" (= {r['same_maps_as']})" if "same_maps_as" in r else "")
        lines.append(f"| {name} | {k} | " + " | ".join(cell("", v) for v in r["per_class_road"]) + " |")
    return lines
