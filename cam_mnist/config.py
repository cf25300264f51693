"""Every setting of a run, typed, in one place.

A run's configuration is a :class:`RunConfig` (data + model + training). Presets are named sets of overrides;
the command line overrides single fields (``--steps 500``), and the resolved config is written as ``config.json``
beside the run's outputs so that every heatmap and number can be traced to the settings that made it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from cam_mnist.mnist import SPLIT_SIZES


def _opt(default, help: str, **kw):
    """A dataclass field whose help text the command line shows."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class DataConfig:
    """Cluttered MNIST as DeepMind's mnist_cluttered.lua makes it; defaults are the reference repo's."""

    canvas: int = _opt(100, "side of the square canvas in pixels (the reference's megapatch_w)")
    distractors: int = _opt(8, "clutter pieces per image, each a crop of a random digit of the same split")
    distractor_size: int = _opt(8, "side of each square clutter crop in pixels")
    digits: int = _opt(1, "digits per image (>1 places them without overlap, with distinct classes)")
    data_seed: int = _opt(0, "seed of the held-out val/test images: fixed so every run is scored on the same ones")
    train_size: int = _opt(
        50_000, "training images per epoch; each epoch draws fresh clutter around MNIST train digits"
    )
    rotate: float = _opt(0.0, "training digits only: each epoch rotates each by a random angle within +-this (deg)")
    rescale: float = _opt(0.0, "training digits only: each epoch scales each by a random factor within 1 +- this")
    hide_patch: int = _opt(
        0, "training images only: hide-and-seek, blanking squares of this many pixels on a random grid (0: off)"
    )
    hide_prob: float = _opt(0.5, "hide-and-seek: the chance that each square is blanked")
    hide_epochs: int = _opt(0, "hide-and-seek only in the first this many epochs, then whole images (0: in all)")
    extra_train_digits: int = _opt(
        0,
        "the first N of MNIST's 10k validation digits join the 50k training digits; validation then scores only "
        "the images led by the other 10k - N (the test split is never touched)",
    )


LAYER_SPEC = re.compile(
    r"^(?P<width>\d+)x(?P<kh>\d+)(?:x(?P<kw>\d+))?(?:/(?P<stride>\d+))?(?:d(?P<dilation>\d+))?(?P<pool>p)?$"
)


@dataclass(frozen=True)
class ConvSpec:
    """One conv of the 'stack' arch, written ``WIDTHxK[xKW][/STRIDE][dDILATION][p]``: K x K kernel (or K high,
    KW wide), ``p``: a 2x2 max-pool after it."""

    width: int
    kernel: tuple[int, int]
    stride: int = 1
    dilation: int = 1
    pool: bool = False

    @classmethod
    def parse(cls, spec: str) -> ConvSpec:
        m = LAYER_SPEC.match(spec)
        if m is None:
            raise ValueError(f"bad layer {spec!r}: write WIDTHxK[xKW][/STRIDE][dDILATION][p], e.g. 32x4/2 or 64x3x1")
        kernel = (int(m["kh"]), int(m["kw"] or m["kh"]))
        return cls(int(m["width"]), kernel, int(m["stride"] or 1), int(m["dilation"] or 1), m["pool"] is not None)


