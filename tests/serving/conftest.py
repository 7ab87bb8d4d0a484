"""Fixtures of the serving tests: an exported model base path and servers
on loopback with free ports (helpers in serving_fixtures.py). The model is
trained and exported once per session (per pytest-xdist worker); a test that
changes what it serves gets a copy of the export."""

import os
import shutil

import pytest

from monolith_tf.export import export_version
from serving_fixtures import start_server
from test_export import trained_model


@pytest.fixture(scope="session")
def model():
    """The trained model; tests that change its weights restore them."""
    return trained_model()


@pytest.fixture(scope="session")
def base_path(model, tmp_path_factory):
    """A base path holding version 1 of ``model``; read only."""
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
def fresh_server(base_path, tmp_path):
    """A server of its own, on a copy of the export (tests that update rows,
    weights or versions)."""
    base = str(tmp_path / "models")
    shutil.copytree(base_path, base)
    assert os.listdir(base) == ["1"]
    server = start_server(base)
    yield server
    server.stop()
