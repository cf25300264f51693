"""``localize``'s sanity checks (:mod:`cam_mnist.scoring.sanity`, Adebayo et al. 2018) on a trained run: run on a few
test images, put in tables beside localization, and drawn (similarity against stage, one line per method).

The mark a method gets: it **depends on the model** when, with every block above the first conv re-initialised,
its maps no longer box the digits (GT-known localization below half the trained model's) and no longer rank the
pixels as before (Spearman's rank correlation of the absolute maps below 0.5). A method that still boxes the digit
with the network's learned layers replaced by random ones shows the image's edges, not what the model learned.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cam_mnist.core.errors import DataError
from cam_mnist.core.runs import RunFolder
from cam_mnist.core.tables import markdown_table
from cam_mnist.maps.registry import METHODS
from cam_mnist.train import checkpoint

RANDOM_LABELS = "random-labels"  # the run beside the scored one that data randomization compares with
LEFT_SHARE, RANK_BOUND = 0.5, 0.5  # the mark's bounds (module doc)


def run(model, split, val, methods, *, n_fast: int, n_slow: int, random_run: Path, log=print) -> dict:
    """The sanity checks of ``methods`` on the first test and validation images (``n_slow`` for the slow ones)."""
    from cam_mnist.scoring import sanity

    counts = {m: min(len(split), len(val), n_slow if METHODS[m].slow else n_fast) for m in methods}
    n = max(counts.values())
    test = (split.float_images(slice(0, n)), split.labels[:n], split.boxes[:n], split.masks[:n])
    held = (val.float_images(slice(0, n)), val.labels[:n], val.boxes[:n], val.masks[:n])
    log(f"\nsanity checks: cascading model-parameter randomization on {n_fast} test images ({n_slow} for the slow)")
    # CAM's segmentation is checked too (its thresholds chosen again at every stage: 24 segmentations each)
    stages = sanity.model_randomization(model, counts, test, held, segmented={"cam"} & set(methods), log=log)
    checks = {"sanity_images": counts, "model_randomization": stages}
    if RunFolder(random_run).config.exists():
        _, random_model, _, state = checkpoint.load_trained(random_run)
        data = sanity.data_randomization(model, random_model, counts, test, held)
        checks["data_randomization"] = {"run": random_run.name, "step": state.step, "methods": data}
        log(
            f"  data randomization against {random_run.name}: "
            + ", ".join(f"{m} {d['spearman_abs']:.2f}" for m, d in data.items())
        )
    else:
        checks["data_randomization"] = {
            "missing": f'no run at {random_run}: `make train ARGS="--preset random-labels --run-dir {random_run}"`'
        }
    checks["depends_on_model"] = {m: depends_on_model(stages) for m, stages in checks["model_randomization"].items()}
    return checks


def above_first_conv(stages: list[dict]) -> dict:
    """The stage with every block but the bottom one re-initialised (the last stage if the model has one block)."""
    return stages[-2] if len(stages) > 2 else stages[-1]


def depends_on_model(stages: list[dict]) -> bool:
    """The mark (module doc): randomized above the first conv, the maps lose the digit and their ranking."""
    left = above_first_conv(stages)
    return left["gt_known"] < LEFT_SHARE * stages[0]["gt_known"] and left["spearman_abs"] < RANK_BOUND


def _stage_name(stage: dict) -> str:
    done = stage["randomized"]
    return "trained" if not done else (done[0] if len(done) == 1 else f"… {done[-1]}")


def markdown(checks: dict) -> str:
    """The sanity checks as tables: localization left and rank correlation per stage, data randomization."""
    runs = checks["model_randomization"]
    names = [_stage_name(s) for s in next(iter(runs.values()))]
    counts = checks["sanity_images"]
    marks = checks["depends_on_model"]
    localization = markdown_table(
        ["method", "images", *names, "depends on the model"],
        [
            [method, counts[method], *(f"{s['gt_known']:.2f}" for s in stages)]
            + ["yes" if marks[method] else "**no**: its maps survive a random network"]
            for method, stages in runs.items()
        ],
    )
    parts = [
        "Sanity checks (Adebayo et al. 2018, arXiv 1810.03292) on the first test and validation images "
        f"({', '.join(sorted({str(n) for n in counts.values()}))} per method, column `images`). Cascading "
        "randomization re-initialises the blocks from the logits down, one more per column (`… conv2`: every "
        "block above the first conv). GT-known localization, τ chosen again on the randomized model's validation "
        "maps:\n\n" + localization
    ]
    segmented = {m: stages for m, stages in runs.items() if "gt_known_segmented" in stages[0]}
    if segmented:
        rows = [[f"{m} + segmentation", *(f"{s['gt_known_segmented']:.2f}" for s in st)] for m, st in segmented.items()]
        parts.append(
            "The segmentation each map seeds (`<method> + segmentation`, thresholds chosen again on validation at "
            "each stage): GT-known localization of its box. Its seeds come from the model, so it must fail with "
            "it:\n\n" + markdown_table(["method", *names], rows)
        )
    parts.append(
        "Spearman rank correlation of the absolute signed maps with the trained model's (without absolute values, "
        "then SSIM of the maps, at the stage `… conv2`):\n\n"
        + markdown_table(["method", *names[1:], "no abs.", "SSIM"], [_rank_row(m, st) for m, st in runs.items()])
    )
    parts.append(_data_randomization_markdown(checks["data_randomization"]))
    return "\n\n".join(parts)


def _rank_row(method: str, stages: list[dict]) -> list:
    left = above_first_conv(stages)
    return [method, *(f"{s['spearman_abs']:.2f}" for s in stages[1:]), f"{left['spearman']:.2f}", f"{left['ssim']:.2f}"]


def _data_randomization_markdown(data: dict) -> str:
    if "missing" in data:
        return f"Data randomization: not run ({data['missing']})."
    keys = ("spearman_abs", "spearman", "ssim", "gt_known")
    table = markdown_table(
        ["method", "images", "Spearman (abs.)", "Spearman", "SSIM", "GT-known, random labels"],
        [[m, d["images"], *(f"{d[key]:.2f}" for key in keys)] for m, d in data["methods"].items()],
    )
    return (
        f"Data randomization: the same network trained on permuted labels (`{data['run']}`, step {data['step']}): "
        "the similarity of its maps with the trained model's, and its own GT-known localization:\n\n" + table
    )


def figure(path: Path, checks: dict, title: str) -> None:
    """Similarity to the trained model's maps against the randomization stage, one line per method."""
    from cam_mnist.viz import plotting

    runs = checks["model_randomization"]
    names = [_stage_name(s) for s in next(iter(runs.values()))]
    series = {m: np.array([s["spearman_abs"] for s in stages]) for m, stages in runs.items()}
    left = {m: np.array([s["gt_known"] for s in stages]) for m, stages in runs.items()}
    plotting.stage_plot(
        path,
        names,
        {"Spearman rank correlation (abs.) with the trained maps": series, "GT-known localization left": left},
        f"{title}: cascading randomization, from the logits down",
    )


def figure_from_run(run_dir: Path, out: Path) -> Path:
    """The figure of a run whose ``localize`` ran the sanity checks (``eval/localization.json``)."""

    path = RunFolder(run_dir).eval / "localization.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    if "model_randomization" not in record:
        raise DataError(f"{path}: no sanity checks; run `make localize` on {run_dir} first")
    figure(out, record, Path(run_dir).name)
    return out
