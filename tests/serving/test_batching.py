"""Server-side batching: merged calls give each request its own rows, a bad
request fails alone, and outputs that are not batch-major are not split."""

import threading
import time

import grpc
import numpy as np
import pytest

from monolith_tf.serving.batching import RequestBatcher
from monolith_tf.serving.errors import ServingError, invalid


class SlowModel:
    """Doubles ``x``; records the batch sizes it saw; refuses negative x."""

    def __init__(self, delay=0.05, batch_major=True):
        self.calls, self.delay, self.batch_major = [], delay, batch_major

    def __call__(self, inputs):
        x = inputs["x"]
        self.calls.append(len(x))
        time.sleep(self.delay)
        if (x < 0).any():
            raise invalid("negative x")
        if not self.batch_major:
            return {"y": x * 2, "total": np.float32(x.sum())}
        return {"y": x * 2}


def run_concurrently(batcher, requests):
    results = [None] * len(requests)

    def call(i):
        try:
            results[i] = batcher(requests[i])
        except ServingError as error:
            results[i] = error

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
        time.sleep(0.002)
    for thread in threads:
        thread.join(30)
    return results


def test_concurrent_requests_are_merged_and_split_back():
    """The batch fills exactly at max_batch_size (the rows of all eight
    requests), long before its 30 s timeout: one merged call, however
    slowly the requests' threads start."""
    model = SlowModel()
    requests = [{"x": np.full((i + 1, 3), float(i), np.float32)} for i in range(8)]
    total = sum(len(r["x"]) for r in requests)
    batcher = RequestBatcher(model, max_batch_size=total, batch_timeout_seconds=30, threads=1)
    results = run_concurrently(batcher, requests)
    batcher.close()
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], np.full((i + 1, 3), 2.0 * i))
    assert model.calls == [total]


def test_merged_call_respects_max_batch_size():
    model = SlowModel()
    batcher = RequestBatcher(model, max_batch_size=10, batch_timeout_seconds=0.02, threads=1)
    results = run_concurrently(batcher, [{"x": np.ones((4, 1), np.float32)}] * 9)
    batcher.close()
    assert all(r["y"].shape == (4, 1) for r in results)
    # Whatever merged (that depends on timing), no call exceeded 10 rows and
    # every row ran once: calls of 4 or 8 rows.
    assert set(model.calls) <= {4, 8} and sum(model.calls) == 36


def test_a_bad_request_fails_alone():
    model = SlowModel()
    # All six merge (the batch fills at 12 rows); the merged call fails, so
    # each request runs alone.
    batcher = RequestBatcher(model, max_batch_size=12, batch_timeout_seconds=30, threads=1)
    requests = [{"x": np.full((2, 1), -1.0 if i == 3 else 1.0, np.float32)} for i in range(6)]
    results = run_concurrently(batcher, requests)
    batcher.close()
    assert model.calls == [12] + [2] * 6
    assert isinstance(results[3], ServingError)
    assert results[3].code == grpc.StatusCode.INVALID_ARGUMENT
    for i, result in enumerate(results):
        if i != 3:
            np.testing.assert_array_equal(result["y"], np.full((2, 1), 2.0))


def test_outputs_not_batch_major_run_per_request():
    model = SlowModel(batch_major=False)
    batcher = RequestBatcher(model, max_batch_size=10, batch_timeout_seconds=30, threads=1)
    requests = [{"x": np.full((2,), float(i), np.float32)} for i in range(5)]
    results = run_concurrently(batcher, requests)
    batcher.close()
    assert model.calls == [10] + [2] * 5   # merged, not splittable, then one by one
    for i, result in enumerate(results):
        assert float(result["total"]) == pytest.approx(2.0 * i)  # this request's sum alone
