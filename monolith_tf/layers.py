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

import tensorflow as tf

from monolith_tf import table as table_lib

keras = tf.keras

COMBINERS = (None, "sum", "mean", "sqrtn")
# Strings become ids through TF's 64-bit fingerprint, kept non-negative.
_STRING_ID_BUCKETS = 2**63 - 1
_EXPORT_FIELDS = ("keys", "values", "state", "timestamps", "counts")
# Memory control options of each table (see HashTable).
MEMORY_CONTROL_DEFAULTS = {"occurrence_threshold": 0, "admission_filter": "counting",
                           "expire_after": None, "evict_every": None, "evict_on_save": False}


def _invalid(message):
    return tf.errors.InvalidArgumentError(None, None, message)


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
    raise _invalid(f"{feature} must be int64, int32 or string ids, got {ids.dtype.name}")


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
    """``{"<layer name>/<feature>": HashTable}`` of every table in ``model``:
    the names used by checkpoints, TensorBoard and the serving export."""
    return {f"{layer.name}/{feature}": table for layer in hash_embedding_layers(model)
            for feature, (table, _) in layer.feature_tables().items()}


def _serialize_learning_rate(learning_rate):
    if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        return keras.optimizers.schedules.serialize(learning_rate)
    return float(learning_rate)


def _deserialize_learning_rate(config):
    if isinstance(config, dict):
        return keras.optimizers.schedules.deserialize(config)
    return float(config)


class _FeatureSpec:
    """One feature's table and how its rows are combined."""

    def __init__(self, name, dim, initializer, optimizer, learning_rate, combiner,
                 capacity_hint, seed, memory_control=None):
        if combiner not in COMBINERS:
            raise ValueError(f"{name}: combiner must be one of {COMBINERS}, got {combiner!r}")
        if isinstance(learning_rate, (int, float)) and not learning_rate >= 0:
            raise ValueError(f"{name}: learning_rate must be >= 0, got {learning_rate!r}")
        self.name = name
        self.combiner = combiner
        self.learning_rate = learning_rate
        # Set only while monolith_tf.export traces a serving graph.
        self.serving_table = None
        memory_control = dict(memory_control or {})
        unknown = set(memory_control) - set(MEMORY_CONTROL_DEFAULTS)
        if unknown:
            raise ValueError(f"{name}: unknown arguments {sorted(unknown)}")
        memory_control = {**MEMORY_CONTROL_DEFAULTS, **memory_control}
        self.config = {"dim": dim, "initializer": initializer, "optimizer": optimizer,
                       "learning_rate": _serialize_learning_rate(learning_rate),
                       "combiner": combiner, "capacity_hint": capacity_hint, "seed": seed,
                       **memory_control}
        self.table = table_lib.HashTable(dim, initializer=initializer, optimizer=optimizer,
                                         seed=seed, capacity_hint=capacity_hint,
                                         name=f"{name}_table", **memory_control)

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
            raise _invalid(f"{feature}: ragged ids must be [batch, (n)]")
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
        raise _invalid(f"{feature}: dense ids must be [batch] or [batch, n], got rank "
                       f"{ids.shape.rank}")

    def combine_dense(rows):
        if combiner is None or rows.shape.rank == 2:
            return rows  # no combiner, or one id per example
        count = tf.cast(tf.shape(rows)[1], rows.dtype)
        return _reduce(tf.reduce_sum(rows, axis=1), count, combiner)

    return ids_to_int64(ids, feature), combine_dense


def _flatten_sparse(ids, feature, combiner):
    if ids.shape.rank is not None and ids.shape.rank != 2:
        raise _invalid(f"{feature}: a SparseTensor of ids must be 2-D, got rank {ids.shape.rank}")
    if combiner is None:
        raise _invalid(f"{feature}: SparseTensor ids need a combiner (sum, mean or sqrtn)")
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


