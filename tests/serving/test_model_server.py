"""The model server against real clients: official gRPC stubs and plain HTTP
in TF Serving's JSON formats, compared with the export called in-process."""

import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2

from clients import GrpcClient, columns, http, rows
from serving_fixtures import (MAX_BATCH_SIZE, MAX_REQUEST_BYTES, PROBE, predict_in_process,
                              reference, start_server, version_dir)
from monolith_tf.export import export_version
from monolith_tf.serving.errors import ServingError
from monolith_tf.serving.servable import Servable

# Every test here talks to a server on loopback ports.
pytestmark = pytest.mark.integration

PREDICT = "/v1/models/ctr:predict"


@pytest.fixture(scope="module")
def expected(server):
    return predict_in_process(reference(version_dir(server)))


@pytest.fixture(scope="module")
def client(server):
    client = GrpcClient(server)
    yield client
    client.close()


def test_grpc_predict_equals_in_process(client, expected):
    outputs, response = client.predict(PROBE)
    np.testing.assert_allclose(outputs["output"], expected, rtol=1e-6, atol=1e-6)
    assert response.model_spec.name == "ctr"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    outputs, _ = client.predict(PROBE, version=1, signature="serving_default",
                                output_filter=["output"])
    np.testing.assert_allclose(outputs["output"], expected, rtol=1e-6, atol=1e-6)


def test_rest_row_and_columnar_formats_equal_in_process(server, expected):
    status, reply = http(server, PREDICT, {"instances": rows(PROBE)})
    assert status == 200, reply
    np.testing.assert_allclose(np.array(reply["predictions"]), expected, rtol=1e-6, atol=1e-6)
    status, reply = http(server, "/v1/models/ctr/versions/1:predict",
                         {"signature_name": "serving_default", "inputs": columns(PROBE)})
    assert status == 200, reply
    np.testing.assert_allclose(np.array(reply["outputs"]), expected, rtol=1e-6, atol=1e-6)


def test_single_input_model_takes_bare_values(model, tmp_path):
    from monolith_tf.layers import HashEmbedding
    from monolith_tf.serving.server import ModelServer

    keras = tf.keras
    ids = keras.Input(shape=(), dtype="int64", name="item")
    out = keras.layers.Dense(2)(HashEmbedding(3, initializer="normal(stddev=0.5)",
                                              name="items")(ids))
    single = keras.Model(ids, out)
    single(np.arange(10))
    single.layers[1](np.arange(10), training=True)  # rows for ids 0..9
    base = str(tmp_path / "single")
    export_version(single, base)
    with ModelServer(base, model_name="one", port=0, rest_api_port=0) as server:
        ids = np.array([0, 3, 9], np.int64)
        want = predict_in_process(reference(version_dir(server)), {"item": ids})
        status, reply = http(server, "/v1/models/one:predict", {"instances": ids.tolist()})
        assert status == 200, reply
        np.testing.assert_allclose(np.array(reply["predictions"]), want, rtol=1e-6)
        status, reply = http(server, "/v1/models/one:predict", {"inputs": ids.tolist()})
        np.testing.assert_allclose(np.array(reply["outputs"]), want, rtol=1e-6)


