"""The core's facts reach Python once: defaults, field names, state widths."""

import json

import numpy as np
import pytest
import tensorflow as tf

import monolith_tf as mt
from monolith_tf import _core, schema
from numpy_reference import Reference

OPTIMIZERS = ["sgd", "adagrad", "adam", "ftrl"]


def test_both_bridges_report_the_same_schema():
    from_ops = json.loads(schema._library.monolith_table_schema_json().decode())
    assert from_ops == json.loads(_core.table_schema_json())
    assert schema.ROW_FIELDS == ("keys", "values", "state", "timestamps", "counts")
    assert schema.STATS_FIELDS[0] == "size" and "now" in schema.STATS_FIELDS


def test_default_tables_agree_across_bridges():
    """A table built with every default gives the same first rows and state
    width through the ops and through pybind: the defaults are one set."""
    ids = np.array([3, -9, 2**40], np.int64)
    through_ops = mt.HashTable(5)
    through_core = _core.EmbeddingTable(5)
    np.testing.assert_array_equal(through_ops.lookup(ids, training=True).numpy(),
                                  through_core.lookup(ids, insert_missing=True))
    assert through_ops.state_dim == through_core.state_dim
    config = through_ops.get_config()
    for key, value in schema.TABLE_DEFAULTS.items():
        expected = None if key in ("expire_after", "evict_every") and value == 0 else value
        assert config[key] == expected, key


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_state_width_comes_from_the_core(optimizer):
    dim = 7
    table = mt.HashTable(dim, optimizer=optimizer)
    reference = Reference(optimizer, dim)
    reference.init_row(1, np.zeros(dim, np.float32))
    assert table.state_dim == len(reference.state[1])
    assert table.state_dim == _core.EmbeddingTable(dim, optimizer=optimizer).state_dim
    table.lookup([1], training=True)
    assert table.export()["state"].shape == (1, table.state_dim)


def test_bad_optimizer_or_dim_for_the_state_width():
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        schema.optimizer_state_dim("rmsprop", 4)
    with pytest.raises(ValueError, match="dim must be > 0"):
        schema.optimizer_state_dim("sgd", 0)


def test_stats_fields_name_the_stats_op_outputs():
    table = mt.HashTable(2, occurrence_threshold=2)
    table.lookup([1, 1, 2], training=True)  # 1 admitted at its 2nd sighting
    stats = {k: int(v) for k, v in table.stats().items()}
    assert list(stats) == list(schema.STATS_FIELDS)
    assert stats["size"] == 1 and stats["admitted"] == 1 and stats["rejected"] == 2
    assert stats["memory_bytes"] > 0 and stats["evicted"] == 0
    assert stats == {k: int(v) for k, v in _core_stats_after_same_calls().items()}


def _core_stats_after_same_calls():
    table = _core.EmbeddingTable(2, occurrence_threshold=2)
    table.lookup(np.array([1, 1, 2], np.int64), insert_missing=True)
    return table.stats()


def test_table_names():
    assert schema.table_name("user_emb", "user") == "user_emb/user"
    assert schema.table_file_name("user_emb/user") == "user_emb.user"


@pytest.mark.parametrize("change", [
    dict(dim=5), dict(optimizer="sgd"), dict(initializer="zeros"), dict(seed=1),
    dict(occurrence_threshold=3), dict(admission_filter="probabilistic", occurrence_threshold=2),
    dict(expire_after=60), dict(evict_every=10),
])
def test_shared_name_with_another_config_is_an_error(change):
    name = "shared_" + "-".join(f"{k}={v}" for k, v in sorted(change.items()))
    base = dict(dim=4, optimizer="adagrad", initializer="ones", shared_name=name)
    first = mt.HashTable(**base)
    first.lookup([1, 2], training=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="already exists with"):
        mt.HashTable(**{**base, **change})
    assert int(first.size()) == 2


def test_shared_name_with_the_same_config_shares_rows():
    base = dict(dim=3, initializer="ones", shared_name="shared_same", occurrence_threshold=0)
    first = mt.HashTable(**base, capacity_hint=10)
    second = mt.HashTable(**base, capacity_hint=1000)  # a sizing hint may differ
    first.lookup([7], training=True)
    assert int(second.size()) == 1
