"""What TF Serving's own model-server tests check, against our server.

Cases of ``tensorflow_serving/model_servers/tensorflow_model_server_test.py``
(``test_<their name>``) and of ``http_rest_api_handler_test.cc``
(``test_rest_handler_<their name>``), rewritten here with TF Serving's
expected values and codes, on the models of ``tf_serving_models.py`` in
zero-padded version directories. The servers run in this process with the
flags TF Serving's test harness passes (REST timeout, Unix socket, channel
arguments).

Not applicable, and why:
- testPredictOnTfLite, testPredictWithSignatureDefOnTfLite: TF Lite models
  are not served (``--prefer_tflite_model`` is accepted and ignored).
- test_profiler_service_with_valid_trace_request: no profiler service.
- test_tf_text: needs the tensorflow-text ops, not a dependency here.
- test_distrat_sequential_keras_saved_model_save: needs two virtual CPU
  devices configured before TensorFlow starts in the test process; the
  model it serves is a plain Keras SavedModel, the Keras case below.
- testClassify/Regress/MultiInference for TF1 *session bundles* and the
  batching-parameters file: there are no session bundles in TF2, and
  batching is set by our own flags.
"""

import os
import shutil
import time

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, inference_pb2, model_management_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_log_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

import tf_serving_models as models
from clients import http
from monolith_tf import cli
from monolith_tf.cli import serve_cmd
from monolith_tf.serving.server import ModelServer

pytestmark = pytest.mark.integration

RPC_TIMEOUT = 30.0
# What TF Serving's harness passes to every server it starts (RunServer).
HARNESS_OPTIONS = dict(rest_api_timeout_ms=5000, grpc_channel_arguments="grpc.so_reuseaddr=1")

CONFIG = """
model_config_list {{
  config {{ name: "default" base_path: "{default}" model_platform: "tensorflow" }}
  config {{ name: "tf2" base_path: "{tf2}" model_platform: "tensorflow" }}
  config {{ name: "half_plus_three" base_path: "{three}" model_platform: "tensorflow" }}
  config {{ name: "two_versions" base_path: "{two}" model_platform: "tensorflow"
           model_version_policy {{ specific {{ versions: 123 }} }}
           version_labels {{ key: "stable" value: 123 }} }}
  config {{ name: "two_all" base_path: "{two}" model_version_policy {{ all {{}} }} }}
  config {{ name: "two_latest" base_path: "{two}"
           model_version_policy {{ latest {{ num_versions: 1 }} }} }}
  config {{ name: "saved" base_path: "{saved}" }}
  config {{ name: "multi" base_path: "{multi}" }}
  config {{ name: "keras" base_path: "{keras}" }}
  config {{ name: "bad" base_path: "{bad}" }}
  config {{ name: "counter" base_path: "{counter}" }}
}}
"""


def config_text(name, base):
    return (f'model_config_list {{ config {{ name: "{name}" base_path: "{base}" '
            'model_platform: "tensorflow" } }')


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("tf_serving")
    made = {
        "default": models.half_plus_two_tf1(str(root / "half_plus_two")),
        "tf2": models.half_plus_two_tf2(str(root / "half_plus_two_tf2")),
        "three": models.half_plus_two_tf1(str(root / "half_plus_three"), b=3.0),
        "two": models.half_plus_two_tf1(str(root / "two_versions")),
        "saved": models.saved_model_save(str(root / "saved")),
        "multi": models.multiple_signatures(str(root / "multi")),
        "keras": models.keras_sequential(str(root / "keras")),
        "bad": models.no_default_signature(str(root / "bad")),
        "counter": models.counter(str(root / "counter")),
    }
    models.half_plus_two_tf1(made["two"], version=124)
    incr = prediction_log_pb2.PredictionLog()
    incr.predict_log.request.model_spec.signature_name = "incr_counter"
    models.write_warmup_requests(models.version_dir(made["counter"]), [incr] * 3)
    made["root"] = str(root)
    return made


@pytest.fixture(scope="module")
def server(paths):
    config = os.path.join(paths["root"], "models.config")
    with open(config, "w") as out:
        out.write(CONFIG.format(**paths))
    socket_path = os.path.join(paths["root"], "tf-serving.sock")
    with ModelServer(port=0, rest_api_port=0, model_config_file=config,
                     grpc_socket_path=socket_path, warmup_iterations=2,
                     **HARNESS_OPTIONS) as server:
        server.socket_path = socket_path
        yield server


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(f"localhost:{server.grpc_port}")
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


