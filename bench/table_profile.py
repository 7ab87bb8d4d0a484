"""A steady loop of one table operation through the ops, for profilers:

    perf record -g -o build/lookup.perf -- \\
        .venv/bin/python bench/table_profile.py --op lookup --seconds 10
    perf report -i build/lookup.perf --no-children --percent-limit 1

Builds a table of --keys random int64 ids (dim --dim, Adagrad), then runs
--op on batches of --batch ids for --seconds and prints the rate:
  lookup            present ids, serving lookup (training=False)
  gather            tf.gather on a variable of the same rows (the no-hash limit)
  insert_reused     training lookups of new ids into memory freed by removing
                    as many ids (the steady state of online training with expiry)
  adagrad           fused Adagrad apply on present ids
  lookup_vs_gather  lookup and gather alternating in windows of --window
                    seconds in this one process, printed as a table with the
                    ratio per window: on a VM whose speed differs between
                    processes, the ratio of one process is the steadier figure
The setup is done before the timed loop, so a profile taken over the whole
run is dominated by the operation.
"""

import argparse
import time

import numpy as np
import tensorflow as tf

import monolith_tf as mt


def make_step(op, args, rng, keys):
    """Returns (step, batches) for `op`: step(batch) runs the op once."""
    if op == "gather":
        variable = tf.Variable(tf.fill([args.keys, args.dim], 0.01))
        batches = [tf.constant(rng.integers(0, args.keys, args.batch)) for _ in range(16)]
        return tf.function(lambda ids: tf.gather(variable, ids)), batches
    batches = [tf.constant(rng.choice(keys, size=args.batch)) for _ in range(16)]
    table = mt.HashTable(args.dim, initializer="constant(value=0.01)", optimizer="adagrad")
    insert = tf.function(lambda ids: table.lookup(ids, training=True))
    for start in range(0, args.keys, args.batch):
        insert(tf.constant(keys[start:start + args.batch]))
    if op == "lookup":
        return tf.function(lambda ids: table.lookup(ids, training=False)), batches
    if op == "adagrad":
        grads = tf.constant(rng.normal(size=(args.batch, args.dim)).astype(np.float32) * 0.01)

        @tf.function
        def apply(ids):
            table.apply_gradients(ids, grads, 0.01)
        return apply, batches
    # Each step removes one batch of ids and inserts as many new ones.
    state = {"live": list(range(0, args.keys, args.batch)), "next": 2**62}
    slices = {start: tf.constant(keys[start:start + args.batch]) for start in state["live"]}

    def insert_reused(_):
        start = state["live"].pop(0)
        table.remove(slices[start])
        fresh = np.arange(state["next"], state["next"] + args.batch, dtype=np.int64)
        state["next"] += args.batch
        slices[start] = tf.constant(fresh)
        state["live"].append(start)
        return insert(slices[start])
    return insert_reused, batches


def rate(step, batches, seconds):
    """Runs step over the batches for `seconds`; returns (M ids/s, calls, seconds)."""
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step(batches[calls % len(batches)])
        calls += 1
    elapsed = time.perf_counter() - started
    return calls * int(batches[0].shape[0]) / elapsed / 1e6, calls, elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--op", choices=("lookup", "gather", "insert_reused", "adagrad",
                                         "lookup_vs_gather"),
                        default="lookup")
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--batch", type=int, default=65536)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=1.0,
                        help="seconds per window of lookup_vs_gather")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(1, 2**62, size=int(args.keys * 1.01), dtype=np.int64))
    keys = rng.permutation(keys)[:args.keys]
    if args.op == "lookup_vs_gather":
        steps = {op: make_step(op, args, rng, keys) for op in ("lookup", "gather")}
        for step, batches in steps.values():
            step(batches[0])
        print("| window | lookup, M ids/s | tf.gather, M ids/s | lookup / gather |")
        print("|---|---|---|---|")
        ratios = []
        for window in range(max(1, round(args.seconds / (2 * args.window)))):
            ours = rate(*steps["lookup"], args.window)[0]
            dense = rate(*steps["gather"], args.window)[0]
            ratios.append(ours / dense)
            print(f"| {window + 1} | {ours:.2f} | {dense:.2f} | {ours / dense:.2f}x |")
        print(f"median lookup / gather: {float(np.median(ratios)):.2f}x")
        return
    step, batches = make_step(args.op, args, rng, keys)
    step(batches[0])
    ids_per_second, calls, seconds = rate(step, batches, args.seconds)
    print(f"{args.op}: {ids_per_second:.2f} M ids/s "
          f"({calls} calls of {args.batch} in {seconds:.1f} s)")


if __name__ == "__main__":
    main()
