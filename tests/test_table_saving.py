"""Checkpoint and SavedModel round trips: rows, optimizer state, timestamps
and counts all survive, including into a fresh process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import monolith_tf as mt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def trained_table(optimizer="adam", name="emb"):
    table = mt.HashTable(4, initializer="uniform(minval=-1, maxval=1)", optimizer=optimizer,
                         seed=9, name=name)
    rng = np.random.default_rng(0)
    for step in range(5):
        ids = tf.constant(rng.integers(0, 300, size=64), tf.int64)
        table.lookup(ids, training=True)
        table.apply_gradients(ids, rng.normal(size=(64, 4)).astype(np.float32), 0.05,
                              timestamps=tf.constant(1000 + step, tf.int64))
    return table


def sorted_export(table):
    exported = {k: v.numpy() for k, v in table.export().items()}
    order = np.argsort(exported["keys"])
    return {k: v[order] for k, v in exported.items()}


def assert_same_rows(a, b):
    ea, eb = sorted_export(a), sorted_export(b)
    for field in ea:
        np.testing.assert_array_equal(ea[field], eb[field], err_msg=field)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "adam", "ftrl"])
def test_checkpoint_round_trip_is_exact(tmp_path, optimizer):
    table = trained_table(optimizer)
    path = tf.train.Checkpoint(table=table).save(str(tmp_path / "ckpt"))
    restored = mt.HashTable(4, initializer="uniform(minval=-1, maxval=1)", optimizer=optimizer,
                            seed=9)
    restored.lookup([123456], training=True)  # replaced by the restore
    tf.train.Checkpoint(table=restored).restore(path).assert_consumed()
    assert_same_rows(table, restored)
    # Training continues identically from the restored state.
    ids = tf.constant([1, 2, 2, 999], tf.int64)
    grads = tf.ones([4, 4])
    for t in (table, restored):
        t.lookup(ids, training=True)
        t.apply_gradients(ids, grads, 0.1, timestamps=tf.constant(2000, tf.int64))
    assert_same_rows(table, restored)


def test_checkpoint_restore_replaces_later_rows(tmp_path):
    table = trained_table()
    checkpoint = tf.train.Checkpoint(table=table)
    path = checkpoint.save(str(tmp_path / "ckpt"))
    expected = sorted_export(table)
    table.lookup(tf.range(10_000, 10_100, dtype=tf.int64), training=True)
    checkpoint.restore(path)
    got = sorted_export(table)
    np.testing.assert_array_equal(got["keys"], expected["keys"])
    np.testing.assert_array_equal(got["state"], expected["state"])


class Serving(tf.Module):
    def __init__(self, table):
        super().__init__()
        self.table = table
        self.scale = tf.Variable(2.0)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
    def serve(self, ids):
        return self.table.lookup(ids, training=False) * self.scale

    # A loaded SavedModel revives the table as a generic resource (TensorFlow
    # has no public hook to revive custom classes), so what serving and tests
    # need is exported as functions.
    @tf.function(input_signature=[])
    def size(self):
        return self.table.size()

    @tf.function(input_signature=[])
    def export(self):
        return self.table.export()


@pytest.mark.slow
def test_saved_model_loads_in_a_fresh_process(tmp_path):
    table = trained_table()
    export_dir = str(tmp_path / "saved")
    tf.saved_model.save(Serving(table), export_dir)
    probe = [0, 5, 17, 299, 10**12]
    expected = (table.lookup(probe) * 2.0).numpy()
    script = (
        "import json, sys, numpy as np, tensorflow as tf\n"
        "import monolith_tf.ops  # registers the ops before loading\n"
        "m = tf.saved_model.load(sys.argv[1])\n"
        "ids = tf.constant(json.loads(sys.argv[2]), tf.int64)\n"
        "out = m.serve(ids).numpy()\n"
        "size = int(m.size())\n"
        "m.serve(tf.constant([424242], tf.int64))\n"
        "print(json.dumps({'out': out.tolist(), 'size': size,\n"
        "                  'size_after_serving_new_id': int(m.size())}))\n")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", script, export_dir, json.dumps(probe)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_array_equal(np.array(answer["out"], np.float32), expected)
    assert answer["size"] == int(table.size())
    assert answer["size_after_serving_new_id"] == answer["size"]


def test_saved_model_keeps_optimizer_state(tmp_path):
    table = trained_table("adagrad")
    export_dir = str(tmp_path / "saved")
    tf.saved_model.save(Serving(table), export_dir)
    loaded = tf.saved_model.load(export_dir)
    exported = loaded.export()
    expected = sorted_export(table)
    order = np.argsort(exported["keys"].numpy())
    for field in expected:
        np.testing.assert_array_equal(exported[field].numpy()[order], expected[field])
