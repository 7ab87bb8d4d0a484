"""Sharded tables: id routing against an independent numpy reference, a
sharded table against an unsharded one (in process and with the shards on
the PS tasks of a localhost cluster), and the cluster's bad inputs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import monolith_tf as mt
from monolith_tf import _core
from monolith_tf.cluster import LocalCluster, check_cluster_spec, connect, wait_for_cluster
from monolith_tf.sharded_table import ShardedHashTable, ps_devices, shard_ids

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MASK = (1 << 64) - 1


def reference_shard(ids, num_shards):
    """The documented routing, in plain Python integers."""
    out = []
    for key in ids:
        x = (int(key) & MASK) ^ 0x6A09E667F3BCC909
        x ^= x >> 30
        x = (x * 0xBF58476D1CE4E5B9) & MASK
        x ^= x >> 27
        x = (x * 0x94D049BB133111EB) & MASK
        x ^= x >> 31
        out.append((x * num_shards) >> 64)
    return np.array(out, np.int32)


@pytest.mark.parametrize("num_shards", [1, 2, 3, 7])
def test_routing_matches_the_documented_hash_and_is_balanced(num_shards):
    rng = np.random.default_rng(num_shards)
    ids = np.concatenate([rng.integers(-2**63, 2**63 - 1, 2000, dtype=np.int64),
                          np.arange(-5, 5, dtype=np.int64)])
    want = reference_shard(ids, num_shards)
    np.testing.assert_array_equal(shard_ids(ids, num_shards).numpy(), want)
    np.testing.assert_array_equal(_core.shard_of(ids, num_shards), want)
    # Shape kept; sequential ids (the common case) spread evenly.
    assert shard_ids(ids.reshape(-1, 2), num_shards).shape == (len(ids) // 2, 2)
    counts = np.bincount(shard_ids(np.arange(100_000), num_shards).numpy(),
                         minlength=num_shards)
    assert counts.min() > 0.95 * 100_000 / num_shards


def test_bad_shard_counts_and_id_dtypes():
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_shards"):
        shard_ids([1, 2], 0)
    with pytest.raises(tf.errors.InvalidArgumentError):
        shard_ids(tf.constant([1.5]), 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_shards"):
        ShardedHashTable(4, num_shards=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="differs"):
        ShardedHashTable(4, devices=[None, None], num_shards=3)


def train_both(sharded, single, steps, seed=0):
    rng = np.random.default_rng(seed)
    for step in range(steps):
        ids = rng.integers(0, 3000, (64, 3))
        got = sharded.lookup(ids, training=True)
        want = single.lookup(ids, training=True)
        np.testing.assert_array_equal(got.numpy(), want.numpy())
        grads = rng.normal(size=(64, 3, 4)).astype(np.float32)
        sharded.apply_gradients(ids, grads, 0.1, timestamps=step)
        single.apply_gradients(ids, grads, 0.1, timestamps=step)


def sorted_rows(rows):
    rows = {k: np.asarray(v) for k, v in rows.items()}
    order = np.argsort(rows["keys"])
    return {k: v[order] for k, v in rows.items()}


def assert_same_rows(sharded, single):
    got, want = sorted_rows(sharded.export()), sorted_rows(single.export())
    for field in want:
        np.testing.assert_array_equal(got[field], want[field], err_msg=field)


OPTIONS = dict(initializer="normal(stddev=0.1)", optimizer="adagrad", seed=5)


def test_sharded_table_equals_an_unsharded_one_and_each_shard_holds_its_ids():
    sharded = ShardedHashTable(4, num_shards=3, **OPTIONS)
    single = mt.HashTable(4, **OPTIONS)
    train_both(sharded, single, steps=6)
    assert_same_rows(sharded, single)
    sizes = sharded.shard_sizes().numpy()
    assert sizes.sum() == int(single.size()) == int(sharded.size())
    for index, table in enumerate(sharded.shards):
        keys = table.export()["keys"].numpy()
        assert len(keys) == sizes[index] > 0
        assert (reference_shard(keys, 3) == index).all()
    # Removal, assignment and expiry go to the owning shard.
    assert int(sharded.remove([1, 2, 3, 10**9])) == int(single.remove([1, 2, 3, 10**9]))
    sharded.assign([7, 8], np.ones((2, 4), np.float32))
    single.assign([7, 8], np.ones((2, 4), np.float32))
    assert_same_rows(sharded, single)


@pytest.mark.slow
def test_shards_on_the_ps_tasks_of_a_localhost_cluster_equal_one_process():
    """In a fresh process: connecting makes the process's eager context the
    cluster's for good, which the rest of this session must not inherit."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests")]),
               TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", "import test_sharded_table as t; "
                             "t.shards_on_a_localhost_cluster(); print('OK')"],
                            capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0 and "OK" in result.stdout, \
        result.stdout[-2000:] + result.stderr[-4000:]


