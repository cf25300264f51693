"""Training terms on the CAM itself, from labels alone: the entropy of the true class's map, the local gate's spread.

GAP rewards a map for firing wherever a cell sees its class, so a cell whose receptive field only grazes a stroke
fires too: a 1's map is three cells wide around a stroke one cell wide, and its box fails IoU 0.5 (docs/
experiments.md, Part 7). Read as a distribution over the map's cells, a map spread wide has a high entropy, one on
the cells that see the digit best a low one; adding ``weight x entropy`` to the loss asks the network for the second
while the labels still ask it to name the class. No box, mask or position enters the term.
"""

from __future__ import annotations

EPS = 1e-12  # keeps log and the division finite on an all-zero map (whose entropy then counts as 0)


def cam_entropy(features, kernel, labels):
    """Mean over the batch of the entropy of each image's true-class CAM.

    ``features``: (B, h, w, K) the CAM layer's activations A^k; ``kernel``: (K, C) the CAM weights w_k^c;
    ``labels``: (B,) the true classes. The map is M = ReLU(sum_k w_k^y A^k) (CAM paper eq. 2; with the ``min``
    gauge every w >= 0 and the ReLU changes nothing), p_ij = M_ij / sum M, entropy = -sum_ij p_ij log p_ij:
    log(h*w) for a flat map, 0 for a single cell."""
    import tensorflow as tf

    weights = tf.gather(tf.transpose(kernel), labels)  # (B, K): w^y of each image's class
    maps = tf.nn.relu(tf.einsum("bhwk,bk->bhw", tf.cast(features, tf.float32), weights))
    maps = tf.reshape(maps, (tf.shape(maps)[0], -1))
    p = maps / (tf.reduce_sum(maps, axis=1, keepdims=True) + EPS)
    return tf.reduce_mean(-tf.reduce_sum(p * tf.math.log(p + EPS), axis=1))


def gate_spread(gates):
    """Mean over the batch and the channels of each channel's mean gate over its largest: 1 for a gate open alike on
    every cell, near the share of open cells for one that opens on a few.

    ``gates``: (B, h, w, K) the local gate g^k in (0, 1) (model.py). The classification loss leaves a gate open on
    the cells beside a thin stroke, whose stack outputs see the stroke too; this term asks every channel to open only
    where it is needed. Divided by the channel's largest gate, it cannot be lowered by shrinking every gate alike
    (which the CAM weights would undo), only by closing some cells more than others."""
    import tensorflow as tf

    gates = tf.cast(gates, tf.float32)
    spread = tf.reduce_mean(gates, axis=(1, 2)) / (tf.reduce_max(gates, axis=(1, 2)) + EPS)  # (B, K)
    return tf.reduce_mean(spread, axis=1)  # (B,): one term per image, as the loss is
