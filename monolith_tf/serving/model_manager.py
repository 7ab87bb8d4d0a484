"""Which versions of one model serve: those its version policy picks
under a TF Serving model base path, loaded and unloaded while serving.

``ModelManager`` scans ``base_path`` every ``poll_seconds`` (wall time; 0:
once, at start) for version directories (``BASE/<int>/saved_model.pb``,
zero-padded names included). The version policy (``model_config``:
``latest`` N, ``all``, ``specific``) says which of them serve. A version to
serve is loaded and warmed up beside the serving ones (warm-up requests from
``assets.extra/tf_serving_warmup_requests`` when it has them, ``warmup.py``),
then requests can reach it; versions no longer wanted are let go only after
that (they unload once their in-flight requests finish): TF Serving's
availability-preserving policy, so a new version costs no failed request. A
version that fails to load is reported in its status and not retried; the
serving ones stay. States follow TF Serving's ``ModelVersionStatus``
(LOADING, AVAILABLE, UNLOADING, END).

Requests without a version go to the newest serving version; so do live
updates (rows, dense swaps, the sync stream). Version labels
(``/labels/stable``, ``version_label``) name serving versions.
"""

import contextlib
import logging
import threading

import grpc

from monolith_tf.config import ServerConfig
from monolith_tf.export_format import version_directories
from monolith_tf.serving.errors import ServingError, invalid
from monolith_tf.serving.model_config import ModelConfigError, ModelEntry
from monolith_tf.serving.servable import Servable

_log = logging.getLogger(__name__)


class VersionStatus:
    """State of one version: ``state`` (a ModelVersionStatus state name) and
    the error that ended it (``error_code`` a grpc.StatusCode, message)."""

    def __init__(self, version, state, error_code=grpc.StatusCode.OK, error_message=""):
        self.version, self.state = version, state
        self.error_code, self.error_message = error_code, error_message


