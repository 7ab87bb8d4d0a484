"""Command line: ``python -m monolith_tf <command>``.

  inspect DIR             sparse checkpoints in DIR (or in DIR/sparse, a
                          worker's model dir): kind, step, tables, rows,
                          bytes, data-time range (reads manifests only)
  export MODEL OUT        a saved Keras model (.keras, or a tf_keras SavedModel
                          directory) with HashEmbedding layers -> a stock-ops
                          serving SavedModel at OUT
  train --job JOB.py --data FILE... --model-dir DIR
                          trains the job's model on files with the training
                          worker (checkpoints, resume, TensorBoard); JOB.py
                          defines build_model(**options) and
                          make_dataset(files, batch_size)
  join (--log DIR | --kafka SERVERS) --state-dir DIR --actions click,like
                          the online joiner: feature + action topics ->
                          labelled examples (until SIGTERM, --max-seconds or
                          --idle-timeout)
  replay --data FILE (--log DIR | --kafka SERVERS)
                          MovieLens ratings as impressions and actions, in
                          timestamp order, at --speedup
  serve --model_base_path BASE [--model_name NAME] [--port 8500]
        [--rest_api_port 8501]
                          serves BASE/<newest version> over TF Serving's gRPC
                          and REST APIs (flags as tensorflow_model_server's),
                          on 127.0.0.1 unless --host; until SIGTERM/SIGINT;
                          --sync LOG applies the sync stream while serving
  sync-agent --sync LOG --model_base_path BASE --server HOST:PORT
                          applies the sync stream to any server speaking TF
                          Serving's gRPC API (stock TF Serving with our export)
"""

import argparse
import contextlib
import importlib.util
import json
import os
import sys


def inspect(directory, as_json=False):
    """Prints (or returns, for as_json) a summary of the sparse checkpoints."""
    from monolith_tf.sparse_checkpoint import CheckpointError, list_checkpoints, read_manifest

    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    if os.path.isdir(os.path.join(directory, "sparse")):
        directory = os.path.join(directory, "sparse")  # a training worker's model dir
    summary = []
    for sequence, kind, path in list_checkpoints(directory):
        manifest = read_manifest(path)
        tables = {}
        for name, entry in manifest["tables"].items():
            rows = sum(info["rows"] for info in entry["files"])
            nbytes = sum(info["bytes"] for info in entry["files"])
            oldest = [f["oldest_update"] for f in entry["files"] if f["oldest_update"] is not None]
            newest = [f["newest_update"] for f in entry["files"] if f["newest_update"] is not None]
            oldest = min(oldest) if oldest else None
            newest = max(newest) if newest else None
            tables[name] = {"dim": entry["dim"], "rows": rows, "bytes": nbytes,
                            "removed": entry.get("removed", {}).get("keys", 0),
                            "oldest_update": oldest, "newest_update": newest,
                            "now": entry["now"]}
        summary.append({"sequence": sequence, "kind": kind, "base": manifest["base"],
                        "path": path, "metadata": manifest.get("metadata", {}),
                        "tables": tables})
    if as_json:
        return summary
    for checkpoint in summary:
        step = checkpoint["metadata"].get("step")
        print(f"{os.path.basename(checkpoint['path'])}  (base {checkpoint['base']}"
              + (f", step {step})" if step is not None else ")"))
        for name, t in checkpoint["tables"].items():
            print(f"  {name}: dim {t['dim']}, {t['rows']:,} rows, {t['bytes']:,} bytes, "
                  f"{t['removed']:,} removed, updates {t['oldest_update']}..{t['newest_update']}, "
                  f"now {t['now']}")
    if not summary:
        print(f"{directory}: no complete sparse checkpoint")
    return summary


def export(model_path, out, row_dtype="float32"):
    """Loads a saved Keras model and writes the stock-ops serving SavedModel."""
    import tensorflow as tf

    import monolith_tf  # noqa: F401  (registers the layers and loads the ops)

    model = tf.keras.models.load_model(model_path)
    names = monolith_tf.export_saved_model(model, out, row_dtype=row_dtype)
    print(f"exported {model_path} -> {out}; upsert tables: {', '.join(names)}")


