"""The small commands: ``picture`` (the panel's maps at a few steps, the README's picture), ``methods`` (the
registry as a table) and ``bench`` (``make bench``, whose arguments are its own)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cam_mnist.commands.common import command_parser
from cam_mnist.core.runs import run_dir_or_latest
from cam_mnist.maps.registry import methods_table


def run_picture(args) -> None:
    from cam_mnist.viz import panel, plotting

    picture = panel.progress_picture(run_dir_or_latest(args.run_dir), args.images, args.steps)
    plotting.save_png(Path(args.out), picture)
    print(f"-> {args.out}")


def run_methods(args) -> None:
    print(methods_table())


def run_bench(args) -> None:
    from cam_mnist.reports import bench

    options = ("images", "slow_images", "reference_images", "out", "application", "memory", "backends")
    bench.main(args.run_dir, **{key: getattr(args, key) for key in options})


def add_parser(commands) -> None:
    p = command_parser(
        commands,
        "picture",
        "the panel's maps at a few steps of a run, one row per image (the README's picture)",
        ["--run-dir out/default --images 0 3 5 --out docs/heatmaps.png", "--steps 2246 15722 17968"],
    )
    p.add_argument("--run-dir", help="training run (default: out/latest)")
    p.add_argument("--images", type=int, nargs="+", default=[0, 1, 2], help="panel images, one row each")
    p.add_argument("--steps", type=int, nargs="+", help="heatmap steps (default: the first, a middle one, the last)")
    p.add_argument("--out", default="out/heatmaps.png", help="the PNG to write")
    p.set_defaults(func=run_picture)

    p = command_parser(
        commands, "methods", "the explanation methods: paper, what each needs, passes per map (Markdown)", [""]
    )
    p.set_defaults(func=run_methods)

    p = command_parser(
        commands,
        "bench",
        "speed and memory measurements -> bench/results.{json,md} (what `make bench` runs)",
        ["", "--run-dir out/default --no-memory --no-application"],
    )
    p.add_argument("--run-dir", help="trained run whose model.keras the CAM part uses (default: out/latest)")
    p.add_argument("--images", type=int, default=10_000, help="test images for the fast CAM methods")
    p.add_argument("--slow-images", type=int, default=200, help="test images for Score-CAM and occlusion")
    p.add_argument("--reference-images", type=int, default=2000, help="test images for tf-keras-vis")
    p.add_argument("--out", default="bench", help="folder for results.json and results.md")
    p.add_argument(
        "--application",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time MobileNetV2 (random weights, 224x224x3) nested in a Sequential",
    )
    p.add_argument(
        "--backends",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the maps on each Keras backend (TensorFlow, JAX, PyTorch) and pytorch-grad-cam beside ours",
    )
    p.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the peak memory of train, localize and explain at two sizes (a few minutes)",
    )
    p.set_defaults(func=run_bench)
