"""``python -m cam_mnist explain``: maps for the user's own images, with a trained run or any Keras model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from cam_mnist.cli_common import command_parser
from cam_mnist.errors import UserError
from cam_mnist.registry import METHODS

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def expand(paths: list[str]) -> list[Path]:
    """Files as given; a folder becomes the images inside it, sorted."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


def load_model(model_path: str | None, run_dir: str | None):
    import keras

    from cam_mnist.runs import run_dir_or_latest

    if model_path is None:
        model_path = run_dir_or_latest(run_dir) / "model.keras"
        if not model_path.exists():
            raise UserError(f"{model_path}: no trained model; train one with `make train` or pass --model")
    path = Path(model_path)
    if not path.is_file():
        raise UserError(f"{path}: no such model file")
    try:
        model = keras.models.load_model(path)
    except Exception as e:  # Keras raises many types for a file that is not a model
        raise UserError(f"{path}: not a Keras model ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 4:
        raise UserError(f"{path}: explain needs a model with one (N, H, W, C) image input")
    return model, path


def read_picture(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as picture:
            picture.load()
            return picture.copy()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{path}: not a readable image ({type(e).__name__})") from None


def run(args) -> int:
    from cam_mnist import plotting
    from cam_mnist.boxes import boxes_from_maps
    from cam_mnist.cams import explain, get_method
    from cam_mnist.images import to_model_input

    model, model_path = load_model(args.model, args.run_dir)
    _, h, w, c = model.inputs[0].shape
    methods = list(METHODS) if args.method == "all" else [args.method]
    try:
        get_method(model, methods[0] if args.method != "all" else "gradcam", args.layer)
    except UserError as e:
        raise UserError(f"{model_path}: {e}") from None
    if args.method == "all":  # CAM only where the model has the CAM head; say so instead of failing
        try:
            get_method(model, "cam", args.layer)
        except UserError:
            methods = [m for m in methods if m != "cam"]
            print(f"note: {model_path.name} has no GAP -> Dense head at that layer, so CAM is skipped", file=sys.stderr)

    failures, inputs, names = 0, [], []
    for path in expand(args.images):
        try:
            array, notes = to_model_input(read_picture(path), (h, w), c, args.fit, args.invert)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            failures += 1
            continue
        for note in notes:
            print(f"note: {path.name}: {note}", file=sys.stderr)
        inputs.append(array)
        names.append(path)
    if not inputs:
        return 2

    images = np.stack(inputs)  # (N, H, W, C)
    probs = np.asarray(model.predict(images, verbose=0))
    if args.class_index is None:
        classes = np.argsort(-probs, 1)[:, : args.top_k]  # (N, k), most probable first
    elif 0 <= args.class_index < probs.shape[1]:
        classes = np.full((len(images), 1), args.class_index)  # (N, 1)
    else:
        raise UserError(f"--class {args.class_index} out of range: the model has {probs.shape[1]} classes")
    k = classes.shape[1]
    maps = {}
    for method in methods:
        try:
            maps[method] = explain(
                model, np.repeat(images, k, 0), method, classes.reshape(-1), layer=args.layer
            ).reshape(len(images), k, h, w)
        except UserError as e:
            raise UserError(f"{model_path}: {method}: {e}") from None

    out = Path(args.out)
    records = []
    box_method = methods[0]
    for i, path in enumerate(names):
        # Each method's box of the most probable class, at the CAM paper's 20% of its map's maximum.
        boxes = {method: boxes_from_maps(maps[method][i, :1])[0] for method in methods}
        rows = []
        for method in methods:
            tiles = [plotting.captioned(plotting.overlay(images[i], np.zeros((h, w)), alpha=0.0), path.name[:24])]
            for j, cls in enumerate(classes[i]):
                tiles.append(
                    plotting.captioned(
                        plotting.overlay(images[i], maps[method][i, j], map_box=boxes[method] if j == 0 else None),
                        f"{method}: {cls} p={probs[i, cls]:.2f}",
                    )
                )
            rows.append(plotting.hstack(tiles))
        target = out / f"{path.stem}_explained.png"
        plotting.save_png(target, np.concatenate(rows, 0))
        records.append(
            {
                "image": str(path),
                "output": str(target),
                "box_method": box_method,
                "box": [int(v) for v in boxes[box_method]],
                "boxes": {method: [int(v) for v in box] for method, box in boxes.items()},
                "classes": [{"class": int(cls), "probability": round(float(probs[i, cls]), 5)} for cls in classes[i]],
            }
        )
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        print(f"{'image':30s} {'class':>5s} {'prob':>7s}  box (y0, x0, y1, x1) from {box_method}")
        for r in records:
            top = r["classes"][0]
            print(
                f"{Path(r['image']).name[:30]:30s} {top['class']:5d} {top['probability']:7.4f}  {tuple(r['box'])}"
                f"  -> {r['output']}"
            )
    return 2 if failures else 0


def add_parser(commands) -> None:
    p = command_parser(
        commands,
        "explain",
        "maps for your own images, with a trained run or any Keras model",
        [
            "digit.png --fit canvas",
            "photos/ --method all --top-k 5 --out out/explained",
            "cat.jpg --model my_model.keras --layer conv5 --json",
        ],
    )
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...) or folders of them")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--run-dir", help="a training run (default: out/latest); uses its model.keras")
    source.add_argument("--model", help="any Keras 3 functional image classifier saved as .keras")
    p.add_argument("--layer", help="the 4-D layer to explain (default: the last one)")
    p.add_argument(
        "--method",
        default="cam",
        choices=[*METHODS, "all"],
        help="which map; 'all' draws every method, one row each",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--class", dest="class_index", type=int, help="explain this class")
    which.add_argument("--top-k", type=int, default=1, help="explain the k most probable classes")
    p.add_argument(
        "--fit",
        choices=["resize", "canvas"],
        default="resize",
        help="resize: stretch to the model's input; canvas: centre on a black canvas of that size",
    )
    p.add_argument(
        "--invert",
        choices=["auto", "yes", "no"],
        default="auto",
        help="invert dark-on-light pictures (auto: when the picture is mostly bright)",
    )
    p.add_argument("--out", default="out/explained", help="folder for the PNGs")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.set_defaults(func=run)
