"""``serve --model_base_path BASE``: the model server over TF Serving's
gRPC and REST APIs (flags as tensorflow_model_server's), on 127.0.0.1
unless --host, until SIGTERM/SIGINT; ``--sync LOG`` makes it a replica that
applies the sync stream while serving."""

import json

from monolith_tf.cli.common import config_flag, log_config, stop_on_signals
from monolith_tf.config import ServerConfig
from monolith_tf.quiet_start import import_tensorflow
from monolith_tf.topics import SYNC_DEAD_LETTER_TOPIC, SYNC_TOPIC

NAME, HELP = "serve", "TF Serving-compatible model server"


def add_arguments(parser):
    # Names as tensorflow_model_server's where they mean the same.
    parser.add_argument("--model_base_path", required=True,
                        help="directory of numbered version directories (BASE/<version>/)")
    config_flag(parser, "--model_name", ServerConfig, "model_name")
    config_flag(parser, "--port", ServerConfig, "port", type=int,
                help="gRPC port (0: a free one)")
    config_flag(parser, "--rest_api_port", ServerConfig, "rest_api_port", type=int,
                help="REST port (0: no REST API, as tensorflow_model_server)")
    config_flag(parser, "--file_system_poll_wait_seconds", ServerConfig, "poll_seconds",
                type=float, help="wall seconds between scans for new versions")
    parser.add_argument("--enable_batching", action="store_true",
                        help="merge concurrent prediction requests into one model call")
    config_flag(parser, "--grpc_max_threads", ServerConfig, "grpc_max_threads", type=int)
    config_flag(parser, "--rest_api_num_threads", ServerConfig, "rest_api_num_threads",
                type=int)
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
                             "kafka://HOST:PORT) to the served model while serving")
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
        num_batch_threads=args.num_batch_threads)


def run(args):
    """Runs the model server (a replica following the sync stream with
    ``--sync``) until SIGTERM or SIGINT (or --max_seconds), then stops it
    gracefully. Prints a JSON line with the bound addresses once it
    listens."""
    import_tensorflow()
    from monolith_tf.streaming import open_log
    from monolith_tf.sync.replica import Replica

    log = open_log(log_config(args.sync)) if args.sync else None
    replica = Replica(args.model_base_path, log, topic=args.sync_topic,
                      dead_letter_topic=args.sync_dead_letter_topic, config=server_config(args))
    with stop_on_signals() as stop:
        replica.start()
        server = replica.server
        rest = f"http://{args.host}:{server.rest_port}" if server.rest_port else None
        print(json.dumps({"model_name": args.model_name, "version": server.version,
                          "grpc": f"{args.host}:{server.grpc_port}", "rest": rest}), flush=True)
        stop.wait(args.max_seconds)
        replica.stop()
    print(json.dumps({"stopped": args.model_name}), flush=True)