def shards_on_a_localhost_cluster():
    """Two PS tasks and a worker on 127.0.0.1: the shards live on the PS
    tasks, steps run by the chief and scheduled on the worker give the rows
    of one unsharded table, each PS holds only the ids routed to it."""
    with LocalCluster(num_ps=2, num_workers=1) as cluster:
        strategy = connect(cluster.cluster, timeout=60)
        sharded = ShardedHashTable(4, devices=ps_devices(2), **OPTIONS)
        assert [t.resource_handle.device for t in sharded.shards] == \
            ["/job:ps/replica:0/task:0/device:CPU:0", "/job:ps/replica:0/task:1/device:CPU:0"]
        single = mt.HashTable(4, **OPTIONS)

        @tf.function
        def step(ids, grads, now):
            rows = sharded.lookup(ids, training=True)
            sharded.apply_gradients(ids, grads, 0.1, timestamps=now)
            return rows

        rng = np.random.default_rng(1)
        coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
        for index in range(4):
            ids = rng.integers(0, 3000, (64, 3))
            grads = rng.normal(size=(64, 3, 4)).astype(np.float32)
            args = (tf.constant(ids), tf.constant(grads), tf.constant(index, tf.int64))
            if index % 2:   # a step scheduled on the worker task
                got = coordinator.schedule(step, args=args)
                coordinator.join()
                got = got.fetch()
            else:           # a step run by the chief
                got = step(*args).numpy()
            np.testing.assert_array_equal(got, single.lookup(ids, training=True).numpy())
            single.apply_gradients(ids, grads, 0.1, timestamps=index)
        assert_same_rows(sharded, single)
        sizes = sharded.shard_sizes().numpy()
        assert sizes.sum() == int(single.size()) and sizes.min() > 0
        for index, table in enumerate(sharded.shards):
            assert (reference_shard(table.export()["keys"].numpy(), 2) == index).all()


