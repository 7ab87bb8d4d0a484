"""``EmbeddingTable``: what every table implementation provides.

``monolith_tf.table.HashTable`` (one table, one resource) and
``monolith_tf.sharded_table.ShardedHashTable`` (a table split by id over
shards, e.g. on parameter-server tasks) both implement it, and the layers,
the checkpointers, the sync publisher and the export use tables only
through it. ``tests/test_table_conformance.py`` runs one suite over every
implementation.
"""

from typing import Protocol, runtime_checkable


@runtime_checkable
class EmbeddingTable(Protocol):
    """A collisionless embedding table (module doc). Tensors in, tensors out;
    ids are int64, rows float32 ``[n, dim]``, times seconds of data time."""

    @property
    def dim(self):
        """Floats per row."""

    @property
    def state_dim(self):
        """Optimizer state floats per row."""

    def lookup(self, ids, training=False):
        """Rows of ``ids`` (any shape), ``ids.shape + [dim]``; training
        lookups insert unseen (admitted) ids, serving ones read zeros."""

    def apply_gradients(self, ids, grads, learning_rate, timestamps=0):
        """One optimizer step on the rows of ``ids`` (duplicates summed)."""

    def assign(self, ids, values):
        """Inserts or overwrites the embeddings of ``ids``."""

    def remove(self, ids):
        """Removes ``ids``; returns how many were present."""

    def size(self):
        """Number of rows."""

    def stats(self):
        """Counters (``monolith_tf.schema.STATS_FIELDS``) as int64 scalars."""

    def evict_expired(self):
        """Removes rows idle beyond ``expire_after``; returns how many."""

    def export(self, chunk=0, num_chunks=1, only_dirty=False, clear_dirty=False):
        """Rows as ``{keys, values, state, timestamps, counts}``."""

    def import_rows(self, keys, values, state, timestamps, counts, clear=False):
        """Upserts full rows as ``export`` returns them."""

    def take_removed(self):
        """Ids removed or evicted since the previous call."""

    def take_sync_changes(self):
        """Rows changed and ids removed since the previous call (sync)."""

    def save_filter_state(self):
        """(admission filter state, newest data time), for checkpoints."""

    def restore_filter_state(self, state, now):
        """Restores what ``save_filter_state`` returned."""

    def write_row_files(self, prefix, rows_per_block, file_bytes, only_dirty=False,
                        clear_dirty=False):
        """Writes the rows as row files (sparse checkpoints)."""

    def get_config(self):
        """The constructor arguments that rebuild an empty table like this one."""
