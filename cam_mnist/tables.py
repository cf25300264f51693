"""The tables of ``localize``: rows of metrics (one per method) as Markdown, each cell formatted by its metric."""

from __future__ import annotations


def markdown(rows: list[dict], split_name: str, columns: list[tuple[str, str]]) -> str:
    """One row per method (its twin named, if it has one), one column per (key, label) of ``columns``."""
    lines = [
        f"Localization on the held-out test split ({split_name}).",
        "",
        "| method | " + " | ".join(label for _, label in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for r in rows:
        name = r["method"] + (f" (= {r['same_maps_as']})" if "same_maps_as" in r else "")
        lines.append(f"| {name} | " + " | ".join(cell(key, r.get(key)) for key, _ in columns) + " |")
    return "\n".join(lines)


def cell(key: str, value) -> str:
    """A metric as the tables show it: percentages and seconds to 0.1, thresholds to 0.01, the rest to 4 places."""
    if value is None:
        return "–"  # a metric that does not apply (faithfulness of an ideal map)
    if not isinstance(value, float):
        return str(value)
    if key.endswith(("pct", "seconds")):
        return f"{value:.1f}"
    return f"{value:.2f}" if key.endswith("threshold") else f"{value:.4f}"
