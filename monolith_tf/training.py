"""The training worker: one loop for batch training on files and online
training on an unbounded stream.

``TrainingWorker(model, model_dir).train(data, ...)`` pulls batches from a
data source and runs the compiled Keras model's own ``train_step`` on each
in a graph (as ``fit`` does; TFRS models included). ``data`` is a bounded
``tf.data.Dataset`` (files, ``epochs`` passes) or any
``monolith_tf.data_source.DataSource``, such as an ``ExampleStream`` of the
examples log. Nothing in the loop depends on whether the data ends: a
bounded source stops at its end, an unbounded one at ``max_steps``,
``max_seconds``, SIGINT/SIGTERM or its own idle timeout. Either way the
worker runs its step tasks' ``finish`` (a final checkpoint among them) and
returns.

The worker is the loop; what happens around the steps are step tasks
(``monolith_tf.step_task.StepTask``), each called after every step and at
the end:
``CheckpointPolicy`` (``monolith_tf.checkpoint_policy``: sparse and dense
saves on their schedules, paired; resume), ``ProgressReporter``
(``monolith_tf.progress``: console and TensorBoard), and any the caller
passes as ``tasks=`` (e.g. a publisher of fresh rows to serving, on a
``monolith_tf.schedule.Schedule`` of its own).

Data time: if a batch's features are a dict holding ``timestamp_feature``
(seconds), the batch's newest timestamp is handed to every HashEmbedding
layer (``data_time``), which stamps the rows it updates; tables expire rows
by this data time, not by the wall clock.

Checkpoints live under ``model_dir``: ``sparse/`` and ``dense/`` (see
``monolith_tf.checkpoint_policy``), ``tensorboard/`` for the scalars. Each
sparse checkpoint's metadata holds the step, examples, data time and the
source's position; on the first ``train`` call the worker resumes from the
best checkpoint pair and hands that position back to the source. Before
restoring, one batch is trained to create every variable (Keras creates
optimizer slots lazily); all its effects are then overwritten.
"""

import collections
import os
import signal
import sys
import threading
import time

import numpy as np
import tensorflow as tf

from monolith_tf import kill_points
from monolith_tf.checkpoint_policy import CheckpointPolicy
from monolith_tf.config import CheckpointConfig, WorkerConfig, field_names, with_options
from monolith_tf.data_source import POSITION_KEY, as_data_source
from monolith_tf.layers import hash_embedding_layers, model_tables
from monolith_tf.progress import ProgressReporter
from monolith_tf.schema import table_file_name
from monolith_tf.step_task import StepTask

keras = tf.keras

STOP_END_OF_DATA = "end_of_data"
STOP_MAX_STEPS = "max_steps"
STOP_MAX_SECONDS = "max_seconds"
STOP_SIGNAL = "signal"


def _batch_size(features):
    """Examples in a batch (int64 scalar tensor), from its first feature."""
    first = tf.nest.flatten(features, expand_composites=False)[0]
    if isinstance(first, tf.RaggedTensor):
        return tf.cast(first.nrows(), tf.int64)
    if isinstance(first, tf.SparseTensor):
        return first.dense_shape[0]
    return tf.shape(first, out_type=tf.int64)[0]