def verify_predict(target_or_stub, expected_output, expected_version, model_name="default",
                   specify_output=True, batch_input=False, signature_name="serving_default"):
    """TF Serving's VerifyPredictRequest: x = [2.0] (typed float_val), the
    answer in outputs['y'].float_val."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    if batch_input:
        request.inputs["x"].tensor_shape.dim.add().size = 1
    if specify_output:
        request.output_filter.append("y")
    stub = target_or_stub
    if isinstance(target_or_stub, str):
        channel = grpc.insecure_channel(target_or_stub)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    result = stub.Predict(request, RPC_TIMEOUT)
    assert "y" in result.outputs
    assert result.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert len(result.outputs["y"].float_val) == 1
    assert result.outputs["y"].float_val[0] == expected_output
    assert not result.outputs["y"].tensor_content
    verify_model_spec(result.model_spec, model_name, signature_name, expected_version)


def verify_model_spec(spec, name, signature_name, version):
    assert (spec.name, spec.signature_name, spec.version.value) == (name, signature_name,
                                                                    version)


def example_input(request_input, x=2.0):
    request_input.example_list.examples.add().features.feature["x"].float_list.value.append(x)


# ------------------------------------------ tensorflow_model_server_test.py


def test_GetModelStatus(server):
    channel = grpc.insecure_channel(f"localhost:{server.grpc_port}")
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "default"
    result = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request,
                                                                             RPC_TIMEOUT)
    assert len(result.model_version_status) == 1
    assert result.model_version_status[0].version == 123
    assert result.model_version_status[0].status.error_code == 0
    channel.close()


def test_GetModelMetadata(stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "default"
    request.metadata_field.append("signature_def")
    result = stub.GetModelMetadata(request, RPC_TIMEOUT)
    assert result.model_spec.name == "default"
    assert result.model_spec.version.value == 123
    assert len(result.metadata) == 1 and "signature_def" in result.metadata


@pytest.mark.parametrize("model", ["default", "tf2"])
def test_Classify_and_ClassifyTf2(stub, model):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "classify_x_to_y"
    example_input(request.input)
    result = stub.Classify(request, RPC_TIMEOUT)
    assert len(result.result.classifications) == 1
    assert len(result.result.classifications[0].classes) == 1
    assert result.result.classifications[0].classes[0].score == 3.0
    verify_model_spec(result.model_spec, model, "classify_x_to_y", 123)


@pytest.mark.parametrize("model", ["default", "tf2"])
def test_Regress_and_RegressTf2(stub, model):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "regress_x_to_y"
    example_input(request.input)
    result = stub.Regress(request, RPC_TIMEOUT)
    assert len(result.result.regressions) == 1
    assert result.result.regressions[0].value == 3.0
    verify_model_spec(result.model_spec, model, "regress_x_to_y", 123)


@pytest.mark.parametrize("model", ["default", "tf2"])
def test_MultiInference_and_MultiInferenceTf2(stub, model):
    request = inference_pb2.MultiInferenceRequest()
    request.tasks.add().model_spec.name = model
    request.tasks[0].model_spec.signature_name = "regress_x_to_y"
    request.tasks[0].method_name = "tensorflow/serving/regress"
    request.tasks.add().model_spec.name = model
    request.tasks[1].model_spec.signature_name = "classify_x_to_y"
    request.tasks[1].method_name = "tensorflow/serving/classify"
    example_input(request.input)
    result = stub.MultiInference(request, RPC_TIMEOUT)
    assert len(result.results) == 2
    assert result.results[0].regression_result.regressions[0].value == 3.0
    assert result.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for i in range(2):
        verify_model_spec(result.results[i].model_spec, model,
                          request.tasks[i].model_spec.signature_name, 123)


def test_PredictSavedModel(stub):
    verify_predict(stub, 3.0, 123)
    verify_predict(stub, 3.0, 123, specify_output=False)


def test_BadModel_without_the_default_signature(stub):
    with pytest.raises(grpc.RpcError) as error:
        verify_predict(stub, 3.0, 123, model_name="bad", signature_name="")
    assert error.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert 'Serving signature key "serving_default" not found.' in error.value.details()


def test_GoodModelConfig(paths):
    config = os.path.join(paths["root"], "good_model_config.conf")
    with open(config, "w") as out:
        out.write(f"""model_config_list: {{
  config: {{ name: "half_plus_two", base_path: "{paths['default']}",
            model_platform: "tensorflow" }},
  config: {{ name: "half_plus_three", base_path: "{paths['three']}",
            model_platform: "tensorflow" }}
}}""")
    with ModelServer(port=0, rest_api_port=None, model_config_file=config,
                     **HARNESS_OPTIONS) as server:
        target = f"localhost:{server.grpc_port}"
        verify_predict(target, 3.0, 123, model_name="half_plus_two")
        verify_predict(target, 3.0, 123, model_name="half_plus_two", specify_output=False)
        verify_predict(target, 4.0, 123, model_name="half_plus_three")
        verify_predict(target, 4.0, 123, model_name="half_plus_three", specify_output=False)


def test_BadModelConfig(tmp_path, capsys):
    config = tmp_path / "bad_model_config.txt"
    config.write_text("improperly formatted file\n")
    status = cli.main(["serve", f"--model_config_file={config}", "--port=0",
                       "--rest_api_port=0", "--max_seconds=0"])
    assert status == 2
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in \
        capsys.readouterr().err


def _wait_for_model(target, name, expected, deadline_seconds=30):
    deadline = time.monotonic() + deadline_seconds
    while True:
        try:
            return verify_predict(target, expected, 123, model_name=name, specify_output=False)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_ModelConfigReload(paths, tmp_path):
    config = tmp_path / "model_config.txt"
    config.write_text(config_text("half_plus_two", paths["default"]))
    with ModelServer(port=0, rest_api_port=None, model_config_file=str(config),
                     model_config_poll_seconds=0.2, **HARNESS_OPTIONS) as server:
        target = f"localhost:{server.grpc_port}"
        verify_predict(target, 3.0, 123, model_name="half_plus_two", specify_output=False)
        config.write_text(config_text("half_plus_three", paths["three"]))
        _wait_for_model(target, "half_plus_three", 4.0)
        # The model no longer configured is unloaded.
        with pytest.raises(grpc.RpcError) as error:
            verify_predict(target, 3.0, 123, model_name="half_plus_two")
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_ModelConfigReloadWithZeroPollPeriod(paths, tmp_path):
    config = tmp_path / "model_config.txt"
    config.write_text(config_text("half_plus_two", paths["default"]))
    with ModelServer(port=0, rest_api_port=None, model_config_file=str(config),
                     model_config_poll_seconds=0, **HARNESS_OPTIONS) as server:
        target = f"localhost:{server.grpc_port}"
        verify_predict(target, 3.0, 123, model_name="half_plus_two", specify_output=False)
        config.write_text(config_text("half_plus_three", paths["three"]))
        time.sleep(0.5)
        verify_predict(target, 3.0, 123, model_name="half_plus_two", specify_output=False)
        assert server.models.names() == ["half_plus_two"]


def test_GoodGrpcChannelArgs(paths):
    with ModelServer(paths["default"], model_name="default", port=0, rest_api_port=None,
                     grpc_channel_arguments="grpc.max_connection_age_ms=2000,"
                                            "grpc.lb_policy_name=grpclb,grpc.so_reuseaddr=1",
                     rest_api_timeout_ms=5000) as server:
        verify_predict(f"localhost:{server.grpc_port}", 3.0, 123, specify_output=False)


def test_ClassifyREST(server):
    status, reply = http(server, "/v1/models/default:classify",
                         {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]})
    assert (status, reply) == (200, {"results": [[["", 3.0]]]})


def test_RegressREST(server):
    status, reply = http(server, "/v1/models/default:regress",
                         {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]})
    assert (status, reply) == (200, {"results": [3.0]})


def test_PredictREST(server):
    status, reply = http(server, "/v1/models/default:predict", {"instances": [2.0, 3.0, 4.0]})
    assert (status, reply) == (200, {"predictions": [3.0, 3.5, 4.0]})


def test_PredictColumnarREST(server):
    status, reply = http(server, "/v1/models/default:predict", {"inputs": [2.0, 3.0, 4.0]})
    assert (status, reply) == (200, {"outputs": [3.0, 3.5, 4.0]})


def test_GetStatusREST(server):
    status, reply = http(server, "/v1/models/default")
    assert status == 200
    assert reply == {"model_version_status": [{
        "version": "123", "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""}}]}


def _check_half_plus_two_metadata(reply, name="default"):
    assert reply["model_spec"] == {"name": name, "signature_name": "", "version": "123"}
    signatures = reply["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) == {"serving_default", "regress_x_to_y", "regress_x_to_y2",
                               "regress_x2_to_y3", "classify_x_to_y"}
    dims = [{"size": "-1", "name": ""}, {"size": "1", "name": ""}]
    assert signatures["serving_default"] == {
        "inputs": {"x": {"dtype": "DT_FLOAT", "name": "x:0",
                         "tensor_shape": {"dim": dims, "unknown_rank": False}}},
        "outputs": {"y": {"dtype": "DT_FLOAT", "name": "y:0",
                          "tensor_shape": {"dim": dims, "unknown_rank": False}}},
        "method_name": "tensorflow/serving/predict", "defaults": {}}
    regress = signatures["regress_x2_to_y3"]
    assert regress["inputs"]["inputs"]["name"] == "x2:0"
    assert regress["outputs"]["outputs"]["name"] == "y3:0"
    assert regress["method_name"] == "tensorflow/serving/regress"
    assert signatures["classify_x_to_y"]["inputs"]["inputs"]["dtype"] == "DT_STRING"
    assert signatures["classify_x_to_y"]["outputs"]["scores"]["name"] == "y:0"


def test_GetModelMetadataREST(server):
    status, reply = http(server, "/v1/models/default/metadata")
    assert status == 200
    _check_half_plus_two_metadata(reply)


def test_PrometheusEndpoint(server):
    status, text = http(server, "/monitoring/prometheus/metrics")
    assert status == 200 and "# TYPE" in text


def test_PredictUDS(server):
    verify_predict(f"unix:{server.socket_path}", 3.0, 123, specify_output=False)


def test_tf_saved_model_save(stub):
    verify_predict(stub, 12.0, 123, model_name="saved", specify_output=False)


def test_tf_saved_model_save_multiple_signatures(stub):
    verify_predict(stub, 2.0, 123, model_name="multi", signature_name="custom_signature_key")
    verify_predict(stub, 1.0, 123, model_name="multi")


def test_sequential_keras_saved_model_save(stub):
    verify_predict(stub, 2.0, 123, model_name="keras", batch_input=True, specify_output=False)


# ------------------------------------------------ http_rest_api_handler_test.cc


@pytest.mark.parametrize("method,path,message", [
    ("GET", "/v1/foo", "Malformed request"),
    ("POST", "/v1/foo", "Malformed request"),
    ("GET", "/v1/models", "Missing model name"),
    ("GET", "/v1/models/debug/model_name", "Malformed request"),
    ("POST", "/v1/models", "Malformed request"),
    ("GET", "/v1/models/foo:predict", "Malformed request"),
    ("GET", "/v1/models/foo/version/50:predict", "Malformed request"),
    ("POST", "/v1/models/foo/version/50:regress", "Malformed request"),
    ("POST", "/v1/models/foo/versions/HELLO:regress", "Malformed request"),
    ("POST", f"/v1/models/foo/versions/{2**64 - 1}:regress", "Failed to convert version"),
    ("POST", "/v1/models/foo/metadata", "Malformed request"),
    ("POST", "/v1/models/foo/label/some_label:regress", "Malformed request"),
    ("POST", "/v1/models/foo/versions/50/labels/some_label:regress", "Malformed request"),
    ("POST", "/v1/models/foo/versions/some_label:regress", "Malformed request"),
])
def test_rest_handler_UnsupportedApiCalls(server, method, path, message):
    status, reply = http(server, path, b"" if method == "POST" else None, method=method)
    assert status == 400
    assert message in reply["error"]


@pytest.mark.parametrize("path", ["/v1/models/foo:predict", "/v1/models/foo/versions/50:predict",
                                  "/v1/models/two_versions99:predict"])
def test_rest_handler_PredictModelNameVersionErrors(server, path):
    status, reply = http(server, path, {"instances": [1]})
    assert status == 404 and "Servable not found" in reply["error"]


@pytest.mark.parametrize("path,body,message", [
    ("/v1/models/two_versions:predict", b"", "JSON Parse error: The document is empty"),
    ("/v1/models/two_versions:predict", b"instances = [1, 2]", "JSON Parse error: Invalid value"),
    ("/v1/models/two_versions:predict", {"instances": ["x", "y"]},
     "not of expected type: float"),
    ("/v1/models/two_versions/labels/nonexistent:predict", {"instances": ["x", "y"]},
     "Unrecognized servable version label"),
    ("/v1/models/two_versions:predict", {"signature_name": 100},
     "'signature_name' key must be a string value."),
])
def test_rest_handler_PredictRequestErrors(server, path, body, message):
    status, reply = http(server, path, body)
    assert status == 400
    assert message in reply["error"]


@pytest.mark.parametrize("path,body,expected", [
    (":predict", {"instances": [[1.0, 2.0], [3.0, 4.0]]}, {"predictions": [[2.5, 3.0],
                                                                          [3.5, 4.0]]}),
    ("/versions/123:predict", {"instances": [1.0, 2.0]}, {"predictions": [2.5, 3.0]}),
    ("/labels/stable:predict", {"instances": [1.0, 2.0]}, {"predictions": [2.5, 3.0]}),
    ("/versions/123:predict", {"signature_name": "serving_default", "instances": [3.0, 4.0]},
     {"predictions": [3.5, 4.0]}),
    ("/versions/123:predict", {"signature_name": "serving_default", "inputs": [3.0, 4.0]},
     {"outputs": [3.5, 4.0]}),
    (":regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]},
     {"results": [42]}),
    ("/versions/123:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]},
     {"results": [42]}),
    ("/labels/stable:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]},
     {"results": [42]}),
    (":classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 20.0}]},
     {"results": [[["", 12]]]}),
    ("/labels/stable:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 10.0}]},
     {"results": [[["", 7]]]}),
])
def test_rest_handler_Predict_Regress_Classify(server, path, body, expected):
    status, reply = http(server, f"/v1/models/two_versions{path}", body)
    assert status == 200, reply
    assert reply == expected


@pytest.mark.parametrize("path", ["", "/versions/123", "/labels/stable"])
def test_rest_handler_GetStatus(server, path):
    status, reply = http(server, f"/v1/models/two_versions{path}")
    assert status == 200
    assert reply == {"model_version_status": [{
        "version": "123", "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""}}]}


def test_rest_handler_GetModelMetadata(server):
    status, reply = http(server, "/v1/models/two_versions/metadata")
    assert status == 200
    _check_half_plus_two_metadata(reply, "two_versions")


# ------------------------------------------------------ beyond their cases


def test_version_policies_and_labels(server, stub):
    assert server.model("two_versions").serving_versions == [123]
    assert server.model("two_all").serving_versions == [123, 124]
    assert server.model("two_latest").serving_versions == [124]
    verify_predict(stub, 3.0, 124, model_name="two_all")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "two_all"
    request.model_spec.version.value = 123
    request.inputs["x"].CopyFrom(_float_tensor([[2.0]]))
    assert stub.Predict(request, RPC_TIMEOUT).model_spec.version.value == 123
    request.model_spec.name = "two_versions"
    request.model_spec.version.value = 124
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, RPC_TIMEOUT)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert "Specific(two_versions, 124)" in error.value.details()
    request.model_spec.version_label = "stable"
    assert stub.Predict(request, RPC_TIMEOUT).model_spec.version.value == 123
    request.model_spec.version_label = "canary"
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, RPC_TIMEOUT)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Unrecognized servable version label: canary" in error.value.details()


def _float_tensor(values):
    import tensorflow as tf
    return tf.make_tensor_proto(np.asarray(values, np.float32))


@pytest.mark.parametrize("shape", [[3], [2, 2], [1, 1]])
def test_shapes_are_left_to_tensorflow(stub, shape):
    """A [-1, 1] input fed [3] or [2, 2] runs, as in TF Serving."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.inputs["x"].CopyFrom(_float_tensor(np.ones(shape)))
    result = stub.Predict(request, RPC_TIMEOUT)
    assert list(result.outputs["y"].float_val) == [2.5] * int(np.prod(shape))
    assert [d.size for d in result.outputs["y"].tensor_shape.dim] == shape


