"""The Kafka backend of the log interface (``monolith_tf.streaming.log``),
through confluent-kafka. The config dict is passed to librdkafka as it is
(``bootstrap.servers``, security settings, ...), plus two of ours:
``monolith.timeout_s`` (default 10): the bounded wait for brokers before a
LogError, and ``monolith.create_topic``: a callable (topic, partitions) used
instead of the admin API (brokers without one, like the mock cluster).

Same semantics as the embedded log: partition = crc32(key) % partitions
(computed here, as librdkafka's "consistent" partitioner would), consumers
assigned partitions statically (``assignment=(member, members)``), offsets
committed synchronously and only by ``commit``.
"""

from monolith_tf.streaming.log import (LogError, PartitionRouter, Record, assigned_partitions,
                                       check_name)

_OURS = ("monolith.timeout_s", "monolith.create_topic")


def _kafka():
    try:
        import confluent_kafka
    except ImportError as error:
        raise LogError("the Kafka backend needs confluent-kafka (pip install "
                       "confluent-kafka)") from error
    return confluent_kafka


class KafkaLog:
    """A Kafka cluster behind the log interface."""

    def __init__(self, config):
        self._kafka = _kafka()
        self.config = {k: v for k, v in config.items() if k not in _OURS}
        self.timeout_s = float(config.get("monolith.timeout_s", 10.0))
        self._create_topic = config.get("monolith.create_topic")
        self._metadata_client = None

    def _client_config(self, **extra):
        # Bounded waits everywhere, so an unreachable broker is an error, not a hang.
        timeout_ms = int(self.timeout_s * 1000)
        # Unknown topics are errors, as in the embedded log (librdkafka's
        # producer would ask the broker to create them).
        return {"socket.timeout.ms": timeout_ms, "message.timeout.ms": timeout_ms,
                "allow.auto.create.topics": False, **self.config, **extra}

    def _metadata(self, topic=None):
        if self._metadata_client is None:
            self._metadata_client = self._kafka.Producer(self._client_config())
        try:
            return self._metadata_client.list_topics(topic, timeout=self.timeout_s)
        except self._kafka.KafkaException as error:
            raise LogError(f"cannot reach Kafka at {self.config.get('bootstrap.servers')} "
                           f"within {self.timeout_s:g} s: {error}") from error

    def create_topic(self, name, partitions=1):
        """Creates ``name`` with ``partitions`` partitions (admin API, or the
        configured creator); an existing topic must have the same count."""
        check_name(name, "topic name")
        if not isinstance(partitions, int) or partitions < 1:
            raise LogError(f"partitions must be a positive int, got {partitions!r}")
        existing = self.topics()
        if name in existing:
            if existing[name] != partitions:
                raise LogError(f"topic {name!r} exists with {existing[name]} partitions, "
                               f"not {partitions}")
            return
        if self._create_topic is not None:
            self._create_topic(name, partitions)
            return
        admin = self._kafka.admin.AdminClient(self._client_config())
        futures = admin.create_topics([self._kafka.admin.NewTopic(name, partitions)],
                                      request_timeout=self.timeout_s)
        try:
            futures[name].result(timeout=self.timeout_s)
        except (self._kafka.KafkaException, TimeoutError) as error:
            raise LogError(f"cannot create topic {name!r}: {error}") from error

    def topics(self):
        """``{topic: partitions}`` of the existing topics."""
        metadata = self._metadata()
        return {name: len(t.partitions) for name, t in metadata.topics.items()
                if t.error is None and not name.startswith("__")}

    def partitions(self, topic):
        """Partition count of ``topic``; LogError if it does not exist."""
        metadata = self._metadata(topic).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise LogError(f"unknown topic {topic!r} at {self.config.get('bootstrap.servers')}")
        return len(metadata.partitions)

    def producer(self):
        return KafkaProducer(self)

    def consumer(self, group, topics, assignment=None):
        return KafkaConsumer(self, group, topics, assignment)

    def end_offsets(self, topic):
        """``{partition: offset after the last record}``."""
        consumer = self._kafka.Consumer(self._client_config(**{"group.id": "monolith-offsets"}))
        try:
            return {p: consumer.get_watermark_offsets(
                self._kafka.TopicPartition(topic, p), timeout=self.timeout_s)[1]
                for p in range(self.partitions(topic))}
        finally:
            consumer.close()


