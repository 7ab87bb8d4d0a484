"""A Kafka-protocol broker for tests and demos: librdkafka's mock cluster,
which ships inside the confluent-kafka wheel, started through ctypes.

    python tools/mock_kafka.py [--brokers 1]

prints ``bootstrap.servers=<host:port,...>`` and then serves until stdin
closes, reading commands from stdin, one per line:
  ``create <topic> <partitions>``   creates a topic, answers ``ok`` or ``error ...``
  ``down <broker>`` / ``up <broker>`` takes a broker (1..n) down or back up
The mock has no topic admin API of its own, keeps nothing on disk, and drops
old messages past about 5 MiB per partition: enough for tests, not for
production.

It lives in tools/, not in the package: it is no part of the library's API
(nothing in monolith_tf needs it), it drives librdkafka's private test hooks
through ctypes, and an installed monolith_tf should not offer a broker that
loses data. Tests and the joiner bench import it from the repository root.
"""

import argparse
import ctypes
import glob
import os
import subprocess
import sys
import threading

_PRODUCER = 0


def _librdkafka():
    import confluent_kafka

    package = os.path.dirname(confluent_kafka.__file__)
    candidates = sorted(glob.glob(os.path.join(package + ".libs", "librdkafka*.so*")))
    if not candidates:
        raise RuntimeError(f"librdkafka not found beside {package} (a confluent-kafka wheel "
                           "bundles it; a source build links the system's)")
    lib = ctypes.CDLL(candidates[0])
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_mock_cluster_new.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_mock_cluster_new.restype = ctypes.c_void_p
    lib.rd_kafka_mock_cluster_bootstraps.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_mock_cluster_bootstraps.restype = ctypes.c_char_p
    lib.rd_kafka_mock_topic_create.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                               ctypes.c_int]
    lib.rd_kafka_mock_topic_create.restype = ctypes.c_int
    lib.rd_kafka_mock_broker_set_down.argtypes = [ctypes.c_void_p, ctypes.c_int32]
    lib.rd_kafka_mock_broker_set_down.restype = ctypes.c_int
    lib.rd_kafka_mock_broker_set_up.argtypes = [ctypes.c_void_p, ctypes.c_int32]
    lib.rd_kafka_mock_broker_set_up.restype = ctypes.c_int
    return lib


class MockCluster:
    """An in-process mock cluster of ``brokers`` brokers."""

    def __init__(self, brokers=1):
        self._lib = _librdkafka()
        error = ctypes.create_string_buffer(512)
        # The cluster lives in a client instance's threads.
        self._client = self._lib.rd_kafka_new(_PRODUCER, self._lib.rd_kafka_conf_new(), error,
                                              len(error))
        if not self._client:
            raise RuntimeError(f"rd_kafka_new failed: {error.value.decode()}")
        self._cluster = self._lib.rd_kafka_mock_cluster_new(self._client, brokers)
        if not self._cluster:
            raise RuntimeError("rd_kafka_mock_cluster_new failed")
        self.bootstrap_servers = self._lib.rd_kafka_mock_cluster_bootstraps(
            self._cluster).decode()

    def create_topic(self, topic, partitions):
        """Creates ``topic``; raises RuntimeError with librdkafka's code."""
        code = self._lib.rd_kafka_mock_topic_create(self._cluster, topic.encode(),
                                                    int(partitions), 1)
        if code != 0:
            raise RuntimeError(f"mock topic {topic!r}: librdkafka error code {code}")


    def set_broker(self, broker_id, up):
        """Takes broker ``broker_id`` (1..brokers) down (closing its
        connections, refusing new ones) or brings it back up."""
        setter = self._lib.rd_kafka_mock_broker_set_up if up else \
            self._lib.rd_kafka_mock_broker_set_down
        code = setter(self._cluster, int(broker_id))
        if code != 0:
            raise RuntimeError(f"mock broker {broker_id}: librdkafka error code {code}")


class MockBrokerProcess:
    """This module run as a subprocess (so the caller's process holds no
    librdkafka cluster threads), with a client for its stdin protocol.
    ``config()`` is an ``open_log`` config that creates topics through it."""

    def __init__(self, brokers=1):
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--brokers", str(brokers)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.process.stdout.readline().strip()
        if not line.startswith("bootstrap.servers="):
            self.process.kill()
            raise RuntimeError(f"mock broker did not start: {line!r}")
        self.bootstrap_servers = line.split("=", 1)[1]
        self._lock = threading.Lock()

    def _command(self, line):
        # One command and its answer at a time: outage timers call in from
        # other threads.
        with self._lock:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
            answer = self.process.stdout.readline().strip()
        if answer != "ok":
            raise RuntimeError(f"mock broker: {answer}")

    def create_topic(self, topic, partitions):
        """Creates ``topic``; raises RuntimeError with the broker's answer."""
        self._command(f"create {topic} {partitions}")

    def set_broker(self, broker_id, up):
        """Takes a broker of the mock down or up (an outage, for fault tests)."""
        self._command(f"{'up' if up else 'down'} {int(broker_id)}")

    def config(self, timeout_s=10):
        return {"bootstrap.servers": self.bootstrap_servers,
                "monolith.create_topic": self.create_topic, "monolith.timeout_s": timeout_s}

    def stop(self):
        self.process.stdin.close()
        self.process.wait(timeout=30)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--brokers", type=int, default=1)
    args = parser.parse_args()
    cluster = MockCluster(args.brokers)
    print(f"bootstrap.servers={cluster.bootstrap_servers}", flush=True)
    for line in sys.stdin:
        words = line.split()
        if len(words) == 3 and words[0] == "create":
            try:
                cluster.create_topic(words[1], int(words[2]))
                print("ok", flush=True)
            except (RuntimeError, ValueError) as error:
                print(f"error {error}", flush=True)
        elif len(words) == 2 and words[0] in ("down", "up"):
            try:
                cluster.set_broker(int(words[1]), up=words[0] == "up")
                print("ok", flush=True)
            except (RuntimeError, ValueError) as error:
                print(f"error {error}", flush=True)
        elif words:
            print(f"error unknown command {line.strip()!r}", flush=True)


if __name__ == "__main__":
    main()
