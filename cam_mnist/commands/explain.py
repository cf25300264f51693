"""``python -m cam_mnist explain``: maps for the user's own images, with a trained run or any Keras model."""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from cam_mnist import maps
from cam_mnist.commands.common import command_parser
from cam_mnist.commands.explain_store import Store
from cam_mnist.core.boxes import boxes_from_maps, tight_boxes
from cam_mnist.core.errors import NotClassScores, OutputNotChosen, UserError
from cam_mnist.core.runs import RunFolder, run_dir_or_latest
from cam_mnist.core.tables import markdown_table
from cam_mnist.data.images import to_model_input
from cam_mnist.maps.registry import METHODS
from cam_mnist.maps.segmentation import segment

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


def model_file(model_path: str | None, run_dir: str | None) -> Path:
    """The model file ``--model`` or ``--run-dir`` names, checked without TensorFlow: it exists, and a ``.keras``
    file is a zip archive (what Keras 3 writes), so a wrong file is answered before the import."""

    if model_path is None:
        model_path = RunFolder(run_dir_or_latest(run_dir)).model
        if not model_path.exists():
            raise UserError(f"{model_path}: no trained model; train one with `make train` or pass --model")
    path = Path(model_path)
    if not path.is_file():
        raise UserError(f"{path}: no such model file")
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a Keras model (a .keras file is a zip archive, this one is not)")
    return path


def check_model(args) -> None:
    model_file(args.model, args.run_dir)


