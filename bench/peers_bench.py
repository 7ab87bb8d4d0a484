"""Our table against its peer, TFRA 0.8.1 (TensorFlow Recommenders-Addons'
cuckoo-hash dynamic embedding), on the same workload in one run, alternating.

TFRA supports TensorFlow up to 2.16, so it runs in a virtualenv of its own
(``make bench-peers`` builds it from bench/peers-requirements.txt); ours and
the dense ``tf.gather`` limit run in the project's. Each (system, round) is a
fresh process; rounds alternate the systems so drift of a noisy VM hits all.

Workload (per system): --keys random int64 ids, dim --dim, rows of 0.01
(and, for the optimizer, an accumulator of 0.1), then
  lookup   present ids, batches of --batch (best of 5 passes over 30 batches)
  reused   inserts of new ids into memory freed by removing as many ids
           (online training with expiry): ours = training lookups of new ids
           (row and optimizer state initialized), TFRA = upsert of the
           embedding and of the accumulator after remove
  fresh    inserts of new ids into a new table (fresh memory), with the
           machine's first-touch bandwidth measured in the same process
  adagrad  one Adagrad step on present ids: ours = the fused apply,
           TFRA = its round trip (lookup both, compute, upsert both), as its
           optimizers apply sparse gradients; gather = ResourceSparseApplyAdagradV2
           on dense variables

    make bench-peers          # or:
    .venv/bin/python bench/peers_bench.py --peer-python .venv-peers/bin/python
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workers  # noqa: E402
from table_bench import (dense_operations, first_touch_gb_per_s, round_trip_adagrad,  # noqa: E402
                         timed)

SYSTEMS = ("ours", "tfra", "gather")


def inserted_per_second(insert, batches, total):
    start = time.perf_counter()
    for batch in batches:
        insert(batch)
    return total / (time.perf_counter() - start)


def run_system(system, num_keys, dim, batch, repeats):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(1, 2**62, size=int(num_keys * 1.01), dtype=np.int64))
    keys = rng.permutation(keys)[:num_keys]
    fresh = np.unique(rng.integers(2**62, 2**63 - 1, size=int(num_keys * 1.01), dtype=np.int64))
    fresh = rng.permutation(fresh)[:num_keys]

    def batches_of(ids):
        return [tf.constant(ids[i:i + batch]) for i in range(0, len(ids), batch)]

    key_batches, fresh_batches = batches_of(keys), batches_of(fresh)
    probes = [tf.constant(rng.choice(keys, size=batch)) for _ in range(repeats)]
    grads = tf.constant(rng.normal(size=(batch, dim)).astype(np.float32) * 0.01)
    result = {"first_touch_gb_s": first_touch_gb_per_s()}

    if system == "ours":
        import monolith_tf as mt

        def new_table():
            table = mt.HashTable(dim, initializer="constant(value=0.01)", optimizer="adagrad")
            insert = tf.function(lambda ids: table.lookup(ids, training=True))
            insert(tf.constant([-1], tf.int64))
            table.remove([-1])
            return table, insert

        table, insert = new_table()
        result["fresh"] = inserted_per_second(insert, key_batches, num_keys)
        table.remove(keys)
        result["reused"] = inserted_per_second(insert, fresh_batches, num_keys)
        table.remove(fresh)
        inserted_per_second(insert, key_batches, num_keys)
        lookup = tf.function(lambda ids: table.lookup(ids, training=False))

        @tf.function
        def apply(ids):
            table.apply_gradients(ids, grads, 0.01)
    elif system == "tfra":
        import tensorflow_recommenders_addons as tfra
        de = tfra.dynamic_embedding
        rows, accs = tf.fill([batch, dim], 0.01), tf.fill([batch, dim], 0.1)

        def new_variables():
            return [de.get_variable(f"{name}_{time.monotonic_ns()}", key_dtype=tf.int64,
                                    value_dtype=tf.float32, dim=dim, initializer=0.0)
                    for name in ("embedding", "accumulator")]

        embedding, accumulator = new_variables()

        @tf.function
        def insert(ids):
            n = tf.shape(ids)[0]
            embedding.upsert(ids, rows[:n])
            accumulator.upsert(ids, accs[:n])

        @tf.function
        def remove(ids):
            embedding.remove(ids)
            accumulator.remove(ids)

        warm_up = tf.constant([-3], tf.int64)  # traced before timing, as ours
        insert(warm_up)
        remove(warm_up)
        result["fresh"] = inserted_per_second(insert, key_batches, num_keys)
        for ids in key_batches:
            remove(ids)
        result["reused"] = inserted_per_second(insert, fresh_batches, num_keys)
        for ids in fresh_batches:
            remove(ids)
        inserted_per_second(insert, key_batches, num_keys)
        lookup = tf.function(lambda ids: embedding.lookup(ids))
        apply = round_trip_adagrad(embedding, accumulator, grads,
                                   lambda table, ids, values: table.upsert(ids, values))
    else:
        variable = tf.Variable(tf.fill([num_keys, dim], 0.01))
        accumulator = tf.Variable(tf.fill([num_keys, dim], 0.1))
        probes = [tf.constant(rng.integers(0, num_keys, batch)) for _ in range(repeats)]
        lookup, apply = dense_operations(variable, accumulator, grads)

    result["lookup"] = batch / timed(lookup, probes)
    result["adagrad"] = batch / timed(apply, probes)
    result["tensorflow"] = tf.__version__
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer-python", default=".venv-peers/bin/python",
                        help="the Python of the virtualenv holding TFRA")
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--batch", type=int, default=65536)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help="comma-separated subset of " + ", ".join(SYSTEMS))
    parser.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        workers.emit(run_system(args.worker, args.keys, args.dim, args.batch, args.repeats))
        return
    systems = args.systems.split(",")
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown systems {unknown}; known: {', '.join(SYSTEMS)}")
    results = {system: [] for system in systems}
    common = ["--keys", args.keys, "--dim", args.dim, "--batch", args.batch,
              "--repeats", args.repeats]
    for round_index in range(args.rounds):
        for system in systems:
            python = args.peer_python if system == "tfra" else sys.executable
            results[system].append(workers.run(
                __file__, ["--worker", system] + common, f"{system} round {round_index}",
                python=python))
    report(results, args)


def report(results, args):
    def runs(system, field):
        return [r[field] for r in results.get(system, []) if field in r]

    def cell(system, field):
        values = runs(system, field)
        return ", ".join(f"{v / 1e6:.2f}" for v in values) if values else "-"

    def ratio(field, over):
        ours, other = runs("ours", field), runs(over, field)
        if not ours or not other:
            return "-"
        # Per round: the systems of one round ran back to back.
        ratios = [a / b for a, b in zip(ours, other)]
        return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"

    versions = ", ".join(f"{system} on TF {runs(system, 'tensorflow')[0]}" for system in results)
    print(f"{args.keys:,} keys, dim {args.dim}, batches of {args.batch:,}; M ids/s per round "
          f"({versions})\n")
    print("| operation | ours | TFRA 0.8.1 | tf.gather / dense | ours vs TFRA | ours vs dense |")
    print("|---|---|---|---|---|---|")
    for field, name in (("lookup", "lookup, present ids"), ("reused", "insert, reused memory"),
                        ("fresh", "insert, fresh memory"), ("adagrad", "Adagrad apply (rows)")):
        print(f"| {name} | {cell('ours', field)} | {cell('tfra', field)} | "
              f"{cell('gather', field)} | {ratio(field, 'tfra')} | {ratio(field, 'gather')} |")
    touch = [r["first_touch_gb_s"] for runs_of in results.values() for r in runs_of]
    print(f"\nfirst-touch bandwidth in the same processes: {min(touch):.2f}-{max(touch):.2f} GB/s")


if __name__ == "__main__":
    main()