class ModelManager:
    """Loads and serves the versions of one model (module doc).

    Args:
      entry: the model's ``ModelEntry`` (name, base path, version policy,
        labels), or its name with ``base_path`` given.
      metrics: the server's ``ServingMetrics``.
      poll_seconds: wall seconds between scans of the base path
        (``--file_system_poll_wait_seconds``; 0: scan once).
      max_batch_size, batching: passed to each ``Servable``.
      warmup: a ``warmup.Warmup`` run on each version before it serves
        (None: a one-example call only).
      load_retries, retry_interval_seconds: a failing load (warm-up
        included) is tried again this many times, this many wall seconds
        apart, before the version is given up (END).
      tags: the SavedModel tags to load.
    """

    def __init__(self, entry, metrics, poll_seconds=ServerConfig.poll_seconds,
                 max_batch_size=ServerConfig.max_batch_size, batching=None, warmup=None,
                 base_path=None, load_retries=ServerConfig.max_num_load_retries,
                 retry_interval_seconds=ServerConfig.load_retry_interval_seconds,
                 tags=("serve",)):
        if not isinstance(entry, ModelEntry):
            entry = ModelEntry(entry, base_path)
        self.name, self.base_path = entry.name, entry.base_path
        self.policy, self._labels = entry.policy, dict(entry.labels)
        self.metrics = metrics
        self.poll_seconds = poll_seconds
        self.max_batch_size = max_batch_size
        self.batching = batching
        self.warmup = warmup
        self.load_retries, self.retry_interval_seconds = load_retries, retry_interval_seconds
        self.tags = tuple(tags)
        self._serving = {}
        self._statuses = {}
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._update_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._on_load = []

    def start(self):
        """Loads the versions to serve now (if any), then polls in a thread
        (unless ``poll_seconds`` is 0)."""
        self.poll()
        if self.poll_seconds > 0:
            self._thread = threading.Thread(target=self._poll_loop, name=f"poll-{self.name}",
                                            daemon=True)
            self._thread.start()

    def stop(self):
        """Stops polling and unloads every serving version."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._poll_lock:
            with self._update_lock:
                serving, self._serving = self._serving, {}
            for version in sorted(serving):
                self._unload(serving[version])

    def reconfigure(self, entry):
        """Takes a new version policy and labels for this model (a config
        reload); the next poll, run now, applies them."""
        if entry.base_path != self.base_path:
            raise ValueError("a model's base path changes by replacing its manager")
        self.policy, self._labels = entry.policy, dict(entry.labels)
        self.poll()

    def set_labels(self, labels):
        """Replaces the version labels ({label: version})."""
        self._labels = dict(labels)

    @property
    def entry(self):
        """The ``ModelEntry`` this manager serves."""
        return ModelEntry(self.name, self.base_path, self.policy, dict(self._labels))

    @property
    def serving_version(self):
        """The newest version serving now (None before the first load)."""
        newest = self._newest()
        return newest.version if newest else None

    @property
    def serving_versions(self):
        """Every version serving now, ascending."""
        return sorted(self._serving)

    def add_load_listener(self, callback):
        """Calls ``callback(servable)`` whenever the newest serving version
        changes, with the update lock held: what the callback applies lands
        on the new version before any later update."""
        self._on_load.append(callback)

    def _newest(self):
        serving = self._serving
        return serving[max(serving)] if serving else None

    def _poll_loop(self):
        while not self._stop.wait(self.poll_seconds):
            self.poll()

    def poll(self):
        """Loads the versions the policy wants that are not serving yet, then
        unloads the serving ones it no longer wants. Returns the newest
        version serving afterwards (None: none)."""
        with self._poll_lock:
            if self._stop.is_set():
                return None
            directories = version_directories(self.base_path)
            wanted = self.policy.choose(sorted(directories))
            for version in wanted:
                if version in self._serving:
                    continue
                status = self._statuses.get(version)
                if status is not None and status.state == "END" and status.error_code != \
                        grpc.StatusCode.OK:
                    continue  # failed before: not retried
                self._load(version, f"{self.base_path}/{directories[version]}")
            if self._serving and any(v in self._serving for v in wanted):
                for version in sorted(set(self._serving) - set(wanted)):
                    with self._update_lock:
                        servable = self._serving.pop(version)
                        self._newest_changed(servable)
                    self._unload(servable)
            return self.serving_version

    def _load(self, version, path):
        self._set_status(VersionStatus(version, "LOADING"))
        for attempt in range(self.load_retries + 1):
            try:
                servable = self._load_once(version, path)
                break
            except Exception as error:  # noqa: BLE001 - a bad version (OpError, ValueError,
                # OSError, ServingError, ...) must not stop serving the others; its status
                # says why
                _log.error("model %s: version %d failed to load (attempt %d of %d): %s",
                           self.name, version, attempt + 1, self.load_retries + 1, error)
                if attempt == self.load_retries or self._stop.wait(self.retry_interval_seconds):
                    code = error.code if isinstance(error, ServingError) else \
                        grpc.StatusCode.UNKNOWN
                    self._set_status(VersionStatus(version, "END", code,
                                                   f"{type(error).__name__}: {error}"))
                    return
        with self._update_lock:
            previous = self._newest()
            self._serving[version] = servable
            if previous is None or version > previous.version:
                for callback in self._on_load:
                    callback(servable)
        self._set_status(VersionStatus(version, "AVAILABLE"))
        self.metrics.version_loaded(self.name, version, servable.dense_version)
        _log.info("model %s: version %d serving", self.name, version)

    def _load_once(self, version, path):
        servable = Servable(self.name, version, path, self.metrics,
                            max_batch_size=self.max_batch_size, batching=self.batching,
                            tags=self.tags)
        try:
            if self.warmup is not None and self.warmup.has_requests(path):
                self.warmup.replay(servable)
            else:
                servable.warm_up()
        except BaseException:
            servable.close()
            raise
        return servable

    def _newest_changed(self, removed):
        """Under the update lock, after ``removed`` left: tells the listeners
        if the newest version is now an older one."""
        newest = self._newest()
        if newest is not None and removed.version > newest.version:
            for callback in self._on_load:
                callback(newest)

    def _unload(self, servable):
        self._set_status(VersionStatus(servable.version, "UNLOADING"))
        # Requests still running hold their own reference; dropping ours unloads it after.
        servable.close()
        self._set_status(VersionStatus(servable.version, "END"))

    def _set_status(self, status):
        with self._lock:
            self._statuses[status.version] = status

    def _version_of_label(self, label):
        if label not in self._labels:
            raise invalid(f"Unrecognized servable version label: {label}")
        return self._labels[label]

    def servable(self, version=None, label=None):
        """The Servable a request goes to: ``version``, the version labelled
        ``label``, or the newest. NOT_FOUND for a version not serving;
        INVALID_ARGUMENT for a label not configured (TF Serving's codes)."""
        if label:
            version = self._version_of_label(label)
        if version is None:
            servable = self._newest()
            request = f"Latest({self.name})"
        else:
            servable = self._serving.get(version)
            request = f"Specific({self.name}, {version})"
        if servable is None:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: {request}")
        return servable

    def statuses(self, version=None, label=None):
        """``VersionStatus`` list for GetModelStatus (all versions seen, or
        one). NOT_FOUND as TF Serving for a version never seen."""
        if label:
            version = self._version_of_label(label)
        with self._lock:
            statuses = dict(self._statuses)
        if version is not None:
            if version not in statuses:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find version {version} of model {self.name}")
            return [statuses[version]]
        if not statuses:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Could not find any versions of model {self.name}")
        return [statuses[v] for v in sorted(statuses, reverse=True)]

    @contextlib.contextmanager
    def updating(self):
        """The newest serving Servable, held against a version switch while
        an update runs on it. FAILED_PRECONDITION if no version serves yet."""
        with self._update_lock:
            current = self._newest()
            if current is None:
                raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"model {self.name}: no version loaded yet")
            yield current


