"""Test accuracy of every checkpoint of a run, re-runnable at any time with the same numbers.

``evaluate_run`` scores each checkpoint on a held-out split (by default the run's own test split, from MNIST test
digits only) and keeps the results in ``eval/accuracy_per_step.csv``: checkpoints already scored are skipped
unless forced, and the file is rewritten atomically, sorted by step. Nothing is written until every checkpoint
has been read, so bad input leaves the run exactly as it was.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np

from cam_mnist import checkpoint, data
from cam_mnist.atomic import atomic_write_bytes
from cam_mnist.config import DataConfig, RunConfig
from cam_mnist.errors import ArchitectureMismatch, CheckpointError, DataError

EVAL = "eval"
PREDICT_BATCH = 128  # images per forward pass of a run's model: 500 held 0.4 GB more memory, for no speed
REFERENCE_ACCURACY = 0.976  # the TF1 reference repo's reported test accuracy (on a leaky test set)
# The CAM columns of accuracy_per_step.csv; a row written before one of them existed is scored again.
EVAL_COLUMNS = ["cam_top1_loc_tau", "tau_from_val", "cam_top1_loc_20", "cam_gt_known_loc_20", "cam_peak_in_box"]


# -------------------------------------------------------------------------------------------------- pure scoring
def predict_probs(predict, split: data.Split, n: int | None = None, batch: int = 500) -> np.ndarray:
    """Class probabilities (n, classes) for the first ``n`` images, in fixed-size batches."""
    n = len(split) if n is None else min(n, len(split))
    return np.concatenate([predict(split.float_images(slice(lo, min(lo + batch, n)))) for lo in range(0, n, batch)])


def classification_metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy, mean cross-entropy, per-class accuracy and the confusion matrix (rows true, columns predicted)."""
    n, classes = probs.shape
    predicted = probs.argmax(1)
    confusion = np.zeros((classes, classes), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    support = confusion.sum(1)
    return {
        "accuracy": float((predicted == labels).mean()),
        "loss": float(-np.log(np.clip(probs[np.arange(n), labels], 1e-12, None)).mean()),
        "per_class": np.divide(np.diag(confusion), support, out=np.full(classes, np.nan), where=support > 0),
        "confusion": confusion,
    }


def multilabel_metrics(probs: np.ndarray, labels: np.ndarray, head: str) -> dict:
    """Several digits per image. labels (N, K): the K distinct true classes of each image; the model names the K
    classes it rates most probable (:func:`named`). ``accuracy`` is the exact match (the named set is the true set),
    ``per_digit`` the fraction of true digits named, ``loss`` the loss the head trains on: the mean binary
    cross-entropy per class for ``sigmoid``, the cross-entropy against 1/K on each true class for ``softmax``."""
    n, classes = probs.shape
    truth = multi_hot(labels, classes)
    p = np.clip(probs.astype(np.float64), 1e-12, 1 - 1e-12)  # in float32, 1 - 1e-12 would round to 1: log(0)
    if head == "sigmoid":
        loss = -(truth * np.log(p) + (1 - truth) * np.log(1 - p)).mean()
    else:
        loss = -(truth / labels.shape[1] * np.log(p)).sum(1).mean()
    return {
        "accuracy": float((named(probs, labels.shape[1]) == truth.astype(bool)).all(1).mean()),
        "per_digit": float(detected(probs, labels).mean()),
        "loss": float(loss),
    }


def named(probs: np.ndarray, k: int) -> np.ndarray:
    """(N, classes) bool: the k classes of highest probability in each image. Every image holds exactly k digits
    (the data's ``digits``), so the model names k classes. No fixed probability threshold would fit both heads:
    a softmax over k-hot targets gives each present class about 1/k, a sigmoid about 1."""
    out = np.zeros(probs.shape, bool)
    np.put_along_axis(out, np.argsort(-probs, axis=1, kind="stable")[:, :k], True, 1)
    return out


def multi_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    """(N, K) class indices -> (N, classes) float32 with a 1 at each."""
    out = np.zeros((len(labels), classes), np.float32)
    np.put_along_axis(out, np.asarray(labels), 1.0, 1)
    return out


def score(probs: np.ndarray, labels: np.ndarray, head: str) -> dict:
    """The metrics that fit the labels: one class per image (N,) or several (N, K), with the loss ``head`` trains on."""
    return classification_metrics(probs, labels) if labels.ndim == 1 else multilabel_metrics(probs, labels, head)


def detected(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per true digit, whether the model names its class: (N,) argmax == label for one digit per image,
    (N, K) the class among the K most probable (:func:`named`) for K digits."""
    if labels.ndim == 1:
        return probs.argmax(1) == labels
    return np.take_along_axis(named(probs, labels.shape[1]), labels, 1)


def cam_localization(model, split: data.Split, probs: np.ndarray, tau: float | None = None) -> dict:
    """CAM localization of the model's current weights on ``split``, each digit scored with the map of its true
    class against its own box:

    - ``loc_20``: top-1 localization by the CAM paper's protocol (box above 20% of the map's max, IoU >= 0.5,
      class named: argmax, or among the top K with K digits); ``gt_known_20``: the same without the class;
    - ``loc_tau``: top-1 localization at the threshold ``tau`` chosen on validation (:func:`localization.
      choose_threshold`); with ``tau=None`` it is chosen on ``split`` itself, which is what training reports on
      its validation images;
    - ``peak_in_box``: the map's maximum lies in the digit's box.
    Where the class is predicted, the predicted class's map is the true class's, so no other maps are needed."""
    from cam_mnist import localization
    from cam_mnist.boxes import IOU_CORRECT, PAPER_THRESHOLD

    sweep = localization.MAXBOX_THRESHOLDS if tau is None else [tau]
    ious, peak = _map_ious(model, split, [PAPER_THRESHOLD, *sweep])
    tau = localization.best_threshold({float(t): ious[float(t)] for t in sweep}) if tau is None else tau
    found = detected(probs, split.labels).ravel()
    return {
        "loc_20": float((found & (ious[PAPER_THRESHOLD] >= IOU_CORRECT)).mean()),
        "gt_known_20": float((ious[PAPER_THRESHOLD] >= IOU_CORRECT).mean()),
        "loc_tau": float((found & (ious[tau] >= IOU_CORRECT)).mean()),
        "tau": float(tau),
        "peak_in_box": float(peak.mean()),
    }


def validation_threshold(model, val: data.Split) -> float:
    """The map threshold tau that boxes the most validation digits with their true class's CAM: chosen here once,
    then applied unchanged to the test split (:func:`localization.choose_threshold`)."""
    from cam_mnist import localization

    return localization.best_threshold(_map_ious(model, val, localization.MAXBOX_THRESHOLDS)[0])


def _map_ious(model, split: data.Split, thresholds) -> tuple[dict[float, np.ndarray], np.ndarray]:
    """{threshold: (N*K,) IoU of each digit's protocol box} from the CAM of its true class, and (N*K,) whether the
    map's peak lies in the digit's box: made a chunk of images at a time, so no N x H x W array is held."""
    from cam_mnist import localization
    from cam_mnist.boxes import peak_in_box
    from cam_mnist.tally import chunks

    ious, peaks = {}, []
    for rows in chunks(len(split)):
        part = split.subset(rows)
        maps, boxes = true_class_maps(model, part), part.boxes.reshape(-1, 4)  # (n*K, H, W), (n*K, 4)
        for t, value in localization.ious_by_threshold(maps, boxes, thresholds).items():
            ious.setdefault(t, []).append(value)
        peaks.append(peak_in_box(maps, boxes))
    return {t: np.concatenate(v) for t, v in ious.items()}, np.concatenate(peaks)


def true_class_maps(model, split: data.Split) -> np.ndarray:
    """CAM of each digit's true class: (N*K, H, W), digit k of image i at row i*K + k (K = 1 for one digit)."""
    from cam_mnist.cams import get_method

    cam = get_method(model, "cam")  # reads the current weights at every call
    images, n = split.float_images(), len(split)
    labels = split.labels.reshape(n, -1)  # (N, K)
    return np.stack([cam(images, labels[:, k]) for k in range(labels.shape[1])], 1).reshape(-1, *images.shape[1:3])


# --------------------------------------------------------------------------------------------------- a run's model
def load_run(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / "config.json"
    if not Path(run_dir).is_dir():
        raise DataError(f"{run_dir}: no such run folder; train one with `make train`")
    if not path.exists():
        raise DataError(f"{path}: missing, so {run_dir} is not a training run folder (made by `make train`)")
    return RunConfig.load(path)


def checkpoints_of(run_dir: Path) -> list[tuple[int, Path]]:
    """The run's (step, path) checkpoints, oldest first; none is an error naming the command that makes them."""
    found = checkpoint.list_checkpoints(run_dir)
    if not found:
        raise DataError(
            f"{run_dir}: no checkpoints in {Path(run_dir) / checkpoint.FOLDER}; "
            f"train with `python -m cam_mnist train --run-dir {run_dir}`"
        )
    return found


def check_scorable(run_dir: Path, data_dir: Path) -> None:
    """What scoring a run needs before any model is built: a run folder, a checkpoint, its held-out splits (made
    now if MNIST is there). The command line calls it before importing TensorFlow, so a mistake is answered at once."""
    config = load_run(run_dir)
    checkpoints_of(run_dir)
    data.prepare(config.data, data_dir, fetch=False)


def build_for(config: RunConfig, canvas: int | None = None):
    """The run's model and a compiled ``predict`` (float images -> probabilities). The network is fully
    convolutional up to GAP, so the same weights serve any canvas size."""
    import tensorflow as tf

    from cam_mnist.model import build_model

    model = build_model(config.model, canvas or config.data.canvas)
    return model, batched(tf.function(lambda x: model(x, training=False), reduce_retracing=True))


def batched(forward):
    """``forward`` (a compiled model call) as a numpy function of any number of images, at most PREDICT_BATCH a
    pass: TensorFlow keeps the memory of its largest pass."""
    return lambda x: np.concatenate(
        [forward(x[lo : lo + PREDICT_BATCH]).numpy() for lo in range(0, len(x), PREDICT_BATCH)]
    )


def load_trained(run_dir: Path, step: int | None = None):
    """A run's (config, model with the checkpoint's weights, its ``predict``, the checkpoint's state): the
    checkpoint of ``step``, or the newest readable one."""
    config = load_run(run_dir)
    state = checkpoint.load(checkpoint.path_for(run_dir, step), None) if step else checkpoint.latest_valid(run_dir)
    if state is None:
        raise DataError(f"{run_dir}: no readable checkpoint; train with `make train`")
    model, predict = build_for(config)
    model.set_weights(state.model_weights)
    return config, model, predict, state


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
    if not path.exists():
        return {}
    with open(path) as f:
        return {int(r["step"]): r for r in csv.DictReader(f)}


def write_rows(path: Path, rows: dict[int, dict]) -> None:
    fields = list(rows[max(rows)].keys())  # the newest row was scored now, so it has every column
    lines = [",".join(fields)] + [",".join(str(rows[s].get(k, "")) for k in fields) for s in sorted(rows)]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


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
    from tqdm import tqdm

    run_dir = Path(run_dir)
    config = load_run(run_dir)
    found = checkpoints_of(run_dir)[::-1][::every][::-1]  # counted back from the newest: the newest is scored
    settings, split = split_for(config, data_dir, **split_changes)
    val = validation_for(config, settings, data_dir)
    model, predict = build_for(config, settings.canvas)
    path = run_dir / EVAL / csv_name(config.data, settings)
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
        probs = predict_probs(predict, split)
        metrics = score(probs, split.labels, config.model.head)
        tau = validation_threshold(model, val)
        cam = cam_localization(model, split, probs, tau)
        rows[step] = {
            "step": step,
            "test_accuracy": f"{metrics['accuracy']:.5f}",
            "test_loss": f"{metrics['loss']:.5f}",
            "cam_top1_loc_tau": f"{cam['loc_tau']:.5f}",
            "tau_from_val": f"{tau:.2f}",
            "cam_top1_loc_20": f"{cam['loc_20']:.5f}",
            "cam_gt_known_loc_20": f"{cam['gt_known_20']:.5f}",
            "cam_peak_in_box": f"{cam['peak_in_box']:.5f}",
            "wall_s": f"{state.extras.get('wall_s', float('nan')):.1f}",
            **({"per_digit_accuracy": f"{metrics['per_digit']:.5f}"} if "per_digit" in metrics else {}),
            **{f"acc_class_{c}": f"{a:.5f}" for c, a in enumerate(metrics.get("per_class", []))},
        }
        final = (step, metrics)
        evaluated.append(step)
    if final is None:
        raise DataError(f"{run_dir}: no readable checkpoint (all were skipped)")
    write_rows(path, rows)
    return rows, {"step": final[0], **final[1], "settings": settings, "csv": path, "evaluated": evaluated}


def robustness(run_dir: Path, distractors=(0, 4, 8, 16), data_dir: Path = data.DATA_DIR) -> list[dict]:
    """Accuracy of the run's newest readable checkpoint as clutter grows."""
    config = load_run(run_dir)
    state = checkpoint.latest_valid(run_dir)
    if state is None:
        raise DataError(f"{run_dir}: no readable checkpoint")
    model, predict = build_for(config)
    model.set_weights(state.model_weights)
    out = []
    for d in distractors:
        settings, split = split_for(config, data_dir, distractors=d)
        m = score(predict_probs(predict, split), split.labels, config.model.head)
        out.append({"distractors": d, "test_accuracy": m["accuracy"], "test_loss": m["loss"], "step": state.step})
    return out
