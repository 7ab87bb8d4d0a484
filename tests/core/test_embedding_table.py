"""The TF-free core through pybind11: storage, growth, collisions, export."""

import os

import numpy as np
import pytest

from monolith_tf import _core

UNDER_ASAN = os.environ.get("MONOLITH_ASAN") == "1"


def random_keys(n, seed=0):
    keys = np.random.default_rng(seed).integers(-2**63, 2**63 - 1, size=2 * n, dtype=np.int64)
    return np.unique(keys)[:n]


def test_rows_are_found_and_stable():
    table = _core.EmbeddingTable(dim=8, initializer="uniform(minval=-1, maxval=1)", seed=7)
    keys = random_keys(5000)
    first = table.lookup(keys, insert_missing=True)
    assert table.size() == len(keys)
    np.testing.assert_array_equal(table.lookup(keys, insert_missing=False), first)
    np.testing.assert_array_equal(table.lookup(keys, insert_missing=True), first)
    assert table.size() == len(keys)


def test_serving_lookup_inserts_nothing_and_reads_zeros():
    table = _core.EmbeddingTable(dim=4, initializer="ones")
    table.lookup(np.array([1, 2], np.int64))
    out = table.lookup(np.array([1, 3, 2, 4], np.int64), insert_missing=False)
    np.testing.assert_array_equal(out, [[1] * 4, [0] * 4, [1] * 4, [0] * 4])
    assert table.size() == 2


def test_duplicate_new_ids_in_one_batch_get_one_row():
    table = _core.EmbeddingTable(dim=3, initializer="normal(stddev=1)")
    out = table.lookup(np.array([5, 9, 5, 5, 9], np.int64))
    assert table.size() == 2
    np.testing.assert_array_equal(out[0], out[2])
    np.testing.assert_array_equal(out[1], out[4])


def test_a_batch_inserted_in_several_holds_keeps_one_row_per_key():
    """A training lookup inserts its new keys a slice at a time (16,384 per
    hold of the table's lock): a key repeated in a later slice finds the row
    its first copy made, with the initial value a lone insert gives."""
    keys = np.arange(1, 30_001, dtype=np.int64) * 7919
    batch = np.concatenate([keys, keys[::-1], keys[:5]])  # repeats far apart
    table = _core.EmbeddingTable(dim=3, initializer="normal(stddev=1)", seed=2)
    out = table.lookup(batch, insert_missing=True, threads=2)
    assert table.size() == len(keys)
    assert table.stats()["admitted"] == len(keys)
    np.testing.assert_array_equal(out[len(keys):2 * len(keys)], out[:len(keys)][::-1])
    np.testing.assert_array_equal(out[2 * len(keys):], out[:5])
    reference = _core.EmbeddingTable(dim=3, initializer="normal(stddev=1)", seed=2)
    sample = np.arange(0, len(keys), 997)
    expected = np.concatenate([reference.lookup(keys[i:i + 1]) for i in sample])
    np.testing.assert_array_equal(out[sample], expected)


def test_special_keys_are_ordinary_keys():
    table = _core.EmbeddingTable(dim=2, initializer="zeros")
    keys = np.array([0, -1, 2**63 - 1, -2**63, 1], np.int64)
    values = np.arange(10, dtype=np.float32).reshape(5, 2)
    table.assign(keys, values)
    np.testing.assert_array_equal(table.lookup(keys, insert_missing=False), values)


@pytest.mark.slow
def test_every_key_is_found_after_growth_to_10m():
    n = 2_000_000 if UNDER_ASAN else 10_000_000
    table = _core.EmbeddingTable(dim=1, initializer="zeros", optimizer="sgd")
    keys = random_keys(n, seed=1)
    values = (keys % 1000).astype(np.float32).reshape(-1, 1)
    batch = 1 << 16
    for start in range(0, n, batch):
        table.assign(keys[start:start + batch], values[start:start + batch])
    assert table.size() == n
    found = np.empty_like(values)
    for start in range(0, n, batch):
        found[start:start + batch] = table.lookup(keys[start:start + batch], insert_missing=False,
                                                  threads=2)
    np.testing.assert_array_equal(found, values)
    # Load factor stays high: the index grew by doubling, not by collisions.
    assert n / (table.num_buckets * 5) > 0.4


def colliding_keys(table, count, candidates=4_000_000):
    """Keys whose two candidate buckets are one and the same bucket 0."""
    keys = np.random.default_rng(3).integers(-2**63, 2**63 - 1, size=candidates, dtype=np.int64)
    b1, b2 = table.candidate_buckets(keys)
    hits = np.unique(keys[(b1 == 0) & (b2 == 0)])
    assert len(hits) >= count, "not enough colliding candidates"
    return hits[:count]