class _HashEmbeddingBase(keras.layers.Layer):
    """Trigger variable, update counter and the trained fused lookup."""

    def _make_update_weights(self):
        # Always zero: its gradient path carries the table updates (module doc).
        self.update_trigger = self.add_weight(
            name="update_trigger", shape=(), initializer="zeros", trainable=True)
        # Table updates applied so far: the step of learning rate schedules.
        self.update_steps = self.add_weight(
            name="update_steps", shape=(), dtype="int64", initializer="zeros", trainable=False)
        # Data time (seconds) of the batch being trained, set by the training
        # worker; stamps updated rows when a call passes no timestamps.
        self.data_time = self.add_weight(
            name="data_time", shape=(), dtype="int64", initializer="zeros", trainable=False)

    def _lookup(self, specs, flat_ids, training, timestamp=None):
        tables = [spec.table for spec in specs]
        if not training:
            if all(spec.serving_table is not None for spec in specs):
                # Traced by export_saved_model: stock tables, no custom op. Their
                # lookup has no shape function for the value width; state it.
                return [tf.ensure_shape(spec.serving_table.lookup(ids),
                                        ids.shape.concatenate([spec.config["dim"]]))
                        for spec, ids in zip(specs, flat_ids)]
            return table_lib.lookup_many(tables, flat_ids, training=False)
        steps = self.update_steps

        @tf.custom_gradient
        def trained_lookup(trigger):
            rows = table_lib.lookup_many(tables, flat_ids, training=True)

            def backward(*row_grads):
                row_grads = [tf.zeros_like(r) if g is None else g
                             for r, g in zip(rows, row_grads)]
                # After the gradients exist: a step that fails before them
                # (e.g. on an exhausted input iterator) must not count.
                with tf.control_dependencies(row_grads):
                    step = steps.assign_add(1)
                rates = tf.stack([spec.rate(step) for spec in specs])
                times = None if timestamp is None else [timestamp] * len(tables)
                updated = table_lib.apply_gradients_many(tables, flat_ids, row_grads, rates,
                                                         times)
                # A data dependency, not a control one: gradient functions
                # prune ops whose outputs nobody reads (seen with Keras 3 fit).
                return tf.zeros_like(trigger) * tf.cast(updated, trigger.dtype)

            return rows, backward

        return trained_lookup(tf.convert_to_tensor(self.update_trigger))

    def _embed(self, specs, inputs, training, timestamps=None):
        flat, combines = [], []
        for spec, ids in zip(specs, inputs):
            ids_flat, combine = _flatten(ids, spec.name, spec.combiner)
            flat.append(ids_flat)
            combines.append(combine)
        # Data time of the batch (seconds): the newest example's, as a scalar.
        if timestamps is not None:
            timestamp = tf.reduce_max(ids_to_int64(tf.convert_to_tensor(timestamps), "timestamps"))
        else:
            timestamp = tf.convert_to_tensor(self.data_time)
        rows = self._lookup(specs, flat, bool(training), timestamp)
        return [combine(r) for r, combine in zip(rows, combines)]

    # Keras 3 (and tf_keras' .keras format) save weights through these hooks;
    # the table is not a Keras variable, so its rows ride along here.
    def save_own_variables(self, store):
        for i, weight in enumerate(self.weights):
            store[str(i)] = weight.numpy()
        for spec in self._specs():
            for field, value in spec.table.export().items():
                store[f"{spec.name}/{field}"] = value.numpy()
            state, now = spec.table.save_filter_state()
            store[f"{spec.name}/filter_state"] = state.numpy()
            store[f"{spec.name}/now"] = now.numpy()

    def load_own_variables(self, store):
        for i, weight in enumerate(self.weights):
            weight.assign(store[str(i)])
        for spec in self._specs():
            spec.table.import_rows(**{f: store[f"{spec.name}/{f}"][...] for f in _EXPORT_FIELDS},
                                   clear=True)
            spec.table.restore_filter_state(store[f"{spec.name}/filter_state"][...],
                                            store[f"{spec.name}/now"][...])

    def _specs(self):
        raise NotImplementedError

    def feature_tables(self):
        """``{feature name: (HashTable, _FeatureSpec)}`` of this layer."""
        return {spec.name: (spec.table, spec) for spec in self._specs()}


