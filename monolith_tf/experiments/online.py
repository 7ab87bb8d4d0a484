"""Online vs batch training, and the parameter-sync interval (the paper's
Table 2 protocol, through this project's real training, sync and serving).

Per seed: the examples are in time order; a model trains in batch on the
first ``batch_fraction`` of them. Then each arm starts from that model:

- ``batch only``: a serving replica serves the batch model and is never
  synced; it scores the rest of the stream.
- ``sync every D``: the rest streams through the ``TrainingWorker``; a
  ``SyncPublisher`` pushes touched rows and the dense weights every D
  seconds of *data time* to a sync topic; a ``Replica`` (model server +
  subscriber) applies them. Each batch is scored by the replica before the
  worker trains on it (``ProgressiveValidation``).

The score of an arm is the AUC over every example of the online part.
"""

import os
import shutil
import tempfile
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from monolith_tf.data_source import DatasetSource
from monolith_tf.experiments import data as datasets
from monolith_tf.experiments.models import deepfm
from monolith_tf.experiments.progressive import ProgressiveValidation, Replica
from monolith_tf.experiments.stats import auc
from monolith_tf.layers import model_tables
from monolith_tf.streaming import open_log
from monolith_tf.sync_publisher import SyncPublisher
from monolith_tf.training import TrainingWorker

BATCH_ONLY = "batch only"
NEVER = 10 ** 9   # wall seconds: "not on the wall clock"


@dataclass
class OnlineSetup:
    """One dataset of the experiment and how it is run."""

    name: str
    examples: object                    # a dict (monolith_tf.experiments.data), or seed -> dict
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


def _optimizer_variables(model):
    variables = model.optimizer.variables
    return variables() if callable(variables) else variables


def capture(model):
    """The model's full training state: weights (data time and update
    counters included), dense optimizer slots and every table's rows."""
    return {"weights": model.get_weights(),
            "optimizer": [v.numpy() for v in _optimizer_variables(model)],
            "tables": {name: {k: v.numpy() for k, v in table.export().items()}
                       for name, table in model_tables(model).items()}}


def restore(model, state):
    """Puts back what ``capture`` returned."""
    model.set_weights(state["weights"])
    for variable, value in zip(_optimizer_variables(model), state["optimizer"]):
        variable.assign(value)
    for name, table in model_tables(model).items():
        table.import_rows(**state["tables"][name], clear=True)


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
    ``pushes`` and ``rows_pushed``."""
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
    trained_in_batch = capture(model)
    # Online arms first: the first one's publisher exports the batch model as
    # the base; the other arms (and the never-synced one) start from a copy
    # of it, so each seed pays for one export.
    arms = list(zip(arm_names(setup), [None] + list(setup.intervals)))
    arms = arms[1:] + arms[:1]
    first_base = None
    results = {}
    try:
        for arm, interval in arms:
            restore(model, trained_in_batch)
            arm_dir = os.path.join(workdir, arm.replace(" ", "_"))
            log = open_log({"path": os.path.join(arm_dir, "log")})
            base_path = os.path.join(arm_dir, "models")
            if first_base is not None:
                shutil.copytree(first_base, os.path.join(base_path, "1"))
            replica = Replica(base_path, log, follow=interval is not None)
            source = ProgressiveValidation(
                DatasetSource(_batches(online_part, features, setup.batch_size)), replica)
            publisher = None
            try:
                if interval is None:
                    replica.start()
                    source.score_only()
                else:
                    publisher = SyncPublisher(
                        log, base_path, sparse_every_secs=None, dense_every_secs=None,
                        sparse_every_data_secs=interval, dense_every_data_secs=interval,
                        base_every_secs=NEVER, base_on_begin=first_base is None)
                    publisher.connect()
                    replica.start()
                    TrainingWorker(model, os.path.join(arm_dir, "worker"), tasks=[publisher],
                                   **quiet).train(source)
            finally:
                replica.stop()
                if publisher is not None:
                    publisher.close()
            if first_base is None:
                first_base = os.path.join(workdir, "batch_model_base")
                shutil.copytree(os.path.join(base_path, "1"), first_base)
            labels, scores, stamps = source.results()
            results[arm] = {"auc": auc(labels, scores),
                            "window_auc": window_aucs(labels, scores, stamps, edges),
                            "examples": int(labels.size),
                            "pushes": publisher.totals["pushes"] if publisher else 0,
                            "rows_pushed": publisher.totals["rows"] if publisher else 0}
            if verbose:
                print(f"  {setup.name} seed {seed} {arm}: AUC {results[arm]['auc']:.4f} "
                      f"({results[arm]['pushes']} pushes)", flush=True)
    finally:
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    results["_window_edges"] = [int(e) for e in edges]
    # How new the online part is to the batch model: share of its examples
    # whose user (first field) / item (second field) the batch part never had.
    results["_unseen_share"] = {
        name: float(np.mean(~np.isin(online_part[name], batch_part[name])))
        for name in setup.categorical[:2]}
    return results
