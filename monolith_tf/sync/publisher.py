"""Parameter sync, trainer side: ``SyncPublisher``, a step task of the
training worker that pushes fresh parameters to the sync stream.

On its own schedules (wall time, ``..._every_secs``, or data time,
``..._every_data_secs``, for replays faster than real time), beside and
independent of checkpoints:

- every ``sparse_every_secs``: for each table, the current values of the
  rows inserted or updated since the previous push and the ids removed or
  evicted since (``HashTable.take_sync_changes``: a record of its own, so
  pushes and delta checkpoints never clear each other's changes; its cost
  follows the changed rows). Large pushes are split into records of at most
  ``max_record_bytes``. Rows may travel as float16 (``row_dtype``).
- every ``dense_sync_every_secs``: all dense weights as a new dense version.
- a **base version**: a full serving export written as the next version of
  ``model_base_path`` (``export_version``), recording the stream offsets it
  covers (``assets.extra/monolith_sync.json``), so replicas start from it and
  replay only what follows, and older records may be dropped. One is written
  when training begins (a restarted trainer thus republishes its whole
  state; later ``train`` calls of the same worker do not), then at every
  dense push (or every ``base_every_secs``); the
  newest ``keep_bases`` versions are kept.

Records are ``monolith_tf.sync.records`` (documented, versioned, no
pickle) on one partition of ``topic``, so every replica applies them in
order. A push runs between steps: training waits for it (milliseconds for
thousands of rows; a base export takes as long as an export).
"""

import os
import shutil
import socket
import time

import numpy as np
import tensorflow as tf

from monolith_tf import kill_points
from monolith_tf.config import SyncConfig, with_options
from monolith_tf.export import dense_variables, export_version
from monolith_tf.export_format import list_versions, read_sync_state, sync_state, version_path
from monolith_tf.layers import hash_embedding_layers
from monolith_tf.schedule import Schedule
from monolith_tf.step_task import StepTask
from monolith_tf.sync.records import DensePush, RowsPush, encode_dense, encode_rows


