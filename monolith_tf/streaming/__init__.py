"""Streaming input: feature and action logs, their record schema, and the
pieces that turn them into training examples.

``log``      topics, producers and consumer groups: an embedded on-disk log
             (the default) or Kafka, behind one interface (``open_log``).
``records``  the feature-log, action-log and joined-example schema
             (``tf.train.Example``).
"""

from monolith_tf.streaming.log import LogError, Record, open_log
from monolith_tf.streaming.records import RecordError

__all__ = ["LogError", "Record", "RecordError", "open_log"]