def test_adversarial_keys_sharing_both_buckets_are_all_stored():
    table = _core.EmbeddingTable(dim=2, initializer="zeros", capacity_hint=100)
    assert table.num_buckets <= 64
    keys = colliding_keys(table, 100)
    # 100 keys, one bucket of 5 slots under both hashes: the table must stash,
    # re-seed or grow, never drop or merge a key.
    values = np.stack([keys.astype(np.float32), -keys.astype(np.float32)], axis=1)
    table.assign(keys, values)
    assert table.size() == len(keys)
    np.testing.assert_array_equal(table.lookup(keys, insert_missing=False), values)
    # Ordinary keys still work next to them, and removal finds stashed keys.
    others = random_keys(1000, seed=9)
    table.lookup(others)
    assert table.size() == len(keys) + len(others)
    assert table.remove(keys) == len(keys)
    assert table.size() == len(others)
    np.testing.assert_array_equal(table.lookup(keys, insert_missing=False), 0)


def test_removed_entries_memory_is_reused():
    table = _core.EmbeddingTable(dim=16, initializer="zeros")
    keys = np.arange(100_000, dtype=np.int64)
    table.lookup(keys)
    before = None
    for _ in range(5):
        assert table.remove(keys) == len(keys)
        assert table.size() == 0
        keys = keys + len(keys)
        table.lookup(keys)
        assert table.size() == len(keys)
        # After the first round (which sizes the free list) nothing grows.
        before = before or table.memory_bytes()
        assert table.memory_bytes() == before
    assert table.remove(np.array([-5], np.int64)) == 0


def test_export_import_round_trip_is_exact():
    table = _core.EmbeddingTable(dim=3, initializer="truncated_normal(stddev=0.5)",
                                 optimizer="adam", seed=11)
    keys = random_keys(20_000, seed=4)
    table.lookup(keys)
    grads = np.random.default_rng(0).normal(size=(len(keys), 3)).astype(np.float32)
    table.apply_gradients(keys, grads, 0.01, timestamps=np.arange(len(keys), dtype=np.int64))
    table.apply_gradients(keys[:10], grads[:10], 0.01, timestamps=np.int64(123456))
    exported = table.export()
    copy = _core.EmbeddingTable(dim=3, initializer="truncated_normal(stddev=0.5)",
                                optimizer="adam", seed=11)
    copy.lookup(np.array([42, 43], np.int64))  # replaced by the import below
    copy.import_rows(**exported, clear=True)
    again = copy.export()
    order_a, order_b = np.argsort(exported["keys"]), np.argsort(again["keys"])
    for field in exported:
        np.testing.assert_array_equal(exported[field][order_a], again[field][order_b])
    assert copy.size() == len(keys)
    assert set(exported["counts"][order_a][np.searchsorted(exported["keys"][order_a], keys[:10])]) == {2}


def test_chunks_tile_the_table():
    table = _core.EmbeddingTable(dim=2, initializer="zeros", optimizer="sgd")
    keys = random_keys(30_000, seed=5)
    table.lookup(keys)
    parts = [table.export(chunk, 7)["keys"] for chunk in range(7)]
    joined = np.concatenate(parts)
    assert len(joined) == len(keys)
    np.testing.assert_array_equal(np.sort(joined), np.sort(keys))
    with pytest.raises(ValueError, match="chunk"):
        table.export(7, 7)


def test_import_validates_before_changing_anything():
    table = _core.EmbeddingTable(dim=2, initializer="ones", optimizer="sgd")
    table.lookup(np.array([1, 2], np.int64))
    with pytest.raises(ValueError, match="counts"):
        table.import_rows(np.array([5], np.int64), np.zeros((1, 2), np.float32),
                          np.zeros((1, 0), np.float32), np.zeros(1, np.int64),
                          np.array([-1], np.int64), clear=True)
    assert table.size() == 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(dim=0), "dim must be > 0"),
    (dict(dim=2**21), "dim must be > 0 and <="),
    (dict(dim=-3), "dim must be > 0"),
    (dict(dim=4, capacity_hint=-1), "capacity_hint must be >= 0"),
    (dict(dim=4, optimizer="rmsprop"), "unknown optimizer 'rmsprop'"),
    (dict(dim=4, initializer="glorot"), "unknown initializer 'glorot'"),
    (dict(dim=4, optimizer="adam(beta1=2)"), "beta1"),
    (dict(dim=4, optimizer="adagrad(lr=1)"), "no parameter 'lr'"),
    (dict(dim=4, optimizer="adagrad(epsilon=x)"), "finite number"),
    (dict(dim=4, initializer="uniform(minval=1, maxval=0)"), "minval <= maxval"),
    (dict(dim=4, initializer="normal(stddev=1"), "must end with"),
])
def test_bad_config_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _core.EmbeddingTable(**kwargs)


def test_bad_learning_rate_is_rejected_without_change():
    table = _core.EmbeddingTable(dim=2, initializer="ones", optimizer="ftrl")
    keys = np.array([1], np.int64)
    table.lookup(keys)
    before = table.export()
    for lr in (float("nan"), -1.0, 0.0):
        with pytest.raises(ValueError, match="learning_rate"):
            table.apply_gradients(keys, np.ones((1, 2), np.float32), lr)
    after = table.export()
    for field in before:
        np.testing.assert_array_equal(before[field], after[field])


@pytest.mark.skipif(not UNDER_ASAN, reason="checks the `make asan` run only")
def test_asan_run_loads_the_sanitized_build():
    # `make asan` sets MONOLITH_ASAN=1; make sure it did not test the -O3 build.
    assert os.sep + "asan" + os.sep in _core.__file__
