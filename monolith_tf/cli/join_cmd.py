"""``join``: the online joiner, feature + action topics -> labelled
examples (until SIGTERM, --max-seconds or --idle-timeout). Pure Python: no
TensorFlow is loaded."""

import json

from monolith_tf.cli.common import (add_log_arguments, open_log_from_args, signature_flag,
                                    stop_on_signals)
from monolith_tf.streaming.joiner import Joiner, JoinerConfig

NAME, HELP = "join", "the online joiner"


def add_arguments(parser):
    add_log_arguments(parser)
    parser.add_argument("--state-dir", required=True, help="the joiner's snapshot")
    parser.add_argument("--actions", required=True, help="action types, comma-separated")
    signature_flag(parser, "--window", JoinerConfig, "window", type=int,
                   help="seconds of event time")
    signature_flag(parser, "--allowed-lateness", JoinerConfig, "allowed_lateness", type=int)
    signature_flag(parser, "--negative-rate", JoinerConfig, "negative_rate", type=float)
    signature_flag(parser, "--emit", JoinerConfig, "emit", choices=("impression", "action"))
    signature_flag(parser, "--max-pending", JoinerConfig, "max_pending", type=int)
    signature_flag(parser, "--partition-idle-timeout", JoinerConfig, "partition_idle_timeout",
                   type=float,
                   help="seconds of wall time after which a partition with nothing "
                        "to read stops holding the watermark (0: never)")
    signature_flag(parser, "--dedupe-horizon", JoinerConfig, "dedupe_horizon", type=int,
                   help="seconds of event time a closed request id is remembered")
    signature_flag(parser, "--output-topic", Joiner, "output_topic")
    signature_flag(parser, "--dead-letter-topic", Joiner, "dead_letter_topic")
    signature_flag(parser, "--group", Joiner, "group")
    signature_flag(parser, "--checkpoint-every", Joiner, "checkpoint_every", type=float,
                   help="seconds")
    parser.add_argument("--max-seconds", type=float)
    parser.add_argument("--idle-timeout", type=float, help="stop after this idle time")
    parser.add_argument("--close-at-end", action="store_true",
                        help="close every open window when stopping (bounded input)")


def run(args):
    """Runs the online joiner; prints its counters as a JSON line."""
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
    with stop_on_signals() as stop:
        counters = joiner.run(max_seconds=args.max_seconds, idle_timeout=args.idle_timeout,
                              should_stop=stop.is_set)
    if args.close_at_end:
        joiner.flush_all()
        counters = dict(joiner.counters)
    print(json.dumps(counters), flush=True)
    return counters
