"""Parameter sync end to end: a training worker publishing to the sync
stream, a server following it; the replica ends equal to the trainer."""

import numpy as np
import pytest
import tensorflow as tf

from monolith_tf.layers import HashEmbeddingCollection
from monolith_tf.serving.server import ModelServer
from monolith_tf.serving.sync_subscriber import ServerSubscriber
from monolith_tf.streaming import open_log
from monolith_tf.sync_publisher import SyncPublisher
from monolith_tf.training import TrainingWorker

keras = tf.keras


def ctr_model():
    collection = HashEmbeddingCollection({
        "user": {"dim": 4, "initializer": "normal(stddev=0.1)", "expire_after": 50,
                 "evict_every": 5},
        "tags": {"dim": 3, "combiner": "mean", "initializer": "normal(stddev=0.1)"}},
        name="collection")
    user = keras.Input(shape=(), dtype="int64", name="user")
    tags = keras.Input(shape=(2,), dtype="int64", name="tags")
    timestamp = keras.Input(shape=(), dtype="int64", name="timestamp")
    rows = collection({"user": user, "tags": tags})
    out = keras.layers.Dense(1)(keras.layers.Concatenate()([rows["user"], rows["tags"]]))
    model = keras.Model({"user": user, "tags": tags, "timestamp": timestamp}, out)
    model.compile(optimizer="adam", loss="mse")
    return model


def batches(steps, seed, start_time=0, users=3000):
    rng = np.random.default_rng(seed)
    n = steps * 32
    features = {"user": rng.integers(0, users, n), "tags": rng.integers(0, 100, (n, 2)),
                "timestamp": start_time + np.arange(n) // 8}
    return tf.data.Dataset.from_tensor_slices((features, rng.random((n, 1)))).batch(32)


def trainer_rows(table):
    rows = table.export()
    keys, values = rows["keys"].numpy(), rows["values"].numpy()
    order = np.argsort(keys)
    return keys[order], values[order]


def assert_replica_equals(servable, worker, dense=None):
    for name, table in worker.tables.items():
        want_ids, want_values = trainer_rows(table)
        got_ids, got_values = servable.table_rows(name)
        np.testing.assert_array_equal(got_ids, want_ids, err_msg=name)
        np.testing.assert_array_equal(got_values, want_values, err_msg=name)
    if dense is not None:
        for got, want in zip(servable.dense_weights(), dense):
            np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_replica_equals_trainer_rows_and_last_dense_push(tmp_path):
    log = open_log({"path": str(tmp_path / "log")})
    base = str(tmp_path / "models")
    model = ctr_model()
    # The server starts before any version exists; the publisher's first base appears
    # when training begins, and every push after it lands while the server serves.
    server = ModelServer(base, model_name="ctr", port=0, rest_api_port=None,
                         poll_seconds=0.05).start()
    subscriber = ServerSubscriber(server, log).start()
    publisher = SyncPublisher(log, base, sparse_every_secs=0.01, dense_every_secs=None)
    worker = TrainingWorker(model, str(tmp_path / "run"), checkpoints=False, verbose=0,
                            tasks=[publisher], log_every_steps=1000)
    try:
        worker.train(batches(80, seed=1))
        dense = publisher.push_dense(worker)    # a dense push, no new base
        assert server.version == 1              # one base per publisher run
        assert subscriber.wait_until_applied(log.end_offsets("sync"), timeout=30)
        servable = server.manager.servable("ctr")
        assert servable.dense_version == dense
        evicted = sum(int(t.stats()["evicted"]) for t in worker.tables.values())
        assert evicted > 100                    # expiry removed rows: they left the replica
        assert_replica_equals(servable, worker, [w.numpy() for w in model.layers[-1].weights])
        assert subscriber.counters["rejected"] == 0
        assert subscriber.counters["removed"] == evicted
        assert publisher.totals["pushes"] >= 3 and subscriber.counters["records"] >= 3
    finally:
        subscriber.stop()
        server.stop()
