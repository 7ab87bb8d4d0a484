"""Concurrent readers and writers on the core, with growth under way: no lost
updates, no torn rows, no lost keys. The bindings release the GIL."""

import os
import threading

import numpy as np

from monolith_tf import _core
from numpy_reference import Reference

# The sanitizer builds (`make tsan`, `make asan`) run 2-100x slower.
UNDER_SANITIZER = "1" in (os.environ.get("MONOLITH_TSAN"), os.environ.get("MONOLITH_ASAN"))


def run_all(functions):
    errors = []

    def guarded(fn):
        try:
            fn()
        except Exception as error:  # noqa: BLE001 - reported to the main thread
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(fn,)) for fn in functions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_no_lost_updates_or_torn_rows_while_the_table_grows():
    dim = 16
    table = _core.EmbeddingTable(dim=dim, initializer="zeros", optimizer="sgd", capacity_hint=16)
    hot = np.arange(2000, dtype=np.int64)
    # Every row gets +1 per occurrence per step, so every element of a row
    # always equals its update count: a torn read shows unequal elements.
    batch = np.concatenate([hot, hot[:500]])  # duplicates too
    grads = -np.ones((len(batch), dim), np.float32)
    steps, writers = 60, 3
    table.lookup(hot)
    torn = []

    def writer():
        for _ in range(steps):
            table.apply_gradients(batch, grads, 1.0, threads=2)

    def reader():
        for _ in range(steps):
            rows = table.lookup(hot, insert_missing=False, threads=2)
            if not (rows == rows[:, :1]).all():
                torn.append(rows)

    grown = []

    def inserter(first):
        # Two of them: each prepares arena chunks outside the table's lock
        # while the other allocates under it.
        def insert():
            for start in range(first, first + 200_000, 20_000):
                keys = np.arange(start, start + 20_000, dtype=np.int64)
                table.lookup(keys, insert_missing=True)
                grown.append(keys)
        return insert

    run_all([writer] * writers + [reader] * 2 + [inserter(10_000), inserter(1_000_000)])
    assert not torn
    expected = np.where(hot < 500, 2, 1) * steps * writers
    final = table.lookup(hot, insert_missing=False)
    np.testing.assert_array_equal(final, np.repeat(expected[:, None], dim, axis=1))
    exported = table.export()
    counts = dict(zip(exported["keys"], exported["counts"]))
    assert all(counts[k] == e for k, e in zip(hot, expected))
    all_new = np.concatenate(grown)
    assert table.size() == len(hot) + len(all_new)
    np.testing.assert_array_equal(table.lookup(all_new, insert_missing=False), 0)


def test_lookups_that_start_between_applies_never_return_torn_rows():
    """A lookup that starts while no apply runs copies rows without reading
    their versions, and must throw that copy away when an apply starts before
    it ends. Wide rows and one apply at a time, with pauses between them, so
    that many lookups start in a pause and an apply starts under them."""
    dim, num_keys, applies = (64, 300, 30) if UNDER_SANITIZER else (512, 3000, 150)
    table = _core.EmbeddingTable(dim=dim, initializer="zeros", optimizer="sgd")
    keys = np.arange(num_keys, dtype=np.int64)
    table.lookup(keys)
    grads = -np.ones((len(keys), dim), np.float32)
    done = threading.Event()
    torn, lookups = [], []
    lookup_done = threading.Condition()

    def writer():
        for _ in range(applies):
            table.apply_gradients(keys, grads, 1.0, threads=1)
            # The pause lasts until a lookup started after this apply ended
            # (however slowly the reader runs on a loaded machine); the next
            # apply then starts under the reader's following lookup.
            with lookup_done:
                seen = len(lookups)
                lookup_done.wait_for(lambda: len(lookups) >= seen + 2, timeout=10)
        done.set()

    def reader():
        while not done.is_set():
            rows = table.lookup(keys, insert_missing=False, threads=1)
            torn.extend(np.flatnonzero((rows != rows[:, :1]).any(axis=1)).tolist())
            with lookup_done:
                lookups.append(1)
                lookup_done.notify_all()

    run_all([writer, reader])
    assert len(lookups) >= 2 * applies  # lookups started in every pause
    assert not torn, f"{len(torn)} torn rows"
    np.testing.assert_array_equal(table.lookup(keys, insert_missing=False), applies)


