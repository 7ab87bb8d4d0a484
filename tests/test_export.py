"""Serving export: a SavedModel of stock ops only, checked in a fresh process
that never imports monolith_tf."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import monolith_tf as mt
from monolith_tf.layers import HashEmbedding, HashEmbeddingCollection

keras = tf.keras
PROBE = {"user": [1, 5, 10**12], "tags": [[1, 2], [3, 40], [7, 7]]}

FRESH_PROCESS = r"""
import json, sys
import numpy as np
import tensorflow as tf
assert "monolith_tf" not in sys.modules
path, probe = sys.argv[1], json.loads(sys.argv[2])
loaded = tf.saved_model.load(path)
serve = loaded.signatures["serving_default"]
inputs = {k: tf.constant(v, tf.int64) for k, v in probe.items()}
before = serve(**inputs)["output"].numpy().ravel().tolist()
op_types = sorted({node.op for f in [serve] + [loaded.signatures[name]
                                                 for name in ("upsert", "remove",
                                                              "assign_dense")]
                   for node in f.graph.as_graph_def().node} |
                  {node.op for f in serve.graph.as_graph_def().library.function
                   for node in f.node_def})
rows = loaded.signatures["upsert"](table=tf.constant("collection/user"),
                                   ids=tf.constant([1], tf.int64),
                                   values=tf.ones([1, 4]) * 3.0)["rows"].numpy()
after = serve(**inputs)["output"].numpy().ravel().tolist()
remove = loaded.signatures["remove"]
try:
    remove(table=tf.constant("collection/nope"), ids=tf.constant([5], tf.int64))
    unknown_table = "accepted"
except tf.errors.InvalidArgumentError as error:
    unknown_table = "unknown table name" in str(error)
unchanged = serve(**inputs)["output"].numpy().ravel().tolist()
removed = int(remove(table=tf.constant("collection/user"),
                     ids=tf.constant([1, 123456], tf.int64))["rows"].numpy())
after_remove = serve(**inputs)["output"].numpy().ravel().tolist()
# User 1 removed reads zeros: the prediction of a user never seen, same tags.
unseen = serve(user=tf.constant([987654321], tf.int64),
               tags=tf.constant([probe["tags"][0]], tf.int64))["output"].numpy().ravel()
assign = loaded.signatures["assign_dense"]
try:
    assign(version=tf.constant(3, tf.int64), dense_0=tf.fill([7, 1], float("nan")),
           dense_1=tf.zeros([1]))
    nan_refused = "accepted"
except tf.errors.InvalidArgumentError:
    nan_refused = True
after_nan = serve(**inputs)["output"].numpy().ravel().tolist()
swapped_version = int(assign(version=tf.constant(3, tf.int64), dense_0=tf.zeros([7, 1]),
                             dense_1=tf.fill([1], 2.0))["version"].numpy())
swapped = serve(**inputs)["output"].numpy().ravel().tolist()
print(json.dumps({"before": before, "after": after, "rows": int(rows), "ops": op_types,
                  "nan_refused": nan_refused, "after_nan": after_nan,
                  "swapped_version": swapped_version, "swapped": swapped,
                  "unknown_table": unknown_table, "unchanged": unchanged,
                  "removed": removed, "after_remove": after_remove,
                  "unseen": float(unseen[0])}))
