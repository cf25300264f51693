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

    WRITE_EVERY = 100  # queued steps of a tag that are written at once

    def __init__(self, folder: Path):
        import tensorflow as tf

        self.folder = Path(folder)
        self.written = {tag: max(step for step, _ in values) for tag, values in read_events(self.folder).items()}
        self._writer = tf.summary.create_file_writer(str(self.folder))
        self._pending: dict[str, list[tuple[int, float]]] = defaultdict(list)  # scalars not yet in the file
        # Queued and written by one compiled call per set of tags: training logs two scalars every step, and a
        # call per step costs about 0.4 ms even compiled, 1% of a 48 px training step.
        self._write_series = tf.function(self._series_graph, reduce_retracing=True)

    def _new(self, tag: str, step: int) -> bool:
        return step > self.written.get(tag, -1)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Queue ``values`` at ``step``; they reach the file within :data:`WRITE_EVERY` queued steps, or at
        :meth:`flush`."""
        for tag, v in values.items():
            if self._new(tag, step):
                self._pending[tag].append((step, float(v)))
        if max(map(len, self._pending.values()), default=0) >= self.WRITE_EVERY:
            self._write_pending()

    def _write_pending(self) -> None:
        import tensorflow as tf

        if self._pending:
            series = {
                tag: (tf.constant([s for s, _ in pairs], tf.int64), tf.constant([v for _, v in pairs], tf.float32))
                for tag, pairs in self._pending.items()
            }
            self._write_series(series)
            self._pending.clear()

    def _series_graph(self, series: dict) -> None:
        import tensorflow as tf

        with self._writer.as_default():
            for tag, (steps, values) in series.items():
                for i in tf.range(tf.size(steps)):  # a graph loop: one call writes the whole series
                    with tf.compat.v1.name_scope(None):  # the tag as given, not under the loop's scope ("while/")
                        tf.summary.scalar(tag, values[i], step=steps[i])

    def image(self, step: int, tag: str, rgb: np.ndarray) -> None:
        """One (H, W, 3) uint8 picture."""
        import tensorflow as tf

        if self._new(tag, step):
            with self._writer.as_default():
                tf.summary.image(tag, np.asarray(rgb, np.uint8)[None], step=step)

    def flush(self) -> None:
        """Everything queued, in the file now: TensorBoard shows it, and a kill after this loses none of it."""
        self._write_pending()
        self._writer.flush()

    def close(self) -> None:
        self._write_pending()
        self._writer.close()
