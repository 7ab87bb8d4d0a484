"""One suite, every table implementation (Monolith's one-fixture habit):
``HashTable`` and ``ShardedHashTable`` with 1 and 3 shards must behave
alike against an independent numpy model of the table (SGD, constant
initializer): lookups, gradient applies with duplicate ids, assign, remove,
export/import, the sync-change record, stats and filter state."""

import numpy as np
import pytest
import tensorflow as tf

import monolith_tf as mt
from monolith_tf.schema import STATS_FIELDS
from monolith_tf.sharded_table import ShardedHashTable
from monolith_tf.table_interface import EmbeddingTable

DIM = 3
IMPLEMENTATIONS = {
    "hash_table": lambda **options: mt.HashTable(DIM, **options),
    "sharded_1": lambda **options: ShardedHashTable(DIM, num_shards=1, **options),
    "sharded_3": lambda **options: ShardedHashTable(DIM, num_shards=3, **options),
}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def make_table(request):
    def make(**options):
        options.setdefault("initializer", "ones")
        options.setdefault("optimizer", "sgd")
        return IMPLEMENTATIONS[request.param](**options)
    return make


class Reference:
    """The table as a dict of numpy rows (SGD, rows start at ones)."""

    def __init__(self):
        self.rows = {}

    def train(self, ids, grads, rate):
        for key in ids:
            self.rows.setdefault(int(key), np.ones(DIM, np.float32))
        summed = {}
        for key, grad in zip(ids, grads):
            summed[int(key)] = summed.get(int(key), 0) + grad
        for key, grad in summed.items():
            self.rows[key] = self.rows[key] - np.float32(rate) * grad.astype(np.float32)

    def lookup(self, ids):
        return np.stack([self.rows.get(int(k), np.zeros(DIM, np.float32)) for k in ids])


def _sorted(exported):
    order = np.argsort(exported["keys"].numpy())
    return {name: value.numpy()[order] for name, value in exported.items()}


def _train(table, reference, ids, rng, rate=0.5, timestamp=100):
    ids = np.asarray(ids, np.int64)
    grads = rng.normal(size=(len(ids), DIM)).astype(np.float32)
    table.lookup(ids, training=True)
    table.apply_gradients(ids, grads, rate, timestamps=timestamp)
    reference.train(ids, grads, rate)


def test_implements_the_protocol(make_table):
    assert isinstance(make_table(), EmbeddingTable)
    assert make_table().dim == DIM and make_table().state_dim == 0


def test_lookups_and_applies_match_the_reference(make_table):
    table, reference, rng = make_table(), Reference(), np.random.default_rng(0)
    unseen = table.lookup(tf.constant([[5, 6]], tf.int64))
    assert unseen.shape == (1, 2, DIM) and not np.any(unseen.numpy())
    assert int(table.size()) == 0                           # serving lookups insert nothing
    ids = np.array([1, 2, 2, 2**40, -7, 1, 3], np.int64)    # duplicates are summed
    _train(table, reference, ids, rng)
    _train(table, reference, rng.integers(-50, 50, 64), rng)
    probe = np.array(sorted(reference.rows) + [999_999], np.int64)
    np.testing.assert_allclose(table.lookup(probe).numpy(), reference.lookup(probe),
                               rtol=1e-6, atol=1e-6)
    assert int(table.size()) == len(reference.rows)


def test_assign_remove_and_the_removed_record(make_table):
    table = make_table()
    table.take_removed()                                    # starts the record
    ids = np.arange(10, 20, dtype=np.int64)
    values = np.arange(30, dtype=np.float32).reshape(10, DIM)
    table.assign(ids, values)
    np.testing.assert_array_equal(table.lookup(ids).numpy(), values)
    assert int(table.remove([11, 13, 77])) == 2             # 77 was never there
    assert int(table.size()) == 8
    assert not np.any(table.lookup([11, 13]).numpy())
    assert sorted(table.take_removed().numpy().tolist()) == [11, 13]
    assert table.take_removed().numpy().size == 0


def test_export_and_import_round_trip_into_the_same_kind(make_table):
    table, reference, rng = make_table(), Reference(), np.random.default_rng(1)
    _train(table, reference, rng.integers(0, 1000, 200), rng, timestamp=1234)
    exported = _sorted(table.export())
    assert len(exported["keys"]) == len(reference.rows)
    np.testing.assert_allclose(exported["values"], reference.lookup(exported["keys"]),
                               rtol=1e-6, atol=1e-6)
    assert set(exported["timestamps"].tolist()) == {1234}
    copy = make_table()
    copy.import_rows(**table.export())
    restored = _sorted(copy.export())
    for field, value in exported.items():
        np.testing.assert_array_equal(restored[field], value, err_msg=field)


def test_sync_changes_hold_the_changed_rows_and_removed_ids(make_table):
    table, reference, rng = make_table(), Reference(), np.random.default_rng(2)
    _train(table, reference, np.arange(50), rng)
    first = table.take_sync_changes()                       # starts the record
    assert first["keys"].numpy().size == 0
    _train(table, reference, [3, 4, 3, 60], rng)
    table.remove([10])
    changes = table.take_sync_changes()
    keys = changes["keys"].numpy()
    assert sorted(keys.tolist()) == [3, 4, 60]
    np.testing.assert_allclose(changes["values"].numpy(), reference.lookup(keys),
                               rtol=1e-6, atol=1e-6)
    assert changes["removed"].numpy().tolist() == [10]
    assert table.take_sync_changes()["keys"].numpy().size == 0


def test_stats_count_rows_and_data_time(make_table):
    table, reference, rng = make_table(), Reference(), np.random.default_rng(3)
    _train(table, reference, np.arange(40), rng, timestamp=500)
    stats = {name: int(value) for name, value in table.stats().items()}
    assert set(stats) == set(STATS_FIELDS)
    assert stats["size"] == 40 and stats["now"] == 500 and stats["memory_bytes"] > 0


def test_expiry_and_filter_state_survive_a_restore(make_table):
    options = dict(occurrence_threshold=2, admission_filter="counting(width=4096, depth=2)",
                   expire_after=100)
    table = make_table(**options)
    table.lookup([1, 2], training=True)                     # first sightings: not admitted
    table.apply_gradients([1, 2], np.ones((2, DIM), np.float32), 0.1, timestamps=50)
    assert int(table.size()) == 0
    state, now = table.save_filter_state()
    restored = make_table(**options)
    restored.restore_filter_state(state, now)
    assert int(restored.stats()["now"]) == 50
    restored.lookup([1], training=True)                     # the second sighting admits
    assert int(restored.size()) == 1
    restored.apply_gradients([1], np.ones((1, DIM), np.float32), 0.1, timestamps=60)
    restored.lookup([5, 5], training=True)                  # admitted at once: seen twice
    restored.apply_gradients([5, 5], np.ones((2, DIM), np.float32), 0.1, timestamps=400)
    assert int(restored.evict_expired()) == 1               # id 1, idle since 60
    assert sorted(restored.export()["keys"].numpy().tolist()) == [5]
