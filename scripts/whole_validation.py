"""Runs compared on the whole validation split (10k images; training watched its first ``val_size``), then on test
at the tau chosen on validation: accuracy, CAM top-1 localization, and each class's.

    .venv/bin/python scripts/whole_validation.py out/default out/full-ink      # docs/experiments.md, Part 7
    .venv/bin/python scripts/whole_validation.py --validation-only out/s6-*    # short runs: test stays unseen

A run trained on validation digits (``long``: ``extra_train_digits``) is scored on the held-out rest only;
``--held-out-from N`` scores every run on those images alone (validation digits N.. lead them), so that a run trained
on the first N validation digits is compared with one that was not on the same images:

    .venv/bin/python scripts/whole_validation.py --validation-only --held-out-from 5000 out/full-ph out/full-pj
"""

import dataclasses
import sys
from pathlib import Path

import keras

from cam_mnist.config import load_run
from cam_mnist.data.splits import DATA_DIR
from cam_mnist.reports import evaluate
from cam_mnist.scoring.cam_localization import cam_localization


def line(name: str, model, split, tau: float | None = None) -> tuple[str, float]:
    """The split's scores as one printed entry, and the tau they used (chosen on ``split`` where ``tau`` is None)."""
    probs = model.predict(split.float_images(), batch_size=250, verbose=0)
    errors = int((probs.argmax(1) != split.labels.ravel()).sum())
    cam = cam_localization(model, split, probs, tau)
    text = (
        f"  {name:>10s} {len(split):5d} images: accuracy {1 - errors / len(split):.4f} ({errors} errors), top-1 loc "
        f"{cam['loc_tau']:.4f} at tau {cam['tau']:.2f}, at 20% {cam['loc_20']:.4f}, peak in box "
        f"{cam['peak_in_box']:.4f}\n{'':13s}per class: " + " ".join(f"{c}:{v:.3f}" for c, v in cam["per_class"].items())
    )
    return text, cam["tau"]


args = sys.argv[1:]
validation_only = "--validation-only" in args
held_out_from = int(args[args.index("--held-out-from") + 1]) if "--held-out-from" in args else 0
runs = [a for i, a in enumerate(args) if not a.startswith("--") and (i == 0 or args[i - 1] != "--held-out-from")]
for run in map(Path, runs):
    config = load_run(run)
    model = keras.models.load_model(run / "model.keras")
    held_out = max(held_out_from, config.data.extra_train_digits)
    whole = dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, extra_train_digits=held_out),
        train=dataclasses.replace(config.train, val_size=None),
    )
    val = evaluate.validation_for(config, config.data, DATA_DIR)
    all_val = evaluate.validation_for(whole, whole.data, DATA_DIR)  # every held-out image
    print(run.name)
    text, tau = line("validation", model, val)  # the tau the run itself chose, applied to test below
    print(text)
    print(line("all of it", model, all_val)[0])
    if not validation_only:
        _, test = evaluate.split_for(config, DATA_DIR)
        print(line("test", model, test, tau)[0], flush=True)
