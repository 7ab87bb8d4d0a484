"""Admission filters and data-time expiry in the core."""

import threading

import numpy as np
import pytest

from monolith_tf import _core


def keys(*values):
    return np.array(values, np.int64)


def test_counting_filter_admits_at_the_kth_occurrence_and_never_before():
    k = 4
    table = _core.EmbeddingTable(dim=2, initializer="ones", optimizer="sgd",
                                 occurrence_threshold=k, admission_filter="counting")
    ids = np.arange(1000, dtype=np.int64) * 7919
    for occurrence in range(1, k):
        rows = table.lookup(ids, insert_missing=True)
        np.testing.assert_array_equal(rows, 0.0)  # the default row, not inserted
        assert table.size() == 0, f"admitted before occurrence {k}"
    np.testing.assert_array_equal(table.lookup(ids, insert_missing=True), 1.0)
    assert table.size() == len(ids)
    stats = table.stats()
    assert stats["admitted"] == len(ids) and stats["rejected"] == (k - 1) * len(ids)


def test_occurrences_inside_one_batch_count_in_order():
    table = _core.EmbeddingTable(dim=1, initializer="ones", occurrence_threshold=3)
    np.testing.assert_array_equal(table.lookup(keys(5, 5, 5, 5)).ravel(), [0, 0, 1, 1])
    assert table.size() == 1


def test_probabilistic_admission_rate_is_within_a_statistical_bound():
    n, k, q = 100_000, 3, 0.95
    table = _core.EmbeddingTable(dim=1, occurrence_threshold=k,
                                 admission_filter=f"probabilistic(admit_probability={q})")
    ids = np.arange(n, dtype=np.int64)
    table.lookup(ids)
    per_occurrence = 1 - (1 - q) ** (1 / k)
    once = table.size() / n
    assert abs(once - per_occurrence) < 5 * np.sqrt(per_occurrence * (1 - per_occurrence) / n)
    for _ in range(k - 1):
        table.lookup(ids)
    admitted = table.size() / n
    assert abs(admitted - q) < 5 * np.sqrt(q * (1 - q) / n)  # 5 sigma: about +-0.0035


def test_rejected_ids_gradients_change_nothing():
    table = _core.EmbeddingTable(dim=2, initializer="ones", optimizer="adagrad",
                                 occurrence_threshold=2)
    table.lookup(keys(1, 1, 2))  # 1 admitted, 2 seen once
    before = table.export()
    table.apply_gradients(keys(2, 2, 3), np.ones((3, 2), np.float32), 0.5,
                          timestamps=np.int64(10))
    after = table.export()
    assert table.size() == 1
    for field in before:
        np.testing.assert_array_equal(before[field], after[field])


def test_expiry_uses_data_time_with_out_of_order_and_replayed_data():
    table = _core.EmbeddingTable(dim=1, initializer="zeros", optimizer="sgd", expire_after=100)
    grad = np.ones((1, 1), np.float32)
    table.apply_gradients(keys(1), grad, 0.1, timestamps=np.int64(1000))
    table.apply_gradients(keys(2), grad, 0.1, timestamps=np.int64(1050))
    table.apply_gradients(keys(3), grad, 0.1, timestamps=np.int64(900))  # late data
    assert table.stats()["now"] == 1050
    assert table.evict_expired() == 1  # only 3: 900 < 1050 - 100
    assert sorted(table.export()["keys"]) == [1, 2]
    table.apply_gradients(keys(1), grad, 0.1, timestamps=np.int64(500))  # replay
    assert table.evict_expired() == 0  # 1 keeps its newest time, 1000
    table.apply_gradients(keys(2), grad, 0.1, timestamps=np.int64(1200))
    assert table.evict_expired() == 1 and list(table.export()["keys"]) == [2]
    assert table.stats()["evicted"] == 2


def test_automatic_eviction_every_n_applies():
    table = _core.EmbeddingTable(dim=1, expire_after=10, evict_every=3)
    grad = np.ones((1, 1), np.float32)
    for step in range(1, 7):
        table.apply_gradients(keys(step), grad, 0.1, timestamps=np.int64(step * 10))
    # Evictions ran after applies 3 and 6: at now=60 everything older than 50 went.
    assert sorted(table.export()["keys"]) == [5, 6]


