"""A run that survives the machine: a full disk, a read-only folder, two writers on one folder. Real file systems
(a small tmpfs, mounted where the test may) and real processes, not mocks of them."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cam_mnist.train import checkpoint

LONG_TINY = ["--preset", "tiny", "--steps", "300", "--checkpoint-every", "4", "--heatmap-every", "100", "--quiet"]


@pytest.fixture
def mount(tmp_path):
    """mount(size, read_only=False): a fresh tmpfs of ``size`` under tmp_path (root only; skipped elsewhere)."""
    mounted = []

    def make(size: str, read_only: bool = False):
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a small tmpfs needs root and mount(8)")
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", str(where)], capture_output=True)


def _weights(path):
    return checkpoint.load(path).model_weights


def test_a_full_disk_is_one_line_and_the_run_resumes_where_it_stopped(mount, tmp_path, tiny_run, run_cli, data_dir):
    small = mount("400k")
    result = run_cli("train", "--preset", "tiny", "--run-dir", small / "run", "--quiet", "--data-dir", data_dir)
    assert result.returncode == 2, result.stdout + result.stderr
    message = result.stderr.strip().splitlines()
    assert len(message) == 1 and message[0].startswith("error: cannot write") and "No space left" in message[0]
    assert "Traceback" not in result.stderr
    run = small / "run"
    assert not list(run.rglob("*.tmp")), "a half-written file was left"
    for _, path in checkpoint.list_checkpoints(run):
        checkpoint.load(path)  # every checkpoint there is whole
    big = tmp_path / "big"
    shutil.copytree(run, big)  # the cause gone: the same command on room enough
    result = run_cli("train", "--run-dir", big, "--quiet", "--data-dir", data_dir)
    assert result.returncode == 0, result.stderr
    for a, b in zip(_weights(checkpoint.path_for(tiny_run, 12)), _weights(checkpoint.path_for(big, 12)), strict=True):
        np.testing.assert_array_equal(a, b)  # as if the disk had never filled


def test_a_read_only_folder_is_one_line(mount, tiny_run, run_cli, data_dir):
    read_only = mount("1m", read_only=True)
    result = run_cli("train", "--preset", "tiny", "--run-dir", read_only / "run", "--quiet", "--data-dir", data_dir)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Read-only file system" in result.stderr and str(read_only / "run") in result.stderr


def _train(run_dir, data_dir, root):
    command = [sys.executable, "-m", "cam_mnist", "train", *LONG_TINY, "--run-dir", str(run_dir)]
    return subprocess.Popen(
        [*command, "--data-dir", str(data_dir)], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_one_writer_per_run_folder_and_a_dead_writers_lock_is_taken_over(tmp_path, data_dir, run_cli, repo_root):
    run_dir = tmp_path / "shared"
    first = _train(run_dir, data_dir, repo_root)
    deadline = time.time() + 120
    while not checkpoint.path_for(run_dir, 4).exists():
        assert first.poll() is None and time.time() < deadline, first.stdout.read()
        time.sleep(0.02)
    result = run_cli("train", "--run-dir", run_dir, "--quiet", "--data-dir", data_dir)  # a second trainer: refused
    assert result.returncode == 2, result.stderr
    assert f"{run_dir} is in use: process {first.pid}" in result.stderr and "(train, since" in result.stderr
    first.send_signal(signal.SIGKILL)  # dies holding the lock: the kernel releases it, the file remembers it
    first.wait()
    result = run_cli("train", "--run-dir", run_dir, "--quiet", "--data-dir", data_dir)
    assert result.returncode == 0, result.stderr
    assert f"taking over the lock of process {first.pid}" in result.stdout + result.stderr
    assert (run_dir / "summary.json").exists()


def test_eval_and_localize_wait_their_turn_and_readers_never_do(tiny_run, tmp_path, data_dir, run_cli):
    from PIL import Image

    from cam_mnist.config import RunConfig
    from cam_mnist.core.lock import writing
    from cam_mnist.data import splits as data

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    picture = tmp_path / "digit.png"
    split = data.load_split("test", RunConfig.load(run_dir / "config.json").data, data_dir)
    Image.fromarray(split.images[0]).save(picture)
    with writing(run_dir, "train"):  # this process writes into the run
        for command in (["eval"], ["localize", "--images", "8"]):
            result = run_cli(*command, "--run-dir", run_dir, "--data-dir", data_dir)
            assert result.returncode == 2 and f"is in use: process {os.getpid()}" in result.stderr, result.stderr
        explained = run_cli("explain", picture, "--run-dir", run_dir, "--out", tmp_path / "x", "--data-dir", data_dir)
        assert explained.returncode == 0, explained.stderr  # a reader
    assert run_cli("eval", "--run-dir", run_dir, "--data-dir", data_dir, "--no-robustness").returncode == 0


def test_two_processes_preparing_the_same_data_generate_it_once(tmp_path, data_dir, monkeypatch):
    """Two trainings (or a suite's workers) starting on a fresh clone: one generates each split, the other waits and
    reads it; manifest.json ends with both splits. flock excludes two open files even within one process, so two
    threads stand for the two processes."""
    import json
    import threading

    from cam_mnist.config import DataConfig
    from cam_mnist.data import splits as data

    (tmp_path / data.MNIST_FILE).symlink_to(data_dir / data.MNIST_FILE)
    made, start = [], threading.Barrier(2)
    original = data.held_out

    def counted(digits, config, name):
        made.append(name)
        return original(digits, config, name)

    monkeypatch.setattr(data, "held_out", counted)
    config = DataConfig(canvas=40, distractors=2)
    folders, errors = [], []

    def prepare():
        start.wait()
        try:
            folders.append(data.prepare(config, tmp_path))
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=prepare) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(made) == ["test", "val"]  # each split once, not once per caller
    manifest = json.loads((folders[0] / "manifest.json").read_text())
    assert set(manifest) >= {"val", "test"}
    for name in ("val", "test"):
        assert len(data.read_split(folders[0] / f"{name}.npz", name)) == manifest[name]["n"]
