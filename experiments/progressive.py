"""Progressive validation against a serving replica.

Every example is scored by a serving replica before the trainer learns from
it, so the AUC over a stream measures what users were served, with the
replica exactly as fresh as parameter sync made it.

The replica is a real one (``monolith_tf.sync.replica.Replica``): a
``ModelServer`` serving the base versions the sync publisher exports, with a
``SyncFollower`` applying the sync stream in place. ``ProgressiveValidation`` wraps the training worker's data source:
before a batch reaches the worker it waits until the replica has applied
everything the trainer pushed so far (sync lag is then the schedule's
alone: an experiment replays data time much faster than real time, and
wall-clock apply delays would otherwise decide the result), scores the
batch through the replica and records labels, scores and data times.
"""

import numpy as np
import tensorflow as tf

from monolith_tf.data_source import POSITION_KEY
from monolith_tf.sync.replica import Replica
from monolith_tf.topics import SYNC_TOPIC

MODEL_NAME = "experiment"


def loopback_replica(model_base_path, log=None, topic=SYNC_TOPIC):
    """An experiment's ``Replica``: gRPC on a free loopback port, no REST,
    versions polled every 50 ms; following ``topic`` of ``log`` (None: never
    synced)."""
    return Replica(model_base_path, log, topic=topic, model_name=MODEL_NAME, port=0,
                   rest_api_port=None, poll_seconds=0.05)


class ProgressiveValidation:
    """A training-worker ``DataSource`` around ``source`` whose batches are
    each scored by every replica of ``replicas`` (one ``Replica``, or a
    dict ``{name: Replica}``: several replicas on different sync schedules
    of the same training run) before the worker trains on them (module
    doc). Batches are ``(features, label)``; ``timestamp_feature``
    (seconds) dates them. ``restore`` is a no-op: a progressive run starts
    where its source starts."""

    def __init__(self, source, replicas, timestamp_feature="timestamp"):
        self.source = source
        self.replicas = replicas if isinstance(replicas, dict) else {"replica": replicas}
        self.timestamp_feature = timestamp_feature
        self._labels, self._times = [], []
        self._scores = {name: [] for name in self.replicas}
        # (batch data time, the replica's newest applied data time) per batch.
        self._lags = {name: [] for name in self.replicas}

    # --------------------------------------------------------- data source

    def begin(self):
        self.source.begin()

    def next_segment(self):
        inner = self.source.next_segment()
        if inner is None:
            return None
        scored = tf.data.Dataset.from_generator(lambda: self._scored(inner),
                                                output_signature=inner.element_spec)
        # Nothing may read ahead: a batch is scored only once the batches
        # before it are trained and their pushes applied.
        options = tf.data.Options()
        options.experimental_optimization.inject_prefetch = False
        options.autotune.enabled = False
        return scored.with_options(options)

    def batch_trained(self, batch_position):
        self.source.batch_trained(batch_position)

    def segment_ended(self, trained_any):
        return self.source.segment_ended(trained_any)

    def position(self):
        return self.source.position()

    def restore(self, position):
        pass

    # ------------------------------------------------------------- scoring

    def _scored(self, segment):
        for batch in segment.as_numpy_iterator():
            self.score_batch(*batch)
            yield batch

    def score_batch(self, features, labels):
        """Scores one batch through every replica and records it."""
        features = {k: v for k, v in features.items() if k != POSITION_KEY}
        times = np.asarray(features[self.timestamp_feature], np.int64)
        for name, replica in self.replicas.items():
            if not self._scores[name]:
                replica.wait_for_version()
            replica.catch_up()
            self._scores[name].append(replica.score(features))
            self._lags[name].append((int(times.max()), replica.data_time))
        self._labels.append(np.asarray(labels, np.float32).ravel())
        self._times.append(times)

    def _name(self, name):
        if name is None:
            if len(self.replicas) != 1:
                raise ValueError(f"name one of the replicas {sorted(self.replicas)}")
            return next(iter(self.replicas))
        return name

    def results(self, name=None):
        """(labels, scores, data times) of every example scored so far, the
        scores of replica ``name`` (may be left out with one replica)."""
        name = self._name(name)
        if not self._labels:
            return np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
        return (np.concatenate(self._labels), np.concatenate(self._scores[name]),
                np.concatenate(self._times))

    def lags(self, name=None):
        """[(batch data time, replica's newest applied data time or None)]
        per scored batch, of replica ``name``."""
        return list(self._lags[self._name(name)])
