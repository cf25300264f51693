"""One writer per run folder: ``train``, ``eval`` and ``localize`` hold ``<run>/.lock`` while they write there.

The lock is an advisory ``flock`` on that file, which the kernel releases when its process ends however it ends
(``kill -9`` included), so a dead writer never blocks the next one; the file keeps the last holder's process id,
command and start time, so a refusal names who holds it and a take-over says whose lock it was; a writer that ends
cleanly removes it. Readers (``explain``, the viewer, TensorBoard) never take it.

Data made once for everyone (MNIST, a setting's held-out splits) is made under :func:`waiting`: a second process
waits for the first to finish, then finds the files there, instead of making them again beside it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from cam_mnist.core.errors import UserError
from cam_mnist.core.runs import RunFolder


class RunInUse(UserError):
    """Another process is writing into the run folder."""


@contextmanager
def writing(run_dir: Path, command: str, log=print):
    """Hold ``run_dir``'s lock for the ``command`` writing into it; refuse (:class:`RunInUse`) if another process
    holds it. A lock file left by a process that is gone is taken over, with a note through ``log``."""
    path = RunFolder(run_dir).lock
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunInUse(_in_use(run_dir, fd)) from None
        earlier = _read(fd)
        if earlier.get("pid") and earlier.get("pid") != os.getpid():
            log(f"note: taking over the lock of {_describe(earlier)}, which ended without releasing it")
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": command}
        holder["since"] = time.strftime("%H:%M:%S")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # released cleanly: nothing to take over, nothing left in the folder
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def check_free(run_dir: Path) -> None:
    """Refuse at once (:class:`RunInUse`) if another process writes into ``run_dir``: the command line asks before
    importing TensorFlow. :func:`writing` still takes the lock when the work begins; this only answers early."""
    path = RunFolder(run_dir).lock
    if not path.exists():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:  # shared and at once: a holder's exclusive lock refuses it; released on close
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunInUse(_in_use(run_dir, fd)) from None
    finally:
        os.close(fd)


@contextmanager
def waiting(path: Path):
    """Hold the ``flock`` of ``path`` (created if missing), waiting for whoever holds it: for work that any process may
    do once, such as fetching MNIST; the waiter checks again, under the lock, whether it is still to be done."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}


def _in_use(run_dir: Path, fd: int) -> str:
    return f"{run_dir} is in use: {_describe(_read(fd))}; wait for it to end or stop it"


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    return f"process {holder.get('pid')} on {holder.get('host')} ({holder.get('command')}, since {holder.get('since')})"
