"""The failures, shown: the test images where the model or its CAM went most wrong, each drawn with the CAM of its
true and of its predicted class, the true box (white) and the map's box (magenta) -- insight into wrong predictions,
the first use the CAM paper gives its maps.

Two kinds, the worst first: images **misclassified** (the most confident mistakes), and images **classified right
but boxed wrong** (the lowest IoU of the CAM's box at the threshold chosen on validation). ``localize`` draws them
into ``eval/failures_misclassified.png`` and ``eval/failures_boxed_wrong.png`` and links them from the viewer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cam_mnist.core.boxes import IOU_CORRECT
from cam_mnist.core.runs import RunFolder

KINDS = {"misclassified": "misclassified: most confident mistakes first", "boxed_wrong": "right class, wrong box"}


def worst(labels: np.ndarray, probs: np.ndarray, ious: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """The indices of the ``k`` worst images of each kind: misclassified by falling probability of the class the
    model named; classified right but boxed wrong (IoU < 0.5 at tau) by rising IoU."""
    predicted = probs.argmax(1)
    wrong = np.flatnonzero(predicted != labels)
    boxed = np.flatnonzero((predicted == labels) & (ious < IOU_CORRECT))
    return {
        "misclassified": wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")][:k],
        "boxed_wrong": boxed[np.argsort(ious[boxed], kind="stable")][:k],
    }


def draw(model, split, record: dict, run_dir: Path, k: int) -> dict:
    """Draw the ``k`` worst of each kind among the images ``record`` scored (its ``probs`` and the CAM's
    ``cam_iou`` at tau); returns {kind: {"images": indices, "file": name}} and rewrites the run's viewer."""
    from cam_mnist.viz import plotting, viewer
    from cam_mnist.viz.panel import Panel

    cam = next(r for r in record["methods"] if r["method"] == "cam")
    tau, ious, probs = cam["calibrated_threshold"], record["cam_iou"], record["probs"]
    n = len(ious)
    out = {}
    for kind, index in worst(split.labels[:n], probs[:n], ious, k).items():
        name = f"failures_{kind}.png"
        if len(index):
            panel = Panel(
                model, split.float_images(index), split.labels[index], split.boxes[index], shown=split.images[index]
            )
            drawing = panel.draw(record["step"], tau, note=f"; {KINDS[kind]}, test images {', '.join(map(str, index))}")
            plotting.save_png(RunFolder(run_dir).eval / name, drawing.page)
        out[kind] = {"images": [int(i) for i in index], "file": name if len(index) else None}
    viewer.write_run_index(run_dir)
    return out
