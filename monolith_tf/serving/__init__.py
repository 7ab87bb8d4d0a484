"""Serving: the stock-op SavedModel export and its update signatures.

``export_saved_model`` (``monolith_tf.serving.export``) writes a SavedModel
that unmodified TensorFlow Serving loads, with ``upsert`` and ``remove``
signatures that apply fresh sparse rows to a loaded model without a reload.
"""

from monolith_tf.serving.export import export_saved_model, table_names

__all__ = ["export_saved_model", "table_names"]
