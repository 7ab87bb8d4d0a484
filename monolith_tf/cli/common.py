"""What several subcommands share: log flags, NAME=VALUE options, signal
handling, and flags whose defaults come from the typed configs."""

import argparse
import contextlib
import json

from monolith_tf import config as config_lib
from monolith_tf.topics import ACTIONS_TOPIC, FEATURES_TOPIC


def config_flag(parser, flag, config_class, field, **argparse_options):
    """Adds ``flag`` with the default that ``config_class`` declares for
    ``field`` (the flag's value lands in ``args.<field>`` unless ``dest``
    says otherwise)."""
    argparse_options.setdefault("default", config_lib.default(config_class, field))
    return parser.add_argument(flag, **argparse_options)


def signature_flag(parser, flag, function, parameter, **argparse_options):
    """Adds ``flag`` with the default of ``parameter`` in ``function``'s
    signature (a class: its constructor's), where the library declares it."""
    import inspect

    declared = inspect.signature(function).parameters[parameter].default
    argparse_options.setdefault("default", declared)
    return parser.add_argument(flag, **argparse_options)


def name_value(text):
    """``NAME=VALUE`` with VALUE parsed as JSON when it is JSON."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value  # a bare string


def log_config(where):
    """A log config from a directory (embedded log) or ``kafka://HOST:PORT[,...]``."""
    if where.startswith("kafka://"):
        return {"bootstrap.servers": where[len("kafka://"):]}
    return {"path": where}


def add_log_arguments(parser):
    """--log / --kafka and the feature and action topics."""
    parser.add_argument("--log", help="embedded log directory")
    parser.add_argument("--fsync", choices=("flush", "always", "never"), default="flush")
    parser.add_argument("--kafka", help="Kafka bootstrap.servers")
    parser.add_argument("--kafka-config", action="append", type=name_value, default=[],
                        metavar="NAME=VALUE", help="more librdkafka settings")
    parser.add_argument("--create-topics", type=int, metavar="PARTITIONS",
                        help="create missing topics with this many partitions")
    parser.add_argument("--features-topic", default=FEATURES_TOPIC)
    parser.add_argument("--actions-topic", default=ACTIONS_TOPIC)


def open_log_from_args(args):
    """The log named by --log DIR or --kafka SERVERS (+ --kafka-config)."""
    from monolith_tf.streaming import open_log

    if (args.log is None) == (args.kafka is None):
        raise ValueError("give exactly one of --log DIR and --kafka SERVERS")
    if args.log is not None:
        return open_log({"path": args.log, "fsync": args.fsync})
    return open_log({"bootstrap.servers": args.kafka, **dict(args.kafka_config)})


@contextlib.contextmanager
def stop_on_signals():
    """A ``threading.Event`` set by SIGINT or SIGTERM while the block runs."""
    import signal
    import threading

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
