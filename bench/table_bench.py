"""Speed and memory of the hash table against stock TensorFlow, in one run.

For each (keys, dim) it measures, each system in a fresh process:
  insert   new keys/s: ours = training lookup of new ids (row + optimizer
           state initialized); DenseHashTable = insert of embedding and
           Adagrad accumulator rows (TFRA keeps slots in separate tables).
  lookup   present keys/s, random ids from the table.
  adagrad  rows/s of one fused Adagrad step: ours = apply_gradients;
           DenseHashTable = lookup, compute, insert back (TFRA's round trip);
           dense = ResourceSparseApplyAdagradV2 on a variable.
  bytes/entry  RSS growth / keys after the insert, against the payload
           (key 8 + embedding 4*dim + accumulator 4*dim + metadata 12).
  insert is also run into reused memory (ids removed, new ids inserted: the
  steady state with expiry) and with the seeded random initializer; the
  first-touch column is this VM's speed at committing fresh pages, which
  bounds inserts into fresh memory.
The dense tf.gather over a variable is the no-hash limit (ids 0..n-1).

    python bench/table_bench.py                      # 1M and 10M keys, dim 8/32/64
    python bench/table_bench.py --keys 1000000 --dims 32
"""

import argparse
import json
import os
import time

import workers

BATCH = 65536
SYSTEMS = ("monolith", "dense_hash_table", "dense_gather")


def payload_bytes(dim):
    return 8 + 4 * dim + 4 * dim + 12


def rss_bytes():
    import psutil
    return psutil.Process().memory_info().rss


def warm_memory(num_bytes):
    """Touches and frees `num_bytes` so the run measures the table, not the
    hypervisor backing never-touched guest pages (seen here: 0.7 GB/s on first
    touch against 8 GB/s after). Every system gets the same warm-up."""
    import numpy as np
    block = np.ones(num_bytes, np.uint8)
    del block


def first_touch_gb_per_s(num_bytes=256 << 20):
    """How fast this machine commits never-touched memory right now (GB/s):
    the ceiling of inserting new ids into fresh memory."""
    import numpy as np
    start = time.perf_counter()
    block = np.ones(num_bytes, np.uint8)
    seconds = time.perf_counter() - start
    del block
    return num_bytes / seconds / 1e9


def timed(fn, batches, rounds=5):
    """Seconds per call of fn(batch): the best of `rounds` passes over
    `batches`, after one warm-up call. Best-of damps the noise of a shared
    2-core VM; every system is timed the same way."""
    fn(batches[0])
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for batch in batches:
            fn(batch)
        best = min(best, (time.perf_counter() - start) / len(batches))
    return best


def dense_operations(variable, accumulator, grads):
    """The no-hash limit: tf.gather on a variable, and TensorFlow's fused
    sparse Adagrad on it (as tf_keras applies sparse gradients); both as
    tf.functions of the row positions."""
    import tensorflow as tf

    @tf.function
    def apply(ids):
        tf.raw_ops.ResourceSparseApplyAdagradV2(
            var=variable.handle, accum=accumulator.handle, lr=0.01, epsilon=1e-7,
            grad=grads, indices=ids)

    return tf.function(lambda ids: tf.gather(variable, ids)), apply


def round_trip_adagrad(embedding, accumulator, grads, store):
    """A hash table's Adagrad step as its users write it (TFRA's optimizers
    do the same): look up the distinct ids' rows and accumulators, compute,
    write both back with ``store(table, ids, values)``; a tf.function of the
    ids."""
    import tensorflow as tf

    @tf.function
    def apply(ids):
        unique, position = tf.unique(ids)
        summed = tf.math.unsorted_segment_sum(grads, position, tf.shape(unique)[0])
        acc = accumulator.lookup(unique) + summed * summed
        rows = embedding.lookup(unique) - 0.01 * summed / (tf.sqrt(acc) + 1e-7)
        store(accumulator, unique, acc)
        store(embedding, unique, rows)

    return apply


