"""``replay``: MovieLens ratings into the feature and action topics, in
timestamp order (pure Python: no TensorFlow is loaded)."""

import json
import os

from monolith_tf.cli.common import add_log_arguments, open_log_from_args, signature_flag
from monolith_tf.streaming.replay import replay

NAME, HELP = "replay", "MovieLens ratings into the logs"


def add_arguments(parser):
    parser.add_argument("--data", required=True, help="MovieLens ratings file")
    add_log_arguments(parser)
    signature_flag(parser, "--speedup", replay, "speedup", type=float,
                   help="event seconds per wall second (0: no pacing)")
    signature_flag(parser, "--negatives", replay, "negatives", type=int,
                   help="unrated impressions per rating")
    signature_flag(parser, "--max-action-delay", replay, "max_action_delay", type=int,
                   help="seconds")
    parser.add_argument("--max-ratings", type=int)
    signature_flag(parser, "--seed", replay, "seed", type=int)


def run(args):
    """Replays MovieLens ratings into the feature and action topics."""
    if not os.path.exists(args.data):
        raise ValueError(f"{args.data}: no such ratings file")
    log = open_log_from_args(args)
    if args.create_topics:
        for topic in (args.features_topic, args.actions_topic):
            log.create_topic(topic, args.create_topics)
    counts = replay(args.data, log, speedup=args.speedup, negatives=args.negatives,
                    max_action_delay=args.max_action_delay, max_ratings=args.max_ratings,
                    feature_topic=args.features_topic, action_topic=args.actions_topic,
                    seed=args.seed)
    print(json.dumps(counts), flush=True)
    return counts
