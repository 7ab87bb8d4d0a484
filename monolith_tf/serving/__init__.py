"""The model server alone: TensorFlow Serving's gRPC and REST APIs over a
model base path, taking row and dense updates while it serves.

``server`` (``ModelServer``), ``model_manager`` (versions and their
switches), ``servable`` (one loaded version, its updates and dense slots),
``grpc_api``, ``rest_api``, ``json_format``, ``batching``, ``metrics``,
``errors``. The server imports neither the Keras layers nor the
checkpointers: it reads exports through ``monolith_tf.export_format``. The
export writer is ``monolith_tf.export``; parameter sync is
``monolith_tf.sync``.
"""
