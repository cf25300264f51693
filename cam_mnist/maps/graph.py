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

import contextlib
import weakref
from dataclasses import dataclass

import keras
from keras import ops

from cam_mnist.core.backend import positive_gradient
from cam_mnist.core.errors import OutputNotChosen, UserError

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


@dataclass(frozen=True)
class InnerCall(Call):
    """A layer called inside another layer's own ``call`` (a composite layer such as keras_hub's ``ViTEncoder``,
    which runs every transformer block itself): no graph holds its output, so its value is taken by a hook on the
    layer while ``host`` runs. ``outputs`` holds a placeholder that stands for that value."""

    host: Call | None = None


def relu_kind(layer) -> bool:
    """Whether the layer's last operation is a (capped) ReLU: a ReLU layer without slope or threshold, or any layer
    whose activation is relu or relu6 (Conv2D(activation="relu"), Activation("relu"), MobileNetV2's ReLU(6.))."""
    if isinstance(layer, keras.layers.ReLU):
        return not layer.negative_slope and not layer.threshold
    return getattr(layer, "activation", None) in (keras.activations.relu, keras.activations.relu6)


class FlatGraph:
    """``model``'s layer calls, nested models stepped into, in an order that runs them (see the module's doc).

    Attributes:
        input: the symbolic image input; output: the symbolic model output.
        calls: every layer call (:class:`Call`); a nested layer's path names the models it sits in, e.g.
            ``"resnet50/conv5_block3_out"``.
    """

    def __init__(self, model: keras.Model, source: keras.Model | None = None):
        _check_functional(model)
        if len(model.inputs) != 1:
            raise UserError(f"model {model.name!r} has {len(model.inputs)} inputs; explanations need one image input")
        self.source = source or model  # the user's model (a subclassed one is read through a functional wrapper)
        self.input = model.inputs[0]
        self.calls: list[Call] = []
        self._alias: dict[int, keras.KerasTensor] = {}  # a nested model's input or output -> the flat graph's tensor
        self._read(model, "")
        self.outputs = [self.canonical(x) for x in model.outputs]
        self.output_names = _output_names(model)
        self.output = self.outputs[0]
        self._by_path: dict[str, Call] = {}
        for call in self.calls:  # a layer called twice (shared) is found at its first call, as keras' .output
            self._by_path.setdefault(call.path, call)
        self._producer = {id(x): call for call in self.calls for x in call.outputs}
        self._inner: list[InnerCall] = []  # found when asked for (inner_calls)
        self._inner_shape = None

    def output_named(self, output=None):
        """The output tensor ``output`` names (its name, or its index); a model with several must say which."""
        if output is None:
            if len(self.outputs) > 1:
                raise OutputNotChosen(
                    f"model {self.source.name!r} has {len(self.outputs)} outputs ({', '.join(self.output_names)}): "
                    "say which to explain with output= (or a target that reads it)"
                )
            return self.output
        if isinstance(output, int) and 0 <= output < len(self.outputs):
            return self.outputs[output]
        if output in self.output_names:
            return self.outputs[self.output_names.index(output)]
        raise UserError(f"model {self.source.name!r} has no output {output!r}; its outputs: {self.output_names}")

    @classmethod
    def of(cls, model: keras.Model, input_shape: tuple | None = None) -> FlatGraph:
        """The flat graph of ``model``, read once per model (again when a Sequential's layers have changed). A
        subclassed model is read as one layer of a functional wrapper, called on ``input_shape`` (default: the
        shape it was built with), its own layers reached inside it (:meth:`inner_calls`)."""
        if not isinstance(model, keras.Model):
            raise UserError(f"expected a keras.Model, got {type(model).__name__}")
        if not _is_graph_model(model) and not isinstance(model, keras.Sequential):
            cached = _CACHE.get(model)
            if cached is None:
                cached = _CACHE[model] = (None, cls(_wrapped(model, input_shape), source=model))
            return cached[1]
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
    def run(self, start, value, wanted: list, guided: bool = False, replace: dict | None = None) -> list:
        """The values of the symbolic tensors ``wanted``, given ``value`` for the tensor ``start`` (the input, or a
        layer's output), calling only the layers between them, in inference mode. ``guided``: every ReLU's
        backward pass follows guided backpropagation's rule (:func:`positive_gradient` after it). ``replace``:
        {tensor: function of its value}, what the layers after it see instead (an inner call's placeholder too)."""
        values, replace = {id(start): value}, replace or {}
        needed = {id(x) for x in wanted} | set(replace)
        inner = [c for c in self._inner if id(c.output) in needed]
        for call in self.between(start, wanted):
            args, kwargs = keras.tree.map_structure(
                lambda x: values[id(x)] if isinstance(x, keras.KerasTensor) else x, (call.args, call.kwargs)
            )
            if "training" in getattr(call.layer, "_call_context_args", ()):  # Keras' own call-context arguments
                kwargs = {**kwargs, "training": False}
            wrappers = {sub: _guide for sub in _sublayers(call.layer) if relu_kind(sub)} if guided else {}
            for c in (c for c in inner if c.host is call):  # captured after the guided rule, as a graph layer's
                capture = _capture(values, c.output, replace.get(id(c.output)))
                guide = wrappers.get(c.layer)
                wrappers[c.layer] = capture if guide is None else lambda f, g=guide, k=capture: k(g(f))
            with _hooks(wrappers):
                out = call.layer(*args, **kwargs)
            if guided and relu_kind(call.layer):
                out = positive_gradient(out)
            for x, v in zip(call.outputs, keras.tree.flatten(out), strict=True):
                values[id(x)] = replace[id(x)](v) if id(x) in replace else v
        return [values[id(x)] for x in wanted]

    # ------------------------------------------------------------------------------------ inside composite layers
    def inner_calls(self, input_shape: tuple) -> list[InnerCall]:
        """The layers called inside composite layers (a layer that runs sublayers in its own ``call``, not as a
        graph), in the order they finish, found once by running the model on one image of zeros with a hook on
        every sublayer. Attention layers are not looked into: their projections are heads, not places."""
        if self._inner_shape == input_shape:
            return self._inner
        found, stack = {}, []

        def tracer(host: Call, layer):
            def wrap(original):
                def call(*args, **kwargs):
                    stack.append(layer.name)
                    try:
                        out = original(*args, **kwargs)
                    finally:
                        path = SEPARATOR.join(stack)
                        stack.pop()
                    if layer not in found and ops.is_tensor(out):  # a shared layer: its first call
                        found[layer] = (host, path, out)
                    return out

                return call

            return wrap

        hooks = {sub: tracer(c, sub) for c in reversed(self.calls) for sub in _sublayers(c.layer)}
        with _hooks(hooks):
            self.run(self.input, ops.zeros((1, *input_shape), self.input.dtype), list(self.outputs))
        self._inner, self._inner_shape = [], input_shape
        for layer, (host, path, out) in found.items():
            dtype = keras.backend.standardize_dtype(out.dtype)
            marker = keras.KerasTensor((None, *out.shape[1:]), dtype=dtype, name=path)
            self._inner.append(InnerCall(f"{host.path}{SEPARATOR}{path}", layer, (), {}, (marker,), host))
        for call in self._inner:
            self._producer[id(call.output)] = call
        return self._inner

    def between(self, start, wanted: list) -> list[Call]:
        """The calls that ``wanted`` needs from ``start``, in running order. Raises ValueError where ``wanted``
        also depends on the model's input through a path that does not pass ``start`` (a skip connection)."""
        needed, stack = set(), list(wanted)
        while stack:
            x = stack.pop()
            if x is start:
                continue
            call = self._producer.get(id(x))
            if isinstance(call, InnerCall):
                call = call.host
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

    def running_order(self, input_shape: tuple | None = None) -> list[Call]:
        """Every call, in the order it finishes: the flat graph's, and, where the input's size is known, those
        made inside composite layers (:meth:`inner_calls`) just before their host."""
        inner = []
        if input_shape is not None and None not in input_shape and any(_sublayers(c.layer) for c in self.calls):
            inner = self.inner_calls(tuple(input_shape))
        order = []
        for call in self.calls:
            order += [c for c in inner if c.host is call] + [call]
        return order

    def candidates(self, input_shape: tuple | None = None) -> list[Call]:
        """The calls a map can be made at, in running order, each layer at its first call: for an image model a
        4-D (B, h, w, K) output or a 3-D (B, T, C) one of tokens; for a 1-D or 3-D input, outputs of its rank."""
        rank = len(self.input.shape)
        ranks = (4, 3) if rank == 4 else (rank,)
        first = {}
        for call in self.running_order(input_shape):
            if len(call.outputs) == 1 and len(call.shape) in ranks:
                first.setdefault(call.path, call)
        return list(first.values())

    def default_layer(self, input_shape: tuple | None = None) -> Call:
        """Where a map is made when no layer is named. With attention over tokens, the input of the last attention
        layer, as pytorch-grad-cam advises for vision transformers (its last block's first norm): the class token
        reads the patch tokens only through attention, so after it they no longer move the score. Otherwise the
        last layer of the input's rank whose map has more than one cell (after global pooling a 1 x 1 map is
        constant)."""
        candidates, order = self.candidates(input_shape), self.running_order(input_shape)
        attention = [i for i, c in enumerate(order) if isinstance(c.layer, _ATTENTION)]
        if attention:
            before = {c.path for c in order[: attention[-1]]}
            tokens = [c for c in candidates if len(c.shape) == 3 and c.path in before]
            norms = [c for c in tokens if isinstance(c.layer, keras.layers.LayerNormalization)]
            if norms or tokens:
                return (norms or tokens)[-1]
        same = [c for c in candidates if len(c.shape) == len(self.input.shape)]
        spatial = [c for c in same if any(d is None or d > 1 for d in c.shape[1:-1])]
        if spatial or same or candidates:
            return (spatial or same or candidates)[-1]
        kind = "4-D (B, h, w, K)" if len(self.input.shape) == 4 else f"{len(self.input.shape)}-D"
        raise UserError(f"model {self.source.name!r} has no layer with a {kind} output to explain")

    def resolve(self, layer=None, input_shape: tuple | None = None) -> Call:
        """The call of the layer to explain: ``None`` for :meth:`default_layer`; a path
        (``"resnet50/conv5_block3_out"``, or inside a composite layer ``"vit_encoder/transformer_block_2/ln_1"``); a
        layer's own name where only one layer has it; or a layer object."""
        if layer is None:
            return self.default_layer(input_shape)
        calls, candidates = self.running_order(input_shape), self.candidates(input_shape)
        if isinstance(layer, keras.layers.Layer):
            found = [c for c in calls if c.layer is layer][:1]
            name = layer.name
        else:
            name = str(layer)
            found = [c for c in calls if c.path == name][:1]
            found = found or list({c.path: c for c in calls if c.path.rsplit(SEPARATOR, 1)[-1] == name}.values())
        if not found:
            raise UserError(f"model {self.source.name!r} has no layer {name!r}; {self._candidate_hint(candidates)}")
        if len(found) > 1:
            paths = ", ".join(c.path for c in found)
            raise UserError(f"layer name {name!r} is in several models; give its path: {paths}")
        call = found[0]
        if call.path not in {c.path for c in candidates}:
            kind = "4-D (B, h, w, K) or tokens (B, T, C)" if len(self.input.shape) == 4 else "of the input's rank"
            raise UserError(f"layer {call.path!r} has output shape {call.shape}, not {kind}")
        return call

    def _candidate_hint(self, candidates: list[Call], show: int = 8) -> str:
        names = [c.path for c in candidates]
        if len(names) <= show:
            return f"the layers a map can be made at are: {', '.join(names)}"
        return (
            f"the last layers a map can be made at are: {', '.join(names[-show:])} ({len(names)} in all; "
            f"`python -m cam_mnist layers --model FILE` lists them)"
        )


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_ATTENTION = (keras.layers.MultiHeadAttention, keras.layers.Attention, keras.layers.AdditiveAttention)


