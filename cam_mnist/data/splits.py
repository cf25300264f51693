"""Cluttered-MNIST splits with ground truth: build, store, load.

Honest splits, unlike the TF1 reference (which built train *and* test images from MNIST training digits):
  - ``train``: MNIST train digits (the first 50k), plus the first ``extra_train_digits`` validation digits if
    asked; fresh clutter every epoch, a pure function of (seed, epoch);
  - ``val``: the 10k MNIST validation digits, one image each (a run scores only those led by digits it did not
    train on, :func:`held_out_of`);
  - ``test``: the 10k MNIST *test* digits, one image each. Distractor crops come from the same split's digits,
    so no test image contains a pixel of a training digit.

Held-out splits are written to ``data/<clutter-settings>/{val,test}.npz`` with a ``manifest.json`` holding each
file's sha256 and a content hash of its arrays. The training split is not stored: each epoch is regenerated
from its seed in a few seconds, which is also what lets a resumed run see exactly the data it would have seen.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cam_mnist.data import clutter

from cam_mnist.core import lock
from cam_mnist.core.atomic import atomic_write_bytes
from cam_mnist.config import DataConfig, RunConfig
from cam_mnist.core.errors import DataError
from cam_mnist.data.mnist import Digits, acquire, load_digits, sha256_bytes

DATA_DIR = Path("data")
MNIST_FILE = "mnist.npz"
HELD_OUT = ("val", "test")
# Each split draws from its own random stream, and hide-and-seek from another, so that turning it on leaves every
# other draw (order, positions, clutter) of a seed as it was. (3 was the retired digit distortions' stream.)
_SPLIT_STREAM = {"train": 0, "val": 1, "test": 2, "hide": 4, "labels": 5}


@dataclass(frozen=True)
class Split:
    """N cluttered images and where their digits are.

    With one digit per image (the default) the K axis is dropped: ``labels`` (N,), ``boxes`` (N, 4),
    ``positions`` (N, 2), ``masks`` (N, H, W), ``source_index`` (N,). With K digits each gains a K axis after N.
    Boxes are (y0, x0, y1, x1), half-open: y1 is the digit's last nonzero row + 1.
    """

    name: str
    images: np.ndarray  # (N, H, W) uint8; value / 255 is the pixel in [0, 1]
    labels: np.ndarray
    boxes: np.ndarray
    positions: np.ndarray  # top-left (y, x) of the 28x28 digit square
    masks: np.ndarray  # the digit's own nonzero pixels, bool
    source_index: np.ndarray  # index of the digit in its MNIST split
    source_split: str  # which MNIST split the digits (and the clutter) came from

    def __len__(self) -> int:
        return len(self.images)

    def head(self, n: int | None) -> Split:
        """The first ``n`` images (all for None), with their ground truth: copies, so that the whole split they
        came from can be freed."""
        part = self.subset(slice(0, n))
        return part if n is None or n >= len(self) else part.subset(np.arange(len(part)))

    def subset(self, index) -> Split:
        """The images at ``index`` (a slice, indices or a boolean mask), with their ground truth."""
        fields = ("images", "labels", "boxes", "positions", "masks", "source_index")
        return dataclasses.replace(self, **{f: getattr(self, f)[index] for f in fields})

    def float_images(self, index=None) -> np.ndarray:
        """Images as the model takes them: (n, H, W, 1) float32 in [0, 1]. ``index``: a slice or indices (all)."""
        index = slice(None) if index is None else index
        return (self.images[index, ..., None] / np.float32(255)).astype(np.float32)


def _rng(seed: int, split: str, epoch: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_STREAM[split], epoch])


def generate(
    digits: Digits,
    config: DataConfig,
    rng: np.random.Generator,
    n: int | None = None,
    *,
    digit_index: np.ndarray | None = None,
    with_masks: bool = True,
    name: str = "",
    source_split: str = "",
) -> Split:
    """Generate ``n`` images (or one per entry of ``digit_index``) from the MNIST ``digits`` of one split."""
    if digit_index is not None:
        n = len(digit_index)
    draws = clutter.draw(rng, digits.labels, n, config, digit_index)
    return _split_of(digits, draws, config, with_masks=with_masks, name=name, source_split=source_split)


def _split_of(
    digits: Digits, draws: clutter.Draws, config: DataConfig, *, with_masks: bool, name: str, source_split: str,
    pool_boxes=None,
) -> Split:  # fmt: skip
    """The images and ground truth that ``draws`` describe (``pool_boxes``: the digits' own boxes, if known)."""
    n = len(draws.digit_index)
    images = clutter.compose(digits.images, draws, config.canvas, config.distractor_size)
    boxes = clutter.ground_truth_boxes(digits.images, draws, pool_boxes)
    masks = (
        clutter.digit_masks(digits.images, draws, config.canvas)
        if with_masks
        else np.zeros((n, config.digits, 0, 0), bool)
    )
    squeeze = (lambda a: a[:, 0]) if config.digits == 1 else (lambda a: a)
    return Split(
        name=name,
        images=images,
        labels=squeeze(digits.labels[draws.digit_index].astype(np.int32)),
        boxes=squeeze(boxes),
        positions=squeeze(draws.position),
        masks=squeeze(masks),
        source_index=squeeze(draws.digit_index),
        source_split=source_split,
    )


def held_out(digits: dict[str, Digits], config: DataConfig, split: str) -> Split:
    """The fixed ``val`` or ``test`` split: one image per MNIST digit of that split, in MNIST order."""
    pool = digits[split]
    index = np.arange(len(pool.labels))
    if config.digits > 1:  # each digit leads one image; its companions are drawn (distinct class, no overlap)
        index = np.concatenate([index[:, None], np.zeros((len(index), config.digits - 1), int)], 1)
    return generate(pool, config, _rng(config.data_seed, split), digit_index=index, name=split, source_split=split)


def training_digits(digits: dict[str, Digits], config: DataConfig) -> Digits:
    """The digits training draws from: MNIST's 50k train digits, then the first ``extra_train_digits`` validation
    digits (so a train image's ``source_index`` >= 50k names validation digit ``source_index - 50k``)."""
    pool, n = digits["train"], config.extra_train_digits
    if n == 0:
        return pool
    extra = digits["val"]
    return Digits(np.concatenate([pool.images, extra.images[:n]]), np.concatenate([pool.labels, extra.labels[:n]]))


def with_random_labels(digits: dict[str, Digits], seed: int) -> dict[str, Digits]:
    """The MNIST splits with the training digits' labels permuted at random (once, from ``seed``): the data of
    Adebayo et al.'s data randomization test. The held-out splits keep their true labels."""
    train = digits["train"]
    permuted = train.labels[_rng(seed, "labels").permutation(len(train.labels))]
    return {**digits, "train": Digits(train.images, permuted)}


def held_out_of(split: Split, config: DataConfig) -> Split:
    """The images of the stored ``val`` split that no training digit leads: those whose digits all have index
    >= ``extra_train_digits``. Their 8x8 clutter crops may still come from the moved digits; validation only
    watches the run, and the test split (MNIST test digits only) is what scores it."""
    n = config.extra_train_digits
    if n == 0:
        return split
    return split.subset((split.source_index >= n).reshape(len(split), -1).all(1))


class TrainEpoch:
    """Epoch ``epoch`` of training images, a shuffled pass over the train digits with fresh clutter, made a few
    rows at a time (:meth:`rows`): every random choice of the epoch is drawn up front (a few MB: digits, positions,
    clutter crops, hidden squares), the images only when asked, so memory does not grow with ``train_size``.

    A pure function of (seed, epoch): a resumed run regenerates exactly the images it would have seen, and any
    rows of it are the rows of the whole epoch made at once.
    """

    def __init__(self, digits: dict[str, Digits], config: DataConfig, seed: int, epoch: int):
        config = epoch_config(config, epoch)
        self.pool, self.config = training_digits(digits, config), config
        self.pool_boxes = clutter.digit_boxes(self.pool.images)  # once, not at every batch
        rng = _rng(seed, "train", epoch)
        n = config.train_size
        order = np.concatenate([rng.permutation(len(self.pool.labels)) for _ in range(-(-n // len(self.pool.labels)))])
        index = order[:n]
        if config.digits > 1:
            index = np.concatenate([index[:, None], np.zeros((n, config.digits - 1), int)], 1)
        c = config
        self.draws = clutter.draw(rng, self.pool.labels, n, c, digit_index=index)
        # Hide-and-seek draws from its own stream, so turning it on leaves every other draw of the seed as it was.
        self.hiding = None
        if c.hide_patch and (c.hide_epochs == 0 or epoch < c.hide_epochs):
            self.hiding = clutter.draw_hiding(
                n, (c.canvas, c.canvas), c.hide_patch, c.hide_prob, _rng(seed, "hide", epoch)
            )

    def __len__(self) -> int:
        return len(self.draws.digit_index)

    def rows(self, index, with_masks: bool = False) -> Split:
        """The images ``index`` (a slice or indices) of the epoch, with their ground truth."""
        c, draws = self.config, self.draws.take(index)
        split = _split_of(
            self.pool, draws, c, with_masks=with_masks, name="train", source_split="train", pool_boxes=self.pool_boxes
        )
        if self.hiding is not None:
            split = dataclasses.replace(split, images=clutter.hide(split.images, c.hide_patch, self.hiding.take(index)))
        return split


def epoch_config(config: DataConfig, epoch: int) -> DataConfig:
    """The data settings of training epoch ``epoch``: the run's own, or, in its first ``small_epochs`` epochs, a canvas
    ``small_canvas`` pixels wide holding as many distractors per pixel (rounded). Progressive resizing (fast.ai's
    ImageNet training for DAWNBench, 2018): the network is convolutional up to GAP, so it learns the same digits,
    at the same size, among the same clutter from smaller images at a fraction of a step's cost, and its last epochs
    on the whole canvas fit it (its batch norm, the share of blank cells GAP averages) to the images it is scored on."""
    if not config.small_canvas or epoch >= config.small_epochs:
        return config
    share = (config.small_canvas / config.canvas) ** 2
    return dataclasses.replace(config, canvas=config.small_canvas, distractors=round(config.distractors * share))


def train_epoch(
    digits: dict[str, Digits], config: DataConfig, seed: int, epoch: int, with_masks: bool = False
) -> Split:
    """Epoch ``epoch`` of training images, all of them at once (:class:`TrainEpoch` makes them a few at a time)."""
    return TrainEpoch(digits, config, seed, epoch).rows(slice(None), with_masks)


# ------------------------------------------------------------------------------------------------------- storage
@dataclass
class TrainingData:
    """What a training run reads: the MNIST digits its epochs are drawn from, and the held-out images it scores."""

    digits: dict[str, Digits]
    val: Split  # scored at every heatmap step: the validation split's first val_size held-out images
    test: Split  # scored once, at the end


def training_data(config: RunConfig, data_dir: Path = DATA_DIR) -> TrainingData:
    """The data of a run of ``config``: MNIST fetched and the held-out splits generated where they are not yet.
    Training scores boxes, never masks, so the masks stay packed on disk."""
    digits = load_digits(ensure_mnist(Path(data_dir)))
    if config.train.random_labels:
        digits = with_random_labels(digits, config.train.seed)
    folder = prepare(config.data, data_dir)
    val = held_out_of(read_split(folder / "val.npz", "val", with_masks=False), config.data).head(config.train.val_size)
    test = read_split(folder / "test.npz", "test", with_masks=False).head(config.data.test_size or None)
    return TrainingData(digits, val, test)


def settings_dir(config: DataConfig, data_dir: Path = DATA_DIR) -> Path:
    """Folder of the held-out splits for these clutter settings, e.g. ``data/clutter-c100-d8x8-k1-s0``."""
    c = config
    return Path(data_dir) / f"clutter-c{c.canvas}-d{c.distractors}x{c.distractor_size}-k{c.digits}-s{c.data_seed}"


def content_hash(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over names, dtypes, shapes and bytes: the same on any machine for the same arrays."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _to_arrays(split: Split) -> dict[str, np.ndarray]:
    # Masks are bit-packed: 10k 100x100 masks take 12.5 MB instead of 100 MB.
    return {
        "images": split.images,
        "labels": split.labels,
        "boxes": split.boxes,
        "positions": split.positions,
        "masks_packed": np.packbits(split.masks, axis=-1),
        "source_index": split.source_index,
        "mask_width": np.array(split.masks.shape[-1]),
    }


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz whose bytes depend only on the arrays: fixed member order and timestamps (np.savez stamps now)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            z.writestr(info, member.getvalue(), compresslevel=6)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return data


def save_split(folder: Path, split: Split, config: DataConfig) -> dict:
    """Write ``folder/<name>.npz`` and record its hashes and settings in ``folder/manifest.json``."""
    arrays = _to_arrays(split)
    data = write_npz(folder / f"{split.name}.npz", arrays)
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest[split.name] = {
        "file": f"{split.name}.npz",
        "sha256": sha256_bytes(data),
        "content_sha256": content_hash(arrays),
        "n": len(split),
        "source_split": split.source_split,
        "settings": dataclasses.asdict(config),
    }
    atomic_write_bytes(manifest_path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return manifest[split.name]


def read_split(path: Path, name: str, with_masks: bool = True) -> Split:
    """Load one stored split, with a one-line error if it is missing or corrupt. ``with_masks=False`` leaves the
    digits' masks packed on disk (empty (N, [K,] 0, 0) arrays): 100 MB less for 10k images, where only boxes count."""
    if not path.exists():
        raise DataError(f"{path}: split {name!r} not generated; run `make data`")
    try:
        with np.load(path, allow_pickle=False) as z:
            a = {k: z[k] for k in z.files if with_masks or k != "masks_packed"}
        if with_masks:  # the unpacked bits are 0 or 1: viewed as bool, not copied
            masks = np.unpackbits(a["masks_packed"], axis=-1, count=int(a["mask_width"])).view(bool)
        else:
            masks = np.zeros((*a["labels"].shape, 0, 0), bool)
        return Split(
            name=name,
            images=a["images"],
            labels=a["labels"],
            boxes=a["boxes"],
            positions=a["positions"],
            masks=masks,
            source_index=a["source_index"],
            source_split=name,
        )
    except (KeyError, OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: corrupted split file ({e}); delete it and run `make data`") from None


def ensure_mnist(data_dir: Path = DATA_DIR, log=print) -> Path:
    """``data_dir/mnist.npz``, fetched from the pinned source first if it is not there yet."""
    path = Path(data_dir) / MNIST_FILE
    if not path.exists():
        with lock.waiting(Path(data_dir) / ".mnist.lock"):  # two fresh processes: one fetches, the other waits
            if not path.exists():
                log(f"fetching MNIST into {path} (once)")
                acquire(path)
    return path


def prepare(config: DataConfig, data_dir: Path = DATA_DIR, force: bool = False, fetch: bool = True) -> Path:
    """Generate (once) the held-out splits for ``config``; returns their folder.

    With ``fetch=False`` a missing MNIST file is an error (naming ``make data``) instead of a download.
    """
    folder = settings_dir(config, data_dir)

    def missing():
        return [name for name in HELD_OUT if force or not (folder / f"{name}.npz").exists()]

    if missing():
        # One process generates, one at a time updates manifest.json; another that started meanwhile waits here
        # and finds the splits written (two trainings, or a test suite's workers, on a fresh clone).
        with lock.waiting(folder / ".lock"):
            todo = missing()
            if todo:
                digits = load_digits(ensure_mnist(data_dir) if fetch else Path(data_dir) / MNIST_FILE)
            for name in todo:
                save_split(folder, held_out(digits, config, name), config)
    return folder


def load_split(name: str, config: DataConfig | None = None, data_dir: Path = DATA_DIR) -> Split:
    """A cluttered-MNIST split by name: ``"train"`` (epoch 0, generated), ``"val"`` or ``"test"`` (stored).

    Held-out splits are generated on first use, so any clutter setting works without a separate step.
    """
    config = config or DataConfig()
    if name == "train":
        return train_epoch(load_digits(ensure_mnist(data_dir)), config, seed=config.data_seed, epoch=0, with_masks=True)
    if name not in HELD_OUT:
        raise ValueError(f"unknown split {name!r}: choose train, val or test")
    folder = prepare(config, data_dir)
    return read_split(folder / f"{name}.npz", name)
