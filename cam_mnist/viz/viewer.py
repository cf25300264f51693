"""``index.html``: the heatmap viewer of a run (or of a :class:`cam_mnist.train.callbacks.CAMCallback` folder).

One row per panel image and one slider for the step: moving it shows every image's maps at that step, with the
classes, their probabilities and the IoU of the map's box, and the validation numbers of that step above. The page
is one static file with its data inlined and every picture linked by a relative path, so it opens from the file
system (``file://``) without a server, and it is rewritten at every heatmap step, so a user can watch a run
from its first step.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from urllib.parse import quote

from cam_mnist.config import RunConfig
from cam_mnist.core.atomic import atomic_write_bytes
from cam_mnist.core.runs import RunFolder
from cam_mnist.core.tables import read_csv_rows

_SCRIPT = """
const data = JSON.parse(document.getElementById("data").textContent);
const slider = document.getElementById("slider"), play = document.getElementById("play");
function show(k) {
  document.getElementById("step").textContent = `step ${data.steps[k]} (${k + 1} of ${data.steps.length})`;
  document.getElementById("metrics").textContent = data.metrics[k];
  data.images.forEach((paths, i) => {
    document.getElementById(`img${i}`).src = paths[k];
    document.getElementById(`cap${i}`).textContent = data.captions[i][k];
  });
}
slider.oninput = () => show(+slider.value);
let timer = null;
play.onclick = () => {
  if (timer) { clearInterval(timer); timer = null; play.textContent = "play"; return; }
  play.textContent = "pause";
  timer = setInterval(() => { slider.value = (+slider.value + 1) % data.steps.length; show(+slider.value); }, 600);
};
show(+slider.value);
"""

_STYLE = (
    "body{font-family:sans-serif;margin:1em}td{vertical-align:top;padding:4px}"
    "#controls{position:sticky;top:0;background:#fff;padding:6px 0}#slider{width:60%}"
)


def drawn_steps(folder: Path) -> list[dict]:
    """The records :meth:`cam_mnist.viz.panel.Panel.snapshot` wrote in ``folder``, oldest step first."""
    records = []
    for path in sorted(Path(folder).glob("grid/step_*.json")):
        records.append(json.loads(path.read_text()))
    return records


def _caption(row: list[dict]) -> str:
    """'true 7 p=0.98 IoU 0.71 | pred 7 p=0.98 IoU 0.71' for one image at one step."""
    parts = []
    for tile in row:
        text = f"{tile['name']} {tile['class']} p={tile['p']:.2f}"
        parts.append(text if tile["iou"] is None else f"{text} IoU {tile['iou']:.2f}")
    return " | ".join(parts)


def write_index(
    page: Path,
    folder: Path,
    title: str,
    intro: str,
    metrics: dict[int, str] | None = None,
    links: dict[str, Path] | None = None,
) -> Path:
    """Write the viewer ``page`` for the heatmaps in ``folder`` (which must lie under the page's folder).
    ``metrics``: a line of text per step (validation numbers), shown above the pictures; ``links``: text -> a file
    under the page's folder, listed under the introduction."""
    page, folder = Path(page), Path(folder)
    records = drawn_steps(folder)
    metrics = metrics or {}
    count = max((len(r["images"]) for r in records), default=0)
    link = lambda p: quote(p.relative_to(page.parent).as_posix())  # noqa: E731
    data = {
        "steps": [r["step"] for r in records],
        "metrics": [f"{metrics.get(r['step'], '')} {r['caption']}; tau {r['tau']:.2f}".strip() for r in records],
        "images": [
            [link(folder / f"img_{i:02d}" / f"step_{r['step']:07d}.png") for r in records] for i in range(count)
        ],
        "captions": [[_caption(r["images"][i]) for r in records] for i in range(count)],
    }
    rows = []
    for i in range(count):
        gif = folder / f"img_{i:02d}" / "evolution.gif"
        animation = f"<br><a href='{link(gif)}'>animation</a>" if gif.exists() else ""
        rows.append(
            f"<tr><td>image {i}{animation}</td><td><img id='img{i}' src='{data['images'][i][-1]}' alt='image {i}'>"
            f"</td><td id='cap{i}'>{html.escape(data['captions'][i][-1])}</td></tr>"
        )
    last = len(records) - 1
    listed = " | ".join(f"<a href='{link(p)}'>{html.escape(text)}</a>" for text, p in (links or {}).items())
    inline = json.dumps(data).replace("</", "<\\/")  # nothing in the data can close the script element
    text = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p>"
        + (f"<p id='links'>{listed}</p>" if listed else "")
        + f"<div id='controls'><input id='slider' type='range' min='0' max='{max(last, 0)}' value='{max(last, 0)}'>"
        f" <button id='play'>play</button> <b id='step'></b><div id='metrics'></div></div>"
        f"<table>{''.join(rows)}</table>"
        f"<script id='data' type='application/json'>{inline}</script><script>{_SCRIPT}</script></body></html>"
    )
    atomic_write_bytes(page, text.encode())
    return page


def run_metrics(run_dir: Path) -> dict[int, str]:
    """metrics.csv of a training run as one line of validation numbers per step."""
    rows = read_csv_rows(RunFolder(run_dir).metrics)
    pct = lambda r, key: f"{float(r[key]):.2%}" if r.get(key) else "n/a"  # noqa: E731
    return {
        int(r["step"]): f"validation: accuracy {pct(r, 'val_accuracy')}, CAM top-1 localization "
        f"{pct(r, 'val_loc_tau')} at tau {r.get('val_tau') or 'n/a'} ({pct(r, 'val_loc_20')} at 20%), peak in box "
        f"{pct(r, 'val_peak_in_box')}."
        for r in rows
    }


def write_run_index(run_dir: Path, title: str | None = None, digits: int | None = None) -> Path:
    """``run_dir/index.html`` for a training run's ``heatmaps/``, linking the failures' gallery where ``localize``
    drew it. ``title``: by default the run's name and test accuracy; ``digits``: by default the run's config's."""
    run_dir, folder = Path(run_dir), RunFolder(run_dir)
    if title is None:
        summary = folder.summary
        accuracy = json.loads(summary.read_text()).get("test_accuracy") if summary.exists() else None
        title = run_dir.name + ("" if accuracy is None else f": test accuracy {accuracy:.2%}")
    if digits is None:
        digits = RunConfig.load(folder.config).data.digits
    shown = (
        "The CAM of the true class (left) and of the predicted class (right)"
        if digits == 1
        else f"The CAM of each of the {digits} true classes, left to right, each boxed against its own digit"
    )
    exact = " Validation accuracy: exact match of every digit." if digits > 1 else ""
    intro = (
        f"{shown} for a fixed panel of test images, as training goes; move the slider to change the step. White: "
        f"the digit's true box; magenta: the CAM's box at the threshold tau chosen on validation at that step (its "
        f"IoU in each caption).{exact}"
    )
    gallery = {
        f"failures: {text}": folder.eval / f"failures_{kind}.png"
        for kind, text in (("misclassified", "misclassified"), ("boxed_wrong", "right class, boxed wrong"))
    }
    links = {text: path for text, path in gallery.items() if path.exists()}
    return write_index(folder.index, folder.heatmaps, title, intro, run_metrics(run_dir), links)
