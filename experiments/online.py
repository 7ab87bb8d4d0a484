"""Online vs batch training, and the parameter-sync interval (the paper's
Table 2 protocol, through this project's real training, sync and serving).

Per seed: the examples are in time order; a model trains in batch on the
first ``batch_fraction`` of them; its export is the base version every
serving replica starts from. Then the rest streams through the
``TrainingWorker`` once, and each batch is scored by every replica before
the worker trains on it (``ProgressiveValidation``):

- ``batch only``: a replica that is never synced (it serves the batch model);
- ``sync every D``: a replica (model server + subscriber) following a sync
  topic that receives the trainer's touched rows and dense weights every D
  seconds of *data time*: the ``SyncPublisher``'s own topic for the
  shortest D, a ``ScheduledRelay`` of it for the longer ones.

The score of an arm is the AUC over every example of the online part."""

import os
import shutil
import tempfile
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from monolith_tf.data_source import DatasetSource
from experiments import data as datasets
from experiments.models import deepfm
from experiments.progressive import ProgressiveValidation, loopback_replica
from experiments.stats import auc
from monolith_tf.streaming import open_log
from monolith_tf.sync.publisher import SyncPublisher
from monolith_tf.sync.relay import ScheduledRelay
from monolith_tf.training import TrainingWorker

BATCH_ONLY = "batch only"
NEVER = 10 ** 9   # wall seconds: "not on the wall clock"


@dataclass
class OnlineSetup:
    """One dataset of the experiment and how it is run."""

    name: str
    examples: object                    # a dict (experiments.data), or seed -> dict
    categorical: list
    dense: list = field(default_factory=list)
    batch_fraction: float = 0.25        # first part (time order) trained in batch
    intervals: tuple = (600, 3600, 36000)   # sync intervals, data seconds
    batch_size: int = 512
    dim: int = 8
    learning_rate: float = 0.05
    dense_learning_rate: float = 0.002
    windows: int = 12                   # data-time windows of the AUC curves


def interval_name(seconds):
    """``"sync 10 min"`` style arm names."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"sync {seconds // size} {unit}"
    return f"sync {seconds} s"


def arm_names(setup):
    return [BATCH_ONLY] + [interval_name(d) for d in setup.intervals]


def _batches(examples, features, batch_size):
    x = {name: examples[name] for name in features}
    return tf.data.Dataset.from_tensor_slices((x, examples["label"])).batch(batch_size)


def window_aucs(labels, scores, times, edges):
    """AUC of the examples in each data-time window [edges[i], edges[i+1])."""
    out = []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (times >= low) & (times < high)
        out.append(auc(labels[inside], scores[inside]) if inside.any() else float("nan"))
    return out


def run_seed(setup, seed, workdir=None, verbose=False):
    """Runs every arm of ``setup`` on one seed; returns ``{arm: result}``
    with ``auc`` (whole online part), ``window_auc`` (per data-time window),
    ``pushes`` (records forwarded to the arm's replica, in pushes) and
    ``rows_pushed`` (the publisher's, shared by all synced arms).

    One training run serves every arm: the publisher pushes on the shortest
    interval to the ``sync`` topic; a ``ScheduledRelay`` per longer interval
    forwards that stream on its own schedule; each arm's replica (model
    server + subscriber) follows its topic, and the batch-only replica
    follows none. Every batch is scored by all replicas, then trained."""
    features = list(setup.categorical) + list(setup.dense) + ["timestamp"]
    examples = setup.examples(seed) if callable(setup.examples) else setup.examples
    cut = int(len(examples["label"]) * setup.batch_fraction)
    batch_part = datasets.take(examples, slice(0, cut))
    online_part = datasets.take(examples, slice(cut, None))
    times = online_part["timestamp"]
    edges = np.linspace(times[0], times[-1] + 1, setup.windows + 1)
    own_dir = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="monolith_online_")
    tf.keras.backend.clear_session()
    model = deepfm(setup.categorical, setup.dense, dim=setup.dim, seed=seed,
                   learning_rate=setup.learning_rate,
                   dense_learning_rate=setup.dense_learning_rate)
    quiet = {"checkpoints": False, "tensorboard": False, "verbose": 0}
    TrainingWorker(model, os.path.join(workdir, "batch"), **quiet).train(
        _batches(batch_part, features, setup.batch_size))

    names = arm_names(setup)
    intervals = sorted(setup.intervals)
    log = open_log({"path": os.path.join(workdir, "log")})
    base_path = os.path.join(workdir, "models")
    # The base version (the batch model) is exported when training begins.
    publisher = SyncPublisher(log, base_path, sparse_every_secs=None, dense_every_secs=None,
                              sparse_every_data_secs=intervals[0],
                              dense_every_data_secs=intervals[0], base_every_secs=NEVER)
    publisher.connect()
    relays = {interval_name(d): ScheduledRelay(log, publisher, f"sync_every_{d}", d)
              for d in intervals[1:]}
    replicas = {BATCH_ONLY: loopback_replica(base_path),
                interval_name(intervals[0]): loopback_replica(base_path, log, publisher.topic)}
    replicas.update({name: loopback_replica(base_path, log, relay.topic)
                     for name, relay in relays.items()})
    source = ProgressiveValidation(
        DatasetSource(_batches(online_part, features, setup.batch_size)), replicas)
    try:
        for replica in replicas.values():
            replica.start()
        TrainingWorker(model, os.path.join(workdir, "online"),
                       tasks=[publisher] + list(relays.values()), **quiet).train(source)
    finally:
        for replica in replicas.values():
            replica.stop()
        for relay in relays.values():
            relay.close()
        publisher.close()
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    results = {}
    for arm in names:
        labels, scores, stamps = source.results(arm)
        pushes = (0 if arm == BATCH_ONLY else relays[arm].forwards if arm in relays
                  else publisher.totals["pushes"])
        results[arm] = {"auc": auc(labels, scores),
                        "window_auc": window_aucs(labels, scores, stamps, edges),
                        "examples": int(labels.size), "pushes": pushes,
                        "rows_pushed": publisher.totals["rows"] if arm != BATCH_ONLY else 0}
        if verbose:
            print(f"  {setup.name} seed {seed} {arm}: AUC {results[arm]['auc']:.4f} "
                  f"({pushes} pushes)", flush=True)
    results["_window_edges"] = [int(e) for e in edges]
    # How new the online part is to the batch model: share of its examples
    # whose user (first field) / item (second field) the batch part never had.
    results["_unseen_share"] = {
        name: float(np.mean(~np.isin(online_part[name], batch_part[name])))
        for name in setup.categorical[:2]}
    return results