def test_predict_outputs_typed_fields_or_tensor_content(paths):
    with ModelServer(paths["default"], model_name="default", port=0, rest_api_port=None,
                     tensor_content_outputs=True) as server:
        channel = grpc.insecure_channel(f"localhost:{server.grpc_port}")
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "default"
        request.inputs["x"].CopyFrom(_float_tensor([[2.0], [4.0]]))
        result = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, 30)
        assert not result.outputs["y"].float_val
        np.testing.assert_array_equal(
            np.frombuffer(result.outputs["y"].tensor_content, np.float32), [3.0, 4.0])
        channel.close()


def test_warmup_requests_replay_before_the_version_serves(server, stub):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "counter"
    request.model_spec.signature_name = "get_counter"
    # 3 records, each replayed twice (warmup_iterations=2), before AVAILABLE.
    assert stub.Predict(request, RPC_TIMEOUT).outputs["output"].float_val == [6.0]


def test_a_failing_warmup_record_fails_the_load(paths, tmp_path):
    base = str(tmp_path / "counter")
    shutil.copytree(paths["counter"], base)
    broken = prediction_log_pb2.PredictionLog()
    broken.predict_log.request.model_spec.signature_name = "no_such_signature"
    models.write_warmup_requests(models.version_dir(base), [broken])
    with ModelServer(base, model_name="counter", port=0, rest_api_port=None) as server:
        [status] = server.models.statuses("counter")
        assert (status.version, status.state) == (123, "END")
        assert status.error_code == grpc.StatusCode.FAILED_PRECONDITION
        assert "no_such_signature" in status.error_message
        assert server.version is None


