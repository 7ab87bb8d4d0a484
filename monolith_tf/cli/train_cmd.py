"""``train --job JOB.py --data FILE... --model-dir DIR``: trains the job's
model on files with the training worker (checkpoints, resume, TensorBoard),
optionally on a parameter-server cluster and publishing parameter sync."""

import contextlib
import importlib.util
import json
import os

from monolith_tf.cli.common import config_flag, log_config, name_value
from monolith_tf.config import CheckpointConfig, SyncConfig, WorkerConfig
from monolith_tf.export_format import ROW_DTYPES
from monolith_tf.quiet_start import import_tensorflow

NAME, HELP = "train", "train a job's model on files"


def add_arguments(parser):
    parser.add_argument("--job", required=True, help="job module file (.py)")
    parser.add_argument("--data", required=True, nargs="+", help="input files")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--option", action="append", type=name_value, default=[],
                        metavar="NAME=VALUE", help="build_model argument (JSON value)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--max-seconds", type=float)
    for field in ("sparse_every_steps", "sparse_every_secs", "dense_every_steps",
                  "dense_every_secs", "full_every"):
        kind = int if field.endswith("steps") or field == "full_every" else float
        config_flag(parser, "--" + field.replace("_", "-"), CheckpointConfig, field, type=kind)
    cluster_group = parser.add_mutually_exclusive_group()
    cluster_group.add_argument("--cluster", metavar="SPEC",
                               help="train on a parameter-server cluster as its chief: the "
                                    "cluster spec as JSON, or 'env' for TF_CONFIG's")
    cluster_group.add_argument("--local-cluster", metavar="ps=N,workers=M",
                               help="start a cluster on 127.0.0.1 and train on it")
    parser.add_argument("--cluster-timeout", type=float, default=60.0,
                        help="seconds to wait for the cluster's tasks")
    config_flag(parser, "--steps-in-flight", WorkerConfig, "steps_in_flight", type=int,
                help="on a cluster, steps issued before waiting for the oldest "
                     "(1: in data order; more: asynchronous, every worker busy)")
    config_flag(parser, "--max-save-failures", CheckpointConfig, "max_save_failures", type=int,
                help="scheduled saves that may fail in a row (a full disk) "
                     "before training stops; each failure is retried when the "
                     "next save is due")
    config_flag(parser, "--resume", CheckpointConfig, "resume",
                choices=("consistent", "latest", "none"))
    config_flag(parser, "--log-every-steps", WorkerConfig, "log_every_steps", type=int)
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--export", help="write a serving SavedModel here afterwards")
    parser.add_argument("--row-dtype", choices=ROW_DTYPES, default=ROW_DTYPES[0])
    parser.add_argument("--sync-log", metavar="LOG",
                        help="publish parameter sync to this log (a directory, or "
                             "kafka://HOST:PORT)")
    parser.add_argument("--serving-base-path",
                        help="model base path of the sync publisher's base versions")
    config_flag(parser, "--sync-topic", SyncConfig, "topic", dest="sync_topic")
    config_flag(parser, "--sparse-sync-every-secs", SyncConfig, "sparse_every_secs", type=float,
                dest="sparse_sync_every_secs",
                help="wall seconds between pushes of changed rows (0: off)")
    config_flag(parser, "--dense-sync-every-secs", SyncConfig, "dense_every_secs", type=float,
                dest="dense_sync_every_secs",
                help="wall seconds between dense pushes (0: never)")
    config_flag(parser, "--sparse-sync-every-data-secs", SyncConfig, "sparse_every_data_secs",
                type=float, dest="sparse_sync_every_data_secs",
                help="also push rows every this many seconds of data time")
    config_flag(parser, "--dense-sync-every-data-secs", SyncConfig, "dense_every_data_secs",
                type=float, dest="dense_sync_every_data_secs",
                help="also push dense weights every this many seconds of data time")
    config_flag(parser, "--sync-row-dtype", SyncConfig, "row_dtype", choices=ROW_DTYPES,
                dest="sync_row_dtype", help="rows on the sync stream")


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


def run(args):
    """Builds the job's model and trains it with the training worker; prints
    a JSON summary line and returns it."""
    missing = [path for path in args.data if not os.path.exists(path)]
    if missing:
        raise ValueError(f"data files not found: {missing}")
    import_tensorflow()
    import tensorflow as tf

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
        sync = SyncConfig(topic=args.sync_topic,
                          sparse_every_secs=args.sparse_sync_every_secs or None,
                          dense_every_secs=args.dense_sync_every_secs or None,
                          sparse_every_data_secs=args.sparse_sync_every_data_secs,
                          dense_every_data_secs=args.dense_sync_every_data_secs,
                          row_dtype=args.sync_row_dtype)
        tasks.append(SyncPublisher(
            open_log(log_config(args.sync_log)), args.serving_base_path, sync,
            export_options={"row_dtype": args.row_dtype},
            log_dir=os.path.join(args.model_dir, "tensorboard")))
    checkpoints = CheckpointConfig(
        sparse_every_steps=args.sparse_every_steps, sparse_every_secs=args.sparse_every_secs,
        dense_every_steps=args.dense_every_steps, dense_every_secs=args.dense_every_secs,
        full_every=args.full_every, resume=None if args.resume == "none" else args.resume,
        max_save_failures=args.max_save_failures)
    worker_config = WorkerConfig(
        log_every_steps=args.log_every_steps, verbose=args.verbose,
        steps_in_flight=args.steps_in_flight if strategy is not None else 1)
    worker = TrainingWorker(model, args.model_dir, worker_config, checkpoints, tasks=tasks,
                            strategy=strategy)
    summary = worker.train(job.make_dataset(args.data, args.batch_size), epochs=args.epochs,
                           max_steps=args.max_steps, max_seconds=args.max_seconds)
    if args.export:
        from monolith_tf.export import export_saved_model

        summary["exported"] = export_saved_model(model, args.export, row_dtype=args.row_dtype)
    print(json.dumps(summary), flush=True)
    return summary
