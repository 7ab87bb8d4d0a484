"""Sparse checkpoints: full + deltas, sizes, corruption, fallbacks."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import monolith_tf as mt
from monolith_tf.sparse_checkpoint import (CheckpointError, SparseCheckpointer,
                                           list_checkpoints, read_rows)


def make_table(**kwargs):
    options = dict(initializer="normal(stddev=0.1)", optimizer="adagrad", seed=3)
    options.update(kwargs)
    return mt.HashTable(4, **options)


def sorted_rows(table):
    rows = {k: v.numpy() for k, v in table.export().items()}
    order = np.argsort(rows["keys"])
    return {k: v[order] for k, v in rows.items()}


def assert_same(a, b):
    ra, rb = sorted_rows(a), sorted_rows(b)
    for field in ra:
        np.testing.assert_array_equal(ra[field], rb[field], err_msg=field)


def train(table, ids, now):
    ids = tf.constant(ids, tf.int64)
    table.lookup(ids, training=True)
    table.apply_gradients(ids, tf.ones([len(ids), 4]) * 0.1, 0.05, timestamps=now)


def test_full_plus_deltas_equals_a_full_snapshot(tmp_path):
    table = make_table(expire_after=100)
    saver = SparseCheckpointer(str(tmp_path / "ck"), {"emb": table}, chunk_rows=300)
    train(table, np.arange(1000), 10)
    saver.save()                                   # full
    train(table, np.arange(0, 1500, 7), 20)        # touches old and new rows
    table.remove([3, 4, 5])
    saver.save()                                   # delta 1
    train(table, np.arange(2000, 2100), 200)       # now = 200: old rows expire
    assert int(table.evict_expired()) > 0
    delta2 = saver.save()                          # delta 2 (evictions as removals)
    assert delta2.endswith("-delta")
    kinds = [kind for _, kind, _ in list_checkpoints(str(tmp_path / "ck"))]
    assert kinds == ["full", "delta", "delta"]

    restored = make_table(expire_after=100)
    SparseCheckpointer(str(tmp_path / "ck"), {"emb": restored}).restore()
    assert_same(table, restored)
    assert int(restored.stats()["now"]) == 200

    snapshot = make_table(expire_after=100)
    SparseCheckpointer(str(tmp_path / "snap"), {"emb": table}).save(full=True)
    SparseCheckpointer(str(tmp_path / "snap"), {"emb": snapshot}).restore()
    assert_same(restored, snapshot)


@pytest.mark.slow
def test_delta_size_is_proportional_to_touched_rows(tmp_path):
    table = mt.HashTable(8, initializer="zeros", optimizer="sgd")
    for start in range(0, 1_000_000, 100_000):
        table.lookup(tf.range(start, start + 100_000, dtype=tf.int64), training=True)
    saver = SparseCheckpointer(str(tmp_path), {"emb": table})
    full = saver.save()
    touched = np.random.default_rng(0).choice(1_000_000, 10_000, replace=False)
    table.apply_gradients(touched, tf.ones([10_000, 8]), 0.1)
    delta = saver.save()

    def size(path):
        return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))

    assert size(delta) < 0.02 * size(full)
    rows = read_rows(os.path.join(delta, "emb.rows.00000"))
    np.testing.assert_array_equal(np.sort(rows["keys"]), np.sort(touched))


def test_corrupt_file_names_itself_and_restore_falls_back(tmp_path):
    directory = str(tmp_path)
    table = make_table()
    saver = SparseCheckpointer(directory, {"emb": table}, keep_full=3)
    train(table, np.arange(100), 1)
    saver.save(full=True)
    expected = sorted_rows(table)
    train(table, np.arange(100, 200), 2)
    newest = saver.save(full=True)
    with open(os.path.join(newest, "emb.rows.00000"), "r+b") as f:
        f.seek(40)
        f.write(b"\xff\xff\xff\xff")
    with open(os.path.join(newest, "manifest.json")) as f:
        crc = json.load(f)["tables"]["emb"]["files"][0]["crc32"]
    with pytest.raises(CheckpointError, match="emb.rows.00000"):
        read_rows(os.path.join(newest, "emb.rows.00000"), expected_crc=crc)
    restored = make_table()
    applied = SparseCheckpointer(directory, {"emb": restored}).restore()
    assert applied.endswith("00000001-full")
    got = sorted_rows(restored)
    np.testing.assert_array_equal(got["keys"], expected["keys"])
    np.testing.assert_array_equal(got["values"], expected["values"])


def test_partial_and_missing_directories(tmp_path):
    table = make_table()
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        SparseCheckpointer(str(tmp_path / "absent"), {"emb": table}).restore()
    assert SparseCheckpointer(str(tmp_path), {"emb": table}).restore() is None
    os.makedirs(tmp_path / ".partial-00000001-full")        # an interrupted save
    os.makedirs(tmp_path / "sparse-00000002-full")          # renamed but no manifest
    assert list_checkpoints(str(tmp_path)) == []


def test_mismatched_table_config_is_a_clear_error(tmp_path):
    saver = SparseCheckpointer(str(tmp_path), {"emb": make_table()})
    saver.save()
    other = mt.HashTable(8, optimizer="adagrad")
    with pytest.raises(CheckpointError, match="dim 4 .* the model's has dim 8"):
        SparseCheckpointer(str(tmp_path), {"emb": other}).restore()
    assert int(other.size()) == 0


def test_pruning_keeps_the_newest_chains(tmp_path):
    table = make_table()
    saver = SparseCheckpointer(str(tmp_path), {"emb": table}, keep_full=2)
    for step in range(4):
        train(table, [step], step)
        saver.save(full=True)
        train(table, [step + 100], step)
        saver.save()
    kinds = [(seq, kind) for seq, kind, _ in list_checkpoints(str(tmp_path))]
    assert kinds == [(5, "full"), (6, "delta"), (7, "full"), (8, "delta")]