def load_model(model_path: str | None, run_dir: str | None):
    import keras

    path = model_file(model_path, run_dir)
    try:
        model = keras.models.load_model(path)
    except Exception as e:  # Keras raises many types for a file that is not a model
        raise UserError(f"{path}: not a Keras model ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 4:
        raise UserError(f"{path}: explain needs a model with one (N, H, W, C) image input")
    return model, path


def read_picture(path: Path):
    try:
        with Image.open(path) as picture:
            picture.load()
            return picture.copy()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{path}: not a readable image ({type(e).__name__})") from None


CHUNK = 256  # images read, explained and written at once: memory flat in the number of images
PICTURES_AUTO = 100  # up to this many images, a picture each unless --no-pictures


@dataclass(frozen=True)
class Request:
    """What ``explain`` was asked for, from its flags: the same for every chunk of images."""

    methods: list[str]
    layer: str | list[str] | None
    class_index: int | None  # explain this class, or
    top_k: int  # the k most probable ones
    fit: str
    invert: str
    segment: bool
    pictures: bool
    out: Path
    output: str | None = None  # which output of a model with several
    region: tuple | None = None  # (y0, x0, y1, x1) in the image's pixels: a segmentation's class summed there
    smoothing: tuple = ()  # ("eigen_smooth", True), ("aug_smooth", True): options of every method


def run(args) -> int:
    model, model_path = load_model(args.model, args.run_dir)
    shape, sized = _input_shape(model, model_path, args.size)
    h, w, _ = shape
    chosen = {"output": args.output}  # what the maps explain, checked once here: a region's target is made per chunk
    if args.region:
        chosen = {"target": lambda outputs: outputs[..., 0]}
    layer = args.layer.split(",") if args.layer and "," in args.layer else args.layer  # several: maps averaged
    smoothing = tuple((key, True) for key in ("eigen_smooth", "aug_smooth") if getattr(args, key))
    methods = _methods(model, model_path, args.method, layer, {**sized, **chosen, **dict(smoothing)})
    paths = expand(args.images)
    if not paths:
        raise UserError(f"no images found in {' '.join(args.images)}")
    k = 1 if args.class_index is not None else args.top_k
    pictures = args.pictures if args.pictures is not None else len(paths) <= PICTURES_AUTO
    if args.region and args.class_index is None:
        raise UserError("--region explains one class of a segmentation model: give --class")
    request = Request(
        methods, layer, args.class_index, k, args.fit, args.invert, args.segment, pictures, Path(args.out),
        args.output, tuple(args.region) if args.region else None, smoothing,
    )  # fmt: skip
    settings = {
        "segment": args.segment,
        "model": str(model_path.resolve()),
        "methods": methods,
        "classes": {"class": args.class_index} if args.class_index is not None else {"top_k": k},
        "layer": layer,
        **dict(smoothing),
        "fit": args.fit,
        "invert": args.invert,
    }
    store = Store(request.out, settings, [str(p) for p in paths], methods, (k, h, w))
    todo = store.todo()
    if len(todo) < len(paths):
        print(f"note: {len(paths) - len(todo)} of {len(paths)} images already explained in {args.out}", file=sys.stderr)
    notes: dict[str, list[str]] = {}
    with tqdm(total=len(paths), initial=len(paths) - len(todo), unit="image", disable=None, file=sys.stderr) as bar:
        for lo in range(0, len(todo), CHUNK):
            chunk = [(i, paths[i]) for i in todo[lo : lo + CHUNK]]
            records, maps = _explain_chunk(model, model_path, chunk, shape, request, notes)
            store.write(records, maps)
            bar.update(len(chunk))
    _report(notes, len(paths))
    records = [store.records[i] for i in range(len(paths))]
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        _print_table(records, methods[0], request.out)
    return 2 if any("error" in r for r in records) else 0


def _input_shape(model, model_path: Path, size) -> tuple[tuple[int, int, int], dict]:
    """The (H, W, C) the images are brought to, and the options that bind a model taking any size to it."""
    h, w, c = model.inputs[0].shape[1:]
    if h is not None and w is not None:
        return (h, w, c), {}
    if not size:
        raise UserError(f"{model_path}: the model takes images of any size; give --size H W")
    return (*size, c), {"input_shape": (*size, c)}


def _methods(model, model_path: Path, method: str, layer, options: dict) -> list[str]:
    """The methods to run, each checked against the model before any image is read: 'all' is every method of the
    registry, those that cannot explain this model at that layer with these options (CAM without a GAP -> Dense
    head, a pixel-level method asked for ``--eigen-smooth``...) skipped with a note saying why."""

    layers = layer if isinstance(layer, list) else [layer]
    try:
        for one in layers:
            maps.get_method(model, method if method != "all" else "gradcam", one, **options)
    except UserError as e:  # what the library names in Python, said as the command line says it
        said = {OutputNotChosen: " (--output NAME)", NotClassScores: " (--class C --region Y0 X0 Y1 X1)"}
        raise UserError(f"{model_path}: {e}{said.get(type(e), '')}") from None
    if method != "all":
        return [method]
    methods = []
    for name in METHODS:
        try:
            for one in layers:
                maps.get_method(model, name, one, **options)
            methods.append(name)
        except UserError as e:
            print(f"note: {name} is skipped for {model_path.name}: {e}", file=sys.stderr)
    return methods


def _read_chunk(chunk: list[tuple[int, Path]], shape, request: Request, notes: dict):
    """The pictures of ``chunk`` as model inputs (n, H, W, C), the (index, path) of those read, and an error record
    for each that could not be read."""

    h, w, c = shape
    errors, inputs, ok = [], [], []
    for i, path in chunk:
        try:
            array, said = to_model_input(read_picture(path), (h, w), c, request.fit, request.invert)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            errors.append({"index": i, "image": str(path), "error": str(e)})
            continue
        for note in said:
            notes.setdefault(note, []).append(path.name)
        inputs.append(array)
        ok.append((i, path))
    return (np.stack(inputs) if inputs else None), ok, errors


def _explain_chunk(model, model_path: Path, chunk: list[tuple[int, Path]], shape, request: Request, notes: dict):
    """Read, explain and (if asked) draw the images of ``chunk`` ((index, path) pairs): their records and
    {method: (n, K, H, W) maps} of those that could be read."""

    h, w, _ = shape
    images, ok, records = _read_chunk(chunk, shape, request, notes)
    if images is None:
        return records, {m: np.zeros((0, 1, h, w)) for m in request.methods}
    probs, target = _scores(model, model_path, images, request)
    if request.class_index is None:
        classes = np.argsort(-probs, 1)[:, : request.top_k]  # (n, k), most probable first
    elif 0 <= request.class_index < probs.shape[1]:
        classes = np.full((len(images), 1), request.class_index)  # (n, 1)
    else:
        raise UserError(f"--class {request.class_index} out of range: the model has {probs.shape[1]} classes")
    k, by_method = classes.shape[1], {}
    for method in request.methods:
        try:
            targets = classes.reshape(-1) if target is None else target
            chosen = {"layer": request.layer, "output": None if target is not None else request.output}
            chosen |= dict(request.smoothing)
            flat = maps.explain(model, np.repeat(images, k, 0), method, targets, **chosen)
        except UserError as e:
            raise UserError(f"{model_path}: {method}: {e}") from None
        by_method[method] = flat.reshape(len(images), k, h, w)
    segmented = None
    if request.segment:  # the object's pixels, seeded by the first method's map of the top class
        segmented = segment(images, by_method[request.methods[0]][:, 0])
    for j, (i, path) in enumerate(ok):
        mask = None if segmented is None else segmented[j]
        one = Explained(images[j], {m: by_method[m][j] for m in by_method}, probs[j], classes[j], mask)
        records.append(_record(i, path, one, request))
    return records, by_method


def _scores(model, model_path: Path, images, request: Request):
    """The (n, classes) probabilities the records report, from the output ``--output`` names, and the target of a
    ``--region``: the segmentation's class summed over the region (:class:`cam_mnist.maps.targets.RegionTarget`),
    whose mean probability there is reported."""
    from cam_mnist.maps.targets import RegionTarget

    outputs = model.predict(images, verbose=0, batch_size=64)
    if isinstance(outputs, (list, dict)):
        names = list(outputs) if isinstance(outputs, dict) else [str(n) for n in model.output_names]
        if request.output not in names:
            raise UserError(f"{model_path}: has outputs {', '.join(names)}: choose one with --output")
        outputs = outputs[request.output] if isinstance(outputs, dict) else outputs[names.index(request.output)]
    outputs = np.asarray(outputs)
    if request.region is None:
        if outputs.ndim != 2:
            raise UserError(f"{model_path}: gives {outputs.shape[1:]} per image, not class scores: give --region")
        return outputs, None
    if outputs.ndim != 4:
        raise UserError(f"{model_path}: --region needs a segmentation output (H, W, classes), got {outputs.shape[1:]}")
    h, w = outputs.shape[1:3]
    y0, x0, y1, x1 = request.region
    mask = np.zeros((h, w), np.float32)  # the region in the input's pixels, on the output's grid
    scale_y, scale_x = h / images.shape[1], w / images.shape[2]
    mask[int(y0 * scale_y) : max(int(y0 * scale_y) + 1, int(y1 * scale_y)), int(x0 * scale_x) : max(
        int(x0 * scale_x) + 1, int(x1 * scale_x))] = 1.0  # fmt: skip
    target = RegionTarget(request.class_index, mask, output=request.output)
    return (outputs * mask[None, :, :, None]).sum((1, 2)) / mask.sum(), target


@dataclass(frozen=True)
class Explained:
    """One image's results."""

    image: np.ndarray  # (H, W, C), as the model took it
    maps: dict[str, np.ndarray]  # method -> (K, H, W), one map per class explained
    probs: np.ndarray  # (classes,)
    classes: np.ndarray  # (K,) the classes explained, most probable first
    segmented: np.ndarray | None  # (H, W) bool: the segmentation the first method's map seeds, where asked for


def _record(i: int, path: Path, one: Explained, request: Request) -> dict:
    """One image's line of results.jsonl (its classes, each method's box of the most probable one at the CAM
    paper's 20% of its map's maximum, the segmentation's box), its picture drawn where asked."""

    boxes = {method: boxes_from_maps(m[:1])[0] for method, m in one.maps.items()}
    first = request.methods[0]
    record = {
        "index": i,
        "image": str(path),
        "box_method": first,
        "box": [int(v) for v in boxes[first]],
        "boxes": {method: [int(v) for v in box] for method, box in boxes.items()},
        "classes": [{"class": int(cls), "probability": round(float(one.probs[cls]), 5)} for cls in one.classes],
    }
    if one.segmented is not None:
        record["segment_box"] = [int(v) for v in tight_boxes(one.segmented[None])[0]]
        record["segment_pixels"] = int(one.segmented.sum())
    if request.pictures:
        record["output"] = str(request.out / f"{path.stem}_explained.png")
        _draw(Path(record["output"]), path.name, one, boxes)
    return record


def _draw(out: Path, name: str, one: Explained, boxes: dict) -> None:
    """One row per method: the picture, then its map of each class; the most probable class's box in magenta and
    the segmentation's outline, where it was asked for, in cyan."""
    from cam_mnist.viz import plotting

    rows, image = [], one.image
    for method, method_maps in one.maps.items():
        tiles = [plotting.captioned(plotting.overlay(image, np.zeros(image.shape[:2]), alpha=0.0), name[:24])]
        for col, cls in enumerate(one.classes):
            top = col == 0
            tile = plotting.overlay(
                image, method_maps[col], map_box=boxes[method] if top else None, outline=one.segmented if top else None
            )
            tiles.append(plotting.captioned(tile, f"{method}: {cls} p={one.probs[cls]:.2f}"))
        rows.append(plotting.hstack(tiles))
    plotting.save_png(out, np.concatenate(rows, 0))


def _report(notes: dict[str, list[str]], total: int, show: int = 20) -> None:
    """What was done to the pictures: per picture for a few, counted for many."""
    for note, names in notes.items():
        if total <= show:
            for name in names:
                print(f"note: {name}: {note}", file=sys.stderr)
        else:
            print(f"note: {note}: {len(names)} images", file=sys.stderr)


def _print_table(records: list[dict], box_method: str, out: Path, show: int = 20) -> None:
    good = [r for r in records if "error" not in r]
    print(f"{'image':30s} {'class':>5s} {'prob':>7s}  box (y0, x0, y1, x1) from {box_method}")
    for r in good[:show]:
        top = r["classes"][0]
        picture = f"  -> {r['output']}" if "output" in r else ""
        print(
            f"{Path(r['image']).name[:30]:30s} {top['class']:5d} {top['probability']:7.4f}  {tuple(r['box'])}{picture}"
        )
    if len(good) > show:
        print(f"... {len(good) - show} more: every image's classes and boxes in {out / 'results.jsonl'}")
    print(f"maps: {', '.join(str(out / f'maps_{m}.npy') for m in records[0].get('boxes', {}) or [box_method])}")


def list_layers(args) -> None:
    """``layers``: the layers a map can be made at, nested models searched, with their output shapes."""

    model, model_path = load_model(args.model, args.run_dir)
    try:
        rows, default = maps.candidate_layers(model), maps.default_layer(model)
    except UserError as e:
        raise UserError(f"{model_path}: {e}") from None
    table = [
        [path + " (default)" * (path == default), kind, "x".join(map(str, shape[1:]))] for path, kind, shape in rows
    ]
    print(markdown_table(["layer (--layer)", "type", "output (h x w x K)"], table))


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
    p.add_argument(
        "--layer",
        help="the 4-D layer to explain, by name or, inside a nested model, by path such as "
        "mobilenetv2_1.00_96/block_13_expand_relu (default: the last one; `layers` lists them); several, "
        "comma-separated: their maps averaged",
    )
    p.add_argument(
        "--eigen-smooth",
        action="store_true",
        help="the first principal component of the weighted activations instead of their sum (pytorch-grad-cam's)",
    )
    p.add_argument(
        "--aug-smooth",
        action="store_true",
        help="the mean map over the image flipped and brightened, mapped back (pytorch-grad-cam's)",
    )
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
    p.add_argument(
        "--out",
        default="out/explained",
        help="folder of the results: maps_<method>.npy, results.jsonl, and the PNGs; running the same command again "
        "skips the images already there",
    )
    p.add_argument(
        "--pictures",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"draw a PNG per image (default: for up to {PICTURES_AUTO} images)",
    )
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="image size, for a model that takes any")
    p.add_argument("--output", help="which output to explain, for a model with several (by name)")
    p.add_argument(
        "--region",
        type=int,
        nargs=4,
        metavar=("Y0", "X0", "Y1", "X1"),
        help="a segmentation model: explain --class summed over this box of the image (pixels, end exclusive)",
    )
    p.add_argument(
        "--segment",
        action="store_true",
        help="also segment the object, seeded by the (first) method's map: its outline in cyan, its box in the JSON",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.set_defaults(func=run, check=check_model)


def add_layers_parser(commands) -> None:
    p = command_parser(
        commands,
        "layers",
        "the layers of a model a map can be made at (4-D outputs, nested models searched), for --layer",
        ["--model my_model.keras", "--run-dir out/default"],
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument("--run-dir", help="a training run (default: out/latest); uses its model.keras")
    source.add_argument("--model", help="any Keras 3 functional or Sequential model saved as .keras")
    p.set_defaults(func=list_layers, check=check_model)
