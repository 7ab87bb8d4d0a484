"""``SyncAgent`` (``python -m monolith_tf sync-agent``): applies the sync
stream to any server that speaks TF Serving's gRPC API, e.g. stock
``tensorflow_model_server`` serving ``export_saved_model`` exports.

Rows go through ``Predict`` on the export's ``remove`` and ``upsert``
signatures and dense pushes on ``assign_dense`` (how Monolith updates its
TF Serving: a Predict call on an assign signature), pinned to the model
version being served. The agent polls ``GetModelStatus`` every
``status_every_secs``; when a new version serves, it reads that version's
sync state from the model base path (the agent needs to read the base path,
as the server does) and replays the stream from its offsets. A server that
is down or busy is retried, so no record is skipped; a push the server
refuses (INVALID_ARGUMENT) goes to the dead-letter topic.
"""

import os
import threading
import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from monolith_tf.serving.errors import ServingError, invalid
from monolith_tf.serving.export import read_metadata, read_sync_state
from monolith_tf.serving.sync_format import DensePush
from monolith_tf.serving.sync_subscriber import SyncFollower

_AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.Value("AVAILABLE")
_RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED)


class SyncAgent(SyncFollower):
    """Follows the sync stream for the model ``model_name`` served at
    ``target`` (``host:port`` of its gRPC API), whose versions live under
    ``model_base_path`` (module doc). Other options: ``SyncFollower``'s."""

    def __init__(self, log, target, model_name, model_base_path, status_every_secs=1.0,
                 rpc_timeout=30.0, **options):
        super().__init__(log, **options)
        self.model_name, self.model_base_path = model_name, model_base_path
        self.status_every_secs, self.rpc_timeout = status_every_secs, rpc_timeout
        self._channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self.served_version = None
        self._facts = None
        self._watcher = threading.Thread(target=self._watch, name="sync-agent-status",
                                         daemon=True)

    def start(self):
        super().start()
        self._watcher.start()
        return self

    def stop(self):
        super().stop()
        self._watcher.join()
        self._channel.close()

    def _watch(self):
        while not self._stop.is_set():
            try:
                self.check_version()
            except grpc.RpcError:
                pass  # server not up (yet): the next poll tries again
            self._stop.wait(self.status_every_secs)

    def check_version(self):
        """Asks the server which version serves; on a new one, rebases on it."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        response = self._models.GetModelStatus(request, timeout=self.rpc_timeout)
        available = [s.version for s in response.model_version_status if s.state == _AVAILABLE]
        if not available or max(available) == self.served_version:
            return
        version = max(available)
        path = os.path.join(self.model_base_path, str(version))
        self._facts = read_metadata(path)
        self.served_version = version
        state = read_sync_state(path)
        self.rebase(state["offsets"] if state else self.log.end_offsets(self.topic))

    def apply(self, push, record):
        if self.covered(record):
            return False
        facts = self._facts
        if isinstance(push, DensePush):
            expected = facts["dense"]
            if len(push.weights) != len(expected) or any(
                    list(w.shape) != spec["shape"] for w, spec in zip(push.weights, expected)):
                raise invalid(f"dense push does not match the served model's "
                              f"{len(expected)} weights")
            inputs = {"version": np.array(push.version, np.int64)}
            inputs.update({spec["input"]: np.asarray(w, spec["dtype"])
                           for spec, w in zip(expected, push.weights)})
            self._call("assign_dense", inputs)
            return True
        dims = {t["name"]: t["dim"] for t in facts["tables"]}
        if push.table not in dims:
            raise invalid(f"unknown table {push.table!r}; the served model has {sorted(dims)}")
        if push.values.shape[1] != dims[push.table]:
            raise invalid(f"{push.table}: rows of dim {push.values.shape[1]}, the served "
                          f"model's is {dims[push.table]}")
        table = np.array(push.table.encode(), dtype=object)
        if len(push.removed):
            self._call("remove", {"table": table, "ids": push.removed})
        if len(push.ids):
            self._call("upsert", {"table": table, "ids": push.ids, "values": push.values})
        return True

    def _call(self, signature, inputs):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = signature
        if self.served_version is not None:
            request.model_spec.version.value = self.served_version
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        delay = 0.05
        while True:
            try:
                return self._predict.Predict(request, timeout=self.rpc_timeout)
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise ServingError(error.code(), error.details()) from None
                if error.code() not in _RETRIED or self._stop.is_set():
                    raise ServingError(error.code(), error.details()) from None
            time.sleep(delay)   # down, busy, or the version changed: retry
            delay = min(2 * delay, 2.0)
            if self.served_version is not None:
                request.model_spec.version.value = self.served_version