"""


def trained_model():
    collection = HashEmbeddingCollection({
        "user": {"dim": 4, "initializer": "normal(stddev=0.5)"},
        "tags": {"dim": 3, "combiner": "mean", "initializer": "normal(stddev=0.5)"}},
        name="collection")
    user = keras.Input(shape=(), dtype="int64", name="user")
    tags = keras.Input(shape=(2,), dtype="int64", name="tags")
    rows = collection({"user": user, "tags": tags})
    out = keras.layers.Dense(1, kernel_initializer="ones")(
        keras.layers.Concatenate()([rows["user"], rows["tags"]]))
    model = keras.Model({"user": user, "tags": tags}, out)
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(0)
    model.fit({"user": rng.integers(0, 20, 64), "tags": rng.integers(0, 50, (64, 2))},
              rng.random((64, 1)), batch_size=16, verbose=0)
    return model


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("row_dtype,tolerance", [("float32", 1e-6), ("float16", 1e-3)])
def test_export_loads_without_the_op_library_and_upserts(tmp_path, row_dtype, tolerance):
    model = trained_model()
    path = str(tmp_path / "serving")
    assert sorted(mt.export_saved_model(model, path, row_dtype=row_dtype)) == [
        "collection/tags", "collection/user"]
    expected = model.predict({k: np.array(v) for k, v in PROBE.items()}, verbose=0).ravel()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, path, json.dumps(PROBE)],
                            capture_output=True, text=True, env=env, cwd=str(tmp_path),
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(answer["before"], expected, rtol=tolerance, atol=tolerance)
    assert not [op for op in answer["ops"] if op.startswith("Monolith")], answer["ops"]
    assert answer["rows"] == 1
    # User 1's row became [3, 3, 3, 3]; the Dense kernel started at ones.
    assert answer["after"][0] != pytest.approx(answer["before"][0])
    assert answer["after"][1:] == pytest.approx(answer["before"][1:])
    # remove: an unknown table is refused and changes nothing; removed rows
    # read zeros (user 1 then predicts as an unseen user); others stay.
    assert answer["unknown_table"] is True
    assert answer["unchanged"] == answer["after"]
    assert answer["removed"] == 2
    assert answer["after_remove"][0] == pytest.approx(answer["unseen"], rel=1e-6, abs=1e-6)
    assert answer["after_remove"][0] != pytest.approx(answer["after"][0])
    assert answer["after_remove"][1:] == pytest.approx(answer["after"][1:])
    # assign_dense: NaN weights refused with nothing changed; then all weights at once.
    assert answer["nan_refused"] is True
    assert answer["after_nan"] == answer["after_remove"]
    assert answer["swapped_version"] == 3
    assert answer["swapped"] == pytest.approx([2.0, 2.0, 2.0])

    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    run = subprocess.run(
        [cli, "run", "--dir", path, "--tag_set", "serve", "--signature_def", "serving_default",
         "--input_exprs", "user=[1, 5, 1000000000000];tags=[[1, 2], [3, 40], [7, 7]]"],
        capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "output" in run.stdout


@pytest.mark.keras_flavours
def test_float16_rows_are_packed_half_size_and_checked(tmp_path):
    emb = HashEmbedding(5, initializer="normal(stddev=0.3)")
    inputs = keras.Input(shape=(), dtype="int64")
    model = keras.Model(inputs, emb(inputs))
    ids = tf.range(1000, dtype=tf.int64)
    emb(ids, training=True)
    sizes = {}
    for dtype in ("float32", "float16"):
        path = str(tmp_path / dtype)
        mt.export_saved_model(model, path, row_dtype=dtype)
        sizes[dtype] = sum(os.path.getsize(os.path.join(root, f))
                           for root, _, files in os.walk(os.path.join(path, "variables"))
                           for f in files)
        rows = tf.saved_model.load(path).signatures["serving_default"](ids)
        rows = list(rows.values())[0].numpy()
        exact = emb.table.lookup(ids).numpy()
        # float16 rounding: relative error <= 2^-11 (module doc).
        np.testing.assert_allclose(rows, exact, rtol=2**-11 if dtype == "float16" else 0,
                                   atol=2**-25)
    # dim 5 packs into 3 int32 per row: 12 bytes instead of 20, plus the 8-byte id.
    assert sizes["float16"] < 0.8 * sizes["float32"]
    emb.table.assign([7], [[1e6] * 5])
    with pytest.raises(ValueError, match="float16 range"):
        mt.export_saved_model(model, str(tmp_path / "big"), row_dtype="float16")
    with pytest.raises(ValueError, match="row_dtype"):
        mt.export_saved_model(model, str(tmp_path / "x"), row_dtype="int8")


@pytest.mark.keras_flavours
def test_export_needs_hash_tables(tmp_path):
    inputs = keras.Input(shape=(2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    with pytest.raises(ValueError, match="no HashEmbedding"):
        mt.export_saved_model(model, str(tmp_path / "x"))


@pytest.mark.keras_flavours
def test_single_input_model_exports(tmp_path):
    emb = HashEmbedding(2, initializer="ones")
    inputs = keras.Input(shape=(), dtype="int64")
    model = keras.Model(inputs, keras.layers.Dense(1, kernel_initializer="ones")(emb(inputs)))
    emb(tf.constant([4], tf.int64), training=True)
    path = str(tmp_path / "single")
    mt.export_saved_model(model, path)
    loaded = tf.saved_model.load(path)
    out = list(loaded.signatures["serving_default"](tf.constant([4, 5], tf.int64)).values())[0]
    np.testing.assert_allclose(out.numpy().ravel(),
                               model.predict(np.array([4, 5]), verbose=0).ravel(), rtol=1e-6)
