"""tf.distribute on this CPU machine: two logical CPUs under MirroredStrategy train like one device at the same
global batch, resume exactly, and two worker processes under MultiWorkerMirroredStrategy agree on their weights."""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from cam_mnist.core.errors import UserError
from cam_mnist.train import checkpoint, distribute

STEPS = 8


def _train(run_cli, data_dir, run_dir, *strategy):
    args = ["--preset", "tiny", "--steps", STEPS, "--quiet", "--data-dir", data_dir, "--run-dir", run_dir]
    result = run_cli("train", *args, *strategy)
    assert result.returncode == 0, result.stderr
    return json.loads((run_dir / "summary.json").read_text())


def _state(run_dir, step=STEPS):
    state = checkpoint.load(checkpoint.path_for(run_dir, step))
    return state.model_weights + state.optimizer_variables


@pytest.fixture(scope="module")
def mirrored_runs(tmp_path_factory, data_dir, run_cli):
    """The tiny preset on one CPU device and on two logical CPUs, both under MirroredStrategy (global batch 32)."""
    root = tmp_path_factory.mktemp("mirrored")
    one = _train(run_cli, data_dir, root / "one", "--strategy", "mirrored", "--devices", "CPU:0")
    two = _train(run_cli, data_dir, root / "two", "--strategy", "mirrored", "--devices", "CPU:0", "CPU:1")
    assert (one["replicas"], two["replicas"]) == (1, 2)
    return root


def test_two_mirrored_cpus_give_the_weights_of_one_device(mirrored_runs):
    for a, b in zip(_state(mirrored_runs / "one"), _state(mirrored_runs / "two"), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)  # two float orders of the same sums


def test_a_mirrored_run_resumes_exactly(mirrored_runs, data_dir, run_cli):
    resumed = mirrored_runs / "resumed"
    shutil.copytree(mirrored_runs / "two", resumed)
    for step, path in checkpoint.list_checkpoints(resumed):
        if step > STEPS // 2:
            path.unlink()
    (resumed / "summary.json").unlink()
    _train(run_cli, data_dir, resumed, "--strategy", "mirrored", "--devices", "CPU:0", "CPU:1")
    assert f"resumed from step_{STEPS // 2:07d}" in (resumed / "train.log").read_text()
    for a, b in zip(_state(mirrored_runs / "two"), _state(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _workers(root, data_dir, repo_root, *flags, steps=STEPS):
    """Two training processes on localhost under MultiWorkerMirroredStrategy, their run folders root/worker{i}."""
    cluster = {"worker": [f"localhost:{_free_port()}", f"localhost:{_free_port()}"]}
    workers = []
    for i in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        command = [sys.executable, "-m", "cam_mnist", "train", "--preset", "tiny", "--steps", str(steps), "--quiet"]
        command += ["--data-dir", str(data_dir), "--run-dir", str(root / f"worker{i}"), *flags]
        workers.append(
            subprocess.Popen(
                [*command, "--strategy", "multiworker"],
                cwd=repo_root,
                env={**os.environ, "TF_CONFIG": tf_config},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return workers


def test_two_workers_on_localhost_agree_and_match_two_mirrored_devices(mirrored_runs, data_dir, repo_root):
    workers = _workers(mirrored_runs, data_dir, repo_root)
    try:
        outputs = [w.communicate(timeout=300)[0] for w in workers]  # bounded: a hung collective fails the test
    finally:
        for w in workers:
            w.kill()
    assert [w.returncode for w in workers] == [0, 0], outputs
    assert json.loads((mirrored_runs / "worker0" / "summary.json").read_text())["replicas"] == 2
    first, second = _state(mirrored_runs / "worker0"), _state(mirrored_runs / "worker1")
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)  # one all-reduce result, applied by both
    for a, b in zip(first, _state(mirrored_runs / "two"), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)  # the same global batch, split the same way
    # each worker composed its own half of every global batch of 32, and only that
    assert "composes rows 0:16 of each global batch of 32" in (mirrored_runs / "worker0" / "train.log").read_text()
    assert "composes rows 16:32 of each global batch of 32" in (mirrored_runs / "worker1" / "train.log").read_text()


def test_a_signal_to_one_worker_stops_both_after_the_same_step(tmp_path, data_dir, repo_root):
    import signal
    import time

    workers = _workers(tmp_path, data_dir, repo_root, "--checkpoint-every", "4", "--heatmap-every", "1000", steps=2000)
    try:
        deadline = time.time() + 300
        while not checkpoint.path_for(tmp_path / "worker0", 8).exists():
            assert all(w.poll() is None for w in workers) and time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        workers[1].send_signal(signal.SIGTERM)  # the second worker only, as a scheduler preempting one machine
        outputs = [w.communicate(timeout=300)[0] for w in workers]
    finally:
        for w in workers:
            w.kill()
    assert [w.returncode for w in workers] == [75, 75], outputs
    steps = [checkpoint.list_checkpoints(tmp_path / f"worker{i}")[-1][0] for i in range(2)]
    assert steps[0] == steps[1] < 2000  # one step, one checkpoint each
    assert f"stopped by SIGTERM at step {steps[1]}" in outputs[1]
    assert f"stopped by another worker's stop at step {steps[0]}" in outputs[0]
    for a, b in zip(_state(tmp_path / "worker0", steps[0]), _state(tmp_path / "worker1", steps[1]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_strategy_mistakes_are_refused_plainly(monkeypatch):
    with pytest.raises(UserError, match="--devices is for --strategy mirrored"):
        distribute.make_strategy("default", ["CPU:0"])
    with pytest.raises(UserError, match="unknown strategy"):
        distribute.make_strategy("tpu")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(UserError, match="TF_CONFIG"):
        distribute.make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        distribute.make_strategy("multiworker")


def test_a_batch_that_does_not_split_over_the_replicas_is_refused(tmp_path, data_dir, run_cli):
    result = run_cli(
        "train", "--preset", "tiny", "--run-dir", tmp_path / "run", "--data-dir", data_dir, "--quiet",
        "--strategy", "mirrored", "--devices", "CPU:0", "CPU:1", "CPU:2",
    )  # fmt: skip
    assert result.returncode == 2 and "batch_size 32 does not split evenly over 3 replicas" in result.stderr
    assert not list((tmp_path / "run").glob("checkpoints/*"))
