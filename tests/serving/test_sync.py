"""Parameter sync end to end: a training worker publishing to the sync
stream, a server following it; the replica ends equal to the trainer."""

import numpy as np
import pytest
import tensorflow as tf

from monolith_tf.layers import HashEmbeddingCollection
from monolith_tf.serving.server import ModelServer
from monolith_tf.streaming import open_log
from monolith_tf.sync.follower import SyncFollower
from monolith_tf.sync.sinks import RemoteServingSink, ServableSink
from monolith_tf.sync.publisher import SyncPublisher
from monolith_tf.training import TrainingWorker
from monolith_tf.step_task import StepTask

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
    subscriber = SyncFollower(log, ServableSink(server)).start()
    publisher = SyncPublisher(log, base, sparse_every_secs=0.01, dense_every_secs=None)
    worker = TrainingWorker(model, str(tmp_path / "run"), checkpoints=False, verbose=0,
                            tasks=[publisher], log_every_steps=1000)
    try:
        worker.train(batches(80, seed=1))
        dense = publisher.push_dense(worker)    # a dense push, no new base
        assert server.version == 1              # one base per publisher run
        assert subscriber.wait_until_applied(log.end_offsets("sync"), timeout=30)
        servable = server.servable("ctr")
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


def test_bad_records_go_to_dead_letters_and_change_nothing(tmp_path):
    from monolith_tf.export import export_version
    from monolith_tf.sync.records import RowsPush, encode_rows
    from test_export import trained_model

    log = open_log({"path": str(tmp_path / "log")})
    base = str(tmp_path / "models")
    log.create_topic("sync", 1)
    export_version(trained_model(), base, version=1,
                   sync_state={"format": 1, "topic": "sync", "offsets": {"0": 0}})
    server = ModelServer(base, model_name="ctr", port=0, rest_api_port=None).start()
    subscriber = SyncFollower(log, ServableSink(server)).start()
    servable = server.servable("ctr")
    before = servable.table_rows("collection/user")
    good = encode_rows(RowsPush("collection/user", np.array([1]), np.full((1, 4), 0.5),
                                np.array([5])))
    records = [
        encode_rows(RowsPush("collection/nope", np.array([1]), np.ones((1, 4)), np.zeros(0))),
        encode_rows(RowsPush("collection/user", np.array([2]), np.ones((1, 3)),
                             np.array([1]))),  # wrong dim: its removal must not apply either
        good[:len(good) // 2],                 # truncated
        good[:-20] + bytes([good[-20] ^ 1]) + good[-19:],   # one flipped bit
        b"",
    ]
    producer = log.producer()
    for record in records + [good]:
        producer.produce("sync", record)
    producer.flush()
    try:
        assert subscriber.wait_until_applied(log.end_offsets("sync"), timeout=30)
        assert subscriber.counters["rejected"] == 5 and subscriber.counters["records"] == 1
        assert subscriber.rejected == {"refused": 2, "corrupt": 3}
        dead = log.consumer("check", ["sync_dead_letter"]).poll(100, timeout=5)
        assert [r.value for r in dead] == records[:4] + [b""]
        # Only the good record applied: row 1 set, row 5 removed, nothing else moved.
        ids, values = servable.table_rows("collection/user")
        want = {int(k): v for k, v in zip(*before) if k != 5}
        want[1] = np.full(4, 0.5, np.float32)
        assert ids.tolist() == sorted(want)
        np.testing.assert_array_equal(values, np.stack([want[k] for k in sorted(want)]))
        metrics = server.metrics.exposition().decode()
        assert 'monolith_serving_sync_rejected_total{reason="corrupt"} 3.0' in metrics
    finally:
        subscriber.stop()
        server.stop()


@pytest.mark.slow
def test_sync_agent_keeps_a_plain_tf_serving_client_in_sync(tmp_path):
    """The agent knows the server only through TF Serving's gRPC API and the
    base path; our server (without --sync) stands in for stock TF Serving."""
    log = open_log({"path": str(tmp_path / "log")})
    base = str(tmp_path / "models")
    model = ctr_model()
    server = ModelServer(base, model_name="ctr", port=0, rest_api_port=None,
                         poll_seconds=0.05).start()
    sink = RemoteServingSink(f"127.0.0.1:{server.grpc_port}", "ctr", base,
                             status_every_secs=0.05)
    agent = SyncFollower(log, sink).start()
    publisher = SyncPublisher(log, base, sparse_every_secs=0.01, dense_every_secs=None)
    worker = TrainingWorker(model, str(tmp_path / "run"), checkpoints=False, verbose=0,
                            tasks=[publisher], log_every_steps=1000)
    try:
        worker.train(batches(60, seed=2))
        dense = publisher.push_dense(worker)
        assert agent.wait_until_applied(log.end_offsets("sync"), timeout=60)
        servable = server.servable("ctr")
        assert sink.served_version == 1 and servable.dense_version == dense
        assert_replica_equals(servable, worker, [w.numpy() for w in model.layers[-1].weights])
        assert agent.counters["rejected"] == 0 and agent.counters["removed"] > 0
    finally:
        agent.stop()
        server.stop()


@pytest.mark.slow
def test_replica_killed_mid_stream_and_restarted_ends_equal(tmp_path):
    """``serve --sync`` in its own process, SIGKILLed while pushes flow and
    started again: it reloads the base, replays the stream, and predicts
    exactly as the trainer's model for every id."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from clients import GrpcClient, free_port

    log_dir, base = str(tmp_path / "log"), str(tmp_path / "models")
    log = open_log({"path": log_dir})
    model = ctr_model()
    publisher = SyncPublisher(log, base, sparse_every_secs=0.01, dense_every_secs=None)
    worker = TrainingWorker(model, str(tmp_path / "run"), checkpoints=False, verbose=0,
                            tasks=[publisher], log_every_steps=1000)

    def start_replica():
        process = subprocess.Popen(
            [sys.executable, "-m", "monolith_tf", "serve", f"--model_base_path={base}",
             "--model_name=ctr", "--port=0", f"--rest_api_port={free_port()}", f"--sync={log_dir}",
             "--file_system_poll_wait_seconds=0.1"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        started = json.loads(process.stdout.readline())
        return process, int(started["grpc"].rsplit(":", 1)[1]), started["rest"]

    class Port:
        def __init__(self, port):
            self.grpc_port = port

    def applied_offset(rest):
        """The newest sync offset the replica applied (its metrics), or -1."""
        with urllib.request.urlopen(f"{rest}/monitoring/prometheus/metrics", timeout=10) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith("monolith_serving_sync_offset "):
                    return float(line.split()[1])
        return -1

    class KillReplicaAt(StepTask):
        """SIGKILLs the replica between two steps of a training run that
        pushes rows every 0.01 s, once the replica applied a push of this
        run: it dies following the stream, with pushes before and after."""

        def __init__(self, step, first_offset):
            self.kill_step, self.first_offset = step, first_offset
            self.killed_at = self.pushes_at_kill = None

        def after_step(self, worker):
            if worker.step != self.kill_step:
                return
            deadline = time.monotonic() + 60
            while applied_offset(rest) < self.first_offset:
                assert time.monotonic() < deadline, "the replica applied no push of this run"
                time.sleep(0.05)
            replica.send_signal(signal.SIGKILL)     # mid-stream, no goodbye
            self.killed_at, self.pushes_at_kill = worker.step, publisher.totals["pushes"]

    # One dataset in four phases of 30 steps: each train() call continues it
    # (a new dataset would continue at the finished epoch's end and train nothing).
    data = batches(30, seed=3)
    for seed, start_time in ((4, 100), (5, 200), (6, 300)):
        data = data.concatenate(batches(30, seed=seed, start_time=start_time))

    def train_phase(phase):
        assert worker.train(data, max_steps=30 * phase)["steps"] == 30 * phase

    train_phase(1)                               # base version 1 and some pushes
    replica, port, rest = start_replica()
    try:
        pushes_before = publisher.totals["pushes"]
        killer = KillReplicaAt(45, first_offset=sum(log.end_offsets("sync").values()))
        worker.tasks.append(killer)
        train_phase(2)
        worker.tasks.remove(killer)
        # Pushes flowed on both sides of the kill.
        assert killer.killed_at == 45
        assert pushes_before < killer.pushes_at_kill < publisher.totals["pushes"]
        assert replica.wait(30) == -signal.SIGKILL
        train_phase(3)                           # pushes while it is down
        replica, port, rest = start_replica()
        train_phase(4)
        publisher.push_dense(worker)
        users = np.arange(3000, dtype=np.int64)
        probe = {"user": users, "tags": np.stack([users % 100, (users * 7) % 100], axis=1),
                 "timestamp": users * 0}
        want = model(probe, training=False).numpy()
        client = GrpcClient(Port(port))
        deadline, got = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            got = client.predict(probe)[0]["output"]
            if np.allclose(got, want, rtol=1e-6, atol=1e-6):
                break
            time.sleep(0.2)
        client.close()
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    finally:
        replica.kill()
        replica.wait(30)


@pytest.mark.slow
def test_serving_under_the_real_stream_has_no_gap_and_no_mixed_dense_version(tmp_path):
    """The serving load test with the real stream: ~1,000 row pushes and 3
    dense pushes from a training worker while clients query. The probed
    users' rows are fixed before the clients start and the output layer is
    frozen, so each response must equal the prediction of exactly one dense
    version (designed so that a mix of two matches none)."""
    import threading
    import time

    from clients import GrpcClient, http, rows

    log = open_log({"path": str(tmp_path / "log")})
    base = str(tmp_path / "models")
    model = ctr_model()
    output = model.layers[-1]
    output.trainable = False
    model.compile(optimizer="adam", loss="mse")
    kernel0 = np.linspace(-1, 1, 7, dtype=np.float32).reshape(7, 1)

    def design(version):
        return [kernel0 * (1 + 0.5 * version), np.array([10.0 * version], np.float32)]

    output.set_weights(design(0))
    server = ModelServer(base, model_name="ctr", port=0, rest_api_port=0,
                         poll_seconds=0.05).start()
    subscriber = SyncFollower(log, ServableSink(server)).start()
    publisher = SyncPublisher(log, base, sparse_every_secs=0.001, dense_every_secs=None)
    probe_users = np.array([1, 2, 3], np.int64)
    probe = {"user": probe_users, "tags": np.array([[1, 2], [3, 4], [5, 6]], np.int64),
             "timestamp": np.zeros(3, np.int64)}

    class DensePushes(StepTask):
        """Pushes designed dense versions 1..3 at fixed steps of phase two."""

        def __init__(self, at_steps):
            self.at_steps, self.pushed = dict(at_steps), []

        def begin(self, worker):
            pass

        def finish(self, worker):
            pass

        def after_step(self, worker):
            if worker.step in self.at_steps:
                output.set_weights(design(self.at_steps[worker.step]))
                self.pushed.append(publisher.push_dense(worker))

    phase_one = tf.data.Dataset.from_tensor_slices(
        ({"user": np.repeat(probe_users, 8), "tags": np.tile([[1, 2], [3, 4], [5, 6]], (8, 1)),
          "timestamp": np.zeros(24, np.int64)}, np.ones((24, 1)))).batch(8)
    worker = TrainingWorker(model, str(tmp_path / "run"), checkpoints=False, verbose=0,
                            tasks=[publisher], log_every_steps=10**6, timestamp_feature=None)
    worker.train(phase_one)
    assert subscriber.wait_until_applied(log.end_offsets("sync"), timeout=30)
    probe_rows = {name: table.lookup(tf.constant(ids)).numpy() for name, table, ids in (
        ("user", worker.tables["collection/user"], probe_users),
        ("tags", worker.tables["collection/tags"], probe["tags"].ravel()))}
    features = np.concatenate([probe_rows["user"],
                               probe_rows["tags"].reshape(3, 2, 3).mean(axis=1)], axis=1)
    expected = {v: (features @ design(v)[0] + design(v)[1]).ravel() for v in range(4)}

    done, failures, unmatched, seen = threading.Event(), [], [], []

    def check(prediction):
        hits = [v for v, want in expected.items()
                if np.allclose(prediction, want, rtol=1e-5, atol=1e-5)]
        (seen.extend(hits) if len(hits) == 1 else unmatched.append(prediction))

    def grpc_client():
        client = GrpcClient(server)
        for _ in range(20_000):
            if done.is_set():
                break
            try:
                check(client.predict(probe)[0]["output"].ravel())
            except Exception as error:  # noqa: BLE001 - every failure is the finding
                failures.append(repr(error))
        client.close()

    def rest_client():
        for _ in range(20_000):
            if done.is_set():
                break
            status, reply = http(server, "/v1/models/ctr:predict", {"instances": rows(probe)})
            (check(np.array(reply["predictions"]).ravel()) if status == 200
             else failures.append((status, reply)))

    clients = [threading.Thread(target=grpc_client) for _ in range(2)] + [
        threading.Thread(target=rest_client)]
    for client in clients:
        client.start()
    dense = DensePushes({250: 1, 500: 2, 750: 3})
    # A second worker on the same model and publisher (no new base): phase two.
    worker = TrainingWorker(model, str(tmp_path / "run2"), checkpoints=False, verbose=0,
                            tasks=[publisher, dense], log_every_steps=10**6,
                            timestamp_feature=None)
    pushes_before = publisher.totals["pushes"]
    rng = np.random.default_rng(9)
    n = 1100 * 16          # other users only: the probed rows stay as they are
    phase_two = tf.data.Dataset.from_tensor_slices((
        {"user": rng.integers(100, 5000, n), "tags": rng.integers(50, 100, (n, 2)),
         "timestamp": np.zeros(n, np.int64)}, rng.random((n, 1)))).batch(16)
    try:
        worker.train(phase_two)
        assert subscriber.wait_until_applied(log.end_offsets("sync"), timeout=60)
        time.sleep(0.2)
    finally:
        done.set()
        for client in clients:
            client.join(60)
        subscriber.stop()
        server.stop()
    row_pushes = publisher.totals["pushes"] - pushes_before - len(dense.pushed)
    print(f"{row_pushes} row pushes, dense pushes {dense.pushed}; {len(seen)} responses, "
          f"dense versions seen {sorted(set(seen))}")
    assert failures == [], failures[:3]
    assert unmatched == [], unmatched[:3]
    assert row_pushes >= 1000 and len(dense.pushed) == 3
    assert len(set(seen)) >= 2 and seen[-1] == 3


def test_pushes_follow_data_time_when_scheduled_by_it(tmp_path):
    """Replays run faster than real time: ``..._every_data_secs`` pushes every
    D seconds of the examples' data time, whatever the wall clock does."""
    class Worker:
        tables, step, data_time = {}, 0, 1000
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])

    log = open_log({"path": str(tmp_path / "log")})
    publisher = SyncPublisher(log, str(tmp_path / "models"), sparse_every_secs=None,
                              sparse_every_data_secs=60, dense_every_secs=None,
                              dense_every_data_secs=600, base_every_secs=10**9)
    publisher.connect()
    worker = Worker()
    publisher.sparse_schedule.done(worker.step, worker.data_time)
    publisher.dense_schedule.done(worker.step, worker.data_time)
    for _ in range(100):                  # 1,000 s of data time in a few ms of wall time
        worker.step += 1
        worker.data_time += 10
        publisher.after_step(worker)
    assert publisher.totals["dense_pushes"] == 1             # at data time 1600
    assert 15 <= publisher.totals["pushes"] - 1 <= 16         # every 60 s of data time
    with pytest.raises(ValueError, match="sparse_every"):
        SyncPublisher(log, str(tmp_path / "models"), sparse_every_secs=None)


