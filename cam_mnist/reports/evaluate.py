"""Test accuracy of every checkpoint of a run, re-runnable at any time with the same numbers.

``evaluate_run`` scores each checkpoint on a held-out split (by default the run's own test split, from MNIST test
digits only) and keeps the results in ``eval/accuracy_per_step.csv``: checkpoints already scored are skipped
unless forced, and the file is rewritten atomically, sorted by step. Nothing is written until every checkpoint
has been read, so bad input leaves the run exactly as it was.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tqdm import tqdm

from cam_mnist.config import DataConfig, RunConfig, load_run
from cam_mnist.core.errors import ArchitectureMismatch, CheckpointError, DataError
from cam_mnist.core.runs import RunFolder
from cam_mnist.core.tables import read_csv_rows, write_csv_rows
from cam_mnist.data import splits as data
from cam_mnist.model import build_for
from cam_mnist.scoring.cam_localization import cam_localization, validation_threshold
from cam_mnist.scoring.classification import predict_probs, score
from cam_mnist.train import checkpoint
from cam_mnist.train.checkpoint import checkpoints_of, load_trained

REFERENCE_ACCURACY = 0.976  # the TF1 reference repo's reported test accuracy (on a leaky test set)
# The CAM columns of accuracy_per_step.csv; a row written before one of them existed is scored again.
EVAL_COLUMNS = ["cam_top1_loc_tau", "tau_from_val", "cam_top1_loc_20", "cam_gt_known_loc_20", "cam_peak_in_box"]


def check_scorable(run_dir: Path, data_dir: Path) -> None:
    """What scoring a run needs before any model is built: a run folder, a checkpoint, its held-out splits (made
    now if MNIST is there). The command line calls it before importing TensorFlow, so a mistake is answered at once."""
    config = load_run(run_dir)
    checkpoints_of(run_dir)
    data.prepare(config.data, data_dir, fetch=False)


def split_for(config: RunConfig, data_dir: Path, **changes) -> tuple[DataConfig, data.Split]:
    """The test split of the run's clutter settings with ``changes`` (canvas, distractors, data_seed) applied: its
    first ``test_size`` images (all for 0)."""
    settings = dataclasses.replace(config.data, **{k: v for k, v in changes.items() if v is not None})
    folder = data.prepare(settings, data_dir, fetch=False)
    return settings, data.read_split(folder / "test.npz", "test").head(settings.test_size or None)


def validation_for(config: RunConfig, settings: DataConfig, data_dir: Path) -> data.Split:
    """The validation images the run watched while training (its first ``val_size`` held-out ones), in the clutter
    ``settings`` of the split being scored: the images on which the map threshold tau is chosen."""
    folder = data.prepare(settings, data_dir, fetch=False)
    return data.held_out_of(data.read_split(folder / "val.npz", "val"), settings).head(config.train.val_size)


# --------------------------------------------------------------------------------------------- checkpoints of a run
def csv_name(default: DataConfig, settings: DataConfig) -> str:
    """``accuracy_per_step.csv`` for the run's own test split, a suffixed name for any other clutter."""
    if settings == default:
        return "accuracy_per_step.csv"
    return f"accuracy_per_step-{data.settings_dir(settings).name}.csv"


def read_rows(path: Path) -> dict[int, dict]:
    """The rows of a metrics CSV (``accuracy_per_step.csv``, ``metrics.csv``) by step."""
    return {int(r["step"]): r for r in read_csv_rows(path)}


def write_rows(path: Path, rows: dict[int, dict]) -> None:
    fields = list(rows[max(rows)].keys())  # the newest row was scored now, so it has every column
    write_csv_rows(path, fields, [rows[s] for s in sorted(rows)])


def evaluate_run(
    run_dir: Path,
    data_dir: Path = data.DATA_DIR,
    force: bool = False,
    every: int = 1,
    progress: bool = True,
    log=print,
    **split_changes,
) -> tuple[dict[int, dict], dict]:
    """Score every not-yet-scored checkpoint (or every ``every``-th one, and always the newest); returns all rows
    by step and the newest checkpoint's metrics."""

    run_dir = Path(run_dir)
    config = load_run(run_dir)
    found = checkpoints_of(run_dir)[::-1][::every][::-1]  # counted back from the newest: the newest is scored
    settings, split = split_for(config, data_dir, **split_changes)
    val = validation_for(config, settings, data_dir)
    model, predict = build_for(config, settings.canvas)
    path = RunFolder(run_dir).eval / csv_name(config.data, settings)
    rows = {} if force else read_rows(path)
    final, evaluated = None, []
    for step, ckpt in tqdm(found, disable=not progress, unit="ckpt", desc="checkpoints"):
        if step in rows and step != found[-1][0] and all(rows[step].get(c) for c in EVAL_COLUMNS):
            continue
        try:
            state = checkpoint.load(ckpt, model)
        except ArchitectureMismatch:
            raise  # the run's config.json does not build the network that wrote it: no checkpoint would load
        except CheckpointError as e:
            log(f"skipping checkpoint: {e}")
            continue
        model.set_weights(state.model_weights)
        metrics, rows[step] = score_checkpoint(
            model, predict, split, val, config.model.head, step=step, extras=state.extras
        )
        final = (step, metrics)
        evaluated.append(step)
    if final is None:
        raise DataError(f"{run_dir}: no readable checkpoint (all were skipped)")
    write_rows(path, rows)
    return rows, {"step": final[0], **final[1], "settings": settings, "csv": path, "evaluated": evaluated}


def score_checkpoint(model, predict, split: data.Split, val: data.Split, head: str, *, step: int, extras: dict):
    """The metrics of the model's current weights on ``split`` (tau chosen on ``val``), and their CSV row."""
    probs = predict_probs(predict, split)
    metrics = score(probs, split.labels, head)
    tau = validation_threshold(model, val)
    cam = cam_localization(model, split, probs, tau)
    row = {
        "step": step,
        "test_accuracy": f"{metrics['accuracy']:.5f}",
        "test_loss": f"{metrics['loss']:.5f}",
        "cam_top1_loc_tau": f"{cam['loc_tau']:.5f}",
        "tau_from_val": f"{tau:.2f}",
        "cam_top1_loc_20": f"{cam['loc_20']:.5f}",
        "cam_gt_known_loc_20": f"{cam['gt_known_20']:.5f}",
        "cam_peak_in_box": f"{cam['peak_in_box']:.5f}",
        "wall_s": f"{extras.get('wall_s', float('nan')):.1f}",
        **({"per_digit_accuracy": f"{metrics['per_digit']:.5f}"} if "per_digit" in metrics else {}),
        **{f"acc_class_{c}": f"{a:.5f}" for c, a in enumerate(metrics.get("per_class", []))},
    }
    return metrics, row


def robustness(run_dir: Path, distractors=(0, 4, 8, 16), data_dir: Path = data.DATA_DIR) -> list[dict]:
    """Accuracy of the run's newest readable checkpoint as clutter grows."""
    config, _, predict, state = load_trained(run_dir)
    out = []
    for d in distractors:
        settings, split = split_for(config, data_dir, distractors=d)
        m = score(predict_probs(predict, split), split.labels, config.model.head)
        out.append({"distractors": d, "test_accuracy": m["accuracy"], "test_loss": m["loss"], "step": state.step})
    return out
