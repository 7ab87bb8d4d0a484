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
    rows = read_rows(os.path.join(delta, "emb.rows.00000"))  # one file: small delta
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


def test_blocks_roll_over_files_and_restore_block_by_block(tmp_path):
    table = make_table()
    train(table, np.arange(5000), 1)
    saver = SparseCheckpointer(str(tmp_path), {"emb": table}, chunk_rows=700, file_bytes=50_000)
    path = saver.save(metadata={"step": 7})
    manifest = json.load(open(os.path.join(path, "manifest.json")))
    files = manifest["tables"]["emb"]["files"]
    assert len(files) > 2 and sum(f["rows"] for f in files) == 5000
    assert manifest["metadata"] == {"step": 7}
    restored = make_table()
    SparseCheckpointer(str(tmp_path), {"emb": restored}).restore()
    assert_same(table, restored)


def test_restore_upto_an_older_checkpoint_discards_the_newer_ones(tmp_path):
    table = make_table()
    saver = SparseCheckpointer(str(tmp_path), {"emb": table})
    train(table, np.arange(50), 1)
    saver.save()
    train(table, np.arange(40, 60), 2)
    middle = saver.save()
    expected = sorted_rows(table)
    train(table, np.arange(55, 90), 3)
    saver.save()
    restored = make_table()
    resumed = SparseCheckpointer(str(tmp_path), {"emb": restored})
    assert resumed.restore(upto=middle, discard_newer=True) == middle
    got = sorted_rows(restored)
    for field in expected:
        np.testing.assert_array_equal(got[field], expected[field], err_msg=field)
    assert [seq for seq, _, _ in list_checkpoints(str(tmp_path))] == [1, 2]
    # The next delta builds on the restored state: a later restore equals it.
    train(restored, [7, 1000], 4)
    resumed.save()
    again = make_table()
    SparseCheckpointer(str(tmp_path), {"emb": again}).restore()
    assert_same(restored, again)
    with pytest.raises(CheckpointError, match="not a complete sparse checkpoint"):
        resumed.restore(upto=str(tmp_path / "sparse-00000009-delta"))


def test_evict_on_save_removes_expired_rows_first(tmp_path):
    table = make_table(expire_after=10, evict_on_save=True)
    saver = SparseCheckpointer(str(tmp_path), {"emb": table})
    train(table, [1, 2], 5)
    train(table, [3], 100)
    path = saver.save()
    assert sorted(read_rows(os.path.join(path, "emb.rows.00000"))["keys"]) == [3]
