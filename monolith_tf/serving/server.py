"""``ModelServer``: models served over TF Serving's gRPC and REST APIs,
taking fresh rows and dense weights while they serve.

    server = ModelServer("/models/ctr", model_name="ctr", port=8500, rest_api_port=8501)
    server.start()
    server.apply_rows("embeddings/user", ids, rows)      # sparse rows, in place
    server.swap_dense(weights, version=7)                 # all dense weights at once
    server.stop()

One model (``model_name`` at the base path) or the models of a TF Serving
``--model_config_file`` (``model_config.py``), reloaded at runtime from the
file (every ``model_config_poll_seconds``) or by ``reload_config`` (what
``ModelService.HandleReloadConfigRequest`` calls). Each model follows a
``ModelManager`` (the versions its policy picks, new ones swapped in without
a failed request); each version is a ``Servable`` (updates atomic for
requests). Updates go to the newest version of a model (``model=`` names one
of several; by default the first). Both APIs listen on 127.0.0.1 unless
``host`` says otherwise; port 0 picks a free port (``grpc_port`` and
``rest_port`` tell which). ``stop()`` stops accepting, lets running requests
finish for up to ``shutdown_grace_seconds``, then closes.
"""

import asyncio
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
from aiohttp import web

from monolith_tf.config import ServerConfig, with_options
from monolith_tf.serving.grpc_api import add_services
from monolith_tf.serving.metrics import ServingMetrics
from monolith_tf.serving.model_config import (ModelConfigError, parse_model_config,
                                              read_model_config, single_model)
from monolith_tf.serving.model_manager import ModelManager, ModelRegistry
from monolith_tf.serving.rest_api import RestApi
from monolith_tf.serving.servable import BatchingOptions
from monolith_tf.serving.warmup import Warmup

_log = logging.getLogger(__name__)
CONFIG_SETTLE_SECONDS = 0.2   # a changed config file must read the same this much later


def parse_channel_arguments(text):
    """gRPC server arguments from TF Serving's ``--grpc_channel_arguments``
    ("name=value,name=value"): [(name, int or str)]. Raises ValueError for
    an entry without "="."""
    arguments = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise ValueError(f"--grpc_channel_arguments: {item!r} is not name=value")
        try:
            arguments.append((name, int(value)))
        except ValueError:
            arguments.append((name, value))
    return arguments


