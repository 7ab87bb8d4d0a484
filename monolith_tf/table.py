"""HashTable: the collisionless embedding table as a TensorFlow resource.

Each row holds an embedding (float32, ``dim``), the optimizer's state, the
last-update data time (seconds) and an occurrence count. Rows are created on
first training lookup, updated in place by the table's own optimizer and
saved with ``tf.train.Checkpoint`` and SavedModel.
"""

import os

import numpy as np
import tensorflow as tf

from monolith_tf.ops import table_ops
from monolith_tf.schema import ROW_FIELDS, STATS_FIELDS, TABLE_DEFAULTS, optimizer_state_dim


def invalid_argument(message):
    """The error every table API raises for bad input (as the ops do)."""
    return tf.errors.InvalidArgumentError(None, None, message)


def _convert(value, what, dtype, widened_from):
    """``value`` as a ``dtype`` tensor: types in ``widened_from`` are cast,
    anything else is an InvalidArgumentError naming ``what``."""
    try:
        tensor = tf.convert_to_tensor(value, dtype_hint=dtype)
    except (TypeError, ValueError) as error:
        raise invalid_argument(f"{what} must be {dtype.name}, got {type(value).__name__}: {error}")
    if tensor.dtype == dtype:
        return tensor
    if tensor.dtype in widened_from:
        return tf.cast(tensor, dtype)
    raise invalid_argument(f"{what} must be {dtype.name}, got {tensor.dtype.name}")


_INT_TYPES = (tf.int32, tf.int16, tf.int8, tf.uint8, tf.uint16, tf.uint32)
_FLOAT_TYPES = (tf.float16, tf.bfloat16, tf.float64)


def as_int64(value, what):
    """``value`` as int64 (narrower ints widened); InvalidArgumentError naming
    ``what`` otherwise."""
    return _convert(value, what, tf.int64, _INT_TYPES)


def as_float32(value, what):
    """``value`` as float32 (other floats converted); InvalidArgumentError
    naming ``what`` otherwise."""
    return _convert(value, what, tf.float32, _FLOAT_TYPES)