@pytest.mark.integration
def test_cluster_spec_without_ps_and_unreachable_tasks_are_clear_errors():
    with pytest.raises(ValueError, match="no 'ps' tasks"):
        check_cluster_spec({"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"]})
    with pytest.raises(ValueError, match="unknown jobs"):
        check_cluster_spec({"ps": ["127.0.0.1:1"], "master": ["127.0.0.1:2"]})
    with pytest.raises(ValueError, match="no 'chief'"):
        connect({"ps": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"]})
    import socket
    with socket.socket() as sock:   # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(TimeoutError, match=f"ps task 0 at {dead} unreachable after 1 s"):
        wait_for_cluster({"ps": [dead], "chief": ["127.0.0.1:1"]}, timeout=1.0)


@pytest.mark.parametrize("restore_onto", [3, 1, None])
def test_a_checkpoint_of_2_shards_restores_onto_other_shard_counts(tmp_path, restore_onto):
    """Sparse checkpoints (full + delta) of a 2-shard table restore onto 3
    shards, 1 shard, and an unsharded HashTable with exactly the same rows;
    rows land on the shards their ids route to now."""
    from monolith_tf.sparse_checkpoint import SparseCheckpointer

    options = dict(OPTIONS, expire_after=100)
    sharded = ShardedHashTable(4, num_shards=2, **options)
    single = mt.HashTable(4, **options)
    train_both(sharded, single, steps=3)
    saver = SparseCheckpointer(str(tmp_path), {"emb": sharded}, chunk_rows=128)
    saver.save()                                   # full, several blocks
    train_both(sharded, single, steps=2, seed=1)
    sharded.remove([5, 6, 7])
    single.remove([5, 6, 7])
    delta = saver.save()                           # delta with removals
    # Each shard wrote its own files, holding only the ids routed to it.
    from monolith_tf.sparse_checkpoint import read_manifest, read_rows
    entry = read_manifest(delta)["tables"]["emb"]
    assert entry["shards"] == 2 and sorted({info["shard"] for info in entry["files"]}) == [0, 1]
    for info in entry["files"]:
        assert info["file"].startswith(f"emb.s{info['shard']}.rows."), info
        keys = read_rows(os.path.join(delta, info["file"]), info["crc32"])["keys"]
        assert len(keys) == info["rows"]
        assert (reference_shard(keys, 2) == info["shard"]).all()
    restored = (mt.HashTable(4, **options) if restore_onto is None
                else ShardedHashTable(4, num_shards=restore_onto, **options))
    SparseCheckpointer(str(tmp_path), {"emb": restored}).restore()
    assert_same_rows(restored, single)
    assert int(restored.stats()["now"]) == int(single.stats()["now"])
    if restore_onto:
        for index, table in enumerate(restored.shards):
            assert (reference_shard(table.export()["keys"].numpy(), restore_onto) == index).all()
    # And back: an unsharded checkpoint restores onto shards.
    SparseCheckpointer(str(tmp_path / "single"), {"emb": single}).save()
    onto_two = ShardedHashTable(4, num_shards=2, **options)
    SparseCheckpointer(str(tmp_path / "single"), {"emb": onto_two}).restore()
    assert_same_rows(onto_two, single)


def test_a_checkpoint_missing_a_shards_file_is_a_clear_error_and_restore_falls_back(tmp_path):
    """A shard's row file that never reached the shared file system makes
    its checkpoint unrestorable: the error names the file and the shard, and
    restore falls back to the previous complete chain, changing nothing
    else."""
    from monolith_tf.sparse_checkpoint import CheckpointError, SparseCheckpointer, read_manifest

    sharded = ShardedHashTable(4, num_shards=2, **OPTIONS)
    single = mt.HashTable(4, **OPTIONS)
    train_both(sharded, single, steps=2)
    saver = SparseCheckpointer(str(tmp_path), {"emb": sharded}, keep_full=2)
    older = saver.save()
    before = sorted_rows(single.export())
    train_both(sharded, single, steps=2, seed=1)
    newest = saver.save(full=True)
    lost = [info for info in read_manifest(newest)["tables"]["emb"]["files"]
            if info["shard"] == 1][0]
    os.remove(os.path.join(newest, lost["file"]))
    with pytest.raises(CheckpointError) as raised:
        SparseCheckpointer(str(tmp_path), {"emb": ShardedHashTable(4, num_shards=2, **OPTIONS)}
                           ).restore(upto=newest)
    message = str(raised.value)
    assert lost["file"] in message and "shard 1 of 2" in message, message
    assert "No such file" in message, message
    fallback = ShardedHashTable(4, num_shards=3, **OPTIONS)
    assert SparseCheckpointer(str(tmp_path), {"emb": fallback}).restore() == older
    got = sorted_rows(fallback.export())
    for field in before:
        np.testing.assert_array_equal(got[field], before[field], err_msg=field)


def test_admission_counts_survive_a_checkpoint_of_the_same_layout_only(tmp_path):
    """With occurrence_threshold=2 an id seen once is counted, not admitted.
    Restored onto as many shards, the second sighting admits it; onto another
    count the filter sketches cannot be split by id and start empty."""
    from monolith_tf.sparse_checkpoint import SparseCheckpointer

    options = dict(OPTIONS, occurrence_threshold=2)
    sharded = ShardedHashTable(4, num_shards=2, **options)
    ids = np.arange(100, 200)
    sharded.lookup(ids, training=True)
    assert int(sharded.size()) == 0
    SparseCheckpointer(str(tmp_path), {"emb": sharded}).save()
    for shards, admitted in ((2, 100), (3, 0)):
        restored = ShardedHashTable(4, num_shards=shards, **options)
        SparseCheckpointer(str(tmp_path), {"emb": restored}).restore()
        restored.lookup(ids, training=True)
        assert int(restored.size()) == admitted, shards


def run_scenario(name, directory, timeout=300):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests")]),
               TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tests", "cluster_scenarios.py"), name,
         str(directory)], capture_output=True, text=True, env=env, timeout=timeout)
    assert result.returncode == 0 and f"OK {name}" in result.stdout, \
        result.stdout[-2000:] + result.stderr[-4000:]
    return dict(np.load(directory / f"{name}.npz"))


