"""Fixtures of the streaming tests: the log under test, embedded or Kafka
(librdkafka's mock cluster in a subprocess)."""

import pytest

from monolith_tf.streaming import open_log
from tools.mock_kafka import MockBrokerProcess


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


