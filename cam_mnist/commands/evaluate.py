"""``python -m cam_mnist eval``: every checkpoint of a run scored (table, plots, confusion matrix, robustness), and
several runs compared."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cam_mnist.commands.common import check_scoring, command_parser
from cam_mnist.config import load_run
from cam_mnist.core.lock import writing
from cam_mnist.core.runs import OUT, RunFolder, run_dir_or_latest
from cam_mnist.core.tables import markdown_table
from cam_mnist.reports import evaluate
from cam_mnist.reports.localize import localize


def run(args) -> None:
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
    columns = ["step", "test_accuracy", "test_loss", *evaluate.EVAL_COLUMNS]
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
        print(localize(run_dir, args.data_dir, log=lambda message: print(message, flush=True))["table"])
    return summary


def _compare(run_dirs: list[Path], args) -> None:
    """Accuracy against wall time for several runs in one plot: which design wins for a given CPU budget."""
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
        "training wall time (minutes)",
        "held-out test accuracy",
        "accuracy per wall time",
        hlines={"TF1 reference, reported (leaky test)": evaluate.REFERENCE_ACCURACY, "chance": 0.1},
        ylim=(0.0, 1.0),  # the whole range: a run near chance (the seed preset at 20 minutes) must stay visible
    )
    print(f"comparison plot -> {path}")


def add_parser(commands) -> None:
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
    p.set_defaults(func=run, check=check_scoring)
