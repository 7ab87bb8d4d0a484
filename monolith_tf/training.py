"""The training worker: one loop for batch training on files and online
training on an unbounded stream.

``TrainingWorker(model, model_dir).train(dataset, ...)`` pulls batches from a
``tf.data.Dataset`` and trains the compiled Keras model on each with
``model.train_on_batch`` (so the model's own ``train_step`` runs, TFRS models
included). Nothing in the loop depends on whether the dataset ends: a
bounded one (files, ``epochs`` passes) stops at its end, an unbounded one
(a stream) at ``max_steps``, ``max_seconds`` or SIGINT/SIGTERM. Either way
the worker saves a final checkpoint and returns.

Data time: if a batch's features are a dict holding ``timestamp_feature``
(seconds), the batch's newest timestamp is handed to every HashEmbedding
layer (``data_time``), which stamps the rows it updates; tables expire rows
by this data time, not by the wall clock.

Checkpoints live under ``model_dir``:
  ``sparse/``  every table's rows (monolith_tf.sparse_checkpoint): a full
               snapshot every ``full_every`` sparse saves, deltas between;
  ``dense/``   model weights and optimizer state (monolith_tf.dense_checkpoint);
  ``tensorboard/`` scalars: loss and metrics, examples/s, and per table size,
               admitted, rejected, evicted and memory bytes.
A dense save always writes a sparse save at the same step first, so the
newest dense checkpoint has a sparse partner. Each sparse manifest records
the step and the data position (epoch, batches into it, examples).

Resuming (at the start of ``train``), ``resume=``:
  ``"consistent"`` (default): the newest dense checkpoint and the sparse
      checkpoint of the same step; training continues from that step's data
      position. Sparse saves made after it are deleted (they belong to a
      history that is replayed). With a deterministic input pipeline the
      result equals a run that never stopped.
  ``"latest"``: the newest sparse chain (fresher rows, e.g. saved every few
      seconds) with the newest dense checkpoint, which may be older; data
      continues from the sparse save's position.
Data position is restored by skipping the batches already consumed in the
current epoch (``dataset.skip``), so the pipeline must yield the same
batches in the same order when rebuilt (seeded shuffles with
``reshuffle_each_iteration=False``, or none); skipping reads the skipped
batches. Before restoring, one batch is trained to create every variable
(Keras creates optimizer slots lazily); all its effects are then
overwritten. A checkpoint that fails to restore (corrupt, or not this
model's) is reported and the next older one is tried.

Streams from a log: pass a ``monolith_tf.streaming.dataset.ExampleStream``
instead of a dataset. Its batches carry their log offsets, which the worker
saves with each sparse checkpoint (``stream_position``) and resumes from
(no skipping); it ends only at its idle_timeout, a budget or a signal.
"""

import inspect
import os
import signal
import threading
import time

import tensorflow as tf

from monolith_tf.dense_checkpoint import DenseCheckpointError, DenseCheckpointer
from monolith_tf.layers import hash_embedding_layers, model_tables
from monolith_tf.schema import STATS_FIELDS, table_file_name
from monolith_tf.sparse_checkpoint import (CheckpointError, SparseCheckpointer,
                                           list_checkpoints, read_manifest)
from monolith_tf.streaming.dataset import POSITION_KEY, ExampleStream

keras = tf.keras

STOP_END_OF_DATA = "end_of_data"
STOP_MAX_STEPS = "max_steps"
STOP_MAX_SECONDS = "max_seconds"
STOP_SIGNAL = "signal"
# Table counters written to TensorBoard; "now" is written once, as data_time.
_TABLE_STATS = tuple(field for field in STATS_FIELDS if field != "now")