class TrainingWorker:
    """Trains a compiled Keras model from a data source with sparse and
    dense checkpoints, progress logging and TensorBoard (see module doc).

    Args:
      model: a compiled Keras model (Keras 3 or tf_keras) with HashEmbedding
        layers (a model without them trains too, with dense checkpoints only).
        Sparse checkpoints name tables ``<layer name>.<feature>``: give the
        layers explicit names so a rebuilt model finds its tables.
      model_dir: directory of the checkpoints and TensorBoard logs.
      config: ``monolith_tf.config.WorkerConfig``: logging interval,
        timestamp feature, TensorBoard, verbosity, steps in flight.
      checkpoints: ``monolith_tf.config.CheckpointConfig`` (save schedules,
        chain length, retention, resume policy, save failures tolerated), or
        False to write no checkpoint at all (not even at the end) and resume
        from none; TensorBoard and logging still run.
      tasks: more ``StepTask`` instances, run after the built-in ones at
        every step.
      strategy: a ``ParameterServerStrategy`` (``monolith_tf.cluster.connect``)
        under whose scope the model was built: its tables are sharded over
        the PS tasks and each step runs on a worker task; this process (the
        chief) reads the data and runs the step tasks (saves, pushes).
        With ``steps_in_flight`` > 1 the chief issues that many steps before
        waiting for the oldest: every worker stays busy (asynchronous
        training, as Monolith's and TensorFlow's PS training: a step may
        read rows and weights that an earlier step in flight has not
        updated yet); checkpoints still hold exactly the steps they count
        (issuing pauses while one is due).
      options: any field of either config as a keyword
        (``TrainingWorker(model, dir, verbose=0, sparse_every_steps=100)``).
    """

    def __init__(self, model, model_dir, config=None, checkpoints=None, tasks=(), strategy=None,
                 **options):
        worker_options = {k: v for k, v in options.items() if k in field_names(WorkerConfig)}
        config = with_options(config, WorkerConfig, worker_options)
        checkpoint_options = {k: v for k, v in options.items() if k not in worker_options}
        # True or None: the default checkpoints; False: none (options still checked).
        checkpoint_config = with_options(
            checkpoints if isinstance(checkpoints, CheckpointConfig) else None,
            CheckpointConfig, checkpoint_options)
        if checkpoints is False:
            checkpoint_config = None
        if getattr(model, "optimizer", None) is None:
            raise ValueError("TrainingWorker needs a compiled model (call model.compile first)")
        self.config, self.checkpoint_config = config, checkpoint_config
        self.model = model
        self.model_dir = model_dir
        self.strategy = strategy
        self._coordinator = None
        if strategy is not None:
            if not isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy):
                raise ValueError(f"strategy must be a ParameterServerStrategy (monolith_tf."
                                 f"cluster.connect), got {type(strategy).__name__}")
            self._coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
        if config.steps_in_flight > 1 and strategy is None:
            raise ValueError("steps_in_flight > 1 needs a strategy (steps in flight run on "
                             "the workers of a cluster)")
        self.steps_in_flight = config.steps_in_flight
        self.timestamp_feature = config.timestamp_feature
        self.verbose = config.verbose
        self.layers = hash_embedding_layers(model)
        self.tables = model_tables(model)
        self.checkpoint_policy = CheckpointPolicy(
            model_dir, model, {table_file_name(name): t for name, t in self.tables.items()},
            checkpoint_config, warn=self._warn) if checkpoint_config is not None else None
        self.progress = ProgressReporter(
            config.log_every_steps,
            os.path.join(model_dir, "tensorboard") if config.tensorboard else None,
            config.verbose)
        for task in tasks:
            if not isinstance(task, StepTask):
                raise TypeError(f"tasks must be monolith_tf.step_task.StepTask instances, "
                                f"got {type(task).__name__}")
        self.tasks = ([self.progress] + ([self.checkpoint_policy] if self.checkpoint_policy
                                         else []) + list(tasks))
        self._stop_requested = None
        # What step tasks read: the global step, examples so far, the last batch.
        self.step, self.examples = 0, 0
        self.last_batch_size, self.last_step_logs = 0, {}
        self.max_steps = None
        self.source = None
        self._step_function = None
        self._resume_checked = False

    @property
    def last_logs(self):
        """The newest progress report's values (floats)."""
        return self.progress.last_logs

    @property
    def stream_position(self):
        """Log offsets after the last trained batch of an ExampleStream (None
        for other sources or before the first batch)."""
        if self.source is None:
            return None
        return self.source.position().get("stream_position")

    # -- checkpoints --------------------------------------------------------------

    def checkpoint_metadata(self):
        """What a sparse checkpoint records of the run: step, examples, data
        time (seconds) and the data source's position."""
        metadata = {"step": self.step, "examples": self.examples, "data_time": self.data_time}
        if self.source is not None:
            metadata.update(self.source.position())
        return metadata

    def save(self, dense=True):
        """Writes a sparse checkpoint (full every ``full_every``-th save) and,
        with ``dense``, a dense one paired with it; returns the sparse path."""
        if self.checkpoint_policy is None:
            raise ValueError("this worker was created with checkpoints=False")
        return self.checkpoint_policy.save(self.step, self.checkpoint_metadata(), dense=dense)

    def _resume(self, source):
        """On the first train() call, restores the best checkpoint pair and
        hands its position to ``source``; returns the pair's paths or None."""
        if self._resume_checked or self.checkpoint_policy is None:
            return None  # later train() calls continue from memory
        self._resume_checked = True

        def build_variables():
            probe = source.next_segment()
            if probe is not None:
                self._train_next(iter(probe.take(1)))  # overwritten by the restore

        restored = self.checkpoint_policy.restore_best(before_restore=build_variables)
        if restored is None:
            return None
        metadata, paths = restored
        self.step = int(metadata.get("step", 0))
        self.examples = int(metadata.get("examples", 0))
        self._set_data_time(int(metadata.get("data_time", 0)))
        source.restore(metadata)
        self.model.reset_metrics()
        return paths

    def _warn(self, message):
        # Warnings are never silenced: with verbose=0 they go to stderr.
        print(f"monolith_tf.training: {message}", flush=True,
              file=sys.stdout if self.verbose else sys.stderr)

    # -- the loop -----------------------------------------------------------------

    @property
    def data_time(self):
        """Newest data time (seconds) handed to the tables so far."""
        return int(self.layers[0].data_time.numpy()) if self.layers else 0

    def _set_data_time(self, data_time):
        for layer in self.layers:
            layer.reset_data_time(data_time)

    def _batch_time(self, x):
        if self.timestamp_feature and isinstance(x, dict) and self.timestamp_feature in x:
            return tf.reduce_max(tf.cast(x[self.timestamp_feature], tf.int64))
        return None

    def _advance_data_time(self, x):
        newest = self._batch_time(x)
        if newest is not None:
            for layer in self.layers:
                layer.advance_data_time(newest)

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
            # The batch's source position: for the checkpoint, not the model.
            x = dict(x)
            position = x.pop(POSITION_KEY)
            batch = x if y is None else keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
        self._advance_data_time(x)
        return self.model.train_step(batch), _batch_size(x), position

    def _train_next(self, iterator):
        """Trains the iterator's next batch; returns (logs as tensors, batch
        size, batch position), or None at the end of the data."""
        if self._coordinator is not None:
            scheduled = self._schedule_next(iterator)
            if scheduled is None:
                return None
            logs, size, position = scheduled.fetch()
            return logs, int(size), np.asarray(position).tolist()
        if self._step_function is None:
            self._step_function = tf.function(self._compiled_step)
        next_batch = iterator.get_next_as_optional()
        if not next_batch.has_value():
            return None
        logs, size, position = self._step_function(next_batch)
        return logs, int(size), position.numpy().tolist() if position.shape[0] else []

    def _schedule_next(self, iterator):
        """Under ParameterServerStrategy: the chief reads the next batch and
        schedules its step on a worker task (``strategy.run`` inside a
        function the ClusterCoordinator schedules), which reads and updates
        the variables and table shards on the PS tasks. Returns the step's
        RemoteValue, or None at the end of the data."""
        next_batch = iterator.get_next_as_optional()
        if not next_batch.has_value():
            return None
        batch = next_batch.get_value()
        if self._step_function is None:
            def replica_step(batch):
                return self._compiled_step(tf.experimental.Optional.from_value(batch))

            self._step_function = tf.function(
                lambda batch: self.strategy.run(replica_step, args=(batch,)))
        return self._coordinator.schedule(self._step_function, args=(batch,))

    def _may_issue(self, in_flight, max_steps, max_seconds, started):
        """Whether the cluster loop may issue another step with ``in_flight``
        steps issued and not yet counted."""
        if in_flight >= self.steps_in_flight:
            return False
        upcoming = self.step + in_flight
        if self._stop_requested or (max_steps is not None and upcoming >= max_steps) or (
                max_seconds is not None and time.monotonic() - started >= max_seconds):
            return False
        # A task due at the last issued step runs once the pipeline drains.
        return not (in_flight and any(task.due(upcoming) for task in self.tasks
                                      if task.needs_applied_steps))

    def _install_signal_handlers(self):
        self._stop_requested = None
        if threading.current_thread() is not threading.main_thread():
            return {}

        def request_stop(signum, frame):
            self._stop_requested = signal.Signals(signum).name

        return {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}

    def train(self, dataset, epochs=1, max_steps=None, max_seconds=None):
        """Trains on ``dataset`` (a tf.data.Dataset read ``epochs`` times, or
        a DataSource such as an ExampleStream) until the data ends, the
        global step reaches ``max_steps``, ``max_seconds`` of wall time pass
        in this call, or SIGINT/SIGTERM arrives; then the step tasks finish
        (a final checkpoint among them).

        Returns a dict: ``steps`` (global step), ``examples`` (total),
        ``stop_reason``, ``resumed_from`` (checkpoint paths or None) and
        ``logs`` (the last logged metrics).
        """
        source = as_data_source(dataset, epochs)
        if self.source is not None and source is not self.source:
            source.restore(self.source.position())  # a later call continues
        self.source = source
        resumed_from = self._resume(source)
        previous_handlers = self._install_signal_handlers()
        self.max_steps = max_steps
        started = time.monotonic()
        source.begin()
        for task in self.tasks:
            task.begin(self)
        try:
            while not self._stop_reason(max_steps, max_seconds, started):
                segment = source.next_segment()
                if segment is None or not self._train_segment(segment, max_steps, max_seconds,
                                                              started):
                    break
            stop_reason = self._stop_reason(max_steps, max_seconds, started) or STOP_END_OF_DATA
            for task in self.tasks:
                task.finish(self)
        finally:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
        return {"steps": self.step, "examples": self.examples, "stop_reason": stop_reason,
                "resumed_from": resumed_from, "logs": dict(self.last_logs)}

    def _train_segment(self, segment, max_steps, max_seconds, started):
        """Trains the segment's batches, running the step tasks after each;
        returns whether the source has more to read (False at its end)."""
        if self._coordinator is not None and self.steps_in_flight > 1:
            return self._train_segment_pipelined(segment, max_steps, max_seconds, started)
        iterator = iter(segment)
        trained_any = False
        while True:
            trained = self._train_next(iterator)
            if trained is None:
                return self.source.segment_ended(trained_any)
            trained_any = True
            self._count_step(trained, all_applied=True)
            if self._stop_reason(max_steps, max_seconds, started):
                return True  # stopped early: the outer loop sees why

    def _train_segment_pipelined(self, segment, max_steps, max_seconds, started):
        """``_train_segment`` with up to ``steps_in_flight`` steps issued to
        the cluster; steps are counted (and the step tasks run) in the order
        they were issued, and the loop returns only with none in flight."""
        iterator = iter(segment)
        in_flight = collections.deque()
        trained_any = exhausted = False
        while True:
            while not exhausted and self._may_issue(len(in_flight), max_steps, max_seconds,
                                                    started):
                scheduled = self._schedule_next(iterator)
                if scheduled is None:
                    exhausted = True
                else:
                    in_flight.append(scheduled)
            if not in_flight:
                return self.source.segment_ended(trained_any) if exhausted else True
            logs, size, position = in_flight.popleft().fetch()
            trained_any = True
            self._count_step((logs, int(size), np.asarray(position).tolist()),
                             all_applied=not in_flight)

    def _count_step(self, trained, all_applied):
        """Counts a trained step and runs the step tasks; with steps still in
        flight (``all_applied`` False), not those that need every counted
        step applied and nothing more (checkpoints)."""
        self.last_step_logs, self.last_batch_size, batch_position = trained
        self.step += 1
        self.examples += self.last_batch_size
        self.source.batch_trained(batch_position)
        kill_points.reached("worker.step")
        for task in self.tasks:
            if all_applied or not task.needs_applied_steps:
                task.after_step(self)

    def _stop_reason(self, max_steps, max_seconds, started):
        if self._stop_requested:
            return STOP_SIGNAL
        if max_steps is not None and self.step >= max_steps:
            return STOP_MAX_STEPS
        if max_seconds is not None and time.monotonic() - started >= max_seconds:
            return STOP_MAX_SECONDS
        return None
