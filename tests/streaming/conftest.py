"""Fixtures of the streaming tests: the log under test, embedded or Kafka
(librdkafka's mock cluster in a subprocess)."""

import os
import subprocess
import sys

import pytest

from monolith_tf.streaming.log import LogError, open_log

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MOCK_KAFKA = os.path.join(REPO, "monolith_tf", "streaming", "mock_kafka.py")


class MockBroker:
    """librdkafka's mock cluster in a subprocess (a real Kafka-protocol
    broker); topics are created through its stdin."""

    def __init__(self):
        self.process = subprocess.Popen([sys.executable, MOCK_KAFKA], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        text=True)
        line = self.process.stdout.readline().strip()
        assert line.startswith("bootstrap.servers="), line
        self.bootstrap_servers = line.split("=", 1)[1]

    def create_topic(self, topic, partitions):
        self.process.stdin.write(f"create {topic} {partitions}\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline().strip()
        if answer != "ok":
            raise LogError(f"mock broker: {answer}")

    def stop(self):
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture
def mock_broker():
    broker = MockBroker()
    yield broker
    broker.stop()


@pytest.fixture(params=["embedded", "kafka"])
def log(request, tmp_path):
    if request.param == "embedded":
        return open_log({"path": str(tmp_path / "log")})
    broker = request.getfixturevalue("mock_broker")
    return open_log({"bootstrap.servers": broker.bootstrap_servers,
                     "monolith.create_topic": broker.create_topic, "monolith.timeout_s": 10})


