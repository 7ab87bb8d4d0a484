"""Helpers of the serving tests (a module with a unique name: every test
directory has a conftest.py, so ``from conftest import`` is ambiguous)."""

import os

import numpy as np
import tensorflow as tf

from monolith_tf.serving.server import ModelServer

PROBE = {"user": np.array([1, 5, 10**12], np.int64),
         "tags": np.array([[1, 2], [3, 40], [7, 7]], np.int64)}
MAX_REQUEST_BYTES = 1 << 20
MAX_BATCH_SIZE = 256


def start_server(base, **options):
    return ModelServer(base, model_name="ctr", port=0, rest_api_port=0, poll_seconds=0.2,
                       max_request_bytes=MAX_REQUEST_BYTES,
                       max_batch_size=MAX_BATCH_SIZE, **options).start()


def reference(path):
    """The exported SavedModel at ``path`` loaded in this process: the
    predictions the server must reproduce."""
    return tf.saved_model.load(path)


def predict_in_process(loaded, inputs=PROBE):
    serve = loaded.signatures["serving_default"]
    return serve(**{k: tf.constant(v) for k, v in inputs.items()})["output"].numpy()


def version_dir(server, version=None):
    return os.path.join(server.manager.base_path, str(version or server.version))
