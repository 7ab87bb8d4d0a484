"""Full-disk scenarios, run by test_full_disk.py in a child process whose
private mount namespace has a small tmpfs at DISK (so the parent's disk is
never filled and the mount goes away with the child).

    python disk_full_scenarios.py SCENARIO DISK [SCENARIO DISK ...]

Each scenario fills the tmpfs with a ballast file, leaving a little room,
makes a write run out of space, asserts the outcome, frees the ballast and
asserts the retry; it prints "OK <scenario>" at the end. Any failed assertion
exits non-zero with a traceback.
"""

import errno
import os
import sys

import numpy as np
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "examples"))

import monolith_tf as mt  # noqa: E402
from monolith_tf.dense_checkpoint import DenseCheckpointer  # noqa: E402
from monolith_tf.export import ExportError, export_version, list_versions  # noqa: E402
from monolith_tf.sparse_checkpoint import (CheckpointSaveError, SparseCheckpointer,  # noqa: E402
                                           list_checkpoints)
from monolith_tf.streaming.embedded_log import EmbeddedLog  # noqa: E402
from monolith_tf.streaming.log import LogError  # noqa: E402
from monolith_tf.training import TrainingWorker  # noqa: E402
from monolith_tf.step_task import StepTask  # noqa: E402


def fill(disk, leave_bytes):
    """Allocates a ballast file so that about ``leave_bytes`` stay free."""
    stats = os.statvfs(disk)
    free = stats.f_bavail * stats.f_frsize
    path = os.path.join(disk, "ballast")
    with open(path, "ab") as f:
        os.posix_fallocate(f.fileno(), 0, max(1, os.fstat(f.fileno()).st_size + free - leave_bytes))
    return path


def leftovers(directory):
    return sorted(name for name in os.listdir(directory)
                  if name.startswith(".partial-") or "_temp" in name or name.startswith(".tmp-"))


def table_rows(table):
    rows = {k: v.numpy() for k, v in table.export().items()}
    order = np.argsort(rows["keys"])
    return {k: v[order] for k, v in rows.items()}


def assert_same_rows(a, b):
    assert a.keys() == b.keys()
    for field in a:
        np.testing.assert_array_equal(a[field], b[field], err_msg=field)


def make_table():
    return mt.HashTable(16, initializer="normal(stddev=0.1)", optimizer="adagrad", seed=1)


def train(table, ids, now):
    ids = tf.constant(ids, tf.int64)
    table.lookup(ids, training=True)
    table.apply_gradients(ids, tf.ones([len(ids), 16]) * 0.1, 0.05, timestamps=now)


def sparse(disk):
    directory = os.path.join(disk, "sparse")
    table = make_table()
    saver = SparseCheckpointer(directory, {"emb": table})
    train(table, np.arange(20_000), 10)
    good = saver.save(full=True)
    saved = table_rows(table)
    train(table, np.arange(10_000, 30_000), 20)   # a delta of 20k rows is due
    ballast = fill(disk, 256 << 10)
    try:
        saver.save()
        raise AssertionError("the save fit on a full disk")
    except CheckpointSaveError as error:
        assert error.errno == errno.ENOSPC, error
        assert directory in str(error) and "sparse-00000002-delta" in str(error), error
    assert leftovers(directory) == [], leftovers(directory)
    assert [path for _, _, path in list_checkpoints(directory)] == [good]
    restored = make_table()
    SparseCheckpointer(directory, {"emb": restored}).restore()
    assert_same_rows(table_rows(restored), saved)
    os.remove(ballast)
    retried = saver.save()
    # The failed delta consumed the change marks: the retry is a full snapshot.
    assert retried.endswith("sparse-00000002-full"), retried
    restored = make_table()
    SparseCheckpointer(directory, {"emb": restored}).restore()
    assert_same_rows(table_rows(restored), table_rows(table))


def dense(disk):
    directory = os.path.join(disk, "dense")
    model = tf.keras.Sequential([tf.keras.Input((500,)), tf.keras.layers.Dense(500)])
    model.compile("adam", "mse")
    model.fit(np.ones((8, 500)), np.ones((8, 500)), verbose=0)
    saver = DenseCheckpointer(directory, model)
    good = saver.save(1)
    saved = [np.array(w) for w in model.get_weights()]
    model.fit(np.ones((8, 500)), np.zeros((8, 500)), verbose=0)
    ballast = fill(disk, 64 << 10)
    try:
        saver.save(2)
        raise AssertionError("the save fit on a full disk")
    except CheckpointSaveError as error:
        assert error.errno == errno.ENOSPC, error
        assert os.path.join(directory, "dense-2") in str(error), error
    assert leftovers(directory) == [], leftovers(directory)
    assert saver.checkpoints() == [good]
    saver.restore(good)
    for before, after in zip(saved, model.get_weights()):
        np.testing.assert_array_equal(before, after)
    os.remove(ballast)
    assert saver.save(3).endswith("dense-3")
    assert len(saver.checkpoints()) == 2


