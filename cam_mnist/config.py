"""Every setting of a run, typed, in one place.

A run's configuration is a :class:`RunConfig` (data + model + training). Its defaults are the ``default`` preset;
the other presets are named sets of overrides; the command line overrides single fields (``--steps 500``), and
the resolved config is written as ``config.json`` beside the run's outputs so that every heatmap and number can
be traced to the settings that made it.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from cam_mnist.core.atomic import atomic_write_text
from cam_mnist.core.errors import DataError, UserError
from cam_mnist.core.runs import RunFolder

# The digits every split draws from: MNIST's 60k training digits split 50k / 10k, and its 10k test digits.
SPLIT_SIZES = {"train": 50_000, "val": 10_000, "test": 10_000}


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
    hide_patch: int = _opt(
        8, "training images only: hide-and-seek, blanking squares of this many pixels on a random grid (0: off)"
    )
    hide_prob: float = _opt(0.2, "hide-and-seek: the chance that each square is blanked")
    hide_epochs: int = _opt(4, "hide-and-seek only in the first this many epochs, then whole images (0: in all)")
    small_canvas: int = _opt(
        48,
        "progressive resizing: training's first small_epochs epochs on a canvas this many pixels wide, the clutter as "
        "dense per pixel, so a step costs about (small_canvas / canvas)^2 of one on the whole canvas (0: off)",
    )
    small_epochs: int = _opt(20, "epochs on the small canvas, then the whole canvas (see small_canvas)")
    test_size: int = _opt(
        0, "held-out test images that score the run (the split's first N; 0: all 10k); the tiny preset's tests use few"
    )
    extra_train_digits: int = _opt(
        0,
        "the first N of MNIST's 10k validation digits join the 50k training digits; validation then scores only "
        "the images led by the other 10k - N (the test split is never touched)",
    )


LAYER_SPEC = re.compile(
    r"^(?P<width>\d+)x(?P<kh>\d+)(?:x(?P<kw>\d+))?(?:/(?P<stride>\d+))?(?:d(?P<dilation>\d+))?"
    r"(?:(?P<pool>p)|(?P<transposed>t))?$"
)


@dataclass(frozen=True)
class ConvSpec:
    """One conv of the 'stack' arch, written ``WIDTHxK[xKW][/STRIDE][dDILATION][p|t]``: K x K kernel (or K high,
    KW wide), ``p``: a 2x2 max-pool after it, ``t``: transposed, so that STRIDE *upsamples* (``32x2/2t`` turns each
    cell into a learned 2x2 block: a finer CAM map; docs/experiments.md, Part 7, measured its cost)."""

    width: int
    kernel: tuple[int, int]
    stride: int = 1
    dilation: int = 1
    pool: bool = False
    transposed: bool = False

    @classmethod
    def parse(cls, spec: str) -> ConvSpec:
        m = LAYER_SPEC.match(spec)
        if m is None:
            raise UserError(
                f"bad layer {spec!r}: write WIDTHxK[xKW][/STRIDE][dDILATION][p|t], e.g. 32x4/2, 64x3x1 or 32x2/2t"
            )
        kernel = (int(m["kh"]), int(m["kw"] or m["kh"]))
        stride, dilation = int(m["stride"] or 1), int(m["dilation"] or 1)
        return cls(int(m["width"]), kernel, stride, dilation, m["pool"] is not None, m["transposed"] is not None)


def map_stride(specs: list[ConvSpec]) -> int:
    """Pixels between neighbouring map cells: the strides and pools down, the transposed convs' strides up."""
    down = math.prod(s.stride * (2 if s.pool else 1) for s in specs if not s.transposed)
    return down // math.prod(s.stride for s in specs if s.transposed)


