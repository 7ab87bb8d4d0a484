"""Streaming input: feature and action logs, their record schema, and the
pieces that turn them into training examples.

``log``           the log interface (topics, producers, consumer groups)
``embedded_log``  its on-disk backend; ``kafka_log`` its Kafka backend
``records``       the feature-log, action-log and joined-example schema
                  (``tf.train.Example``)
``joiner``, ``dataset``, ``replay``: the online joiner, the tf.data source
of the examples log, MovieLens traffic replay.
"""

from monolith_tf.streaming.embedded_log import EmbeddedLog
from monolith_tf.streaming.kafka_log import KafkaLog
from monolith_tf.streaming.log import Consumer, Log, LogError, Producer, Record
from monolith_tf.streaming.records import RecordError

__all__ = ["Consumer", "EmbeddedLog", "KafkaLog", "Log", "LogError", "Producer", "Record",
           "RecordError", "open_log"]


def open_log(config=None, **kwargs):
    """A Log from ``config``: ``{"bootstrap.servers": ...}`` (plus any
    librdkafka settings) opens Kafka; ``{"path": DIR, "fsync": ...}`` or a
    directory string opens the embedded log."""
    if isinstance(config, str):
        config = {"path": config}
    config = dict(config or {}, **kwargs)
    if "bootstrap.servers" in config:
        return KafkaLog(config)
    if "path" not in config:
        raise LogError("open_log needs {'path': DIR} (embedded) or {'bootstrap.servers': ...}")
    return EmbeddedLog(config["path"], fsync=config.get("fsync", "flush"))
