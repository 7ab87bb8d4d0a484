"""When the training worker saves, what it saves together, and what it
resumes from.

``CheckpointPolicy`` pairs the two kinds of checkpoint under a model dir:
``sparse/`` (every table's rows, ``monolith_tf.sparse_checkpoint``: a full
snapshot every ``full_every`` sparse saves, deltas between) and ``dense/``
(model weights and optimizer state, ``monolith_tf.dense_checkpoint``), each
on its own ``Schedule``. A dense save always writes a sparse save at the
same step first, so the newest dense checkpoint has a sparse partner. Each
sparse manifest records the caller's metadata (the worker's step and data
position).

Resuming, ``resume=``:
  ``"consistent"`` (default): the newest dense checkpoint and the sparse
      checkpoint of the same step. Sparse saves made after it are deleted
      (they belong to a history that is replayed). With a deterministic
      input pipeline the result equals a run that never stopped.
  ``"latest"``: the newest sparse chain (fresher rows, e.g. saved every few
      seconds) with the newest dense checkpoint, which may be older.
  None: existing checkpoints are ignored (the first save is a full one).
A pair that fails to restore (corrupt, or not this model's) is reported and
the next older one is tried.
"""

import os

from monolith_tf import kill_points
from monolith_tf.config import CheckpointConfig
from monolith_tf.dense_checkpoint import DenseCheckpointError, DenseCheckpointer
from monolith_tf.sparse_checkpoint import (CheckpointError, CheckpointSaveError,
                                           SparseCheckpointer, list_checkpoints, read_manifest)
from monolith_tf.schedule import Schedule
from monolith_tf.step_task import StepTask

