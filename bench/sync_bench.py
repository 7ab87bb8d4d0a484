"""Cost of a sync push: building and writing the rows touched since the last
push, for a large table with few touched rows (the cost must follow the
touched rows, not the table).

A table of --rows rows (dim 32, Adagrad) is filled; then, --repeats times,
--touched random rows get a gradient step and ``SyncPublisher.push_rows``
runs: ``take_sync_changes`` (the changed-keys record), encoding
(``sync_format``) and writing to an embedded log with ``flush`` (fsync
policy ``flush``: durable on return). Baseline in the same run: finding the
same rows as a delta checkpoint does (``export(only_dirty=True)``: one pass
over the index with the dirty bitmap). Size: bytes on the wire against the
rows' own bytes (8-byte id + dim float32).

    PYTHONPATH=. .venv/bin/python bench/sync_bench.py [--rows 10000000 --touched 10000]
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checkpoint_bench import DIM, build_table  # noqa: E402


class _Worker:
    """What a push reads of the training worker."""

    def __init__(self, tables):
        self.tables, self.step, self.data_time = tables, 0, 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--touched", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    import tensorflow as tf

    from monolith_tf.streaming import open_log
    from monolith_tf.sync.publisher import SyncPublisher

    started = time.perf_counter()
    table, keys = build_table(args.rows)
    print(f"built {args.rows:,} rows in {time.perf_counter() - started:.0f} s", flush=True)
    log = open_log({"path": tempfile.mkdtemp(prefix="sync_bench_")})
    publisher = SyncPublisher(log, tempfile.mkdtemp(), sparse_every_secs=1.0,
                              dense_every_secs=None)
    publisher.connect()
    worker = _Worker({"bench/ids": table})
    table.take_sync_changes()                 # starts the record
    table.export(only_dirty=True, clear_dirty=True)
    rng = np.random.default_rng(1)
    push_ms, find_ms, sizes = [], [], []
    for _ in range(args.repeats):
        touched = rng.choice(keys, args.touched, replace=False)
        table.apply_gradients(tf.constant(touched), tf.ones([args.touched, DIM]), 0.01)
        t0 = time.perf_counter()
        counts = publisher.push_rows(worker)
        push_ms.append((time.perf_counter() - t0) * 1e3)
        assert counts["rows"] == args.touched, counts
        sizes.append(counts["bytes"])
        t0 = time.perf_counter()
        delta = table.export(only_dirty=True, clear_dirty=True)
        find_ms.append((time.perf_counter() - t0) * 1e3)
        assert len(delta["keys"]) == args.touched
    row_bytes = args.touched * (8 + 4 * DIM)
    print(f"\n{args.rows:,} rows, dim {DIM}, {args.touched:,} touched per push, "
          f"{args.repeats} pushes, {os.cpu_count()} CPUs\n")
    print("| | ms per push: median (min-max) |")
    print("|---|---|")
    print(f"| sync push: take + encode + write + flush | {np.median(push_ms):.1f} "
          f"({min(push_ms):.1f}-{max(push_ms):.1f}) |")
    print(f"| baseline: the delta checkpoint's scan for the same rows (export only_dirty) "
          f"| {np.median(find_ms):.1f} ({min(find_ms):.1f}-{max(find_ms):.1f}) |")
    print(f"\npush size {np.median(sizes):,.0f} bytes = {np.median(sizes) / row_bytes:.3f}x "
          f"the rows' bytes ({row_bytes:,}: 8-byte id + {DIM} float32)")


if __name__ == "__main__":
    main()