class SyncPublisher(StepTask):
    """Pushes a training worker's rows and dense weights (module doc).

    Args:
      log: a ``monolith_tf.streaming`` log (embedded or Kafka).
      model_base_path: where base versions go (the servers' base path).
      config: ``monolith_tf.config.SyncConfig`` (topic, schedules, row
        dtype, record size, bases kept); its fields may also be given as
        keyword options (``sparse_every_secs=1.0``). The topic is created
        with one partition if missing.
      export_options: passed to ``export_saved_model`` for base versions.
      log_dir: TensorBoard scalars (rows pushed, bytes, push time) go here.
      publisher_id: names this trainer in the records (default host:pid).
      base_on_begin: publish a base version when training begins (default).
        False only where replicas already serve exactly the model being
        trained from a base with this topic's offsets (e.g. one copied from
        a run that starts from the same state): begin then only starts the
        change records.
    """

    def __init__(self, log, model_base_path, config=None, export_options=None, log_dir=None,
                 publisher_id=None, base_on_begin=True, **options):
        config = with_options(config, SyncConfig, options)
        self.config = config
        self.log, self.model_base_path, self.topic = log, model_base_path, config.topic
        self.sparse_schedule = Schedule(every_secs=config.sparse_every_secs,
                                        every_data_secs=config.sparse_every_data_secs)
        if not self.sparse_schedule.active:
            raise ValueError("give sparse_every_secs or sparse_every_data_secs")
        dense = Schedule(every_secs=config.dense_every_secs,
                         every_data_secs=config.dense_every_data_secs)
        self.dense_schedule = dense if dense.active else None
        self.base_schedule = (Schedule(every_secs=config.base_every_secs)
                              if config.base_every_secs else None)
        self.row_dtype = config.row_dtype
        self.export_options = dict(export_options or {})
        self.max_record_bytes = config.max_record_bytes
        self.keep_bases = config.keep_bases
        self.base_on_begin = base_on_begin
        self.publisher_id = publisher_id or f"{socket.gethostname()}:{os.getpid()}"
        self._writer = tf.summary.create_file_writer(log_dir) if log_dir else None
        self._producer = None
        self._begun = False
        self.push = 0
        self.dense_version = 0
        self.totals = {"pushes": 0, "rows": 0, "removed": 0, "bytes": 0, "dense_pushes": 0,
                       "bases": 0}

    # ---------------------------------------------------------- step task

    def begin(self, worker):
        """The first time: starts the change records and publishes a base
        version unless ``base_on_begin`` is False (later train() calls of the
        same worker continue the records)."""
        if self._begun:
            return
        self._begun = True
        self.connect()
        newest = list_versions(self.model_base_path)
        if newest:  # continue the numbering of a previous run
            state = read_sync_state(version_path(self.model_base_path, newest[-1])) or {}
            self.push = max(self.push, int(state.get("push", 0)))
            self.dense_version = max(self.dense_version, int(state.get("dense_version", 0)))
        for table in worker.tables.values():
            table.take_sync_changes()  # the first call starts the record
        if self.base_on_begin:
            self.publish_base(worker)
        self.sparse_schedule.done(worker.step, worker.data_time)
        if self.dense_schedule:
            self.dense_schedule.done(worker.step, worker.data_time)

    def after_step(self, worker):
        step, data_time = worker.step, worker.data_time
        if self.dense_schedule and self.dense_schedule.due(step, data_time):
            # Rows first: a dense version reaches replicas after the rows
            # trained with it (a row push due now is never skipped).
            self.push_rows(worker)
            kill_points.reached("sync.rows_pushed")
            self.push_dense(worker)
            if self.base_schedule is None:
                self.publish_base(worker, dense_version=self.dense_version)
        elif self.base_schedule and self.base_schedule.due(step, data_time):
            self.publish_base(worker)
        elif self.sparse_schedule.due(step, data_time):
            self.push_rows(worker)

    def finish(self, worker):
        """Pushes the rows changed since the last push."""
        self.push_rows(worker)
        if self._writer is not None:
            self._writer.flush()

    def connect(self):
        """Creates the topic (one partition) if missing and the producer."""
        if self.topic not in self.log.topics():
            self.log.create_topic(self.topic, 1)
        if self._producer is None:
            self._producer = self.log.producer()

    # ------------------------------------------------------------- pushes

    def push_rows(self, worker):
        """Pushes every table's changed rows and removed ids (one push, one
        or more records per table with changes). Returns the push's counts."""
        started = time.perf_counter()
        self.push += 1
        counts = {"rows": 0, "removed": 0, "bytes": 0, "records": 0}
        data_time = worker.data_time
        for name, table in worker.tables.items():
            changes = {k: v.numpy() for k, v in table.take_sync_changes().items()}
            ids, values, removed = changes["keys"], changes["values"], changes["removed"]
            if not len(ids) and not len(removed):
                continue
            row_bytes = 8 + values.shape[1] * (2 if self.row_dtype == "float16" else 4)
            per_record = max(1, self.max_record_bytes // row_bytes)
            starts = range(0, max(len(ids), 1), per_record)
            for i, start in enumerate(starts):
                push = RowsPush(table=name, ids=ids[start:start + per_record],
                                values=values[start:start + per_record],
                                removed=removed if i == 0 else np.zeros(0, np.int64),
                                publisher=self.publisher_id, push=self.push, step=worker.step,
                                data_time=data_time, row_dtype=self.row_dtype)
                record = encode_rows(push)
                self._producer.produce(self.topic, record, key=name.encode(), partition=0)
                kill_points.reached("sync.rows_record")
                counts["bytes"] += len(record)
                counts["records"] += 1
            counts["rows"] += len(ids)
            counts["removed"] += len(removed)
        self._producer.flush()
        counts["seconds"] = time.perf_counter() - started
        self.sparse_schedule.done(worker.step, data_time)
        self._record(worker, counts)
        return counts

    def push_dense(self, worker):
        """Pushes all dense weights as the next dense version; returns it."""
        started = time.perf_counter()
        self.push += 1
        self.dense_version += 1
        weights = [v.numpy() for v in
                   dense_variables(worker.model, hash_embedding_layers(worker.model))]
        record = encode_dense(DensePush(version=self.dense_version, weights=weights,
                                        publisher=self.publisher_id, push=self.push,
                                        step=worker.step, data_time=worker.data_time))
        self._producer.produce(self.topic, record, key=b"dense", partition=0)
        self._producer.flush()
        if self.dense_schedule:
            self.dense_schedule.done(worker.step, worker.data_time)
        self.totals["dense_pushes"] += 1
        if self._writer is not None:
            with self._writer.as_default(step=worker.step):
                tf.summary.scalar("sync/dense_bytes", len(record))
                tf.summary.scalar("sync/dense_push_seconds", time.perf_counter() - started)
        return self.dense_version

    def publish_base(self, worker, dense_version=None):
        """Pushes pending rows, then exports the model as the next version of
        the base path with the stream offsets it covers. Its dense weights
        are ``dense_version`` (default: a new dense version). Returns the
        version number."""
        self.push_rows(worker)
        if dense_version is None:
            self.dense_version += 1
            dense_version = self.dense_version
        state = sync_state(self.topic, self.log.end_offsets(self.topic), self.push, worker.step,
                           worker.data_time, dense_version, self.publisher_id, time.time())
        version = export_version(worker.model, self.model_base_path, sync_state=state,
                                 dense_version=dense_version, **self.export_options)
        self.totals["bases"] += 1
        for old in list_versions(self.model_base_path)[:-self.keep_bases]:
            shutil.rmtree(version_path(self.model_base_path, old), ignore_errors=True)
        if self.base_schedule:
            self.base_schedule.done(worker.step, worker.data_time)
        return version

    def _record(self, worker, counts):
        self.totals["pushes"] += 1
        for key in ("rows", "removed", "bytes"):
            self.totals[key] += counts[key]
        if self._writer is not None and (counts["rows"] or counts["removed"]):
            with self._writer.as_default(step=worker.step):
                tf.summary.scalar("sync/rows_pushed", counts["rows"])
                tf.summary.scalar("sync/ids_removed", counts["removed"])
                tf.summary.scalar("sync/push_bytes", counts["bytes"])
                tf.summary.scalar("sync/push_seconds", counts["seconds"])

    def close(self):
        """Flushes and closes the producer."""
        if self._producer is not None:
            self._producer.close()
            self._producer = None
