"""What every command of ``python -m cam_mnist`` shares: its parser with examples, the check of a run to score, and
the exit statuses.

The command modules import this one and never each other, except :mod:`cam_mnist.commands.main`, which assembles
them: the imports form no cycle (a test walks them).
"""

from __future__ import annotations

import argparse
import errno
from pathlib import Path

from cam_mnist.core.errors import UserError
from cam_mnist.core.lock import check_free
from cam_mnist.core.runs import run_dir_or_latest
from cam_mnist.reports.evaluate import check_scorable

PROG = "python -m cam_mnist"
EXIT_BAD_INPUT = 2  # the user's mistake, or a folder that cannot be written (full, read-only, not permitted)
EXIT_STOPPED = 75  # training stopped by a signal after writing a checkpoint: run the same command to resume
# (75 is sysexits' EX_TEMPFAIL, "try again later": schedulers treat it as a failure to requeue, not a success)
STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def command_parser(commands, name: str, help: str, examples: list[str]) -> argparse.ArgumentParser:
    """A sub-command whose --help ends with its examples, each one a line of ``python -m cam_mnist ...``."""
    epilog = "examples:\n" + "\n".join(f"  {PROG} {name} {e}".rstrip() for e in examples)
    return commands.add_parser(name, help=help, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)


def check_scoring(args) -> None:
    """``eval`` and ``localize``, before TensorFlow is imported (:func:`cam_mnist.commands.main.main`): each run
    folder named (or out/latest) is a run with a checkpoint and its data that no other process writes into, and
    ``--every`` is at least 1."""

    if getattr(args, "every", 1) < 1:
        raise UserError(f"--every must be at least 1, got {args.every}")
    run_dirs = args.run_dir if isinstance(args.run_dir, list) else [args.run_dir]
    for run_dir in map(run_dir_or_latest, run_dirs or [None]):
        check_scorable(run_dir, Path(args.data_dir))
        check_free(run_dir)