@keras.utils.register_keras_serializable(package="monolith_tf")
class HashEmbedding(_HashEmbeddingBase):
    """Embedding of raw ids in a collisionless hash table (no vocabulary).

    Args:
      dim: floats per embedding row.
      initializer: spec of new rows, e.g. ``"truncated_normal(stddev=0.05)"``.
      optimizer: spec of the table's own sparse optimizer: ``"sgd"``,
        ``"adagrad(initial_accumulator=0.1)"``, ``"adam"``, ``"ftrl(l1=0.01)"``.
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
    or ``[batch, dim]`` with a combiner. Training inserts new ids; inference
    reads unseen ids as zeros and inserts nothing.
    """

    def __init__(self, dim, initializer="uniform(minval=-0.05, maxval=0.05)",
                 optimizer="adagrad", learning_rate=0.01, combiner=None, capacity_hint=0,
                 seed=0, **kwargs):
        memory_control = {k: kwargs.pop(k) for k in list(kwargs) if k in MEMORY_CONTROL_DEFAULTS}
        super().__init__(**kwargs)
        self.dim = int(dim)
        self._spec = _FeatureSpec(self.name, self.dim, initializer, optimizer, learning_rate,
                                  combiner, capacity_hint, seed, memory_control)
        self.table = self._spec.table
        self._make_update_weights()

    def _specs(self):
        return [self._spec]

    def call(self, inputs, training=None, timestamps=None):
        """``timestamps``: optional data time (seconds) of the examples; the
        batch's newest one stamps the updated rows (for expiry)."""
        return self._embed([self._spec], [inputs], training, timestamps)[0]

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if self._spec.combiner is not None and len(input_shape) == 2:
            return (input_shape[0], self.dim)
        return input_shape + (self.dim,)

    def get_config(self):
        config = super().get_config()
        config.update({k: v for k, v in self._spec.config.items()})
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
    a dict of embeddings, one per feature.
    """

    def __init__(self, features, timestamp_feature="timestamp", **kwargs):
        super().__init__(**kwargs)
        self.timestamp_feature = timestamp_feature
        if not features:
            raise ValueError("features must name at least one feature")
        self.features = {}
        self._feature_specs = []
        for feature, args in sorted(features.items()):
            args = dict(args)
            spec = _FeatureSpec(
                feature, int(args.pop("dim")),
                args.pop("initializer", "uniform(minval=-0.05, maxval=0.05)"),
                args.pop("optimizer", "adagrad"),
                _deserialize_learning_rate(args.pop("learning_rate", 0.01)),
                args.pop("combiner", None), args.pop("capacity_hint", 0), args.pop("seed", 0),
                memory_control=args)
            self.features[feature] = spec.config
            self._feature_specs.append(spec)
        self.tables = {spec.name: spec.table for spec in self._feature_specs}
        self._make_update_weights()

    def _specs(self):
        return self._feature_specs

    def call(self, inputs, training=None):
        missing = [s.name for s in self._feature_specs if s.name not in inputs]
        if missing:
            raise _invalid(f"inputs lack features {missing}")
        outputs = self._embed(self._feature_specs,
                              [inputs[s.name] for s in self._feature_specs], training,
                              inputs.get(self.timestamp_feature))
        return {spec.name: out for spec, out in zip(self._feature_specs, outputs)}

    def compute_output_shape(self, input_shape):
        shapes = {}
        for spec in self._feature_specs:  # the timestamp feature has no output
            shape = tuple(input_shape[spec.name])
            dim = spec.config["dim"]
            if spec.combiner is not None and len(shape) == 2:
                shapes[spec.name] = (shape[0], dim)
            else:
                shapes[spec.name] = shape + (dim,)
        return shapes

    def get_config(self):
        config = super().get_config()
        config["features"] = {name: dict(cfg) for name, cfg in self.features.items()}
        config["timestamp_feature"] = self.timestamp_feature
        return config