@pytest.mark.slow
def test_sync_over_kafka(tmp_path):
    """The same stream through a Kafka-protocol broker (librdkafka's mock
    cluster, tools/mock_kafka.py): the replica ends equal to the trainer."""
    import importlib.util
    import os

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location(
        "mock_kafka", os.path.join(repo, "tools", "mock_kafka.py"))
    mock_kafka = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mock_kafka)
    broker = mock_kafka.MockBrokerProcess()
    try:
        log = open_log(broker.config())
        base = str(tmp_path / "models")
        model = ctr_model()
        server = ModelServer(base, model_name="ctr", port=0, rest_api_port=None,
                             poll_seconds=0.05).start()
        publisher = SyncPublisher(log, base, sparse_every_secs=0.01, dense_every_secs=None)
        publisher.connect()                       # the topic exists before the follower
        subscriber = SyncFollower(log, ServableSink(server)).start()
        worker = TrainingWorker(model, str(tmp_path / "run"), checkpoints=False, verbose=0,
                                tasks=[publisher], log_every_steps=1000)
        try:
            worker.train(batches(40, seed=7))
            publisher.push_dense(worker)
            assert subscriber.wait_until_applied(log.end_offsets("sync"), timeout=60)
            assert_replica_equals(server.servable("ctr"), worker,
                                  [w.numpy() for w in model.layers[-1].weights])
            assert subscriber.counters["records"] >= 3
        finally:
            subscriber.stop()
            server.stop()
            publisher.close()
    finally:
        broker.stop()