def test_metadata_lists_every_signature(server, client):
    response = client.metadata()
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    names = set(signatures.signature_def)
    assert {"serving_default", "upsert", "remove", "assign_dense"} <= names
    default = signatures.signature_def["serving_default"]
    assert set(default.inputs) == {"user", "tags"}
    assert default.inputs["user"].dtype == tf.int64.as_datatype_enum
    assert response.model_spec.version.value == 1
    status, reply = http(server, "/v1/models/ctr/metadata")
    assert status == 200
    assert reply["model_spec"]["name"] == "ctr" and reply["model_spec"]["version"] == "1"
    assert set(reply["metadata"]["signature_def"]["signature_def"]) == names
    rest_default = reply["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert rest_default["inputs"]["user"]["dtype"] == "DT_INT64"
    with pytest.raises(grpc.RpcError) as error:
        client.metadata(fields=["saved_model"])
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_status_over_grpc_and_rest(server, client):
    response = client.status()
    assert [(s.version, s.state) for s in response.model_version_status] == [(1, 30)]
    status, reply = http(server, "/v1/models/ctr")
    assert status == 200
    assert reply == {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {
        "error_code": "OK", "error_message": ""}}]}
    status, reply = http(server, "/v1/models/ctr/versions/1")
    assert status == 200 and reply["model_version_status"][0]["state"] == "AVAILABLE"
    assert http(server, "/v1/models/ctr/versions/9")[0] == 404
    assert http(server, "/v1/models/other")[0] == 404
    with pytest.raises(grpc.RpcError) as error:
        client.status(model="other")
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("path,body,status,message", [
    (PREDICT, b"{not json", 400, "JSON Parse error"),
    (PREDICT, b"", 400, "JSON Parse error: The document is empty"),
    (PREDICT, b"instances = [1, 2]", 400, "JSON Parse error: Invalid value"),
    (PREDICT, {"signature_name": 100}, 400, "'signature_name' key must be a string value."),
    (PREDICT, {"instances": [{"user": 1, "tags": [1, 2]}], "inputs": {}}, 400,
     "expecting only one of 'inputs' or 'instances'"),
    (PREDICT, {"inputs": {"user": [1]}}, 400, "Missing named input: tags in 'inputs' object."),
    (PREDICT, {"instances": [{"user": 1, "tagz": [1, 2]}]}, 400, "Missing but required"),
    (PREDICT, {"instances": [{"user": "a", "tags": [1, 2]}]}, 400,
     "is not of expected type: int64"),
    (PREDICT, {"instances": [{"user": 1.5, "tags": [1, 2]}]}, 400, "fractions"),
    # Shapes are TensorFlow's to check, as in TF Serving: this model's graph refuses.
    (PREDICT, {"instances": [{"user": 1, "tags": [1, 2, 3]}]}, 400, "Shape of tensor"),
    (PREDICT, {"inputs": {"user": [1, 2], "tags": [[1, 2], [3]]}}, 400, "ragged"),
    (PREDICT, {"signature_name": "nope", "instances": [{"user": 1, "tags": [1, 2]}]}, 400,
     "not found in signature def"),
    ("/v1/models/other:predict", {"instances": [{"user": 1, "tags": [1, 2]}]}, 404,
     "Servable not found"),
    ("/v1/models/ctr/versions/7:predict", {"instances": [{"user": 1, "tags": [1, 2]}]}, 404,
     "Servable not found"),
    ("/v1/models/ctr:classify", {"examples": []}, 400, "'examples' value is an empty array"),
    ("/v1/models/ctr:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}]},
     400, "No signature was found with the name: regress_x_to_y"),
    ("/v1/models/ctr:classify", {"examples": [{"user": 1}]}, 400, "Expected one input Tensor."),
    ("/v1/foo", {"instances": []}, 400, "Malformed request: POST /v1/foo"),
    ("/v1/models/ctr/versions/HELLO:predict", {"instances": []}, 400, "Malformed request"),
    ("/v1/models/ctr/versions/18446744073709551615:predict", {"instances": []}, 400,
     "Failed to convert version"),
    ("/v1/models/ctr/labels/stable:predict", {"instances": []}, 400,
     "Unrecognized servable version label: stable"),
    ("/v2/nothing", {"instances": []}, 404, "Malformed request"),
])
def test_rest_errors_answer_tf_serving_codes_and_keep_serving(server, expected, path, body,
                                                             status, message):
    got_status, reply = http(server, path, body)
    assert got_status == status, reply
    assert message in reply["error"]
    ok_status, ok = http(server, PREDICT, {"instances": rows(PROBE)})
    assert ok_status == 200
    np.testing.assert_allclose(np.array(ok["predictions"]), expected, rtol=1e-6, atol=1e-6)


def test_rest_limits(server):
    too_many = {"inputs": {"user": [1] * (MAX_BATCH_SIZE + 1),
                           "tags": [[1, 2]] * (MAX_BATCH_SIZE + 1)}}
    status, reply = http(server, PREDICT, too_many)
    assert status == 400 and "max_batch_size" in reply["error"]
    status, reply = http(server, PREDICT, b" " * (MAX_REQUEST_BYTES + 1))
    assert status == 413 and "max_request_bytes" in reply["error"]
    assert http(server, PREDICT, {"instances": rows(PROBE)})[0] == 200