class CheckpointPolicy(StepTask):
    """Sparse and dense checkpoints of one model, paired (module doc).

    Args:
      model_dir: holds ``sparse/`` and ``dense/``.
      model: the compiled Keras model (dense part).
      tables: ``{file name: HashTable}`` (sparse part).
      config: ``monolith_tf.config.CheckpointConfig``: the two save
        schedules (steps and wall seconds), ``full_every`` (a sparse chain
        holds at most this many checkpoints, a full snapshot then deltas;
        the save after that is full, across restarts too), ``keep_full``
        sparse chains and ``keep_dense`` dense checkpoints kept, ``resume``
        and ``max_save_failures`` (below).
      warn: called with a message for each checkpoint skipped on resume and
        each scheduled save that failed.
      max_save_failures: what a failed scheduled save does (the disk is full,
        say). Training goes on and the save is tried again when next due
        (a failed sparse save makes the next one a full snapshot); after this
        many scheduled saves in a row failed, the last error is raised and
        training stops. The final save (``finish``) is not retried: its error
        is raised. Nothing of a failed save is kept either way.
    """

    def __init__(self, model_dir, model, tables, config=None, warn=print):
        config = config if config is not None else CheckpointConfig()
        self.config = config
        self.max_save_failures = config.max_save_failures
        self.failed_saves = 0  # scheduled saves failed in a row
        self.sparse = SparseCheckpointer(os.path.join(model_dir, "sparse"), tables,
                                         keep_full=config.keep_full)
        self.dense = DenseCheckpointer(os.path.join(model_dir, "dense"), model,
                                       keep=config.keep_dense)
        self.sparse_schedule = Schedule(every_steps=config.sparse_every_steps,
                                        every_secs=config.sparse_every_secs)
        self.dense_schedule = Schedule(every_steps=config.dense_every_steps,
                                       every_secs=config.dense_every_secs)
        self.full_every = int(config.full_every)
        self.resume = config.resume
        self._warn = warn
        self._chain_length = 0   # checkpoints in the sparse chain being extended
        # Steps of the newest sparse and dense saves, and the sparse one's path.
        self._sparse_saved, self._dense_saved, self._sparse_path = -1, -1, None

    def save(self, step, metadata, dense=True):
        """Writes a sparse checkpoint at ``step`` with ``metadata`` (a delta
        unless a full one is due) and, with ``dense``, a dense one paired with
        it; what was saved at this step already is not written again.
        Returns the sparse checkpoint's path."""
        if self._sparse_saved != step:
            full = self._chain_length == 0 or self._chain_length >= self.full_every
            self._sparse_path = self.sparse.save(full=full, metadata=metadata)
            # The checkpointer makes it full after a failed save, whatever was asked.
            full = self._sparse_path.endswith("-full")
            self._chain_length = 1 if full else self._chain_length + 1
            self._sparse_saved = step
            self.sparse_schedule.done(step)
        if dense and self._dense_saved != step:
            kill_points.reached("paired_save.sparse_done")
            self.dense.save(step, int(read_manifest(self._sparse_path)["sequence"]))
            kill_points.reached("dense_save.written")
            self._dense_saved = step
            self.dense_schedule.done(step)
        return self._sparse_path

    def save_if_due(self, step, metadata):
        """Saves what the schedules say is due at ``step`` (dense implies
        sparse). ``metadata`` is called only when a save is due: it reads
        device state, which a step that saves nothing should not pay for."""
        dense = self.dense_schedule.due(step)  # read once: a time schedule moves
        if not (dense or self.sparse_schedule.due(step)):
            return
        try:
            self.save(step, metadata(), dense=dense)
        except CheckpointSaveError as error:
            self.failed_saves += 1
            if self.failed_saves >= self.max_save_failures:
                raise CheckpointSaveError(
                    error.errno, f"{self.failed_saves} scheduled saves in a row failed, "
                    f"stopping; the last: {error.strerror}") from error
            self._warn(f"save at step {step} failed ({self.failed_saves} in a row, stopping "
                       f"at {self.max_save_failures}); training goes on, retrying when the "
                       f"next save is due: {error.strerror}")
            # Retry on the schedule, not at every step.
            self.sparse_schedule.done(step)
            if dense:
                self.dense_schedule.done(step)
            return
        self.failed_saves = 0

    def candidates(self):
        """(dense path or None, sparse path or None) pairs to resume from,
        best first; empty when there is nothing (or resume is None)."""
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

    def restore(self, dense_path, sparse_path):
        """Restores one candidate pair; returns the metadata saved with its
        sparse checkpoint (``{"step": ...}`` from the dense one without it).
        Raises CheckpointError or DenseCheckpointError when it cannot."""
        metadata, applied = {}, None
        if sparse_path is not None:
            upto = sparse_path if self.resume == "consistent" else None
            applied = self.sparse.restore(upto=upto, discard_newer=True)
            metadata = dict(read_manifest(applied)["metadata"])
        if dense_path is not None:
            step, _ = self.dense.restore(dense_path)
            metadata.setdefault("step", step)
        step = int(metadata.get("step", 0))
        self._sparse_saved = step if applied else -1
        self._dense_saved = step if dense_path else -1
        self._sparse_path = applied
        # Continue the restored chain's count, so a full snapshot comes when
        # the chain holds full_every checkpoints however often the run was
        # interrupted (restarting the count would let a chain grow unbounded).
        self._chain_length = len(self.sparse.chain_of(applied)) if applied else 0
        self.sparse_schedule.done(step)
        self.dense_schedule.done(step)
        return metadata

    def restore_best(self, before_restore=None):
        """Restores the best candidate that works; returns ``(metadata,
        {"dense": path, "sparse": path})``, or None when there is none.
        ``before_restore`` runs once before the first attempt (the worker
        builds the model's variables there). Raises CheckpointError when
        candidates exist but none restores."""
        # What an interrupted run left behind goes first.
        self.sparse.remove_partials()
        self.dense.remove_temporaries()
        candidates = self.candidates()
        if not candidates:
            return None
        if before_restore is not None:
            before_restore()
        errors = []
        for dense_path, sparse_path in candidates:
            try:
                metadata = self.restore(dense_path, sparse_path)
            except (CheckpointError, DenseCheckpointError) as error:
                self._warn(f"cannot resume from {dense_path or sparse_path}: {error}")
                errors.append(error)
                continue
            return metadata, {"dense": dense_path, "sparse": sparse_path}
        raise CheckpointError(f"{os.path.dirname(self.sparse.directory)}: no checkpoint could "
                              f"be restored; first error: {errors[0]}")

    # -- a step task of the training worker ----------------------------------

    # A save must hold exactly the steps counted so far: with steps in
    # flight (TrainingWorker's steps_in_flight), the worker calls after_step
    # only once they are all applied, and stops issuing steps while due().
    needs_applied_steps = True

    def due(self, step):
        """Whether a save is due at ``step``."""
        return self.dense_schedule.due(step) or self.sparse_schedule.due(step)

    def after_step(self, worker):
        self.save_if_due(worker.step, worker.checkpoint_metadata)

    def finish(self, worker):
        self.save(worker.step, worker.checkpoint_metadata(), dense=True)