class ModelRegistry:
    """The models of one server, by name: one ``ModelManager`` each, made
    by ``make_manager(entry)``; ``apply(entries)`` (a config reload) adds,
    reconfigures and removes models while serving. A version label must
    name a serving version (else the config is refused and the labels stay
    as they were), unless ``labels_may_name_unavailable`` (TF Serving's
    ``--allow_version_labels_for_unavailable_models``)."""

    def __init__(self, make_manager, labels_may_name_unavailable=False):
        self._make_manager = make_manager
        self.labels_may_name_unavailable = labels_may_name_unavailable
        self._managers = {}
        self._config_lock = threading.Lock()
        self._started = False

    def __iter__(self):
        return iter(list(self._managers.values()))

    def names(self):
        """The served model names."""
        return sorted(self._managers)

    def manager(self, name):
        """The ``ModelManager`` of model ``name``; NOT_FOUND as TF Serving
        for a model not served."""
        manager = self._managers.get(name)
        if manager is None:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Latest({name})")
        return manager

    def servable(self, name, version=None, label=None):
        """The Servable a request for ``name`` (``version`` or ``label``)
        goes to (``ModelManager.servable``)."""
        return self.manager(name).servable(version, label)

    def statuses(self, name, version=None, label=None):
        """GetModelStatus's ``VersionStatus`` list of model ``name``."""
        manager = self._managers.get(name)
        if manager is None:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Could not find any versions of model {name}")
        return manager.statuses(version, label)

    def apply(self, entries):
        """Serves exactly the models of ``entries`` (``ModelEntry`` list):
        new ones are loaded (before this returns), changed policies and
        labels applied, models no longer listed unloaded after the others
        are in place. A model whose base path changed is replaced."""
        with self._config_lock:
            wanted = {entry.name: entry for entry in entries}
            previous_labels = {name: manager.entry.labels
                               for name, manager in self._managers.items()}
            for name, entry in wanted.items():
                current = self._managers.get(name)
                if current is not None and current.base_path == entry.base_path:
                    if current.entry != entry:
                        current.reconfigure(entry)
                    continue
                manager = self._make_manager(entry)
                if self._started:
                    manager.start()
                self._managers[name] = manager
                if current is not None:
                    current.stop()
            for name in sorted(set(self._managers) - set(wanted)):
                self._managers.pop(name).stop()
            if self._started:
                try:
                    self._check_labels()
                except ModelConfigError:
                    for name, labels in previous_labels.items():
                        if name in self._managers:
                            self._managers[name].set_labels(labels)
                    raise

    def start(self):
        """Starts every manager (loads, then polls). ModelConfigError if a
        label names a version that did not load."""
        with self._config_lock:
            self._started = True
            for manager in self._managers.values():
                manager.start()
            self._check_labels()

    def _check_labels(self):
        if self.labels_may_name_unavailable:
            return
        for manager in self._managers.values():
            for label, version in sorted(manager.entry.labels.items()):
                if version not in manager.serving_versions:
                    raise ModelConfigError(
                        f"Request to assign label to version {version} of model "
                        f"{manager.name}, which is not currently available for inference "
                        f"(label {label!r}; --allow_version_labels_for_unavailable_models "
                        "allows it)", grpc.StatusCode.FAILED_PRECONDITION)

    def stop(self):
        """Stops every manager."""
        with self._config_lock:
            for manager in self._managers.values():
                manager.stop()
