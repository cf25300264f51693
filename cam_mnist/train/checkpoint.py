"""Training checkpoints: everything a run needs to continue bit-identically, in one atomically written file.

A checkpoint ``checkpoints/step_0000400.npz`` holds the model weights (batch-norm statistics included), every
optimizer variable (its step counter, Adam's moments), the training-loss accumulator and the elapsed time. The data
order needs no state: each epoch's images are a pure function of (seed, epoch) (see :mod:`cam_mnist.data.splits`).

Files are written under a temporary name and renamed, so a crash leaves either the old set or the new file, never
half of one. Reading checks every member's CRC, so a truncated or corrupted file is reported and skipped.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cam_mnist.config import load_run
from cam_mnist.core.atomic import atomic_write_bytes
from cam_mnist.core.errors import ArchitectureMismatch, CheckpointError, DataError
from cam_mnist.core.runs import RunFolder
from cam_mnist.model import architecture_signature, build_for

_NAME = re.compile(r"^step_(\d{7})\.npz$")


@dataclass
class State:
    step: int
    model_weights: list[np.ndarray]
    optimizer_variables: list[np.ndarray]
    extras: dict  # loss accumulator, elapsed seconds...
    path: Path


def path_for(run_dir: Path, step: int) -> Path:
    return RunFolder(run_dir).checkpoints / f"step_{step:07d}.npz"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint file in the run, oldest first (temporary files ignored)."""
    folder = RunFolder(run_dir).checkpoints
    found = [(int(m.group(1)), p) for p in folder.glob("step_*.npz") if (m := _NAME.match(p.name))]
    return sorted(found)


def save(run_dir: Path, step: int, model, optimizer, extras: dict, keep: int) -> Path:
    """Write the checkpoint of ``step`` atomically, then delete all but the newest ``keep``."""
    arrays = {
        "signature": np.array(json.dumps(architecture_signature(model))),
        "extras": np.array(json.dumps({"step": step, **extras})),
    }
    for i, w in enumerate(model.get_weights()):
        arrays[f"model_{i:04d}"] = w
    for i, v in enumerate(optimizer.variables):
        arrays[f"optimizer_{i:04d}"] = np.asarray(v)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = path_for(run_dir, step)
    atomic_write_bytes(path, buf.getvalue())
    for _, old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load(path: Path, model=None) -> State:
    """Read and verify one checkpoint; with ``model``, also check it was written by the same architecture."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}  # reading every member checks its CRC
        extras = json.loads(str(arrays["extras"]))
        signature = json.loads(str(arrays["signature"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from None
    if model is not None and signature != architecture_signature(model):
        raise ArchitectureMismatch(
            f"{path}: written by another architecture ({len(signature)} weights, first "
            f"{signature[:1]}) than this run's model; check the run's config.json"
        )
    pick = lambda prefix: [arrays[k] for k in sorted(arrays) if k.startswith(prefix)]  # noqa: E731
    return State(
        step=int(extras.pop("step")),
        model_weights=pick("model_"),
        optimizer_variables=pick("optimizer_"),
        extras=extras,
        path=Path(path),
    )


def latest_valid(run_dir: Path, model=None, warn=print) -> State | None:
    """The newest checkpoint that loads, warning about (and skipping) each newer one that does not. A checkpoint of
    another architecture is not skipped but raised: the run's config and its checkpoints disagree."""
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            return load(path, model)
        except ArchitectureMismatch:
            raise
        except CheckpointError as e:
            warn(f"skipping checkpoint: {e}")
    return None


def restore(state: State, model, optimizer) -> None:
    """Put ``state`` into ``model`` and ``optimizer`` (the optimizer must already be built for the model)."""
    model.set_weights(state.model_weights)
    if len(state.optimizer_variables) != len(optimizer.variables):
        raise CheckpointError(
            f"{state.path}: {len(state.optimizer_variables)} optimizer variables, this run's "
            f"optimizer has {len(optimizer.variables)}; was it written with another optimizer?"
        )
    for variable, value in zip(optimizer.variables, state.optimizer_variables, strict=True):
        variable.assign(value)


def checkpoints_of(run_dir: Path) -> list[tuple[int, Path]]:
    """The run's (step, path) checkpoints, oldest first; none is an error naming the command that makes them."""
    found = list_checkpoints(run_dir)
    if not found:
        raise DataError(
            f"{run_dir}: no checkpoints in {RunFolder(run_dir).checkpoints}; "
            f"train with `python -m cam_mnist train --run-dir {run_dir}`"
        )
    return found


def load_trained(run_dir: Path, step: int | None = None):
    """A run's (config, model with the checkpoint's weights, its ``predict``, the checkpoint's state): the
    checkpoint of ``step``, or the newest readable one."""
    config = load_run(run_dir)
    state = load(path_for(run_dir, step), None) if step else latest_valid(run_dir)
    if state is None:
        raise DataError(f"{run_dir}: no readable checkpoint; train with `make train`")
    model, predict = build_for(config)
    model.set_weights(state.model_weights)
    return config, model, predict, state