def load_job(path):
    """Imports a job module from a file; it must define build_model and
    make_dataset."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such job file")
    spec = importlib.util.spec_from_file_location("monolith_tf_job", path)
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    missing = [name for name in ("build_model", "make_dataset") if not hasattr(job, name)]
    if missing:
        raise ValueError(f"{path}: a job module must define {missing}")
    return job


def _option(text):
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value  # a bare string


def train(args):
    """Builds the job's model and trains it with the training worker; prints
    a JSON summary line and returns it."""
    import tensorflow as tf

    from monolith_tf.training import TrainingWorker

    missing = [path for path in args.data if not os.path.exists(path)]
    if missing:
        raise ValueError(f"data files not found: {missing}")
    job = load_job(args.job)
    with contextlib.ExitStack() as cleanup:
        strategy = _connect_cluster(args, cleanup)
        tf.keras.utils.set_random_seed(args.seed)
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            model = job.build_model(**dict(args.option))
        return _train_model(args, job, model, strategy)


def _connect_cluster(args, cleanup):
    """The ParameterServerStrategy of ``--local-cluster`` (a localhost
    cluster this process starts and stops) or ``--cluster`` (a JSON spec, or
    ``env``: TF_CONFIG's), with this process as the chief; None without."""
    if not (args.local_cluster or args.cluster):
        return None
    from monolith_tf import cluster as cluster_lib

    if args.local_cluster:
        counts = dict(part.split("=", 1) for part in args.local_cluster.split(","))
        unknown = set(counts) - {"ps", "workers"}
        if unknown or not all(value.isdigit() for value in counts.values()):
            raise ValueError(f"--local-cluster must be ps=N,workers=M, got {args.local_cluster!r}")
        local = cleanup.enter_context(cluster_lib.LocalCluster(
            num_ps=int(counts.get("ps", 1)), num_workers=int(counts.get("workers", 1))))
        spec = local.cluster
    elif args.cluster == "env":
        spec = cluster_lib.cluster_from_tf_config()[0]
    else:
        spec = json.loads(args.cluster)
    return cluster_lib.connect(spec, timeout=args.cluster_timeout)


def _train_model(args, job, model, strategy):
    from monolith_tf.training import TrainingWorker

    tasks = []
    if args.sync_log:
        from monolith_tf.streaming import open_log
        from monolith_tf.sync.publisher import SyncPublisher

        if not args.serving_base_path:
            raise ValueError("--sync-log needs --serving-base-path (where base versions go)")
        tasks.append(SyncPublisher(
            open_log(_log_config(args.sync_log)), args.serving_base_path, topic=args.sync_topic,
            sparse_every_secs=args.sparse_sync_every_secs or None,
            dense_every_secs=args.dense_sync_every_secs or None,
            sparse_every_data_secs=args.sparse_sync_every_data_secs,
            dense_every_data_secs=args.dense_sync_every_data_secs,
            row_dtype=args.sync_row_dtype, export_options={"row_dtype": args.row_dtype},
            log_dir=os.path.join(args.model_dir, "tensorboard")))
    worker = TrainingWorker(
        model, args.model_dir, sparse_every_steps=args.sparse_every_steps,
        sparse_every_secs=args.sparse_every_secs, dense_every_steps=args.dense_every_steps,
        dense_every_secs=args.dense_every_secs, full_every=args.full_every,
        resume=None if args.resume == "none" else args.resume,
        log_every_steps=args.log_every_steps, verbose=args.verbose, tasks=tasks,
        max_save_failures=args.max_save_failures, strategy=strategy,
        steps_in_flight=args.steps_in_flight if strategy is not None else 1)
    summary = worker.train(job.make_dataset(args.data, args.batch_size), epochs=args.epochs,
                           max_steps=args.max_steps, max_seconds=args.max_seconds)
    if args.export:
        import monolith_tf

        summary["exported"] = monolith_tf.export_saved_model(model, args.export,
                                                             row_dtype=args.row_dtype)
    print(json.dumps(summary), flush=True)
    return summary


def _log_config(where):
    """A log config from a directory (embedded log) or ``kafka://HOST:PORT[,...]``."""
    if where.startswith("kafka://"):
        return {"bootstrap.servers": where[len("kafka://"):]}
    return {"path": where}


def open_log_from_args(args):
    """The log named by --log DIR or --kafka SERVERS (+ --kafka-config)."""
    from monolith_tf.streaming import open_log

    if (args.log is None) == (args.kafka is None):
        raise ValueError("give exactly one of --log DIR and --kafka SERVERS")
    if args.log is not None:
        return open_log({"path": args.log, "fsync": args.fsync})
    return open_log({"bootstrap.servers": args.kafka, **dict(args.kafka_config)})


def join(args):
    """Runs the online joiner; prints its counters as a JSON line."""
    import signal

    from monolith_tf.streaming.joiner import Joiner, JoinerConfig

    log = open_log_from_args(args)
    topics = {"features": args.features_topic, "actions": args.actions_topic,
              "examples": args.output_topic, "dead_letter": args.dead_letter_topic}
    if args.create_topics:
        for topic in topics.values():
            log.create_topic(topic, args.create_topics)
    config = JoinerConfig([a for a in args.actions.split(",") if a], window=args.window,
                          allowed_lateness=args.allowed_lateness,
                          negative_rate=args.negative_rate, emit=args.emit,
                          max_pending=args.max_pending,
                          partition_idle_timeout=args.partition_idle_timeout or None,
                          dedupe_horizon=args.dedupe_horizon)
    joiner = Joiner(log, config, args.state_dir, feature_topic=topics["features"],
                    action_topic=topics["actions"], output_topic=topics["examples"],
                    dead_letter_topic=topics["dead_letter"], group=args.group,
                    checkpoint_every=args.checkpoint_every)
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.append(signum))
    counters = joiner.run(max_seconds=args.max_seconds, idle_timeout=args.idle_timeout,
                          should_stop=lambda: bool(stop))
    if args.close_at_end:
        joiner.flush_all()
        counters = dict(joiner.counters)
    print(json.dumps(counters), flush=True)
    return counters


