"""The segmentations of ``cam_mnist.maps.segmentation`` compared on validation, for docs/experiments.md:

    python scripts/compare_segmentations.py --run-dir out/default --method cam

Each segmentation's thresholds are chosen on the first ``--choose`` validation images (as ``localize`` chooses
them), then scored on the next ``--images``: mean mask IoU with the digits' true masks, GT-known localization of
the segmentation's tight box (IoU >= 0.5), the weakest class, and the time per image. The test split is not read.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from cam_mnist.train import checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("out/latest"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--method", default="cam", help="the map that seeds the segmentation")
    parser.add_argument("--choose", type=int, default=500, help="validation images the thresholds are chosen on")
    parser.add_argument("--images", type=int, default=1500, help="validation images scored after those")
    args = parser.parse_args(argv)

    from cam_mnist.core import boxes
    from cam_mnist.maps import explain, segmentation
    from cam_mnist.reports import evaluate

    config, model, _, _ = checkpoint.load_trained(args.run_dir)
    settings, _ = evaluate.split_for(config, args.data_dir)
    val = evaluate.validation_for(config, settings, args.data_dir)
    if len(val) < args.choose + args.images:
        raise SystemExit(f"the validation split has {len(val)} images, fewer than --choose + --images")
    choose, score = slice(0, args.choose), slice(args.choose, args.choose + args.images)
    images = val.float_images(slice(0, args.choose + args.images))
    maps = np.concatenate(
        [
            explain(model, images[lo : lo + 500], args.method, val.labels[lo : lo + 500])
            for lo in range(0, len(images), 500)
        ]
    )
    labels = val.labels[score]
    print(
        f"{args.run_dir}, {args.method} maps; thresholds chosen on validation 0:{args.choose}, "
        f"scored on {score.start}:{score.stop}"
    )
    print("| segmentation | thresholds | mask IoU | GT-known loc | weakest class | ms/image |")
    print("|---|---|---|---|---|---|")
    rows = [("map >= 20% of max (no segmentation)", None)] + [(m, m) for m in segmentation.METHODS]
    for name, method in rows:
        if method is None:
            params, began = {}, time.perf_counter()
            masks = boxes.keep_above(maps[score], 0.2)
        else:
            params = segmentation.choose(images[choose], maps[choose], val.masks[choose], method)
            began = time.perf_counter()
            masks = segmentation.segment(images[score], maps[score], method, **params)
        ms = 1000 * (time.perf_counter() - began) / len(labels)
        hit = boxes.iou(boxes.tight_boxes(masks), val.boxes[score]) >= 0.5
        per_class = [hit[labels == c].mean() for c in range(10)]
        weakest = int(np.argmin(per_class))
        shown = ", ".join(f"{k} {v}" for k, v in params.items()) or "-"
        print(
            f"| {name} | {shown} | {boxes.mask_iou(masks, val.masks[score]).mean():.3f} | {hit.mean():.2%} "
            f"| {weakest}: {per_class[weakest]:.1%} | {ms:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
