"""The sync record of changed rows (TakeSyncChanges): what it returns, its
independence from delta saves, and a replica built from concurrent pushes
that ends equal to the table."""

import threading

import numpy as np

from monolith_tf import _core


def table_rows(table):
    rows = table.export()
    return dict(zip(rows["keys"].tolist(), rows["values"]))


def apply_push(replica, push):
    """Applies a push as a replica does: removals first, then rows."""
    for key in push["removed"].tolist():
        replica.pop(key, None)
    for key, row in zip(push["keys"].tolist(), push["values"]):
        replica[key] = row.copy()


def test_first_call_starts_the_record_then_changed_rows_come_once():
    table = _core.EmbeddingTable(dim=4, initializer="ones", optimizer="sgd")
    table.lookup(np.arange(10, dtype=np.int64))
    first = table.take_sync_changes()
    assert len(first["keys"]) == 0 and len(first["removed"]) == 0
    table.apply_gradients(np.array([3, 7, 3], np.int64), np.ones((3, 4), np.float32), 0.5,
                          timestamps=np.array([100, 200, 300], np.int64))
    table.lookup(np.array([50], np.int64))            # a new row counts as changed
    push = table.take_sync_changes()
    assert push["keys"].tolist() == [3, 7, 50]
    np.testing.assert_allclose(push["values"][0], np.zeros(4))   # 1 - 0.5 * (1 + 1)
    np.testing.assert_allclose(push["values"][1], np.full(4, 0.5))
    np.testing.assert_allclose(push["values"][2], np.ones(4))
    assert push["timestamps"][:2].tolist() == [300, 200]
    assert len(table.take_sync_changes()["keys"]) == 0  # nothing changed since


def test_sync_and_delta_records_do_not_clear_each_other():
    table = _core.EmbeddingTable(dim=2, initializer="zeros", optimizer="sgd")
    table.take_sync_changes()
    table.export(only_dirty=True, clear_dirty=True)
    table.apply_gradients(np.array([1, 2], np.int64), np.ones((2, 2), np.float32), 1.0)
    delta = table.export(only_dirty=True, clear_dirty=True)
    assert sorted(delta["keys"].tolist()) == [1, 2]
    assert table.take_sync_changes()["keys"].tolist() == [1, 2]  # not cleared by the delta
    table.apply_gradients(np.array([2], np.int64), np.ones((1, 2), np.float32), 1.0)
    assert table.take_sync_changes()["keys"].tolist() == [2]
    assert table.export(only_dirty=True)["keys"].tolist() == [2]  # not cleared by the push


def test_removed_and_evicted_ids_and_reinserted_ones():
    table = _core.EmbeddingTable(dim=2, initializer="ones", expire_after=10)
    table.lookup(np.arange(6, dtype=np.int64))
    table.take_sync_changes()
    table.remove(np.array([1, 2, 99], np.int64))
    table.lookup(np.array([2], np.int64))             # 2 comes back
    table.apply_gradients(np.array([0], np.int64), np.zeros((1, 2), np.float32), 1.0,
                          timestamps=np.array([1000], np.int64))
    assert table.evict_expired() == 4                 # 2..5 idle since data time 0, minus 1
    push = table.take_sync_changes()
    assert sorted(push["removed"].tolist()) == [1, 2, 2, 3, 4, 5]
    assert push["keys"].tolist() == [0]               # 2 was evicted again: not a row
    replica = {k: np.ones(2) for k in range(6)}
    apply_push(replica, push)
    assert replica.keys() == table_rows(table).keys() == {0}


def test_replica_of_concurrent_pushes_equals_the_table():
    """Writers train, insert, remove and evict while pushes are taken; the
    replica that applies every push in order ends equal to the table."""
    table = _core.EmbeddingTable(dim=8, initializer="normal(stddev=1)", optimizer="adagrad",
                                 seed=3, capacity_hint=64)
    replica = {}
    apply_push(replica, table.take_sync_changes())
    stop = threading.Event()
    errors = []

    def trainer(seed):
        rng = np.random.default_rng(seed)
        try:
            for step in range(300):
                keys = rng.integers(0, 20_000, 512).astype(np.int64)
                table.apply_gradients(keys, rng.normal(size=(512, 8)).astype(np.float32), 0.1,
                                      threads=2)
                if step % 10 == 0:
                    table.remove(rng.integers(0, 20_000, 100).astype(np.int64))
        except Exception as error:  # noqa: BLE001 - reported to the main thread
            errors.append(error)

    writers = [threading.Thread(target=trainer, args=(seed,)) for seed in range(3)]
    for writer in writers:
        writer.start()
    pushes = 0
    while any(w.is_alive() for w in writers):
        apply_push(replica, table.take_sync_changes())
        pushes += 1
    for writer in writers:
        writer.join()
    assert not errors
    apply_push(replica, table.take_sync_changes())
    truth = table_rows(table)
    assert pushes > 5
    assert replica.keys() == truth.keys()
    for key, row in truth.items():
        np.testing.assert_array_equal(replica[key], row)
