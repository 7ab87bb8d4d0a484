"""Where a ``SyncFollower`` applies the sync stream: the ``SyncSink``
interface and its two implementations.

- ``ServableSink``: our ``ModelServer`` in the same process
  (``python -m monolith_tf serve --sync``, ``Replica``). Rows and dense
  weights are applied to the serving version in place; the version switch
  and each record's application hold the server's update lock, so no record
  lands on a version that already covers it.
- ``RemoteServingSink``: any server that speaks TF Serving's gRPC API, e.g.
  stock ``tensorflow_model_server`` serving ``export_saved_model`` exports
  (``python -m monolith_tf sync-agent``). Rows go through ``Predict`` on the
  export's ``remove`` and ``upsert`` signatures and dense pushes on
  ``assign_dense`` (how Monolith updates its TF Serving: a Predict call on an
  assign signature), pinned to the model version being served. It polls
  ``GetModelStatus`` every ``status_every_secs``; when a new version
  serves, it reads that version's sync state from the model base path (it
  needs to read the base path, as the server does) and rebases the
  follower. A server that is down or busy is retried, so no record is
  skipped; a push the server refuses (INVALID_ARGUMENT) is refused.

Neither imports the Keras layers or the checkpointers.
"""

import logging
import threading
import time
from typing import Protocol, runtime_checkable

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from monolith_tf.config import AgentConfig
from monolith_tf.export_format import read_metadata, read_sync_state, version_path
from monolith_tf.serving.errors import ServingError, invalid
from monolith_tf.sync.records import DensePush

_log = logging.getLogger(__name__)


@runtime_checkable
class SyncSink(Protocol):
    """What a ``SyncFollower`` applies records to."""

    def attach(self, follower):
        """Starts telling ``follower`` which base serves: calls
        ``follower.rebase(offsets)`` for the version serving now, if any, and
        at every later version switch."""

    def detach(self):
        """Stops watching versions and any retry in progress."""

    def apply(self, push, covered):
        """Applies ``push`` (a ``RowsPush`` or ``DensePush``) unless
        ``covered()`` (asked at the moment the sink is sure which version it
        writes to) says the serving base already holds it. Returns whether
        it applied the push; raises ServingError for a push it refuses
        (nothing of it applied)."""

    def applied(self, push, record):
        """Called after each applied record (metrics)."""

    def rejected(self, reason):
        """Called after each refused record (metrics)."""


class ServableSink:
    """Applies the sync stream to model ``model_name`` (default: the
    server's default model) of a ``ModelServer`` in place (module doc)."""

    def __init__(self, server, model_name=None):
        self.server = server
        self.manager = server.model(model_name)
        self._follower = None
        self.manager.add_load_listener(self._version_loaded)

    def attach(self, follower):
        self._follower = follower
        if self.manager.serving_version is not None:  # loaded before the follower started
            with self.manager.updating() as current:
                self._version_loaded(current)

    def detach(self):
        self._follower = None  # the server's listener stays; without one it does nothing

    def _version_loaded(self, servable):
        """Runs under the server's update lock at every version switch."""
        follower = self._follower
        if follower is None:
            return
        state = read_sync_state(servable.path)
        if state is None:
            _log.warning("version %s has no sync state: following the stream from its end",
                         servable.version)
            follower.rebase(follower.log.end_offsets(follower.topic))
        else:
            follower.rebase(state["offsets"])

    def apply(self, push, covered):
        with self.manager.updating() as servable:
            if covered():
                return False
            if isinstance(push, DensePush):
                servable.swap_dense(push.weights, push.version)
            else:
                servable.check_rows(push.table, push.ids, push.values)
                if len(push.removed):
                    servable.remove_rows(push.table, push.removed, push.data_time)
                if len(push.ids):
                    servable.apply_rows(push.table, push.ids, push.values, push.data_time)
            return True

    def applied(self, push, record):
        self.server.metrics.sync_applied(type(push).__name__, time.time() - push.wall_time,
                                         record.offset)

    def rejected(self, reason):
        self.server.metrics.sync_rejected(reason)


_AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.Value("AVAILABLE")
_RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED)


class RemoteServingSink:
    """Applies the sync stream to the model ``model_name`` served at
    ``target`` (``host:port`` of a TF Serving gRPC API), whose versions live
    under ``model_base_path`` (module doc). ``rpc_timeout``: seconds per
    call."""

    def __init__(self, target, model_name, model_base_path,
                 status_every_secs=AgentConfig.status_every_secs,
                 rpc_timeout=AgentConfig.rpc_timeout):
        self.model_name, self.model_base_path = model_name, model_base_path
        self.status_every_secs, self.rpc_timeout = status_every_secs, rpc_timeout
        self._channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self.served_version = None
        self._facts = None
        self._follower = None
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="sync-agent-status",
                                         daemon=True)

    def attach(self, follower):
        self._follower = follower
        self._watcher.start()

    def detach(self):
        self._stop.set()
        if self._watcher.is_alive():
            self._watcher.join()
        self._channel.close()

    def applied(self, push, record):
        pass

    def rejected(self, reason):
        pass

    def _watch(self):
        while not self._stop.is_set():
            try:
                self.check_version()
            except grpc.RpcError:
                pass  # server not up (yet): the next poll tries again
            self._stop.wait(self.status_every_secs)

    def check_version(self):
        """Asks the server which version serves; on a new one, rebases the
        follower on it."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        response = self._models.GetModelStatus(request, timeout=self.rpc_timeout)
        available = [s.version for s in response.model_version_status
                     if s.state == _AVAILABLE]
        if not available or max(available) == self.served_version:
            return
        version = max(available)
        path = version_path(self.model_base_path, version)
        self._facts = read_metadata(path)
        self.served_version = version
        state = read_sync_state(path)
        follower = self._follower
        follower.rebase(state["offsets"] if state else follower.log.end_offsets(follower.topic))

    def apply(self, push, covered):
        if covered():
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
