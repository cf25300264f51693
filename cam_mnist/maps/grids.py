"""Where a layer's output lies on the input: the (B, h, w, K) grid every method works on, and the (B, H, W, C)
view of inputs that are not images.

A 2-D convolution's output already is that grid. A 1-D signal (B, T, C) is seen as an image one row high (B, 1, T,
C), its conv layers' outputs (B, t, K) as (B, 1, t, K); a volume (B, D, H, W, C) as its depth slices stacked into
rows (B, D*H, W, C), its conv layers' outputs (B, d, h, w, K) as (B, d*h, w, K), upsampled axis by axis so that no
slice bleeds into the next. A vision transformer's is (B, T, C) tokens: a grid of patch tokens
(row by row, as patch embeddings flatten it), after a few tokens that belong to no place (a class token, DeiT's
distillation token, DINOv2's register tokens). :func:`grid_for` infers that layout from the number of tokens and
the image's aspect ratio; a ``reshape`` function given by the user (pytorch-grad-cam's ``reshape_transform``)
replaces the inference where it cannot work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from keras import ops

from cam_mnist.core.errors import UserError
from cam_mnist.core.resize import bilinear_weights


def upsample(maps, size: tuple[int, int]):
    """(B, h, w) -> (B, H, W), bilinear, as Grad-CAM and the CAM paper upsample to the image size.

    Computed as rows @ map @ cols.T with fixed interpolation matrices: equal to ``tf.image.resize`` (half-pixel
    centres) to float rounding, and on one-channel maps two small matrix products beat its resize kernel."""
    h, w = maps.shape[1], maps.shape[2]
    if h is None or w is None:  # a layer whose size is known only at run time
        return ops.image.resize(maps[..., None], size, interpolation="bilinear", antialias=False)[..., 0]
    rows, cols = bilinear_weights(h, size[0]), bilinear_weights(w, size[1])  # (H, h), (W, w)
    return ops.matmul(ops.matmul(rows, maps), ops.convert_to_tensor(cols.T))


class Grid:
    """A conv layer's output, (B, h, w, K) already."""

    identity = True

    def to_grid(self, x):
        return x

    def from_grid(self, grid, original):
        """The layer's output with its cells replaced by ``grid`` (what the layers after it would see)."""
        return grid

    def upsample(self, maps, size: tuple[int, int]):
        """(B, h, w) -> (B, H, W), bilinear (:func:`upsample`)."""
        return upsample(maps, size)


@dataclass(frozen=True)
class SignalGrid(Grid):
    """A 1-D conv layer's (B, t, K), seen one row high: (B, 1, t, K)."""

    identity = False

    def to_grid(self, x):
        return x[:, None]

    def from_grid(self, grid, original):
        return ops.cast(grid[:, 0], original.dtype)


@dataclass(frozen=True)
class VolumeGrid(Grid):
    """A 3-D conv layer's (B, d, h, w, K), its ``cells`` depth slices stacked into rows: (B, d*h, w, K); upsampled
    axis by axis (trilinear) to the input's ``depth`` slices."""

    depth: int
    cells: int
    identity = False

    def to_grid(self, x):
        return ops.reshape(x, (-1, x.shape[1] * x.shape[2], x.shape[3], x.shape[4]))

    def from_grid(self, grid, original):
        return ops.reshape(ops.cast(grid, original.dtype), (-1, *original.shape[1:]))

    def upsample(self, maps, size: tuple[int, int]):
        h, w = maps.shape[1] // self.cells, maps.shape[2]  # (B, d*h, w) -> (B, d, h, w)
        out_h = size[0] // self.depth
        rows = [bilinear_weights(n, m) for n, m in ((self.cells, self.depth), (h, out_h), (w, size[1]))]
        volume = ops.einsum("bdhw,Dd,Hh,Ww->bDHW", ops.reshape(maps, (-1, self.cells, h, w)), *rows)
        return ops.reshape(volume, (-1, size[0], size[1]))


@dataclass(frozen=True)
class InputView:
    """The model's inputs seen as images (H, W, C): an image as it is, a 1-D signal (T, C) one row high, a volume
    (D, H, W, C) with its slices stacked into rows; and the maps made on that view shown in the input's shape."""

    shape: tuple  # the model's input, without the batch axis

    @property
    def image_shape(self) -> tuple:
        if len(self.shape) == 2:
            return (1, *self.shape)
        if len(self.shape) == 4:
            return (self.shape[0] * self.shape[1], *self.shape[2:])
        return tuple(self.shape)

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    def to_model(self, x):
        return x if self.is_image else ops.reshape(x, (-1, *self.shape))

    def to_view(self, x):
        """Inputs in the model's shape (N, ...) as the view (N, H, W, C)."""
        return x if self.is_image else x.reshape(len(x), *self.image_shape)

    def to_input(self, maps):
        """Maps (N, H, W) on the view, in the input's shape: (N, T) for a signal, (N, D, H, W) for a volume."""
        return maps if self.is_image else maps.reshape(len(maps), *self.shape[:-1])


GRID = Grid()  # every conv layer's


@dataclass(frozen=True)
class TokenGrid(Grid):
    """(B, T, C) tokens: ``extra`` leading tokens that are no place, then an ``h`` x ``w`` grid of patch tokens."""

    extra: int
    h: int
    w: int
    identity = False

    def to_grid(self, x):
        return ops.reshape(x[:, self.extra :], (-1, self.h, self.w, x.shape[-1]))  # (B, h, w, C)

    def from_grid(self, grid, original):
        patches = ops.reshape(ops.cast(grid, original.dtype), (-1, self.h * self.w, original.shape[-1]))
        return ops.concatenate([original[:, : self.extra], patches], 1)


@dataclass(frozen=True)
class ReshapedGrid(Grid):
    """A layer's output made a grid by the user's ``reshape`` ((B, ...) -> (B, h, w, K)), which has no inverse."""

    reshape: object
    identity = False

    def to_grid(self, x):
        return self.reshape(x)

    def from_grid(self, grid, original):
        raise UserError("this method puts modified activations back into the model, which a reshape= cannot undo")


def token_layout(tokens: int, image: tuple[int, int]) -> tuple[int, int, int]:
    """(extra, h, w): the fewest leading tokens that leave a grid of the image's aspect ratio, h * w = T - extra
    and h / w = H / W. Raises where no count of extra tokens does."""
    height, width = image
    for extra in range(tokens):
        n = tokens - extra
        w = round(math.sqrt(n * width / height))
        if w and n % w == 0 and (n // w) * width == w * height:
            return extra, n // w, w
    raise UserError(
        f"{tokens} tokens make no grid of the image's aspect ratio {height}x{width}: "
        "give reshape= (a function from the layer's output to (B, h, w, K))"
    )


def grid_for(shape: tuple, view: InputView, reshape=None) -> Grid:
    """The grid of a layer whose output has ``shape`` (batch axis first), for inputs seen as ``view``."""
    if reshape is not None:
        return ReshapedGrid(reshape)
    if len(view.shape) == 2:
        return SignalGrid()
    if len(view.shape) == 4:
        return VolumeGrid(view.shape[0], shape[1])
    image = view.shape[:2]
    if len(shape) == 3:
        if shape[1] is None:
            raise UserError(f"a layer with {shape} outputs has no fixed number of tokens: give reshape=")
        return TokenGrid(*token_layout(shape[1], image))
    return GRID