# Our network (docs/experiments.md has the search): five convs, batch norm and ReLU after each, whose last one is
# the CAM layer, a 25x25 map (stride 4). Strided convs have even kernels, so every map cell is centred on the pixels
# it sees (odd kernels shifted the map 1.5-2 pixels up-left). Receptive field 14 pixels wide and 22 high: about a
# digit's shape, so a map cell fires on the digit it lies on and little beside it. With ``local_gate`` (the default)
# each cell is also gated by its own 4x4 pixels, which keeps the cells beside a thin stroke dark (model.py).
FINE = ("24x4/2", "24x3", "48x4/2", "64x3x1", "64x1")


@dataclass
class ModelConfig:
    """The network: a conv stack, then conv -> global average pooling -> bias-free linear -> softmax."""

    arch: str = _opt(
        "stack", "'stack' (ours: see layers) or 'lenet' (the reference: conv5x5x32, pool, conv5x5x64, pool)"
    )
    layers: tuple[str, ...] = _opt(
        FINE,
        "'stack' arch: one WIDTHxK[xKW][/STRIDE][dDILATION][p|t] per conv (p: 2x2 max-pool, t: transposed, "
        "upsampling by STRIDE), e.g. 24x4/2 64x3x1 32x2/2t",
    )
    batch_norm: bool = _opt(True, "batch norm after each conv of the 'stack' arch")
    local_gate: bool = _opt(
        True,
        "'stack' arch: multiply each CAM channel by a gate in (0, 1) read from its cell's own pixels alone (a conv "
        "whose kernel and stride are the map's stride), so a cell whose receptive field only grazes a stroke can "
        "stay dark (docs/experiments.md, Part 7)",
    )
    gate_stride: int = _opt(
        0,
        "local gate: pixels between the gated map's cells; 0 is the stack's own stride, a divisor of it copies each "
        "stack cell onto finer cells, each gated by its own pixels",
    )
    ink_gate: bool = _opt(False, "the local gate's form: tanh(ReLU(conv)) of the cell's pixels, 0 where they are blank")
    head: str = _opt(
        "softmax",
        "'softmax' (with K digits per image its target is 1/K on each digit's class) or 'sigmoid' (each class "
        "present or not)",
    )
    precision: str = _opt(
        "mixed_bfloat16",
        "'mixed_bfloat16': convs in bfloat16; weights, logits, probabilities and maps in float32 (faster where the "
        "CPU computes bfloat16 natively, perhaps slower where it does not: then use 'float32'; docs/experiments.md)",
    )