@dataclass
class ModelConfig:
    """The network: a conv stack, then conv -> global average pooling -> bias-free linear -> softmax."""

    arch: str = _opt(
        "fast", "'lenet' (the reference: conv5x5x32, pool, conv5x5x64, pool), 'stack' (ours: see layers) or 'fast'"
    )
    layers: tuple[str, ...] = _opt(
        (), "'stack' arch: one WIDTHxKERNEL[/STRIDE][dDILATION][p] per conv (p: 2x2 max-pool), e.g. 24x5/2 64x3"
    )
    widths: tuple[int, ...] = _opt((24, 48, 64, 64, 64), "channels of each conv layer of the 'fast' arch")
    batch_norm: bool = _opt(True, "batch norm after each conv of the 'fast' arch")
    head: str = _opt("softmax", "'softmax' (one digit per image) or 'sigmoid' (multi-label: several digits)")
    pool_first: bool = _opt(
        False, "'fast' arch: max-pool straight after each pooled conv, before BN and ReLU (cheaper; presets use it)"
    )
    stem_stride: int = _opt(
        2, "stride of the 'fast' arch's first 5x5 conv: 2 (then a 2x2 pool, see stem_pool) or 4 (no pool)"
    )
    stem_pool: bool = _opt(
        True,
        "'fast' arch, stride-2 stem: max-pool its output, or (off: the default and two-digits presets) give the "
        "next conv stride 2 instead",
    )
    last_kernel: int = _opt(3, "kernel of the 'fast' arch's extra conv before GAP: 3 (the CAM paper's) or 1")
    quarter_convs: int = _opt(
        1, "'fast' arch: how many of the 3x3 convs after the stem run at 1/4 resolution (the rest run at 1/8)"
    )


@dataclass
class TrainConfig:
    """Optimisation, checkpoints and the heatmap panel."""

    steps: int = _opt(7200, "optimizer steps in the whole run (9.2 epochs of 50k images at batch 64)")
    batch_size: int = _opt(
        64, "images per step (64: as many images/s as 128 on 2 cores, twice the updates; see README)"
    )
    optimizer: str = _opt("adam", "'sgd' (the reference's) or 'adam'")
    lr: float = _opt(3e-3, "peak learning rate")
    schedule: str = _opt("cosine", "'constant' or 'cosine' (linear warm-up, then cosine decay to 0)")
    warmup_steps: int = _opt(400, "linear warm-up steps of the cosine schedule")
    weight_decay: float = _opt(
        0.0, "decoupled weight decay (AdamW) of the conv and linear kernels, not batch norm's; 0 turns it off"
    )
    center_logits: bool = _opt(
        False,
        "softmax head: keep the logits kernel w_k^c zero-mean over classes, which changes no prediction but takes "
        "the part every class shares out of each CAM (presets turn it on)",
    )
    seed: int = _opt(0, "seeds the weights and the training data order and clutter")
    heatmap_every: int = _opt(400, "steps between heatmap snapshots and validation (about 20 per run)")
    checkpoint_every: int = _opt(400, "steps between checkpoints")
    keep_checkpoints: int = _opt(25, "newest checkpoints kept on disk; older ones are deleted")
    panel_size: int = _opt(16, "fixed test images whose CAMs are drawn at every heatmap step")
    val_size: int = _opt(
        2000,
        "validation images scored at each heatmap step (the split's first ones; the final model is scored on the whole "
        "test split)",
    )
    deterministic: bool = _opt(True, "TensorFlow op determinism, so a resumed run equals an uninterrupted one")


@dataclass
class RunConfig:
    preset: str = "default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config sections: {sorted(unknown)}")
        return cls(
            preset=d.get("preset", "default"),
            data=_section(DataConfig, d.get("data", {})),
            model=_section(ModelConfig, d.get("model", {})),
            train=_section(TrainConfig, d.get("train", {})),
        )

    def save(self, path: Path) -> None:
        from cam_mnist.mnist import atomic_write_bytes

        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode())

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _section(kind, values: dict):
    names = {f.name: f for f in dataclasses.fields(kind)}
    unknown = set(values) - set(names)
    if unknown:
        raise ValueError(f"unknown {kind.__name__} fields: {sorted(unknown)}")
    # JSON has no tuples; restore them so a loaded config equals the saved one.
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return kind(**fixed)


