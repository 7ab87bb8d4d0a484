"""Table size, bytes and held-out AUC under admission thresholds and expiry.

A long-tail click stream: user ids Zipf(1.1) over 2M, item ids Zipf(1.1) over
a catalogue that drifts (each step shifts the item ids, so old items go
quiet). Click log-odds = user bias + item bias, so frequent ids carry signal
and one-off ids are noise. A logistic model on dim-8 HashEmbeddingCollection
rows (user, item) trains with model.fit on the first 90% of the stream,
timestamps = step (seconds of data time); AUC is measured on the last 10%
(future traffic, predict inserts nothing). Each configuration runs in a fresh
process: occurrence thresholds 0, 1, 2, 5 (counting filter), each with expiry
off and on (expire_after 30 steps, evicting every 10 applies).

    PYTHONPATH=. .venv/bin/python bench/memory_bench.py [--steps 200] [--plot bench/memory_bench.png]
"""

import argparse
import os

import workers

BATCH, DIM = 4096, 8


def make_stream(steps, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    n = steps * BATCH
    user_rank = np.minimum(rng.zipf(1.1, n), 2_000_000)
    item_rank = np.minimum(rng.zipf(1.1, n), 200_000)
    step = np.repeat(np.arange(steps), BATCH)
    item = item_rank + 500 * step  # the catalogue drifts: old items go quiet
    bias_seed = 0x5eed

    def bias(ids, salt):
        # A fixed pseudo-random bias per id, without a table of all ids.
        h = (ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(salt)) >> np.uint64(
            40)
        return (h.astype(np.float64) / 2**24 - 0.5) * 4.0

    logit = bias(user_rank, bias_seed) + bias(item, bias_seed + 1)
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return user_rank.astype(np.int64), item.astype(np.int64), step.astype(np.int64), label


def run_worker(threshold, expire, steps):
    import numpy as np
    import tensorflow as tf

    from monolith_tf.layers import HashEmbeddingCollection

    users, items, step, labels = make_stream(steps)
    split = int(0.9 * steps) * BATCH
    options = {"dim": DIM, "initializer": "zeros", "optimizer": "adagrad(initial_accumulator=0.1)",
               "learning_rate": 0.2, "occurrence_threshold": threshold,
               "admission_filter": "counting(width=262144, depth=4)"}
    if expire:
        options.update(expire_after=30, evict_every=10)
    collection = HashEmbeddingCollection({"user": options, "item": options})
    user_in = tf.keras.Input(shape=(), dtype="int64", name="user")
    item_in = tf.keras.Input(shape=(), dtype="int64", name="item")
    time_in = tf.keras.Input(shape=(), dtype="int64", name="timestamp")
    rows = collection({"user": user_in, "item": item_in, "timestamp": time_in})
    # The first row element acts as a per-id bias; the rest as factors.
    logit = tf.keras.layers.Dense(1)(tf.keras.layers.Concatenate()([rows["user"], rows["item"]]))
    model = tf.keras.Model({"user": user_in, "item": item_in, "timestamp": time_in}, logit)
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.2),
                  loss=tf.keras.losses.BinaryCrossentropy(from_logits=True))
    # Data time (the step) rides along as a feature; the tables see it on update.
    train = {"user": users[:split], "item": items[:split], "timestamp": step[:split]}
    model.fit(train, labels[:split, None], batch_size=BATCH, shuffle=False, verbose=0)
    held_out = {"user": users[split:], "item": items[split:], "timestamp": step[split:]}
    scores = model.predict(held_out, batch_size=BATCH, verbose=0).ravel()
    auc = tf.keras.metrics.AUC()
    auc.update_state(labels[split:], tf.sigmoid(scores))
    sizes = {name: {k: int(v) for k, v in t.stats().items()}
             for name, t in collection.tables.items()}
    return {"auc": float(auc.result()),
            "rows": sum(s["size"] for s in sizes.values()),
            "memory_bytes": sum(s["memory_bytes"] for s in sizes.values()),
            "rejected": sum(s["rejected"] for s in sizes.values()),
            "evicted": sum(s["evicted"] for s in sizes.values())}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--thresholds", default="0,1,2,5")
    parser.add_argument("--plot", help="write a PNG chart here")
    parser.add_argument("--worker", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        workers.emit(run_worker(args.worker[0], args.worker[1], args.steps))
        return
    results = []
    print("| threshold | expiry | rows | memory MB | rejected occurrences | evicted | "
          "held-out AUC |")
    print("|---|---|---|---|---|---|---|")
    for threshold in (int(t) for t in args.thresholds.split(",")):
        for expire in (0, 1):
            r = workers.run(__file__, ["--steps", args.steps, "--worker", threshold, expire],
                            f"threshold {threshold} expiry {expire}")
            results.append((threshold, expire, r))
            print(f"| {threshold} | {'on' if expire else 'off'} | {r['rows']:,} | "
                  f"{r['memory_bytes'] / 2**20:.1f} | {r['rejected']:,} | {r['evicted']:,} | "
                  f"{r['auc']:.4f} |", flush=True)
    if args.plot:
        plot(results, args.plot)


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"k={t}\n{'exp' if e else 'no exp'}" for t, e, _ in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.bar(labels, [r["rows"] / 1e6 for _, _, r in results], color="tab:blue")
    left.set_ylabel("table rows (M)")
    right.bar(labels, [r["auc"] for _, _, r in results], color="tab:green")
    right.set_ylabel("held-out AUC")
    low = min(r["auc"] for _, _, r in results)
    right.set_ylim(low - 0.01, max(r["auc"] for _, _, r in results) + 0.005)
    for axis in (left, right):
        axis.tick_params(axis="x", labelsize=7)
    fig.suptitle("Admission threshold k and expiry on a long-tail click stream")
    fig.tight_layout()
    fig.savefig(path + ".partial.png", dpi=100)
    os.replace(path + ".partial.png", path)


if __name__ == "__main__":
    main()
