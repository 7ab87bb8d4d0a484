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
import sys

from monolith_tf.cli import (export_cmd, inspect_cmd, join_cmd, replay_cmd, serve_cmd,
                             sync_agent_cmd, train_cmd)
from monolith_tf.streaming.log import LogError

# In ``--help`` order. Each module: NAME, HELP, add_arguments(parser), run(args);
# heavy imports (TensorFlow, Keras, the server) happen inside run.
COMMANDS = (inspect_cmd, export_cmd, train_cmd, join_cmd, replay_cmd, serve_cmd,
            sync_agent_cmd)


def build_parser():
    """The ``python -m monolith_tf`` argument parser."""
    parser = argparse.ArgumentParser(prog="python -m monolith_tf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        sub = commands.add_parser(command.NAME, help=command.HELP)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv=None):
    """Runs one command; returns the exit status (2 with a one-line error for
    bad input, a missing file, a broken log or checkpoint)."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (LogError, ValueError, OSError) as error:  # CheckpointError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
