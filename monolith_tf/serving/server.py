"""``ModelServer``: one model served over TF Serving's gRPC and REST APIs,
taking fresh rows and dense weights while it serves.

    server = ModelServer("/models/ctr", model_name="ctr", port=8500, rest_api_port=8501)
    server.start()
    server.apply_rows("embeddings/user", ids, rows)      # sparse rows, in place
    server.swap_dense(weights, version=7)                 # all dense weights at once
    server.stop()

Serving follows ``ModelManager`` (newest version under the base path, new
versions swapped in without a failed request) and each version is a
``Servable`` (updates atomic for requests). Both listen on 127.0.0.1 unless
``host`` says otherwise; port 0 picks a free port (``grpc_port`` and
``rest_port`` tell which). ``stop(grace)`` stops accepting, lets running
requests finish for up to ``grace`` seconds, then closes.
"""

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
from aiohttp import web

from monolith_tf.config import ServerConfig, with_options
from monolith_tf.serving.grpc_api import add_services
from monolith_tf.serving.metrics import ServingMetrics
from monolith_tf.serving.model_manager import ModelManager
from monolith_tf.serving.rest_api import RestApi
from monolith_tf.serving.servable import BatchingOptions

class ModelServer:
    """Serves the model base path ``model_base_path`` (TF Serving's
    ``BASE/<version>/``) with the settings of ``config``
    (``monolith_tf.config.ServerConfig``: model name, host, ports, polling,
    request limits, threads, batching), any of which may also be given as
    a keyword option (``ModelServer(base, port=0, rest_api_port=None)``).
    """

    def __init__(self, model_base_path, config=None, **options):
        config = with_options(config, ServerConfig, options)
        self.config = config
        self.host = config.host
        self.shutdown_grace_seconds = config.shutdown_grace_seconds
        self.metrics = ServingMetrics()
        batching = BatchingOptions(config.batch_timeout_micros / 1e6,
                                   config.num_batch_threads or os.cpu_count() or 1) \
            if config.enable_batching else None
        self.manager = ModelManager(config.model_name, model_base_path, self.metrics,
                                    poll_seconds=config.poll_seconds,
                                    max_batch_size=config.max_batch_size, batching=batching)
        self._requested_ports = (config.port, config.rest_api_port)
        self._max_request_bytes = config.max_request_bytes
        self._grpc_threads = config.grpc_max_threads
        self._rest_threads = config.rest_api_num_threads
        self.grpc_port = self.rest_port = None
        self._grpc = None
        self._rest = None
        self._loop = None
        self._loop_thread = None
        self._runner = None

    @property
    def model_name(self):
        return self.manager.name

    def start(self):
        """Loads the newest version (if one exists yet), then listens. Returns
        self. Raises OSError if a port cannot be bound."""
        self.manager.start()
        options = [("grpc.max_receive_message_length", self._max_request_bytes),
                   ("grpc.max_send_message_length", -1),
                   ("grpc.so_reuseport", 0)]
        self._grpc = grpc.server(ThreadPoolExecutor(self._grpc_threads,
                                                    thread_name_prefix="grpc"),
                                 options=options)
        add_services(self._grpc, self.manager, self.metrics)
        grpc_port, rest_port = self._requested_ports
        self.grpc_port = self._grpc.add_insecure_port(f"{self.host}:{grpc_port}")
        if not self.grpc_port:
            raise OSError(f"cannot bind gRPC to {self.host}:{grpc_port}")
        self._grpc.start()
        if rest_port is not None:
            self._rest = RestApi(self.manager, self.metrics, self._max_request_bytes,
                                 self._rest_threads)
            self._loop = asyncio.new_event_loop()
            self._loop_thread = threading.Thread(target=self._loop.run_forever,
                                                 name="rest-loop", daemon=True)
            self._loop_thread.start()
            self.rest_port = asyncio.run_coroutine_threadsafe(
                self._start_rest(rest_port), self._loop).result()
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
        self.manager.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    # ------------------------------------------------- updates while serving

    def apply_rows(self, table, ids, values, data_time=None):
        """Inserts or overwrites rows of ``table`` in the serving version
        (see ``Servable.apply_rows``). Returns the row count."""
        with self.manager.updating() as servable:
            return servable.apply_rows(table, ids, values, data_time)

    def remove_rows(self, table, ids, data_time=None):
        """Removes rows of ``table`` from the serving version."""
        with self.manager.updating() as servable:
            return servable.remove_rows(table, ids, data_time)

    def swap_dense(self, weights, version, timeout=30.0):
        """Replaces the serving version's dense weights, atomically for
        requests (see ``Servable.swap_dense``)."""
        with self.manager.updating() as servable:
            return servable.swap_dense(weights, version, timeout)

    @property
    def version(self):
        """The model version serving now (None before the first load)."""
        return self.manager.serving_version