# Presets: overrides of the defaults above. `default` is ours, `long` is ours trained longer on more digits,
# `two-digits` ours with two digits per image; `seed` is the reference repo exactly and `seed-adam` its network
# trained with our optimiser; `tiny` is for tests and smoke runs (seconds on a CPU). Fields default to the oldest
# behaviour so that a config.json saved before a field existed rebuilds the run it made; the presets set them.
#
# Our network (docs/experiments.md has the search): five convs, batch norm and ReLU after each, whose last one is
# the CAM layer, a 25x25 map (stride 4). Strided convs have even kernels, so every map cell is centred on the pixels
# it sees (odd kernels shifted the map 1.5-2 pixels up-left). Receptive field 14 pixels wide and 22 high: about a
# digit's shape, so a map cell fires on the digit it lies on and little beside it. Hide-and-seek in the first four
# epochs makes every part of a digit count; centred CAM weights take out what every class's map shares.
FINE = ("24x4/2", "24x3", "48x4/2", "64x3x1", "64x1")
OURS = {
    "data": {"hide_patch": 8, "hide_prob": 0.2, "hide_epochs": 4},
    "model": {"arch": "stack", "layers": FINE},
    "train": {"steps": 6400, "heatmap_every": 640, "checkpoint_every": 640, "center_logits": True},
}
PRESETS: dict[str, dict[str, dict]] = {
    "default": OURS,
    # The default's network at batch 128 for 10k steps (26 epochs, hide-and-seek in the first 12), trained on 58k
    # digits: MNIST's 50k train and the first 8000 validation digits (validation scores the other 2000).
    "long": {
        "data": {**OURS["data"], "hide_epochs": 12, "extra_train_digits": 8000},
        "model": OURS["model"],
        "train": {
            **OURS["train"],
            "steps": 10_000,
            "batch_size": 128,
            "warmup_steps": 200,
            "heatmap_every": 1000,
            "checkpoint_every": 500,
        },
    },
    "seed": {
        "model": {"arch": "lenet", "batch_norm": False},
        "train": {
            "steps": 360,  # what the reference trains in the default preset's wall time on 2 cores (~90 images/s)
            "batch_size": 256,
            "optimizer": "sgd",
            "lr": 0.5,
            "schedule": "constant",
            "warmup_steps": 0,
            "heatmap_every": 20,
            "checkpoint_every": 20,
        },
    },
    # The reference's network exactly (LeNet, no batch norm, a 25x25 map whose cells see 16 pixels), trained with
    # our optimiser and schedule until it converges: what the reference's design reaches on the honest split.
    "seed-adam": {
        "model": {"arch": "lenet", "batch_norm": False},
        "train": {"lr": 1e-3, "steps": 4800, "heatmap_every": 600, "checkpoint_every": 600, "center_logits": True},
    },
    # Two digits of different classes per image, a sigmoid per class (a sigmoid sees each logit's level, so its
    # CAM weights are not centred).
    "two-digits": {
        "data": {**OURS["data"], "digits": 2},
        "model": {**OURS["model"], "head": "sigmoid"},
        "train": {**OURS["train"], "center_logits": False},
    },
    "tiny": {  # the default's recipe at a tenth of its widths
        "data": {"canvas": 40, "distractors": 2, "train_size": 512, "hide_patch": 8, "hide_prob": 0.2},
        "model": {"arch": "stack", "layers": ("4x4/2", "4x3", "8x4/2", "8x3x1", "8x1")},
        "train": {
            "center_logits": True,
            "steps": 12,
            "batch_size": 32,
            "heatmap_every": 4,
            "checkpoint_every": 4,
            "warmup_steps": 2,
            "panel_size": 4,
            "val_size": 64,
        },
    },
}


