"""Dataset loaders into tf.data."""