def test_reload_config_over_grpc(paths):
    with ModelServer(paths["default"], model_name="default", port=0,
                     rest_api_port=None) as server:
        channel = grpc.insecure_channel(f"localhost:{server.grpc_port}")
        models_stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = model_management_pb2.ReloadConfigRequest()
        added = request.config.model_config_list.config.add()
        added.name, added.base_path = "half_plus_three", paths["three"]
        kept = request.config.model_config_list.config.add()
        kept.name, kept.base_path = "default", paths["default"]
        kept.version_labels["stable"] = 123
        response = models_stub.HandleReloadConfigRequest(request, RPC_TIMEOUT)
        assert response.status.error_code == 0
        target = f"localhost:{server.grpc_port}"
        verify_predict(target, 4.0, 123, model_name="half_plus_three")
        verify_predict(target, 3.0, 123)
        assert server.model("default").servable(label="stable").version == 123
        bad = model_management_pb2.ReloadConfigRequest()
        bad.config.model_config_list.config.add(name="dup", base_path=paths["default"])
        bad.config.model_config_list.config.add(name="dup", base_path=paths["three"])
        with pytest.raises(grpc.RpcError) as error:
            models_stub.HandleReloadConfigRequest(bad, RPC_TIMEOUT)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "configured twice" in error.value.details()
        assert server.models.names() == ["default", "half_plus_three"]  # nothing changed
        kept.version_labels["stable"] = 999   # not a version of this model
        with pytest.raises(grpc.RpcError) as error:
            models_stub.HandleReloadConfigRequest(request, RPC_TIMEOUT)
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "Request to assign label to version 999 of model default" in \
            error.value.details()
        assert server.model("default").servable(label="stable").version == 123  # kept
        channel.close()


