"""Everything the maps do that differs between Keras 3's backends, in one place; every other module of
:mod:`cam_mnist.maps` is written in ``keras.ops`` and runs on each.

The Keras maintainers keep gradients backend-specific (keras issues #19220, #20760), so this module owns them:

============  ======================================  ============================  ==============================
backend       a map's compiled form (:func:`compiled`)  gradients (:func:`gradient`)  the guided rule
============  ======================================  ============================  ==============================
tensorflow    ``tf.function``                         ``tf.GradientTape``           ``tf.custom_gradient``
jax           ``jax.jit`` over a stateless call       ``jax.value_and_grad``        ``jax.custom_vjp``
torch         eager under ``torch.no_grad``           ``torch.autograd.grad``       ``torch.autograd.Function``
============  ======================================  ============================  ==============================

On JAX the model's variables are arguments of the compiled function (read through ``keras.StatelessScope``), not
constants baked into it, so a map follows the weights as they change during ``model.fit`` without recompiling.
"""

from __future__ import annotations

import contextlib
import functools

import keras
import numpy as np

NAME = keras.backend.backend()  # "tensorflow", "jax" or "torch": fixed for the process by KERAS_BACKEND
SUPPORTED = ("tensorflow", "jax", "torch")


def compiled(fn, variables=()):
    """``fn`` (tensors -> tensors) in the backend's compiled form, taking numpy arrays; ``variables``: the Keras
    variables it reads (on JAX passed as arguments, so that the compiled function sees their current values)."""
    if NAME == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, reduce_retracing=True)
    if NAME == "jax":
        import jax

        variables = list(variables)

        def stateless(values, *args):
            with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
                return fn(*args)

        jitted = jax.jit(stateless)
        return lambda *args: jitted([v.value for v in variables], *args)
    import torch

    @functools.wraps(fn)
    def eager(*args):
        with torch.no_grad():  # what needs a gradient asks for it (gradient); nothing else records a graph
            return fn(*(keras.ops.convert_to_tensor(a) for a in args))

    return eager


