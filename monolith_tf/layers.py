"""Keras layers over HashTable: embeddings for raw ids, trained in model.fit.

``HashEmbedding`` maps raw ids (int64, int32 or strings) to rows of its own
``HashTable``; ``HashEmbeddingCollection`` does the same for many features
with one fused op call per step. They work under Keras 3 (TensorFlow's
default) and tf_keras (``TF_USE_LEGACY_KERAS=1``), whichever ``tf.keras`` is.

How the table trains inside ``model.fit`` without touching Keras optimizers:
the lookup is wrapped in a ``tf.custom_gradient`` whose input is a trainable
scalar, ``update_trigger``, that is always zero. When Keras differentiates
the loss with respect to its trainable weights, the gradient function
receives the embedding gradients, applies them to the table in place with
the table's own optimizer (one hash probe per distinct id) and returns a zero
gradient for the trigger. ``predict``/``evaluate`` (training=False) compute
no gradient, so they neither update nor insert.
"""

import contextlib

import tensorflow as tf

from monolith_tf import table as table_lib
from monolith_tf.schema import ROW_FIELDS, TABLE_DEFAULTS, table_name
from monolith_tf.sharded_table import ShardedHashTable, ps_devices
from monolith_tf.table import invalid_argument

keras = tf.keras
# tf_keras (Keras 2) expresses shapes as TensorShape, Keras 3 as tuples.
_LEGACY_KERAS = keras.__name__.startswith("tf_keras")

COMBINERS = (None, "sum", "mean", "sqrtn")
# Strings become ids through TF's 64-bit fingerprint, kept non-negative.
_STRING_ID_BUCKETS = 2**63 - 1
# Memory control options of each table (see HashTable).
MEMORY_CONTROL_DEFAULTS = {"occurrence_threshold": TABLE_DEFAULTS["occurrence_threshold"],
                           "admission_filter": TABLE_DEFAULTS["admission_filter"],
                           "expire_after": None, "evict_every": None, "evict_on_save": False}


def ids_to_int64(ids, feature="ids"):
    """Raw ids as int64: strings are fingerprinted, narrower ints widened.

    Works on dense tensors and on the values of ragged and sparse ones.
    Floats and booleans raise InvalidArgumentError naming ``feature``.
    """
    if ids.dtype == tf.string:
        return tf.strings.to_hash_bucket_fast(ids, _STRING_ID_BUCKETS)
    if ids.dtype == tf.int64:
        return ids
    if ids.dtype in (tf.int32, tf.int16, tf.int8, tf.uint8, tf.uint16, tf.uint32):
        return tf.cast(ids, tf.int64)
    raise invalid_argument(f"{feature} must be int64, int32 or string ids, got {ids.dtype.name}")


def hash_embedding_layers(model):
    """The HashEmbedding and HashEmbeddingCollection layers inside ``model``
    (searched through nested layers and models), outermost first."""
    found, stack = [], [model]
    while stack:
        layer = stack.pop(0)
        if isinstance(layer, _HashEmbeddingBase):
            found.append(layer)
        stack.extend(getattr(layer, "layers", []) or [])
    return found


def model_tables(model):
    """``{table name: HashTable}`` of every table in ``model``, named by
    ``monolith_tf.schema.table_name`` (``<layer name>/<feature>``)."""
    return {table_name(layer.name, feature): table for layer in hash_embedding_layers(model)
            for feature, table in layer.feature_tables().items()}


def _serialize_learning_rate(learning_rate):
    if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        return keras.optimizers.schedules.serialize(learning_rate)
    return float(learning_rate)


def _deserialize_learning_rate(config):
    if isinstance(config, dict):
        return keras.optimizers.schedules.deserialize(config)
    return float(config)


def parameter_server_devices():
    """The PS tasks' devices when called under a ParameterServerStrategy's
    scope (layers built there shard their tables over them), else []."""
    strategy = tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy):
        return []
    # The connected cluster's PS CPUs, as TensorFlow lists them.
    tasks = {int(device.name.split("/task:")[1].split("/")[0])
             for device in tf.config.list_logical_devices("CPU") if "/job:ps/" in device.name}
    return ps_devices(len(tasks))


