"""A training term on the CAM itself, from labels alone: the entropy of the true class's map.

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
