"""The results folder of ``python -m cam_mnist explain``, written as the images are explained, so that any number of
images runs in flat memory and a second run of the same command skips what is already there.

``<out>/explain.json``: the settings and the list of images, in order; ``<out>/maps_<method>.npy``: (N, K, H, W)
float16 maps in [0, 1], image i's K explained classes at row i (``np.load(path, mmap_mode="r")`` reads them without
loading the whole file); ``<out>/results.jsonl``: one line per image explained (its classes, probabilities, boxes,
or its error). A chunk's maps are written and flushed before its lines, so a killed run leaves no line whose maps
are missing, and the next run redoes only what has no line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from cam_mnist.core.atomic import atomic_write_text
from cam_mnist.core.errors import UserError

SETTINGS, RESULTS = "explain.json", "results.jsonl"


class Store:
    """The results of one ``explain`` command over ``images`` with ``settings`` (model, methods, classes, layer,
    fitting), in ``folder``; opening it again with the same settings and images resumes it."""

    def __init__(self, folder: Path, settings: dict, images: list[str], methods: list[str], shape: tuple):
        self.folder, self.methods = Path(folder), methods
        wanted = {"settings": settings, "images": images, "maps_shape": [len(images), *shape]}
        path = self.folder / SETTINGS
        if path.exists():
            saved = json.loads(path.read_text())
            if saved != wanted:
                differs = [key for key in wanted if saved.get(key) != wanted[key]]
                raise UserError(
                    f"{self.folder} holds an explain run with other {' and '.join(differs)}: give another --out, or "
                    f"delete that folder to start again (nothing in it was changed)"
                )
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            for method in methods:  # created first: a settings file always has its arrays beside it
                np.lib.format.open_memmap(self._maps_path(method), "w+", np.float16, (len(images), *shape)).flush()
            atomic_write_text(path, json.dumps(wanted, indent=2) + "\n")
        self.count = len(images)
        self.records = self._read_results()

    def _maps_path(self, method: str) -> Path:
        return self.folder / f"maps_{method}.npy"

    def _read_results(self) -> dict[int, dict]:
        """The lines written so far, by image index; a line cut short by a kill is dropped from the file."""
        path = self.folder / RESULTS
        if not path.exists():
            path.touch()
            return {}
        records, good = {}, []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            records[record["index"]] = record
            good.append(line)
        atomic_write_text(path, "".join(f"{line}\n" for line in good))
        return records

    def todo(self) -> list[int]:
        """The indices of the images not explained yet, in order."""
        return [i for i in range(self.count) if i not in self.records]

    def write(self, records: list[dict], maps: dict[str, np.ndarray]) -> None:
        """Store one chunk: ``maps[method]`` (n, K, H, W) of the records' images (each record has its ``index``),
        flushed to disk before the records' lines are appended."""
        index = [r["index"] for r in records if "error" not in r]
        for method, values in maps.items():
            # Mapped for this chunk only: the pages of a mapping held open count as the process's memory, so one
            # kept for the whole run would grow with the images written (10k maps of 100x100: 200 MB).
            stored = np.load(self._maps_path(method), mmap_mode="r+")
            stored[index] = values.astype(np.float16)
            stored.flush()
            del stored
        with open(self.folder / RESULTS, "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())
        self.records.update((r["index"], r) for r in records)
