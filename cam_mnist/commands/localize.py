"""``python -m cam_mnist localize``: how well each explanation method finds the digit, on the whole test split.
The work is :func:`cam_mnist.reports.localize.localize`; this module is its arguments."""

from __future__ import annotations

from pathlib import Path

from cam_mnist.commands.common import check_scoring, command_parser
from cam_mnist.core.lock import writing
from cam_mnist.core.runs import run_dir_or_latest
from cam_mnist.maps.registry import METHODS
from cam_mnist.reports.localize import (
    FAITHFUL_IMAGES,
    GALLERY,
    ROAD_IMAGES,
    SANITY_IMAGES,
    SANITY_SLOW_IMAGES,
    SLOW_IMAGES,
    localize,
)
from cam_mnist.reports.sanity import figure_from_run


def run(args) -> None:
    run_dir = run_dir_or_latest(args.run_dir)  # a run with a checkpoint: check_scoring said so
    options = {
        key: getattr(args, key)
        for key in ("step", "methods", "images", "slow_images", "faithful_images", "road_images", "examples")
        + ("sanity_images", "sanity_slow_images", "random_labels_run", "gallery")
    }
    with writing(run_dir, "localize"):
        record = localize(run_dir, args.data_dir, **options, log=lambda message: print(message, flush=True))
    print(f"\n{record['table']}")


def add_parser(commands) -> None:
    p = command_parser(
        commands,
        "localize",
        "localization, segmentation, faithfulness and sanity checks of every method",
        ["                  # newest run, all methods", "--methods cam gradcam --images 2000"],
    )
    p.add_argument("--run-dir", help="training run (default: out/latest)")
    p.add_argument("--step", type=int, help="checkpoint step (default: the newest readable)")
    p.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        help="methods to score (default: all; with several digits per image, the fast layer-level ones)",
    )
    p.add_argument("--images", type=int, help="score only the first N test images (default: all 10k)")
    p.add_argument(
        "--slow-images", type=int, default=SLOW_IMAGES, help="test (and validation) images of the slow methods"
    )
    p.add_argument("--faithful-images", type=int, default=FAITHFUL_IMAGES, help="test images of deletion/insertion")
    p.add_argument(
        "--road-images", type=int, default=ROAD_IMAGES, help="of the faithfulness images, those ROAD scores (0: none)"
    )
    p.add_argument("--examples", type=int, default=6, help="test images in the examples figure")
    p.add_argument(
        "--sanity-images",
        type=int,
        default=SANITY_IMAGES,
        help="test (and validation) images of the sanity checks, model and data randomization (0: none)",
    )
    p.add_argument("--sanity-slow-images", type=int, default=SANITY_SLOW_IMAGES, help="the same, slow methods")
    p.add_argument(
        "--random-labels-run",
        help="the run trained on permuted labels, for data randomization (default: out/random-labels, if there)",
    )
    p.add_argument("--gallery", type=int, default=GALLERY, help="worst failures of each kind drawn in eval/ (0: none)")
    p.set_defaults(func=run, check=check_scoring)


def randomization_figure(args) -> None:
    print(f"-> {figure_from_run(run_dir_or_latest(args.run_dir), Path(args.out))}")


def add_figure_parser(commands) -> None:
    p = command_parser(
        commands,
        "randomization",
        "the sanity checks' figure (similarity to the trained maps per randomization stage) of a localized run",
        ["--run-dir out/default --out docs/randomization.png"],
    )
    p.add_argument("--run-dir", help="a run `localize` scored (default: out/latest)")
    p.add_argument("--out", default="out/randomization.png", help="the PNG to write")
    p.set_defaults(func=randomization_figure)
