"""Train the CAM network on cluttered MNIST, drawing the panel's CAMs as it learns; resume exactly after a kill.

A run lives in one folder: ``config.json`` (the resolved settings), ``train.log``, ``metrics.csv`` (validation
at every heatmap step), ``checkpoints/``, ``heatmaps/``, ``index.html`` (the viewer), ``tb/`` (TensorBoard), and at
the end ``model.keras`` and ``summary.json``. Running again on a folder with checkpoints resumes from the newest
valid one; because weights, optimizer state and the loss accumulator are checkpointed and the data is a pure
function of (seed, step), the resumed run ends with the same weights as an uninterrupted one (with op determinism
on, on the same machine).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cam_mnist.config import RunConfig, TrainConfig
from cam_mnist.core.atomic import atomic_write_bytes
from cam_mnist.core.cpu import native_bfloat16
from cam_mnist.core.errors import UserError
from cam_mnist.core.runs import RunFolder
from cam_mnist.core.tables import read_csv_rows, write_csv_rows
from cam_mnist.data.splits import TrainEpoch, TrainingData
from cam_mnist.model import FEATURES, GATE, LOGITS, NUM_CLASSES, batched, build_model, logits_model
from cam_mnist.scoring.cam_localization import cam_localization, validation_threshold
from cam_mnist.scoring.classification import multi_hot, predict_probs, score
from cam_mnist.train import checkpoint, distribute
from cam_mnist.train.map_terms import cam_entropy, gate_spread
from cam_mnist.train.summaries import EventLog
from cam_mnist.viz import panel, viewer

METRICS_FIELDS = [
    "step",
    "epoch",
    "train_loss",
    "val_accuracy",
    "val_loss",
    "val_loc_tau",  # CAM top-1 localization at the threshold tau that boxes the most validation digits
    "val_tau",
    "val_loc_worst",  # val_loc_tau of the class boxed least often
    "val_loc_20",  # CAM top-1 localization at the CAM paper's 20% of the map's maximum
    "val_peak_in_box",  # the map's maximum lies in the digit's box
    "lr",
    "elapsed_s",
    "images_per_s",
]


def make_optimizer(config: TrainConfig):
    import keras

    lr = config.lr
    if config.schedule == "cosine":  # linear warm-up to lr, then cosine decay to 0 at the last step
        lr = keras.optimizers.schedules.CosineDecay(
            0.0, max(config.steps - config.warmup_steps, 1), warmup_target=config.lr, warmup_steps=config.warmup_steps
        )
    return keras.optimizers.SGD(lr) if config.optimizer == "sgd" else keras.optimizers.Adam(lr)


def setup_tensorflow(seed: int, deterministic: bool) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)  # Python, numpy and TF seeds: the weights' initial values
    if deterministic:
        tf.config.experimental.enable_op_determinism()


class _StopFlag:
    """The first SIGINT (Ctrl-C) or SIGTERM (what ``docker stop``, Kubernetes and Slurm's preemption send) asks the
    loop to stop at the next step boundary, after a checkpoint; a second one aborts as the signal would have."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.stop, self.signal = False, None
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame):
        self.stop, self.signal = True, signal.Signals(signum).name
        self.restore()

    def restore(self):
        for s, previous in self._previous.items():
            signal.signal(s, previous)


