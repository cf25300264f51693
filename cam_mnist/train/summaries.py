"""TensorBoard event files (``tf.summary``) for a run or a callback: ``tensorboard --logdir out`` shows them.

A resumed run redoes the steps after its checkpoint with the same values (exact resume), and TensorBoard would
draw every step twice; :class:`EventLog` therefore reads what the folder already holds and writes, per tag, only
steps after the last one written there.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np


def read_events(folder: Path) -> dict[str, list[tuple[int, object]]]:
    """Every summary in the event files under ``folder``: tag -> [(step, value)] in the order written; a value is a
    float for a scalar and the encoded image bytes for an image. A file cut short by a kill is read up to the cut."""
    import tensorflow as tf

    found: dict[str, list] = defaultdict(list)
    for path in sorted(Path(folder).glob("**/events.out.tfevents.*")):
        try:
            for record in tf.data.TFRecordDataset(str(path)):
                event = tf.compat.v1.Event.FromString(record.numpy())
                for v in event.summary.value:
                    found[v.tag].append((int(event.step), _value(v)))
        except tf.errors.DataLossError:  # a truncated last record: everything before it is good
            pass
    return dict(found)


def _value(v):
    import tensorflow as tf

    array = tf.make_ndarray(v.tensor)
    if array.dtype == object:  # images: [width, height, png bytes...]
        return array[2]
    return float(array)


class EventLog:
    """Scalars and images written under ``folder``, skipping steps the folder already has for each tag."""

    def __init__(self, folder: Path):
        import tensorflow as tf

        self.folder = Path(folder)
        self.written = {tag: max(step for step, _ in values) for tag, values in read_events(self.folder).items()}
        self._writer = tf.summary.create_file_writer(str(self.folder))
        # Compiled, once per set of tags: training writes two scalars every step, and eagerly they cost 1.2 ms more
        # a step than this (1000 steps timed in a loop), about 2% of a 48 px training step.
        self._write_scalars = tf.function(self._scalars_graph)

    def _new(self, tag: str, step: int) -> bool:
        return step > self.written.get(tag, -1)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        import tensorflow as tf

        new = {tag: tf.constant(float(v), tf.float32) for tag, v in values.items() if self._new(tag, step)}
        if new:
            self._write_scalars(tf.constant(step, tf.int64), new)

    def _scalars_graph(self, step, values: dict) -> None:
        import tensorflow as tf

        with self._writer.as_default():
            for tag, value in values.items():
                tf.summary.scalar(tag, value, step=step)

    def image(self, step: int, tag: str, rgb: np.ndarray) -> None:
        """One (H, W, 3) uint8 picture."""
        import tensorflow as tf

        if self._new(tag, step):
            with self._writer.as_default():
                tf.summary.image(tag, np.asarray(rgb, np.uint8)[None], step=step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
