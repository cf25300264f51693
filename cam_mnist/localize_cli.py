"""``python -m cam_mnist localize``: how well each explanation method finds the digit, on the whole test split.
The work is :func:`cam_mnist.localize.localize`; this module is its arguments."""

from __future__ import annotations

from cam_mnist.cli_common import command_parser
from cam_mnist.registry import METHODS


def run(args) -> None:
    from cam_mnist.localize import localize

    record = localize(
        args.run_dir,
        args.data_dir,
        step=args.step,
        methods=args.methods,
        images=args.images,
        slow_images=args.slow_images,
        faithful_images=args.faithful_images,
        examples=args.examples,
        log=lambda message: print(message, flush=True),
    )
    print(f"\n{record['table']}")


def add_parser(commands) -> None:
    p = command_parser(
        commands,
        "localize",
        "localization, segmentation and faithfulness of every method",
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
        "--slow-images", type=int, default=500, help="test (and validation) images for the slow methods (many passes)"
    )
    p.add_argument("--faithful-images", type=int, default=500, help="test images for deletion/insertion AUC")
    p.add_argument("--examples", type=int, default=6, help="test images in the examples figure")
    p.set_defaults(func=run)
