"""Runs compared on the whole validation split (10k images; training watched its first ``val_size``), then on test
at the tau chosen on validation: accuracy, CAM top-1 localization, and each class's.

    .venv/bin/python scripts/whole_validation.py out/default out/full-ink      # docs/experiments.md, Part 7

A run trained on validation digits (``long``: ``extra_train_digits``) is scored on the held-out rest only.
"""

import dataclasses
import sys
from pathlib import Path

import keras

from cam_mnist.config import load_run
from cam_mnist.data.splits import DATA_DIR
from cam_mnist.reports import evaluate
from cam_mnist.scoring.cam_localization import cam_localization, validation_threshold


def line(name: str, model, split, tau: float | None = None) -> str:
    probs = model.predict(split.float_images(), batch_size=250, verbose=0)
    labels = split.labels.ravel()
    errors = int((probs.argmax(1) != labels).sum())
    cam = cam_localization(model, split, probs, tau)
    each = [cam_localization(model, split.subset(labels == c), probs[labels == c], cam["tau"]) for c in range(10)]
    return (
        f"  {name:>10s} {len(split):5d} images: accuracy {1 - errors / len(split):.4f} ({errors} errors), top-1 loc "
        f"{cam['loc_tau']:.4f} at tau {cam['tau']:.2f}, at 20% {cam['loc_20']:.4f}, peak in box "
        f"{cam['peak_in_box']:.4f}\n{'':13s}per class 0-9: " + " ".join(f"{c['loc_tau']:.3f}" for c in each)
    )


for run in map(Path, sys.argv[1:]):
    config = load_run(run)
    model = keras.models.load_model(run / "model.keras")
    whole = dataclasses.replace(config, train=dataclasses.replace(config.train, val_size=None))
    val, all_val = (evaluate.validation_for(c, config.data, DATA_DIR) for c in (config, whole))
    print(run.name)
    print(line("validation", model, val))
    print(line("all of it", model, all_val))
    _, test = evaluate.split_for(config, DATA_DIR)
    print(line("test", model, test, validation_threshold(model, val)), flush=True)