def _sync_records(log, topic="sync"):
    from monolith_tf.sync.records import decode

    consumer = log.consumer("reader", [topic])
    try:
        records = []
        while True:
            batch = consumer.poll(1000, 0.2)
            if not batch:
                return [decode(r.value) for r in records]
            records.extend(batch)
    finally:
        consumer.close()


def test_a_dense_push_due_with_a_row_push_sends_the_rows_first(tmp_path):
    """Rows and dense weights on the same interval: every dense version
    follows the rows trained with it (a due row push is never dropped)."""
    from monolith_tf.export import list_versions
    from monolith_tf.sync.records import DensePush

    log = open_log({"path": str(tmp_path / "log")})
    publisher = SyncPublisher(log, str(tmp_path / "models"), sparse_every_secs=None,
                              dense_every_secs=None, sparse_every_data_secs=20,
                              dense_every_data_secs=20, base_every_secs=10**9)
    worker = TrainingWorker(ctr_model(), str(tmp_path / "w"), checkpoints=False, verbose=0,
                            tensorboard=False, tasks=[publisher])
    worker.train(batches(20, seed=3))   # 4 s of data time per step: a push every 5 steps
    publisher.close()
    records = _sync_records(log)
    dense_at = [i for i, r in enumerate(records) if isinstance(r, DensePush)]
    assert len(dense_at) == 3                       # data time 20, 40, 60 (of 0..76)
    for i in dense_at:
        assert not isinstance(records[i - 1], DensePush)
        assert records[i - 1].step == records[i].step and len(records[i - 1].ids) > 0
    # The base at begin (nothing yet), three with the dense ones, one at finish.
    assert publisher.totals["pushes"] == 5
    assert list_versions(str(tmp_path / "models")) == [1]