def preset(name: str) -> RunConfig:
    """The config of preset ``name`` (see :data:`PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    d = {section: dict(values) for section, values in PRESETS[name].items()}
    return RunConfig.from_dict({"preset": name, **d})


# ------------------------------------------------------------------------------------------------- command line
SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per config field (``--batch-size``, ``--canvas``…), defaulting to "not given"."""
    for section, kind in SECTIONS.items():
        group = parser.add_argument_group(f"{section} settings (override the preset)")
        for f in dataclasses.fields(kind):
            flag = "--" + f.name.replace("_", "-")
            help = f"{f.metadata['help']} (default: {f.default})"
            if f.type in ("bool", bool):
                group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help)
            elif f.name == "widths":
                group.add_argument(flag, dest=f.name, type=int, nargs="+", default=None, help=help)
            elif f.name == "layers":
                group.add_argument(flag, dest=f.name, nargs="+", default=None, help=help)
            else:
                kind_of = {"int": int, "float": float, "str": str}[str(f.type)]
                group.add_argument(flag, dest=f.name, type=kind_of, default=None, help=help)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The preset named by ``args.preset`` with every flag the user gave applied on top."""
    config = preset(args.preset)
    for section, kind in SECTIONS.items():
        target = getattr(config, section)
        for f in dataclasses.fields(kind):
            value = getattr(args, f.name, None)
            if value is not None:
                setattr(target, f.name, tuple(value) if isinstance(value, list) else value)
    validate(config)
    return config


def validate(config: RunConfig) -> None:
    """Refuse settings that cannot work, naming the field."""
    d, m, t = config.data, config.model, config.train
    checks = [
        (
            d.canvas >= 28 * d.digits if d.digits > 1 else d.canvas >= 28,
            f"canvas {d.canvas} cannot hold {d.digits} 28x28 digit(s)",
        ),
        (0 < d.distractor_size <= 28, f"distractor_size must be in 1..28, got {d.distractor_size}"),
        (d.distractors >= 0, f"distractors must be >= 0, got {d.distractors}"),
        (1 <= d.digits <= 9, f"digits must be in 1..9, got {d.digits}"),
        (0 <= d.rotate <= 180, f"rotate must be in 0..180 degrees, got {d.rotate}"),
        (0 <= d.rescale < 1, f"rescale must be in [0, 1), got {d.rescale}"),
        (0 <= d.hide_patch <= d.canvas, f"hide_patch must be in 0..{d.canvas} pixels, got {d.hide_patch}"),
        (0 <= d.hide_prob < 1, f"hide_prob must be in [0, 1), got {d.hide_prob}"),
        (d.hide_epochs >= 0, f"hide_epochs must be >= 0, got {d.hide_epochs}"),
        (
            0 <= d.extra_train_digits < SPLIT_SIZES["val"],
            f"extra_train_digits must be in 0..{SPLIT_SIZES['val'] - 1} (some validation digits must stay held "
            f"out), got {d.extra_train_digits}",
        ),
        (m.head in ("softmax", "sigmoid"), f"head must be 'softmax' or 'sigmoid', got {m.head!r}"),
        (
            d.digits == 1 or m.head == "sigmoid",
            f"{d.digits} digits per image need the multi-label head: add --head sigmoid",
        ),
        (m.arch in ("lenet", "fast", "stack"), f"arch must be 'lenet', 'fast' or 'stack', got {m.arch!r}"),
        (m.arch != "stack" or len(m.layers) > 0, "the 'stack' arch needs --layers"),
        (m.stem_stride in (2, 4), f"stem_stride must be 2 or 4, got {m.stem_stride}"),
        (m.last_kernel in (1, 3), f"last_kernel must be 1 or 3, got {m.last_kernel}"),
        (m.stem_pool or m.stem_stride == 2, "stem_pool off needs stem_stride 2 (a stride-4 stem has no pool)"),
        (
            m.arch != "fast" or 1 <= m.quarter_convs <= len(m.widths) - 2,
            f"quarter_convs must be in 1..{len(m.widths) - 2} for widths {m.widths}, got {m.quarter_convs}",
        ),
        (
            not t.center_logits or m.head == "softmax",
            "center_logits needs the softmax head: a sigmoid per class sees every logit's level (--no-center-logits)",
        ),
        (t.optimizer in ("sgd", "adam"), f"optimizer must be 'sgd' or 'adam', got {t.optimizer!r}"),
        (t.schedule in ("constant", "cosine"), f"schedule must be 'constant' or 'cosine', got {t.schedule!r}"),
        (t.steps > 0 and t.batch_size > 0, "steps and batch_size must be positive"),
        (t.heatmap_every > 0 and t.checkpoint_every > 0, "heatmap_every and checkpoint_every must be positive"),
        (t.keep_checkpoints > 0, "keep_checkpoints must be positive"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(f"bad config: {message}")
    for spec in m.layers:
        ConvSpec.parse(spec)  # raises, naming the bad layer
