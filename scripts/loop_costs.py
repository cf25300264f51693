"""Where a training loop's wall time goes outside the compiled step: each call of the loop timed over a short run
of the default preset (all its steps on the 48 px canvas), then the counters printed.

    .venv/bin/python scripts/loop_costs.py 800      # docs/experiments.md, Part 7 (where a fresh clone's time goes)
"""

import collections
import sys
import tempfile
import time
from pathlib import Path

from cam_mnist import config
from cam_mnist.data.splits import training_data
from cam_mnist.train import trainer
from cam_mnist.train.summaries import EventLog

seconds, calls = collections.defaultdict(float), collections.Counter()


def timed(name, function):
    def call(*args, **kwargs):
        began = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds[name] += time.perf_counter() - began
            calls[name] += 1

    return call


def timed_batches(batches):
    def wrapped(self, start, rows):
        source = batches(self, start, rows)

        class Timed:
            def __next__(self):
                return timed("waiting for the next batch", next)(source)

        return Timed()

    return wrapped


steps = int(sys.argv[1]) if len(sys.argv) > 1 else 800
run = config.preset("default")
run.train.steps = run.train.heatmap_every = run.train.checkpoint_every = steps
trainer.Trainer._snapshot = timed("snapshot (validation, CAMs, panel)", trainer.Trainer._snapshot)
trainer.Trainer.batch = timed("composing a batch (any thread)", trainer.Trainer.batch)
trainer.Trainer.batches = timed_batches(trainer.Trainer.batches)
EventLog.scalars = timed("TensorBoard scalars", EventLog.scalars)
trainer.checkpoint.save = timed("checkpoint", trainer.checkpoint.save)
loop = trainer.Trainer(run, Path(tempfile.mkdtemp()), training_data(run), log=lambda message: None)
summary = loop.run(progress=False)
print(f"{steps} steps: {summary['train_seconds']} s in the compiled step, {summary['wall_seconds']} s of loop")
for name, total in seconds.items():
    print(f"  {name:38s} {total:7.2f} s  {calls[name]:5d} calls  {1000 * total / calls[name]:7.2f} ms each")
