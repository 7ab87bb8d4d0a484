"""tf.data adapter: an unbounded dataset of parsed, batched joined examples
from the examples topic, resumable at the offsets the training worker saves.

    stream = ExampleStream(log, joined_feature_spec(["click"]), batch_size=256,
                           label="label/click")
    TrainingWorker(model, "/models/ctr").train(stream, max_seconds=3600)

Each batch also carries, under ``POSITION_KEY`` in its features, the offset
after its last record in every partition of the topic (int64 [partitions],
in ``stream.partitions`` order). The worker removes it before the model
sees the batch and saves it with each sparse checkpoint, so a restarted
worker reads on exactly after the last batch it trained: the checkpoint,
not the consumer group, is the source of truth (the group's offsets are not
used or committed here).
"""

import time

import tensorflow as tf

POSITION_KEY = "__stream_position"


class ExampleStream:
    """Batches of joined examples from ``topic`` of ``log`` (see module doc).

    Args:
      log: an EmbeddedLog or KafkaLog.
      spec: ``tf.io.parse_example`` spec (``records.joined_feature_spec``).
      batch_size: examples per batch; a batch is emitted early after
        ``max_wait`` seconds with at least one example (a quiet stream still
        trains).
      label: feature name moved out of the features as the label (None:
        batches are feature dicts only, for models that find their labels).
      topic / group: where examples come from; the group only names the
        consumer.
      idle_timeout: end the dataset after this many seconds without a new
        example (None: wait forever). A worker blocked on an empty stream
        handles SIGTERM only once a batch arrives or the stream ends, so
        jobs that must stop promptly when traffic stops set this.
    """

    def __init__(self, log, spec, batch_size, label=None, topic="examples",
                 group="trainer", max_wait=1.0, idle_timeout=None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if label is not None and label not in spec:
            raise ValueError(f"label {label!r} is not in the parse spec")
        self.log = log
        self.spec = dict(spec)
        self.batch_size = int(batch_size)
        self.label = label
        self.topic = topic
        self.group = group
        self.max_wait = float(max_wait)
        self.idle_timeout = idle_timeout
        self.partitions = [(topic, p) for p in range(log.partitions(topic))]

    def _batches(self, start):
        consumer = self.log.consumer(self.group, [self.topic])
        try:
            for (topic, partition), offset in zip(self.partitions, start):
                consumer.seek(topic, partition, int(offset))
            idle_since = time.monotonic()
            while True:
                records = consumer.poll(max_records=self.batch_size, timeout=self.max_wait)
                while records and len(records) < self.batch_size:
                    more = consumer.poll(max_records=self.batch_size - len(records),
                                         timeout=self.max_wait)
                    if not more:
                        break
                    records.extend(more)
                if not records:
                    if (self.idle_timeout is not None
                            and time.monotonic() - idle_since >= self.idle_timeout):
                        return
                    continue
                idle_since = time.monotonic()
                positions = consumer.positions()
                yield ([r.value for r in records],
                       [positions[key] for key in self.partitions])
        finally:
            consumer.close()

    def dataset(self, position=None):
        """The unbounded ``tf.data.Dataset``, starting at ``position`` (a list
        of offsets in ``partitions`` order; None: the beginning)."""
        start = list(position) if position is not None else [0] * len(self.partitions)
        if len(start) != len(self.partitions):
            raise ValueError(f"position has {len(start)} offsets, the topic "
                             f"{len(self.partitions)} partitions")
        raw = tf.data.Dataset.from_generator(
            lambda: self._batches(start),
            output_signature=(tf.TensorSpec([None], tf.string),
                              tf.TensorSpec([len(self.partitions)], tf.int64)))

        def parse(serialized, positions):
            features = tf.io.parse_example(serialized, self.spec)
            features[POSITION_KEY] = positions
            if self.label is None:
                return features
            label = features.pop(self.label)
            return features, label

        return raw.map(parse).prefetch(2)
