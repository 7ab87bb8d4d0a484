"""Fixtures of the streaming tests: the log under test, embedded or Kafka
(librdkafka's mock cluster in a subprocess)."""

import importlib.util
import os

import pytest

from monolith_tf.streaming import open_log

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_mock_kafka():
    """tools/mock_kafka.py, loaded from its path: tools/ is not a package on
    the tests' import path (the repository root is kept off it so that runs
    which put another build first, like `make asan`, get that build)."""
    spec = importlib.util.spec_from_file_location(
        "mock_kafka", os.path.join(REPO, "tools", "mock_kafka.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MockBrokerProcess = _load_mock_kafka().MockBrokerProcess


@pytest.fixture
def mock_broker():
    broker = MockBrokerProcess()
    yield broker
    broker.stop()


@pytest.fixture(params=["embedded", "kafka"])
def log(request, tmp_path):
    if request.param == "embedded":
        return open_log({"path": str(tmp_path / "log")})
    return open_log(request.getfixturevalue("mock_broker").config())