def _sublayers(layer) -> list:
    """The layers ``layer`` calls in its own ``call``, nested ones included, attention layers' insides left out;
    none for a graph model (whose layers the flat graph already holds) or a plain layer."""
    if not isinstance(layer, keras.layers.Layer) or _is_graph_model(layer) or isinstance(layer, _ATTENTION):
        return []  # an operation (x[:, 0], ops.add ...), a graph model, or attention
    out = []
    for sub in layer._flatten_layers(include_self=False, recursive=False):
        out += [sub, *_sublayers(sub)]
    return out


@contextlib.contextmanager
def _hooks(wrappers: dict):
    """Each layer's ``call`` replaced by ``wrapper(call)`` for the duration (on the instance, so the class and
    every other instance are untouched); restored after, also when the call fails."""
    saved = {}
    try:
        for layer, wrapper in wrappers.items():
            saved[layer] = layer.__dict__.get("call")
            object.__setattr__(layer, "call", wrapper(layer.call))
        yield
    finally:
        for layer, previous in saved.items():
            if previous is None:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", previous)


def _guide(original):
    """A ReLU layer inside a composite one, with guided backpropagation's rule after it."""

    def call(*args, **kwargs):
        return positive_gradient(original(*args, **kwargs))

    return call


def _capture(values: dict, marker, replace=None):
    """A wrapper that puts a layer's first output of the run into ``values`` under ``marker`` (``replace`` of it
    where given, which is then what the layer returns)."""

    def wrap(original):
        def call(*args, **kwargs):
            out = original(*args, **kwargs)
            if id(marker) not in values:
                out = out if replace is None else replace(out)
                values[id(marker)] = out
            return out

        return call

    return wrap