class HashTable(tf.saved_model.experimental.TrackableResource):
    """A cuckoo-hash embedding table with its own in-place optimizer.

    Args:
      dim: floats per embedding row (> 0).
      initializer: spec of new rows' values, e.g. ``"zeros"`` or
        ``"truncated_normal(stddev=0.02)"``; None: the core's default
        (``TABLE_DEFAULTS`` in ``monolith_tf.schema``). Random initializers are seeded by
        ``(seed, id)``: a row's first value does not depend on insertion order.
      optimizer: spec of the sparse optimizer applied by ``apply_gradients``:
        ``sgd``, ``adagrad``, ``adam`` or ``ftrl`` (see ``monolith_tf.specs``);
        None: the core's default.
      seed: seeds the hash functions and the initializer.
      capacity_hint: rows that fit before the table first grows (>= 0).
      name: name of the table in checkpoints and graphs.
      occurrence_threshold: an id gets an entry only at its k-th training
        lookup (0: at the first); before that it reads as zeros and its
        gradients are dropped.
      admission_filter: None (the core's default, ``"counting"``),
        ``"counting(width=1048576, depth=4)"`` (count-min
        sketch, never admits early unless ids collide in every row) or
        ``"probabilistic(admit_probability=0.95)"`` (no per-id state).
      expire_after: seconds of data time after which an entry not updated is
        evicted by ``evict_expired`` (None: never). "Now" is the newest data
        time the table has seen, so replayed old data expires correctly.
      evict_every: evict automatically after every n-th gradient apply (None: off).
      evict_on_save: evict expired entries before each checkpoint.
      shared_name: if given, the table lives in TensorFlow's resource manager
        under this name and is shared by every HashTable created with it;
        otherwise it is private to this object and freed with it.
    """

    def __init__(self, dim, initializer=None, optimizer=None, seed=0, capacity_hint=0,
                 name="hash_table", occurrence_threshold=0, admission_filter=None,
                 expire_after=None, evict_every=None, evict_on_save=False, shared_name=None):
        # Types are checked here; ranges and specs by the core when the table
        # is created (one validation for every bridge).
        for option, value in (("dim", dim), ("capacity_hint", capacity_hint),
                              ("occurrence_threshold", occurrence_threshold)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise invalid_argument(f"{option} must be an int, got {value!r}")
        for option, value in (("expire_after", expire_after), ("evict_every", evict_every)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value <= 0):
                raise invalid_argument(f"{option} must be a positive int or None (off), got {value!r}")
        if admission_filter is None:
            admission_filter = TABLE_DEFAULTS["admission_filter"]
        self._memory_control = {"occurrence_threshold": occurrence_threshold,
                                "admission_filter": str(admission_filter),
                                "expire_after": expire_after or 0,
                                "evict_every": evict_every or 0}
        self._evict_on_save = bool(evict_on_save)
        self._dim = dim
        self._initializer = str(TABLE_DEFAULTS["initializer"] if initializer is None
                                else initializer)
        self._optimizer = str(TABLE_DEFAULTS["optimizer"] if optimizer is None else optimizer)
        self._seed = int(seed)
        self._capacity_hint = capacity_hint
        self._name = name
        self._shared_name = shared_name or ""
        super().__init__()
        # Created here, eagerly, so a table first touched inside a tf.function
        # does not own a handle that dies with that function's graph.
        with tf.init_scope():
            self._resource_handle = self._create_resource()
        # After creation, so a bad spec is the core's InvalidArgumentError.
        self._state_dim = optimizer_state_dim(self._optimizer, self._dim)

    @property
    def dim(self):
        """Floats per embedding row."""
        return self._dim

    @property
    def state_dim(self):
        """Floats of optimizer state per row."""
        return self._state_dim

    @property
    def name(self):
        return self._name

    def get_config(self):
        """The constructor arguments, for rebuilding an equal empty table."""
        return {"dim": self._dim, "initializer": self._initializer,
                "optimizer": self._optimizer, "seed": self._seed,
                "capacity_hint": self._capacity_hint, "name": self._name,
                **self._memory_control, "evict_on_save": self._evict_on_save,
                # 0 is how the op spells "off"; the constructor's is None.
                "expire_after": self._memory_control["expire_after"] or None,
                "evict_every": self._memory_control["evict_every"] or None}

    def _create_resource(self):
        return table_ops.monolith_hash_table(
            dim=self._dim, initializer=self._initializer, optimizer=self._optimizer,
            seed=self._seed, capacity_hint=self._capacity_hint,
            shared_name=self._shared_name, name=self._name, **self._memory_control)

    def _destroy_resource(self):
        # Anonymous tables are freed with their last handle; shared ones are
        # owned by the resource manager until destroyed explicitly.
        if self._shared_name:
            tf.raw_ops.DestroyResourceOp(resource=self.resource_handle,
                                         ignore_lookup_error=True)

    def lookup(self, ids, training=False):
        """Rows of ``ids`` (any shape) as float32 of shape ``ids.shape + [dim]``.

        With ``training=True`` a missing id is inserted with its initial value
        (two lookups of a new id return the same row). With ``training=False``
        (serving) a missing id reads as zeros and nothing is inserted.
        """
        ids = as_int64(ids, "ids")
        return table_ops.monolith_hash_table_lookup(
            self.resource_handle, ids, dim=self._dim, insert_missing=bool(training))

    def apply_gradients(self, ids, grads, learning_rate, timestamps=0):
        """One optimizer step on the rows of ``ids``, in place.

        ``grads`` has shape ``ids.shape + [dim]``; gradients of duplicate ids
        are summed first. ``learning_rate`` is a float scalar (a tensor is
        fine). ``timestamps`` is the data time in seconds, one scalar or one
        per id; each row keeps the largest and counts its occurrences.
        """
        ids = as_int64(ids, "ids")
        return table_ops.monolith_hash_table_apply_gradients(
            self.resource_handle, ids, as_float32(grads, "grads"),
            as_float32(learning_rate, "learning_rate"),
            as_int64(timestamps, "timestamps"))

    def assign(self, ids, values):
        """Inserts or overwrites the embeddings of ``ids``; new rows get fresh
        optimizer state, existing rows keep theirs."""
        return table_ops.monolith_hash_table_assign(
            self.resource_handle, as_int64(ids, "ids"), as_float32(values, "values"))

    def remove(self, ids):
        """Removes ``ids``; returns how many were present (int64 scalar)."""
        return table_ops.monolith_hash_table_remove(self.resource_handle,
                                                    as_int64(ids, "ids"))

    def size(self):
        """Number of rows (int64 scalar)."""
        return table_ops.monolith_hash_table_size(self.resource_handle)

    def take_removed(self):
        """Keys removed or evicted since the previous call (int64 [n]); the
        first call starts the record (for delta checkpoints)."""
        return table_ops.monolith_hash_table_take_removed(self.resource_handle)

    def take_sync_changes(self):
        """Rows inserted or updated since the previous call and ids removed or
        evicted since, for parameter sync: a dict of ``keys`` int64 [n],
        ``values`` float32 [n, dim], ``timestamps`` int64 [n] (data times) and
        ``removed`` int64 [m]. A record of its own: it does not clear what the
        next delta checkpoint needs, nor the reverse. The first call starts
        the record and returns no rows. Its cost follows the changed rows.
        Apply ``removed`` before the rows (an id may be in both)."""
        keys, values, timestamps, removed = table_ops.monolith_hash_table_take_sync_changes(
            self.resource_handle, dim=self._dim)
        return {"keys": keys, "values": values, "timestamps": timestamps, "removed": removed}

    def evict_expired(self):
        """Removes entries idle for more than ``expire_after`` seconds of data
        time; returns how many (int64 scalar). Their memory is reused."""
        return table_ops.monolith_hash_table_evict_expired(self.resource_handle)

    def stats(self):
        """Counters as a dict of int64 scalars: size, admitted (entries
        created), rejected (occurrences the filter turned away), evicted,
        memory_bytes and now (newest data time, seconds)."""
        values = table_ops.monolith_hash_table_stats(self.resource_handle)
        return dict(zip(STATS_FIELDS, tf.unstack(values)))

    def export(self, chunk=0, num_chunks=1, only_dirty=False, clear_dirty=False):
        """Rows of one chunk of the table as a dict of tensors.

        Keys: ``keys`` [n] int64, ``values`` [n, dim], ``state`` [n, state_dim],
        ``timestamps`` [n] int64 (seconds), ``counts`` [n] int64. Chunks tile
        the table, so exporting chunks 0..num_chunks-1 in turn bounds the
        memory of one copy; they agree with each other only while nothing
        writes to the table. ``only_dirty`` keeps the rows changed since they
        were last exported with ``clear_dirty`` (the rows of a delta
        checkpoint; found through a bitmap, so its cost follows the changed
        rows, not the table); ``clear_dirty`` marks the exported rows clean.
        Rows written by ``import_rows`` count as clean.
        """
        outputs = table_ops.monolith_hash_table_export(
            self.resource_handle, tf.constant(chunk, tf.int64),
            tf.constant(num_chunks, tf.int64), dim=self._dim, only_dirty=bool(only_dirty),
            clear_dirty=bool(clear_dirty))
        return dict(zip(ROW_FIELDS, outputs))

    def write_row_files(self, prefix, rows_per_block, file_bytes, only_dirty=False,
                        clear_dirty=False):
        """Writes the rows (``only_dirty``/``clear_dirty`` as ``export``) as
        sparse-checkpoint row files ``<prefix>.rows.00000``, ... in the
        process that holds the table, one block of ``rows_per_block`` rows at
        a time, a new file past ``file_bytes``. Eager; returns the manifest
        entry of each file (``file``: its base name, ``rows``, ``bytes``,
        ``crc32``, ``oldest_update``/``newest_update``: None without rows)."""
        outputs = self.write_rows_op(tf.constant(f"{prefix}.rows"), rows_per_block, file_bytes,
                                     only_dirty, clear_dirty)
        return row_file_entries(outputs)

    def write_rows_op(self, prefix, rows_per_block, file_bytes, only_dirty, clear_dirty):
        """The op behind ``write_row_files`` (graph-friendly): its six output
        tensors for the files written as ``<prefix>.00000``, ...; the integer
        arguments may be tensors."""
        return table_ops.monolith_hash_table_write_rows(
            self.resource_handle, prefix, as_int64(rows_per_block, "rows_per_block"),
            as_int64(file_bytes, "file_bytes"), only_dirty=bool(only_dirty),
            clear_dirty=bool(clear_dirty))

    def import_rows(self, keys, values, state, timestamps, counts, clear=False):
        """Upserts full rows as ``export`` returns them; with ``clear=True``
        the table is emptied first, so ``import_rows(**export(), clear=True)``
        restores it exactly. Inputs are validated before anything changes."""
        return table_ops.monolith_hash_table_import(
            self.resource_handle, as_int64(keys, "keys"), as_float32(values, "values"),
            as_float32(state, "state"), as_int64(timestamps, "timestamps"),
            as_int64(counts, "counts"), clear=clear)

    # tf.train.Checkpoint and SavedModel: TensorFlow materializes these tensors
    # at once, so a save holds one full export of the table in memory. The
    # training worker's sparse checkpoints stream chunks instead.
    def save_filter_state(self):
        """(admission filter state as uint8 [n] — empty without a filter —,
        newest data time as an int64 scalar), for checkpoints."""
        return table_ops.monolith_hash_table_save_filter(self.resource_handle)

    def restore_filter_state(self, state, now):
        """Restores what ``save_filter_state`` returned."""
        return table_ops.monolith_hash_table_restore_filter(
            self.resource_handle, tf.convert_to_tensor(state, tf.uint8),
            as_int64(now, "now"))

    def _serialize_to_tensors(self):
        deps = [self.evict_expired()] if self._evict_on_save else []
        with tf.control_dependencies(deps):
            tensors = self.export()
            tensors["filter_state"], tensors["now"] = self.save_filter_state()
        return tensors

    def _restore_from_tensors(self, restored_tensors):
        rows = {k: restored_tensors[k] for k in ROW_FIELDS}
        imported = self.import_rows(**rows, clear=True)
        deps = [imported] if imported is not None else []
        with tf.control_dependencies(deps):
            return self.restore_filter_state(restored_tensors["filter_state"],
                                             restored_tensors["now"])


def lookup_many(tables, ids_list, training=False):
    """Rows of several tables in one op call: ``tables[i].lookup(ids_list[i])``
    for every i, with the same ``training`` mode. Returns a list of float32
    tensors of shape ``ids_list[i].shape + [tables[i].dim]``. Tables that are
    not plain HashTables (sharded ones) are looked up one by one."""
    fused = [i for i, table in enumerate(tables) if isinstance(table, HashTable)]
    rows = [None] * len(tables)
    if fused:
        fused_rows = table_ops.monolith_hash_table_lookup_multi(
            [tables[i].resource_handle for i in fused],
            [as_int64(ids_list[i], "ids") for i in fused],
            dims=[tables[i].dim for i in fused], insert_missing=bool(training))
        for i, values in zip(fused, fused_rows):
            rows[i] = values
    for i, table in enumerate(tables):
        if rows[i] is None:
            rows[i] = table.lookup(ids_list[i], training=training)
    return rows


def row_file_entries(outputs, shard=None):
    """Manifest entries of the files a write-rows op reported (its six
    outputs, numpy-convertible); ``shard`` is recorded when given."""
    paths, rows, nbytes, crcs, oldest, newest = (np.asarray(output) for output in outputs)
    entries = []
    for index, path in enumerate(paths):
        count = int(rows[index])
        entry = {"file": os.path.basename(path.decode()), "rows": count,
                 "bytes": int(nbytes[index]), "crc32": int(crcs[index]),
                 "oldest_update": int(oldest[index]) if count else None,
                 "newest_update": int(newest[index]) if count else None}
        if shard is not None:
            entry["shard"] = shard
        entries.append(entry)
    return entries


def apply_gradients_many(tables, ids_list, grads_list, learning_rates, timestamps_list=None):
    """One optimizer step on several tables in one op call.

    ``learning_rates`` holds one float per table; ``timestamps_list`` one data
    time (seconds) per table, a scalar or one per id (default 0). Returns the
    number of distinct rows updated (int64 scalar). Tables that are not plain
    HashTables (sharded ones) are updated one by one.
    """
    if timestamps_list is None:
        timestamps_list = [0] * len(tables)
    learning_rates = as_float32(learning_rates, "learning_rates")
    fused = [i for i, table in enumerate(tables) if isinstance(table, HashTable)]
    updated = []
    if fused:
        updated.append(table_ops.monolith_hash_table_apply_gradients_multi(
            [tables[i].resource_handle for i in fused],
            [as_int64(ids_list[i], "ids") for i in fused],
            [as_float32(grads_list[i], "grads") for i in fused],
            tf.gather(learning_rates, fused),
            [as_int64(timestamps_list[i], "timestamps") for i in fused]))
    for i, table in enumerate(tables):
        if i not in fused:
            updated.append(table.apply_gradients(ids_list[i], grads_list[i], learning_rates[i],
                                                 timestamps=timestamps_list[i]))
    return tf.add_n(updated)
