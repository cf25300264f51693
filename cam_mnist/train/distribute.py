"""``tf.distribute`` for training: one step function for one device, all local GPUs, or several machines.

The training step (:mod:`cam_mnist.train.trainer`) runs under a strategy. With ``default`` that is TensorFlow's own
no-op strategy, and the step is exactly the single-device one. With ``mirrored`` (``tf.distribute.MirroredStrategy``:
all local GPUs, or the ``devices`` named) and ``multiworker`` (``MultiWorkerMirroredStrategy``, its cluster read
from ``TF_CONFIG``), each replica takes its slice of the global batch, and:

- the loss is each replica's sum of per-example losses divided by the *global* batch size, so that the gradients
  Keras' optimizer sums over replicas are those of the global batch's mean loss;
- batch normalisation is synchronised (``BatchNormalization(synchronized=True)``): the batch statistics are those
  of the global batch, as on one device. Keras computes them as E[x^2] - E[x]^2, which rounds differently from
  the two-pass ``tf.nn.moments`` of unsynchronised batch norm: ``mirrored`` on one device and on two agree to
  float rounding (1e-6 after a few steps), while ``mirrored`` and ``default`` drift apart by up to 1e-3 in
  a few steps, as two float orders of the same sums do in any network trained with Adam;
- every worker composes only its own replicas' rows of the global batch (the data is a pure function of seed and
  step, so the rows need no coordination), and no input pipeline has to be shared.
"""

from __future__ import annotations

import json
import os
import re

from cam_mnist.core.errors import UserError

STRATEGIES = ("default", "mirrored", "multiworker")
_CPU = re.compile(r"^(?:/device:|/)?cpu:(\d+)$", re.IGNORECASE)


def make_strategy(name: str = "default", devices: list[str] | tuple[str, ...] = ()):
    """The ``tf.distribute.Strategy`` called ``name``. Create it before any other TensorFlow work of the process:
    TensorFlow configures the devices and collective ops of a strategy at start-up.

    ``devices`` (mirrored only): the devices to replicate over, e.g. ``GPU:0 GPU:1``; default: every local GPU (or
    the CPU). Naming more CPUs than the machine shows (``CPU:0 CPU:1``) splits the CPU into that many logical
    devices, which runs the distributed code path on a laptop or CI machine."""
    import tensorflow as tf

    if name not in STRATEGIES:
        raise UserError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if devices and name != "mirrored":
        raise UserError(f"--devices is for --strategy mirrored, not {name}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise UserError("--strategy multiworker reads its cluster from TF_CONFIG, which is not set (see README)")
        try:
            json.loads(os.environ["TF_CONFIG"])
        except ValueError as e:
            raise UserError(f"TF_CONFIG is not valid JSON: {e}") from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    cpus = [int(m.group(1)) for d in devices if (m := _CPU.match(d))]
    if cpus:
        _split_cpu(max(cpus) + 1)
    return tf.distribute.MirroredStrategy(list(devices) or None)


def _split_cpu(count: int) -> None:
    """Make ``count`` logical CPU devices out of the first physical one (possible only before TF's runtime starts)."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    try:  # (asking for the logical devices first would start the runtime)
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError as e:  # started already: fine if an earlier call made enough devices
        if len(tf.config.list_logical_devices("CPU")) < count:
            raise UserError(f"cannot split the CPU into {count} devices after TensorFlow has started: {e}") from None


def local_rows(strategy, batch_size: int) -> slice:
    """The rows of the global batch that this process's replicas take: all of it on one machine, this worker's own
    shard under ``multiworker`` (so no worker generates another's images)."""
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return slice(0, batch_size)
    ids = strategy.experimental_local_results(
        strategy.experimental_distribute_values_from_function(lambda context: context.replica_id_in_sync_group)
    )
    ids = [int(i) for i in ids]
    per = batch_size // replicas
    return slice(min(ids) * per, (max(ids) + 1) * per)


def replica_batches(strategy, arrays: tuple, batch_size: int, offset: int = 0):
    """``arrays`` (each holding rows ``offset``... of the global batch: :func:`local_rows`) as per-replica slices
    for ``strategy.run``; on one replica, the arrays themselves."""
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return arrays
    per = batch_size // replicas  # the Trainer checked that it divides

    def slice_for(context):  # called once per local replica; the replica id counts over the whole cluster
        lo = context.replica_id_in_sync_group * per - offset
        return tuple(a[lo : lo + per] for a in arrays)

    return strategy.experimental_distribute_values_from_function(slice_for)