@pytest.mark.slow
def test_training_worker_on_2_ps_equals_one_process_and_checkpoints_reshard(tmp_path):
    """The same job trained by one process and by a localhost cluster (2 PS,
    1 worker killed and restarted mid-run) ends with the same rows and dense
    weights; its sparse checkpoint restored onto 3 PS and onto one process
    holds exactly its rows."""
    from test_training import write_ratings

    from cluster_scenarios import build

    write_ratings(tmp_path / "u.data", 64 * 30, seed=3)
    single = run_scenario("single", tmp_path)
    cluster = run_scenario("cluster2", tmp_path)
    assert single.keys() == cluster.keys()
    for key in single:
        if key.endswith(("/keys", "/counts")):
            np.testing.assert_array_equal(cluster[key], single[key], err_msg=key)
        elif single[key].dtype.kind == "f":
            np.testing.assert_allclose(cluster[key], single[key], rtol=1e-5, atol=1e-6,
                                       err_msg=key)
    # The serving exports of both models answer alike (stock ops: loaded
    # here without the cluster), and a replica following the cluster's sync
    # stream serves its final rows.
    features = {"user_id": tf.constant(np.arange(1, 300), tf.int64),
                "movie_id": tf.constant(np.arange(300, 1, -1), tf.int64),
                "timestamp": tf.zeros([299], tf.int64)}
    scores = [list(tf.saved_model.load(str(tmp_path / name)).signatures["serving_default"](
        **features).values())[0].numpy() for name in ("single_export", "cluster2_export")]
    np.testing.assert_allclose(scores[1], scores[0], rtol=1e-5, atol=1e-6)
    from replica_rows import served_rows
    served = served_rows(str(tmp_path / "models"), str(tmp_path / "sync"))
    assert served
    for name, (ids, values) in served.items():
        np.testing.assert_array_equal(ids, cluster[f"{name}/keys"])
        np.testing.assert_array_equal(values, cluster[f"{name}/values"])
    # The PS tasks wrote their own shards' row files.
    from monolith_tf.sparse_checkpoint import list_checkpoints, read_manifest, read_rows
    newest = list_checkpoints(str(tmp_path / "cluster" / "sparse"))[-1][2]
    for name, entry in read_manifest(newest)["tables"].items():
        assert sorted({info["shard"] for info in entry["files"]}) == [0, 1], name
        for info in entry["files"]:
            keys = read_rows(os.path.join(newest, info["file"]), info["crc32"])["keys"]
            assert (reference_shard(keys, 2) == info["shard"]).all(), info
    onto_three = run_scenario("restore3", tmp_path)
    table_keys = [key for key in cluster if not key.startswith("weight/")]
    for key in table_keys:
        np.testing.assert_array_equal(onto_three[key], cluster[key], err_msg=key)
    # Onto one process: the same checkpoint, unsharded tables.
    from monolith_tf.schema import table_file_name
    from monolith_tf.sparse_checkpoint import SparseCheckpointer
    model = build()
    model({"user_id": tf.constant([1], tf.int64), "movie_id": tf.constant([1], tf.int64),
           "timestamp": tf.constant([0], tf.int64)})
    tables = {table_file_name(name): table for name, table in mt.layers.model_tables(model).items()}
    SparseCheckpointer(str(tmp_path / "cluster" / "sparse"), tables).restore()
    for name, table in mt.layers.model_tables(model).items():
        rows = sorted_rows(table.export())
        for field in ("keys", "values", "state", "counts"):
            np.testing.assert_array_equal(rows[field], cluster[f"{name}/{field}"],
                                          err_msg=f"{name} {field}")


