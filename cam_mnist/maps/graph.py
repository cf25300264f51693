"""Any Keras functional or Sequential model, nested models included, as one flat graph of its own layers.

The transfer-learning recipe of the Keras guides nests a whole model inside another::

    base = keras.applications.MobileNetV2(include_top=False, input_shape=(96, 96, 3))
    model = keras.Sequential([keras.Input((96, 96, 3)), base, GlobalAveragePooling2D(), Dense(5)])

A layer of ``base`` has an output only in ``base``'s own graph, so ``keras.Model(model.input, layer.output)`` fails
("not connected to inputs"), which is why most Keras CAM tools stop here. :class:`FlatGraph` reads the model's graph
node by node and steps *into* each nested model, joining its input tensor to the tensor the outer model feeds it:
one list of layer calls from the outer input to the output, where every layer's output -- the nested
``"mobilenetv2_1.00_96/block_13_expand_relu"`` included -- is reachable. :meth:`FlatGraph.run` calls those layers
(the model's own objects, so its variables are read at every call, never copied) on real tensors, computing exactly
what the model computes (tested against each nested model's flat twin). The model itself is not touched: no layer is
called symbolically again, renamed or cloned.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import keras
import tensorflow as tf

from cam_mnist.core.errors import UserError

SEPARATOR = "/"  # a nested layer's path: "<model>/<layer>", one name per level


@dataclass(frozen=True)
class Call:
    """One call of a layer: its path, the layer object, its arguments (symbolic tensors of the flat graph among
    them) and its symbolic outputs."""

    path: str
    layer: keras.layers.Layer
    args: tuple
    kwargs: dict
    outputs: tuple

    @property
    def output(self):
        return self.outputs[0]

    @property
    def inputs(self) -> list:
        return [x for x in keras.tree.flatten((self.args, self.kwargs)) if isinstance(x, keras.KerasTensor)]

    @property
    def shape(self) -> tuple:
        return tuple(self.output.shape)


def relu_kind(layer) -> bool:
    """Whether the layer's last operation is a (capped) ReLU: a ReLU layer without slope or threshold, or any layer
    whose activation is relu or relu6 (Conv2D(activation="relu"), Activation("relu"), MobileNetV2's ReLU(6.))."""
    if isinstance(layer, keras.layers.ReLU):
        return not layer.negative_slope and not layer.threshold
    return getattr(layer, "activation", None) in (keras.activations.relu, keras.activations.relu6)


@tf.custom_gradient
def positive_gradient(x):
    """Identity whose backward pass lets only positive gradients through. After a ReLU, whose own backward pass
    keeps the gradient where its input is positive, this is guided backpropagation's rule (Springenberg et al.)."""
    return tf.identity(x), lambda dy: dy * tf.cast(dy > 0, dy.dtype)


class FlatGraph:
    """``model``'s layer calls, nested models stepped into, in an order that runs them (see the module's doc).

    Attributes:
        input: the symbolic image input; output: the symbolic model output.
        calls: every layer call (:class:`Call`); a nested layer's path names the models it sits in, e.g.
            ``"resnet50/conv5_block3_out"``.
    """

    def __init__(self, model: keras.Model):
        _check_functional(model)
        if len(model.inputs) != 1:
            raise UserError(f"model {model.name!r} has {len(model.inputs)} inputs; explanations need one image input")
        self.source = model
        self.input = model.inputs[0]
        self.calls: list[Call] = []
        self._alias: dict[int, keras.KerasTensor] = {}  # a nested model's input or output -> the flat graph's tensor
        self._read(model, "")
        self.output = self.canonical(model.outputs[0])
        self._by_path: dict[str, Call] = {}
        for call in self.calls:  # a layer called twice (shared) is found at its first call, as keras' .output
            self._by_path.setdefault(call.path, call)
        self._producer = {id(x): call for call in self.calls for x in call.outputs}

    @classmethod
    def of(cls, model: keras.Model) -> FlatGraph:
        """The flat graph of ``model``, read once per model (again when a Sequential's layers have changed)."""
        _check_functional(model)
        graph, cached = _graph_of(model), _CACHE.get(model)
        if cached is None or cached[0] is not graph:
            cached = _CACHE[model] = (graph, cls(model))
        return cached[1]

    def canonical(self, x):
        """The flat graph's tensor for ``x`` (a nested model's input is the tensor fed to it, its output its last
        layer's)."""
        seen = set()
        while isinstance(x, keras.KerasTensor) and id(x) in self._alias:
            if id(x) in seen:  # cannot happen for a graph Keras can run; a bound rather than an endless loop
                raise UserError(f"model {self.source.name!r}: the tensor {x.name!r} is its own source")
            seen.add(id(x))
            x = self._alias[id(x)]
        return x

    def _read(self, model, prefix: str) -> None:
        graph = _graph_of(model)
        nodes_by_depth = graph._nodes_by_depth  # Keras' own topological order, as its executor runs the graph
        for depth in sorted(nodes_by_depth, reverse=True):
            for node in nodes_by_depth[depth]:
                if not node.operation or node.is_input:
                    continue
                op = node.operation
                args, kwargs = node.arguments.convert(self.canonical)
                if _is_graph_model(op):  # a nested model: its inputs are the tensors fed to it; a training= given
                    fed = keras.tree.flatten(args)  # to it is the outer call's, which run() sets for every layer
                    for inner, outer in zip(op.inputs, fed, strict=True):
                        if inner is not outer:  # keras_hub's tasks feed their backbone its own input tensor
                            self._alias[id(inner)] = outer
                    self._read(op, f"{prefix}{op.name}{SEPARATOR}")
                    for outer, inner in zip(node.outputs, keras.tree.flatten(op.outputs), strict=True):
                        self._alias[id(outer)] = self.canonical(inner)
                else:
                    self.calls.append(Call(prefix + op.name, op, args, kwargs, tuple(node.outputs)))

    # -------------------------------------------------------------------------------------------------- running it
    def run(self, start, value, wanted: list, guided: bool = False) -> list:
        """The values of the symbolic tensors ``wanted``, given ``value`` for the tensor ``start`` (the input, or a
        layer's output), calling only the layers between them, in inference mode. ``guided``: every ReLU's
        backward pass follows guided backpropagation's rule (:func:`positive_gradient` after it)."""
        values = {id(start): value}
        for call in self.between(start, wanted):
            args, kwargs = keras.tree.map_structure(
                lambda x: values[id(x)] if isinstance(x, keras.KerasTensor) else x, (call.args, call.kwargs)
            )
            if "training" in getattr(call.layer, "_call_context_args", ()):  # Keras' own call-context arguments
                kwargs = {**kwargs, "training": False}
            out = call.layer(*args, **kwargs)
            if guided and relu_kind(call.layer):
                out = positive_gradient(out)
            for x, v in zip(call.outputs, keras.tree.flatten(out), strict=True):
                values[id(x)] = v
        return [values[id(x)] for x in wanted]

    def between(self, start, wanted: list) -> list[Call]:
        """The calls that ``wanted`` needs from ``start``, in running order. Raises ValueError where ``wanted``
        also depends on the model's input through a path that does not pass ``start`` (a skip connection)."""
        needed, stack = set(), list(wanted)
        while stack:
            x = stack.pop()
            if x is start:
                continue
            call = self._producer.get(id(x))
            if call is None:
                raise ValueError(f"{x.name} does not depend on the model's input through {start.name} alone")
            if id(call) not in needed:
                needed.add(id(call))
                stack += call.inputs
        return [call for call in self.calls if id(call) in needed]

    # ------------------------------------------------------------------------------------------------ finding layers
    def producer(self, x) -> Call | None:
        return self._producer.get(id(x))

    def consumers(self, x) -> list[Call]:
        """The calls that take the tensor ``x`` as an input."""
        return [c for c in self.calls if any(y is x for y in c.inputs)]

    def candidates(self) -> list[Call]:
        """The calls with a 4-D (B, h, w, K) output, the layers a map can be made at, in running order."""
        return [c for c in self._by_path.values() if len(c.outputs) == 1 and len(c.shape) == 4]

    def resolve(self, layer=None) -> Call:
        """The call of the layer to explain: ``None`` for the last 4-D layer (searched through nested models); a
        path (``"resnet50/conv5_block3_out"``); a layer's own name where only one layer has it; or a layer object."""
        candidates = self.candidates()
        if layer is None:
            if not candidates:
                raise UserError(f"model {self.source.name!r} has no layer with a 4-D (B, h, w, K) output to explain")
            return candidates[-1]
        if isinstance(layer, keras.layers.Layer):
            found = [c for c in self._by_path.values() if c.layer is layer]
            name = layer.name
        else:
            name = str(layer)
            found = [self._by_path[name]] if name in self._by_path else []
            found = found or [c for c in self._by_path.values() if c.path.rsplit(SEPARATOR, 1)[-1] == name]
        if not found:
            raise UserError(f"model {self.source.name!r} has no layer {name!r}; {self._candidate_hint(candidates)}")
        if len(found) > 1:
            paths = ", ".join(c.path for c in found)
            raise UserError(f"layer name {name!r} is in several models; give its path: {paths}")
        call = found[0]
        if len(call.outputs) != 1 or len(call.shape) != 4:
            raise UserError(f"layer {call.path!r} has output shape {call.shape}, not 4-D (B, h, w, K)")
        return call

    def _candidate_hint(self, candidates: list[Call], show: int = 8) -> str:
        names = [c.path for c in candidates]
        if len(names) <= show:
            return f"its 4-D layers are: {', '.join(names)}"
        return (
            f"its last 4-D layers are: {', '.join(names[-show:])} ({len(names)} in all; "
            f"`python -m cam_mnist layers --model FILE` lists them)"
        )


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _graph_of(model):
    """The functional graph that runs ``model``: its own, or a Sequential's inner one (rebuilt when layers change)."""
    return model._functional if isinstance(model, keras.Sequential) else model


def _is_graph_model(op) -> bool:
    """A model whose layers form a graph we can step into: functional, or a built Sequential."""
    return isinstance(op, keras.Model) and hasattr(_graph_of(op), "_nodes_by_depth")


def _check_functional(model) -> None:
    if not isinstance(model, keras.Model):
        raise UserError(f"expected a keras.Model, got {type(model).__name__}")
    if not _is_graph_model(model):
        raise UserError(
            f"model {model.name!r} is a subclassed keras.Model (or an unbuilt Sequential), whose layers have no graph "
            "to read maps from: build the same layers as a functional model, "
            "keras.Model(inputs, outputs) with inputs = keras.Input(shape), and load its weights "
            "(model.set_weights(subclassed.get_weights())); a subclassed model may be a layer inside it"
        )