class ModelServer:
    """Serves the model base path ``model_base_path`` (TF Serving's
    ``BASE/<version>/``), or the models of ``config.model_config_file``,
    with the settings of ``config`` (``monolith_tf.config.ServerConfig``:
    model name, host, ports, polling, request limits, threads, batching,
    warm-up), any of which may also be given as a keyword option
    (``ModelServer(base, port=0, rest_api_port=None)``).
    """

    def __init__(self, model_base_path=None, config=None, **options):
        config = with_options(config, ServerConfig, options)
        self.config = config
        self.host = config.host
        self.shutdown_grace_seconds = config.shutdown_grace_seconds
        self.metrics = ServingMetrics()
        self._batching = BatchingOptions(config.batch_timeout_micros / 1e6,
                                         config.num_batch_threads or os.cpu_count() or 1) \
            if config.enable_batching else None
        self._warmup = Warmup(config.warmup_iterations, config.check_method_names) \
            if config.enable_model_warmup else None
        self.models = ModelRegistry(self._make_manager, config.allow_unavailable_labels)
        if config.model_config_file:
            entries = read_model_config(config.model_config_file)
            self._config_text = self._read_config_text()
        elif model_base_path:
            entries = single_model(config.model_name, model_base_path)
        else:
            raise ValueError("ModelServer needs a model base path or a model_config_file")
        self.models.apply(entries)
        self._default_model = entries[0].name if entries else None
        self._requested_ports = (config.port, config.rest_api_port)
        self._max_request_bytes = config.max_request_bytes
        self._grpc_threads = config.grpc_max_threads
        self._rest_threads = config.rest_api_num_threads
        self._channel_arguments = parse_channel_arguments(config.grpc_channel_arguments)
        self.grpc_port = self.rest_port = None
        self._grpc = None
        self._rest = None
        self._loop = None
        self._loop_thread = None
        self._runner = None
        self._config_stop = threading.Event()
        self._config_thread = None

    def _make_manager(self, entry):
        config = self.config
        return ModelManager(entry, self.metrics, poll_seconds=config.poll_seconds,
                            max_batch_size=config.max_batch_size,
                            batching=self._batching, warmup=self._warmup,
                            load_retries=config.max_num_load_retries,
                            retry_interval_seconds=config.load_retry_interval_seconds,
                            tags=[t.strip() for t in config.saved_model_tags.split(",")
                                  if t.strip()])

    @property
    def model_name(self):
        """The model updates go to by default (the only one, or the first of
        the config file)."""
        return self._default_model

    @property
    def manager(self):
        """The ``ModelManager`` of the default model."""
        return self.model()

    def model(self, name=None):
        """The ``ModelManager`` of model ``name`` (default: ``model_name``);
        ServingError NOT_FOUND for a model not served."""
        return self.models.manager(name or self._default_model)

    def servable(self, name=None, version=None, label=None):
        """The Servable a request for model ``name`` (default:
        ``model_name``), ``version`` or ``label`` (default: newest) reaches."""
        return self.models.servable(name or self._default_model, version, label)

    def reload_config(self, entries):
        """Serves exactly the models of ``entries`` (``ModelEntry`` list, a
        parsed ModelServerConfig) from now on (``ModelRegistry.apply``)."""
        self.models.apply(entries)
        if self._default_model not in self.models.names():
            names = [entry.name for entry in entries]
            self._default_model = names[0] if names else None

    def _read_config_text(self):
        with open(self.config.model_config_file, encoding="utf-8") as source:
            return source.read()

    def _poll_config(self):
        """Rereads the model config file every ``model_config_poll_seconds``.
        A changed text is applied once it reads the same twice,
        ``CONFIG_SETTLE_SECONDS`` apart (a file caught mid-write, even
        empty, is not applied); an invalid one is logged and left, and the
        models stay as they are."""
        while not self._config_stop.wait(self.config.model_config_poll_seconds):
            try:
                text = self._read_config_text()
                if text == self._config_text:
                    continue
                if self._config_stop.wait(CONFIG_SETTLE_SECONDS):
                    break
                if self._read_config_text() != text:
                    continue  # still being written: the next poll looks again
                self._config_text = text
                self.reload_config(parse_model_config(text))
                _log.info("model config reloaded: serving %s", self.models.names())
            except (OSError, ModelConfigError) as error:
                _log.error("model config %s not applied: %s", self.config.model_config_file,
                           error)

    def start(self):
        """Loads the versions to serve (if they exist yet), then listens.
        Returns self. Raises OSError if a port cannot be bound,
        ModelConfigError if a version label names a version that did not
        load."""
        try:
            self.models.start()
        except ModelConfigError:
            self.models.stop()
            raise
        options = dict([("grpc.max_receive_message_length", self._max_request_bytes),
                        ("grpc.max_send_message_length", -1),
                        ("grpc.so_reuseport", 0)] + self._channel_arguments)
        self._grpc = grpc.server(ThreadPoolExecutor(self._grpc_threads,
                                                    thread_name_prefix="grpc"),
                                 options=list(options.items()))
        add_services(self._grpc, self, self.metrics)
        grpc_port, rest_port = self._requested_ports
        self.grpc_port = self._grpc.add_insecure_port(f"{self.host}:{grpc_port}")
        if not self.grpc_port:
            raise OSError(f"cannot bind gRPC to {self.host}:{grpc_port}")
        if self.config.grpc_socket_path:
            if not self._grpc.add_insecure_port(f"unix:{self.config.grpc_socket_path}"):
                raise OSError(f"cannot bind gRPC to unix:{self.config.grpc_socket_path}")
        self._grpc.start()
        if rest_port is not None:
            self._rest = RestApi(self, self.metrics, self._max_request_bytes,
                                 self._rest_threads, self.config.rest_api_timeout_ms / 1e3,
                                 cors=self.config.rest_api_enable_cors_support,
                                 check_method_names=self.config.check_method_names)
            self._loop = asyncio.new_event_loop()
            self._loop_thread = threading.Thread(target=self._loop.run_forever,
                                                 name="rest-loop", daemon=True)
            self._loop_thread.start()
            self.rest_port = asyncio.run_coroutine_threadsafe(
                self._start_rest(rest_port), self._loop).result()
        if self.config.model_config_file and self.config.model_config_poll_seconds > 0:
            self._config_thread = threading.Thread(target=self._poll_config,
                                                   name="model-config", daemon=True)
            self._config_thread.start()
        return self

    async def _start_rest(self, port):
        self._runner = web.AppRunner(self._rest.application(), access_log=None,
                                     shutdown_timeout=self.shutdown_grace_seconds)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, port).start()
        return self._runner.addresses[0][1]

    def stop(self):
        """Stops accepting requests, lets running ones finish (up to
        ``shutdown_grace_seconds``), then releases the ports and threads."""
        grace = self.shutdown_grace_seconds
        self._config_stop.set()
        if self._config_thread is not None:
            self._config_thread.join()
        stopped = self._grpc.stop(grace) if self._grpc is not None else None
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result()
            self._rest.close()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join()
            self._loop.close()
            self._runner = None
        if stopped is not None:
            stopped.wait()
        self.models.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    # ------------------------------------------------- updates while serving

    def apply_rows(self, table, ids, values, data_time=None, model=None):
        """Inserts or overwrites rows of ``table`` in the newest version of
        ``model`` (see ``Servable.apply_rows``). Returns the row count."""
        with self.model(model).updating() as servable:
            return servable.apply_rows(table, ids, values, data_time)

    def remove_rows(self, table, ids, data_time=None, model=None):
        """Removes rows of ``table`` from the newest version of ``model``."""
        with self.model(model).updating() as servable:
            return servable.remove_rows(table, ids, data_time)

    def swap_dense(self, weights, version, timeout=30.0, model=None):
        """Replaces the dense weights of ``model``'s newest version,
        atomically for requests (see ``Servable.swap_dense``)."""
        with self.model(model).updating() as servable:
            return servable.swap_dense(weights, version, timeout)

    @property
    def version(self):
        """The newest version of the default model serving now (None before
        the first load)."""
        name = self._default_model
        if name is None or name not in self.models.names():
            return None
        return self.manager.serving_version
