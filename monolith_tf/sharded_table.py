"""A table sharded over devices, one shard per parameter-server task:
``ShardedHashTable``, and the id routing it uses, ``shard_ids``.

Each shard is a ``HashTable`` created on its device (``/job:ps/task:<i>``
under TensorFlow's parameter-server runtime, or any devices given); the op
library must be loaded in every process of the cluster. An id lives in
shard ``shard_ids(id, n)``: ``floor(SplitMix64(id ^ 0x6a09e667f3bcc909) *
n / 2^64)`` (``cc/table/sharding.h``), stable across processes, restarts and
machines. A lookup or an update splits the batch by shard
(``tf.dynamic_partition``), runs each part on the device of its shard, and
stitches the rows back in order, so only the batch's ids and rows travel,
never a shard. Every shard gets the same options and seed, and the
initializers are keyed by (seed, id), so a sharded table holds exactly the
rows an unsharded one would. Each shard admits, counts and expires its own
ids; memory per shard is about 1/n of the table.
"""

import struct

import numpy as np
import tensorflow as tf

from monolith_tf.ops import table_ops
from monolith_tf.schema import ROW_FIELDS
from monolith_tf.table import (HashTable, apply_gradients_many, as_float32, as_int64,
                               invalid_argument, row_file_entries)


def shard_ids(ids, num_shards):
    """The shard (int32, same shape) of each id of ``ids`` in a table
    sharded ``num_shards`` ways."""
    return table_ops.monolith_shard_ids(as_int64(ids, "ids"), num_shards=int(num_shards))


def ps_devices(num_ps):
    """The CPU devices of parameter-server tasks 0..num_ps-1."""
    return [f"/job:ps/replica:0/task:{task}/device:CPU:0" for task in range(num_ps)]


