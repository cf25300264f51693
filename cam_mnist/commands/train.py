"""``python -m cam_mnist train``: a new run of a preset and flags, or the resumption of a run's folder."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from tqdm import tqdm

from cam_mnist import config as cfg
from cam_mnist.commands.common import EXIT_STOPPED, command_parser
from cam_mnist.core.errors import UserError
from cam_mnist.core.lock import check_free, writing
from cam_mnist.core.runs import OUT, RunFolder, latest_run, mark_latest
from cam_mnist.data.splits import training_data
from cam_mnist.train.distribute import STRATEGIES


def _given_overrides(args) -> dict:
    return {k: v for k, v in vars(args).items() if v is not None and k in _config_field_names()}


def _config_field_names() -> set[str]:
    return {f.name for kind in cfg.SECTIONS.values() for f in dataclasses.fields(kind)}


def resolve_run(args) -> tuple[cfg.RunConfig, Path]:
    """New run: the preset plus flags, in a fresh folder. Existing folder: its saved config (flags must agree)."""
    run_dir = Path(args.run_dir) if args.run_dir else None
    if args.resume and run_dir is None:
        run_dir = latest_run()
    if run_dir is not None and RunFolder(run_dir).config.exists():
        saved = cfg.RunConfig.load(RunFolder(run_dir).config)
        # The flags on top of the saved config, not of its preset: a preset may have changed or been retired since.
        wanted = cfg.with_args(saved, args)
        flat_saved, flat_wanted = _flatten(saved), _flatten(wanted)
        clashes = [k for k in _given_overrides(args) if flat_saved[k] != flat_wanted[k]]
        if clashes:
            raise UserError(
                f"{run_dir} was started with other settings ({', '.join(clashes)}); "
                f"resume without those flags or choose a new --run-dir"
            )
        return saved, run_dir
    config = cfg.config_from_args(args)
    if run_dir is None:
        run_dir = OUT / f"{config.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    return config, run_dir


def _flatten(config: cfg.RunConfig) -> dict:
    return {k: v for section in ("data", "model", "train") for k, v in config.to_dict()[section].items()}


# What can be checked without TensorFlow is checked before its import (about 4 s of CPU): a folder that is not a
# run, a missing checkpoint or data file, clashing flags, a folder that cannot be written are answered at once.
# main runs a command's check before the command, which relies on it (the library checks again where it works).
def check(args) -> None:
    _, run_dir = resolve_run(args)
    check_free(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)  # the first write: a read-only or full disk says so now
    args.run_dir = str(run_dir)  # the folder is named once: a new run's timestamp is not taken twice


def run(args) -> int:
    from cam_mnist.train.trainer import Trainer

    config, run_dir = resolve_run(args)  # the folder check_train made
    with writing(run_dir, "train"):  # before anything is written: a second trainer on this folder is refused
        config.save(RunFolder(run_dir).config)
        mark_latest(run_dir)
        with open(RunFolder(run_dir).log, "a") as log_file:

            def log(message: str) -> None:
                line = f"{time.strftime('%H:%M:%S')} {message}"
                tqdm.write(line)
                log_file.write(line + "\n")
                log_file.flush()

            log(
                f"run {run_dir} preset={config.preset} steps={config.train.steps} batch={config.train.batch_size} "
                f"strategy={args.strategy}" + (f" devices={','.join(args.devices)}" if args.devices else "")
            )
            strategy = {"strategy": args.strategy, "devices": args.devices}
            trainer = Trainer(config, run_dir, training_data(config, Path(args.data_dir)), log=log, **strategy)
            summary = trainer.run(progress=not args.quiet)
    if "interrupted_at" in summary:
        return EXIT_STOPPED
    print(f"heatmaps: {run_dir / 'heatmaps'}  page: {run_dir / 'index.html'}  model: {run_dir / 'model.keras'}")
    return 0


def add_parser(commands) -> None:
    p = command_parser(
        commands,
        "train",
        "train the CAM network, writing heatmaps and checkpoints to out/<run>",
        ["", "--preset seed", "--preset tiny --run-dir out/try", "--resume        # continue the newest run"],
    )
    p.add_argument(
        "--preset",
        default="default",
        # no argparse choices: a retired preset is answered with what replaced it (config.RETIRED_PRESETS)
        # argparse formats help with %: a preset's "98.80% test" must be escaped
        help="named settings: "
        + "; ".join(f"{name}: {text}" for name, text in cfg.PRESET_HELP.items()).replace("%", "%%"),
    )
    p.add_argument("--run-dir", help="run folder; if it has checkpoints the run resumes (default: out/<preset>-<time>)")
    p.add_argument("--resume", action="store_true", help="resume the newest run (out/latest)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--strategy",
        default="default",
        choices=STRATEGIES,
        help="tf.distribute: 'default' (one device), 'mirrored' (every local GPU, or --devices), 'multiworker' "
        "(the cluster of TF_CONFIG); results match one device within float rounding",
    )
    p.add_argument(
        "--devices", nargs="+", default=(), help="mirrored: the devices, e.g. GPU:0 GPU:1 (CPU:0 CPU:1 splits the CPU)"
    )
    cfg.add_config_arguments(p)
    p.set_defaults(func=run, check=check)
