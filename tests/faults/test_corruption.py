"""Corrupt input wherever it enters: seeded bit flips and truncations in
sparse checkpoint files, dense checkpoints, log segments and joiner
snapshots (a named error, or a fallback to the last good copy; never a
silently wrong state), random bytes as feature and action records
(dead-lettered and counted), and property-based fuzzing of the table ops
not covered by tests/test_table_errors.py (error class asserted, table
unchanged)."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import monolith_tf as mt
from monolith_tf.dense_checkpoint import DenseCheckpointer, DenseCheckpointError
from monolith_tf.sparse_checkpoint import CheckpointError, SparseCheckpointer
from monolith_tf.streaming.embedded_log import EmbeddedLog
from monolith_tf.streaming.joiner import Joiner, JoinerConfig
from monolith_tf.streaming.log import LogError
from monolith_tf.streaming.records import (ActionRecord, FeatureRecord, RecordError,
                                           decode_action, decode_feature, encode_action,
                                           encode_feature)

Invalid = tf.errors.InvalidArgumentError


def flip_or_truncate(path, rng):
    """Flips one random bit of ``path`` or truncates it at a random byte;
    returns what it did."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        if rng.random() < 0.5 and size > 0:
            position = int(rng.integers(size))
            f.seek(position)
            byte = f.read(1)[0]
            f.seek(position)
            f.write(bytes([byte ^ (1 << int(rng.integers(8)))]))
            return f"bit flip at byte {position}"
        cut = int(rng.integers(size)) if size else 0
        f.truncate(cut)
        return f"truncated to {cut} of {size} bytes"


def table_rows(table):
    rows = {k: v.numpy() for k, v in table.export().items()}
    order = np.argsort(rows["keys"])
    return {k: v[order] for k, v in rows.items()}


def make_table():
    return mt.HashTable(4, initializer="normal(stddev=0.1)", optimizer="adagrad", seed=3,
                        occurrence_threshold=2)


def train(table, ids, now):
    ids = tf.constant(ids, tf.int64)
    table.lookup(ids, training=True)
    table.apply_gradients(ids, tf.ones([len(ids), 4]) * 0.1, 0.05, timestamps=now)


@pytest.mark.parametrize("seed", range(24))
def test_corrupt_sparse_checkpoint_file_is_named_or_falls_back(tmp_path, seed):
    """Chain 1 (full + delta), then chain 2 (full + delta); one file of
    chain 2 (rows, removed ids, filter state or manifest) is corrupted.
    Restore gives the newest checkpoint before the corrupt one (chain 2's
    full for a corrupt delta, chain 1 for a corrupt full), and restoring the
    corrupt checkpoint itself raises CheckpointError naming it."""
    rng = np.random.default_rng(seed)
    table = make_table()
    saver = SparseCheckpointer(str(tmp_path), {"emb": table}, keep_full=3, chunk_rows=256)
    for now in (1, 2):
        train(table, np.arange(0, 1200, 1 + now), now)
    saver.save(full=True)
    train(table, np.arange(500, 900), 3)
    table.remove([501, 502])
    states = {saver.save(): table_rows(table)}
    train(table, np.arange(1000, 2000), 4)
    full = saver.save(full=True)
    states[full] = table_rows(table)
    train(table, np.arange(0, 300), 5)
    table.remove([1, 2, 3])
    delta = saver.save()
    victim_checkpoint = full if seed % 2 else delta
    files = sorted(glob.glob(os.path.join(victim_checkpoint, "*")))
    victim = files[int(rng.integers(len(files)))]
    what = flip_or_truncate(victim, rng)
    expected_path = min(states) if victim_checkpoint == full else full
    restored = make_table()
    applied = SparseCheckpointer(str(tmp_path), {"emb": restored}).restore()
    assert applied == expected_path, f"{what} in {victim}: restored {applied}"
    for field, values in states[expected_path].items():
        np.testing.assert_array_equal(table_rows(restored)[field], values,
                                      err_msg=f"{field} after {what} in {victim}")
    with pytest.raises(CheckpointError, match=os.path.basename(victim_checkpoint)):
        SparseCheckpointer(str(tmp_path), {"emb": make_table()}).restore(upto=victim_checkpoint)