def checkpoint_rows(directory, upto):
    """{table: sorted keys and counts} of the sparse checkpoint chain ending at
    ``upto``, restored onto one process's unsharded tables."""
    from cluster_scenarios import build

    from monolith_tf.schema import table_file_name
    from monolith_tf.sparse_checkpoint import SparseCheckpointer
    model = build()
    model({"user_id": tf.constant([1], tf.int64), "movie_id": tf.constant([1], tf.int64),
           "timestamp": tf.constant([0], tf.int64)})
    tables = mt.layers.model_tables(model)
    SparseCheckpointer(directory, {table_file_name(name): table
                                   for name, table in tables.items()}).restore(upto=upto)
    return {name: sorted_rows({k: v for k, v in table.export().items()
                               if k in ("keys", "counts")}) for name, table in tables.items()}


@pytest.mark.slow
def test_steps_in_flight_train_every_batch_once_and_checkpoint_exactly_the_counted_steps(
        tmp_path):
    """2 PS, 2 workers, 4 steps in flight (asynchronous): every batch is
    trained exactly once (ids and occurrence counts equal the one-process
    run's, which do not depend on step order), and each checkpoint holds
    exactly the steps its metadata counts: the rows and counts of the
    one-process checkpoint at the same step, no step in flight leaked in."""
    from test_training import write_ratings

    from monolith_tf.sparse_checkpoint import list_checkpoints, read_manifest
    write_ratings(tmp_path / "u.data", 64 * 30, seed=3)
    single = run_scenario("single", tmp_path)
    pipelined = run_scenario("pipelined", tmp_path)
    for key in single:
        if key.endswith(("/keys", "/counts")):
            np.testing.assert_array_equal(pipelined[key], single[key], err_msg=key)
    saved = {name: [(read_manifest(path)["metadata"]["step"], path)
                    for _, _, path in list_checkpoints(str(tmp_path / name / "sparse"))]
             for name in ("single", "pipelined")}
    assert [step for step, _ in saved["pipelined"]] == [10, 20, 30], saved
    assert [step for step, _ in saved["single"]] == [10, 20, 30], saved
    for (step, path), (_, reference) in zip(saved["pipelined"], saved["single"]):
        got = checkpoint_rows(str(tmp_path / "pipelined" / "sparse"), path)
        want = checkpoint_rows(str(tmp_path / "single" / "sparse"), reference)
        for name in want:
            for field in ("keys", "counts"):
                np.testing.assert_array_equal(got[name][field], want[name][field],
                                              err_msg=f"step {step} {name} {field}")


@pytest.mark.slow
def test_cli_trains_on_a_local_cluster_and_rejects_bad_specs(tmp_path, capsys):
    from test_training import write_ratings

    data = write_ratings(tmp_path / "u.data", 64 * 12, seed=1)
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, "-m", "monolith_tf", "train", "--job",
               os.path.join(REPO, "examples", "movielens_ctr_job.py"), "--data", data,
               "--model-dir", str(tmp_path / "run"), "--batch-size", "64", "--verbose", "0"]
    result = subprocess.run(command + ["--local-cluster", "ps=2,workers=2"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"steps": 12' in result.stdout
    assert os.listdir(tmp_path / "run" / "sparse") and os.listdir(tmp_path / "run" / "dense")

    # Bad specs fail before any cluster starts: checked through the CLI's main here.
    from test_cli import cli_status

    arguments = command[3:]   # after "python -m monolith_tf"
    for flag, value, message in (
            ("--local-cluster", "ps=two", "--local-cluster must be ps=N,workers=M"),
            ("--cluster", '{"chief": ["127.0.0.1:1"]}', "no 'ps' tasks")):
        capsys.readouterr()
        status = cli_status(arguments + [flag, value])
        assert status != 0 and message in capsys.readouterr().err, (flag, value)


def test_tf_config_is_read_for_task_servers():
    from monolith_tf.cluster import cluster_from_tf_config

    spec = {"ps": ["127.0.0.1:1"], "chief": ["127.0.0.1:2"]}
    config = {"TF_CONFIG": json.dumps({"cluster": spec, "task": {"type": "ps", "index": 0}})}
    assert cluster_from_tf_config(config) == (spec, "ps", 0)
    with pytest.raises(ValueError, match="TF_CONFIG is not set"):
        cluster_from_tf_config({})
    with pytest.raises(ValueError, match="not a cluster config"):
        cluster_from_tf_config({"TF_CONFIG": "[1, 2]"})
