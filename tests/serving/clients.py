"""Plain clients of the serving tests: HTTP with the standard library and
gRPC with the official tensorflow_serving.apis stubs."""

import json
import socket
import urllib.error
import urllib.request

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)


def http(server, path, body=None, method=None, timeout=30):
    """(status, parsed JSON or text) of one request to the server's REST port."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}{path}", data=data,
                                     method=method or ("POST" if data is not None else "GET"))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            status, text = reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


class GrpcClient:
    """PredictionService and ModelService stubs on one channel."""

    def __init__(self, server, max_message=64 << 20):
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{server.grpc_port}",
            options=[("grpc.max_send_message_length", max_message),
                     ("grpc.max_receive_message_length", max_message)])
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def close(self):
        self.channel.close()

    def predict(self, inputs, model="ctr", version=None, signature="", output_filter=(),
                timeout=30):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = version
        request.model_spec.signature_name = signature
        request.output_filter.extend(output_filter)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        response = self.prediction.Predict(request, timeout=timeout)
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}, response

    def metadata(self, model="ctr", fields=("signature_def",)):
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = model
        request.metadata_field.extend(fields)
        return self.prediction.GetModelMetadata(request, timeout=30)

    def status(self, model="ctr", version=None):
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = version
        return self.models.GetModelStatus(request, timeout=30)


def rows(inputs):
    """Row-format instances of named inputs."""
    size = len(next(iter(inputs.values())))
    return [{name: np.asarray(value)[i].tolist() for name, value in inputs.items()}
            for i in range(size)]


def columns(inputs):
    return {name: np.asarray(value).tolist() for name, value in inputs.items()}


def free_port():
    """A loopback port free at the time of the call."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
