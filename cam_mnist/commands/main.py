"""``python -m cam_mnist COMMAND`` (or ``cam-mnist COMMAND``): the command line. Each command group is a module of
this package with its ``add_parser`` (its arguments and examples) and its ``run``; this one assembles them, answers
a user's mistake in one line and keeps TensorFlow's start-up out of the commands that need no model."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile

from cam_mnist import config as cfg
from cam_mnist.commands import data, evaluate, explain, frontier, localize, tools, train
from cam_mnist.commands.common import EXIT_BAD_INPUT, PROG, STORAGE_ERRORS
from cam_mnist.core.errors import UserError, missing_backend
from cam_mnist.core.memory import few_malloc_arenas

NEEDS_KERAS = {"train", "eval", "localize", "explain", "layers", "bench"}
# The reproduction's training is TensorFlow's (tf.data, tf.distribute, its bfloat16 policy); maps and evaluation
# run on every Keras 3 backend (KERAS_BACKEND=tensorflow, jax or torch).
TENSORFLOW_ONLY = {"train"}


def build_parser() -> argparse.ArgumentParser:
    presets = "\n".join(f"  {name:11s} {text}" for name, text in cfg.PRESET_HELP.items())
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Class activation maps (Zhou et al. 2016) on cluttered MNIST: data, training, evaluation, maps.",
        epilog=f"presets (train --preset NAME):\n{presets}\n\nEach command has --help with examples.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data.add_parser(commands)
    train.add_parser(commands)
    evaluate.add_parser(commands)
    localize.add_parser(commands)
    localize.add_figure_parser(commands)
    explain.add_parser(commands)
    explain.add_layers_parser(commands)
    frontier.add_parser(commands)
    tools.add_parser(commands)
    for p in commands.choices.values():
        p.add_argument("--data-dir", default="data", help="where MNIST and the generated splits live")
        p.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up and warning messages")
    return parser


def import_keras(verbose: bool) -> str:
    """Import Keras and its backend for a command that needs them, keeping their start-up chatter (TensorFlow's
    oneDNN notices, CUDA probing on a machine without a GPU, absl's preamble) out of the user's terminal unless
    ``--verbose``. TensorFlow 2.21 writes these from C++ before its log level is read, so stderr's file descriptor
    is parked in a temporary file during the import; if the import fails, what it wrote is shown. Returns the
    backend's name."""
    with without_jax_in_tensorflow():
        if verbose:
            import keras

            return keras.backend.backend()
        return _import_quietly()


@contextlib.contextmanager
def without_jax_in_tensorflow():
    """TensorFlow 2.21 imports JAX at start-up wherever it is installed (for its TFLite converter): 1.8 s and 0.1 GiB
    in every command, which on the TensorFlow backend never uses it. JAX is hidden while Keras and TensorFlow import
    (TensorFlow then goes without its converter's JAX part), and importable again after."""
    hide = configured_backend() == "tensorflow" and "jax" not in sys.modules
    if hide:
        sys.modules["jax"] = None  # `import jax` raises ImportError, which TensorFlow expects where JAX is absent
    try:
        yield
    finally:
        if hide and sys.modules.get("jax", False) is None:
            del sys.modules["jax"]


def _import_quietly() -> str:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # later C++ messages: errors only
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras

            if keras.backend.backend() == "tensorflow":
                import tensorflow

                tensorflow.config.list_physical_devices("GPU")  # probes CUDA now, where its "no GPU" error is parked
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    logging.getLogger("absl").setLevel(logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    return keras.backend.backend()


def configured_backend() -> str:
    """The backend Keras will load, read as Keras reads it (KERAS_BACKEND, else $KERAS_HOME or ~/.keras's
    keras.json), without importing it."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as f:
            return json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


def main(argv: list[str] | None = None) -> int:
    few_malloc_arenas()  # before any thread starts
    args = build_parser().parse_args(argv)
    try:
        backend = configured_backend()
        if args.command in TENSORFLOW_ONLY and backend != "tensorflow":  # refused before anything is written
            raise UserError(
                f"`{args.command}` trains with TensorFlow (tf.data, tf.distribute); KERAS_BACKEND is {backend!r}: "
                "run it with KERAS_BACKEND=tensorflow (maps, eval and localize run on every backend)"
            )
        if getattr(args, "check", None):
            args.check(args)
        if args.command in NEEDS_KERAS:
            try:
                import_keras(getattr(args, "verbose", False))
            except ModuleNotFoundError as e:
                if missing_backend(e) is None:
                    raise
                raise UserError(missing_backend(e)) from None
        return args.func(args) or 0
    except UserError as e:  # the user's mistake: one line, exit status 2; anything else is a bug: its traceback
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:
        if e.errno not in STORAGE_ERRORS:
            raise
        # A disk that is full, read-only or not ours: the machine's state, not a bug. Every file is written whole
        # or not at all (core/atomic.py), so once the cause is gone the same command resumes.
        where = f" {e.filename}" if e.filename else ""
        print(f"error: cannot write{where}: {e.strerror}; free space or choose a writable folder, then run the same "
              f"command again (nothing was left half-written)", file=sys.stderr)  # fmt: skip
        return EXIT_BAD_INPUT