@dataclass
class TrainConfig:
    """Optimisation, checkpoints and the heatmap panel."""

    steps: int = _opt(
        17_968,
        "optimizer steps in the whole run (23 epochs of 50k images at batch 64, the first 20 on the small canvas)",
    )
    batch_size: int = _opt(
        64, "images per step (64: about as many images/s as 128 on a small CPU, twice the updates; docs/experiments.md)"
    )
    optimizer: str = _opt("adam", "'sgd' (the reference's) or 'adam'")
    lr: float = _opt(3e-3, "peak learning rate")
    schedule: str = _opt("cosine", "'constant' or 'cosine' (linear warm-up, then cosine decay to 0)")
    warmup_steps: int = _opt(400, "linear warm-up steps of the cosine schedule")
    cam_gauge: str = _opt(
        "min",
        "softmax head: the per-channel constant taken out of the CAM weights w_k^c after every step, which changes "
        "no prediction, only the CAM (and so the map --map-entropy sharpens): 'min' (each channel's smallest class "
        "weight 0, so every weight >= 0 and a map only adds evidence), 'mean' (zero mean over classes: the part "
        "every class shares out of each CAM), 'none'",
    )
    map_entropy: float = _opt(
        0.01,
        "weight of the entropy of the true class's CAM in the loss (0: off): asks for a map on the cells that see the "
        "digit best rather than on every cell that sees a stroke; labels only (train/map_terms.py)",
    )
    gate_spread: float = _opt(
        0.1,
        "weight of the local gate's spread in the loss (0: off): each channel's mean gate over the map's cells over "
        "its largest, so a gate open on every cell costs 1 and one open only where its channel's part of a digit "
        "lies costs little; labels only (train/map_terms.py)",
    )
    label_smoothing: float = _opt(
        0.0,
        "the cross-entropy's targets: 1 - e on the true class and e / classes on each (Szegedy et al. 2016, "
        "section 7), so the logits are not pushed apart without end (0: off)",
    )
    seed: int = _opt(0, "seeds the weights and the training data order and clutter")
    random_labels: bool = _opt(
        False,
        "train on the training digits' labels permuted at random (fixed by the seed): the data randomization test "
        "of Adebayo et al. 2018, whose maps must differ from a real model's",
    )
    heatmap_every: int = _opt(2246, "steps between heatmap snapshots and validation (8 per run)")
    checkpoint_every: int = _opt(2246, "steps between checkpoints")
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
        """A config from (part of) its dict; a missing field takes its default."""
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise UserError(f"unknown config sections: {sorted(unknown)}")
        return cls(
            preset=d.get("preset", "default"),
            **{name: _section(kind, d.get(name, {})) for name, kind in SECTIONS.items()},
        )

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        """The config a run saved. A config.json written by an older version still rebuilds its run: a field that
        did not exist yet takes the value that meant "off" (:data:`ADDED_LATER`), a renamed one its new name and
        value (:data:`RENAMED`), and a retired field is dropped when it had no effect (:data:`RETIRED`). A run that
        depended on a retired option is refused, naming it."""
        d = json.loads(Path(path).read_text())
        for section, fields in RENAMED.items():
            values = d.get(section, {})
            for old, (new, convert) in fields.items():
                if old in values:
                    values[new] = convert(values.pop(old))
        for section, fields in ADDED_LATER.items():
            d.setdefault(section, {})
            for name, off in fields.items():
                d[section].setdefault(name, off)
        for section, fields in RETIRED.items():
            values = d.get(section, {})
            for name, had_no_effect in fields.items():
                if name in values and not had_no_effect(values[name], d):
                    raise UserError(
                        f"{path}: made with {section}.{name}, an option this version no longer has; "
                        f"`git checkout {RETIRED_AT}` rebuilds that run (see docs/experiments.md)"
                    )
            for name in set(fields) - {"arch"}:  # arch is a current field: kept
                values.pop(name, None)
        return cls.from_dict(d)


def _section(kind, values: dict):
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - names
    if unknown:
        raise UserError(f"unknown {kind.__name__} fields: {sorted(unknown)}")
    # JSON has no tuples; restore them so a loaded config equals the saved one.
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return kind(**fixed)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}

# Fields added after runs were already saved, with the value that reproduces those runs (the feature off).
ADDED_LATER = {
    "data": {"hide_patch": 0, "hide_epochs": 0, "small_canvas": 0, "small_epochs": 0},
    "model": {"precision": "float32", "local_gate": False, "gate_stride": 0, "ink_gate": False},
    "train": {"cam_gauge": "none", "map_entropy": 0.0, "gate_spread": 0.0, "label_smoothing": 0.0},
}
# Fields renamed: the old name and a function of its value giving the new field's value.
RENAMED = {"train": {"center_logits": ("cam_gauge", lambda centred: "mean" if centred else "none")}}

# Options that only served one experiment and were removed; ``git checkout RETIRED_AT`` still has them. Each maps
# to a test of a saved config (the value, the whole dict): true where the option had no effect on that run.
RETIRED_AT = "e4652dd"
_NOT_FAST = lambda value, d: d["model"].get("arch") != "fast"  # noqa: E731 - options of the retired 'fast' arch
RETIRED = {
    "data": {"rotate": lambda value, d: value == 0, "rescale": lambda value, d: value == 0},
    "model": {
        "arch": lambda value, d: value != "fast",
        **dict.fromkeys(
            ["widths", "pool_first", "stem_stride", "stem_pool", "last_kernel", "quarter_convs"], _NOT_FAST
        ),
    },
    "train": {"weight_decay": lambda value, d: value == 0},
}


