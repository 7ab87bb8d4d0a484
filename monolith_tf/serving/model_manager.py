"""Which version of a model serves: the newest under a TF Serving model base
path, swapped in while serving.

``ModelManager`` polls ``base_path`` every ``poll_seconds`` (wall time) for
version directories (``BASE/<int>/saved_model.pb``). A newer one is loaded
and warmed up beside the serving one, then requests switch to it, then the
old one is let go (it unloads once its in-flight requests finish): TF
Serving's availability-preserving policy, so a new version costs no failed
request. A version that fails to load is reported in its status and not
retried; the serving version stays. States follow TF Serving's
``ModelVersionStatus`` (LOADING, AVAILABLE, UNLOADING, END).
"""

import contextlib
import logging
import threading

import grpc

from monolith_tf.config import ServerConfig
from monolith_tf.serving.errors import ServingError, invalid
from monolith_tf.export_format import list_versions
from monolith_tf.serving.servable import Servable

_log = logging.getLogger(__name__)


class VersionStatus:
    """State of one version: ``state`` (a ModelVersionStatus state name) and
    the error that ended it (``error_code`` a grpc.StatusCode, message)."""

    def __init__(self, version, state, error_code=grpc.StatusCode.OK, error_message=""):
        self.version, self.state = version, state
        self.error_code, self.error_message = error_code, error_message


class ModelManager:
    """Loads and serves the newest version of model ``name`` (module doc).

    Args:
      name: the model name requests use (``--model_name``).
      base_path: the model base path (``--model_base_path``).
      metrics: the server's ``ServingMetrics``.
      poll_seconds: wall seconds between scans of ``base_path``
        (``--file_system_poll_wait_seconds``).
      max_batch_size, batching: passed to each ``Servable``.
    """

    def __init__(self, name, base_path, metrics, poll_seconds=ServerConfig.poll_seconds,
                 max_batch_size=ServerConfig.max_batch_size,
                 batching=None):
        self.name, self.base_path = name, base_path
        self.metrics = metrics
        self.poll_seconds = poll_seconds
        self.max_batch_size = max_batch_size
        self.batching = batching
        self._current = None
        self._statuses = {}
        self._lock = threading.Lock()
        self._update_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._on_load = []

    def start(self):
        """Loads the newest version now (if any), then polls in a thread."""
        self.poll()
        self._thread = threading.Thread(target=self._poll_loop, name=f"poll-{self.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self):
        """Stops polling and the serving version's batch threads."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._current is not None:
            self._current.close()

    @property
    def serving_version(self):
        """The version serving now (None before the first load)."""
        current = self._current
        return current.version if current else None

    def add_load_listener(self, callback):
        """Calls ``callback(servable)`` after each version switch, with the
        update lock held: what the callback applies lands on the new version
        before any later update."""
        self._on_load.append(callback)

    def _poll_loop(self):
        while not self._stop.wait(self.poll_seconds):
            self.poll()

    def poll(self):
        """Loads and switches to the newest version if it is newer than the
        serving one. Returns the version serving afterwards (None: none)."""
        versions = list_versions(self.base_path)
        current = self._current
        if not versions or (current is not None and versions[-1] <= current.version):
            return current.version if current else None
        version = versions[-1]
        if version in self._statuses and self._statuses[version].state == "END":
            return current.version if current else None  # failed before: not retried
        self._set_status(VersionStatus(version, "LOADING"))
        try:
            servable = Servable(self.name, version, f"{self.base_path}/{version}", self.metrics,
                                max_batch_size=self.max_batch_size, batching=self.batching)
            servable.warm_up()
        except Exception as error:  # noqa: BLE001 - a bad version (OpError, ValueError,
            # OSError, ...) must not stop serving the current one; it is reported in its status
            return self._load_failed(version, error, current)
        with self._update_lock:
            self._current = servable
            for callback in self._on_load:
                callback(servable)
        self._set_status(VersionStatus(version, "AVAILABLE"))
        self.metrics.version_loaded(self.name, version, servable.dense_version)
        _log.info("model %s: version %d serving", self.name, version)
        if current is not None:
            self._set_status(VersionStatus(current.version, "UNLOADING"))
            # Requests still running hold their own reference; dropping ours unloads it after.
            current.close()
            self._set_status(VersionStatus(current.version, "END"))
        return version

    def _load_failed(self, version, error, current):
        _log.error("model %s: version %d failed to load: %s", self.name, version, error)
        self._set_status(VersionStatus(version, "END", grpc.StatusCode.UNKNOWN,
                                       f"{type(error).__name__}: {error}"))
        return current.version if current else None

    def _set_status(self, status):
        with self._lock:
            self._statuses[status.version] = status

    def _check_name(self, name):
        if name != self.name:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Latest({name})")

    def servable(self, name, version=None, label=None):
        """The Servable a request for ``name`` (and ``version``) goes to.
        NOT_FOUND for another model or a version not serving; labels are not
        configured here: INVALID_ARGUMENT, as TF Serving without labels."""
        if label:
            raise invalid(f"Unrecognized servable version label: {label}")
        self._check_name(name)
        current = self._current
        if current is None or (version is not None and version != current.version):
            request = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: {request}")
        return current

    def statuses(self, name, version=None, label=None):
        """``VersionStatus`` list for GetModelStatus (all versions seen, or
        one). NOT_FOUND as TF Serving for an unknown model or version."""
        if label:
            raise invalid(f"Unrecognized servable version label: {label}")
        if name != self.name:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Could not find any versions of model {name}")
        with self._lock:
            statuses = dict(self._statuses)
        if version is not None:
            if version not in statuses:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find version {version} of model {name}")
            return [statuses[version]]
        if not statuses:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Could not find any versions of model {name}")
        return [statuses[v] for v in sorted(statuses, reverse=True)]

    @contextlib.contextmanager
    def updating(self):
        """The serving Servable, held against a version switch while an update
        runs on it. FAILED_PRECONDITION if no version serves yet."""
        with self._update_lock:
            current = self._current
            if current is None:
                raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"model {self.name}: no version loaded yet")
            yield current