def test_every_tensorflow_model_server_flag_is_accepted(paths, tmp_path, capsys):
    """The flags TF Serving's harness and common scripts pass: parsed,
    applied or named as ignored, and the server answers."""
    config = tmp_path / "models.config"
    config.write_text(config_text("default", paths["default"]))
    socket_path = tmp_path / "serving.sock"
    argv = ["serve", "--port=0", "--rest_api_port=0", "--rest_api_timeout_in_ms=5000",
            f"--grpc_socket_path={socket_path}", f"--model_config_file={config}",
            "--model_config_file_poll_wait_seconds=0",
            "--grpc_channel_arguments=grpc.so_reuseaddr=1", "--enable_batching",
            "--batching_parameters_file=/nonexistent/batching_config.txt",
            "--enable_model_warmup=true", "--num_request_iterations_for_warmup=2",
            "--tensorflow_intra_op_parallelism=0", "--tensorflow_inter_op_parallelism=0",
            "--monitoring_config_file=/nonexistent/monitoring_config.txt",
            "--prefer_tflite_model=true", "--file_system_poll_wait_seconds=1",
            "--model_name=ignored", "--model_base_path=/ignored"]
    args = cli.build_parser().parse_args(argv)
    assert serve_cmd.ignored_flags(args) == [
        "--batching_parameters_file is accepted and ignored: use --max_batch_size, "
        "--batch_timeout_micros and --num_batch_threads",
        "--monitoring_config_file is accepted and ignored: Prometheus metrics are always at "
        "/monitoring/prometheus/metrics on the REST port",
        "--prefer_tflite_model is accepted and ignored: TF Lite models are not served"]
    config_of = serve_cmd.server_config(args)
    assert (config_of.enable_batching, config_of.rest_api_timeout_ms,
            config_of.warmup_iterations, config_of.grpc_socket_path) == (
        True, 5000, 2, str(socket_path))
    with ModelServer(config=config_of) as server:
        assert server.config.enable_batching and server.models.names() == ["default"]
        verify_predict(f"unix:{socket_path}", 3.0, 123)
    assert cli.main(argv[:-2] + ["--max_seconds=0"]) == 0
    captured = capsys.readouterr()
    assert "--prefer_tflite_model is accepted and ignored" in captured.err
    assert '"models": ["default"]' in captured.out