def test_base_on_begin_false_exports_nothing(tmp_path):
    from monolith_tf.export import list_versions

    log = open_log({"path": str(tmp_path / "log")})
    publisher = SyncPublisher(log, str(tmp_path / "models"), sparse_every_secs=None,
                              dense_every_secs=None, sparse_every_data_secs=20,
                              base_on_begin=False)
    worker = TrainingWorker(ctr_model(), str(tmp_path / "w"), checkpoints=False, verbose=0,
                            tensorboard=False, tasks=[publisher])
    worker.train(batches(6, seed=4))
    publisher.close()
    assert list_versions(str(tmp_path / "models")) == []
    assert publisher.totals["rows"] > 0 and publisher.totals["bases"] == 0


@pytest.mark.integration  # a gRPC server on a loopback port
def test_sync_follows_one_model_of_a_config_file(tmp_path):
    """``serve --model_config_file F --sync LOG --sync_model cvr``: the
    stream updates cvr; ctr, served beside it, is left alone."""
    import shutil

    from monolith_tf.export import export_version
    from monolith_tf.sync.records import RowsPush, encode_rows
    from monolith_tf.sync.replica import Replica
    from test_export import trained_model

    log = open_log({"path": str(tmp_path / "log")})
    log.create_topic("sync", 1)
    ctr, cvr = str(tmp_path / "ctr"), str(tmp_path / "cvr")
    export_version(trained_model(), ctr, version=1,
                   sync_state={"format": 1, "topic": "sync", "offsets": {"0": 0}})
    shutil.copytree(ctr, cvr)
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "ctr" base_path: "{ctr}" }} '
                      f'config {{ name: "cvr" base_path: "{cvr}" }} }}')
    replica = Replica(None, log, synced_model="cvr", port=0, rest_api_port=None,
                      model_config_file=str(config)).start()
    try:
        assert replica.model_name == "cvr"
        before = replica.server.servable("ctr").table_rows("collection/user")
        producer = log.producer()
        producer.produce("sync", encode_rows(RowsPush("collection/user", np.array([1]),
                                                      np.full((1, 4), 0.5), np.zeros(0))))
        producer.flush()
        replica.catch_up(timeout=30)
        ids, values = replica.server.servable("cvr").table_rows("collection/user")
        np.testing.assert_array_equal(values[list(ids).index(1)], np.full(4, 0.5, np.float32))
        after = replica.server.servable("ctr").table_rows("collection/user")
        for got, want in zip(after, before):
            np.testing.assert_array_equal(got, want)
    finally:
        replica.stop()
