"""A steady loop of one table operation through the ops, for profilers:

    perf record -g -o build/lookup.perf -- \\
        .venv/bin/python bench/table_profile.py --op lookup --seconds 10
    perf report -i build/lookup.perf --no-children --percent-limit 1

Builds a table of --keys random int64 ids (dim --dim, Adagrad), then runs
--op on batches of --batch ids for --seconds and prints the rate:
  lookup            present ids, serving lookup (training=False)
  gather            tf.gather on a variable of the same rows (the no-hash limit)
  insert_reused     training lookups of new ids into memory freed by removing
                    as many ids (the steady state of online training with
                    expiry); each removal runs before its timed insert and is
                    not counted in the rate
  assign_reused     the same, through assign (values given) instead of
                    training lookups
  scatter           the rows an insert writes, without the hash: scatter
                    initial embedding and accumulator rows to random rows of
                    two variables, then gather the embeddings (the no-hash
                    limit of an insert)
  adagrad           fused Adagrad apply on present ids
  lookup_vs_gather, insert_vs_scatter
                    ours and the dense limit alternating in windows of
                    --window seconds in this one process, printed as a table
                    with the ratio per window: on a VM whose speed differs
                    between processes, the ratio of one process is the
                    steadier figure
The setup is done before the timed loop, so a profile taken over the whole
run is dominated by the operation.
"""

import argparse
import time

import numpy as np
import tensorflow as tf

import monolith_tf as mt


# Comparison ops: (our op, its dense limit, how the table names the limit).
COMPARISONS = {
    "lookup_vs_gather": ("lookup", "gather", "tf.gather"),
    "insert_vs_scatter": ("insert_reused", "scatter", "dense scatter"),
}


def make_step(op, args, rng, keys):
    """Returns (step, batches) for `op`: step(batch) runs the op once."""
    if op == "gather":
        variable = tf.Variable(tf.fill([args.keys, args.dim], 0.01))
        batches = [tf.constant(rng.integers(0, args.keys, args.batch)) for _ in range(16)]
        return tf.function(lambda ids: tf.gather(variable, ids)), batches
    if op == "scatter":
        embeddings = tf.Variable(tf.fill([args.keys, args.dim], 0.01))
        accumulators = tf.Variable(tf.fill([args.keys, args.dim], 0.1))
        batches = [tf.constant(rng.integers(0, args.keys, args.batch)) for _ in range(16)]
        initial = tf.fill([args.batch, args.dim], 0.01)
        initial_accumulators = tf.fill([args.batch, args.dim], 0.1)

        @tf.function
        def scatter(ids):
            embeddings.scatter_update(tf.IndexedSlices(initial, ids))
            accumulators.scatter_update(tf.IndexedSlices(initial_accumulators, ids))
            return tf.gather(embeddings, ids)
        return scatter, batches
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

    def remove_oldest():
        start = state["live"].pop(0)
        table.remove(slices[start])
        fresh = np.arange(state["next"], state["next"] + args.batch, dtype=np.int64)
        state["next"] += args.batch
        slices[start] = tf.constant(fresh)
        state["live"].append(start)

    if op == "assign_reused":
        @tf.function
        def write(ids):
            table.assign(ids, tf.fill([tf.size(ids), args.dim], 0.5))
    else:
        write = insert

    def insert_reused(_):
        return write(slices[state["live"][-1]])
    insert_reused.prepare = remove_oldest
    return insert_reused, batches


def rate(step, batches, seconds):
    """Runs step over the batches for `seconds`; returns (M ids/s, calls, seconds).

    A step with a `prepare` function gets it called before each call, outside
    the timed part (it still shows in a profile)."""
    prepare = getattr(step, "prepare", None)
    calls, timed, started = 0, 0.0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        if prepare is not None:
            prepare()
        call_started = time.perf_counter()
        step(batches[calls % len(batches)])
        timed += time.perf_counter() - call_started
        calls += 1
    return calls * int(batches[0].shape[0]) / timed / 1e6, calls, timed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--op", choices=("lookup", "gather", "insert_reused", "assign_reused",
                                         "scatter", "adagrad", *COMPARISONS),
                        default="lookup")
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--batch", type=int, default=65536)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=1.0,
                        help="seconds per window of a comparison")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(1, 2**62, size=int(args.keys * 1.01), dtype=np.int64))
    keys = rng.permutation(keys)[:args.keys]
    if args.op in COMPARISONS:
        ours_op, dense_op, dense_name = COMPARISONS[args.op]
        steps = {op: make_step(op, args, rng, keys) for op in (ours_op, dense_op)}
        for step, batches in steps.values():
            step(batches[0])
        print(f"| window | {ours_op}, M ids/s | {dense_name}, M ids/s | {ours_op} / {dense_op} |")
        print("|---|---|---|---|")
        ratios = []
        for window in range(max(1, round(args.seconds / (2 * args.window)))):
            ours = rate(*steps[ours_op], args.window)[0]
            dense = rate(*steps[dense_op], args.window)[0]
            ratios.append(ours / dense)
            print(f"| {window + 1} | {ours:.2f} | {dense:.2f} | {ours / dense:.2f}x |")
        print(f"median {ours_op} / {dense_op}: {float(np.median(ratios)):.2f}x")
        return
    step, batches = make_step(args.op, args, rng, keys)
    step(batches[0])
    ids_per_second, calls, seconds = rate(step, batches, args.seconds)
    print(f"{args.op}: {ids_per_second:.2f} M ids/s "
          f"({calls} calls of {args.batch} in {seconds:.1f} s)")


if __name__ == "__main__":
    main()
