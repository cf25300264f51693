"""Tables, written one way: Markdown for people, CSV for the metrics files (rewritten atomically)."""

from __future__ import annotations

import csv
from pathlib import Path

from cam_mnist.core.atomic import atomic_write_bytes


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table: one line per row, every value as ``str`` gives it."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def metrics_markdown(rows: list[dict], split_name: str, columns: list[tuple[str, str]]) -> str:
    """``localize``'s tables: one row per method (its twin named, if it has one), one column per (key, label) of
    ``columns``, each cell formatted by its metric (:func:`cell`)."""
    body = [
        [r["method"] + (f" (= {r['same_maps_as']})" if "same_maps_as" in r else "")]
        + [cell(key, r.get(key)) for key, _ in columns]
        for r in rows
    ]
    table = markdown_table(["method", *(label for _, label in columns)], body)
    return f"Localization on the held-out test split ({split_name}).\n\n{table}"


def cell(key: str, value) -> str:
    """A metric as the tables show it: percentages and seconds to 0.1, thresholds to 0.01, the rest to 4 places."""
    if value is None:
        return "–"  # a metric that does not apply (faithfulness of an ideal map)
    if not isinstance(value, float):
        return str(value)
    if key.endswith(("pct", "seconds")):
        return f"{value:.1f}"
    return f"{value:.2f}" if key.endswith("threshold") else f"{value:.4f}"


def read_csv_rows(path: Path) -> list[dict]:
    """The rows of a CSV file with a header, as dicts of strings; none where the file does not exist yet."""
    if not Path(path).exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def write_csv_rows(path: Path, fields: list[str], rows: list[dict]) -> None:
    """``rows`` under the header ``fields``, written atomically; a field a row lacks (written before the column
    existed) is left empty."""
    lines = [",".join(fields)] + [",".join(str(r.get(k, "")) for k in fields) for r in rows]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
