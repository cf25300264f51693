"""Scoring a trained run's explanations against the digits' true boxes and masks, on the whole test split: the
library function behind ``python -m cam_mnist localize`` and ``eval --localize``.

:func:`localize` writes ``eval/localization.json``, ``eval/localization.md`` (methods x metrics),
``eval/localization_examples.png`` (each method's map and box beside the true box) and ``eval/iou_histogram.png``,
and returns the record it wrote. The metrics themselves are :mod:`cam_mnist.localization` (arrays in, numbers out);
this module runs the model over a run's checkpoint and the held-out splits and puts the numbers in tables.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from cam_mnist.errors import DataError
from cam_mnist.registry import METHODS, info, method_names

# Several digits per image: the class-discriminative maps of the layer (the pixel-level ones barely change with
# the class, a class-agnostic one not at all), and not the slow ones.
DIGITS_DEFAULT = method_names(slow=False, pixel_level=False, class_agnostic=False)
BASELINES = ["centre", "full", "random"]
FAITHFULNESS_BASELINE = "random"
TWIN_CHECK = 1000  # test images whose maps two methods must share, beside every validation map, to be twins
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
    ("mask_iou", "mask IoU"),
    ("pixel_ap", "pixel AP"),
    ("average_drop_pct", "avg drop %"),
    ("increase_in_confidence_pct", "incr. conf. %"),
    ("deletion_auc", "deletion AUC ↓"),
    ("insertion_auc", "insertion AUC ↑"),
    ("images", "images"),
    ("seconds", "seconds"),
]


def score(name, maps_true, maps_predicted, split, n, probs, near, predict, images, faithful_n, cal) -> dict:
    """Every metric for one method (or baseline) on the first ``n`` test images; boxes at the paper's 20% and at
    the thresholds ``cal`` chosen on validation maps of the same method (:func:`cam_mnist.localization.calibrate`:
    top-1 localization, MaxBoxAcc and MaxBoxAccV2 all take tau from validation, none from test)."""
    from cam_mnist import localization as loc

    predicted = probs.argmax(1)
    correct = predicted[:n] == split.labels[:n]
    result = loc.box_metrics(maps_true, correct, split.boxes[:n], calibrated=cal["tau"], v2=cal["v2"])
    deltas = sorted(cal["v2"])
    result["maxboxacc_v2_by_delta"] = "/".join(f"{result[f'maxboxacc_v2_{round(d * 100)}']:.2f}" for d in deltas)
    result["maxboxacc_v2_by_delta"] += " (" + "/".join(f"{cal['v2'][d]:.2f}" for d in deltas) + ")"
    result |= loc.pointing_metrics(maps_true, split.masks[:n], near[:n])
    result |= loc.segmentation_metrics(maps_true, split.masks[:n])
    if maps_predicted is not None:  # faithfulness needs a model's own map; the ceiling's ideal maps have none
        result |= loc.average_drop_increase(predict, images[:n], maps_predicted, predicted[:n], probs[:n])
        f = min(n, faithful_n)
        result |= loc.deletion_insertion(predict, images[:f], maps_predicted[:f], predicted[:f], probs=probs[:f])
    return {"method": name, "images": n, **result}


def _same_maps(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...], atol: float = 1e-5) -> bool:
    """Whether two methods gave the same maps (within float rounding), so that every score of one is the
    other's: on a conv -> GAP -> linear model CAM, Grad-CAM, HiResCAM and XGrad-CAM are one map (tested
    identities). Checked on a few images first: most pairs differ there."""
    return all(
        x.shape == y.shape and np.allclose(x[:16], y[:16], atol=atol) for x, y in zip(a, b, strict=True)
    ) and all(np.allclose(x, y, atol=atol) for x, y in zip(a, b, strict=True))


def ceiling(split, val, n: int, grid: tuple[int, int]) -> list[tuple[str, np.ndarray, float]]:
    """The ideal-map rows: (name, test maps, thresholds chosen on the validation ideal maps) for the map's own
    grid, sharp and blurred (:func:`cam_mnist.localization.ideal_maps`)."""
    from cam_mnist import localization as loc

    rows = []
    for blur in (0.0, loc.IDEAL_BLUR_PX):
        name = f"ceiling: ideal {grid[0]}x{grid[1]} map" + (f", blurred {blur:g} px" if blur else "")
        cal = loc.calibrate(loc.ideal_maps(val.masks, grid, blur), val.boxes)
        rows.append((name, loc.ideal_maps(split.masks[:n], grid, blur), cal))
    return rows


def localize(
    run_dir: str | Path | None = None,
    data_dir: str | Path = "data",
    *,
    step: int | None = None,
    methods: list[str] | None = None,
    images: int | None = None,
    slow_images: int = 500,
    faithful_images: int = 500,
    examples: int = 6,
    log=print,
) -> dict:
    """Score ``methods`` (default: every registered one) on the run's test split; write the tables and figures
    into ``<run>/eval`` and return the record of ``localization.json`` (``localization_digits.json`` for several
    digits per image), with the Markdown table under ``"table"``.

    Args:
        run_dir: a training run (default: ``out/latest``).
        step: the checkpoint to score (default: the newest readable one).
        images: score only the first N test images (default: all of them).
        slow_images: test images for the slow methods (many passes per map: Score-CAM, occlusion).
        faithful_images: test images for the deletion / insertion curves.
        examples: test images in the examples figure.
    """
    from cam_mnist import checkpoint, evaluate
    from cam_mnist.runs import run_dir_or_latest

    for method in methods or []:
        info(method)  # refuses an unknown name, listing the known ones
    run_dir, data_dir = run_dir_or_latest(run_dir), Path(data_dir)
    config = evaluate.load_run(run_dir)
    state = checkpoint.load(checkpoint.path_for(run_dir, step), None) if step else checkpoint.latest_valid(run_dir)
    if state is None:
        raise DataError(f"{run_dir}: no readable checkpoint; train with `make train`")
    model, predict = evaluate.build_for(config)
    model.set_weights(state.model_weights)
    settings, split = evaluate.split_for(config, data_dir)
    val = evaluate.validation_for(config, settings, data_dir)
    n = min(images or len(split), len(split))
    common = (run_dir, state.step, model, predict, split, val, n)  # what both kinds of split are scored with
    if split.labels.ndim == 2:
        return _localize_digits(*common, methods or DIGITS_DEFAULT, slow_images, examples, log, config.model.head)
    return _localize_one(*common, methods or list(METHODS), slow_images, faithful_images, examples, log)


def _localize_one(
    run_dir, step, model, predict, split, val, n, methods, slow_images, faithful_images, n_examples, log
) -> dict:
    """One digit per image: every metric of every method, the ceiling rows and the baselines."""
    from cam_mnist import evaluate, localization, plotting
    from cam_mnist.boxes import boxes_from_maps, near
    from cam_mnist.cams import explain, get_method

    images = split.float_images(slice(0, n))
    probs = evaluate.predict_probs(predict, split, n)
    labels, predicted = split.labels[:n], probs.argmax(1)
    correct = predicted == labels
    wrong = np.flatnonzero(~correct)
    dilated = near(split.masks[:n], localization.POINTING_TOLERANCE)  # the same for every method: made once
    rows, examples, scored = [], {}, []
    for method in methods:
        m = min(n, slow_images) if METHODS[method].slow else n
        began = time.perf_counter()
        v = val.head(min(len(val), m))  # tau from this method's own maps of the validation images
        val_maps = explain(model, v.float_images(), method, v.labels)
        w = wrong[wrong < m]
        wrong_maps = explain(model, images[w], method, predicted[w]) if len(w) else np.zeros((0, *images.shape[1:3]))
        # Twins (e.g. CAM, Grad-CAM and HiResCAM on a conv -> GAP -> linear model) are scored once. What
        # identifies a method's maps: every validation map, every map of a wrong prediction's class and the first
        # TWIN_CHECK true-class test maps, on a grid of every 4th pixel; a twin's other test maps are not made.
        head = explain(model, images[: min(m, TWIN_CHECK)], method, labels[: min(m, TWIN_CHECK)])
        fingerprint = tuple(x[:, ::4, ::4].copy() for x in (val_maps, wrong_maps, head))
        twin = next((row for earlier, row in scored if _same_maps(earlier, fingerprint)), None)
        maps_true = head
        if twin is not None:
            cal = {"tau": twin["calibrated_threshold"], "v2": twin["v2_thresholds"]}
            row = {**twin, "method": method, "same_maps_as": twin.get("same_maps_as", twin["method"])}
        else:
            if m > len(head):
                maps_true = np.concatenate([head, explain(model, images[len(head) : m], method, labels[len(head) : m])])
            maps_predicted = maps_true.copy()  # equal wherever the prediction is right
            maps_predicted[w] = wrong_maps
            cal = localization.calibrate(val_maps, v.boxes)
            row = score(
                method, maps_true, maps_predicted, split, m, probs, dilated, predict, images, faithful_images, cal
            )
            row["v2_thresholds"] = cal["v2"]
            scored.append((fingerprint, row))
        tau = cal["tau"]
        row["seconds"] = round(time.perf_counter() - began, 1)
        rows.append(row)
        examples[method] = (maps_true[:n_examples], tau)
        log(
            f"  {method:20s} top-1 loc {row['top1_loc_calibrated']:.4f} at tau {tau:.2f} (from val), "
            f"{row['top1_loc']:.4f} at 20%, peak in box {row['peak_in_box']:.4f}  ({row['seconds']}s)"
            + (f", the same maps as {row['same_maps_as']}" if "same_maps_as" in row else "")
        )
    grid = tuple(get_method(model, "cam").layer.output.shape[1:3])  # the CAM layer's map, e.g. (25, 25)
    for name, maps, cal in ceiling(split, val, n, grid):
        rows.append({**score(name, maps, None, split, n, probs, dilated, predict, images, 0, cal), "seconds": 0.0})
        examples[name] = (maps[:n_examples], cal["tau"])
    for kind in BASELINES:
        maps = localization.baseline_maps(kind, split.boxes[:n], (n, *images.shape[1:3]))
        cal = localization.calibrate(localization.baseline_maps(kind, val.boxes, val.masks.shape), val.boxes)
        # Faithfulness of one map that knows nothing of the image, the random one, is the reference every method
        # is read against. The centre box is a localization baseline, and a constant map has nothing to measure:
        # the image times 1 is the image (no drop), and it ranks no pixel above another.
        own = maps if kind == FAITHFULNESS_BASELINE else None
        row = score(f"baseline: {kind}", maps, own, split, n, probs, dilated, predict, images, faithful_images, cal)
        rows.append({**row, "seconds": 0.0})
        examples[f"baseline: {kind}"] = (maps[:n_examples], cal["tau"])

    out = run_dir / evaluate.EVAL
    out.mkdir(exist_ok=True)
    plotting.histograms(
        out / "iou_histogram.png",
        {r["method"]: r["iou"] for r in rows},
        "IoU with the true box",
        f"{run_dir.name}, step {step}: IoU of the 20%-threshold box (true class)",
    )
    plotting.method_grid(
        out / "localization_examples.png",
        split.images[:n_examples],
        split.boxes[:n_examples],
        {name: (maps, boxes_from_maps(maps, tau)) for name, (maps, tau) in examples.items()},
    )
    table = markdown(rows, split_name=f"{run_dir.name}, step {step}, test accuracy {correct.mean():.4f}")
    for r in rows:
        r.pop("v2_thresholds", None)  # shown in maxboxacc_v2_tau_*
    record = {
        "run": run_dir.name,
        "step": step,
        "test_accuracy": float(correct.mean()),
        "images": n,
        "validation_images": len(val),
        "slow_images": min(n, slow_images),
        "faithfulness_images": min(n, faithful_images),
        "methods": [{k: v for k, v in r.items() if k != "iou"} for r in rows],
    }
    (out / "localization.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "localization.md").write_text(table + "\n")
    log(f"\n-> {out / 'localization.json'}, {out / 'localization.md'}, {out / 'localization_examples.png'}")
    return {**record, "table": table}


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


def _localize_digits(run_dir, step, model, predict, split, val, n, methods, slow_images, n_examples, log, head) -> dict:
    """Several digits per image: each digit scored with the map of its own class (see
    :func:`cam_mnist.localization.per_digit_metrics`); writes ``eval/localization_digits.{json,md,png}``."""
    from cam_mnist import evaluate, localization, plotting
    from cam_mnist.boxes import boxes_from_maps
    from cam_mnist.cams import explain

    def class_maps(split, method, m):  # (m, K, H, W): the map of each digit's class
        images = split.float_images(slice(0, m))
        return np.stack([explain(model, images, method, split.labels[:m, j]) for j in range(k)], 1)

    probs = evaluate.predict_probs(predict, split, n)
    labels = split.labels[:n]
    found = evaluate.detected(probs, labels)  # (n, K)
    metrics = evaluate.multilabel_metrics(probs, labels, head)
    k = labels.shape[1]
    rows, examples = [], {}
    for method in methods:
        m = min(n, slow_images) if METHODS[method].slow else n
        began = time.perf_counter()
        v = min(len(val), m)
        tau = localization.choose_threshold(
            class_maps(val, method, v).reshape(-1, *val.masks.shape[2:]), val.boxes[:v].reshape(-1, 4)
        )
        maps = class_maps(split, method, m)
        row = localization.per_digit_metrics(maps, split.boxes[:m], split.masks[:m], found[:m], tau)
        rows.append({"method": method, **row, "images": m, "seconds": round(time.perf_counter() - began, 1)})
        log(
            f"  {method:16s} GT-known loc {row['gt_known_loc_calibrated']:.4f} at tau {tau:.2f} (from val), "
            f"peak in its box {row['peak_in_box']:.4f}"
        )
        for j in range(k):
            examples[f"{method}: class {j + 1}"] = (maps[:n_examples, j], tau)
    for kind in ("centre", "random"):
        flat = localization.baseline_maps(kind, split.boxes[:n].reshape(-1, 4), (n * k, *split.images.shape[1:]))
        maps = flat.reshape(n, k, *flat.shape[1:])
        row = localization.per_digit_metrics(maps, split.boxes[:n], split.masks[:n], found)
        rows.append({"method": f"baseline: {kind}", **row, "images": n, "seconds": 0.0})

    out = run_dir / evaluate.EVAL
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
    table = markdown(rows, title, DIGIT_COLUMNS)
    record = {"run": run_dir.name, "step": step, "images": n, "validation_images": len(val), **metrics, "methods": rows}
    (out / "localization_digits.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "localization_digits.md").write_text(table + "\n")
    log(f"\n-> {out / 'localization_digits.json'}, {out / 'localization_digits_examples.png'}")
    return {**record, "table": table}


def markdown(rows: list[dict], split_name: str, columns=COLUMNS) -> str:
    lines = [
        f"Localization on the held-out test split ({split_name}).",
        "",
        "| method | " + " | ".join(label for _, label in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for r in rows:
        name = r["method"] + (f" (= {r['same_maps_as']})" if "same_maps_as" in r else "")
        lines.append(f"| {name} | " + " | ".join(_cell(key, r.get(key)) for key, _ in columns) + " |")
    return "\n".join(lines)


def _cell(key: str, value) -> str:
    if value is None:
        return "–"  # a metric that does not apply (faithfulness of an ideal map)
    if not isinstance(value, float):
        return str(value)
    if key.endswith(("pct", "seconds")):
        return f"{value:.1f}"
    return f"{value:.2f}" if key.endswith("threshold") else f"{value:.4f}"
