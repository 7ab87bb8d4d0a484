"""tf.data adapter: an unbounded stream of parsed, batched joined examples
from the examples topic, resumable at the offsets the training worker saves.

    stream = ExampleStream(log, joined_feature_spec(["click"]), batch_size=256,
                           label="label/click")
    TrainingWorker(model, "/models/ctr").train(stream, max_seconds=3600)

``stream.dataset(position)`` is one segment of the stream: a tf.data
dataset of what the log holds and receives while it is read, which ends
once no record arrives for ``max_wait`` seconds. The worker reads segment
after segment from the saved offsets, checking its stops (budgets, SIGTERM)
in between, until ``idle_timeout`` seconds pass without data (None: never).
Ending quietly matters: a tf.data iterator cannot be dropped while its
generator waits for data, so a dataset that never ended would hang the
process that stops reading it.

An ExampleStream is a ``monolith_tf.data_source.DataSource``: it keeps the
offsets after the last batch the worker trained (``position()``) and starts
the next segment there. Each batch carries, under ``POSITION_KEY`` in its
features, the offset after its last record in every partition of the topic
(int64 [partitions], in ``stream.partitions`` order). The worker removes it before the model
sees the batch and saves it with each sparse checkpoint, so a restarted
worker reads on exactly after the last batch it trained: the checkpoint,
not the consumer group, is the source of truth (the group's offsets are not
used or committed here).
"""

import time

import tensorflow as tf

from monolith_tf.data_source import POSITION_KEY
from monolith_tf.topics import EXAMPLES_TOPIC


class ExampleStream:
    """Batches of joined examples from ``topic`` of ``log`` (see module doc).

    Args:
      log: an EmbeddedLog or KafkaLog.
      spec: ``tf.io.parse_example`` spec (``joined_feature_spec``).
      batch_size: examples per batch; a batch is emitted early after
        ``max_wait`` seconds with at least one example (a quiet stream still
        trains), and a segment ends after ``max_wait`` seconds with none.
      label: feature name moved out of the features as the label (None:
        batches are feature dicts only, for models that find their labels).
      features: names of the features to keep (None: all of the spec but
        the label), so a functional model gets exactly its inputs.
      topic / group: where examples come from; the group only names the
        consumer.
      idle_timeout: the worker stops training after this many seconds
        without a new example (None: it waits for more forever, still
        answering SIGTERM within about ``max_wait``).
    """

    def __init__(self, log, spec, batch_size, label=None, topic=EXAMPLES_TOPIC,
                 group="trainer", max_wait=1.0, idle_timeout=None, features=None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if label is not None and label not in spec:
            raise ValueError(f"label {label!r} is not in the parse spec")
        unknown = sorted(set(features or ()) - set(spec))
        if unknown:
            raise ValueError(f"features {unknown} are not in the parse spec")
        self.features = list(features) if features is not None else None
        self.log = log
        self.spec = dict(spec)
        self.batch_size = int(batch_size)
        self.label = label
        self.topic = topic
        self.group = group
        self.max_wait = float(max_wait)
        self.idle_timeout = idle_timeout
        self.partitions = [(topic, p) for p in range(log.partitions(topic))]
        # DataSource state: offsets after the last trained batch (None: start).
        self.offsets = None
        self._data_seen_at = time.monotonic()  # wall time a segment last had data

    def _batches(self, start):
        consumer = self.log.consumer(self.group, [self.topic])
        try:
            for (topic, partition), offset in zip(self.partitions, start):
                consumer.seek(topic, partition, int(offset))
            while True:
                records = consumer.poll(max_records=self.batch_size, timeout=self.max_wait)
                while records and len(records) < self.batch_size:
                    more = consumer.poll(max_records=self.batch_size - len(records),
                                         timeout=self.max_wait)
                    if not more:
                        break
                    records.extend(more)
                if not records:
                    return  # quiet for max_wait: this segment ends
                # A tombstone (null value) carries no example: skipped.
                values = [r.value for r in records if r.value is not None]
                if values:
                    positions = consumer.positions()
                    yield values, [positions[key] for key in self.partitions]
        finally:
            consumer.close()

    def dataset(self, position=None):
        """One segment of the stream as a ``tf.data.Dataset`` (module doc),
        starting at ``position`` (a list of offsets in ``partitions`` order;
        None: the beginning)."""
        start = list(position) if position is not None else [0] * len(self.partitions)
        if len(start) != len(self.partitions):
            raise ValueError(f"position has {len(start)} offsets, the topic "
                             f"{len(self.partitions)} partitions")
        raw = tf.data.Dataset.from_generator(
            lambda: self._batches(start),
            output_signature=(tf.TensorSpec([None], tf.string),
                              tf.TensorSpec([len(self.partitions)], tf.int64)))

        def parse(serialized, positions):
            parsed = tf.io.parse_example(serialized, self.spec)
            label = parsed.pop(self.label) if self.label is not None else None
            if self.features is not None:
                parsed = {name: parsed[name] for name in self.features}
            parsed[POSITION_KEY] = positions
            return parsed if label is None else (parsed, label)

        return raw.map(parse).prefetch(2)

    # -- DataSource (monolith_tf.data_source) ------------------------------------

    def begin(self):
        self._data_seen_at = time.monotonic()

    def next_segment(self):
        return self.dataset(self.offsets)

    def batch_trained(self, batch_position):
        self.offsets = [int(o) for o in batch_position]

    def segment_ended(self, trained_any):
        if trained_any:
            self._data_seen_at = time.monotonic()
        # A stream's end is not an epoch: it ends only when quiet too long.
        return (self.idle_timeout is None
                or time.monotonic() - self._data_seen_at < self.idle_timeout)

    def position(self):
        return {} if self.offsets is None else {"stream_position": list(self.offsets)}

    def restore(self, position):
        offsets = position.get("stream_position")
        self.offsets = None if offsets is None else [int(o) for o in offsets]


def joined_feature_spec(actions, sparse=(), dense=None):
    """The ``tf.io.parse_example`` spec of joined examples: ids and times as
    int64 scalars, ``sparse`` names as ragged int64 lists, ``dense`` as
    ``{name: width}`` float vectors, one float label per action type."""
    spec = {"user_id": tf.io.FixedLenFeature([], tf.int64),
            "item_id": tf.io.FixedLenFeature([], tf.int64),
            "timestamp": tf.io.FixedLenFeature([], tf.int64),
            "sample_rate": tf.io.FixedLenFeature([], tf.float32)}
    for action in actions:
        spec[f"label/{action}"] = tf.io.FixedLenFeature([], tf.float32)
    for name in sparse:
        spec[f"sparse/{name}"] = tf.io.RaggedFeature(tf.int64)
    for name, width in (dense or {}).items():
        spec[f"dense/{name}"] = tf.io.FixedLenFeature([width], tf.float32)
    return spec