def replay(args):
    """Replays MovieLens ratings into the feature and action topics."""
    from monolith_tf.streaming.replay import replay as replay_ratings

    if not os.path.exists(args.data):
        raise ValueError(f"{args.data}: no such ratings file")
    log = open_log_from_args(args)
    if args.create_topics:
        for topic in (args.features_topic, args.actions_topic):
            log.create_topic(topic, args.create_topics)
    counts = replay_ratings(args.data, log, speedup=args.speedup, negatives=args.negatives,
                            max_action_delay=args.max_action_delay,
                            max_ratings=args.max_ratings, feature_topic=args.features_topic,
                            action_topic=args.actions_topic, seed=args.seed)
    print(json.dumps(counts), flush=True)
    return counts


def serve(args):
    """Runs the model server until SIGTERM or SIGINT (or --max_seconds), then
    stops it gracefully. Prints a JSON line with the bound addresses once it
    listens."""
    import signal
    import threading

    from monolith_tf.serving.server import ModelServer

    server = ModelServer(args.model_base_path, model_name=args.model_name, host=args.host,
                         port=args.port,
                         rest_api_port=args.rest_api_port if args.rest_api_port else None,
                         poll_seconds=args.file_system_poll_wait_seconds,
                         max_request_bytes=args.max_request_bytes,
                         max_batch_size=args.max_batch_size,
                         grpc_max_threads=args.grpc_max_threads,
                         rest_api_num_threads=args.rest_api_num_threads,
                         shutdown_grace_seconds=args.shutdown_grace_seconds,
                         enable_batching=args.enable_batching,
                         batch_timeout_micros=args.batch_timeout_micros,
                         num_batch_threads=args.num_batch_threads)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    server.start()
    subscriber = None
    if args.sync:
        from monolith_tf.serving.sync_subscriber import ServerSubscriber
        from monolith_tf.streaming import open_log

        subscriber = ServerSubscriber(server, open_log(_log_config(args.sync)),
                                      topic=args.sync_topic,
                                      dead_letter_topic=args.sync_dead_letter_topic).start()
    rest = f"http://{args.host}:{server.rest_port}" if server.rest_port else None
    print(json.dumps({"model_name": args.model_name, "version": server.version,
                      "grpc": f"{args.host}:{server.grpc_port}", "rest": rest}), flush=True)
    stop.wait(args.max_seconds)
    if subscriber is not None:
        subscriber.stop()
    server.stop()
    print(json.dumps({"stopped": args.model_name}), flush=True)