@pytest.mark.parametrize("seed", range(6))
def test_corrupt_dense_checkpoint_is_named_and_the_previous_one_restores(tmp_path, seed):
    """A corrupt newest dense checkpoint either raises DenseCheckpointError
    naming it or, where the damage left the file valid (a flip in padding),
    restores exactly the values saved in it; the previous one restores."""
    rng = np.random.default_rng(seed)
    model = tf.keras.Sequential([tf.keras.Input((8,)), tf.keras.layers.Dense(4)])
    model.compile("adam", "mse")
    model.fit(np.ones((4, 8)), np.ones((4, 4)), verbose=0)
    saver = DenseCheckpointer(str(tmp_path), model)
    older = saver.save(1)
    saved_older = [np.array(w) for w in model.get_weights()]
    model.fit(np.ones((4, 8)), np.zeros((4, 4)), verbose=0)
    newest = saver.save(2)
    saved_newest = [np.array(w) for w in model.get_weights()]
    victim = sorted(glob.glob(newest + ".*"))[seed % 2]   # .data-* or .index
    what = flip_or_truncate(victim, rng)
    # Weights unlike either save: a restore that silently did nothing shows.
    model.set_weights([np.full_like(w, 7.0) for w in saved_newest])
    try:
        saver.restore(newest)
    except DenseCheckpointError as error:
        assert newest in str(error), error
    else:
        assert "bit flip" in what, f"{what} in {victim} was accepted"
        for want, got in zip(saved_newest, model.get_weights()):
            np.testing.assert_array_equal(got, want, err_msg=f"{what} in {victim} restored "
                                          "other values than were saved")
    saver.restore(older)
    for want, got in zip(saved_older, model.get_weights()):
        np.testing.assert_array_equal(want, got)


def test_corrupt_log_frame_is_named_and_a_torn_tail_is_cut(tmp_path):
    log = EmbeddedLog(str(tmp_path / "log"))
    log.create_topic("t")
    producer = log.producer()
    for i in range(20):
        producer.produce("t", f"record {i:02d}".encode() * 10)  # equal-sized frames
    producer.flush()
    path = log._partition_file("t", 0)
    frame = os.path.getsize(path) // 20
    with open(path, "r+b") as f:     # a bit flip inside record 7's value
        f.seek(7 * frame + frame - 5)
        byte = f.read(1)[0]
        f.seek(7 * frame + frame - 5)
        f.write(bytes([byte ^ 0x10]))
    consumer = log.consumer("g", ["t"])
    with pytest.raises(LogError, match=f"{path}: CRC mismatch in the frame at byte {7 * frame}"):
        for _ in range(5):
            consumer.poll(max_records=100, timeout=0.2)
    with pytest.raises(LogError, match=f"{path}: CRC mismatch"):
        log.end_offsets("t")


def test_corrupt_joiner_snapshot_falls_back_to_the_previous_one(tmp_path, capsys):
    log = EmbeddedLog(str(tmp_path / "log"))
    for topic in ("features", "actions", "examples", "dead_letter"):
        log.create_topic(topic)
    producer = log.producer()
    for i in range(40):
        producer.produce("features", encode_feature(FeatureRecord(f"r{i}".encode(), i, i,
                                                                  1000 + i)))
    producer.flush()
    config = JoinerConfig(["click"], window=10, allowed_lateness=0)
    state = str(tmp_path / "state")
    joiner = Joiner(log, config, state, checkpoint_every=0)
    joiner.run(idle_timeout=0.5)
    joiner.checkpoint()
    snapshot = os.path.join(state, "joiner-state.json")
    assert os.path.exists(snapshot + ".prev")
    with open(snapshot + ".prev") as f:
        previous_positions = json.load(f)["positions"]
    with open(snapshot, "r+b") as f:
        data = bytearray(f.read())
        position = data.index(b'"positions"') + 20
        data[position] ^= 0x01  # a digit or bracket flips: JSON may still parse
        f.seek(0)
        f.write(bytes(data))
    resumed = Joiner(log, config, state, checkpoint_every=0)
    assert "resuming from" in capsys.readouterr().err
    assert sorted(map(tuple, ([tuple(k), o] for k, o in previous_positions))) == \
        sorted((k, o) for k, o in resumed._consumer.positions().items())
    with open(snapshot + ".prev", "r+b") as f:
        f.truncate(10)
    with open(snapshot, "r+b") as f:
        f.truncate(10)
    with pytest.raises(LogError, match="joiner-state.json: unreadable.*the previous one too"):
        Joiner(log, config, state, checkpoint_every=0)


