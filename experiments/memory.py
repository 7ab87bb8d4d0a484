"""Admission threshold and expiry against rows kept, memory and AUC.

A long-tail click stream: user ids Zipf(1.1) over 2M, item ids Zipf(1.1)
over a catalogue that drifts (each step shifts the item ids, so old items
go quiet). Click log-odds = user bias + item bias, so frequent ids carry
signal and one-off ids are noise. A logistic model on dim-8
HashEmbeddingCollection rows (user, item) trains with ``model.fit`` on the
first 90% of the stream (timestamps = step: seconds of data time); AUC is
measured on the last 10% (future traffic; predict inserts nothing).
Configurations: occurrence thresholds 0, 1, 2, 5 (counting filter), each
with expiry off and on (``expire_after`` 30 steps, evicting every 10
applies). ``bench/memory_bench.py`` runs the same code one process per
configuration.
"""

import numpy as np
import tensorflow as tf

from experiments.stats import auc
from monolith_tf.layers import HashEmbeddingCollection

BATCH, DIM = 4096, 8
THRESHOLDS = (0, 1, 2, 5)


def config_name(threshold, expire):
    return f"k={threshold}, {'expiry' if expire else 'no expiry'}"


def make_stream(steps, seed=0):
    """(users, items, step, labels) of ``steps`` batches of ``BATCH``."""
    rng = np.random.default_rng(seed)
    n = steps * BATCH
    user_rank = np.minimum(rng.zipf(1.1, n), 2_000_000)
    item_rank = np.minimum(rng.zipf(1.1, n), 200_000)
    step = np.repeat(np.arange(steps), BATCH)
    item = item_rank + 500 * step  # the catalogue drifts: old items go quiet
    salt = 0x5eed + 2 * seed

    def bias(ids, salt):
        # A fixed pseudo-random bias per id, without a table of all ids.
        with np.errstate(over="ignore"):
            h = (ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
                 + np.uint64(salt)) >> np.uint64(40)
        return (h.astype(np.float64) / 2**24 - 0.5) * 4.0

    logit = bias(user_rank, salt) + bias(item, salt + 1)
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return user_rank.astype(np.int64), item.astype(np.int64), step.astype(np.int64), label


def run_config(threshold, expire, steps, seed=0):
    """Trains one configuration; returns rows, memory_bytes, rejected,
    evicted (summed over both tables) and the held-out ``auc``."""
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(seed)
    users, items, step, labels = make_stream(steps, seed)
    split = int(0.9 * steps) * BATCH
    options = {"dim": DIM, "initializer": "zeros", "optimizer": "adagrad(initial_accumulator=0.1)",
               "learning_rate": 0.2, "occurrence_threshold": threshold,
               "admission_filter": "counting(width=262144, depth=4)"}
    if expire:
        options.update(expire_after=30, evict_every=10)
    collection = HashEmbeddingCollection({"user": options, "item": options})
    inputs = {name: tf.keras.Input(shape=(), dtype="int64", name=name)
              for name in ("user", "item", "timestamp")}
    rows = collection(inputs)
    # The first row element acts as a per-id bias; the rest as factors.
    logit = tf.keras.layers.Dense(1)(tf.keras.layers.Concatenate()([rows["user"], rows["item"]]))
    model = tf.keras.Model(inputs, logit)
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.2),
                  loss=tf.keras.losses.BinaryCrossentropy(from_logits=True))
    # Data time (the step) rides along as a feature; the tables see it on update.
    train = {"user": users[:split], "item": items[:split], "timestamp": step[:split]}
    model.fit(train, labels[:split, None], batch_size=BATCH, shuffle=False, verbose=0)
    held_out = {"user": users[split:], "item": items[split:], "timestamp": step[split:]}
    scores = model.predict(held_out, batch_size=BATCH, verbose=0).ravel()
    sizes = {name: {k: int(v) for k, v in t.stats().items()}
             for name, t in collection.tables.items()}
    return {"auc": auc(labels[split:], scores),
            "rows": sum(s["size"] for s in sizes.values()),
            "memory_bytes": sum(s["memory_bytes"] for s in sizes.values()),
            "rejected": sum(s["rejected"] for s in sizes.values()),
            "evicted": sum(s["evicted"] for s in sizes.values())}


def run_seed(seed, steps=200, thresholds=THRESHOLDS, verbose=False):
    """Every configuration on one seed: ``{config name: run_config result}``."""
    results = {}
    for threshold in thresholds:
        for expire in (False, True):
            name = config_name(threshold, expire)
            results[name] = run_config(threshold, expire, steps, seed)
            if verbose:
                r = results[name]
                print(f"  memory seed {seed} {name}: {r['rows']:,} rows, "
                      f"{r['memory_bytes'] / 2**20:.1f} MB, AUC {r['auc']:.4f}", flush=True)
    return results