# Presets: overrides of the defaults above, which are `default` (ours). `long` is ours trained longer on more
# digits, `two-digits` ours with two digits per image; `seed` is the reference repo exactly and `seed-adam` its
# network trained with our optimiser; `tiny` is for tests and smoke runs (seconds on a CPU). What the help lists:
PRESET_HELP = {
    "default": "ours: 25x25 CAM map, each cell gated by its own pixels, hide-and-seek, CAM weights >= 0 (min gauge), "
    "the map's entropy (0.01) and the gate's spread (0.1) in the loss, the first 20 of 23 epochs on 48x48 "
    "canvases, bfloat16, 17,968 steps (19 min on 2 cores)",
    "default-v6": "the default before its third whole epoch: the first 21 of 23 epochs on 48x48 (98.96% test "
    "accuracy, 97.74% top-1 localization, the 1s 89.7%)",
    "default-v5": "the default before its 21 small epochs: the first 15 of 19 epochs on 48x48, 14,840 steps (98.90% "
    "test accuracy, 97.70% top-1 localization, the 1s 88.4%)",
    "default-v4": "the default before 48x48 canvases: the first 6 of 13.5 epochs on 64x64, 10,560 steps (98.81% test "
    "accuracy, 96.66% top-1 localization, the 1s 86.8%)",
    "default-v3": "the default before progressive resizing and the gate's spread: 7900 steps on the whole canvas "
    "(98.60% test accuracy, 95.52% top-1 localization, the 1s 74.7%)",
    "sharp": "default-v3 with the ink gate (closed on blank pixels): the 1s boxed 86%, 96.35% top-1 localization, "
    "98.59% test accuracy; its CAM fails the model-randomization sanity check (the gate follows the ink)",
    "spread": "default-v3 with the gate's spread in the loss (0.1): the 1s boxed 85% on test, 96.35% top-1 "
    "localization, 98.67% test accuracy",
    "default-v2": "the default before the local gate (98.80% test accuracy, 93.62% top-1 localization, the 1s 61%)",
    "default-v1": "the default until issue 45: default-v2 without the map's entropy (98.54% test accuracy, 92.37% "
    "top-1 localization)",
    "long": "ours at batch 128 for 10k steps (2.5x the default's images) on 58k digits, float32",
    "two-digits": "ours on two digits of different classes per image, a sigmoid per class",
    "seed": "the TF1 reference exactly: LeNet, SGD lr 0.5, batch 256, 360 steps",
    "seed-adam": "the reference's LeNet trained with our optimiser (Adam lr 4.8e-2, cosine, bfloat16), 9600 steps",
    "random-labels": "the default's network trained on permuted labels for 1580 steps: the sanity checks' reference",
    "tiny": "default-v3's recipe at a tenth of its widths on a 40x40 canvas: seconds, for tests",
}
# What the presets measured before progressive resizing trained on: the whole canvas from the first step, without
# the gate's spread (which needs the sigmoid gate), default-v3's 7900 steps; and default-v4's and default-v5's small
# canvases and steps.
WHOLE_CANVAS = {"small_canvas": 0, "small_epochs": 0}
NO_SPREAD = {"gate_spread": 0.0}
TRAIN_V3 = {"steps": 7900, "heatmap_every": 790, "checkpoint_every": 790, **NO_SPREAD}
SMALL_V4 = {"small_canvas": 64, "small_epochs": 6}
TRAIN_V5 = {"steps": 14_840, "heatmap_every": 1855, "checkpoint_every": 1855}
OFF = {"data": {"hide_patch": 0, **WHOLE_CANVAS}, "train": {"cam_gauge": "none", "map_entropy": 0.0, **NO_SPREAD}}
LENET = {"arch": "lenet", "layers": (), "batch_norm": False, "precision": "float32", "local_gate": False}
UNGATED = {"local_gate": False, "ink_gate": False}  # the presets measured before the local gate existed
PRESETS: dict[str, dict[str, dict]] = {
    "default": {},
    # The ink gate: every class boxed >= 86% on test, at 0.14 points of validation accuracy, and its CAM fails the
    # cascading-randomization sanity check (a random network's maps keep the trained ones' ranks: the gate is 0
    # wherever the image is blank), so not the default (docs/experiments.md, Part 7).
    "sharp": {"data": WHOLE_CANVAS, "model": {"ink_gate": True}, "train": TRAIN_V3},
    # The gate's spread in the loss on default-v3: the 1s boxed 87% on validation (two seeds), default-v3 81%, at
    # 0.07 points of validation accuracy (the mean of two seeds on all 10k images) (docs/experiments.md, Part 7).
    "spread": {"data": WHOLE_CANVAS, "train": {**TRAIN_V3, "gate_spread": 0.1}},
    # The defaults before the third whole epoch, before 21 small epochs, before 48x48 canvases, before progressive
    # resizing and the gate's spread, before the local gate, and before the map's entropy joined the loss
    # (docs/experiments.md, Part 7): kept to reproduce their numbers, and for the frontier.
    "default-v6": {"data": {"small_epochs": 21}},
    "default-v5": {"data": {"small_epochs": 15}, "train": TRAIN_V5},
    "default-v4": {"data": SMALL_V4, "train": {"steps": 10_560, "heatmap_every": 1056, "checkpoint_every": 1056}},
    "default-v3": {"data": WHOLE_CANVAS, "train": TRAIN_V3},
    "default-v2": {"data": WHOLE_CANVAS, "model": UNGATED, "train": TRAIN_V3},
    "default-v1": {"data": WHOLE_CANVAS, "model": UNGATED, "train": {**TRAIN_V3, "map_entropy": 0.0}},
    # The default's network at batch 128 for 10k steps (26 epochs, hide-and-seek in the first 12), trained on 58k
    # digits: MNIST's 50k train and the first 8000 validation digits (validation scores the other 2000). It trains
    # in float32, the precision its results in docs/experiments.md were measured with.
    "long": {
        "data": {"hide_epochs": 12, "extra_train_digits": 8000, **WHOLE_CANVAS},
        "model": {"precision": "float32", **UNGATED},
        "train": {
            "map_entropy": 0.0,  # measured before the term existed
            **NO_SPREAD,
            "steps": 10_000,
            "batch_size": 128,
            "warmup_steps": 200,
            "heatmap_every": 1000,
            "checkpoint_every": 500,
        },
    },
    # Two digits of different classes per image, a sigmoid per class: the default's recipe otherwise. A sigmoid
    # sees each logit's level, so its CAM weights have no free gauge. A softmax over targets of 1/2 on each digit
    # (`--head softmax`, where the `min` gauge applies) named both digits and boxed them less often on validation
    # (docs/experiments.md).
    "two-digits": {
        "data": {"digits": 2, **WHOLE_CANVAS},
        "model": {"head": "sigmoid", **UNGATED},
        # no one true class's map, no gate; the 7900 steps it was measured with
        "train": {**TRAIN_V3, "cam_gauge": "none", "map_entropy": 0.0},
    },
    "seed": {
        "data": OFF["data"],
        "model": LENET,
        "train": {
            **OFF["train"],
            "steps": 360,  # what the reference trains in the default preset's wall time (docs/experiments.md)
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
    # Its peak learning rate was chosen on validation in 1200-step probes (docs/experiments.md): without batch norm
    # this network wants a far larger Adam step than ours (1e-3 reached 39% there, 4.8e-2 96%).
    "seed-adam": {
        "data": OFF["data"],
        "model": {**LENET, "precision": "mixed_bfloat16"},
        "train": {
            **NO_SPREAD,  # no gate to spread
            "lr": 4.8e-2,
            "steps": 9600,
            "warmup_steps": 400,
            "heatmap_every": 960,
            "checkpoint_every": 960,
        },
    },
    # Adebayo et al.'s data randomization: the default's network and recipe on labels permuted once, for two epochs.
    # It learns nothing that ties a digit to its class; `localize` compares its maps with the scored run's.
    # On the whole canvas: its two epochs would otherwise all be on the small one.
    "random-labels": {
        "data": WHOLE_CANVAS,
        "train": {"random_labels": True, "steps": 1580, "warmup_steps": 160, "heatmap_every": 790},
    },
    "tiny": {  # default-v3's recipe at a tenth of its widths
        "data": {"canvas": 40, "distractors": 2, "train_size": 512, "hide_epochs": 0, "test_size": 300, **WHOLE_CANVAS},
        "model": {"layers": ("4x4/2", "4x3", "8x4/2", "8x3x1", "8x1"), "precision": "float32"},
        "train": {
            **NO_SPREAD,  # default-v3's terms: the tests that need the gate's spread turn it on
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


# Presets no longer offered, with what replaced them: a command line that names one is told why.
RETIRED_PRESETS = {
    "quick": "the default now trains in less time than quick did, and is more accurate: use the default "
    "(docs/experiments.md, Part 7)",
}


def preset(name: str) -> RunConfig:
    """The config of preset ``name`` (see :data:`PRESETS`)."""
    if name in RETIRED_PRESETS:
        raise UserError(f"preset {name!r} is retired: {RETIRED_PRESETS[name]}")
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    d = {section: dict(values) for section, values in PRESETS[name].items()}
    return RunConfig.from_dict({"preset": name, **d})


# ------------------------------------------------------------------------------------------------- command line


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per config field (``--batch-size``, ``--canvas``…), defaulting to "not given"."""
    for section, kind in SECTIONS.items():
        group = parser.add_argument_group(f"{section} settings (override the preset)")
        for f in dataclasses.fields(kind):
            flag = "--" + f.name.replace("_", "-")
            help = f"{f.metadata['help']} (default: {f.default})"
            if f.type in ("bool", bool):
                group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help)
            elif f.name == "layers":
                group.add_argument(flag, dest=f.name, nargs="+", default=None, help=help)
            else:
                kind_of = {"int": int, "float": float, "str": str}[str(f.type)]
                group.add_argument(flag, dest=f.name, type=kind_of, default=None, help=help)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The preset named by ``args.preset`` with every flag the user gave applied on top."""
    return with_args(preset(args.preset), args)


def with_args(config: RunConfig, args: argparse.Namespace) -> RunConfig:
    """A copy of ``config`` with every flag the user gave applied on top, validated."""
    config = copy.deepcopy(config)
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
        (0 <= d.hide_patch <= d.canvas, f"hide_patch must be in 0..{d.canvas} pixels, got {d.hide_patch}"),
        (0 <= d.hide_prob < 1, f"hide_prob must be in [0, 1), got {d.hide_prob}"),
        (d.hide_epochs >= 0, f"hide_epochs must be >= 0, got {d.hide_epochs}"),
        (
            d.small_canvas == 0 or 28 * d.digits <= d.small_canvas < d.canvas,
            f"small_canvas must be 0 (off) or in {28 * d.digits}..{d.canvas - 1} pixels (it holds {d.digits} 28x28 "
            f"digit(s) and is smaller than the canvas), got {d.small_canvas}; --small-canvas 0 --small-epochs 0 "
            "trains on the whole canvas",
        ),
        (
            (d.small_canvas > 0) == (d.small_epochs > 0),
            f"small_canvas ({d.small_canvas}) and small_epochs ({d.small_epochs}) go together: give both, or "
            "--small-canvas 0 --small-epochs 0 for the whole canvas",
        ),
        (
            d.hide_patch <= (d.small_canvas or d.canvas),
            f"hide_patch ({d.hide_patch}) must fit the small canvas ({d.small_canvas} pixels)",
        ),
        (
            0 <= d.test_size <= SPLIT_SIZES["test"],
            f"test_size must be in 0..{SPLIT_SIZES['test']} (0: the whole split), got {d.test_size}",
        ),
        (
            0 <= d.extra_train_digits < SPLIT_SIZES["val"],
            f"extra_train_digits must be in 0..{SPLIT_SIZES['val'] - 1} (some validation digits must stay held "
            f"out), got {d.extra_train_digits}",
        ),
        (m.head in ("softmax", "sigmoid"), f"head must be 'softmax' or 'sigmoid', got {m.head!r}"),
        (m.arch in ("stack", "lenet"), f"arch must be 'stack' or 'lenet', got {m.arch!r}"),
        (
            m.precision in ("float32", "mixed_bfloat16"),
            f"precision must be 'float32' or 'mixed_bfloat16', got {m.precision!r}",
        ),
        (m.arch != "stack" or len(m.layers) > 0, "the 'stack' arch needs --layers"),
        (m.arch != "lenet" or not m.layers, "--layers is for the 'stack' arch; 'lenet' is a fixed network"),
        (m.arch == "stack" or not m.local_gate, "--local-gate is for the 'stack' arch; add --no-local-gate"),
        (m.gate_stride >= 0, f"gate_stride must be >= 0 (0: the map's own stride), got {m.gate_stride}"),
        (t.cam_gauge in ("none", "mean", "min"), f"cam_gauge must be 'none', 'mean' or 'min', got {t.cam_gauge!r}"),
        (
            t.cam_gauge == "none" or m.head == "softmax",
            "cam_gauge needs the softmax head: a sigmoid per class sees every logit's level (--cam-gauge none)",
        ),
        (t.map_entropy >= 0, f"map_entropy must be >= 0, got {t.map_entropy}"),
        (0 <= t.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {t.label_smoothing}"),
        (
            t.map_entropy == 0 or (d.digits == 1 and m.head == "softmax"),
            f"map_entropy ({t.map_entropy:g}) needs one digit per image and the softmax head: it sharpens the map of "
            "the one true class; add --map-entropy 0 (as the two-digits preset does)",
        ),
        (t.gate_spread >= 0, f"gate_spread must be >= 0, got {t.gate_spread}"),
        (
            t.gate_spread == 0 or (m.local_gate and not m.ink_gate),
            f"gate_spread ({t.gate_spread:g}) acts on the sigmoid local gate: add --local-gate and no --ink-gate, "
            "or --gate-spread 0",
        ),
        (t.optimizer in ("sgd", "adam"), f"optimizer must be 'sgd' or 'adam', got {t.optimizer!r}"),
        (t.schedule in ("constant", "cosine"), f"schedule must be 'constant' or 'cosine', got {t.schedule!r}"),
        (t.steps > 0 and t.batch_size > 0, "steps and batch_size must be positive"),
        (t.heatmap_every > 0 and t.checkpoint_every > 0, "heatmap_every and checkpoint_every must be positive"),
        (t.keep_checkpoints > 0, "keep_checkpoints must be positive"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(f"bad config: {message}")
    specs = [ConvSpec.parse(spec) for spec in m.layers]  # raises, naming the bad layer
    if m.gate_stride and (not m.local_gate or map_stride(specs) % m.gate_stride):
        raise UserError(
            f"bad config: gate_stride {m.gate_stride} needs --local-gate and must divide the stack's map stride "
            f"({map_stride(specs) if specs else 'none'} pixels)"
        )


def load_run(run_dir: Path) -> RunConfig:
    """The settings a training run saved in its folder; a folder that is not a run is an error naming the command
    that makes one."""
    path = RunFolder(run_dir).config
    if not Path(run_dir).is_dir():
        raise DataError(f"{run_dir}: no such run folder; train one with `make train`")
    if not path.exists():
        raise DataError(f"{path}: missing, so {run_dir} is not a training run folder (made by `make train`)")
    return RunConfig.load(path)
