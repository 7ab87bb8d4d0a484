"""Fixtures of the serving tests: an exported model base path and servers
on loopback with free ports (helpers in serving_fixtures.py)."""

import pytest

from monolith_tf.export import export_version
from serving_fixtures import start_server
from test_export import trained_model


@pytest.fixture(scope="module")
def model():
    return trained_model()


@pytest.fixture(scope="module")
def base_path(model, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("models"))
    export_version(model, base, version=1)
    return base


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