def sync_agent(args):
    """Runs the sync agent until SIGTERM or SIGINT (or --max_seconds)."""
    import signal
    import threading

    from monolith_tf.serving.sync_agent import SyncAgent
    from monolith_tf.streaming import open_log

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    agent = SyncAgent(open_log(_log_config(args.sync)), args.server, args.model_name,
                      args.model_base_path, status_every_secs=args.status_every_secs,
                      topic=args.sync_topic, dead_letter_topic=args.sync_dead_letter_topic)
    agent.start()
    print(json.dumps({"sync_agent": args.server, "model_name": args.model_name}), flush=True)
    stop.wait(args.max_seconds)
    agent.stop()
    print(json.dumps({"stopped": "sync-agent", **agent.counters}), flush=True)


def _serve_arguments(parser):
    # Names as tensorflow_model_server's where they mean the same.
    parser.add_argument("--model_base_path", required=True,
                        help="directory of numbered version directories (BASE/<version>/)")
    parser.add_argument("--model_name", default="default")
    parser.add_argument("--port", type=int, default=8500, help="gRPC port (0: a free one)")
    parser.add_argument("--rest_api_port", type=int, default=8501,
                        help="REST port (0: no REST API, as tensorflow_model_server)")
    parser.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0,
                        help="wall seconds between scans for new versions")
    parser.add_argument("--enable_batching", action="store_true",
                        help="merge concurrent prediction requests into one model call")
    parser.add_argument("--grpc_max_threads", type=int, default=16)
    parser.add_argument("--rest_api_num_threads", type=int, default=16)
    # Ours.
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: loopback only)")
    parser.add_argument("--max_request_bytes", type=int, default=64 << 20,
                        help="largest gRPC message or REST body (REST answers 413 beyond)")
    parser.add_argument("--max_batch_size", type=int, default=8192,
                        help="most examples in one prediction request (and, batching, in "
                             "one merged call)")
    parser.add_argument("--batch_timeout_micros", type=int, default=0,
                        help="batching: longest wait for requests to merge (0: merge what "
                             "is queued)")
    parser.add_argument("--num_batch_threads", type=int,
                        help="batching: merged calls at once (default: CPU count)")
    parser.add_argument("--shutdown_grace_seconds", type=float, default=10.0,
                        help="on SIGTERM, how long running requests may finish")
    parser.add_argument("--max_seconds", type=float, help="stop after this many seconds")
    parser.add_argument("--sync", metavar="LOG",
                        help="apply the sync stream of this log (a directory, or "
                             "kafka://HOST:PORT) to the served model while serving")
    parser.add_argument("--sync_topic", default="sync")
    parser.add_argument("--sync_dead_letter_topic", default="sync_dead_letter")


