"""TF Serving's gRPC API: ``tensorflow.serving.PredictionService`` (Predict,
Classify, Regress, MultiInference, GetModelMetadata) and
``tensorflow.serving.ModelService`` (GetModelStatus,
HandleReloadConfigRequest), implemented on the servicer classes of the
``tensorflow-serving-api`` package over a ``ModelServer`` (its models, its
config reload). The requests themselves are answered in ``inference.py``.
"""

import contextlib
import time

import grpc
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_management_pb2, model_service_pb2_grpc,
                                     prediction_service_pb2_grpc)

from monolith_tf.serving import inference
from monolith_tf.serving.errors import ServingError, invalid
from monolith_tf.serving.model_config import ModelConfigError, entries_of

SIGNATURE_DEF_FIELD = "signature_def"


def requested_version(model_spec):
    """The version a ModelSpec asks for (None: the newest)."""
    return model_spec.version.value if model_spec.HasField("version") else None


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

    def __init__(self, server, metrics):
        self.server, self.metrics = server, metrics

    def resolve(self, model_spec):
        """The Servable a request's ModelSpec names."""
        return self.server.models.servable(model_spec.name, requested_version(model_spec),
                                           model_spec.version_label)

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
    """Predict, Classify, Regress, MultiInference and GetModelMetadata."""

    def Predict(self, request, context):
        with self.answering(context, "predict"):
            return inference.predict(self.resolve(request.model_spec), request,
                                     self.server.config.tensor_content_outputs)

    def Classify(self, request, context):
        with self.answering(context, "classify"):
            return inference.classify(self.resolve(request.model_spec), request,
                                      self.server.config.check_method_names)

    def Regress(self, request, context):
        with self.answering(context, "regress"):
            return inference.regress(self.resolve(request.model_spec), request,
                                     self.server.config.check_method_names)

    def MultiInference(self, request, context):
        with self.answering(context, "multi_inference"):
            return inference.multi_inference(self.resolve, request,
                                             self.server.config.check_method_names)

    def GetModelMetadata(self, request, context):
        with self.answering(context, "metadata"):
            fields = list(request.metadata_field)
            if not fields:
                raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
            unsupported = [field for field in fields if field != SIGNATURE_DEF_FIELD]
            if unsupported:
                raise invalid(f"Metadata field {unsupported[0]} is not supported")
            servable = self.resolve(request.model_spec)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = request.model_spec.name
            response.model_spec.version.value = servable.version
            response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_def_map(servable))
            return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer, _Answering):
    """GetModelStatus and HandleReloadConfigRequest."""

    def GetModelStatus(self, request, context):
        with self.answering(context, "status"):
            spec = request.model_spec
            return model_status_response(self.server.models.statuses(
                spec.name, requested_version(spec), spec.version_label))

    def HandleReloadConfigRequest(self, request, context):
        """Serves the models of ``request.config`` from now on (new ones
        loaded before the answer); the answer's status says how it went, and
        so does the call's."""
        with self.answering(context, "reload_config"):
            response = model_management_pb2.ReloadConfigResponse()
            if request.config.WhichOneof("config") != "model_config_list":
                raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                   "ModelService::HandleReloadConfigRequest: only "
                                   "model_config_list is supported")
            try:
                self.server.reload_config(entries_of(request.config))
            except ModelConfigError as error:
                response.status.error_code = error.code.value[0]
                response.status.error_message = str(error)
                context.set_code(error.code)
                context.set_details(str(error))
            return response


def add_services(grpc_server, server, metrics):
    """Registers both services of ``server`` (a ``ModelServer``) on a
    ``grpc.Server``."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(server, metrics), grpc_server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        ModelServicer(server, metrics), grpc_server)
