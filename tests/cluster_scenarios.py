"""Localhost-cluster scenarios for tests/test_sharded_table.py, each run in a
fresh process (connecting to a cluster makes a process's eager context the
cluster's for good):

    python cluster_scenarios.py SCENARIO DIR

``DIR/u.data`` holds the ratings. Scenarios write ``DIR/<scenario>.npz``
(sorted rows per table and the dense weights) and assert what they can see
themselves; the test compares the files.
"""

import os
import sys
import threading

import numpy as np
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "examples"))

import movielens_ctr_job as job  # noqa: E402

import monolith_tf as mt  # noqa: E402
from monolith_tf.cluster import LocalCluster, connect  # noqa: E402
from monolith_tf.sparse_checkpoint import SparseCheckpointer  # noqa: E402
from monolith_tf.streaming import open_log  # noqa: E402
from monolith_tf.sync.publisher import SyncPublisher  # noqa: E402
from monolith_tf.schema import table_file_name  # noqa: E402
from monolith_tf.sharded_table import ShardedHashTable, shard_ids  # noqa: E402
from monolith_tf.training import TrainingWorker  # noqa: E402
from monolith_tf.step_task import StepTask  # noqa: E402

BATCH = 64


def build(strategy=None):
    tf.keras.utils.set_random_seed(0)
    if strategy is None:
        return job.build_model()
    with strategy.scope():
        return job.build_model()


def save_state(model, path):
    arrays = {}
    for name, table in mt.layers.model_tables(model).items():
        rows = table.export()
        order = np.argsort(rows["keys"].numpy())
        for field in ("keys", "values", "state", "counts"):
            arrays[f"{name}/{field}"] = rows[field].numpy()[order]
    for index, weight in enumerate(model.weights):
        arrays[f"weight/{index}"] = np.array(getattr(weight, "value", weight))
    np.savez(path + ".tmp.npz", **arrays)
    os.replace(path + ".tmp.npz", path)


def train(model, model_dir, data, strategy=None, tasks=(), steps_in_flight=1):
    worker = TrainingWorker(model, model_dir, sparse_every_steps=10, sparse_every_secs=None,
                            dense_every_steps=20, dense_every_secs=None, verbose=0,
                            tensorboard=False, strategy=strategy, tasks=list(tasks),
                            steps_in_flight=steps_in_flight)
    return worker.train(job.make_dataset([data], BATCH))


def assert_shards_hold_their_ids(model, num_ps):
    for name, table in mt.layers.model_tables(model).items():
        assert isinstance(table, ShardedHashTable) and table.num_shards == num_ps, name
        for index, shard in enumerate(table.shards):
            assert shard.resource_handle.device.startswith(f"/job:ps/replica:0/task:{index}/")
            keys = shard.export()["keys"]
            assert bool(tf.reduce_all(shard_ids(keys, num_ps) == index)), (name, index)
        assert int(tf.reduce_sum(table.shard_sizes())) == int(table.size())


def single(directory):
    model = build()
    train(model, os.path.join(directory, "single"), os.path.join(directory, "u.data"))
    save_state(model, os.path.join(directory, "single.npz"))
    mt.export_saved_model(model, os.path.join(directory, "single_export"))


class KillWorkerAt(StepTask):
    """Kills worker 0 with SIGKILL after step ``step`` and starts it again a
    second later: the ClusterCoordinator retries the next step until the
    worker is back."""

    def __init__(self, cluster, step):
        self.cluster, self.step, self.restarted = cluster, step, threading.Event()

    def begin(self, worker):
        pass

    def after_step(self, worker):
        if worker.step == self.step:
            self.cluster.kill("worker", 0)
            timer = threading.Timer(1.0, lambda: (self.cluster.restart("worker", 0),
                                                  self.restarted.set()))
            timer.start()

    def finish(self, worker):
        pass


def cluster2(directory):
    with LocalCluster(num_ps=2, num_workers=1) as cluster:
        strategy = connect(cluster.cluster, timeout=60)
        model = build(strategy)
        killer = KillWorkerAt(cluster, step=12)
        # The sync publisher, unchanged, on the sharded model: rows every
        # 5 steps' worth of data time, a base version when training begins.
        publisher = SyncPublisher(open_log({"path": os.path.join(directory, "sync")}),
                                  os.path.join(directory, "models"), sparse_every_secs=None,
                                  sparse_every_data_secs=5 * BATCH * 10)
        result = train(model, os.path.join(directory, "cluster"),
                       os.path.join(directory, "u.data"), strategy, tasks=[killer, publisher])
        publisher.close()
        assert killer.restarted.is_set() and result["steps"] == 30, result
        assert publisher.totals["pushes"] >= 5, publisher.totals
        assert_shards_hold_their_ids(model, 2)
        save_state(model, os.path.join(directory, "cluster2.npz"))
        mt.export_saved_model(model, os.path.join(directory, "cluster2_export"))


def pipelined(directory):
    """2 PS, 2 workers, up to 4 steps in flight: asynchronous training."""
    with LocalCluster(num_ps=2, num_workers=2) as cluster:
        strategy = connect(cluster.cluster, timeout=60)
        model = build(strategy)
        result = train(model, os.path.join(directory, "pipelined"),
                       os.path.join(directory, "u.data"), strategy, steps_in_flight=4)
        assert result["steps"] == 30 and result["examples"] == 30 * BATCH, result
        assert_shards_hold_their_ids(model, 2)
        save_state(model, os.path.join(directory, "pipelined.npz"))


def restore3(directory):
    """The 2-PS run's newest sparse checkpoint restored onto 3 PS."""
    with LocalCluster(num_ps=3, num_workers=1) as cluster:
        strategy = connect(cluster.cluster, timeout=60)
        model = build(strategy)
        model({"user_id": tf.constant([1], tf.int64), "movie_id": tf.constant([1], tf.int64),
               "timestamp": tf.constant([0], tf.int64)})
        tables = {table_file_name(name): table
                  for name, table in mt.layers.model_tables(model).items()}
        SparseCheckpointer(os.path.join(directory, "cluster", "sparse"), tables).restore()
        assert_shards_hold_their_ids(model, 3)
        save_state(model, os.path.join(directory, "restore3.npz"))


SCENARIOS = {"single": single, "cluster2": cluster2, "restore3": restore3,
             "pipelined": pipelined}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]](sys.argv[2])
    print(f"OK {sys.argv[1]}", flush=True)
