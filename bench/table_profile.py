"""A steady loop of one table operation through the ops, for profilers:

    perf record -g -o build/lookup.perf -- \\
        .venv/bin/python bench/table_profile.py --op lookup --seconds 10
    perf report -i build/lookup.perf --no-children --percent-limit 1

Builds a table of --keys random int64 ids (dim --dim, Adagrad), then runs
--op on batches of --batch ids for --seconds and prints the rate:
  lookup         present ids, serving lookup (training=False)
  gather         tf.gather on a variable of the same rows (the no-hash limit)
  insert_reused  training lookups of new ids into memory freed by removing
                 as many ids (the steady state of online training with expiry)
  adagrad        fused Adagrad apply on present ids
The setup is done before the timed loop, so a profile taken over the whole
run is dominated by the operation.
"""

import argparse
import time

import numpy as np
import tensorflow as tf

import monolith_tf as mt


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--op", choices=("lookup", "gather", "insert_reused", "adagrad"),
                        default="lookup")
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--batch", type=int, default=65536)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(1, 2**62, size=int(args.keys * 1.01), dtype=np.int64))
    keys = rng.permutation(keys)[:args.keys]
    batches = [tf.constant(rng.choice(keys, size=args.batch)) for _ in range(16)]
    grads = tf.constant(rng.normal(size=(args.batch, args.dim)).astype(np.float32) * 0.01)
    if args.op == "gather":
        variable = tf.Variable(tf.fill([args.keys, args.dim], 0.01))
        batches = [tf.constant(rng.integers(0, args.keys, args.batch)) for _ in range(16)]
        step = tf.function(lambda ids: tf.gather(variable, ids))
    else:
        table = mt.HashTable(args.dim, initializer="constant(value=0.01)", optimizer="adagrad")
        insert = tf.function(lambda ids: table.lookup(ids, training=True))
        for start in range(0, args.keys, args.batch):
            insert(tf.constant(keys[start:start + args.batch]))
        if args.op == "lookup":
            step = tf.function(lambda ids: table.lookup(ids, training=False))
        elif args.op == "adagrad":
            @tf.function
            def step(ids):
                table.apply_gradients(ids, grads, 0.01)
        else:
            # Each step removes one batch of ids and inserts as many new ones.
            state = {"live": list(range(0, args.keys, args.batch)), "next": 2**62}
            slices = {start: tf.constant(keys[start:start + args.batch])
                      for start in state["live"]}

            def step(_):
                start = state["live"].pop(0)
                table.remove(slices[start])
                fresh = np.arange(state["next"], state["next"] + args.batch, dtype=np.int64)
                state["next"] += args.batch
                slices[start] = tf.constant(fresh)
                state["live"].append(start)
                return insert(slices[start])
    step(batches[0])
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < args.seconds:
        step(batches[calls % 16])
        calls += 1
    seconds = time.perf_counter() - started
    print(f"{args.op}: {calls * args.batch / seconds / 1e6:.2f} M ids/s "
          f"({calls} calls of {args.batch} in {seconds:.1f} s)")


if __name__ == "__main__":
    main()