def test_concurrent_first_lookups_of_one_new_id_agree():
    table = _core.EmbeddingTable(dim=8, initializer="normal(stddev=1)", seed=2)
    keys = np.arange(50_000, dtype=np.int64) * 31
    results = [None] * 4

    def lookup(slot):
        results[slot] = table.lookup(keys, insert_missing=True, threads=2)

    run_all([lambda s=s: lookup(s) for s in range(4)])
    for other in results[1:]:
        np.testing.assert_array_equal(results[0], other)
    assert table.size() == len(keys)


def test_removal_and_reinsertion_under_readers():
    dim = 4
    table = _core.EmbeddingTable(dim=dim, initializer="ones", optimizer="sgd")
    keys = np.arange(5000, dtype=np.int64)
    table.lookup(keys)
    bad = []

    def churn():
        for _ in range(40):
            table.remove(keys[::2])
            table.lookup(keys[::2], insert_missing=True)

    def reader():
        for _ in range(40):
            rows = table.lookup(keys, insert_missing=False)
            # A row is either absent (zeros) or whole (ones), never a mix.
            if not np.isin(rows.sum(axis=1), (0.0, float(dim))).all():
                bad.append(rows)

    run_all([churn, reader, reader])
    assert not bad
    assert table.size() == len(keys)


def test_every_operation_racing_on_one_table():
    """Lookups, gradient applies, inserts with growth, eviction, removal,
    assignment, full and delta exports and sync pushes, all at once on one
    table (this is the workload the ThreadSanitizer run checks). Hot rows get
    +1 per occurrence, so a whole row always equals its occurrence count: an
    export or lookup that saw a row mid-update shows unequal elements or a
    value that disagrees with the count it copied."""
    dim = 64
    table = _core.EmbeddingTable(dim=dim, initializer="zeros", optimizer="sgd",
                                 capacity_hint=16, expire_after=50)
    hot = np.arange(1000, dtype=np.int64)
    # Under a sanitizer, half the applies: every kind of operation still runs
    # against every other (ThreadSanitizer judges the interleavings it sees,
    # and each kind overlaps the others many times), at half the cost.
    steps = 40 if UNDER_SANITIZER else 80
    torn = []
    done = threading.Event()

    def trainer():
        grads = -np.ones((len(hot), dim), np.float32)
        for step in range(steps):
            # Data time moves on, so cold rows below expire while hot ones live.
            table.apply_gradients(hot, grads, 1.0, timestamps=np.int64(1000 + step), threads=2)
        done.set()

    def churn():
        rng = np.random.default_rng(0)
        for batch in range(30):
            cold = np.arange(100_000 + batch * 4000, 104_000 + batch * 4000, dtype=np.int64)
            table.lookup(cold, insert_missing=True, threads=2)       # growth
            table.assign(cold[:100], np.full((100, dim), 7, np.float32))
            table.remove(cold[rng.integers(0, len(cold), 200)])
            table.evict_expired()

    def exporter():
        while not done.is_set():
            for only_dirty, clear in ((False, False), (True, True)):
                rows = table.export(only_dirty=only_dirty, clear_dirty=clear)
                is_hot = rows["keys"] < len(hot)
                values, counts = rows["values"][is_hot], rows["counts"][is_hot]
                if not (values == counts[:, None]).all():
                    torn.append("export")
            push = table.take_sync_changes()
            is_hot = push["keys"] < len(hot)
            if not (push["values"][is_hot] == push["values"][is_hot][:, :1]).all():
                torn.append("sync")

    def reader():
        while not done.is_set():
            rows = table.lookup(hot, insert_missing=False, threads=2)
            if not (rows == rows[:, :1]).all():
                torn.append("lookup")

    run_all([trainer, churn, exporter, reader])
    assert not torn
    np.testing.assert_array_equal(table.lookup(hot, insert_missing=False), steps)
    exported = table.export()
    counts = dict(zip(exported["keys"].tolist(), exported["counts"].tolist()))
    assert all(counts[k] == steps for k in hot.tolist())
    # Nothing is left half-inserted or half-removed: the index, the arena and
    # the exported rows agree.
    table.evict_expired()
    rest = table.export()
    assert set(hot.tolist()) <= set(rest["keys"].tolist())
    assert table.size() == len(rest["keys"]) == len(set(rest["keys"].tolist()))
    np.testing.assert_array_equal(table.lookup(rest["keys"], insert_missing=False),
                                  rest["values"])


