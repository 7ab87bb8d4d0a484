"""The checks Keras runs on its own layers (Keras 3's ``run_layer_test``,
tf_keras' ``layer_test``), run on both of ours under whichever Keras tf.keras
is (`make test` runs this file under Keras 3 and again under tf_keras):
serialization round trip, weights once built, symbolic (functional) and
eager calls against ``compute_output_shape``, Sequential use, weight transfer,
a training step, and mixed precision (rows stay float32 in the table;
outputs come in the compute dtype)."""

import os

import numpy as np
import pytest
import tensorflow as tf

import monolith_tf.ops  # noqa: F401  (loads the ops)
from monolith_tf.layers import HashEmbedding, HashEmbeddingCollection

# Layer code differs between Keras 3 and tf_keras: `make test` runs these under both.
pytestmark = pytest.mark.keras_flavours

keras = tf.keras
LEGACY = os.environ.get("TF_USE_LEGACY_KERAS") == "1"
BATCH = 8


def single():
    return (HashEmbedding, {"dim": 4, "combiner": "mean", "name": "emb",
                            "initializer": "uniform(minval=-0.5, maxval=0.5)"},
            {"ids": (3,)})


def collection():
    return (HashEmbeddingCollection,
            {"features": {"user": {"dim": 4, "initializer": "uniform(minval=-0.5, maxval=0.5)"},
                          "tags": {"dim": 2, "combiner": "sum"}}, "name": "embs"},
            {"user": (), "tags": (3,)})


LAYERS = {"HashEmbedding": single, "HashEmbeddingCollection": collection}


def inputs_for(shapes, seed=0):
    rng = np.random.default_rng(seed)
    data = {name: rng.integers(0, 40, size=(BATCH,) + shape).astype(np.int64)
            for name, shape in shapes.items()}
    return data["ids"] if list(shapes) == ["ids"] else data


def symbolic_inputs(shapes):
    tensors = {name: keras.Input(shape=shape, dtype="int64", name=name)
               for name, shape in shapes.items()}
    return tensors["ids"] if list(shapes) == ["ids"] else tensors


def as_list(shape):
    return list(shape.as_list()) if isinstance(shape, tf.TensorShape) else list(shape)


def flat_output(output):
    """One [batch, n] tensor of a layer's output (a dict for the collection)."""
    if isinstance(output, dict):
        return keras.layers.Concatenate()([keras.layers.Flatten()(output[k])
                                           for k in sorted(output)])
    return output


@pytest.fixture(params=sorted(LAYERS))
def layer_case(request):
    return LAYERS[request.param]()


def test_serialization_round_trip(layer_case):
    cls, kwargs, _ = layer_case
    layer = cls(**kwargs)
    config = layer.get_config()
    assert cls.from_config(config).get_config() == config
    revived = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(revived) is cls and revived.get_config() == config


def test_weights_once_built_and_their_dtypes(layer_case):
    cls, kwargs, shapes = layer_case
    layer = cls(**kwargs)
    layer(inputs_for(shapes))
    assert layer.built
    assert [w.name.split("/")[-1].split(":")[0] for w in layer.trainable_weights] == \
        ["update_trigger"]
    assert len(layer.non_trainable_weights) == 2  # update_steps, data_time
    assert {w.dtype if isinstance(w.dtype, str) else w.dtype.name
            for w in layer.weights} == {"float32", "int64"}


def test_symbolic_and_eager_calls_match_compute_output_shape(layer_case):
    cls, kwargs, shapes = layer_case
    layer = cls(**kwargs)
    symbolic = layer(symbolic_inputs(shapes))
    batch_shapes = {name: (None,) + shape for name, shape in shapes.items()}
    expected = layer.compute_output_shape(
        batch_shapes["ids"] if list(shapes) == ["ids"] else batch_shapes)
    eager = layer(inputs_for(shapes))
    if isinstance(expected, dict):
        assert set(expected) == set(symbolic) == set(eager)
        pairs = [(expected[k], symbolic[k], eager[k]) for k in expected]
    else:
        pairs = [(expected, symbolic, eager)]
    for want, sym, out in pairs:
        # tf_keras expects TensorShape from compute_output_shape, Keras 3 tuples.
        assert isinstance(want, tf.TensorShape) == LEGACY
        assert as_list(want) == as_list(sym.shape)
        assert as_list(want)[1:] == list(out.shape)[1:] and out.shape[0] == BATCH
        assert out.dtype == tf.float32