def test_enable_batching_false_and_bare_booleans():
    parse = cli.build_parser().parse_args
    assert parse(["serve", "--model_base_path=b", "--enable_batching=false"]).enable_batching \
        is False
    assert parse(["serve", "--model_base_path=b", "--enable_batching"]).enable_batching is True
    assert parse(["serve", "--model_base_path=b"]).enable_model_warmup is True


# Every flag of tensorflow_model_server (tensorflow_serving/model_servers/main.cc).
TF_SERVING_FLAGS = [
    "port", "grpc_socket_path", "rest_api_port", "rest_api_num_threads",
    "rest_api_timeout_in_ms", "rest_api_enable_cors_support", "enable_batching",
    "allow_version_labels_for_unavailable_models", "batching_parameters_file",
    "enable_per_model_batching_parameters", "model_config_file",
    "model_config_file_poll_wait_seconds", "model_name", "model_base_path",
    "num_load_threads", "num_unload_threads", "max_num_load_retries",
    "load_retry_interval_micros", "file_system_poll_wait_seconds", "flush_filesystem_caches",
    "tensorflow_session_parallelism", "tensorflow_session_config_file",
    "tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism",
    "use_alts_credentials", "ssl_config_file", "platform_config_file",
    "per_process_gpu_memory_fraction", "saved_model_tags", "grpc_channel_arguments",
    "grpc_max_threads", "enable_model_warmup", "num_request_iterations_for_warmup", "version",
    "monitoring_config_file", "remove_unused_fields_from_bundle_metagraph",
    "prefer_tflite_model", "num_tflite_pools", "num_tflite_interpreters_per_pool",
    "enable_signature_method_name_check", "xla_cpu_compilation_enabled",
    "xla_gpu_compilation_enabled", "enable_profiler", "thread_pool_factory_config_file",
    "mixed_precision", "skip_initialize_tpu", "enable_grpc_healthcheck_service",
    "enable_serialization_as_tensor_content",
]
NUMERIC = {"port", "rest_api_port", "rest_api_num_threads", "rest_api_timeout_in_ms",
           "model_config_file_poll_wait_seconds", "file_system_poll_wait_seconds",
           "tensorflow_session_parallelism", "tensorflow_intra_op_parallelism",
           "tensorflow_inter_op_parallelism", "grpc_max_threads",
           "num_request_iterations_for_warmup", "max_num_load_retries",
           "load_retry_interval_micros"}
