"""ExampleStream: parsed batches from the examples topic, and the training
worker trained from it, saving and resuming at log offsets."""

import zlib

import numpy as np
import pytest
import tensorflow as tf

import monolith_tf as mt
from monolith_tf.streaming.dataset import POSITION_KEY, ExampleStream
from monolith_tf.streaming.embedded_log import EmbeddedLog
from monolith_tf.streaming.dataset import joined_feature_spec
from monolith_tf.streaming.records import FeatureRecord, encode_joined
from monolith_tf.training import TrainingWorker

BATCH = 32


def fill(log, n, partitions=1, create=True):
    if create:
        log.create_topic("examples", partitions=partitions)
    producer = log.producer()
    rng = np.random.default_rng(0)
    for i in range(n):
        feature = FeatureRecord(f"r{i}".encode(), int(rng.integers(1, 40)),
                                int(rng.integers(1, 60)), 5_000 + i)
        producer.produce("examples", encode_joined(feature, {"click": float(i % 3 == 0)}, 1.0),
                         key=feature.request_id)
    producer.flush()


def stream_of(log):
    return ExampleStream(log, joined_feature_spec(["click"]), BATCH, label="label/click",
                         max_wait=0.2)


class StreamModel(tf.keras.Model):
    def __init__(self):
        super().__init__()
        self.embeddings = mt.layers.HashEmbeddingCollection(
            {"user_id": {"dim": 4, "seed": 1}, "item_id": {"dim": 4, "seed": 2}},
            name="embeddings")
        self.head = tf.keras.layers.Dense(1, activation="sigmoid")

    def call(self, features, training=False):
        rows = self.embeddings({k: features[k] for k in ("user_id", "item_id", "timestamp")},
                               training=training)
        return self.head(tf.concat([rows["user_id"], rows["item_id"]], axis=1))


def compiled():
    tf.keras.utils.set_random_seed(0)
    model = StreamModel()
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1), loss="binary_crossentropy")
    return model


def test_batches_carry_labels_and_their_log_offsets(tmp_path):
    log = EmbeddedLog(str(tmp_path / "log"))
    fill(log, 100, partitions=2)
    stream = stream_of(log)
    batches = list(stream.dataset().take(3))
    features, labels = batches[0]
    assert labels.shape == (BATCH,) and set(np.unique(labels.numpy())) <= {0.0, 1.0}
    assert {"user_id", "item_id", "timestamp", "sample_rate", POSITION_KEY} <= set(features)
    assert sum(batches[-1][0][POSITION_KEY].numpy()) == 3 * BATCH
    # Resuming at a batch's offsets yields what came after it.
    # Resuming at a batch's offsets yields exactly the records after it: none
    # skipped, none repeated, each partition in offset order (partitions
    # interleave in any order).
    resumed = list(stream.dataset(batches[0][0][POSITION_KEY].numpy()))
    got = tf.concat([b[0]["timestamp"] for b in resumed], 0).numpy().tolist()
    first = set(batches[0][0]["timestamp"].numpy().tolist())
    assert sorted(got) == [t for t in range(5_000, 5_100) if t not in first]
    partition_of = {5_000 + i: zlib.crc32(f"r{i}".encode()) % 2 for i in range(100)}
    for partition in (0, 1):
        in_partition = [t for t in got if partition_of[t] == partition]
        assert in_partition == sorted(in_partition)


def test_tombstones_in_the_examples_log_are_skipped(tmp_path):
    log = EmbeddedLog(str(tmp_path / "log"))
    fill(log, BATCH)
    producer = log.producer()
    producer.produce("examples", None, key=b"gone")
    producer.flush()
    fill(log, BATCH, create=False)
    batches = list(stream_of(log).dataset())
    assert sum(int(b[1].shape[0]) for b in batches) == 2 * BATCH
    assert int(batches[-1][0][POSITION_KEY].numpy().sum()) == 2 * BATCH + 1


def test_worker_resumes_a_stream_after_the_last_trained_batch(tmp_path):
    log = EmbeddedLog(str(tmp_path / "log"))
    fill(log, 12 * BATCH)
    straight = compiled()
    TrainingWorker(straight, str(tmp_path / "straight"), verbose=0).train(
        stream_of(log), max_steps=8)

    first = TrainingWorker(compiled(), str(tmp_path / "resumed"), sparse_every_steps=2,
                           verbose=0)
    result = first.train(stream_of(log), max_steps=5)
    assert result["steps"] == 5 and first.stream_position == [5 * BATCH]
    resumed_model = compiled()
    second = TrainingWorker(resumed_model, str(tmp_path / "resumed"), verbose=0)
    result = second.train(stream_of(log), max_steps=8)
    assert result["resumed_from"] is not None and result["examples"] == 8 * BATCH
    assert second.stream_position == [8 * BATCH]
    assert second.data_time == 5_000 + 8 * BATCH - 1
    assert len(straight.weights) == len(resumed_model.weights)
    for a, b in zip(straight.weights, resumed_model.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_quiet_stream_ends_after_its_idle_timeout(tmp_path):
    log = EmbeddedLog(str(tmp_path / "log"))
    fill(log, 3 * BATCH)
    stream = ExampleStream(log, joined_feature_spec(["click"]), BATCH, label="label/click",
                           max_wait=0.2, idle_timeout=1.0)
    worker = TrainingWorker(compiled(), str(tmp_path / "run"), verbose=0)
    result = worker.train(stream)   # no budget: ends when the stream goes quiet
    assert result["stop_reason"] == "end_of_data" and result["examples"] == 3 * BATCH
    assert worker.stream_position == [3 * BATCH]
    # More traffic later: a restarted worker reads on from the saved offsets.
    fill(log, 2 * BATCH, create=False)
    again = TrainingWorker(compiled(), str(tmp_path / "run"), verbose=0)
    result = again.train(stream)
    assert result["examples"] == 5 * BATCH and again.stream_position == [5 * BATCH]


def test_feature_selection_and_bad_arguments(tmp_path):

    log = EmbeddedLog(str(tmp_path / "log"))
    fill(log, BATCH)
    spec = joined_feature_spec(["click"])
    stream = ExampleStream(log, spec, BATCH, label="label/click", features=["user_id"])
    features, _ = next(iter(stream.dataset()))
    assert set(features) == {"user_id", POSITION_KEY}
    with pytest.raises(ValueError, match="not in the parse spec"):
        ExampleStream(log, spec, BATCH, features=["age"])
    with pytest.raises(ValueError, match="label 'label/like'"):
        ExampleStream(log, spec, BATCH, label="label/like")
    with pytest.raises(ValueError, match="position has 2 offsets"):
        stream.dataset([0, 0])


@pytest.mark.integration
def test_sigterm_stops_a_worker_waiting_on_a_quiet_stream(tmp_path):
    """SIGTERM from outside, to a worker in a child process that trained
    the log's two batches and waits for more (never to pytest itself)."""
    from signal_scenarios import signalled_run

    stopped = signalled_run("quiet_stream", tmp_path)
    assert stopped["stop_reason"] == "signal" and stopped["examples"] == 2 * BATCH
    assert stopped["stream_position"] == [2 * BATCH]
