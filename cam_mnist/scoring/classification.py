"""Classification scores of a model's probabilities: accuracy, loss, per-class accuracy, the confusion matrix, and
their several-digit forms. Arrays in, numbers out."""

from __future__ import annotations

import numpy as np

from cam_mnist.data.splits import Split


def predict_probs(predict, split: Split, n: int | None = None, batch: int = 500) -> np.ndarray:
    """Class probabilities (n, classes) for the first ``n`` images, in fixed-size batches."""
    n = len(split) if n is None else min(n, len(split))
    return np.concatenate([predict(split.float_images(slice(lo, min(lo + batch, n)))) for lo in range(0, n, batch)])


def classification_metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy, mean cross-entropy, per-class accuracy and the confusion matrix (rows true, columns predicted)."""
    n, classes = probs.shape
    predicted = probs.argmax(1)
    confusion = np.zeros((classes, classes), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    support = confusion.sum(1)
    return {
        "accuracy": float((predicted == labels).mean()),
        "loss": float(-np.log(np.clip(probs[np.arange(n), labels], 1e-12, None)).mean()),
        "per_class": np.divide(np.diag(confusion), support, out=np.full(classes, np.nan), where=support > 0),
        "confusion": confusion,
    }


def multilabel_metrics(probs: np.ndarray, labels: np.ndarray, head: str) -> dict:
    """Several digits per image. labels (N, K): the K distinct true classes of each image; the model names the K
    classes it rates most probable (:func:`named`). ``accuracy`` is the exact match (the named set is the true set),
    ``per_digit`` the fraction of true digits named, ``loss`` the loss the head trains on: the mean binary
    cross-entropy per class for ``sigmoid``, the cross-entropy against 1/K on each true class for ``softmax``."""
    n, classes = probs.shape
    truth = multi_hot(labels, classes)
    p = np.clip(probs.astype(np.float64), 1e-12, 1 - 1e-12)  # in float32, 1 - 1e-12 would round to 1: log(0)
    if head == "sigmoid":
        loss = -(truth * np.log(p) + (1 - truth) * np.log(1 - p)).mean()
    else:
        loss = -(truth / labels.shape[1] * np.log(p)).sum(1).mean()
    return {
        "accuracy": float((named(probs, labels.shape[1]) == truth.astype(bool)).all(1).mean()),
        "per_digit": float(detected(probs, labels).mean()),
        "loss": float(loss),
    }


def named(probs: np.ndarray, k: int) -> np.ndarray:
    """(N, classes) bool: the k classes of highest probability in each image. Every image holds exactly k digits
    (the data's ``digits``), so the model names k classes. No fixed probability threshold would fit both heads:
    a softmax over k-hot targets gives each present class about 1/k, a sigmoid about 1."""
    out = np.zeros(probs.shape, bool)
    np.put_along_axis(out, np.argsort(-probs, axis=1, kind="stable")[:, :k], True, 1)
    return out


def multi_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    """(N, K) class indices -> (N, classes) float32 with a 1 at each."""
    out = np.zeros((len(labels), classes), np.float32)
    np.put_along_axis(out, np.asarray(labels), 1.0, 1)
    return out


def score(probs: np.ndarray, labels: np.ndarray, head: str) -> dict:
    """The metrics that fit the labels: one class per image (N,) or several (N, K), with the loss ``head`` trains on."""
    return classification_metrics(probs, labels) if labels.ndim == 1 else multilabel_metrics(probs, labels, head)


def detected(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per true digit, whether the model names its class: (N,) argmax == label for one digit per image,
    (N, K) the class among the K most probable (:func:`named`) for K digits."""
    if labels.ndim == 1:
        return probs.argmax(1) == labels
    return np.take_along_axis(named(probs, labels.shape[1]), labels, 1)