def _output_names(model) -> list[str]:
    """The names of the model's outputs in the order of ``model.outputs``: a dict output's keys, else the names of
    the layers that make them."""
    graph = _graph_of(model)  # a Sequential's names are its inner functional model's
    struct = getattr(graph, "_outputs_struct", None)
    if isinstance(struct, dict):
        keys = {id(tensor): key for key, tensor in struct.items()}
        return [str(keys.get(id(x), i)) for i, x in enumerate(graph.outputs)]
    return [str(name) for name in graph.output_names]


def _graph_of(model):
    """The functional graph that runs ``model``: its own, or a Sequential's inner one (rebuilt when layers change)."""
    return model._functional if isinstance(model, keras.Sequential) else model


def _is_graph_model(op) -> bool:
    """A model whose layers form a graph we can step into: functional, or a built Sequential."""
    return isinstance(op, keras.Model) and hasattr(_graph_of(op), "_nodes_by_depth")


def _wrapped(model: keras.Model, input_shape: tuple | None) -> keras.Model:
    """A subclassed model as the one layer of a functional model, so that its layers are reached by hooks."""
    built = (getattr(model, "_build_shapes_dict", None) or {}).values()
    shape = tuple(input_shape) if input_shape else next((tuple(s)[1:] for s in built if s is not None), None)
    if shape is None:
        raise UserError(
            f"model {model.name!r} is a subclassed keras.Model that has not been called yet: call it on a batch "
            "once, or give input_shape=(H, W, C)"
        )
    inputs = keras.Input(shape)
    try:
        outputs = model(inputs)
    except Exception as e:  # its call may not run on a symbolic tensor (python control flow on values, numpy)
        raise UserError(
            f"model {model.name!r} (subclassed) cannot be called on a symbolic input ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:160]}): build the same layers as a functional model"
        ) from None
    return keras.Model(inputs, outputs, name=model.name)


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