def test_random_bytes_as_feature_and_action_records_are_dead_lettered_and_counted(tmp_path):
    rng = np.random.default_rng(0)
    log = EmbeddedLog(str(tmp_path / "log"))
    for topic in ("features", "actions", "examples", "dead_letter"):
        log.create_topic(topic)
    producer = log.producer()
    garbage = {"features": [], "actions": []}
    for i in range(100):
        producer.produce("features", encode_feature(FeatureRecord(f"r{i}".encode(), i, i,
                                                                  1000 + i)))
        producer.produce("actions", encode_action(ActionRecord(f"r{i}".encode(), "click", 1.0,
                                                               1001 + i)))
        for topic in garbage:
            blob = rng.bytes(int(rng.integers(0, 200)))
            garbage[topic].append(blob)
            producer.produce(topic, blob)
    producer.flush()

    def malformed(decode, blob):
        try:
            decode(blob)
        except RecordError:
            return True
        return False

    bad = sum(malformed(decode_feature, b) for b in garbage["features"]) + \
        sum(malformed(decode_action, b) for b in garbage["actions"])
    assert bad >= 190  # random bytes are almost never a valid record
    joiner = Joiner(log, JoinerConfig(["click"], window=10, allowed_lateness=0),
                    str(tmp_path / "state"), checkpoint_every=0)
    joiner.run(idle_timeout=0.5)
    joiner.flush_all()
    assert joiner.counters["dead_letters"] == bad
    assert sum(log.end_offsets("dead_letter").values()) == bad
    assert sum(log.end_offsets("examples").values()) >= 100


DIM = 3
TABLE = mt.HashTable(DIM, initializer="zeros", optimizer="adagrad")
TABLE.lookup(tf.constant([1, 2, 3], tf.int64), training=True)
VALUE_DTYPES = [tf.float32, tf.float64, tf.int64, tf.string]


def _rows(table):
    exported = table.export()
    order = np.argsort(exported["keys"].numpy())
    return {k: v.numpy()[order] for k, v in exported.items()}


def _by_key(rows):
    """{key: {field: value}} of ``_rows``' output."""
    return {int(key): {field: rows[field][i] for field in rows if field != "keys"}
            for i, key in enumerate(rows["keys"])}


def _dtype_error(ids_dtype, values_dtype, ids_name, values_name):
    """The conversion error a table method gives first (ids are converted
    before values), or None: ints widen to int64, floats narrow to float32,
    nothing else converts."""
    if ids_dtype == tf.float32:
        return f"{ids_name} must be int64, got float32"
    if values_dtype in (tf.int64, tf.string):
        return f"{values_name} must be float32, got {values_dtype.name}"
    return None


def _expected_outcome(call, id_shape, value_shape, value_dtype, id_dtype, chunk, num_chunks):
    """What ``call`` must give for these inputs: ("ok", None) or
    ("invalid", a regular expression of the message)."""
    if call == "assign":
        error = _dtype_error(id_dtype, value_dtype, "ids", "values")
        if error is None and value_shape != id_shape + [DIM]:
            error = r"values must have shape ids.shape \+ \[dim\]"
    elif call == "remove":
        error = _dtype_error(id_dtype, tf.float32, "ids", "values")
    elif call == "import_rows":
        n = int(np.prod(id_shape)) if id_shape else 1
        error = _dtype_error(id_dtype, value_dtype, "keys", "values")
        if error is None and len(id_shape) != 1:
            error = "keys must be 1-D"
        elif error is None and value_shape != [n, DIM]:
            error = r"values must have shape \[" + str(n)
        # The state has the values' shape, which is also Adagrad's [n, dim].
    else:
        error = None if 0 <= chunk < num_chunks else \
            r"export chunk must be in \[0, num_chunks\) with num_chunks >= 1"
    return ("ok", None) if error is None else ("invalid", error)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(id_shape=st.lists(st.integers(0, 4), max_size=3),
       value_shape=st.lists(st.integers(0, 5), max_size=3),
       value_dtype=st.sampled_from(VALUE_DTYPES),
       id_dtype=st.sampled_from([tf.int64, tf.int32, tf.float32]),
       chunk=st.integers(-2, 3), num_chunks=st.integers(-1, 3))
