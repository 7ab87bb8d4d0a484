"""The log interface: topics of partitions of records, producers and
consumer groups, as every backend provides them.

``Log``, ``Producer`` and ``Consumer`` (``typing.Protocol``) list the methods
a backend implements; ``Record`` and ``LogError`` are what they return and
raise, and ``PartitionRouter``, ``check_name`` and ``assigned_partitions``
are the pieces backends share. Backends, one module each:
``monolith_tf.streaming.embedded_log`` (a directory on disk) and
``monolith_tf.streaming.kafka_log`` (confluent-kafka);
``monolith_tf.streaming.open_log(config)`` picks one.

Semantics shared by both: a record has a topic, a partition, an offset (0,
1, 2, ... within its partition), an optional key, a value (bytes, or None
for a tombstone: Kafka's null value) and a timestamp in milliseconds. A
producer sends a keyed record to partition ``crc32(key) % partitions``
(unkeyed ones round-robin), so records of one key stay in order. A consumer
of a group reads its partitions in offset order from the group's committed
offsets (from the beginning when none); ``commit`` stores the offsets after
the records it has returned, so a restarted consumer of that group resumes
after them (at-least-once: records returned but not committed are read
again).
"""

import collections
import itertools
import re
import zlib
from typing import Protocol, runtime_checkable

Record = collections.namedtuple("Record", "topic partition offset key value timestamp_ms")

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


class LogError(RuntimeError):
    """A log operation failed: unknown topic, unreachable broker, bad frame."""


@runtime_checkable
class Producer(Protocol):
    """Writes records to a log."""

    def produce(self, topic, value, key=None, timestamp_ms=None, partition=None):
        """Sends one record (``value`` bytes or None for a tombstone, ``key``
        bytes or None; ``timestamp_ms``
        defaults to now; ``partition`` defaults to crc32(key) % partitions,
        round-robin without a key); returns its partition."""

    def flush(self):
        """Returns once every record produced so far is durable or
        acknowledged; raises LogError if any was not."""

    def close(self):
        """Flushes and releases the producer."""


@runtime_checkable
class Consumer(Protocol):
    """Reads assigned partitions of a log for one consumer group."""

    def assignment(self):
        """The sorted (topic, partition) pairs this consumer reads."""

    def poll(self, max_records=500, timeout=1.0):
        """Up to ``max_records`` Records in offset order per partition,
        waiting up to ``timeout`` seconds for the first."""

    def positions(self):
        """``{(topic, partition): next offset to read}``."""

    def caught_up(self):
        """The (topic, partition) pairs whose every record had been returned
        as of the last poll (for event-time watermarks)."""

    def commit(self):
        """Stores, durably, the positions after every record returned so far."""

    def committed(self):
        """``{(topic, partition): committed offset}`` (0 when none)."""

    def seek(self, topic, partition, offset):
        """Reads ``(topic, partition)`` from ``offset`` next."""

    def close(self):
        """Releases the consumer (uncommitted positions are lost)."""


@runtime_checkable
class Log(Protocol):
    """Topics of partitions, and the producers and consumers of them."""

    def create_topic(self, name, partitions=1):
        """Creates ``name``; an existing topic must have the same count."""

    def topics(self):
        """``{topic: partitions}`` of the existing topics."""

    def partitions(self, topic):
        """Partition count of ``topic``; LogError if it does not exist."""

    def producer(self):
        """A new Producer of this log."""

    def consumer(self, group, topics, assignment=None):
        """A new Consumer of ``topics`` in consumer group ``group``; with
        ``assignment=(member, members)`` it reads partitions p with
        p % members == member."""

    def end_offsets(self, topic):
        """``{partition: offset after the last record}``."""

class PartitionRouter:
    """Validates a record's key and value and picks its partition, for the
    producers of every backend: the given one (checked), else crc32(key) %
    partitions, else round-robin. Partition counts are looked up once."""

    def __init__(self, log):
        self._log = log
        self._counter = itertools.count()
        self._partitions = {}

    def route(self, topic, value, key, partition):
        if value is not None and not isinstance(value, bytes):
            raise LogError(f"value must be bytes or None (a tombstone), got "
                           f"{type(value).__name__}")
        if key is not None and not isinstance(key, bytes):
            raise LogError(f"key must be bytes or None, got {type(key).__name__}")
        if topic not in self._partitions:
            self._partitions[topic] = self._log.partitions(topic)
        partitions = self._partitions[topic]
        if partition is None:
            if key is not None:
                return zlib.crc32(key) % partitions
            return next(self._counter) % partitions
        if not 0 <= partition < partitions:
            raise LogError(f"partition {partition} out of range for {topic!r} "
                           f"({partitions} partitions)")
        return partition


def check_name(name, what):
    """Raises LogError unless ``name`` is a valid topic or group name."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise LogError(f"{what} must match [A-Za-z0-9._-]{{1,200}}, got {name!r}")


def assigned_partitions(log, group, topics, assignment):
    """The (topic, partition) pairs a consumer of ``group`` reads: with
    ``assignment=(member, members)``, partition p goes to member p % members
    (static: no rebalancing); validates the names."""
    check_name(group, "group name")
    if isinstance(topics, str):
        topics = [topics]
    member, members = assignment or (0, 1)
    if not 0 <= member < members:
        raise LogError(f"assignment must be (member, members) with 0 <= member < members, "
                       f"got {assignment!r}")
    return [(topic, p) for topic in topics for p in range(log.partitions(topic))
            if p % members == member]
