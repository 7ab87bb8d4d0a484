"""Training progress: a console progress bar or lines, and TensorBoard
scalars, written every ``every_steps`` steps by the training worker.

Each report covers one interval: the model's metrics are reset after it, so
a logged loss or AUC is the interval's, and examples/s is the interval's
throughput. TensorBoard gets ``train/<metric>``, ``train/examples_per_sec``,
``train/data_time`` (seconds) and, per table,
``tables/<table name>/<counter>`` for every stats counter but ``now``.
"""

import time

import tensorflow as tf

from monolith_tf.schema import STATS_FIELDS
from monolith_tf.step_task import StepTask

keras = tf.keras

# "now" is the data time, written once as train/data_time.
_TABLE_COUNTERS = tuple(field for field in STATS_FIELDS if field != "now")


class ProgressReporter(StepTask):
    """Reports progress of a TrainingWorker (module doc); a step task.

    Args:
      every_steps: report interval in steps (>= 1).
      log_dir: TensorBoard directory, or None for no TensorBoard.
      verbose: 0 silent, 1 progress bar, 2 one line per report.
    """

    def __init__(self, every_steps=100, log_dir=None, verbose=1):
        if every_steps < 1:
            raise ValueError(f"every_steps must be >= 1, got {every_steps!r}")
        self.every_steps = int(every_steps)
        self.verbose = verbose
        self._writer = tf.summary.create_file_writer(log_dir) if log_dir else None
        #: The newest report's values (floats), including examples_per_sec.
        self.last_logs = {}
        self._progbar = None
        self._interval_start, self._interval_examples = time.monotonic(), 0

    def begin(self, worker):
        self._progbar = None
        self._interval_start, self._interval_examples = time.monotonic(), 0

    def after_step(self, worker):
        self._interval_examples += worker.last_batch_size
        if worker.step % self.every_steps == 0:
            self._report(worker)

    def finish(self, worker):
        if self._interval_examples:
            self._report(worker)
        if self._writer is not None:
            self._writer.flush()
        if self._progbar is not None:
            print()
            self._progbar = None

    def _report(self, worker):
        seconds = time.monotonic() - self._interval_start
        logs = {name: float(value) for name, value in worker.last_step_logs.items()}
        logs["examples_per_sec"] = self._interval_examples / seconds if seconds > 0 else 0.0
        self.last_logs = logs
        self._interval_start, self._interval_examples = time.monotonic(), 0
        worker.model.reset_metrics()
        if self._writer is not None:
            self._write_scalars(worker, logs)
        if self.verbose == 1:
            if self._progbar is None:
                # Values are already per interval: shown as they are, not averaged.
                self._progbar = keras.utils.Progbar(worker.max_steps, stateful_metrics=list(logs),
                                                    unit_name="step")
            self._progbar.update(worker.step, list(logs.items()))
        elif self.verbose == 2:
            shown = "  ".join(f"{k} {v:.4g}" for k, v in logs.items())
            print(f"step {worker.step}  examples {worker.examples}  {shown}", flush=True)

    def _write_scalars(self, worker, logs):
        with self._writer.as_default(step=worker.step):
            for name, value in logs.items():
                tf.summary.scalar(f"train/{name}", value)
            for table_name, table in worker.tables.items():
                stats = table.stats()
                for field in _TABLE_COUNTERS:
                    tf.summary.scalar(f"tables/{table_name}/{field}", stats[field])
            tf.summary.scalar("train/data_time", worker.data_time)
        self._writer.flush()
