"""TF Serving's gRPC API: ``tensorflow.serving.PredictionService`` (Predict,
GetModelMetadata) and ``tensorflow.serving.ModelService`` (GetModelStatus),
implemented on the servicer classes of the ``tensorflow-serving-api``
package. Classify, Regress, MultiInference and HandleReloadConfigRequest are
left to the base classes (UNIMPLEMENTED)."""

import contextlib
import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_shape_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from monolith_tf.serving.errors import ServingError, invalid
from monolith_tf.serving.servable import DEFAULT_SIGNATURE

SIGNATURE_DEF_FIELD = "signature_def"


def _requested_version(model_spec):
    return model_spec.version.value if model_spec.HasField("version") else None


def array_from_tensor_proto(name, proto):
    """A request's TensorProto as a numpy array. Numeric tensors sent packed
    (``tensor_content``, what ``tf.make_tensor_proto`` writes) are viewed in
    place; others go through ``tf.make_ndarray``."""
    try:
        dtype = tf.dtypes.as_dtype(proto.dtype)
        if proto.tensor_content and dtype.is_numpy_compatible and dtype != tf.string:
            shape = [dim.size for dim in proto.tensor_shape.dim]
            array = np.frombuffer(proto.tensor_content, dtype=dtype.as_numpy_dtype)
            return array.reshape(shape)
        return tf.make_ndarray(proto)
    except (TypeError, ValueError) as error:
        raise invalid(f"input {name}: unreadable TensorProto: {error}") from None


def fill_tensor_proto(proto, array):
    """Writes numpy ``array`` into ``proto`` (packed bytes for numbers, as
    ``tf.make_tensor_proto`` does, without its per-call Python cost)."""
    if array.dtype.kind in "biuf" and array.dtype.byteorder in "=|<":
        proto.dtype = tf.as_dtype(array.dtype).as_datatype_enum
        proto.tensor_shape.dim.extend(
            tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in array.shape)
        proto.tensor_content = np.ascontiguousarray(array).tobytes()
    else:
        proto.CopyFrom(tf.make_tensor_proto(array))


def signature_def_map(servable):
    """The ``SignatureDefMap`` of a Servable (GetModelMetadata's payload)."""
    signatures = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in servable.signature_defs.items():
        signatures.signature_def[key].CopyFrom(signature)
    return signatures


def model_status_response(statuses):
    """A ``GetModelStatusResponse`` of ``VersionStatus`` entries."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in statuses:
        entry = response.model_version_status.add()
        entry.version = status.version
        entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(status.state)
        entry.status.error_code = status.error_code.value[0]
        entry.status.error_message = status.error_message
    return response


class _Answering:
    """Turns ServingErrors into gRPC status codes and counts every call."""

    def __init__(self, metrics):
        self.metrics = metrics

    @contextlib.contextmanager
    def answering(self, context, method):
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            yield
        except ServingError as error:
            code = error.code
            context.abort(error.code, error.message)
        finally:
            self.metrics.request("grpc", method, code.name, time.perf_counter() - started)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer, _Answering):
    """Predict and GetModelMetadata over a ``ModelManager``."""

    def __init__(self, manager, metrics):
        _Answering.__init__(self, metrics)
        self.manager = manager

    def Predict(self, request, context):
        with self.answering(context, "predict"):
            spec = request.model_spec
            servable = self.manager.servable(spec.name, _requested_version(spec),
                                             spec.version_label)
            inputs = {name: array_from_tensor_proto(name, proto)
                      for name, proto in request.inputs.items()}
            outputs = servable.predict(spec.signature_name, inputs, list(request.output_filter))
            response = predict_pb2.PredictResponse()
            response.model_spec.name = spec.name
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = spec.signature_name or DEFAULT_SIGNATURE
            for name, value in outputs.items():
                fill_tensor_proto(response.outputs[name], value)
            return response

    def GetModelMetadata(self, request, context):
        with self.answering(context, "metadata"):
            fields = list(request.metadata_field)
            if not fields:
                raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
            unsupported = [field for field in fields if field != SIGNATURE_DEF_FIELD]
            if unsupported:
                raise invalid(f"Metadata field {unsupported[0]} is not supported")
            spec = request.model_spec
            servable = self.manager.servable(spec.name, _requested_version(spec),
                                             spec.version_label)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = spec.name
            response.model_spec.version.value = servable.version
            response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_def_map(servable))
            return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer, _Answering):
    """GetModelStatus over a ``ModelManager``."""

    def __init__(self, manager, metrics):
        _Answering.__init__(self, metrics)
        self.manager = manager

    def GetModelStatus(self, request, context):
        with self.answering(context, "status"):
            spec = request.model_spec
            return model_status_response(self.manager.statuses(
                spec.name, _requested_version(spec), spec.version_label))


def add_services(server, manager, metrics):
    """Registers both services of ``manager``'s model on a ``grpc.Server``."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(manager, metrics), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        ModelServicer(manager, metrics), server)