BOOLEAN = {"enable_batching", "enable_model_warmup", "enable_serialization_as_tensor_content",
           "rest_api_enable_cors_support", "enable_signature_method_name_check",
           "allow_version_labels_for_unavailable_models"}


@pytest.mark.parametrize("flag", TF_SERVING_FLAGS)
def test_each_tensorflow_model_server_flag_parses(flag):
    value = "1" if flag in NUMERIC else "true" if flag in BOOLEAN else "x"
    argv = ["serve", "--model_base_path=b", f"--{flag}" if flag == "version"
            else f"--{flag}={value}"]
    args = cli.build_parser().parse_args(argv)
    if flag in serve_cmd.IGNORED_FLAGS:
        assert serve_cmd.ignored_flags(args) == [
            f"--{flag} is accepted and ignored: {serve_cmd.IGNORED_FLAGS[flag]}"]
    else:
        assert serve_cmd.ignored_flags(args) == []


def test_signature_method_names_checked_on_request(paths):
    with ModelServer(paths["tf2"], model_name="tf2", port=0, rest_api_port=0,
                     check_method_names=True) as server:
        status, reply = http(server, "/v1/models/tf2:classify",
                             {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]})
        assert status == 400
        assert reply["error"] == ("Expected classification signature method_name to be "
                                  "tensorflow/serving/classify. Was: tensorflow/serving/predict")
        status, reply = http(server, "/v1/models/tf2:regress",
                             {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]})
        assert status == 400 and "tensorflow/serving/regress. Was:" in reply["error"]
    with ModelServer(paths["default"], model_name="default", port=0, rest_api_port=0,
                     check_method_names=True) as server:  # TF1 signatures say what they are
        status, reply = http(server, "/v1/models/default:classify",
                             {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]})
        assert (status, reply) == (200, {"results": [[["", 3.0]]]})


