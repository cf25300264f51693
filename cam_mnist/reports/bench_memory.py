"""``make bench``'s memory part: the peak resident memory and wall time of ``train``, ``localize`` and ``explain``,
each at two sizes of its work, so the table shows whether memory grows with the work (it should not).

Each command runs in a child process of its own small Python parent, whose ``getrusage(RUSAGE_CHILDREN)`` then
reports that one command's peak RSS (what ``/usr/bin/time -v`` calls "Maximum resident set size").
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cam_mnist.config import RunConfig
from cam_mnist.core.runs import RunFolder
from cam_mnist.core.tables import markdown_table
from cam_mnist.data import splits as data

# Runs a command and prints its peak RSS in kB: the parent's only child is the command.
_MEASURE = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
    "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def peak(command: list[str]) -> dict:
    """Wall seconds and peak resident memory (MB) of ``command``."""
    began = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _MEASURE, *command], capture_output=True, text=True, check=True)
    code, kb = (int(v) for v in out.stdout.split())
    if code:
        raise RuntimeError(f"{' '.join(command)} failed ({code}): {out.stderr[-2000:]}")
    return {"wall_s": round(time.perf_counter() - began, 1), "peak_rss_mb": round(kb / 1024, 1)}


def rows(run_dir: Path, data_dir: str = "data", sizes=(2000, 10_000), train_sizes=(12_800, 50_000)) -> list[dict]:
    """The memory table: each command at two sizes."""
    cli = [sys.executable, "-m", "cam_mnist"]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for size in train_sizes:  # 200 steps of the default preset: its data, validation and final test scoring
            command = [*cli, "train", "--run-dir", str(tmp / f"train-{size}"), "--train-size", str(size)]
            command += ["--steps", "200", "--heatmap-every", "200", "--checkpoint-every", "200", "--quiet"]
            command += ["--small-canvas", "0", "--small-epochs", "0"]  # the whole canvas's steps, the larger ones
            out.append({"command": "train (200 steps)", "size": f"{size} training images", **peak(command)})
            print(f"  {out[-1]}", flush=True)
        # localize writes into the run's eval/: it scores a copy, so the run's own results stay as they are
        scored, run = tmp / "run", RunFolder(run_dir)
        skipped = (run.eval.name, run.tensorboard.name, run.heatmaps.name, run.lock.name)
        shutil.copytree(run_dir, scored, ignore=shutil.ignore_patterns(*skipped))
        for size in sizes:
            command = [*cli, "localize", "--run-dir", str(scored), "--images", str(size), "--methods", "cam"]
            command += ["--sanity-images", "0", "--gallery", "0", "--data-dir", data_dir]
            out.append({"command": "localize (cam)", "size": f"{size} test images", **peak(command)})
            print(f"  {out[-1]}", flush=True)
        folder = _pictures(tmp / "pictures", run_dir, data_dir, max(sizes))
        for size in sizes:
            subset = tmp / f"pictures-{size}"
            subset.mkdir()
            for path in sorted(folder.iterdir())[:size]:
                (subset / path.name).symlink_to(path)
            command = [*cli, "explain", str(subset), "--run-dir", str(run_dir), "--out", str(tmp / f"explained-{size}")]
            out.append({"command": "explain (cam, a folder)", "size": f"{size} images", **peak(command)})
            print(f"  {out[-1]}", flush=True)
    return out


def _pictures(folder: Path, run_dir: Path, data_dir: str, n: int) -> Path:
    """The first ``n`` test images of the run's clutter as PNG files."""

    folder.mkdir()
    images = data.load_split("test", RunConfig.load(RunFolder(run_dir).config).data, Path(data_dir)).images
    for i in range(min(n, len(images))):
        Image.fromarray(np.asarray(images[i])).save(folder / f"test_{i:05d}.png")
    return folder


def to_markdown(memory: list[dict]) -> str:
    rows = [[r["command"], r["size"], f"{r['peak_rss_mb'] / 1024:.2f} GiB", f"{r['wall_s']} s"] for r in memory]
    table = markdown_table(["command", "work", "peak RSS", "wall"], rows)
    return "Peak resident memory and wall time, each command at two sizes of its work:\n\n" + table


if __name__ == "__main__":  # python -m cam_mnist.bench_memory RUN_DIR: the table alone
    print(json.dumps(rows(Path(sys.argv[1])), indent=2))
