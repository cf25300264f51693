"""Where training runs live and what each holds: ``out/<run>``, ``out/latest`` (the newest run, which every command
that reads a run takes when none is named), and :class:`RunFolder`, which names every file of a run's folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cam_mnist.core.errors import UserError

OUT = Path("out")
LATEST = "latest"


@dataclass(frozen=True)
class RunFolder:
    """The files of one training run, named once: what ``train`` writes and ``eval``, ``localize``, ``explain`` and
    the viewer read."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    config = property(lambda self: self.path / "config.json")  # the resolved settings (config.RunConfig)
    log = property(lambda self: self.path / "train.log")
    metrics = property(lambda self: self.path / "metrics.csv")  # validation at every heatmap step
    checkpoints = property(lambda self: self.path / "checkpoints")
    heatmaps = property(lambda self: self.path / "heatmaps")  # the panel's pictures, one per step
    tensorboard = property(lambda self: self.path / "tb")
    index = property(lambda self: self.path / "index.html")  # the viewer
    model = property(lambda self: self.path / "model.keras")  # written at the end
    summary = property(lambda self: self.path / "summary.json")  # the test scores, written at the end
    eval = property(lambda self: self.path / "eval")  # what `eval` and `localize` write
    lock = property(lambda self: self.path / ".lock")  # held by the one process writing here


def latest_run(out: Path = OUT) -> Path:
    """The run ``out/latest`` points at, by its real name (so tables name ``default-20261130-…``, not latest)."""
    link = Path(out) / LATEST
    if not link.exists():
        raise UserError(f"no run found: {link} does not exist; train one with `make train`")
    return link.resolve()


def run_dir_or_latest(run_dir: str | Path | None, out: Path = OUT) -> Path:
    """``run_dir`` if given, else the newest run; resolved, so that ``out/latest`` is named by its run."""
    return Path(run_dir).resolve() if run_dir else latest_run(out)


def mark_latest(run_dir: Path) -> None:
    """Point ``latest`` beside the run (``out/latest`` for runs in out/) at it: a relative symlink, swapped
    atomically."""
    run_dir = Path(run_dir)
    tmp = run_dir.parent / f".{LATEST}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, run_dir.parent / LATEST)