def test_a_failing_load_is_retried(paths, tmp_path):
    import threading

    base = tmp_path / "model"
    target = base / models.VERSION_DIR
    target.mkdir(parents=True)
    (target / "saved_model.pb").write_bytes(b"not a SavedModel yet")
    good = models.version_dir(paths["default"])

    def repair():
        shutil.copytree(os.path.join(good, "variables"), target / "variables")
        shutil.copy(os.path.join(good, "saved_model.pb"), target / "staged.pb")
        os.replace(target / "staged.pb", target / "saved_model.pb")

    timer = threading.Timer(0.2, repair)
    timer.start()
    with ModelServer(str(base), model_name="default", port=0, rest_api_port=None,
                     max_num_load_retries=3, load_retry_interval_seconds=0.6) as server:
        timer.join()
        assert server.version == 123
        [status] = server.models.statuses("default")
        assert (status.state, status.error_code) == ("AVAILABLE", grpc.StatusCode.OK)
        verify_predict(f"localhost:{server.grpc_port}", 3.0, 123)


def test_saved_model_tags_choose_the_meta_graph(paths):
    with ModelServer(paths["default"], model_name="default", port=0, rest_api_port=None,
                     saved_model_tags="serve,tpu") as server:
        [status] = server.models.statuses("default")
        assert status.state == "END"
        assert "Could not find meta graph def matching supplied tags: { serve tpu }" in \
            status.error_message


def test_cors_headers_and_preflight(paths):
    import urllib.error
    import urllib.request

    def call(server, method, origin=None):
        request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}/v1/models/default",
                                         method=method, headers={"Origin": origin} if origin
                                         else {})
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status, dict(reply.headers)
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers)

    with ModelServer(paths["default"], model_name="default", port=0, rest_api_port=0,
                     rest_api_enable_cors_support=True) as server:
        status, headers = call(server, "GET")
        assert status == 200
        assert (headers["Access-Control-Allow-Origin"], headers["Access-Control-Allow-Methods"],
                headers["Access-Control-Allow-Headers"]) == ("*", "POST, GET", "Content-Type")
        assert call(server, "OPTIONS", "https://app.example")[0] == 200
        assert call(server, "OPTIONS")[0] == 400   # FAILED_PRECONDITION: no Origin
    with ModelServer(paths["default"], model_name="default", port=0, rest_api_port=0) as server:
        assert "Access-Control-Allow-Origin" not in call(server, "GET")[1]


def test_a_label_on_a_version_not_serving_is_refused_unless_allowed(paths, tmp_path):
    from monolith_tf.serving.model_config import ModelConfigError

    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "default" '
                      f'base_path: "{paths["default"]}" '
                      'version_labels { key: "next" value: 124 } } }')
    with pytest.raises(ModelConfigError, match="version 124 of model default, which is not "
                                               "currently available"):
        ModelServer(port=0, rest_api_port=None, model_config_file=str(config)).start()
    with ModelServer(port=0, rest_api_port=0, model_config_file=str(config),
                     allow_unavailable_labels=True) as server:
        status, reply = http(server, "/v1/models/default/labels/next:predict",
                             {"instances": [1.0]})
        assert status == 404 and "Specific(default, 124)" in reply["error"]


def test_a_config_file_caught_mid_write_is_not_applied(paths, tmp_path):
    """An editor truncates, then writes: the empty file (a valid config of no
    models) and the partial ones must not unload anything."""
    config = tmp_path / "models.config"
    config.write_text(config_text("half_plus_two", paths["default"]))
    final = (f'model_config_list {{ config {{ name: "half_plus_two" '
             f'base_path: "{paths["default"]}" }} config {{ name: "half_plus_three" '
             f'base_path: "{paths["three"]}" }} }}')
    with ModelServer(port=0, rest_api_port=None, model_config_file=str(config),
                     model_config_poll_seconds=0.01) as server:
        seen = []
        with open(config, "w") as out:            # truncated: empty for a while
            for _ in range(5):
                time.sleep(0.01)
                seen.append(server.models.names())
            for start in range(0, len(final), 16):
                out.write(final[start:start + 16])
                out.flush()
                seen.append(server.models.names())
                time.sleep(0.005)
        deadline = time.monotonic() + 30
        while server.models.names() != ["half_plus_three", "half_plus_two"]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert all("half_plus_two" in names for names in seen), seen
