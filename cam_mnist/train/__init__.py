"""Training: the trainer, its checkpoints, tf.distribute, TensorBoard events, and the callback for any model."""