@pytest.mark.parametrize("change,code", [
    (lambda inputs: {"user": inputs["user"]}, grpc.StatusCode.INVALID_ARGUMENT),
    (lambda inputs: {**inputs, "user": inputs["user"].astype(np.float32)},
     grpc.StatusCode.INVALID_ARGUMENT),
    # TensorFlow's own shape check (the graph's), not ours: as TF Serving.
    (lambda inputs: {**inputs, "tags": inputs["tags"][:, :1]}, grpc.StatusCode.INVALID_ARGUMENT),
    (lambda inputs: {"user": np.ones(MAX_BATCH_SIZE + 1, np.int64),
                     "tags": np.ones((MAX_BATCH_SIZE + 1, 2), np.int64)},
     grpc.StatusCode.INVALID_ARGUMENT),
    (lambda inputs: {**inputs, "pad": np.zeros(MAX_REQUEST_BYTES // 4, np.float32)},
     grpc.StatusCode.RESOURCE_EXHAUSTED),
])
def test_grpc_errors_answer_tf_serving_codes_and_keep_serving(client, expected, change, code):
    with pytest.raises(grpc.RpcError) as error:
        client.predict(change(dict(PROBE)))
    assert error.value.code() == code, error.value.details()
    outputs, _ = client.predict(PROBE)
    np.testing.assert_allclose(outputs["output"], expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("request_kwargs,code", [
    ({"model": "other"}, grpc.StatusCode.NOT_FOUND),
    ({"version": 3}, grpc.StatusCode.NOT_FOUND),
    ({"signature": "nope"}, grpc.StatusCode.FAILED_PRECONDITION),
    ({"output_filter": ["nope"]}, grpc.StatusCode.INVALID_ARGUMENT),
])
def test_grpc_unknown_model_version_signature(client, request_kwargs, code):
    with pytest.raises(grpc.RpcError) as error:
        client.predict(PROBE, **request_kwargs)
    assert error.value.code() == code


def test_metrics_in_prometheus_format(server):
    def counter(text, name, **labels):
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = http(server, "/monitoring/prometheus/metrics")[1]
    http(server, PREDICT, {"instances": rows(PROBE)})
    http(server, PREDICT, b"{not json")
    after = http(server, "/monitoring/prometheus/metrics")[1]
    ok = dict(api="rest", method="predict", code="OK")
    bad = dict(api="rest", method="predict", code="INVALID_ARGUMENT")
    assert counter(after, "monolith_serving_requests_total", **ok) == counter(
        before, "monolith_serving_requests_total", **ok) + 1
    assert counter(after, "monolith_serving_errors_total", **bad) == counter(
        before, "monolith_serving_errors_total", **bad) + 1
    assert counter(after, "monolith_serving_request_latency_seconds_count",
                   api="rest", method="predict") >= 2
    assert 'monolith_serving_model_version{model="ctr"} 1.0' in after


# ------------------------------------------------------------------ updates

def test_rows_applied_and_removed_while_serving(fresh_server):
    server = fresh_server
    ref = reference(version_dir(server))
    client = GrpcClient(server)
    row = np.full((1, 4), 0.25, np.float32)
    assert server.apply_rows("collection/user", [1], row, data_time=1234) == 1
    ref.signatures["upsert"](table=tf.constant("collection/user"), ids=tf.constant([1], tf.int64),
                             values=tf.constant(row))
    np.testing.assert_allclose(client.predict(PROBE)[0]["output"], predict_in_process(ref),
                               rtol=1e-6, atol=1e-6)
    # Through Predict on the update signatures (what a sync-agent sends stock TF Serving).
    outputs, _ = client.predict({"table": np.array(b"collection/user", dtype=object),
                                 "ids": np.array([5], np.int64)}, signature="remove")
    assert int(outputs["rows"]) == 1
    ref.signatures["remove"](table=tf.constant("collection/user"), ids=tf.constant([5], tf.int64))
    np.testing.assert_allclose(client.predict(PROBE)[0]["output"], predict_in_process(ref),
                               rtol=1e-6, atol=1e-6)
    # Over REST, columnar (a scalar string table name), as one would curl stock TF Serving.
    status, reply = http(server, PREDICT, {"signature_name": "upsert", "inputs": {
        "table": "collection/user", "ids": [10**12], "values": [[1.0, -1.0, 0.5, 0.0]]}})
    assert (status, reply) == (200, {"outputs": 1})
    ref.signatures["upsert"](table=tf.constant("collection/user"),
                             ids=tf.constant([10**12], tf.int64),
                             values=tf.constant([[1.0, -1.0, 0.5, 0.0]]))
    np.testing.assert_allclose(client.predict(PROBE)[0]["output"], predict_in_process(ref),
                               rtol=1e-6, atol=1e-6)
    status, reply = http(server, PREDICT, {"signature_name": "upsert", "inputs": {
        "table": "collection/user", "ids": [3], "values": [[1.0, "NaN", 0.5, 0.0]]}})
    assert status == 400
    metrics = http(server, "/monitoring/prometheus/metrics")[1]
    assert 'monolith_serving_rows_applied_total{kind="upsert",table="collection/user"} 2.0' \
        in metrics
    assert "monolith_serving_last_update_data_time_seconds 1234.0" in metrics
    client.close()


@pytest.mark.parametrize("update,message", [
    (lambda s: s.apply_rows("collection/nope", [1], np.ones((1, 4), np.float32)),
     "unknown table"),
    (lambda s: s.apply_rows("collection/user", [1], np.ones((1, 5), np.float32)), "shape"),
    (lambda s: s.apply_rows("collection/user", [1, 2], np.ones((1, 4), np.float32)), "shape"),
    (lambda s: s.apply_rows("collection/user", [1.5], np.ones((1, 4), np.float32)), "int"),
    (lambda s: s.apply_rows("collection/user", [1], np.array([["a"] * 4])), "float32"),
    (lambda s: s.apply_rows("collection/user", [1], np.array([[1, np.nan, 0, 0]])), "NaN"),
    (lambda s: s.remove_rows("collection/nope", [1]), "unknown table"),
    (lambda s: s.swap_dense([np.ones((7, 1), np.float32)], 1), "needs 2 weights"),
    (lambda s: s.swap_dense([np.ones((6, 1), np.float32), np.ones(1, np.float32)], 1), "shape"),
    (lambda s: s.swap_dense([np.ones((7, 1)), np.array([np.inf])], 1), "NaN or Inf"),
    (lambda s: s.swap_dense([np.ones((7, 1)), np.ones(1)], -1), "version"),
])
def test_bad_updates_are_refused_and_change_nothing(fresh_server, update, message):
    client = GrpcClient(fresh_server)
    before = client.predict(PROBE)[0]["output"]
    with pytest.raises(ServingError) as error:
        update(fresh_server)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.value.message
    np.testing.assert_array_equal(client.predict(PROBE)[0]["output"], before)
    assert fresh_server.servable("ctr").dense_version == 0
    client.close()


def test_dense_swap_replaces_all_weights(fresh_server, model):
    server = fresh_server
    kernel, bias = [w.copy() for w in model.layers[-1].get_weights()]
    client = GrpcClient(server)
    before = client.predict(PROBE)[0]["output"]
    assert server.swap_dense([kernel * 2, bias + 1], version=5) == 5
    after = client.predict(PROBE)[0]["output"]
    base = before - bias  # x @ kernel
    np.testing.assert_allclose(after, 2 * base + bias + 1, rtol=1e-5, atol=1e-5)
    assert server.servable("ctr").dense_version == 5
    server.swap_dense([kernel, bias], version=6)  # the other slot this time
    np.testing.assert_allclose(client.predict(PROBE)[0]["output"], before, rtol=1e-6, atol=1e-6)
    client.close()


def test_a_swap_waits_for_requests_on_the_slot_it_writes(fresh_server, model):
    """The swap after next writes the slot an old request reads: it waits."""
    servable = fresh_server.servable("ctr")
    weights = [w.copy() for w in model.layers[-1].get_weights()]
    slots = servable._dense_slots
    with slots.reading():                       # a request on slot 0 (version 0)
        servable.swap_dense(weights, 1)         # writes slot 1: no wait
        with pytest.raises(ServingError) as error:
            servable.swap_dense(weights, 2, timeout=0.3)  # slot 0 is still read
        assert error.value.code == grpc.StatusCode.UNAVAILABLE
        assert servable.dense_version == 1
        done = []
        swapper = threading.Thread(target=lambda: done.append(servable.swap_dense(weights, 2)))
        swapper.start()
        time.sleep(0.3)
        assert not done                         # still waiting for the reader
    swapper.join(10)
    assert done == [2] and servable.dense_version == 2


# ----------------------------------------------------------------- versions

def test_new_version_is_swapped_in_and_old_one_unloaded(fresh_server, model):
    server = fresh_server
    client = GrpcClient(server)
    kernel, bias = [w.copy() for w in model.layers[-1].get_weights()]
    model.layers[-1].set_weights([kernel, bias + 3])
    try:
        export_version(model, server.manager.base_path)  # version 2
    finally:
        model.layers[-1].set_weights([kernel, bias])
    deadline = time.monotonic() + 20
    while server.version != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.version == 2
    outputs, response = client.predict(PROBE)
    assert response.model_spec.version.value == 2
    np.testing.assert_allclose(outputs["output"], predict_in_process(reference(
        version_dir(server, 2))), rtol=1e-6, atol=1e-6)
    states = {s.version: s.state for s in client.status().model_version_status}
    assert states == {2: 30, 1: 50}  # AVAILABLE, END
    with pytest.raises(grpc.RpcError) as error:
        client.predict(PROBE, version=1)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    client.close()


def test_a_version_that_fails_to_load_is_reported_and_old_one_serves(fresh_server):
    server = fresh_server
    broken = f"{server.manager.base_path}/7"
    import os
    os.makedirs(broken)
    with open(f"{broken}/saved_model.pb", "wb") as out:
        out.write(b"not a SavedModel")
    server.manager.poll()
    assert server.version == 1
    status, reply = http(server, "/v1/models/ctr/versions/7")
    assert status == 200
    entry = reply["model_version_status"][0]
    assert entry["state"] == "END" and entry["status"]["error_code"] == "UNKNOWN"
    assert entry["status"]["error_message"]
    assert http(server, PREDICT, {"instances": rows(PROBE)})[0] == 200


def test_any_saved_model_serves_but_takes_no_updates(tmp_path):
    from monolith_tf.serving.metrics import ServingMetrics

    module = tf.Module()
    module.scale = tf.Variable(2.0)
    serve = tf.function(lambda x: {"y": x * module.scale},
                        input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    tf.saved_model.save(module, str(tmp_path / "3"), signatures={"serving_default": serve})
    servable = Servable("plain", 3, str(tmp_path / "3"), ServingMetrics())
    np.testing.assert_allclose(servable.predict("", {"x": np.array([1.5], np.float32)})["y"],
                               [3.0])
    with pytest.raises(ServingError) as error:
        servable.apply_rows("t", [1], np.ones((1, 2), np.float32))
    assert error.value.code == grpc.StatusCode.FAILED_PRECONDITION


# ----------------------------------------------------------------- shutdown

@pytest.mark.parametrize("api", ["grpc", "rest"])
def test_stop_lets_running_requests_finish(model, tmp_path, monkeypatch, api):
    base = str(tmp_path / "models")
    export_version(model, base, version=1)
    server = start_server(base)
    server.shutdown_grace_seconds = 10.0
    entered = threading.Event()
    slow_predict = Servable.predict

    def predict_slowly(self, *args, **kwargs):
        entered.set()
        time.sleep(1.0)
        return slow_predict(self, *args, **kwargs)

    monkeypatch.setattr(Servable, "predict", predict_slowly)
    results = []

    def call():
        if api == "grpc":
            client = GrpcClient(server)
            results.append(client.predict(PROBE)[0]["output"])
            client.close()
        else:
            status, reply = http(server, PREDICT, {"instances": rows(PROBE)})
            results.append((status, reply))

    caller = threading.Thread(target=call)
    caller.start()
    assert entered.wait(10)
    started = time.monotonic()
    server.stop()
    caller.join(10)
    assert time.monotonic() - started >= 0.5  # stop waited for the request
    assert len(results) == 1
    if api == "rest":
        assert results[0][0] == 200 and len(results[0][1]["predictions"]) == 3
    else:
        assert results[0].shape == (3, 1)
