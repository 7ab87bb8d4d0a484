"""``serve --model_base_path BASE`` or ``serve --model_config_file F``: the
model server over TF Serving's gRPC and REST APIs, on 127.0.0.1 unless
--host, until SIGTERM/SIGINT; ``--sync LOG`` makes it a replica that applies
the sync stream to one model while serving.

Every ``tensorflow_model_server`` flag is accepted, in its syntax
(``--flag=value``, booleans also bare): those that mean something here are
implemented; the others print one line saying the flag is accepted and
ignored, and why (``IGNORED_FLAGS``).
"""

import argparse
import json
import sys

from monolith_tf.cli.common import config_flag, log_config, stop_on_signals
from monolith_tf.config import ServerConfig
from monolith_tf.quiet_start import import_tensorflow
from monolith_tf.topics import SYNC_DEAD_LETTER_TOPIC, SYNC_TOPIC

NAME, HELP = "serve", "TF Serving-compatible model server"

# tensorflow_model_server flags with no meaning here: flag -> why.
IGNORED_FLAGS = {
    "batching_parameters_file": "use --max_batch_size, --batch_timeout_micros and "
                                "--num_batch_threads",
    "enable_per_model_batching_parameters": "batching settings are server-wide",
    "num_load_threads": "versions load one at a time, off the request path",
    "num_unload_threads": "versions unload when their last request ends",
    "flush_filesystem_caches": "no filesystem caches are kept",
    "tensorflow_session_config_file": "TF2 functions run without a session config",
    "use_alts_credentials": "gRPC listens without credentials (loopback by default)",
    "ssl_config_file": "gRPC listens without TLS (loopback by default)",
    "platform_config_file": "only TensorFlow SavedModels are served",
    "per_process_gpu_memory_fraction": "TensorFlow's GPU memory growth applies",
    "monitoring_config_file": "Prometheus metrics are always at "
                              "/monitoring/prometheus/metrics on the REST port",
    "remove_unused_fields_from_bundle_metagraph": "no MetaGraph is kept beyond signatures",
    "prefer_tflite_model": "TF Lite models are not served",
    "num_tflite_pools": "TF Lite models are not served",
    "num_tflite_interpreters_per_pool": "TF Lite models are not served",
    "xla_cpu_compilation_enabled": "functions compile as their SavedModel says",
    "xla_gpu_compilation_enabled": "functions compile as their SavedModel says",
    "enable_profiler": "no profiler service",
    "thread_pool_factory_config_file": "use --grpc_max_threads and --rest_api_num_threads",
    "mixed_precision": "the SavedModel's dtypes are served as saved",
    "skip_initialize_tpu": "no TPU is used",
    "enable_grpc_healthcheck_service": "use GetModelStatus for health",
}


def tf_bool(text):
    """A boolean flag value as TensorFlow's flag parser reads it."""
    lowered = str(text).lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _bool_flag(parser, flag, default, help_text=None, dest=None):
    parser.add_argument(flag, nargs="?", const=True, type=tf_bool, default=default,
                        metavar="BOOL", dest=dest, help=help_text)