class Schedule:
    """Fires every ``steps`` steps or every ``seconds`` seconds of wall time,
    whichever comes first; both None means never."""

    def __init__(self, steps=None, seconds=None):
        for name, value in (("steps", steps), ("seconds", seconds)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 or None (off), got {value!r}")
        self.steps, self.seconds = steps, seconds
        self._last_step, self._last_time = 0, time.monotonic()

    def due(self, step):
        """Whether a save is due at ``step``."""
        return bool((self.steps and step - self._last_step >= self.steps) or
                    (self.seconds and time.monotonic() - self._last_time >= self.seconds))

    def done(self, step):
        """Records that the scheduled action ran at ``step``."""
        self._last_step, self._last_time = step, time.monotonic()


def _batch_size(features):
    """Examples in a batch (int64 scalar tensor), from its first feature."""
    first = tf.nest.flatten(features, expand_composites=False)[0]
    if isinstance(first, tf.RaggedTensor):
        return tf.cast(first.nrows(), tf.int64)
    if isinstance(first, tf.SparseTensor):
        return first.dense_shape[0]
    return tf.shape(first, out_type=tf.int64)[0]


class TrainingWorker:
    """Trains a compiled Keras model from a tf.data.Dataset with sparse and
    dense checkpoints, progress logging and TensorBoard (see module doc).

    Args:
      model: a compiled Keras model (Keras 3 or tf_keras) with HashEmbedding
        layers (a model without them trains too, with dense checkpoints only).
        Sparse checkpoints name tables ``<layer name>.<feature>``: give the
        layers explicit names so a rebuilt model finds its tables.
      model_dir: directory of the checkpoints and TensorBoard logs.
      sparse_every_steps / sparse_every_secs: sparse save schedule (a delta
        unless a full one is due).
      dense_every_steps / dense_every_secs: dense save schedule (each also
        writes a sparse save).
      full_every: every n-th sparse save is a full snapshot.
      checkpoints: False writes no checkpoint at all (not even at the end)
        and resumes from none; TensorBoard and logging still run.
      keep_full: full sparse chains to keep. keep_dense: dense checkpoints.
      resume: ``"consistent"`` or ``"latest"`` (module doc), or None to
        ignore existing checkpoints (the first save is then a full one).
      log_every_steps: progress, metrics and TensorBoard interval; metrics
        are reset after each, so each logged value covers one interval.
      timestamp_feature: name of the data-time feature (seconds) in dict
        features, or None.
      tensorboard: write TensorBoard scalars.
      verbose: 0 silent, 1 progress bar, 2 one line per log interval.
    """

    def __init__(self, model, model_dir, sparse_every_steps=None, sparse_every_secs=60.0,
                 dense_every_steps=None, dense_every_secs=600.0, full_every=10,
                 keep_full=2, keep_dense=3, resume="consistent", log_every_steps=100,
                 timestamp_feature="timestamp", tensorboard=True, verbose=1,
                 checkpoints=True):
        if getattr(model, "optimizer", None) is None:
            raise ValueError("TrainingWorker needs a compiled model (call model.compile first)")
        if resume not in ("consistent", "latest", None):
            raise ValueError(f"resume must be 'consistent', 'latest' or None, got {resume!r}")
        if full_every < 1 or log_every_steps < 1:
            raise ValueError("full_every and log_every_steps must be >= 1")
        self.model = model
        self.model_dir = model_dir
        self.checkpoints = bool(checkpoints)
        self.resume = resume if checkpoints else None
        self.full_every = int(full_every)
        self.log_every_steps = int(log_every_steps)
        self.timestamp_feature = timestamp_feature
        self.verbose = verbose
        self.layers = hash_embedding_layers(model)
        self.tables = model_tables(model)
        self.sparse = SparseCheckpointer(
            os.path.join(model_dir, "sparse"),
            {table_file_name(name): table for name, table in self.tables.items()},
            keep_full=keep_full)
        self.dense = DenseCheckpointer(os.path.join(model_dir, "dense"), model, keep=keep_dense)
        self._sparse_schedule = Schedule(sparse_every_steps, sparse_every_secs)
        self._dense_schedule = Schedule(dense_every_steps, dense_every_secs)
        self._writer = (tf.summary.create_file_writer(os.path.join(model_dir, "tensorboard"))
                        if tensorboard else None)
        self._sparse_saves = 0
        # Steps of the newest sparse and dense saves, and the sparse one's path.
        self._sparse_saved, self._dense_saved, self._sparse_path = -1, -1, None
        self._stop_requested = None
        # Position of the next batch to train.
        self.step, self.epoch, self.batch_in_epoch, self.examples = 0, 0, 0, 0
        self.last_logs = {}
        # Log offsets after the last trained batch of an ExampleStream.
        self.stream_position = None
        self._step_function = None
        self._resume_checked = False

    # -- position and checkpoints -------------------------------------------------

    def _position(self):
        position = {"step": self.step, "epoch": self.epoch,
                    "batch_in_epoch": self.batch_in_epoch, "examples": self.examples,
                    "data_time": self.data_time}
        if self.stream_position is not None:
            position["stream_position"] = [int(o) for o in self.stream_position]
        return position

    def save(self, dense=True):
        """Writes a sparse checkpoint (full every ``full_every``-th save) and,
        with ``dense``, a dense one paired with it; returns the sparse path."""
        if self._sparse_saved != self.step:
            full = self._sparse_saves % self.full_every == 0
            path = self.sparse.save(full=full, metadata=self._position())
            self._sparse_saves += 1
            self._sparse_saved = self.step
            self._sparse_path = path
            self._sparse_schedule.done(self.step)
        if dense and self._dense_saved != self.step:
            self.dense.save(self.step, int(read_manifest(self._sparse_path)["sequence"]))
            self._dense_saved = self.step
            self._dense_schedule.done(self.step)
        return self._sparse_path

    def _resume_candidates(self):
        """(dense path or None, sparse path or None) pairs to try, best first."""
        if self.resume is None:
            return []
        dense_paths = self.dense.checkpoints()[::-1]
        if self.resume == "latest":
            chains = self.sparse.chains()  # reads every manifest: once
            newest_sparse = chains[0][-1] if chains else None
            if newest_sparse is None and not dense_paths:
                return []
            return [(dense, newest_sparse) for dense in dense_paths] or [(None, newest_sparse)]
        sparse_by_sequence = {seq: path for seq, _, path in list_checkpoints(self.sparse.directory)}
        candidates = []
        for dense_path in dense_paths:
            try:
                _, sequence = self.dense.peek(dense_path)
            except DenseCheckpointError as error:
                self._warn(f"skipping {error}")
                continue
            if sequence in sparse_by_sequence:
                candidates.append((dense_path, sparse_by_sequence[sequence]))
            else:
                self._warn(f"skipping {dense_path}: its sparse checkpoint (sequence "
                           f"{sequence}) is gone")
        return candidates

    def _restore(self, dense_path, sparse_path):
        position, applied = {}, None
        if sparse_path is not None:
            upto = sparse_path if self.resume == "consistent" else None
            applied = self.sparse.restore(upto=upto, discard_newer=True)
            position = read_manifest(applied)["metadata"]
        if dense_path is not None:
            step, _ = self.dense.restore(dense_path)
            position.setdefault("step", step)
        self.step = int(position.get("step", 0))
        self.epoch = int(position.get("epoch", 0))
        self.batch_in_epoch = int(position.get("batch_in_epoch", 0))
        self.stream_position = position.get("stream_position")
        self.examples = int(position.get("examples", 0))
        self._set_data_time(int(position.get("data_time", 0)))
        self._sparse_saved = self.step if applied else -1
        self._dense_saved = self.step if dense_path else -1
        self._sparse_path = applied
        self._sparse_saves = 1  # the next sparse save is a delta on the restored chain
        self._sparse_schedule.done(self.step)
        self._dense_schedule.done(self.step)

    def _resume(self, dataset):
        """On the first train() call, restores the best checkpoint pair;
        returns it, or None to start fresh."""
        if self._resume_checked:
            return None  # later train() calls continue from memory
        self._resume_checked = True
        candidates = self._resume_candidates()
        if not candidates:
            return None
        self._train_next(iter(dataset.take(1)))  # creates every variable; overwritten below
        errors = []
        for dense_path, sparse_path in candidates:
            try:
                self._restore(dense_path, sparse_path)
            except (CheckpointError, DenseCheckpointError) as error:
                self._warn(f"cannot resume from {dense_path or sparse_path}: {error}")
                errors.append(error)
                continue
            self.model.reset_metrics()
            return {"dense": dense_path, "sparse": sparse_path}
        raise CheckpointError(f"{self.model_dir}: no checkpoint could be restored; first "
                              f"error: {errors[0]}")

    def _warn(self, message):
        if self.verbose:
            print(f"monolith_tf.training: {message}", flush=True)

    # -- the loop -----------------------------------------------------------------

    @property
    def data_time(self):
        """Newest data time (seconds) handed to the tables so far."""
        return int(self.layers[0].data_time.numpy()) if self.layers else 0

    def _set_data_time(self, data_time):
        for layer in self.layers:
            layer.data_time.assign(data_time)

    def _batch_time(self, x):
        if self.timestamp_feature and isinstance(x, dict) and self.timestamp_feature in x:
            return tf.reduce_max(tf.cast(x[self.timestamp_feature], tf.int64))
        return None

    def _advance_data_time(self, x):
        newest = self._batch_time(x)
        if newest is not None:
            for layer in self.layers:
                layer.data_time.assign(tf.maximum(tf.convert_to_tensor(layer.data_time), newest))

    def _compiled_step(self, next_batch):
        """One training step in a graph: the batch, its data time, then the
        model's train_step. ``next_batch`` is a tf.experimental.Optional
        holding the batch: one variant tensor, so the batch's tensors never
        pass through Python (as fast as fit), while the end of the data is
        seen before the step starts (a step run on an exhausted iterator
        would still run its stateful ops that do not read the batch)."""
        batch = next_batch.get_value()
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
        position = tf.zeros([0], tf.int64)
        if isinstance(x, dict) and POSITION_KEY in x:
            # An ExampleStream's log offsets: for the checkpoint, not the model.
            x = dict(x)
            position = x.pop(POSITION_KEY)
            batch = x if y is None else keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
        self._advance_data_time(x)
        return self.model.train_step(batch), _batch_size(x), position

    def _train_next(self, iterator):
        """Trains the iterator's next batch; returns (logs as tensors, batch
        size), or None at the end of the data."""
        if self._step_function is None:
            self._step_function = tf.function(self._compiled_step)
        next_batch = iterator.get_next_as_optional()
        if not next_batch.has_value():
            return None
        logs, size, position = self._step_function(next_batch)
        if position.shape[0]:
            self.stream_position = position.numpy().tolist()
        return logs, int(size)

    def _install_signal_handlers(self):
        self._stop_requested = None
        if threading.current_thread() is not threading.main_thread():
            return {}

        def request_stop(signum, frame):
            self._stop_requested = signal.Signals(signum).name

        return {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}

    def train(self, dataset, epochs=1, max_steps=None, max_seconds=None):
        """Trains on ``dataset`` (a tf.data.Dataset, or an ExampleStream of a
        log) until the data ends (after ``epochs`` passes), the global
        step reaches ``max_steps``, ``max_seconds`` of wall time pass in this
        call, or SIGINT/SIGTERM arrives; saves a final checkpoint.

        Returns a dict: ``steps`` (global step), ``examples`` (total),
        ``stop_reason``, ``resumed_from`` (checkpoint paths or None) and
        ``logs`` (the last logged metrics).
        """
        stream = dataset if isinstance(dataset, ExampleStream) else None
        if stream is None and not isinstance(dataset, tf.data.Dataset):
            raise TypeError("dataset must be a tf.data.Dataset or an ExampleStream, got "
                            f"{type(dataset).__name__}")
        resumed_from = self._resume(stream.dataset() if stream else dataset)
        previous_handlers = self._install_signal_handlers()
        started = interval_start = time.monotonic()
        interval_examples = 0
        self._progbar = None
        stop_reason = STOP_END_OF_DATA
        try:
            quiet_since = time.monotonic()
            while self.epoch < epochs and not self._stop_reason(max_steps, max_seconds, started):
                if stream is not None:
                    # One segment: what the log holds and receives until it is
                    # quiet for stream.max_wait; then stops are checked here
                    # (signals included) and the next segment reads on.
                    epoch_data = stream.dataset(self.stream_position)
                elif self.batch_in_epoch:
                    epoch_data = dataset.skip(self.batch_in_epoch)
                else:
                    epoch_data = dataset
                iterator = iter(epoch_data)
                trained_any = False
                while True:
                    trained = self._train_next(iterator)
                    if trained is None:
                        break
                    trained_any = True
                    logs, size = trained
                    self.step += 1
                    self.batch_in_epoch += 1
                    self.examples += size
                    interval_examples += size
                    if self.step % self.log_every_steps == 0:
                        self._log(logs, interval_examples, time.monotonic() - interval_start,
                                  max_steps)
                        interval_start, interval_examples = time.monotonic(), 0
                    self._maybe_save()
                    if self._stop_reason(max_steps, max_seconds, started):
                        break
                if stream is not None:
                    now = time.monotonic()
                    if trained_any:
                        quiet_since = now
                    elif (stream.idle_timeout is not None
                          and now - quiet_since >= stream.idle_timeout):
                        break  # the stream went quiet: not an epoch, just the end
                elif trained is None:
                    self.epoch += 1
                    self.batch_in_epoch = 0
            stop_reason = self._stop_reason(max_steps, max_seconds, started) or STOP_END_OF_DATA
            if interval_examples:
                self._log(logs, interval_examples, time.monotonic() - interval_start, max_steps)
            if self.checkpoints:
                self.save(dense=True)  # a no-op for what was saved at this step
        finally:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            if self._writer is not None:
                self._writer.flush()
        if self._progbar is not None:
            print()
        return {"steps": self.step, "examples": self.examples, "stop_reason": stop_reason,
                "resumed_from": resumed_from, "logs": dict(self.last_logs)}

    def _stop_reason(self, max_steps, max_seconds, started):
        if self._stop_requested:
            return STOP_SIGNAL
        if max_steps is not None and self.step >= max_steps:
            return STOP_MAX_STEPS
        if max_seconds is not None and time.monotonic() - started >= max_seconds:
            return STOP_MAX_SECONDS
        return None

    def _maybe_save(self):
        if not self.checkpoints:
            return
        if self._dense_schedule.due(self.step):
            self.save(dense=True)
        elif self._sparse_schedule.due(self.step):
            self.save(dense=False)

    def _log(self, logs, examples, seconds, max_steps):
        logs = {name: float(value) for name, value in logs.items()}
        logs["examples_per_sec"] = examples / seconds if seconds > 0 else 0.0
        self.last_logs = logs
        self.model.reset_metrics()
        if self._writer is not None:
            with self._writer.as_default(step=self.step):
                for name, value in logs.items():
                    tf.summary.scalar(f"train/{name}", value)
                for table_name, table in self.tables.items():
                    stats = table.stats()
                    for field in _TABLE_STATS:
                        tf.summary.scalar(f"tables/{table_name}/{field}", stats[field])
                tf.summary.scalar("train/data_time", self.data_time)
            self._writer.flush()
        if self.verbose == 1:
            if self._progbar is None:
                # Values are already per interval: shown as they are, not averaged.
                self._progbar = keras.utils.Progbar(max_steps, stateful_metrics=list(logs),
                                                    unit_name="step")
            self._progbar.update(self.step, list(logs.items()))
        elif self.verbose == 2:
            shown = "  ".join(f"{k} {v:.4g}" for k, v in logs.items())
            print(f"step {self.step}  examples {self.examples}  {shown}", flush=True)
