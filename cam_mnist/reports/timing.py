"""Timing that holds on a machine whose speed drifts: the fastest of several calls, two functions timed in turn
batch by batch, a method beside the model's own forward pass. Backend-neutral (``make bench`` runs it under each)."""

from __future__ import annotations

import time

import numpy as np

from cam_mnist.core import backend
from cam_mnist.maps import get_method


def best_of(fn, repeats: int = 3) -> float:
    """Fastest of ``repeats`` timed calls (seconds), after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times)


def forward_pass(model):
    """The model's forward pass on one batch of numpy images, to numpy, in the backend's compiled form (that of
    the maps): what every method's maps start with."""
    graph = backend.compiled(lambda x: model(x, training=False), model.variables)
    return lambda x: backend.to_numpy(graph(x))


def paired_rates(first, second, batches: list, repeats: int = 3) -> tuple[float, float]:
    """Images per second of two functions of one batch, timed in turn on each batch (which goes first alternates),
    each batch's time the fastest of ``repeats``. Drift of the machine's speed then falls on both alike, and their
    ratio is what one run can resolve."""
    for fn in (first, second):
        fn(batches[0])  # warm-up: traces
    best = np.full((2, len(batches)), np.inf)
    for r in range(repeats):
        for i, batch in enumerate(batches):
            order = (0, 1) if (r + i) % 2 == 0 else (1, 0)
            for j in order:
                began = time.perf_counter()
                (first, second)[j](batch)
                best[j, i] = min(best[j, i], time.perf_counter() - began)
    images = sum(len(b) for b in batches)
    return images / best[0].sum(), images / best[1].sum()


def beside_the_forward_pass(model, methods, images, batch: int, label: str) -> list[dict]:
    """Each method's maps/s timed in turn with ``model``'s own forward pass, batch by batch (:func:`paired_rates`),
    at its default layer: a row each."""
    one_pass, rows = forward_pass(model), []
    for name in methods:
        explainer = get_method(model, name, batch_size=batch)
        beside, rate = paired_rates(
            one_pass, explainer, [images[lo : lo + batch] for lo in range(0, len(images), batch)]
        )
        rows.append(
            {
                "method": name,
                "layer": explainer.layer.path,
                "images": len(images),
                "maps_per_s": round(rate, 1),
                "forward_beside": round(beside, 1),
                "share_of_forward": round(rate / beside, 3),
            }
        )
        print(f"  {label} {name:10s} {rate:8.1f} maps/s, {rate / beside:.0%} of its forward pass", flush=True)
    return rows
