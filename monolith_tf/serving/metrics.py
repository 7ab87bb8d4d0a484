"""Server metrics in Prometheus' text format (``prometheus_client``), served
at TF Serving's path ``/monitoring/prometheus/metrics`` on the REST port.

Each server has its own registry, so several servers live in one process.
Names (all prefixed ``monolith_serving_``):

- ``requests_total{api, method, code}``: requests answered, by API (grpc,
  rest), method (predict, classify, regress, multi_inference, metadata,
  status, reload_config) and status code name;
- ``errors_total{api, method, code}``: the subset whose code is not OK;
- ``request_latency_seconds{api, method}``: histogram of handling time;
- ``rows_applied_total{table, kind}``: rows upserted or removed (kind);
- ``last_update_timestamp_seconds``: wall time of the newest applied update;
- ``last_update_data_time_seconds``: the newest data time an update carried;
- ``dense_swaps_total``, ``dense_version{model}``, ``model_version{model}``;
- ``batched_requests``: histogram of requests per model call (batching on);
- sync (``serve --sync``): ``sync_records_total{kind}``,
  ``sync_rejected_total{reason}``, ``sync_lag_seconds`` (wall time from a
  push's publication to its application, newest record) and
  ``sync_offset`` (stream offset of the newest applied record); the data
  time of the newest applied push is ``last_update_data_time_seconds``.
"""

import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

METRICS_PATH = "/monitoring/prometheus/metrics"
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
                    5.0)


class ServingMetrics:
    """The metrics of one server (module doc)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()
        self._newest_data_time = None
        prefix = "monolith_serving_"
        self._requests = Counter(prefix + "requests", "Requests answered",
                                 ["api", "method", "code"], registry=self.registry)
        self._errors = Counter(prefix + "errors", "Requests answered with an error",
                               ["api", "method", "code"], registry=self.registry)
        self._latency = Histogram(prefix + "request_latency_seconds",
                                  "Time to handle a request", ["api", "method"],
                                  buckets=_LATENCY_BUCKETS, registry=self.registry)
        self._rows = Counter(prefix + "rows_applied", "Rows upserted or removed",
                             ["table", "kind"], registry=self.registry)
        self._last_update = Gauge(prefix + "last_update_timestamp_seconds",
                                  "Wall time of the newest applied update",
                                  registry=self.registry)
        self._last_data_time = Gauge(prefix + "last_update_data_time_seconds",
                                     "Newest data time carried by an applied update",
                                     registry=self.registry)
        self._swaps = Counter(prefix + "dense_swaps", "Dense weight swaps applied",
                              registry=self.registry)
        self._dense_version = Gauge(prefix + "dense_version", "Dense version served",
                                    ["model"], registry=self.registry)
        self._batched = Histogram(prefix + "batched_requests",
                                  "Requests served per model call (batching)",
                                  buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self._sync_records = Counter(prefix + "sync_records", "Sync records applied",
                                     ["kind"], registry=self.registry)
        self._sync_rejected = Counter(prefix + "sync_rejected", "Sync records refused",
                                      ["reason"], registry=self.registry)
        self._sync_lag = Gauge(prefix + "sync_lag_seconds",
                               "Wall seconds from publication to application, newest record",
                               registry=self.registry)
        self._sync_offset = Gauge(prefix + "sync_offset", "Offset of the newest applied record",
                                  registry=self.registry)
        self._model_version = Gauge(prefix + "model_version", "Model version served",
                                    ["model"], registry=self.registry)

    def sync_applied(self, kind, lag_seconds, offset):
        """Records a sync record applied (kind RowsPush or DensePush)."""
        self._sync_records.labels(kind).inc()
        self._sync_lag.set(lag_seconds)
        self._sync_offset.set(offset)

    def sync_rejected(self, reason):
        """Counts a sync record refused (sent to the dead-letter topic)."""
        self._sync_rejected.labels(reason).inc()

    def batched_call(self, requests, rows):
        """Records one model call of the batcher that served ``requests``."""
        self._batched.observe(requests)

    def request(self, api, method, code_name, seconds):
        """Counts one answered request and its handling time."""
        self._requests.labels(api, method, code_name).inc()
        if code_name != "OK":
            self._errors.labels(api, method, code_name).inc()
        self._latency.labels(api, method).observe(seconds)

    def rows_applied(self, table, kind, rows, data_time=None):
        """Counts ``rows`` applied to ``table`` (kind upsert or remove)."""
        self._rows.labels(table, kind).inc(rows)
        self._updated(data_time)

    def dense_swapped(self, model, version):
        """Counts a dense swap to ``version``."""
        self._swaps.inc()
        self._dense_version.labels(model).set(version)
        self._updated(None)

    def version_loaded(self, model, version, dense_version):
        """Records the model version (and its dense version) now served."""
        self._model_version.labels(model).set(version)
        if dense_version is not None:
            self._dense_version.labels(model).set(dense_version)

    def _updated(self, data_time):
        self._last_update.set(time.time())
        if data_time is None:
            return
        with self._lock:
            if self._newest_data_time is None or data_time > self._newest_data_time:
                self._newest_data_time = float(data_time)
                self._last_data_time.set(data_time)

    def exposition(self):
        """The metrics in Prometheus' text format (bytes)."""
        return generate_latest(self.registry)