def test_large_training_lookups_on_two_threads_match_one_key_at_a_time():
    """Large training lookups on two threads, with duplicates in and across
    batches, while the index grows from nothing to a high load (so keys need
    kicks): every key gets exactly one row with its initial value. The same
    keys inserted one at a time are the reference."""
    dim = 4
    rng = np.random.default_rng(11)
    pool = rng.integers(-2**62, 2**62, size=60_000 if UNDER_SANITIZER else 200_000,
                        dtype=np.int64)
    pool = np.unique(pool)
    table = _core.EmbeddingTable(dim=dim, initializer="normal(stddev=1)", seed=5,
                                 capacity_hint=16)
    batch = 8_192 if UNDER_SANITIZER else 32_768
    seen = []
    for start in range(0, len(pool), batch):
        keys = pool[start:start + batch]
        # A tenth of each batch repeats keys of this batch or of earlier ones.
        repeats = rng.choice(pool[:start + len(keys)], size=len(keys) // 10)
        keys = rng.permutation(np.concatenate([keys, repeats]))
        rows = table.lookup(keys, insert_missing=True, threads=2)
        first = {}
        for key, row in zip(keys.tolist(), rows):
            np.testing.assert_array_equal(first.setdefault(key, row), row)
        seen.append(keys)
    distinct = np.unique(np.concatenate(seen))
    assert table.size() == len(distinct)
    sample = distinct[::max(1, len(distinct) // 2000)]
    reference = _core.EmbeddingTable(dim=dim, initializer="normal(stddev=1)", seed=5)
    expected = np.concatenate([reference.lookup(sample[i:i + 1], insert_missing=True)
                               for i in range(len(sample))])
    np.testing.assert_array_equal(table.lookup(sample, insert_missing=False), expected)
    # Every key has one entry of its own: changing one row changes only it.
    table.assign(sample, np.arange(len(sample) * dim, dtype=np.float32).reshape(-1, dim))
    np.testing.assert_array_equal(
        table.lookup(sample, insert_missing=False),
        np.arange(len(sample) * dim, dtype=np.float32).reshape(-1, dim))
    assert not (table.lookup(distinct, insert_missing=False) == 0).all(axis=1).any()


def test_large_applies_on_two_threads_match_the_numpy_reference():
    """Large gradient batches on two threads, split by index partition: each
    key's repeated gradients are summed in batch order once, keys missing from
    the table are inserted, and counts and timestamps follow occurrences."""
    dim = 8
    rng = np.random.default_rng(17)
    vocabulary = np.unique(rng.integers(-2**62, 2**62, size=3_000, dtype=np.int64))
    table = _core.EmbeddingTable(dim=dim, initializer="uniform(minval=-0.3, maxval=0.3)",
                                 optimizer="adagrad", seed=3)
    reference = Reference("adagrad", dim)
    # Half the vocabulary is looked up first; the rest first appears in an
    # apply, which inserts it with its initial row.
    looked_up = vocabulary[::2]
    for key, row in zip(looked_up, table.lookup(looked_up, insert_missing=True)):
        reference.init_row(key, row)
    probe = _core.EmbeddingTable(dim=dim, initializer="uniform(minval=-0.3, maxval=0.3)",
                                 optimizer="adagrad", seed=3)
    for key, row in zip(vocabulary[1::2], probe.lookup(vocabulary[1::2], insert_missing=True)):
        reference.init_row(key, row)
    counts = dict.fromkeys(vocabulary.tolist(), 0)
    newest = {}
    for step in range(3 if UNDER_SANITIZER else 6):
        keys = rng.choice(vocabulary, size=20_000)  # about 7 copies of each key
        grads = rng.normal(size=(len(keys), dim)).astype(np.float32)
        timestamps = rng.integers(0, 1000, size=len(keys), dtype=np.int64)
        table.apply_gradients(keys, grads, 0.05, timestamps=timestamps, threads=2)
        reference.apply(keys, grads, 0.05)
        for key, ts in zip(keys.tolist(), timestamps.tolist()):
            counts[key] += 1
            newest[key] = max(newest.get(key, -1), ts)
    got = table.lookup(vocabulary, insert_missing=False)
    for key, row in zip(vocabulary.tolist(), got):
        np.testing.assert_allclose(row, reference.weights[key], rtol=1e-6, atol=1e-6)
    exported = table.export(0, 1, False, False)
    assert len(exported["keys"]) == len(vocabulary)
    for key, count, ts in zip(exported["keys"].tolist(), exported["counts"].tolist(),
                              exported["timestamps"].tolist()):
        assert (count, ts) == (counts[key], newest[key])


def colliding_keys(table, count, start):
    """``count`` keys not below ``start`` whose two candidate buckets are the
    same pair (where a partition's stash must take the overflow)."""
    keys = np.arange(start, start + 4_000_000, dtype=np.int64)
    b1, b2 = table.candidate_buckets(keys)
    target = (b1[0], b2[0])
    hits = keys[((b1 == target[0]) & (b2 == target[1])) | ((b1 == target[1]) & (b2 == target[0]))]
    return hits[:count]


def test_lookups_racing_every_kind_of_growth_find_every_key_untorn():
    """Readers look up present keys (each row holds its key) while a writer
    grows the index in every way it grows: partitions doubling and
    splitting under new keys, a partition's stash overflowing under keys
    that share both buckets, and a re-seed when such keys come at a low
    load. No present key may go missing or come back torn."""
    dim = 8
    # Room for 20,000 keys: 3,000 of them are a low load.
    table = _core.EmbeddingTable(dim=dim, initializer="zeros", optimizer="sgd",
                                 capacity_hint=20_000)
    present = np.arange(1, 3001, dtype=np.int64)
    table.assign(present, np.repeat(present[:, None].astype(np.float32), dim, axis=1))
    stop = threading.Event()
    problems = []

    def reader():
        while not stop.is_set():
            rows = table.lookup(present, insert_missing=False, threads=2)
            if not (rows == present[:, None].astype(np.float32)).all():
                problems.append(rows)
                return

    growths = {}

    def writer():
        try:
            buckets = table.num_buckets
            # Crafted collisions at a low load: the stash overflows, the index re-seeds.
            crafted = colliding_keys(table, 40, start=10**9)
            table.assign(crafted, np.repeat(crafted[:, None].astype(np.float32), dim, axis=1))
            growths["reseed"] = table.num_buckets == buckets
            # Ordinary growth: partitions double, then split.
            total = 60_000 if UNDER_SANITIZER else 400_000
            for start in range(10**6, 10**6 + total, 20_000):
                table.lookup(np.arange(start, start + 20_000, dtype=np.int64))
            # Crafted collisions at a high load: the partition grows.
            crafted = colliding_keys(table, 40, start=2 * 10**9)
            table.assign(crafted, np.repeat(crafted[:, None].astype(np.float32), dim, axis=1))
            growths["grown"] = table.num_buckets > buckets
        finally:
            stop.set()

    run_all([reader, reader, writer])
    assert not problems
    assert growths == {"reseed": True, "grown": True}
    np.testing.assert_array_equal(table.lookup(present, insert_missing=False),
                                  np.repeat(present[:, None].astype(np.float32), dim, axis=1))