def export(disk):
    import movielens_ctr_job as job
    base = os.path.join(disk, "models", "ctr")
    model = job.build_model()
    features = {"user_id": np.arange(100, dtype=np.int64),
                "movie_id": np.arange(100, dtype=np.int64),
                "timestamp": np.full(100, 10, np.int64)}
    model.fit(features, np.ones(100, np.float32), verbose=0)
    assert export_version(model, base) == 1
    ballast = fill(disk, 32 << 10)
    try:
        export_version(model, base)
        raise AssertionError("the export fit on a full disk")
    except ExportError as error:
        assert error.errno == errno.ENOSPC, error
        assert os.path.join(base, "2") in str(error), error
    assert list_versions(base) == [1] and sorted(os.listdir(base)) == ["1"]
    os.remove(ballast)
    assert export_version(model, base) == 2
    assert tf.saved_model.load(os.path.join(base, "2")).signatures["serving_default"] is not None


def log_append(disk):
    log = EmbeddedLog(os.path.join(disk, "log"))
    log.create_topic("actions")
    producer = log.producer()
    ballast = fill(disk, 256 << 10)
    values = [f"{i:06d}".encode() * 2000 for i in range(200)]  # 12 kB each
    appended = 0
    try:
        for value in values:
            producer.produce("actions", value, timestamp_ms=appended)
            appended += 1
        raise AssertionError("200 records fit in 256 kB")
    except LogError as error:
        assert log._partition_file("actions", 0) in str(error), error
        assert "No space left" in str(error), error
    assert 5 < appended < 30, appended
    os.remove(ballast)
    for value in values[appended:]:        # the producer retries, then goes on
        producer.produce("actions", value)
    producer.flush()
    consumer = log.consumer("check", ["actions"])
    got = []
    while len(got) < len(values):
        batch = consumer.poll(timeout=1.0)
        assert batch, f"stalled after {len(got)} records"
        got.extend(record.value for record in batch)
    assert got == values  # each record once, in order, no torn frame in between
    assert log.end_offsets("actions") == {0: len(values)}


def worker_policy(disk):
    import movielens_ctr_job as job
    from test_training import write_ratings
    data = write_ratings(os.path.join(disk, "u.data"), 64 * 80)
    model_dir = os.path.join(disk, "run")

    class DiskWeather(StepTask):
        """Fills the disk after step 12 and 27, frees it after step 22."""
        ballast = None

        def begin(self, worker):
            pass

        def after_step(self, worker):
            if worker.step in (12, 27):
                self.ballast = fill(disk, 0)
            elif worker.step == 22:
                os.remove(self.ballast)

        def finish(self, worker):
            pass

    tf.keras.utils.set_random_seed(0)
    worker = TrainingWorker(job.build_model(), model_dir, sparse_every_steps=5,
                            sparse_every_secs=None, dense_every_steps=10, dense_every_secs=None,
                            verbose=0, tensorboard=False, tasks=[DiskWeather()],
                            max_save_failures=3)
    try:
        worker.train(job.make_dataset([data], 64), max_steps=60)
        raise AssertionError("training went on past three failed saves in a row")
    except CheckpointSaveError as error:
        assert "3 scheduled saves in a row failed" in str(error), error
        assert error.errno == errno.ENOSPC, error
    # Failures at 15 and 20 were retried; 25 saved (a full snapshot, as the
    # failed delta lost its change marks); 30, 35 and 40 failed: stop.
    assert worker.step == 40, worker.step
    sparse_dir = os.path.join(model_dir, "sparse")
    saved = [(path.rsplit("/", 1)[1], mt.sparse_checkpoint.read_manifest(path)["metadata"]["step"])
             for _, _, path in list_checkpoints(sparse_dir)]
    assert saved == [("sparse-00000001-full", 5), ("sparse-00000002-delta", 10),
                     ("sparse-00000003-full", 25)], saved
    assert leftovers(sparse_dir) == [] and leftovers(os.path.join(model_dir, "dense")) == []
    os.remove(os.path.join(disk, "ballast"))
    tf.keras.utils.set_random_seed(0)
    resumed = TrainingWorker(job.build_model(), model_dir, sparse_every_steps=5,
                             sparse_every_secs=None, dense_every_steps=10, dense_every_secs=None,
                             verbose=0, tensorboard=False)
    result = resumed.train(job.make_dataset([data], 64), max_steps=45)
    assert result["resumed_from"]["dense"].endswith("dense-10"), result
    assert resumed.step == 45


SCENARIOS = {"sparse": sparse, "dense": dense, "export": export, "log_append": log_append,
             "worker_policy": worker_policy}

if __name__ == "__main__":
    # SCENARIO DISK pairs: one process (one TensorFlow start) runs them all,
    # each on its own tmpfs; a failure is reported and the next one runs.
    pairs = sys.argv[1:]
    failed = False
    for name, disk in zip(pairs[::2], pairs[1::2]):
        try:
            SCENARIOS[name](disk)
        except Exception:  # noqa: BLE001 - reported with its traceback, the others still run
            import traceback

            print(f"FAILED {name}\n{traceback.format_exc()}", flush=True)
            failed = True
        else:
            print(f"OK {name}", flush=True)
    sys.exit(1 if failed else 0)