class FeatureTable:
    """One feature of a layer: its HashTable, learning rate and combiner, and
    the layer config that rebuilds them (``config``)."""

    def __init__(self, name, dim, initializer, optimizer, learning_rate, combiner,
                 capacity_hint, seed, memory_control=None):
        if combiner not in COMBINERS:
            raise ValueError(f"{name}: combiner must be one of {COMBINERS}, got {combiner!r}")
        if isinstance(learning_rate, (int, float)) and not learning_rate >= 0:
            raise ValueError(f"{name}: learning_rate must be >= 0, got {learning_rate!r}")
        self.name = name
        self.combiner = combiner
        self.learning_rate = learning_rate
        memory_control = dict(memory_control or {})
        unknown = set(memory_control) - set(MEMORY_CONTROL_DEFAULTS)
        if unknown:
            raise ValueError(f"{name}: unknown arguments {sorted(unknown)}")
        memory_control = {**MEMORY_CONTROL_DEFAULTS, **memory_control}
        options = dict(initializer=initializer, optimizer=optimizer, seed=seed,
                       capacity_hint=capacity_hint, **memory_control)
        devices = parameter_server_devices()
        if devices:
            # Built under ParameterServerStrategy: one shard per PS task.
            self.table = ShardedHashTable(dim, devices=devices, name=f"{name}_table", **options)
        else:
            self.table = table_lib.HashTable(dim, name=f"{name}_table", **options)
        table_config = self.table.get_config()  # specs as resolved (None: the defaults)
        self.config = {"dim": dim, "initializer": table_config["initializer"],
                       "optimizer": table_config["optimizer"],
                       "learning_rate": _serialize_learning_rate(learning_rate),
                       "combiner": combiner, "capacity_hint": capacity_hint, "seed": seed,
                       **memory_control}

    def rate(self, step):
        """Learning rate (float32 scalar) at update ``step``."""
        if callable(self.learning_rate):
            return tf.cast(self.learning_rate(step), tf.float32)
        return tf.constant(self.learning_rate, tf.float32)


def _flatten(ids, feature, combiner):
    """(flat int64 ids, combine) where combine(rows) gives the layer output
    from the rows of the flat ids."""
    if isinstance(ids, tf.SparseTensor):
        return _flatten_sparse(ids, feature, combiner)
    if isinstance(ids, tf.RaggedTensor):
        if ids.ragged_rank != 1 or ids.flat_values.shape.rank != 1:
            raise invalid_argument(f"{feature}: ragged ids must be [batch, (n)]")
        ragged = ids

        def combine_ragged(rows):
            rows = ragged.with_flat_values(rows)
            if combiner is None:
                return rows
            count = tf.cast(rows.row_lengths(), rows.dtype)[:, None]
            return _reduce(tf.reduce_sum(rows, axis=1), count, combiner)

        return ids_to_int64(ragged.flat_values, feature), combine_ragged
    ids = tf.convert_to_tensor(ids)
    if ids.shape.rank is not None and ids.shape.rank not in (1, 2):
        raise invalid_argument(f"{feature}: dense ids must be [batch] or [batch, n], got rank "
                       f"{ids.shape.rank}")

    def combine_dense(rows):
        if combiner is None or rows.shape.rank == 2:
            return rows  # no combiner, or one id per example
        count = tf.cast(tf.shape(rows)[1], rows.dtype)
        return _reduce(tf.reduce_sum(rows, axis=1), count, combiner)

    return ids_to_int64(ids, feature), combine_dense


def _flatten_sparse(ids, feature, combiner):
    if ids.shape.rank is not None and ids.shape.rank != 2:
        raise invalid_argument(
            f"{feature}: a SparseTensor of ids must be 2-D, got rank {ids.shape.rank}")
    if combiner is None:
        raise invalid_argument(f"{feature}: SparseTensor ids need a combiner (sum, mean or sqrtn)")
    checks = [
        tf.debugging.assert_non_negative(
            ids.indices, message=f"{feature}: SparseTensor indices must be >= 0"),
        tf.debugging.assert_less(
            ids.indices, ids.dense_shape[None, :],
            message=f"{feature}: SparseTensor indices must lie inside dense_shape"),
    ]
    with tf.control_dependencies(checks):
        rows_of_ids = tf.identity(ids.indices[:, 0])
    batch = ids.dense_shape[0]

    def combine_sparse(rows):
        total = tf.math.unsorted_segment_sum(rows, rows_of_ids, batch)
        count = tf.math.unsorted_segment_sum(tf.ones_like(rows[:, :1]), rows_of_ids, batch)
        return _reduce(total, count, combiner)

    return ids_to_int64(ids.values, feature), combine_sparse