def _log_arguments(parser):
    parser.add_argument("--log", help="embedded log directory")
    parser.add_argument("--fsync", choices=("flush", "always", "never"), default="flush")
    parser.add_argument("--kafka", help="Kafka bootstrap.servers")
    parser.add_argument("--kafka-config", action="append", type=_option, default=[],
                        metavar="NAME=VALUE", help="more librdkafka settings")
    parser.add_argument("--create-topics", type=int, metavar="PARTITIONS",
                        help="create missing topics with this many partitions")
    parser.add_argument("--features-topic", default="features")
    parser.add_argument("--actions-topic", default="actions")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m monolith_tf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    inspect_parser = commands.add_parser("inspect", help="summarize sparse checkpoints")
    inspect_parser.add_argument("directory")
    inspect_parser.add_argument("--json", action="store_true", help="print JSON")
    export_parser = commands.add_parser("export", help="stock-ops serving SavedModel")
    export_parser.add_argument("model")
    export_parser.add_argument("out")
    export_parser.add_argument("--row-dtype", choices=("float32", "float16"), default="float32",
                               help="float16 halves the rows' size (error bound: export.py)")
    train_parser = commands.add_parser("train", help="train a job's model on files")
    train_parser.add_argument("--job", required=True, help="job module file (.py)")
    train_parser.add_argument("--data", required=True, nargs="+", help="input files")
    train_parser.add_argument("--model-dir", required=True)
    train_parser.add_argument("--option", action="append", type=_option, default=[],
                              metavar="NAME=VALUE", help="build_model argument (JSON value)")
    train_parser.add_argument("--epochs", type=int, default=1)
    train_parser.add_argument("--batch-size", type=int, default=256)
    train_parser.add_argument("--max-steps", type=int)
    train_parser.add_argument("--max-seconds", type=float)
    train_parser.add_argument("--sparse-every-steps", type=int)
    train_parser.add_argument("--sparse-every-secs", type=float, default=60.0)
    train_parser.add_argument("--dense-every-steps", type=int)
    train_parser.add_argument("--dense-every-secs", type=float, default=600.0)
    train_parser.add_argument("--full-every", type=int, default=10)
    cluster_group = train_parser.add_mutually_exclusive_group()
    cluster_group.add_argument("--cluster", metavar="SPEC",
                               help="train on a parameter-server cluster as its chief: the "
                                    "cluster spec as JSON, or 'env' for TF_CONFIG's")
    cluster_group.add_argument("--local-cluster", metavar="ps=N,workers=M",
                               help="start a cluster on 127.0.0.1 and train on it")
    train_parser.add_argument("--cluster-timeout", type=float, default=60.0,
                              help="seconds to wait for the cluster's tasks")
    train_parser.add_argument("--steps-in-flight", type=int, default=1,
                              help="on a cluster, steps issued before waiting for the oldest "
                                   "(1: in data order; more: asynchronous, every worker busy)")
    train_parser.add_argument("--max-save-failures", type=int, default=3,
                              help="scheduled saves that may fail in a row (a full disk) "
                                   "before training stops; each failure is retried when the "
                                   "next save is due")
    train_parser.add_argument("--resume", choices=("consistent", "latest", "none"),
                              default="consistent")
    train_parser.add_argument("--log-every-steps", type=int, default=100)
    train_parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2)
    train_parser.add_argument("--seed", type=int, default=0)
    train_parser.add_argument("--export", help="write a serving SavedModel here afterwards")
    train_parser.add_argument("--row-dtype", choices=("float32", "float16"), default="float32")
    train_parser.add_argument("--sync-log", metavar="LOG",
                              help="publish parameter sync to this log (a directory, or "
                                   "kafka://HOST:PORT)")
    train_parser.add_argument("--serving-base-path",
                              help="model base path of the sync publisher's base versions")
    train_parser.add_argument("--sync-topic", default="sync")
    train_parser.add_argument("--sparse-sync-every-secs", type=float, default=5.0,
                              help="wall seconds between pushes of changed rows (0: off)")
    train_parser.add_argument("--dense-sync-every-secs", type=float, default=1800.0,
                              help="wall seconds between dense pushes (0: never)")
    train_parser.add_argument("--sparse-sync-every-data-secs", type=float,
                              help="also push rows every this many seconds of data time")
    train_parser.add_argument("--dense-sync-every-data-secs", type=float,
                              help="also push dense weights every this many seconds of data time")
    train_parser.add_argument("--sync-row-dtype", choices=("float32", "float16"),
                              default="float32", help="rows on the sync stream")
    join_parser = commands.add_parser("join", help="the online joiner")
    _log_arguments(join_parser)
    join_parser.add_argument("--state-dir", required=True, help="the joiner's snapshot")
    join_parser.add_argument("--actions", required=True, help="action types, comma-separated")
    join_parser.add_argument("--window", type=int, default=600, help="seconds of event time")
    join_parser.add_argument("--allowed-lateness", type=int, default=60)
    join_parser.add_argument("--negative-rate", type=float, default=1.0)
    join_parser.add_argument("--emit", choices=("impression", "action"), default="impression")
    join_parser.add_argument("--max-pending", type=int, default=1_000_000)
    join_parser.add_argument("--partition-idle-timeout", type=float, default=30.0,
                             help="seconds of wall time after which a partition with nothing "
                                  "to read stops holding the watermark (0: never)")
    join_parser.add_argument("--dedupe-horizon", type=int, default=3600,
                             help="seconds of event time a closed request id is remembered")
    join_parser.add_argument("--output-topic", default="examples")
    join_parser.add_argument("--dead-letter-topic", default="dead_letter")
    join_parser.add_argument("--group", default="joiner")
    join_parser.add_argument("--checkpoint-every", type=float, default=5.0, help="seconds")
    join_parser.add_argument("--max-seconds", type=float)
    join_parser.add_argument("--idle-timeout", type=float, help="stop after this idle time")
    join_parser.add_argument("--close-at-end", action="store_true",
                             help="close every open window when stopping (bounded input)")
    replay_parser = commands.add_parser("replay", help="MovieLens ratings into the logs")
    replay_parser.add_argument("--data", required=True, help="MovieLens ratings file")
    _log_arguments(replay_parser)
    replay_parser.add_argument("--speedup", type=float, default=0.0,
                               help="event seconds per wall second (0: no pacing)")
    replay_parser.add_argument("--negatives", type=int, default=2,
                               help="unrated impressions per rating")
    replay_parser.add_argument("--max-action-delay", type=int, default=60, help="seconds")
    replay_parser.add_argument("--max-ratings", type=int)
    replay_parser.add_argument("--seed", type=int, default=0)
    serve_parser = commands.add_parser("serve", help="TF Serving-compatible model server")
    _serve_arguments(serve_parser)
    agent_parser = commands.add_parser("sync-agent",
                                       help="apply the sync stream to any TF Serving")
    agent_parser.add_argument("--sync", required=True, metavar="LOG",
                              help="the log (a directory, or kafka://HOST:PORT)")
    agent_parser.add_argument("--server", required=True, help="HOST:PORT of the gRPC API")
    agent_parser.add_argument("--model_name", default="default")
    agent_parser.add_argument("--model_base_path", required=True)
    agent_parser.add_argument("--sync_topic", default="sync")
    agent_parser.add_argument("--sync_dead_letter_topic", default="sync_dead_letter")
    agent_parser.add_argument("--status_every_secs", type=float, default=1.0)
    agent_parser.add_argument("--max_seconds", type=float)
    args = parser.parse_args(argv)
    from monolith_tf.sparse_checkpoint import CheckpointError
    from monolith_tf.streaming.log import LogError

    try:
        if args.command == "inspect":
            result = inspect(args.directory, as_json=args.json)
            if args.json:
                print(json.dumps(result, indent=1))
        elif args.command == "train":
            train(args)
        elif args.command == "join":
            join(args)
        elif args.command == "replay":
            replay(args)
        elif args.command == "serve":
            serve(args)
        elif args.command == "sync-agent":
            sync_agent(args)
        else:
            export(args.model, args.out, args.row_dtype)
    except (CheckpointError, LogError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
