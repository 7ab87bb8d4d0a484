"""Fixtures of the serving tests: an exported model base path and servers
on loopback with free ports."""

import os

import numpy as np
import pytest
import tensorflow as tf

from monolith_tf.serving import export_version
from monolith_tf.serving.server import ModelServer
from test_export import trained_model

PROBE = {"user": np.array([1, 5, 10**12], np.int64),
         "tags": np.array([[1, 2], [3, 40], [7, 7]], np.int64)}
MAX_REQUEST_BYTES = 1 << 20
MAX_BATCH_SIZE = 256


@pytest.fixture(scope="module")
def model():
    return trained_model()


@pytest.fixture(scope="module")
def base_path(model, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("models"))
    export_version(model, base, version=1)
    return base


def start_server(base, **options):
    return ModelServer(base, model_name="ctr", port=0, rest_api_port=0, poll_seconds=0.2,
                       max_request_bytes=MAX_REQUEST_BYTES,
                       max_batch_size=MAX_BATCH_SIZE, **options).start()


@pytest.fixture(scope="module")
def server(base_path):
    """A server of version 1 that tests do not update."""
    server = start_server(base_path)
    yield server
    server.stop()


@pytest.fixture
def fresh_server(model, tmp_path):
    """A server of its own (tests that update rows, weights or versions)."""
    base = str(tmp_path / "models")
    export_version(model, base, version=1)
    server = start_server(base)
    yield server
    server.stop()


def reference(path):
    """The exported SavedModel at ``path`` loaded in this process: the
    predictions the server must reproduce."""
    return tf.saved_model.load(path)


def predict_in_process(loaded, inputs=PROBE):
    serve = loaded.signatures["serving_default"]
    return serve(**{k: tf.constant(v) for k, v in inputs.items()})["output"].numpy()


def version_dir(server, version=None):
    return os.path.join(server.manager.base_path, str(version or server.version))