def test_functional_and_sequential_models_train(layer_case):
    cls, kwargs, shapes = layer_case
    labels = np.arange(BATCH) % 2
    x = inputs_for(shapes)
    functional_inputs = symbolic_inputs(shapes)
    layer = cls(**kwargs)
    functional = keras.Model(functional_inputs,
                             keras.layers.Dense(1)(flat_output(layer(functional_inputs))))
    models = [(functional, layer)]
    if cls is HashEmbedding:  # Sequential models take one tensor input
        seq_layer = cls(**{**kwargs, "name": "seq_emb"})
        models.append((keras.Sequential([keras.Input(shape=shapes["ids"], dtype="int64"),
                                         seq_layer, keras.layers.Dense(1)]), seq_layer))
    for model, trained_layer in models:
        model.compile(optimizer="sgd", loss=keras.losses.BinaryCrossentropy(from_logits=True))
        before = {name: table.size() for name, table in trained_layer.feature_tables().items()}
        history = model.fit(x, labels, epochs=3, batch_size=BATCH, verbose=0)
        losses = history.history["loss"]
        assert losses[-1] < losses[0]
        assert all(int(before[n]) == 0 for n in before)
        assert all(int(t.size()) > 0 for t in trained_layer.feature_tables().values())
        assert int(trained_layer.update_steps.numpy()) == 3


def test_weight_transfer_carries_rows_and_variables(layer_case, tmp_path):
    cls, kwargs, shapes = layer_case
    labels = np.arange(BATCH) % 2
    x = inputs_for(shapes)

    def build():
        inputs = symbolic_inputs(shapes)
        model = keras.Model(inputs, keras.layers.Dense(1)(flat_output(cls(**kwargs)(inputs))))
        model.compile(optimizer="sgd", loss=keras.losses.BinaryCrossentropy(from_logits=True))
        return model

    source = build()
    source.fit(x, labels, epochs=2, batch_size=BATCH, verbose=0)
    expected = source.predict(x, verbose=0)
    # Keras variables by get/set_weights (rows are not Keras variables) ...
    target = build()
    target.set_weights(source.get_weights())
    assert len(target.get_weights()) == len(source.get_weights())
    for a, b in zip(target.get_weights(), source.get_weights()):
        np.testing.assert_array_equal(a, b)
    # ... rows and variables together by save_weights / load_weights.
    path = str(tmp_path / ("model.weights.h5" if not LEGACY else "model_weights"))
    source.save_weights(path)
    target = build()
    target.load_weights(path)
    np.testing.assert_allclose(target.predict(x, verbose=0), expected, rtol=1e-6, atol=1e-7)
    assert np.abs(expected).sum() > 0


def test_mixed_precision_outputs_the_compute_dtype_and_trains(layer_case):
    cls, kwargs, shapes = layer_case
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = cls(**kwargs)
        inputs = symbolic_inputs(shapes)
        symbolic = layer(inputs)
        outputs = keras.layers.Dense(1, dtype="float32")(flat_output(symbolic))
        model = keras.Model(inputs, outputs)
        model.compile(optimizer="sgd", loss=keras.losses.BinaryCrossentropy(from_logits=True))
        eager = layer(inputs_for(shapes))
        for out in (eager.values() if isinstance(eager, dict) else [eager]):
            assert out.dtype == tf.float16
        for out in (symbolic.values() if isinstance(symbolic, dict) else [symbolic]):
            assert out.dtype in (tf.float16, "float16")
        # Variables stay float32 (the trigger) and int64 (counters); rows stay float32.
        assert all((w.dtype if isinstance(w.dtype, str) else w.dtype.name) != "float16"
                   for w in layer.weights)
        history = model.fit(inputs_for(shapes), np.arange(BATCH) % 2, epochs=2,
                            batch_size=BATCH, verbose=0)
        assert np.isfinite(history.history["loss"]).all()
        for table in layer.feature_tables().values():
            rows = table.export()
            assert rows["values"].dtype == tf.float32 and int(table.size()) > 0
        assert int(layer.update_steps.numpy()) == 2
    finally:
        keras.mixed_precision.set_global_policy("float32")
