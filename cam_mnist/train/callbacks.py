"""``CAMCallback``: the maps of a few images, drawn as any Keras model trains with ``model.fit``.

    from cam_mnist.train.callbacks import CAMCallback
    cam = CAMCallback(images[:8], labels[:8], method="gradcam", every_n_batches=100, folder="out/cams",
                      tensorboard="out/tb")
    model.fit(x, y, callbacks=[cam])

It draws the same pictures as a training run's panel (:mod:`cam_mnist.viz.panel`): per image the map of the true
class and of the predicted class (of the predicted class alone without labels), the true box in white and the map's
box in magenta with their IoU when boxes are given. They go to ``folder`` (``img_XX/step_N.png``, ``grid/``, an
``evolution.gif`` per image and the viewer ``index.html`` at the end of ``fit``) and/or, as the image ``cam/<method>``,
to TensorBoard event files in ``tensorboard``. Steps count the optimizer's updates, so a second ``fit`` continues
the count. The maps use the model in inference mode and read its weights only: training is exactly as without
the callback.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from cam_mnist.core.errors import UserError
from cam_mnist.maps import registry
from cam_mnist.train.summaries import EventLog
from cam_mnist.viz import panel, viewer


class CAMCallback(keras.callbacks.Callback):
    """Draws the maps of ``images`` every ``every_n_batches`` updates, or at the end of every epoch if None.

    Args:
        images: (P, H, W[, C]) as the model takes them (a few: every map is drawn at every step).
        labels: (P,) true classes (or None: the predicted class only).
        boxes: (P, 4) true boxes (y0, x0, y1, x1) in pixels, for the IoU of each map's box (or None).
        method: a method of the family (``python -m cam_mnist methods``); default Grad-CAM, which needs no
            particular head.
        layer: the 4-D layer to explain; default: the model's last one.
        every_n_batches: draw after every this many updates; None: after every epoch.
        folder: where the pictures and ``index.html`` go; tensorboard: where event files go (at least one).
        tau: the map's box is its largest connected region above tau x its maximum (the CAM paper's 0.2).
        **options: passed to the method (e.g. ``smooth=2``, ``use_softmax=True``).

    After ``fit``, ``maps`` holds every step's maps: step -> (P, H, W) of the first tile (the true class's map,
    or the predicted class's without labels).
    """

    def __init__(
        self,
        images,
        labels=None,
        boxes=None,
        *,
        method: str = "gradcam",
        layer: str | None = None,
        every_n_batches: int | None = None,
        folder: str | Path | None = None,
        tensorboard: str | Path | None = None,
        tau: float = 0.2,
        **options,
    ):
        super().__init__()
        registry.info(method)  # an unknown name is refused here, not after the first epoch
        if folder is None and tensorboard is None:
            raise UserError("CAMCallback needs somewhere to write: give folder= and/or tensorboard=")
        if every_n_batches is not None and every_n_batches < 1:
            raise UserError(f"every_n_batches must be at least 1 (or None for every epoch), got {every_n_batches}")
        images = np.asarray(images)
        if images.ndim not in (3, 4) or len(images) == 0:
            raise UserError(f"images must be a non-empty (P, H, W[, C]) array, got shape {images.shape}")
        for name, values, rank in (("labels", labels, (1, 2)), ("boxes", boxes, (2, 3))):
            if values is not None and (len(values) != len(images) or np.ndim(values) not in rank):
                raise UserError(f"{name} must have one entry per image ({len(images)}), got shape {np.shape(values)}")
        if not 0 < tau < 1:
            raise UserError(f"tau must be in (0, 1), got {tau}")
        self.images, self.labels, self.boxes = images, labels, boxes
        self.method, self.layer, self.options = method, layer, options
        self.every_n_batches, self.tau = every_n_batches, tau
        self.folder = None if folder is None else Path(folder)
        self.tensorboard = None if tensorboard is None else Path(tensorboard)
        self.maps: dict[int, np.ndarray] = {}
        self._panel = self._events = None
        self._step = 0

    def on_train_begin(self, logs=None):
        # Built here, where the model is known: a model without a 4-D layer is refused before the first batch.
        self._panel = panel.Panel(
            self.model, self.images, self.labels, self.boxes, method=self.method, layer=self.layer, **self.options
        )
        self._events = EventLog(self.tensorboard) if self.tensorboard is not None else None
        self._step = int(np.asarray(self.model.optimizer.iterations))
        if self._step not in self.maps:
            self._draw()

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self.every_n_batches is not None and self._step % self.every_n_batches == 0:
            self._draw()

    def on_epoch_end(self, epoch, logs=None):
        if self.every_n_batches is None:
            self._draw()

    def on_train_end(self, logs=None):
        if self._events is not None:
            self._events.close()
        if self.folder is not None and self.maps:
            panel.write_gifs(self.folder)
            viewer.write_index(
                self.folder / "index.html",
                self.folder,
                f"{self.model.name}: {self.method} maps during model.fit",
                f"The map of each image as the model trained ({registry.info(self.method).paper}); move the "
                f"slider to change the update step.",
            )

    def _draw(self) -> None:
        if hasattr(self.model, "jax_state_sync"):  # JAX's fit keeps the weights it updates apart until told to sync
            self.model.jax_state_sync()
        drawing = self._panel.draw(self._step, self.tau, note=f" ({self.method})")
        self.maps[self._step] = drawing.maps[0]
        if self.folder is not None:
            drawing.save(self.folder)
        if self._events is not None:
            self._events.image(self._step, f"cam/{self.method}", drawing.page)
            self._events.flush()