class ShardedHashTable(tf.Module):
    """A HashTable split into shards placed on ``devices`` (module doc).

    Args:
      dim: floats per row.
      devices: one device string per shard (``ps_devices(n)`` under the
        parameter-server runtime); None entries place a shard by TensorFlow's
        default. ``num_shards`` alone means that many shards on the default
        device (tests, and checking a sharded layout on one machine).
      name: shard i is named ``<name>_shard<i>``.
      **table_options: HashTable's options, the same for every shard.
    """

    def __init__(self, dim, devices=None, num_shards=None, name="sharded_table",
                 **table_options):
        if devices is None:
            if isinstance(num_shards, bool) or not isinstance(num_shards, int) \
                    or num_shards < 1:
                raise invalid_argument(f"num_shards must be an int >= 1, got {num_shards!r}")
            devices = [None] * num_shards
        elif num_shards is not None and num_shards != len(devices):
            raise invalid_argument(f"num_shards ({num_shards}) differs from the {len(devices)} devices")
        if not devices:
            raise invalid_argument("a sharded table needs at least one device")
        super().__init__(name=name)
        self.devices = list(devices)
        self._row_writers = {}  # (only_dirty, clear_dirty) -> tf.function
        self.shards = []
        for index, device in enumerate(self.devices):
            with tf.device(device):
                self.shards.append(HashTable(dim, name=f"{name}_shard{index}", **table_options))

    @property
    def num_shards(self):
        return len(self.shards)

    @property
    def dim(self):
        return self.shards[0].dim

    @property
    def state_dim(self):
        return self.shards[0].state_dim

    def get_config(self):
        """The options of every shard (the same) plus the devices."""
        config = dict(self.shards[0].get_config())
        config["name"] = self.name
        return {**config, "devices": self.devices}

    def _split(self, ids):
        """(flat ids by shard, their positions in the flat batch by shard)."""
        flat = tf.reshape(as_int64(ids, "ids"), [-1])
        shard = shard_ids(flat, self.num_shards)
        parts = tf.dynamic_partition(flat, shard, self.num_shards)
        positions = tf.dynamic_partition(tf.range(tf.size(flat)), shard, self.num_shards)
        return shard, parts, positions

    def _on_shards(self, fn, *per_shard):
        results = []
        for index, table in enumerate(self.shards):
            # The shard's op runs where the shard lives (it would be placed
            # there anyway, by its resource input); only this part travels.
            with tf.device(table.resource_handle.device):
                results.append(fn(table, *(values[index] for values in per_shard)))
        return results

    def lookup(self, ids, training=False):
        """Rows of ``ids`` (any shape): float32 ``ids.shape + [dim]``, as
        ``HashTable.lookup``."""
        ids = as_int64(ids, "ids")
        flat = tf.reshape(ids, [-1])
        # Each distinct id travels once. Not with occurrence admission, which
        # counts every occurrence of a training lookup.
        dedup = not (training and self.shards[0].get_config()["occurrence_threshold"])
        if dedup:
            flat, occurrences = tf.unique(flat)
        _, parts, positions = self._split(flat)
        rows = self._on_shards(lambda table, part: table.lookup(part, training=training), parts)
        stitched = tf.dynamic_stitch(positions, rows)
        if dedup:
            stitched = tf.gather(stitched, occurrences)
        return tf.reshape(stitched, tf.concat([tf.shape(ids), [self.dim]], 0))

    def apply_gradients(self, ids, grads, learning_rate, timestamps=0):
        """One optimizer step on the rows of ``ids`` (as ``HashTable``);
        each shard updates its own rows in place. Returns the number of
        distinct rows updated (int64 scalar)."""
        ids = as_int64(ids, "ids")
        grads = as_float32(grads, "grads")
        timestamps = as_int64(timestamps, "timestamps")
        shard, parts, _ = self._split(ids)
        flat_grads = tf.reshape(grads, [-1, self.dim])
        grad_parts = tf.dynamic_partition(flat_grads, shard, self.num_shards)
        if timestamps.shape.rank == 0:
            time_parts = [timestamps] * self.num_shards
        else:
            time_parts = tf.dynamic_partition(tf.reshape(timestamps, [-1]), shard,
                                              self.num_shards)
        learning_rate = tf.reshape(as_float32(learning_rate, "learning_rate"), [1])
        return tf.add_n(self._on_shards(
            lambda table, part, grad, time: apply_gradients_many(
                [table], [part], [grad], learning_rate, [time]),
            parts, grad_parts, time_parts))

    def assign(self, ids, values):
        """Inserts or overwrites the embeddings of ``ids`` on their shards."""
        shard, parts, _ = self._split(ids)
        value_parts = tf.dynamic_partition(
            tf.reshape(as_float32(values, "values"), [-1, self.dim]), shard, self.num_shards)
        return tf.group(self._on_shards(lambda table, part, value: table.assign(part, value),
                                        parts, value_parts))

    def remove(self, ids):
        """Removes ``ids``; returns how many were present."""
        _, parts, _ = self._split(ids)
        return tf.add_n(self._on_shards(lambda table, part: table.remove(part), parts))

    def shard_sizes(self):
        """Rows per shard (int64 [num_shards])."""
        return tf.stack([table.size() for table in self.shards])

    def size(self):
        """Rows in all shards (int64 scalar)."""
        return tf.reduce_sum(self.shard_sizes())

    def evict_expired(self):
        """Each shard evicts its own expired rows; returns how many in all."""
        return tf.add_n([table.evict_expired() for table in self.shards])

    def export(self, chunk=0, num_chunks=1, only_dirty=False, clear_dirty=False):
        """Chunk ``chunk`` of ``num_chunks`` of every shard, concatenated
        (shard 0 first), as ``HashTable.export`` returns rows: the chunks
        still tile the whole table, so a sparse checkpoint of a sharded table
        is an ordinary one (restorable onto any number of shards, or none)."""
        exports = self._on_shards(
            lambda table: table.export(chunk, num_chunks, only_dirty=only_dirty,
                                       clear_dirty=clear_dirty))
        return {field: tf.concat([rows[field] for rows in exports], 0) for field in ROW_FIELDS}

    def write_row_files(self, prefix, rows_per_block, file_bytes, only_dirty=False,
                        clear_dirty=False):
        """Each shard writes its own rows as ``<prefix>.s<i>.rows.00000``, ...
        on its own task (on a parameter server, into that server's file
        system), all shards at once; only the file names and CRCs come back.
        Eager; returns the manifest entries of every shard's files (as
        ``HashTable.write_row_files``, plus ``shard``)."""
        key = (bool(only_dirty), bool(clear_dirty))
        if key not in self._row_writers:
            self._row_writers[key] = tf.function(
                lambda prefixes, rows_per_block, file_bytes: self._on_shards(
                    lambda table, shard_prefix: table.write_rows_op(
                        shard_prefix, rows_per_block, file_bytes, *key),
                    prefixes), autograph=False)
        # One function, so the shards' writes run concurrently on their tasks.
        outputs = self._row_writers[key](
            [tf.constant(f"{prefix}.s{index}.rows") for index in range(self.num_shards)],
            tf.constant(int(rows_per_block), tf.int64), tf.constant(int(file_bytes), tf.int64))
        return [entry for index, shard_outputs in enumerate(outputs)
                for entry in row_file_entries(shard_outputs, shard=index)]

    def import_rows(self, keys, values, state, timestamps, counts, clear=False):
        """Upserts rows as ``export`` returns them, each on the shard its id
        routes to (so rows saved with another shard count land where they
        belong now); ``clear`` empties every shard first."""
        shard, parts, _ = self._split(keys)

        def split(value, what, convert):
            return tf.dynamic_partition(convert(value, what), shard, self.num_shards)

        fields = [parts, split(values, "values", as_float32), split(state, "state", as_float32),
                  split(timestamps, "timestamps", as_int64), split(counts, "counts", as_int64)]
        return tf.group(self._on_shards(
            lambda table, *rows: table.import_rows(*rows, clear=clear), *fields))

    def take_removed(self):
        """Ids removed or evicted from any shard since the previous call."""
        return tf.concat([table.take_removed() for table in self.shards], 0)

    def take_sync_changes(self):
        """Every shard's ``HashTable.take_sync_changes``, concatenated."""
        changes = [table.take_sync_changes() for table in self.shards]
        return {field: tf.concat([c[field] for c in changes], 0) for field in changes[0]}

    def stats(self):
        """Counters summed over the shards (``now``: the newest)."""
        per_shard = [table.stats() for table in self.shards]
        return {field: (tf.reduce_max if field == "now" else tf.reduce_sum)(
            tf.stack([stats[field] for stats in per_shard])) for field in per_shard[0]}

    def save_filter_state(self):
        """(admission filter states of all shards, newest data time): empty
        without admission filters (as an unsharded table's), else the states
        packed as ``b"MTSHARDF"``, u32 shards, u64 length per shard, then the
        states (little-endian), which only a table of as many shards reads."""
        states, nows = zip(*(table.save_filter_state() for table in self.shards))
        states = [np.asarray(state).tobytes() for state in states]
        now = tf.reduce_max(tf.stack(nows))
        if not any(states):  # no admission filter: the same empty state as a HashTable's
            return tf.zeros([0], tf.uint8), now
        packed = (_FILTER_MAGIC + struct.pack("<I", len(states)) +
                  struct.pack(f"<{len(states)}Q", *map(len, states)) + b"".join(states))
        return tf.constant(np.frombuffer(packed, np.uint8)), now

    def restore_filter_state(self, state, now):
        """Restores ``save_filter_state``'s result. A filter sketch cannot be
        split by id, so states saved with another shard count (or unsharded)
        are not restored: each shard's filter starts empty (ids below the
        occurrence threshold count again from zero); ``now`` always is."""
        data = np.asarray(state, np.uint8).tobytes()
        states = _unpack_filter_states(data)
        if states is None or len(states) != self.num_shards:
            states = [np.asarray(table.save_filter_state()[0]).tobytes()
                      for table in self.shards]
        for table, shard_state in zip(self.shards, states):
            table.restore_filter_state(np.frombuffer(shard_state, np.uint8), now)


_FILTER_MAGIC = b"MTSHARDF"


def _unpack_filter_states(data):
    """Per-shard filter states packed by ``save_filter_state``; None when
    ``data`` is not in that layout (an unsharded table's state)."""
    header = len(_FILTER_MAGIC) + 4
    if not data.startswith(_FILTER_MAGIC) or len(data) < header:
        return None
    (count,) = struct.unpack_from("<I", data, len(_FILTER_MAGIC))
    lengths = struct.unpack_from(f"<{count}Q", data, header)
    states, position = [], header + 8 * count
    for length in lengths:
        states.append(data[position:position + length])
        position += length
    if position != len(data):
        raise invalid_argument(f"sharded filter state of {len(data)} bytes does not match "
                               f"its header ({position})")
    return states
