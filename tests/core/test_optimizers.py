"""Each optimizer against the numpy reference over many steps with duplicates."""

import zlib

import numpy as np
import pytest

from monolith_tf import _core
from numpy_reference import Reference, make_spec_text

CASES = [
    ("sgd", {}),
    ("adagrad", {}),
    ("adagrad", {"initial_accumulator": 0.5, "epsilon": 1e-3}),
    ("adam", {}),
    ("adam", {"beta1": 0.8, "beta2": 0.99, "epsilon": 1e-4}),
    ("ftrl", {}),
    ("ftrl", {"l1": 0.01, "l2": 0.1, "beta": 1.0, "initial_accumulator": 0.0}),
]


@pytest.mark.parametrize("optimizer, params", CASES)
def test_matches_numpy_reference(optimizer, params):
    dim, steps = 6, 60
    spec = make_spec_text(optimizer, params)
    # A seed stable across processes (str hashes are salted per process).
    rng = np.random.default_rng(zlib.crc32(spec.encode()))
    table = _core.EmbeddingTable(dim=dim, initializer="uniform(minval=-0.3, maxval=0.3)",
                                 optimizer=spec, seed=5)
    reference = Reference(optimizer, dim, **params)
    vocabulary = np.array([0, 1, -7, 2**40, 99, 12345], np.int64)
    for step in range(steps):
        # Duplicates in most batches; some ids skip some steps.
        keys = rng.choice(vocabulary, size=rng.integers(1, 12))
        grads = rng.normal(size=(len(keys), dim)).astype(np.float32)
        lr = float(rng.uniform(0.01, 0.2))
        initial = table.lookup(keys, insert_missing=True)
        for key, row in zip(keys, initial):
            if key not in reference.weights:
                reference.init_row(key, row)
        table.apply_gradients(keys, grads, lr, timestamps=np.int64(step))
        reference.apply(keys, grads, lr)
        got = table.lookup(vocabulary, insert_missing=False)
        for key, row in zip(vocabulary, got):
            if key in reference.weights:
                np.testing.assert_allclose(row, reference.weights[key], rtol=1e-6, atol=1e-6,
                                           err_msg=f"{optimizer} step {step} key {key}")
    exported = table.export()
    assert len(exported["keys"]) == len(reference.weights)
    for key, state in zip(exported["keys"], exported["state"]):
        # The state width the core reports is the reference's layout.
        assert table.state_dim == len(reference.state[key])
        np.testing.assert_allclose(state, reference.state[key], rtol=1e-6, atol=1e-6)


def test_counts_and_timestamps_follow_occurrences():
    table = _core.EmbeddingTable(dim=2, initializer="zeros", optimizer="sgd")
    keys = np.array([3, 4, 3, 3], np.int64)
    table.apply_gradients(keys, np.ones((4, 2), np.float32), 0.5,
                          timestamps=np.array([10, 50, 30, 20], np.int64))
    table.apply_gradients(np.array([4], np.int64), np.ones((1, 2), np.float32), 0.5,
                          timestamps=np.int64(40))
    exported = table.export()
    by_key = {k: (t, c) for k, t, c in zip(exported["keys"], exported["timestamps"],
                                           exported["counts"])}
    assert by_key == {3: (30, 3), 4: (50, 2)}
    np.testing.assert_array_equal(table.lookup(np.array([3, 4], np.int64), False),
                                  [[-1.5, -1.5], [-1.0, -1.0]])