def test_fuzz_assign_remove_import_export(id_shape, value_shape, value_dtype, id_dtype, chunk,
                                          num_chunks):
    """Each input gets exactly the outcome the table's contract gives it:
    InvalidArgumentError with the message of its first defect (dtype, then
    shape) and no row changed, or success with exactly its effect (assigned
    and imported rows hold the given values, last duplicate winning; removed
    ids are gone and counted once; an export chunk holds the table's rows)."""
    rng = np.random.default_rng(len(id_shape) * 11 + len(value_shape))
    id_values = rng.integers(0, 6, size=id_shape)
    ids = tf.cast(tf.constant(id_values), id_dtype)
    raw = rng.normal(size=value_shape)
    values = tf.constant(raw.astype(str)) if value_dtype == tf.string else \
        tf.cast(tf.constant(raw), value_dtype)
    n = int(np.prod(id_shape)) if id_shape else 1
    calls = {
        "assign": lambda: TABLE.assign(ids, values),
        "remove": lambda: TABLE.remove(ids),
        "import_rows": lambda: TABLE.import_rows(ids, values, values, tf.zeros([n], tf.int64),
                                                 tf.zeros([n], tf.int64)),
        "export": lambda: TABLE.export(chunk, num_chunks),
    }
    given_rows = np.asarray(raw, np.float32).reshape(-1, DIM) if value_shape[-1:] == [DIM] \
        else None
    for name, call in calls.items():
        before = _by_key(_rows(TABLE))
        outcome, message = _expected_outcome(name, id_shape, value_shape, value_dtype,
                                             id_dtype, chunk, num_chunks)
        if outcome == "invalid":
            with pytest.raises(Invalid, match=message):
                call()
            after = _by_key(_rows(TABLE))
            assert after.keys() == before.keys(), name
            for key in before:
                for field in before[key]:
                    np.testing.assert_array_equal(after[key][field], before[key][field],
                                                  err_msg=f"{name} changed {field} of {key}")
            continue
        result = call()
        after = _by_key(_rows(TABLE))
        keys = [int(k) for k in id_values.ravel()]
        if name == "assign":
            assert set(after) == set(before) | set(keys)
            for i, key in enumerate(keys):
                if key not in keys[i + 1:]:   # the last duplicate wins
                    np.testing.assert_array_equal(after[key]["values"], given_rows[i])
                if key in before:             # an existing row keeps its optimizer state
                    np.testing.assert_array_equal(after[key]["state"], before[key]["state"])
        elif name == "remove":
            assert int(result) == len(set(keys) & set(before))
            assert set(after) == set(before) - set(keys)
        elif name == "import_rows":
            assert set(after) == set(before) | set(keys)
            for i, key in enumerate(keys):
                if key not in keys[i + 1:]:
                    for field in ("values", "state"):
                        np.testing.assert_array_equal(after[key][field], given_rows[i])
                    assert after[key]["timestamps"] == 0 and after[key]["counts"] == 0
        else:
            chunk_keys = [int(k) for k in result["keys"].numpy()]
            assert len(chunk_keys) == len(set(chunk_keys)) and set(chunk_keys) <= set(before)
            for i, key in enumerate(chunk_keys):
                np.testing.assert_array_equal(result["values"].numpy()[i],
                                              before[key]["values"])
            if num_chunks == 1:
                assert set(chunk_keys) == set(before)
        untouched = set(before) - set(keys) if name != "export" else set(before)
        for key in untouched & set(after):
            for field in before[key]:
                np.testing.assert_array_equal(after[key][field], before[key][field],
                                              err_msg=f"{name} changed {field} of {key}")
    TABLE.assign(tf.constant([1, 2, 3], tf.int64), tf.zeros([3, DIM]))
    assert TABLE.lookup(tf.constant([1], tf.int64)).shape == (1, DIM)
