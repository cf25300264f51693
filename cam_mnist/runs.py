"""Where training runs live: ``out/<run>``, and ``out/latest``, the newest run, which every command that reads a
run takes when none is named. Resolved here, once, for the command line and the library."""

from __future__ import annotations

import os
from pathlib import Path

from cam_mnist.errors import UserError

OUT = Path("out")
LATEST = "latest"


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
