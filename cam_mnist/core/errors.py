"""The one error type for the user's mistakes, and the kinds of it the library raises.

A :class:`UserError` is bad input: a missing or corrupt file, a setting that cannot work, a model or image the
method cannot explain. Its message names the thing and the problem. The command line prints it as one line and
exits with status 2; any other exception is a bug and keeps its traceback. Callers decide by type, never by
message text. It subclasses ``ValueError`` so that library callers who catch that keep working.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user; the message says what and how to fix it."""


class DataError(UserError):
    """A data file or run folder is missing, corrupt or of the wrong shape."""


class CheckpointError(UserError):
    """A checkpoint cannot be used: unreadable, or not this run's."""


class OutputNotChosen(UserError):
    """A model with several outputs, asked to explain one without being told which."""


class NotClassScores(UserError):
    """A model whose output is not class scores (a segmentation's per-pixel logits...), asked for a class's map
    without a target saying what to explain."""


class ArchitectureMismatch(CheckpointError):
    """A readable checkpoint written by another network than the run's config builds: not a damaged file to skip,
    but a run folder whose config.json and checkpoints disagree."""


# The package each Keras backend needs beyond TensorFlow, and the extra of pyproject.toml that installs it.
BACKEND_EXTRAS = {"jax": "jax", "torch": "torch"}


def missing_backend(error: ModuleNotFoundError) -> str | None:
    """One line saying what to install, where ``error`` is Keras failing to import the backend KERAS_BACKEND names
    (None for any other missing module)."""
    top = (error.name or "").split(".")[0]
    if top not in BACKEND_EXTRAS:
        return None
    return (
        f"KERAS_BACKEND={top} needs {top}, which is not installed: pip install 'cam_mnist[{BACKEND_EXTRAS[top]}]' "
        f"(from a clone: pip install '.[{BACKEND_EXTRAS[top]}]'), or use KERAS_BACKEND=tensorflow"
    )
