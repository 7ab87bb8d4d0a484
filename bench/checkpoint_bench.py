"""Sparse checkpoint speed and memory: monolith_tf.sparse_checkpoint against
tf.train.Checkpoint of the same HashTable (TensorFlow's own path, which
materializes the whole table as tensors, as TFRA's checkpoints do).

For each system, in a fresh process: build a table of --rows rows (dim 32,
Adagrad: 32 floats of embedding + 32 of accumulator per row), then
  full save     rows/s and MB/s (bytes written, fsync included for ours),
  restore       into a fresh table in a fresh process, rows/s and MB/s,
  delta save    after updating --touched random rows (ours only; the
                baseline can only save everything): milliseconds, median of 3,
  peak extra    resident memory during the full save above the table's own,
                sampled every millisecond, as a fraction of the table's bytes;
                for restore, the peak beyond the restored table's bytes.

    PYTHONPATH=. .venv/bin/python bench/checkpoint_bench.py [--rows 10000000]
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workers  # noqa: E402

DIM = 32


def directory_bytes(path):
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path)
               for f in files)


def build_table(rows, seed=0):
    import numpy as np

    import monolith_tf as mt

    table = mt.HashTable(DIM, optimizer="adagrad", capacity_hint=rows, seed=seed)
    rng = np.random.default_rng(seed)
    keys = rng.permutation(rows * 4)[:rows].astype(np.int64) * 7919 + 13
    block = 1 << 16  # small blocks: the build's transient memory stays tiny
    for start in range(0, rows, block):
        k = keys[start:start + block]
        table.import_rows(k, rng.standard_normal((len(k), DIM), np.float32),
                          np.full((len(k), table.state_dim), 0.1, np.float32),
                          np.full(len(k), 1_000_000, np.int64), np.ones(len(k), np.int64))
    return table, keys


def worker_ours(rows, touched, directory):
    import numpy as np

    import monolith_tf as mt
    from monolith_tf.sparse_checkpoint import SparseCheckpointer

    table, keys = build_table(rows)
    table_bytes = int(table.stats()["memory_bytes"])
    saver = SparseCheckpointer(directory, {"emb": table})
    with workers.PeakSampler() as memory:
        start = time.perf_counter()
        path = saver.save(full=True)
        full_seconds = time.perf_counter() - start
    full_bytes = directory_bytes(path)

    rng = np.random.default_rng(1)
    delta_ms, delta_bytes = [], []
    for _ in range(3):
        ids = rng.choice(keys, touched, replace=False)
        table.apply_gradients(ids, np.ones((touched, DIM), np.float32), 0.01, timestamps=2_000_000)
        start = time.perf_counter()
        path = saver.save()
        delta_ms.append(1000 * (time.perf_counter() - start))
        delta_bytes.append(directory_bytes(path))
    workers.emit({"full_seconds": full_seconds, "full_bytes": full_bytes,
                  "table_bytes": table_bytes, "peak_extra": memory.peak - memory.start_rss,
                  "delta_ms": statistics.median(delta_ms),
                  "delta_bytes": statistics.median(delta_bytes)})


def restore_ours(rows, directory):
    import monolith_tf as mt
    from monolith_tf.sparse_checkpoint import SparseCheckpointer

    fresh = mt.HashTable(DIM, optimizer="adagrad", seed=0)
    with workers.PeakSampler() as memory:
        start = time.perf_counter()
        SparseCheckpointer(directory, {"emb": fresh}).restore()
        restore_seconds = time.perf_counter() - start
    assert int(fresh.size()) == rows
    table_bytes = int(fresh.stats()["memory_bytes"])
    # Resident memory beyond the restored table's own bytes.
    workers.emit({"restore_seconds": restore_seconds,
                  "restore_extra": memory.peak - memory.start_rss - table_bytes})


def worker_tf_checkpoint(rows, touched, directory):
    import tensorflow as tf

    import monolith_tf as mt

    table, _ = build_table(rows)
    table_bytes = int(table.stats()["memory_bytes"])
    prefix = os.path.join(directory, "ckpt")
    with workers.PeakSampler() as memory:
        start = time.perf_counter()
        path = tf.train.Checkpoint(table=table).write(prefix)
        full_seconds = time.perf_counter() - start
    full_bytes = directory_bytes(directory)
    workers.emit({"full_seconds": full_seconds, "full_bytes": full_bytes,
                  "table_bytes": table_bytes, "peak_extra": memory.peak - memory.start_rss,
                  "delta_ms": None, "delta_bytes": None})


def restore_tf_checkpoint(rows, directory):
    import tensorflow as tf

    import monolith_tf as mt

    fresh = mt.HashTable(DIM, optimizer="adagrad", seed=0)
    with workers.PeakSampler() as memory:
        start = time.perf_counter()
        tf.train.Checkpoint(table=fresh).read(os.path.join(directory, "ckpt")).assert_consumed()
        restore_seconds = time.perf_counter() - start
    assert int(fresh.size()) == rows
    table_bytes = int(fresh.stats()["memory_bytes"])
    # Resident memory beyond the restored table's own bytes.
    workers.emit({"restore_seconds": restore_seconds,
                  "restore_extra": memory.peak - memory.start_rss - table_bytes})


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--touched", type=int, default=10_000)
    parser.add_argument("--worker", choices=("ours", "tf_checkpoint", "restore_ours",
                                             "restore_tf_checkpoint"))
    parser.add_argument("--dir")
    args = parser.parse_args(argv)
    if args.worker == "ours":
        worker_ours(args.rows, args.touched, args.dir)
    elif args.worker == "tf_checkpoint":
        worker_tf_checkpoint(args.rows, args.touched, args.dir)
    elif args.worker:
        globals()[args.worker](args.rows, args.dir)
    if args.worker:
        return
    results = {}
    for system in ("ours", "tf_checkpoint"):
        directory = tempfile.mkdtemp(prefix=f"ckbench-{system}-", dir=os.environ.get("TMPDIR"))
        try:
            results[system] = workers.run(
                __file__, ["--worker", system, "--rows", args.rows, "--touched", args.touched,
                           "--dir", directory], system)
            # Restore in a fresh process, as after a crash.
            results[system].update(workers.run(
                __file__, ["--worker", f"restore_{system}", "--rows", args.rows,
                           "--dir", directory], f"restore {system}"))
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    print(f"{args.rows:,} rows, dim {DIM}, Adagrad; delta: {args.touched:,} touched rows\n")
    print("| system | full save M rows/s | full save MB/s | restore M rows/s | restore MB/s "
          "| full size MB | peak extra memory in save | in restore | delta save ms "
          "| delta size |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for system, r in results.items():
        mb = r["full_bytes"] / 1e6
        delta = ("-" if r["delta_ms"] is None else f"{r['delta_ms']:.1f}")
        delta_size = ("-" if r["delta_bytes"] is None else
                      f"{r['delta_bytes'] / 1e6:.2f} MB ({r['delta_bytes'] / r['full_bytes']:.2%})")
        print(f"| {system} | {args.rows / r['full_seconds'] / 1e6:.2f} | "
              f"{mb / r['full_seconds']:.0f} | {args.rows / r['restore_seconds'] / 1e6:.2f} | "
              f"{mb / r['restore_seconds']:.0f} | {mb:.0f} | "
              f"{r['peak_extra'] / 1e6:.0f} MB ({r['peak_extra'] / r['table_bytes']:.1%} of "
              f"{r['table_bytes'] / 1e6:.0f} MB) | {r['restore_extra'] / 1e6:.0f} MB "
              f"({r['restore_extra'] / r['table_bytes']:.1%}) | {delta} | {delta_size} |")


if __name__ == "__main__":
    main()