class KafkaProducer:
    """Produces to Kafka; ``flush`` waits for every delivery (bounded) and
    raises LogError if any failed."""

    def __init__(self, log):
        self.log = log
        self._producer = log._kafka.Producer(log._client_config(
            **{"enable.idempotence": True}))
        self._router = PartitionRouter(log)
        self._errors = []

    def _delivered(self, error, message):
        if error is not None:
            self._errors.append(f"{message.topic()}: {error}")

    def produce(self, topic, value, key=None, timestamp_ms=None, partition=None):
        """Sends one record (asynchronously; ``flush`` makes sure); returns
        its partition."""
        partition = self._router.route(topic, value, key, partition)
        extra = {} if timestamp_ms is None else {"timestamp": int(timestamp_ms)}
        while True:
            try:
                self._producer.produce(topic, value, key, partition=partition,
                                       on_delivery=self._delivered, **extra)
                break
            except BufferError:
                self._producer.poll(0.1)  # local queue full: let deliveries drain
        self._producer.poll(0)
        return partition

    def flush(self):
        """Waits (at most the log's timeout) until every record is acknowledged."""
        remaining = self._producer.flush(self.log.timeout_s)
        if remaining:
            raise LogError(f"{remaining} records not acknowledged by Kafka within "
                           f"{self.log.timeout_s:g} s (broker unreachable?)")
        if self._errors:
            errors, self._errors = self._errors, []
            raise LogError(f"{len(errors)} records failed: {errors[0]}")

    def close(self):
        self.flush()


class KafkaConsumer:
    """Reads Kafka partitions assigned statically, for one consumer group."""

    def __init__(self, log, group, topics, assignment=None):
        partitions = assigned_partitions(log, group, topics, assignment)
        kafka = log._kafka
        self.log = log
        self._consumer = kafka.Consumer(log._client_config(**{
            "group.id": group, "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "enable.partition.eof": False}))
        committed = self._committed([kafka.TopicPartition(t, p) for t, p in partitions])
        self._positions = dict(committed)
        self._consumer.assign([kafka.TopicPartition(t, p, offset)
                               for (t, p), offset in committed.items()])

    def _committed(self, partitions):
        kafka = self.log._kafka
        try:
            found = self._consumer.committed(partitions, timeout=self.log.timeout_s)
        except kafka.KafkaException as error:
            raise LogError(f"cannot read committed offsets: {error}") from error
        return {(tp.topic, tp.partition): max(tp.offset, 0) for tp in found}

    def assignment(self):
        return sorted(self._positions)

    def poll(self, max_records=500, timeout=1.0):
        """Up to ``max_records`` records, waiting up to ``timeout`` seconds."""
        messages = self._consumer.consume(max_records, timeout)
        records = []
        for message in messages:
            if message.error() is not None:
                raise LogError(f"Kafka consume error: {message.error()}")
            key = (message.topic(), message.partition())
            records.append(Record(message.topic(), message.partition(), message.offset(),
                                  message.key(), message.value(), message.timestamp()[1]))
            self._positions[key] = message.offset() + 1
        return records

    def positions(self):
        return dict(self._positions)

    def caught_up(self):
        """Partitions whose position reached the high watermark of the last
        fetch (librdkafka's cached value: no broker round trip)."""
        kafka = self.log._kafka
        done = set()
        for (topic, partition), offset in self._positions.items():
            try:
                _, high = self._consumer.get_watermark_offsets(
                    kafka.TopicPartition(topic, partition), cached=True)
            except kafka.KafkaException:
                continue
            if high >= 0 and offset >= high:
                done.add((topic, partition))
        return done

    def commit(self):
        """Commits the positions after every record returned so far."""
        kafka = self.log._kafka
        offsets = [kafka.TopicPartition(t, p, offset)
                   for (t, p), offset in self._positions.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except kafka.KafkaException as error:
            raise LogError(f"commit failed: {error}") from error

    def committed(self):
        kafka = self.log._kafka
        return self._committed([kafka.TopicPartition(t, p) for t, p in self._positions])

    def seek(self, topic, partition, offset):
        if (topic, partition) not in self._positions:
            raise LogError(f"{topic}[{partition}] is not assigned to this consumer")
        kafka = self.log._kafka
        # Before the first fetch, seek() fails; re-assigning works in both cases.
        self._positions[(topic, partition)] = offset
        self._consumer.assign([kafka.TopicPartition(t, p, o)
                               for (t, p), o in self._positions.items()])

    def close(self):
        self._consumer.close()