def _reduce(total, count, combiner):
    """Sum, mean or sqrtn from the summed rows and the id count per example;
    empty examples give zeros, as tf.nn.safe_embedding_lookup_sparse does."""
    if combiner == "sum":
        return total
    if combiner == "mean":
        return tf.math.divide_no_nan(total, count)
    return tf.math.divide_no_nan(total, tf.sqrt(count))


def _as_output_shape(shape):
    """``shape`` (a tuple) as the flavour's shape type: TensorShape under
    tf_keras, a tuple under Keras 3."""
    return tf.TensorShape(shape) if _LEGACY_KERAS else tuple(shape)


def _embedding_shape(feature, input_shape):
    """Output shape of ``feature`` (a FeatureTable) for ids of ``input_shape``."""
    shape = tuple(tf.TensorShape(input_shape).as_list())
    dim = feature.config["dim"]
    if feature.combiner is not None and len(shape) == 2:
        return _as_output_shape((shape[0], dim))
    return _as_output_shape(shape + (dim,))


class _HashEmbeddingBase(keras.layers.Layer):
    """Trigger variable, update counter, the trained fused lookup and the
    serving-lookup hook.

    Rows stay float32 in the tables; outputs are cast to the layer's compute
    dtype (float16 under a ``mixed_float16`` policy), as Keras layers do.
    """

    def _make_update_weights(self):
        # Always zero: its gradient path carries the table updates (module doc).
        self.update_trigger = self.add_weight(
            name="update_trigger", shape=(), initializer="zeros", trainable=True,
            dtype="float32")
        # Table updates applied so far: the step of learning rate schedules.
        self.update_steps = self.add_weight(
            name="update_steps", shape=(), dtype="int64", initializer="zeros", trainable=False)
        # Data time (seconds) of the batch being trained, moved by the training
        # worker (advance_data_time); stamps updated rows when a call passes
        # no timestamps.
        self.data_time = self.add_weight(
            name="data_time", shape=(), dtype="int64", initializer="zeros", trainable=False)
        self._serving_lookups = None

    def advance_data_time(self, newest):
        """Moves the layer's data time (seconds) to ``newest`` if that is
        later; never moves it back. Usable inside a ``tf.function``."""
        return self.data_time.assign(tf.maximum(tf.convert_to_tensor(self.data_time),
                                                tf.cast(newest, tf.int64)))

    def reset_data_time(self, data_time):
        """Sets the layer's data time (seconds), e.g. to a checkpoint's when
        training resumes."""
        return self.data_time.assign(data_time)

    @contextlib.contextmanager
    def serving_lookups(self, lookups):
        """While the context is open, inference calls read rows through
        ``lookups`` (``{feature: fn(int64 ids) -> float32 rows}``) instead of
        this layer's tables. ``monolith_tf.export`` uses it to trace a serving
        graph over stock tables; training calls are not affected."""
        missing = {feature.name for feature in self._features()} - set(lookups)
        if missing:
            raise ValueError(f"{self.name}: serving lookups lack features {sorted(missing)}")
        self._serving_lookups = dict(lookups)
        try:
            yield self
        finally:
            self._serving_lookups = None

    def _lookup(self, features, flat_ids, training, timestamp=None):
        tables = [feature.table for feature in features]
        if not training:
            if self._serving_lookups is not None:
                # Stock serving tables state no value width; Keras needs it.
                return [tf.ensure_shape(self._serving_lookups[feature.name](ids),
                                        ids.shape.concatenate([feature.config["dim"]]))
                        for feature, ids in zip(features, flat_ids)]
            return table_lib.lookup_many(tables, flat_ids, training=False)
        steps = self.update_steps

        @tf.custom_gradient
        def trained_lookup(trigger):
            rows = table_lib.lookup_many(tables, flat_ids, training=True)

            def backward(*row_grads):
                row_grads = [tf.zeros_like(r) if g is None else tf.cast(g, tf.float32)
                             for r, g in zip(rows, row_grads)]
                # After the gradients exist: a step that fails before them
                # (e.g. on an exhausted input iterator) must not count.
                with tf.control_dependencies(row_grads):
                    step = steps.assign_add(1)
                rates = tf.stack([feature.rate(step) for feature in features])
                times = None if timestamp is None else [timestamp] * len(tables)
                updated = table_lib.apply_gradients_many(tables, flat_ids, row_grads, rates,
                                                         times)
                # A data dependency, not a control one: gradient functions
                # prune ops whose outputs nobody reads (seen with Keras 3 fit).
                return tf.zeros_like(trigger) * tf.cast(updated, trigger.dtype)

            return rows, backward

        return trained_lookup(tf.convert_to_tensor(self.update_trigger))

    def _embed(self, features, inputs, training, timestamps=None):
        flat, combines = [], []
        for feature, ids in zip(features, inputs):
            ids_flat, combine = _flatten(ids, feature.name, feature.combiner)
            flat.append(ids_flat)
            combines.append(combine)
        # Data time of the batch (seconds): the newest example's, as a scalar.
        if timestamps is not None:
            timestamp = tf.reduce_max(ids_to_int64(tf.convert_to_tensor(timestamps), "timestamps"))
        else:
            timestamp = tf.convert_to_tensor(self.data_time)
        rows = self._lookup(features, flat, bool(training), timestamp)
        outputs = [combine(r) for r, combine in zip(rows, combines)]
        if self.compute_dtype != "float32":
            outputs = [tf.cast(out, self.compute_dtype) for out in outputs]
        return outputs

    # Keras 3 (and tf_keras' .keras format) save weights through these hooks;
    # the table is not a Keras variable, so its rows ride along here.
    def save_own_variables(self, store):
        for i, weight in enumerate(self.weights):
            store[str(i)] = weight.numpy()
        for feature in self._features():
            for field, value in feature.table.export().items():
                store[f"{feature.name}/{field}"] = value.numpy()
            state, now = feature.table.save_filter_state()
            store[f"{feature.name}/filter_state"] = state.numpy()
            store[f"{feature.name}/now"] = now.numpy()

    def load_own_variables(self, store):
        for i, weight in enumerate(self.weights):
            weight.assign(store[str(i)])
        for feature in self._features():
            feature.table.import_rows(
                **{f: store[f"{feature.name}/{f}"][...] for f in ROW_FIELDS}, clear=True)
            feature.table.restore_filter_state(store[f"{feature.name}/filter_state"][...],
                                               store[f"{feature.name}/now"][...])

    def _features(self):
        """This layer's FeatureTables, in a fixed order."""
        raise NotImplementedError

    def feature_tables(self):
        """``{feature name: HashTable}`` of this layer."""
        return {feature.name: feature.table for feature in self._features()}