def test_eviction_during_concurrent_lookups_and_growth_keeps_live_entries():
    table = _core.EmbeddingTable(dim=4, initializer="ones", optimizer="sgd", expire_after=5)
    hot = np.arange(1000, dtype=np.int64)
    stop = threading.Event()
    lost = []

    def keep_hot_alive():
        step = 0
        while not stop.is_set():
            step += 1
            table.apply_gradients(hot, np.zeros((len(hot), 4), np.float32), 0.1,
                                  timestamps=np.int64(1000 + step))
            rows = table.lookup(hot, insert_missing=False)
            if (rows == 0).all(axis=1).any():
                lost.append(step)

    def churn():
        for batch in range(40):
            fresh = np.arange(10_000 + batch * 5000, 15_000 + batch * 5000, dtype=np.int64)
            table.lookup(fresh, insert_missing=True)  # grows the table
            table.evict_expired()

    table.lookup(hot)
    worker = threading.Thread(target=keep_hot_alive)
    worker.start()
    churn()
    stop.set()
    worker.join()
    assert not lost
    np.testing.assert_array_equal(table.lookup(hot, insert_missing=False), 1.0)


def test_filter_state_round_trip():
    spec = "counting(width=4096, depth=3)"
    table = _core.EmbeddingTable(dim=1, occurrence_threshold=3, admission_filter=spec)
    ids = np.arange(500, dtype=np.int64)
    table.lookup(ids)
    table.lookup(ids[:250])
    state, now = table.save_filter_state(), 77
    copy = _core.EmbeddingTable(dim=1, occurrence_threshold=3, admission_filter=spec)
    copy.restore_filter_state(state, now)
    assert copy.stats()["now"] == 77
    copy.lookup(ids)  # third sight for the first half only
    assert copy.size() == 250
    with pytest.raises(ValueError, match="filter state"):
        copy.restore_filter_state(b"123", 0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(occurrence_threshold=-1), "occurrence_threshold"),
    (dict(expire_after=-5), "expire_after"),
    (dict(evict_every=-1), "evict_every"),
    (dict(occurrence_threshold=300), "255"),
    (dict(occurrence_threshold=2, admission_filter="bloom"), "unknown admission filter"),
    (dict(occurrence_threshold=2, admission_filter="counting(width=1000)"), "power of two"),
    (dict(occurrence_threshold=2, admission_filter="probabilistic(admit_probability=1)"),
     "admit_probability"),
])
def test_bad_memory_control_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _core.EmbeddingTable(dim=2, **kwargs)


@pytest.mark.slow
def test_rotating_stream_keeps_size_and_memory_bounded_with_expiry():
    """20M id occurrences over a rotating active set of 500k ids. With expiry
    (60 steps of data time, evicting every 10 applies) the table holds at most
    the ids touched in the last 70 steps; without it, every id ever seen."""
    import psutil

    batch, steps, active, shift = 65_536, 306, 500_000, 20_000
    rng = np.random.default_rng(0)
    results = {}
    for expire in (60, 0):
        table = _core.EmbeddingTable(dim=8, initializer="zeros", optimizer="sgd",
                                     expire_after=expire, evict_every=10 if expire else 0)
        grads = np.zeros((batch, 8), np.float32)
        rss_half = None
        peak_size = 0
        for step in range(steps):
            ids = step * shift + rng.integers(0, active, size=batch)
            table.lookup(ids, insert_missing=True, threads=2)
            table.apply_gradients(ids, grads, 0.1, timestamps=np.int64(step), threads=2)
            peak_size = max(peak_size, table.size())
            if step == steps // 2:
                rss_half = psutil.Process().memory_info().rss
        rss_end = psutil.Process().memory_info().rss
        results[expire] = (peak_size, table.size(), rss_half, rss_end)
        del table
    bound = active + 70 * shift  # ids whose window overlaps the last 70 steps
    peak, final, rss_half, rss_end = results[60]
    assert peak <= bound, results
    # Memory stops growing once the window has turned over: freed entries are reused.
    assert rss_end - rss_half < 0.05 * rss_half, results
    no_expiry_final = results[0][1]
    assert no_expiry_final > 3 * bound, results


def test_counting_filter_false_admission_rate_matches_its_bound():
    """With n distinct ids in a sketch of width w and depth d, a never-seen id
    is wrongly admitted at threshold 2 only if all d of its counters were hit:
    about (1 - exp(-n / w))^d. The filter is approximate in that direction
    only; it never admits before the threshold for ids it has counted."""
    width, depth, seen = 4096, 4, 2000
    table = _core.EmbeddingTable(dim=1, occurrence_threshold=2,
                                 admission_filter=f"counting(width={width}, depth={depth})")
    bound = (1 - np.exp(-seen / width)) ** depth
    table.lookup(np.arange(seen, dtype=np.int64))  # each seen once
    early = table.size()  # ids whose counters earlier ids had already raised
    assert early < 2 * bound * seen + 5
    fresh = np.arange(10**9, 10**9 + 2_000, dtype=np.int64)
    table.lookup(fresh)  # first sighting: any admission is a false one
    rate = (table.size() - early) / len(fresh)
    # The fresh ids themselves keep filling the sketch, so allow up to the
    # bound at the final fill.
    final_bound = (1 - np.exp(-(seen + len(fresh)) / width)) ** depth
    assert bound / 2 < rate < final_bound, (rate, bound, final_bound)
