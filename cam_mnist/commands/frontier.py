"""``python -m cam_mnist frontier``: validation accuracy and CAM localization against minutes of training, one line
per run, so designs are compared by what each buys for the same CPU time (what ``docs/frontier.png`` shows).

Reads each run's ``metrics.csv`` (written at every heatmap step on the validation images, see
:mod:`cam_mnist.train.trainer`) and ``config.json``; writes the plot and a CSV of every run's newest row.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from cam_mnist.commands.common import command_parser
from cam_mnist.config import load_run
from cam_mnist.core.errors import DataError
from cam_mnist.core.runs import RunFolder
from cam_mnist.reports import evaluate

# The targets a design is read against (issue 45: docs/experiments.md, Part 7), drawn as dashed lines.
TARGETS = {"val_accuracy": 0.99, "val_loc_tau": 0.95, "val_loc_worst": 0.85}
PANELS = [  # (metrics.csv column, title, y range: the first steps of every run lie below it)
    ("val_accuracy", "validation accuracy", (0.9, 1.0)),
    ("val_loc_tau", "CAM top-1 localization, tau chosen on validation", (0.5, 1.0)),
    ("val_loc_worst", "the same, of the class boxed least often", (0.0, 1.0)),
    ("val_loc_20", "CAM top-1 localization at 20% (CAM paper)", (0.0, 1.0)),
]
TRADE = ("val_accuracy", "val_loc_tau")  # the last panel: each run's newest accuracy against its localization
FIELDS = [
    "run", "design", "step", "minutes", "val_accuracy", "val_loc_tau", "val_tau", "val_loc_worst", "val_loc_20",
    "val_peak_in_box",
]  # fmt: skip


def design(config) -> str:
    """A run's network in one line: its layer specs, or "lenet" for the reference's fixed network, the local gate
    where it has one (its form, its stride where finer than the stack's), the weights of the map's entropy,
    of the gate's spread and of label smoothing where nonzero, and the small canvas of its first epochs where it has
    one."""
    m = config.model
    network = " ".join(m.layers) if m.arch == "stack" else m.arch
    if m.local_gate:
        network += " + ink gate" if m.ink_gate else " + gate"
        network += f" every {m.gate_stride} px" if m.gate_stride else ""
    network += f" + entropy {config.train.map_entropy:g}" if config.train.map_entropy else ""
    network += f" + gate spread {config.train.gate_spread:g}" if config.train.gate_spread else ""
    network += f" + label smoothing {config.train.label_smoothing:g}" if config.train.label_smoothing else ""
    d = config.data
    return network + (f" + {d.small_epochs} epochs at {d.small_canvas} px" if d.small_canvas else "")


def run(args) -> None:
    from cam_mnist.viz import plotting

    series, table = {}, []
    for run_dir in map(Path, args.run_dir):
        config = load_run(run_dir)
        rows = [r for _, r in sorted(evaluate.read_rows(RunFolder(run_dir).metrics).items()) if r.get("val_loc_tau")]
        if not rows:
            raise DataError(f"{run_dir}: metrics.csv has no localization rows; train it with `make train`")
        minutes = [float(r["elapsed_s"]) / 60 for r in rows]
        # Runs made before a column existed (val_loc_worst) are left out of its panel.
        series[run_dir.name] = {k: (minutes, [float(r[k]) for r in rows]) for k, *_ in PANELS if rows[-1].get(k)}
        table.append(
            {"run": run_dir.name, "design": design(config), "minutes": f"{minutes[-1]:.1f}"}
            | {k: rows[-1][k] for k in FIELDS if k in rows[-1]}
        )
    out = Path(args.out)
    plotting.frontier(out, series, PANELS, TARGETS, "minutes of training", TRADE)
    text = io.StringIO()
    writer = csv.DictWriter(text, FIELDS, lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(table)
    out.with_suffix(".csv").write_text(text.getvalue())
    print(text.getvalue() + f"-> {out}, {out.with_suffix('.csv')}")


def add_parser(commands) -> None:
    p = command_parser(
        commands,
        "frontier",
        "validation accuracy and localization against training minutes, for several runs",
        ["--run-dir out/exp-a --run-dir out/exp-b --out docs/frontier.png"],
    )
    p.add_argument("--run-dir", action="append", required=True, help="a training run (repeat for each design)")
    p.add_argument("--out", default="out/frontier.png", help="the plot; its data goes beside it as .csv")
    p.set_defaults(func=run)