def to_numpy(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


# -------------------------------------------------------------------------------------------------------- gradients
def gradient(fn, x):
    """d fn(x)[0] / dx and fn(x)[1]: ``fn`` returns (a scalar to differentiate, anything else to keep)."""
    if NAME == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape(watch_accessed_variables=False) as tape:  # of x alone, not of the weights
            tape.watch(x)
            total, kept = fn(x)
        return tape.gradient(total, x), kept
    if NAME == "jax":
        import jax

        (_, kept), grad = jax.value_and_grad(fn, has_aux=True)(x)
        return grad, kept
    import torch

    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        total, kept = fn(leaf)
        (grad,) = torch.autograd.grad(total, leaf)  # of x alone: the weights' gradients are never formed
    return grad, _detached(kept)


def gradient_inside(fn, x):
    """The gradient of a scalar with respect to a tensor computed *inside* ``fn``, a layer's output, and what ``fn``
    keeps. ``fn(x, probe)`` applies ``probe`` to that tensor where it is made and returns (scalar, kept)."""
    grads, kept = gradients_inside(fn, x)
    return grads[0], kept


def gradients_inside(fn, x):
    """[the gradient of a scalar with respect to each tensor that ``fn`` probes], and what ``fn`` keeps.
    ``fn(x, probe)`` applies ``probe`` to each tensor (layers' outputs, x itself) where it is made, before anything
    reads it, and returns (scalar, kept). Several probes: FullGrad's every bias layer at once.

    TensorFlow and PyTorch differentiate with respect to any tensor of the recorded graph, so ``probe`` marks it
    (watched; a leaf). JAX differentiates functions of their arguments only, so there the scalar is differentiated
    with respect to zeros added to the tensors, whose shapes are found by tracing ``fn`` once without computing it."""
    if NAME == "tensorflow":
        import tensorflow as tf

        marked = []
        with tf.GradientTape(watch_accessed_variables=False) as tape:  # from the probes on, not the layers before

            def probe(v):
                tape.watch(v)
                marked.append(v)
                return v

            total, kept = fn(x, probe)
        return tape.gradient(total, marked), kept
    if NAME == "jax":
        import jax

        specs = []
        jax.eval_shape(lambda x: fn(x, lambda v: specs.append(jax.ShapeDtypeStruct(v.shape, v.dtype)) or v), x)
        zeros = [jax.numpy.zeros(s.shape, s.dtype) for s in specs]

        def added(deltas):
            left = iter(deltas)
            return fn(x, lambda v: v + next(left))

        (_, kept), grads = jax.value_and_grad(added, has_aux=True)(zeros)
        return list(grads), kept
    import torch

    marked = []

    def probe(v):  # from the first probe on the forward pass records its graph: the layers before run without one
        if not marked:
            torch.set_grad_enabled(True)
            v = v.detach().requires_grad_(True)
        marked.append(v)
        return v

    with torch.no_grad():  # restores the caller's grad mode on leaving
        total, kept = fn(x, probe)
        grads = torch.autograd.grad(total, marked)
    return list(grads), _detached(kept)


def gradient_and_hessian_product_inside(fn, x):
    """For a scalar y of a tensor A computed inside ``fn`` (probed as in :func:`gradient_inside`): dy/dA, the
    Hessian-vector product (d^2 y / dA^2) A (ShapleyCAM's second-order term) and what ``fn`` keeps, in which
    ``fn`` must keep A's value first: (A, ...)."""
    if NAME == "tensorflow":
        import tensorflow as tf

        marked = []
        with _moments_differentiable_twice(), tf.GradientTape(watch_accessed_variables=False) as outer:
            with tf.GradientTape(watch_accessed_variables=False) as inner:

                def probe(v):
                    inner.watch(v), outer.watch(v)
                    marked.append(v)
                    return v

                total, kept = fn(x, probe)
            grad = inner.gradient(total, marked[0])
        product = outer.gradient(grad, marked[0], output_gradients=tf.stop_gradient(marked[0]))
        return grad, tf.zeros_like(grad) if product is None else product, kept  # None: y linear in A
    if NAME == "jax":
        import jax

        specs = []
        jax.eval_shape(lambda x: fn(x, lambda v: specs.append(jax.ShapeDtypeStruct(v.shape, v.dtype)) or v), x)
        zero = jax.numpy.zeros(specs[0].shape, specs[0].dtype)
        grad_of = jax.grad(lambda d: fn(x, lambda v: v + d), has_aux=True)
        grad, kept = grad_of(zero)
        a = jax.lax.stop_gradient(kept[0])
        _, product = jax.jvp(lambda d: grad_of(d)[0], (zero,), (a,))  # H a: the Hessian is symmetric
        return grad, product, kept
    import torch

    marked = []

    def probe(v):
        torch.set_grad_enabled(True)
        marked.append(v.detach().requires_grad_(True))
        return marked[-1]

    from torch.nn.attention import SDPBackend, sdpa_kernel

    # Attention in its plain form: PyTorch's fused CPU kernel has no second derivative (a vision transformer's).
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        total, kept = fn(x, probe)
        (grad,) = torch.autograd.grad(total, marked[0], create_graph=True)
        (product,) = torch.autograd.grad(grad, marked[0], grad_outputs=marked[0].detach(), allow_unused=True)
    product = torch.zeros_like(grad) if product is None else product  # y linear in A: no second derivative
    return grad.detach(), product, _detached(kept)


@contextlib.contextmanager
def _moments_differentiable_twice():
    """TensorFlow's ``tf.nn.moments``, which Keras' layer normalization calls, takes the variance around the mean with
    the mean's gradient stopped: exact for first derivatives (the deviations sum to zero) but not for second ones,
    which lose a term (a ViT's Hessian-vector product was 2% off). Inside, Keras computes moments without the stop."""
    import tensorflow as tf
    from keras.src.backend.tensorflow import nn

    def moments(x, axes, keepdims):
        mean = tf.reduce_mean(x, axes, keepdims=True)
        variance = tf.reduce_mean(tf.square(x - mean), axes, keepdims=True)
        return (mean, variance) if keepdims else (tf.squeeze(mean, axes), tf.squeeze(variance, axes))

    original, nn._compute_moments = nn._compute_moments, moments
    try:
        yield
    finally:
        nn._compute_moments = original


def _detached(tree):
    return keras.tree.map_structure(lambda t: t.detach() if hasattr(t, "detach") else t, tree)


# ----------------------------------------------------------------------------------------------- the guided rule
def positive_gradient(x):
    """Identity whose backward pass lets only positive gradients through. After a ReLU, whose own backward pass
    keeps the gradient where its input is positive, this is guided backpropagation's rule (Springenberg et al.)."""
    return _positive_gradient()(x)


@functools.cache
def _positive_gradient():
    if NAME == "tensorflow":
        import tensorflow as tf

        @tf.custom_gradient
        def rule(x):
            return tf.identity(x), lambda dy: dy * tf.cast(dy > 0, dy.dtype)

        return rule
    if NAME == "jax":
        import jax

        @jax.custom_vjp
        def rule(x):
            return x

        rule.defvjp(lambda x: (x, None), lambda _, dy: (dy * (dy > 0).astype(dy.dtype),))
        return rule
    import torch

    class Rule(torch.autograd.Function):
        @staticmethod
        def forward(x):
            return x.view_as(x)

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, dy):
            return dy * (dy > 0).to(dy.dtype)

    return Rule.apply


# ------------------------------------------------------------------------------------------- bounded memory loops
def sequential_map(fn, rows):
    """``fn`` on each row of ``rows`` in turn, the results stacked: one call at a time, so that memory holds one
    row's intermediates whatever the number of rows (``keras.ops.map`` on TensorFlow runs ten at once)."""
    if NAME == "tensorflow":
        import tensorflow as tf

        return tf.map_fn(fn, rows, fn_output_signature=tf.float32, parallel_iterations=1)
    if NAME == "jax":
        import jax

        return jax.lax.map(fn, rows)
    import torch

    return torch.stack([fn(row) for row in rows])