def add_arguments(parser):
    # Names as tensorflow_model_server's where they mean the same.
    parser.add_argument("--model_base_path",
                        help="directory of numbered version directories (BASE/<version>/); "
                             "required unless --model_config_file")
    config_flag(parser, "--model_name", ServerConfig, "model_name")
    config_flag(parser, "--model_config_file", ServerConfig, "model_config_file", metavar="FILE",
                help="TF Serving ModelServerConfig (text format): the models to serve")
    config_flag(parser, "--model_config_file_poll_wait_seconds", ServerConfig,
                "model_config_poll_seconds", type=float, metavar="SECONDS",
                help="wall seconds between rereads of --model_config_file (0: read once)")
    config_flag(parser, "--port", ServerConfig, "port", type=int,
                help="gRPC port (0: a free one)")
    config_flag(parser, "--grpc_socket_path", ServerConfig, "grpc_socket_path", metavar="PATH",
                help="also serve gRPC on this Unix socket")
    config_flag(parser, "--rest_api_port", ServerConfig, "rest_api_port", type=int,
                help="REST port (0: no REST API, as tensorflow_model_server)")
    config_flag(parser, "--rest_api_timeout_in_ms", ServerConfig, "rest_api_timeout_ms",
                type=int, metavar="MS", help="longest REST call (504 beyond; 0: no limit)")
    config_flag(parser, "--file_system_poll_wait_seconds", ServerConfig, "poll_seconds",
                type=float, help="wall seconds between scans for new versions (0: once)")
    _bool_flag(parser, "--enable_batching", ServerConfig.enable_batching,
               "merge concurrent prediction requests into one model call")
    config_flag(parser, "--grpc_max_threads", ServerConfig, "grpc_max_threads", type=int)
    config_flag(parser, "--grpc_channel_arguments", ServerConfig, "grpc_channel_arguments",
                metavar="ARGS", help="gRPC server arguments: name=value,name=value")
    config_flag(parser, "--rest_api_num_threads", ServerConfig, "rest_api_num_threads",
                type=int)
    _bool_flag(parser, "--enable_model_warmup", ServerConfig.enable_model_warmup,
               "replay assets.extra/tf_serving_warmup_requests before a version serves")
    config_flag(parser, "--num_request_iterations_for_warmup", ServerConfig,
                "warmup_iterations", type=int, metavar="N", help="runs of each warm-up record (0: once)")
    _bool_flag(parser, "--rest_api_enable_cors_support",
               ServerConfig.rest_api_enable_cors_support, "CORS headers on REST replies")
    _bool_flag(parser, "--allow_version_labels_for_unavailable_models",
               ServerConfig.allow_unavailable_labels,
               "version labels may name versions not serving")
    _bool_flag(parser, "--enable_signature_method_name_check", ServerConfig.check_method_names,
               "Classify/Regress refuse signatures whose method_name says otherwise")
    config_flag(parser, "--max_num_load_retries", ServerConfig, "max_num_load_retries",
                type=int, metavar="N",
                help="retries of a failing version load (TF Serving's default: 5)")
    parser.add_argument("--load_retry_interval_micros", type=int, metavar="MICROS",
                        default=int(ServerConfig.load_retry_interval_seconds * 1e6),
                        help="wait between load retries")
    config_flag(parser, "--saved_model_tags", ServerConfig, "saved_model_tags",
                metavar="TAGS", help="tags of the MetaGraph to load, comma-separated")
    _bool_flag(parser, "--enable_serialization_as_tensor_content",
               ServerConfig.tensor_content_outputs,
               "gRPC Predict outputs packed in tensor_content, not typed fields")
    for flag in ("tensorflow_session_parallelism", "tensorflow_intra_op_parallelism",
                 "tensorflow_inter_op_parallelism"):
        parser.add_argument(f"--{flag}", type=int, default=0, metavar="N",
                            help="TensorFlow threads (0: TensorFlow's choice)")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    for flag in IGNORED_FLAGS:
        parser.add_argument(f"--{flag}", nargs="?", const="true", help=argparse.SUPPRESS)
    parser.epilog = ("Also accepted, as tensorflow_model_server's, and ignored with a line "
                     "saying why: " + ", ".join(f"--{flag}" for flag in IGNORED_FLAGS) + ".")
    # Ours.
    config_flag(parser, "--host", ServerConfig, "host",
                help="address to bind (default 127.0.0.1: loopback only)")
    config_flag(parser, "--max_request_bytes", ServerConfig, "max_request_bytes", type=int,
                help="largest gRPC message or REST body (REST answers 413 beyond)")
    config_flag(parser, "--max_batch_size", ServerConfig, "max_batch_size", type=int,
                help="most examples in one prediction request (and, batching, in "
                     "one merged call)")
    config_flag(parser, "--batch_timeout_micros", ServerConfig, "batch_timeout_micros",
                type=int, help="batching: longest wait for requests to merge (0: merge what "
                               "is queued)")
    config_flag(parser, "--num_batch_threads", ServerConfig, "num_batch_threads", type=int,
                help="batching: merged calls at once (default: CPU count)")
    config_flag(parser, "--shutdown_grace_seconds", ServerConfig, "shutdown_grace_seconds",
                type=float, help="on SIGTERM, how long running requests may finish")
    parser.add_argument("--max_seconds", type=float, help="stop after this many seconds")
    parser.add_argument("--sync", metavar="LOG",
                        help="apply the sync stream of this log (a directory, or "
                             "kafka://HOST:PORT) to a served model while serving")
    parser.add_argument("--sync_model", metavar="NAME",
                        help="the model --sync updates (default: --model_name, or the "
                             "first model of --model_config_file)")
    parser.add_argument("--sync_topic", default=SYNC_TOPIC)
    parser.add_argument("--sync_dead_letter_topic", default=SYNC_DEAD_LETTER_TOPIC)