def run_system(system, num_keys, dim, batch, repeats, warm_bytes):
    import numpy as np
    import tensorflow as tf

    if warm_bytes:
        warm_memory(warm_bytes)
    rng = np.random.default_rng(0)
    if system == "dense_gather":
        keys = np.arange(num_keys, dtype=np.int64)
    else:
        keys = np.unique(rng.integers(1, 2**62, size=int(num_keys * 1.01), dtype=np.int64))
        keys = rng.permutation(keys)[:num_keys]
    insert_batches = [tf.constant(keys[i:i + batch]) for i in range(0, num_keys, batch)]
    probe_batches = [tf.constant(rng.choice(keys, size=batch)) for _ in range(repeats)]
    grads = tf.constant(rng.normal(size=(batch, dim)).astype(np.float32) * 0.01)
    result = {}

    if system == "monolith":
        import monolith_tf as mt

        def insert_all(insert, batches):
            start = time.perf_counter()
            for ids in batches:
                insert(ids)
            return num_keys / (time.perf_counter() - start)

        random_table = mt.HashTable(dim, initializer="uniform(minval=-0.05, maxval=0.05)",
                                    optimizer="adagrad")
        insert_random = tf.function(lambda ids: random_table.lookup(ids, training=True))
        insert_random(tf.constant([-1], tf.int64))
        result["insert_random"] = insert_all(insert_random, insert_batches)
        del random_table, insert_random

        result["first_touch_gb_s"] = first_touch_gb_per_s()
        table = mt.HashTable(dim, initializer="constant(value=0.01)", optimizer="adagrad")
        insert = tf.function(lambda ids: table.lookup(ids, training=True))
        insert(tf.constant([-1], tf.int64))
        table.remove([-1])
        before = rss_bytes()
        result["insert"] = insert_all(insert, insert_batches)
        result["bytes_per_entry"] = (rss_bytes() - before) / num_keys
        # Steady state of online training with expiry: rows freed by removal
        # are reused, so new ids touch no fresh memory and the index is sized.
        fresh = rng.integers(2**62, 2**63 - 1, size=int(num_keys * 1.01), dtype=np.int64)
        fresh = rng.permutation(np.unique(fresh))[:num_keys]
        table.remove(keys)
        result["insert_reused"] = insert_all(
            insert, [tf.constant(fresh[i:i + batch]) for i in range(0, num_keys, batch)])
        table.remove(fresh)
        insert_all(insert, insert_batches)
        lookup = tf.function(lambda ids: table.lookup(ids, training=False))

        @tf.function
        def apply(ids):
            table.apply_gradients(ids, grads, 0.01)
    elif system == "dense_hash_table":
        def new_table():
            return tf.lookup.experimental.DenseHashTable(
                tf.int64, tf.float32, default_value=tf.zeros([dim]), empty_key=-1,
                deleted_key=-2)
        embedding, accumulator = new_table(), new_table()
        init_rows = tf.fill([batch, dim], 0.01)
        init_acc = tf.fill([batch, dim], 0.1)

        @tf.function
        def insert(ids):
            n = tf.shape(ids)[0]
            embedding.insert(ids, init_rows[:n])
            accumulator.insert(ids, init_acc[:n])

        insert(tf.constant([-3], tf.int64))
        before = rss_bytes()
        start = time.perf_counter()
        for ids in insert_batches:
            insert(ids)
        result["insert"] = num_keys / (time.perf_counter() - start)
        result["bytes_per_entry"] = (rss_bytes() - before) / num_keys
        lookup = tf.function(lambda ids: embedding.lookup(ids))
        apply = round_trip_adagrad(embedding, accumulator, grads,
                                   lambda table, ids, values: table.insert(ids, values))
    else:
        before = rss_bytes()
        variable = tf.Variable(tf.fill([num_keys, dim], 0.01))
        accumulator = tf.Variable(tf.fill([num_keys, dim], 0.1))
        result["bytes_per_entry"] = (rss_bytes() - before) / num_keys
        lookup, apply = dense_operations(variable, accumulator, grads)

    result["lookup"] = batch / timed(lookup, probe_batches)
    result["adagrad"] = batch / timed(apply, probe_batches)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", default="1000000,10000000")
    parser.add_argument("--dims", default="8,32,64")
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--repeats", type=int, default=30, help="batches per timed phase")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--warm-bytes", type=int, default=-1,
                        help="memory touched before each run (default: 3x the payload, "
                             "at most 12 GiB; 0 skips)")
    parser.add_argument("--worker", nargs=3, metavar=("SYSTEM", "KEYS", "DIM"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        system, keys, dim = args.worker[0], int(args.worker[1]), int(args.worker[2])
        warm = args.warm_bytes if args.warm_bytes >= 0 else min(3 * keys * payload_bytes(dim),
                                                               12 << 30)
        workers.emit(run_system(system, keys, dim, args.batch, args.repeats, warm))
        return

    rows = []
    for num_keys in (int(k) for k in args.keys.split(",")):
        for dim in (int(d) for d in args.dims.split(",")):
            row = {"keys": num_keys, "dim": dim}
            for system in args.systems.split(","):
                row[system] = workers.run(
                    __file__, ["--worker", system, num_keys, dim, "--batch", args.batch,
                               "--repeats", args.repeats, "--warm-bytes", args.warm_bytes],
                    f"{system} at keys={num_keys} dim={dim}")
            rows.append(row)
            print_row(row, header=len(rows) == 1)
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(args.json + ".tmp", args.json)


def print_row(row, header):
    """One markdown row: our figure, the baselines, and our ratio to each."""
    m = row.get("monolith", {})
    d = row.get("dense_hash_table", {})
    g = row.get("dense_gather", {})

    def rate(x):
        return f"{x / 1e6:.2f}" if x else "-"

    def ratio(a, b):
        return f"{a / b:.2f}x" if a and b else "-"

    if header:
        print("| keys | dim | insert M/s (ours / DHT) | ours: random init / reused memory | "
              "lookup M/s (ours / DHT / gather) | lookup vs gather | "
              "adagrad M rows/s (ours / DHT / dense) | adagrad vs dense | "
              "bytes/entry (ours / DHT / dense) | ours / payload | first-touch GB/s |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
    payload = payload_bytes(row["dim"])
    print(f"| {row['keys']:,} | {row['dim']} "
          f"| {rate(m.get('insert'))} / {rate(d.get('insert'))} "
          f"| {rate(m.get('insert_random'))} / {rate(m.get('insert_reused'))} "
          f"| {rate(m.get('lookup'))} / {rate(d.get('lookup'))} / {rate(g.get('lookup'))} "
          f"| {ratio(m.get('lookup'), g.get('lookup'))} "
          f"| {rate(m.get('adagrad'))} / {rate(d.get('adagrad'))} / {rate(g.get('adagrad'))} "
          f"| {ratio(m.get('adagrad'), g.get('adagrad'))} "
          f"| {m.get('bytes_per_entry', 0):.0f} / {d.get('bytes_per_entry', 0):.0f} / "
          f"{g.get('bytes_per_entry', 0):.0f} "
          f"| {ratio(m.get('bytes_per_entry'), payload)} "
          f"| {m.get('first_touch_gb_s', 0):.1f} |", flush=True)


if __name__ == "__main__":
    main()
