"""Named kill points for crash tests, as RocksDB's crash tests use them: a
process started with ``MONOLITH_TF_KILL_AT=<point>:<n>`` kills itself with
SIGKILL the n-th time it passes kill point ``<point>`` (n counts from 1), so
a test can crash a worker or a joiner exactly inside a save or a push and
check what a restart recovers. Unset (always, outside tests), a kill point
costs one comparison.

The points, where they sit, and what is on disk when they fire:
  worker.step              a batch trained, before the step tasks (saves, pushes)
  sparse_save.table        one table's files written in ``.partial-*``
  sparse_save.manifest     all files and the manifest written, not yet renamed
  sparse_save.renamed      renamed into place, before older chains are pruned
  paired_save.sparse_done  a paired save's sparse half written, dense not yet
  dense_save.written       TensorFlow's dense checkpoint written and indexed,
                           before the worker records it
  sync.rows_record         a row push's record produced, the rest of the push not
  sync.rows_pushed         a row push flushed, before the dense push due with it
  joiner.emitted           an example produced, before the next checkpoint
  joiner.snapshot          snapshot written to its temporary file, not renamed
  joiner.committed         snapshot in place, input offsets committed
"""

import os
import signal

ENVIRONMENT_VARIABLE = "MONOLITH_TF_KILL_AT"


def _target():
    value = os.environ.get(ENVIRONMENT_VARIABLE)
    if not value:
        return None
    name, _, count = value.rpartition(":")
    if not name or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{ENVIRONMENT_VARIABLE} must be <point>:<n>, n >= 1, got {value!r}")
    return name, int(count)


_TARGET = _target()
_passes = 0


def reached(point):
    """Marks that the process passed ``point``; kills it if this is the pass
    ``MONOLITH_TF_KILL_AT`` names."""
    global _passes
    if _TARGET is None or point != _TARGET[0]:
        return
    _passes += 1
    if _passes == _TARGET[1]:
        os.kill(os.getpid(), signal.SIGKILL)
