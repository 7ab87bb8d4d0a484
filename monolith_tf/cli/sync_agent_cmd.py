"""``sync-agent --sync LOG --model_base_path BASE --server HOST:PORT``:
applies the sync stream to any server speaking TF Serving's gRPC API (stock
TF Serving with our export). Loads neither the Keras layers nor the
checkpointers."""

import json

from monolith_tf.cli.common import config_flag, log_config, stop_on_signals
from monolith_tf.config import AgentConfig, ServerConfig
from monolith_tf.quiet_start import import_tensorflow
from monolith_tf.topics import SYNC_DEAD_LETTER_TOPIC, SYNC_TOPIC

NAME, HELP = "sync-agent", "apply the sync stream to any TF Serving"


def add_arguments(parser):
    parser.add_argument("--sync", required=True, metavar="LOG",
                        help="the log (a directory, or kafka://HOST:PORT)")
    parser.add_argument("--server", required=True, help="HOST:PORT of the gRPC API")
    parser.add_argument("--model_name", default=ServerConfig.model_name)
    parser.add_argument("--model_base_path", required=True)
    parser.add_argument("--sync_topic", default=SYNC_TOPIC)
    parser.add_argument("--sync_dead_letter_topic", default=SYNC_DEAD_LETTER_TOPIC)
    config_flag(parser, "--status_every_secs", AgentConfig, "status_every_secs", type=float)
    parser.add_argument("--max_seconds", type=float)


def run(args):
    """Runs the sync agent until SIGTERM or SIGINT (or --max_seconds)."""
    import_tensorflow()
    from monolith_tf.streaming import open_log
    from monolith_tf.sync.follower import SyncFollower
    from monolith_tf.sync.sinks import RemoteServingSink

    sink = RemoteServingSink(args.server, args.model_name, args.model_base_path,
                             status_every_secs=args.status_every_secs)
    agent = SyncFollower(open_log(log_config(args.sync)), sink, topic=args.sync_topic,
                         dead_letter_topic=args.sync_dead_letter_topic)
    with stop_on_signals() as stop:
        agent.start()
        print(json.dumps({"sync_agent": args.server, "model_name": args.model_name}),
              flush=True)
        stop.wait(args.max_seconds)
        agent.stop()
    print(json.dumps({"stopped": "sync-agent", **agent.counters}), flush=True)
