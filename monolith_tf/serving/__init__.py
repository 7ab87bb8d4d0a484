"""Serving: the stock-op SavedModel export and its update signatures, and a
model server that speaks TensorFlow Serving's gRPC and REST APIs.

``export_saved_model`` (``monolith_tf.serving.export``) writes a SavedModel
that unmodified TensorFlow Serving loads, with ``upsert``, ``remove`` and
``assign_dense`` signatures that apply fresh rows and dense weights to a
loaded model without a reload; ``export_version`` writes one version of a
model base path. ``ModelServer`` (``monolith_tf.serving.server``) serves a
base path and takes updates while it serves.
"""

from monolith_tf.serving.export import (export_saved_model, export_version, list_versions,
                                        read_metadata, read_sync_state, table_names)

__all__ = ["export_saved_model", "export_version", "list_versions", "read_metadata",
           "read_sync_state", "table_names"]