def server_config(args):
    """The ServerConfig of the parsed flags."""
    return ServerConfig(
        model_name=args.model_name, host=args.host, port=args.port,
        rest_api_port=args.rest_api_port if args.rest_api_port else None,
        poll_seconds=args.file_system_poll_wait_seconds,
        max_request_bytes=args.max_request_bytes, max_batch_size=args.max_batch_size,
        grpc_max_threads=args.grpc_max_threads, rest_api_num_threads=args.rest_api_num_threads,
        shutdown_grace_seconds=args.shutdown_grace_seconds,
        enable_batching=args.enable_batching, batch_timeout_micros=args.batch_timeout_micros,
        num_batch_threads=args.num_batch_threads,
        model_config_file=args.model_config_file,
        model_config_poll_seconds=args.model_config_file_poll_wait_seconds,
        grpc_socket_path=args.grpc_socket_path or None,
        grpc_channel_arguments=args.grpc_channel_arguments,
        rest_api_timeout_ms=args.rest_api_timeout_in_ms,
        enable_model_warmup=args.enable_model_warmup,
        warmup_iterations=args.num_request_iterations_for_warmup,
        tensor_content_outputs=args.enable_serialization_as_tensor_content,
        check_method_names=args.enable_signature_method_name_check,
        max_num_load_retries=args.max_num_load_retries,
        load_retry_interval_seconds=max(args.load_retry_interval_micros, 0) / 1e6,
        saved_model_tags=args.saved_model_tags,
        rest_api_enable_cors_support=args.rest_api_enable_cors_support,
        allow_unavailable_labels=args.allow_version_labels_for_unavailable_models)


def ignored_flags(args):
    """One line per given flag that is accepted and ignored."""
    return [f"--{flag} is accepted and ignored: {why}" for flag, why in IGNORED_FLAGS.items()
            if getattr(args, flag) is not None]


def _set_threads(args, tf):
    intra = args.tensorflow_intra_op_parallelism or args.tensorflow_session_parallelism
    inter = args.tensorflow_inter_op_parallelism or args.tensorflow_session_parallelism
    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)


def run(args):
    """Runs the model server (a replica following the sync stream with
    ``--sync``) until SIGTERM or SIGINT (or --max_seconds), then stops it
    gracefully. Prints a JSON line with the bound addresses once it
    listens."""
    if args.version:
        from monolith_tf import __version__
        tf = import_tensorflow()
        print(f"monolith_tf ModelServer: {__version__}\nTensorFlow Library: {tf.__version__}")
        return
    if not args.model_base_path and not args.model_config_file:
        raise ValueError("serve needs --model_base_path (with --model_name) or "
                         "--model_config_file")
    for line in ignored_flags(args):
        print(line, file=sys.stderr, flush=True)
    tf = import_tensorflow()
    _set_threads(args, tf)
    from monolith_tf.streaming import open_log
    from monolith_tf.sync.replica import Replica

    log = open_log(log_config(args.sync)) if args.sync else None
    replica = Replica(args.model_base_path, log, topic=args.sync_topic,
                      dead_letter_topic=args.sync_dead_letter_topic,
                      synced_model=args.sync_model, config=server_config(args))
    with stop_on_signals() as stop:
        replica.start()
        server = replica.server
        rest = f"http://{args.host}:{server.rest_port}" if server.rest_port else None
        print(json.dumps({"models": server.models.names(), "model_name": server.model_name,
                          "version": server.version, "grpc": f"{args.host}:{server.grpc_port}",
                          "rest": rest}), flush=True)
        stop.wait(args.max_seconds)
        replica.stop()
    print(json.dumps({"stopped": server.model_name}), flush=True)