class Trainer:
    """One run: model, optimizer, data and the files of ``run_dir``, on the devices of a ``tf.distribute``
    strategy (:mod:`cam_mnist.train.distribute`: ``default``, ``mirrored`` over ``devices``, or ``multiworker``)."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: Path,
        data: TrainingData,
        log=print,
        strategy: str = "default",
        devices: tuple[str, ...] = (),
    ):
        import keras
        import tensorflow as tf

        if keras.backend.backend() != "tensorflow":
            raise UserError(
                f"training runs on TensorFlow (tf.data, tf.distribute), not KERAS_BACKEND={keras.backend.backend()!r}:"
                " train with KERAS_BACKEND=tensorflow; the maps, eval and localize run on every backend"
            )
        self.config, self.run_dir, self.log = config, Path(run_dir), log
        self.folder = RunFolder(run_dir)
        self.digits, self.val, self.test = data.digits, data.val, data.test
        t = config.train
        self.strategy = distribute.make_strategy(strategy, devices)  # before any other TensorFlow work
        self.strategy_name = strategy
        setup_tensorflow(t.seed, t.deterministic)
        self._build(synchronized_bn=strategy != "default")
        self.steps_per_epoch = config.data.train_size // t.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"train_size {config.data.train_size} is smaller than one batch of {t.batch_size}")
        if t.batch_size % self.strategy.num_replicas_in_sync:
            raise UserError(
                f"batch_size {t.batch_size} does not split evenly over {self.strategy.num_replicas_in_sync} replicas"
            )
        self._gauge = t.cam_gauge != "none"
        self._train_step = self._compile_train_step()
        # The schedule's value at the optimizer's step, read every step for TensorBoard: compiled, as eagerly its
        # ops cost 0.65 ms a step.
        self._learning_rate = tf.function(lambda: self.optimizer.learning_rate)
        self.predict = batched(tf.function(lambda images: self.model(images, training=False), reduce_retracing=True))
        self._epoch, self._epoch_data = None, None
        self._final_tau = None  # the validation threshold the last step's snapshot chose

    def _build(self, synchronized_bn: bool) -> None:
        """The model and its optimizer, their variables mirrored on every replica."""
        import tensorflow as tf

        config = self.config
        with self.strategy.scope():
            # Any strategy but the default synchronises batch norm, on one device too, so that one device and
            # several compute the same statistics the same way (Keras' E[x^2] - E[x]^2, not tf.nn.moments).
            self.model = build_model(config.model, config.data.canvas, synchronized_bn=synchronized_bn)
            self.optimizer = make_optimizer(config.train)
            self.optimizer.build(self.model.trainable_variables)
        if config.model.precision == "mixed_bfloat16" and not tf.config.list_physical_devices("GPU"):
            if native_bfloat16() is False:
                self.log(
                    "note: this CPU has no native bfloat16 (avx512_bf16, amx_bf16 or bf16 flags), so bfloat16 "
                    "convolutions may run slower than float32 here; `--precision float32` trains the float32 network"
                )

    def _loss(self):
        """One loss per image: each replica sums its images' losses over the global batch size (distribute.py)."""
        import keras

        smooth = {"from_logits": True, "reduction": None, "label_smoothing": self.config.train.label_smoothing}
        if self.config.model.head == "sigmoid":  # targets: multi-hot (B, classes); one binary cross-entropy per class
            return keras.losses.BinaryCrossentropy(**smooth)
        if self.config.data.digits > 1:  # targets: 1/K on each of the K true classes (B, classes), Mahajan et al. 2018
            return keras.losses.CategoricalCrossentropy(**smooth)
        if smooth["label_smoothing"]:  # targets: (B,) classes, made one-hot so that they can be smoothed
            one_hot = keras.losses.CategoricalCrossentropy(**smooth)
            return lambda targets, logits: one_hot(keras.ops.one_hot(targets, logits.shape[-1]), logits)
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)  # targets: (B,) classes

    def _fix_gauge(self) -> None:
        """Softmax cannot see a part of the logits shared by every class, so the gradient has none either
        (sum_c dL/dy_c = 0): adding b_k to w_k^c for every class c changes no prediction, no loss and no gradient,
        only the CAM (CAM paper eq. 2: M_c = sum_k w_k^c f_k), by the same map sum_k b_k f_k in every class. Adam's
        drift and the initial weights leave an arbitrary such part; after each step it is fixed. 'mean' takes out
        what every class shares (zero mean over classes), so a class's map also subtracts the features other classes
        use; 'min' makes each channel's smallest weight 0, so every weight is >= 0 and a map only adds the evidence
        its class weighs more than the least-weighing class. The map's entropy term (``map_entropy``) is computed on
        the map of the gauge fixed here, so with it the gauge is part of the training signal."""
        import tensorflow as tf

        kernel = self.model.get_layer(LOGITS).kernel  # (K, C): the CAM weights w_k^c
        shared = {"mean": tf.reduce_mean, "min": tf.reduce_min}[self.config.train.cam_gauge]
        kernel.assign(kernel - shared(kernel, axis=1, keepdims=True))

    def _compile_train_step(self):
        """The compiled step: every replica's gradients applied at once, the gauge fixed, and whether any worker
        was asked to stop."""
        import keras
        import tensorflow as tf

        batch_size, strategy = self.config.train.batch_size, self.strategy
        loss_fn, variables = self._loss(), self.model.trainable_variables
        entropy_weight, kernel = self.config.train.map_entropy, self.model.get_layer(LOGITS).kernel
        spread_weight = self.config.train.gate_spread
        # The terms on the map read more of the model than its logits: the CAM layer's activations, the local gate.
        read = [FEATURES] * bool(entropy_weight) + [GATE] * bool(spread_weight)
        outputs = {LOGITS: logits_model(self.model).output} | {n: self.model.get_layer(n).output for n in read}
        net = keras.Model(self.model.inputs, outputs)
        # The layers take any canvas, the model's input spec only its own: a small-canvas epoch (data.small_canvas,
        # progressive resizing) runs the same layers, and so the same weights, on smaller images.
        net.input_spec = None

        def replica_step(images_u8, targets):  # (b, H, W) uint8; (b,) int32 or (b, classes) float32: a replica's
            images = tf.cast(images_u8, tf.float32)[..., None] / 255.0  # (b, H, W, 1) in [0, 1]
            with tf.GradientTape() as tape:
                out = net(images, training=True)
                per_image = loss_fn(targets, out[LOGITS])
                if entropy_weight:
                    per_image += entropy_weight * cam_entropy(out[FEATURES], kernel, targets)
                if spread_weight:
                    per_image += spread_weight * gate_spread(out[GATE])
                loss = tf.nn.compute_average_loss(per_image, global_batch_size=batch_size)
            # Keras' optimizer sums the gradients of every replica before applying them.
            self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
            return loss

        @tf.function(reduce_retracing=True)
        def train_step(images_u8, targets, stop):
            losses = strategy.run(replica_step, args=(images_u8, targets))
            if self._gauge:  # in cross-replica context: one assignment updates every replica's copy
                self._fix_gauge()
            # Whether any worker was asked to stop: every worker then stops after this same step (all-reduced with
            # the step's own collectives), so each writes the checkpoint of one step.
            stops = strategy.run(tf.identity, args=(stop,))  # each replica's copy of its worker's stop flag
            return (
                strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.SUM, stops, axis=None),
            )

        return train_step

    def batch(self, step: int, rows: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The training batch of global ``step`` (only its ``rows``, if given: a worker's shard): regenerated from
        (seed, epoch), so resuming needs no data state. Returns the uint8 images and the loss's targets (class
        indices, or (B, classes) for several digits)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch_data = TrainEpoch(self.digits, self.config.data, self.config.train.seed, epoch)
            self._epoch = epoch
        b = self.config.train.batch_size
        rows = rows or slice(0, b)
        part = self._epoch_data.rows(slice(i * b + rows.start, i * b + rows.stop))
        images, labels = part.images, part.labels
        if labels.ndim == 1:
            return images, labels.astype(np.int32)
        targets = multi_hot(labels, NUM_CLASSES)  # a sigmoid's: each class present or not
        if self.config.model.head == "softmax":  # a softmax's: a distribution, 1/K on each of the K digits' classes
            targets /= labels.shape[1]
        return images, targets

    def batches(self, start: int, rows: slice):
        """The batches (this process's ``rows`` of each) of the steps from ``start``, made by a tf.data pipeline one
        step ahead: the next batch is composed while the current step trains."""
        import tensorflow as tf

        first = self.batch(start, rows)
        # Batch and canvas unfixed: the canvas changes where the small-canvas epochs end (data.small_canvas).
        spec = tuple(tf.TensorSpec((None,) * a.ndim, tf.as_dtype(a.dtype)) for a in first)

        def steps():
            yield first
            for step in range(start + 1, self.config.train.steps):
                yield self.batch(step, rows)

        return iter(tf.data.Dataset.from_generator(steps, output_signature=spec).prefetch(1))

    def learning_rate(self) -> float:
        return float(self._learning_rate())

    def run(self, progress: bool = True) -> dict:
        """Train to ``config.train.steps`` (resuming if possible); returns the summary written to summary.json."""
        import tensorflow as tf

        t, run_dir = self.config.train, self.run_dir
        state = checkpoint.latest_valid(run_dir, self.model, warn=self.log)
        acc = {"loss_sum": 0.0, "loss_count": 0, "elapsed_s": 0.0, "window_s": 0.0, "wall_s": 0.0}
        start = 0
        if state is not None:
            checkpoint.restore(state, self.model, self.optimizer)
            start, acc = state.step, {**acc, **state.extras}
            self.log(f"resumed from {state.path.name} (step {start})")
        rows = [r for r in read_csv_rows(self.folder.metrics) if int(r["step"]) <= start]
        write_csv_rows(self.folder.metrics, METRICS_FIELDS, rows)  # later rows belonged to steps we are about to redo
        drawer = panel.Panel.of_split(self.model, self.test, t.panel_size)
        self.events = EventLog(self.folder.tensorboard)  # appends after the steps an earlier session logged
        if start == 0:
            if self._gauge:  # the initial weights too (a resumed run's checkpoint has its gauge already)
                self._fix_gauge()
            self._snapshot(drawer, 0, acc, rows)

        wall_start, wall_base = time.perf_counter(), acc["wall_s"]  # wall time of earlier sessions of this run
        bar = _progress(progress, start, t.steps)
        flag = _StopFlag()
        shard = distribute.local_rows(self.strategy, t.batch_size)  # under multiworker, this worker's rows only
        if shard != slice(0, t.batch_size):
            self.log(f"this worker composes rows {shard.start}:{shard.stop} of each global batch of {t.batch_size}")
        batches = self.batches(start, shard) if start < t.steps else iter(())
        step, stopped = start, False
        try:
            while step < t.steps and not stopped:
                images, targets = distribute.replica_batches(self.strategy, next(batches), t.batch_size, shard.start)
                began = time.perf_counter()
                loss, any_stop = self._train_step(images, targets, tf.constant(float(flag.stop)))
                loss = float(loss)
                # One process stops at once; several workers stop together, after the step that told them all.
                stopped = float(any_stop) > 0 if self.strategy_name == "multiworker" else flag.stop
                spent = time.perf_counter() - began
                step += 1
                acc["loss_sum"] += loss
                acc["loss_count"] += 1
                acc["elapsed_s"] += spent
                acc["window_s"] += spent
                bar.update(1)
                self.events.scalars(step, {"train/loss": loss, "train/learning_rate": self.learning_rate()})
                if step % t.heatmap_every == 0 or step == t.steps:
                    bar.set_postfix(self._snapshot(drawer, step, acc, rows))
                if step % t.checkpoint_every == 0 or step == t.steps or stopped:
                    acc["wall_s"] = wall_base + time.perf_counter() - wall_start
                    checkpoint.save(run_dir, step, self.model, self.optimizer, acc, t.keep_checkpoints)
        finally:
            flag.restore()
            bar.close()
            self.events.close()
        if stopped:
            cause = flag.signal or "another worker's stop"
            self.log(f"stopped by {cause} at step {step}: checkpoint written; run the same command again to resume")
            return {"interrupted_at": step}
        return self._finish(acc)

    def _snapshot(self, drawer: panel.Panel, step: int, acc: dict, rows: list[dict]) -> dict:
        """Validation accuracy and CAM localization, the panel's heatmaps (boxed at the validation's tau), and a
        row of metrics.csv."""
        t = self.config.train
        probs = predict_probs(self.predict, self.val)
        val, cam = score(probs, self.val.labels, self.config.model.head), cam_localization(self.model, self.val, probs)
        if step == t.steps:
            self._final_tau = cam["tau"]
        drawing = drawer.draw(step, cam["tau"], note=" (tau from val)")
        drawing.save(self.folder.heatmaps)
        count = acc["loss_count"]
        row = {
            "step": step,
            "epoch": f"{step / self.steps_per_epoch:.3f}",
            "train_loss": f"{acc['loss_sum'] / count:.5f}" if count else "",
            "val_accuracy": f"{val['accuracy']:.5f}",
            "val_loss": f"{val['loss']:.5f}",
            "val_loc_tau": f"{cam['loc_tau']:.5f}",
            "val_tau": f"{cam['tau']:.2f}",
            "val_loc_worst": f"{cam['worst_class']:.5f}",
            "val_loc_20": f"{cam['loc_20']:.5f}",
            "val_peak_in_box": f"{cam['peak_in_box']:.5f}",
            "lr": f"{self.learning_rate():.6g}",
            "elapsed_s": f"{acc['elapsed_s']:.1f}",
            "images_per_s": f"{count * t.batch_size / acc['window_s']:.1f}" if count else "",
        }
        rows.append(row)
        write_csv_rows(self.folder.metrics, METRICS_FIELDS, rows)
        self.events.scalars(
            step,
            {
                "val/accuracy": val["accuracy"],
                "val/loss": val["loss"],
                "val/cam_loc_tau": cam["loc_tau"],
                "val/tau": cam["tau"],
                "val/cam_loc_worst_class": cam["worst_class"],
                "val/cam_loc_20": cam["loc_20"],
                "val/peak_in_box": cam["peak_in_box"],
            },
        )
        self.events.image(step, "panel", drawing.page)
        self.events.flush()  # TensorBoard shows the step now, not when the writer's buffer fills
        viewer.write_run_index(self.run_dir, f"{self.run_dir.name}: step {step} of {t.steps}", self.config.data.digits)
        self.log(f"step {step}: " + " ".join(f"{k}={row[k]}" for k in METRICS_FIELDS[2:]))
        acc.update(loss_sum=0.0, loss_count=0, window_s=0.0)
        return {"val_acc": row["val_accuracy"], "loc": row["val_loc_tau"], "loss": row["train_loss"]}

    def _finish(self, acc: dict) -> dict:
        """Test score, model.keras, GIFs, index.html and summary.json; ``acc`` holds the run's time counters."""
        # The test split is scored once: accuracy, and CAM localization at the threshold chosen on validation.
        # The last snapshot chose it on these weights; a run resumed after its last step chooses it again.
        tau = validation_threshold(self.model, self.val) if self._final_tau is None else self._final_tau
        probs = predict_probs(self.predict, self.test)
        test, cam = (
            score(probs, self.test.labels, self.config.model.head),
            cam_localization(self.model, self.test, probs, tau),
        )
        partial = self.run_dir / f".{self.folder.model.name}.tmp.keras"  # Keras wants the suffix
        self.model.save(partial)
        partial.replace(self.folder.model)
        panel.write_gifs(self.folder.heatmaps)
        viewer.write_run_index(
            self.run_dir, f"{self.run_dir.name}: test accuracy {test['accuracy']:.2%}", self.config.data.digits
        )
        t = self.config.train
        summary = {
            "preset": self.config.preset,
            "steps": t.steps,
            "test_accuracy": test["accuracy"],
            "test_loss": test["loss"],
            "test_cam_top1_loc_tau": cam["loc_tau"],
            "tau_from_val": cam["tau"],
            "test_cam_top1_loc_worst_class": cam["worst_class"],
            "test_cam_top1_loc_20": cam["loc_20"],
            "test_cam_peak_in_box": cam["peak_in_box"],
            "train_seconds": round(acc["elapsed_s"], 1),
            "wall_seconds": round(acc["wall_s"], 1),
            "images_per_s": round(t.steps * t.batch_size / acc["elapsed_s"], 1),
            "test_images": len(self.test),
            "strategy": self.strategy_name,
            "replicas": self.strategy.num_replicas_in_sync,
        }
        atomic_write_bytes(self.folder.summary, (json.dumps(summary, indent=2) + "\n").encode())
        self.log(
            f"done: test accuracy {test['accuracy']:.4f} (loss {test['loss']:.4f}); CAM top-1 localization "
            f"{cam['loc_tau']:.4f} at tau {tau:.2f} (chosen on validation), {cam['loc_20']:.4f} at 20%, peak in box "
            f"{cam['peak_in_box']:.4f}; on {len(self.test)} held-out images"
        )
        return summary


def _progress(enabled: bool, start: int, total: int):
    return tqdm(total=total, initial=start, disable=not enabled, unit="step", dynamic_ncols=True, smoothing=0.05)
