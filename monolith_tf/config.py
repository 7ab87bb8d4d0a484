"""Typed settings of the training worker, its checkpoints, parameter sync
and the model server, each default declared once.

The library's classes take these (``TrainingWorker``, ``SyncPublisher``,
``ModelServer``; the joiner's is ``monolith_tf.streaming.joiner.
JoinerConfig``, topic names are ``monolith_tf.topics``) and the command line
builds its flags' defaults from them (``monolith_tf.cli``), so a default
changed here changes everywhere. Each class also accepts its fields as
keyword options through ``with_options``. Pure Python: the server and the
CLI import it without TensorFlow.

Intervals name their clock (``ONLINE_LOOP``): ``..._every_steps`` global
steps, ``..._every_secs`` wall seconds, ``..._every_data_secs`` seconds of
data time; None turns that clock off.
"""

import dataclasses
from typing import Optional

from monolith_tf.topics import SYNC_TOPIC

RESUME_POLICIES = ("consistent", "latest", None)


def _require_count(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When the worker saves and what it resumes from
    (``monolith_tf.checkpoint_policy``).

    sparse_every_steps / sparse_every_secs: sparse save schedule (a delta
    unless a full one is due). dense_every_steps / dense_every_secs: dense
    save schedule (each also writes a sparse save). full_every: a sparse
    chain holds at most this many checkpoints (a full snapshot, then
    deltas). keep_full: full sparse chains kept; keep_dense: dense
    checkpoints kept. resume: ``"consistent"``, ``"latest"`` or None.
    max_save_failures: scheduled saves that may fail in a row (a full disk)
    before training stops.
    """

    sparse_every_steps: Optional[int] = None
    sparse_every_secs: Optional[float] = 60.0
    dense_every_steps: Optional[int] = None
    dense_every_secs: Optional[float] = 600.0
    full_every: int = 10
    keep_full: int = 2
    keep_dense: int = 3
    resume: Optional[str] = "consistent"
    max_save_failures: int = 3

    def __post_init__(self):
        if self.resume not in RESUME_POLICIES:
            raise ValueError(f"resume must be 'consistent', 'latest' or None, "
                             f"got {self.resume!r}")
        if self.full_every < 1:
            raise ValueError(f"full_every must be >= 1, got {self.full_every!r}")
        _require_count("max_save_failures", self.max_save_failures)


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    """How the training worker runs and reports (``monolith_tf.training``).

    log_every_steps: progress, metrics and TensorBoard interval.
    timestamp_feature: the data-time feature (seconds) of dict features, or
    None. tensorboard: write TensorBoard scalars. verbose: 0 silent, 1 a
    progress bar, 2 a line per log interval. steps_in_flight: with a
    cluster strategy, steps issued before waiting for the oldest.
    """

    log_every_steps: int = 100
    timestamp_feature: Optional[str] = "timestamp"
    tensorboard: bool = True
    verbose: int = 1
    steps_in_flight: int = 1

    def __post_init__(self):
        _require_count("steps_in_flight", self.steps_in_flight)


@dataclasses.dataclass(frozen=True)
class SyncConfig:
    """The sync publisher's schedules and records (``monolith_tf.sync.publisher``).

    topic: the sync topic. sparse_every_secs / sparse_every_data_secs:
    between row pushes. dense_every_secs / dense_every_data_secs: between
    dense pushes (both None: never). base_every_secs: between base versions
    (None: at every dense push). row_dtype: ``float32`` or ``float16`` rows
    on the wire. max_record_bytes: row pushes are split into records of
    about this size. keep_bases: base versions kept.
    """

    topic: str = SYNC_TOPIC
    sparse_every_secs: Optional[float] = 5.0
    dense_every_secs: Optional[float] = 1800.0
    sparse_every_data_secs: Optional[float] = None
    dense_every_data_secs: Optional[float] = None
    base_every_secs: Optional[float] = None
    row_dtype: str = "float32"
    max_record_bytes: int = 1 << 20
    keep_bases: int = 3

    def __post_init__(self):
        if self.keep_bases < 1:
            raise ValueError(f"keep_bases must be >= 1, got {self.keep_bases!r}")


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """The model server's settings (``monolith_tf.serving.server``); flag
    names are ``tensorflow_model_server``'s where they mean the same.

    model_name: the name requests use. host: the address both APIs bind
    (loopback by default). port: gRPC port (0: a free one). rest_api_port:
    REST port (0: a free one, None: no REST API). poll_seconds: wall seconds
    between scans for new versions. max_request_bytes: largest gRPC message
    or REST body. max_batch_size: most examples in one prediction request
    (and, batching, in one merged call). grpc_max_threads,
    rest_api_num_threads: request threads. shutdown_grace_seconds: how long
    a stop lets running requests finish. enable_batching: merge concurrent
    prediction requests (waiting at most batch_timeout_micros, with
    num_batch_threads merged calls at once; None: the CPU count).
    model_config_file: a TF Serving ModelServerConfig (text format) naming
    the models to serve (then model_name and the base path are not used),
    reread every model_config_poll_seconds (0: read once). grpc_socket_path:
    also serve gRPC on this Unix socket. grpc_channel_arguments: gRPC server
    arguments, "name=value,..." as TF Serving's flag. rest_api_timeout_ms:
    longest REST call (DEADLINE_EXCEEDED beyond; 0: none).
    enable_model_warmup, warmup_iterations: replay a version's
    assets.extra/tf_serving_warmup_requests before it serves, each record
    that many times (0: once). tensor_content_outputs: gRPC Predict outputs
    as packed tensor_content instead of TF Serving's typed fields.
    check_method_names: Classify/Regress/MultiInference refuse signatures
    whose method_name says otherwise. max_num_load_retries: loads of a
    failing version retried this many times, load_retry_interval_seconds
    apart (wall time). saved_model_tags: comma-separated tags of the
    MetaGraph to load. rest_api_enable_cors_support: CORS headers on REST
    replies. allow_unavailable_labels: version labels may name versions not
    serving (else such a config is refused).
    """

    model_name: str = "default"
    host: str = "127.0.0.1"
    port: int = 8500
    rest_api_port: Optional[int] = 8501
    poll_seconds: float = 1.0
    max_request_bytes: int = 64 << 20
    max_batch_size: int = 8192
    grpc_max_threads: int = 16
    rest_api_num_threads: int = 16
    shutdown_grace_seconds: float = 10.0
    enable_batching: bool = False
    batch_timeout_micros: int = 0
    num_batch_threads: Optional[int] = None
    model_config_file: Optional[str] = None
    model_config_poll_seconds: float = 0.0
    grpc_socket_path: Optional[str] = None
    grpc_channel_arguments: str = ""
    rest_api_timeout_ms: int = 30000
    enable_model_warmup: bool = True
    warmup_iterations: int = 0
    tensor_content_outputs: bool = False
    check_method_names: bool = False
    max_num_load_retries: int = 0
    load_retry_interval_seconds: float = 60.0
    saved_model_tags: str = "serve"
    rest_api_enable_cors_support: bool = False
    allow_unavailable_labels: bool = False


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """The sync agent's calls to a TF Serving (``monolith_tf.sync.sinks.
    RemoteServingSink``): status_every_secs, wall seconds between
    ``GetModelStatus`` polls; rpc_timeout, seconds per call."""

    status_every_secs: float = 1.0
    rpc_timeout: float = 30.0


def field_names(config_class):
    """The field names of a config dataclass."""
    return {field.name for field in dataclasses.fields(config_class)}


def default(config_class, name):
    """The declared default of field ``name`` of ``config_class``."""
    for field in dataclasses.fields(config_class):
        if field.name == name:
            return field.default
    raise KeyError(f"{config_class.__name__} has no field {name!r}")


def with_options(config, config_class, options):
    """``config`` (or the defaults of ``config_class``) with ``options``
    ({field: value}) replaced; raises TypeError naming an unknown one."""
    unknown = set(options) - field_names(config_class)
    if unknown:
        raise TypeError(f"{config_class.__name__} has no option(s) {sorted(unknown)}")
    return dataclasses.replace(config if config is not None else config_class(), **options)