@keras.utils.register_keras_serializable(package="monolith_tf")
class HashEmbedding(_HashEmbeddingBase):
    """Embedding of raw ids in a collisionless hash table (no vocabulary).

    Args:
      dim: floats per embedding row.
      initializer: spec of new rows, e.g. ``"truncated_normal(stddev=0.05)"``;
        None: the core's default (``monolith_tf.schema.TABLE_DEFAULTS``).
      optimizer: spec of the table's own sparse optimizer: ``"sgd"``,
        ``"adagrad(initial_accumulator=0.1)"``, ``"adam"``, ``"ftrl(l1=0.01)"``;
        None: the core's default (adagrad).
      learning_rate: float, or a Keras ``LearningRateSchedule`` called with the
        number of table updates so far.
      combiner: for multi-hot ids ([batch, n] dense, ragged or 2-D sparse):
        ``"sum"``, ``"mean"``, ``"sqrtn"``, or None to keep one row per id.
      capacity_hint: rows before the table first grows.
      seed: seeds the hashes and the keyed initializer.
      **memory_control: ``occurrence_threshold``, ``admission_filter``,
        ``expire_after``, ``evict_every``, ``evict_on_save`` (see HashTable).

    Input: int64/int32/string ids, ``[batch]`` or ``[batch, n]`` dense,
    ``tf.RaggedTensor`` or ``tf.SparseTensor``. Output: ``ids.shape + [dim]``,
    or ``[batch, dim]`` with a combiner, in the layer's compute dtype. Training
    inserts new ids; inference reads unseen ids as zeros and inserts nothing.
    """

    def __init__(self, dim, initializer=None, optimizer=None, learning_rate=0.01,
                 combiner=None, capacity_hint=0, seed=0, **kwargs):
        memory_control = {k: kwargs.pop(k) for k in list(kwargs) if k in MEMORY_CONTROL_DEFAULTS}
        super().__init__(**kwargs)
        self.dim = int(dim)
        self._feature = FeatureTable(self.name, self.dim, initializer, optimizer,
                                     learning_rate, combiner, capacity_hint, seed,
                                     memory_control)
        self.table = self._feature.table
        self._make_update_weights()

    def _features(self):
        return [self._feature]

    @property
    def learning_rate(self):
        """The table's learning rate: a float or a LearningRateSchedule."""
        return self._feature.learning_rate

    def call(self, inputs, training=None, timestamps=None):
        """``timestamps``: optional data time (seconds) of the examples; the
        batch's newest one stamps the updated rows (for expiry)."""
        return self._embed([self._feature], [inputs], training, timestamps)[0]

    def compute_output_shape(self, input_shape):
        return _embedding_shape(self._feature, input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(self._feature.config)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["learning_rate"] = _deserialize_learning_rate(config["learning_rate"])
        return cls(**config)


@keras.utils.register_keras_serializable(package="monolith_tf")
class HashEmbeddingCollection(_HashEmbeddingBase):
    """Many features, each with its own table, in one fused lookup and one
    fused update per step.

    Args:
      features: ``{feature name: HashEmbedding arguments}``, e.g.
        ``{"user": {"dim": 16}, "tags": {"dim": 8, "combiner": "mean"}}``.

    Input: a dict of ids per feature (as for ``HashEmbedding``), plus
    optionally ``timestamp_feature`` (default ``"timestamp"``): the examples'
    data time in seconds, which stamps the updated rows (for expiry). Output:
    a dict of embeddings, one per feature, in the layer's compute dtype.
    """

    def __init__(self, features, timestamp_feature="timestamp", **kwargs):
        super().__init__(**kwargs)
        self.timestamp_feature = timestamp_feature
        if not features:
            raise ValueError("features must name at least one feature")
        self.features = {}
        self._feature_list = []
        for name, args in sorted(features.items()):
            args = dict(args)
            feature = FeatureTable(
                name, int(args.pop("dim")), args.pop("initializer", None),
                args.pop("optimizer", None),
                _deserialize_learning_rate(args.pop("learning_rate", 0.01)),
                args.pop("combiner", None), args.pop("capacity_hint", 0), args.pop("seed", 0),
                memory_control=args)
            self.features[name] = feature.config
            self._feature_list.append(feature)
        self.tables = {feature.name: feature.table for feature in self._feature_list}
        self._make_update_weights()

    def _features(self):
        return self._feature_list

    def call(self, inputs, training=None):
        missing = [f.name for f in self._feature_list if f.name not in inputs]
        if missing:
            raise invalid_argument(f"inputs lack features {missing}")
        outputs = self._embed(self._feature_list,
                              [inputs[f.name] for f in self._feature_list], training,
                              inputs.get(self.timestamp_feature))
        return {feature.name: out for feature, out in zip(self._feature_list, outputs)}

    def compute_output_shape(self, input_shape):
        # The timestamp feature has no output.
        return {feature.name: _embedding_shape(feature, input_shape[feature.name])
                for feature in self._feature_list}

    def get_config(self):
        config = super().get_config()
        config["features"] = {name: dict(cfg) for name, cfg in self.features.items()}
        config["timestamp_feature"] = self.timestamp_feature
        return config
