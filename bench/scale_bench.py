"""A table grown to tens of millions of rows as an online trainer grows it:
one Adagrad table (dim 16) fed batches of new ids, each a lookup that
inserts them followed by its gradient apply, while a second thread looks
up present ids throughout. Issue 29: no batch and no lookup may wait
seconds when the index grows.

Printed, one table each:
  per size band   batch latency (lookup + apply) median / p99 / worst and
                  worst / median; how many of its batches grew the index;
  reader          the second thread's lookups of 1,024 present ids: median,
                  p99 and worst wait over the whole run; beside it, a control
                  thread doing the same lookups on a static 1M-row table in
                  the same process at the same time (its waits are the
                  machine's: CPU contention, the host's steal), the share
                  of CPU time the host stole during the run (/proc/stat) and
                  how fast the machine commits fresh memory (each batch of
                  new ids commits an arena chunk before the lock);
  at full size    bytes per row (the table's memory / rows) against the
                  row payload (16 floats + 16 of Adagrad state), peak extra
                  resident memory during the largest growth (VmHWM rise over
                  the resident memory just before it), lookups of present
                  ids (M ids/s, 2 threads);
  save/restore    full save (row files, fsync) and restore (read + import
                  into a fresh table) in MB/s, beside `dd` writing the same
                  number of bytes with fsync on the same file system.

    PYTHONPATH=. .venv/bin/python bench/scale_bench.py [--rows 60000000] [--dir build/scale]

Every row is 16 float32 + 16 float32 of state; 60M rows need about 11 GB.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import threading
import time

import numpy as np

from monolith_tf import _core
from table_bench import first_touch_gb_per_s

DIM = 16
CONTROL_ROWS = 1 << 20
GOLDEN = 0x9E3779B97F4A7C15  # odd: i * GOLDEN mod 2^64 is a bijection


def keys_of(indices):
    """Distinct, scattered int64 ids for row numbers ``indices``."""
    mixed = (np.asarray(indices, np.uint64) + np.uint64(1)) * np.uint64(GOLDEN)
    return (mixed >> np.uint64(1)).astype(np.int64)


def memory_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class Reader(threading.Thread):
    """Looks up ``batch`` present ids about once a millisecond, as a serving
    thread would (not spinning, which would take a core from the trainer on
    this 2-core machine); records each wait."""

    def __init__(self, table, present, batch=1024):
        super().__init__(daemon=True)
        self.table, self.present, self.batch = table, present, batch
        self.waits = []
        self.stop = threading.Event()

    def run(self):
        rng = np.random.default_rng(7)
        while not self.stop.is_set():
            count = self.present()
            if count < self.batch:
                time.sleep(0.001)
                continue
            keys = keys_of(rng.integers(0, count, self.batch))
            started = time.perf_counter()
            self.table.lookup(keys, insert_missing=False)
            self.waits.append(time.perf_counter() - started)
            time.sleep(0.001)


def stolen_and_total_jiffies():
    """The host's steal and all CPU time so far, from /proc/stat's cpu line."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    return fields[7], sum(fields[:8])


def static_table(rows):
    """A table of ``rows`` rows that nothing grows: the control reader's."""
    table = _core.EmbeddingTable(dim=DIM, optimizer="adagrad")
    for start in range(0, rows, 65536):
        table.lookup(keys_of(np.arange(start, min(start + 65536, rows))), insert_missing=True)
    return table


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def grow(table, rows, batch, threads, band_rows):
    """Trains batches of new ids up to ``rows``; returns per-band stats and
    the growth that raised resident memory the most."""
    grads = np.full((batch, DIM), 0.01, np.float32)
    inserted = [0]
    reader = Reader(table, lambda: inserted[0])
    control = Reader(static_table(CONTROL_ROWS), lambda: CONTROL_ROWS)
    steal_before = stolen_and_total_jiffies()
    reader.start()
    control.start()
    bands, current = [], {"latencies": [], "growths": 0}
    largest_growth = (0, 0, 0)
    buckets = table.num_buckets
    for start in range(0, rows, batch):
        keys = keys_of(np.arange(start, min(start + batch, rows)))
        rss_before = memory_kib("VmRSS")
        hwm_before = memory_kib("VmHWM")
        began = time.perf_counter()
        table.lookup(keys, insert_missing=True, threads=threads)
        table.apply_gradients(keys, grads[:len(keys)], 0.05, threads=threads)
        current["latencies"].append(time.perf_counter() - began)
        inserted[0] = start + len(keys)
        if table.num_buckets != buckets:
            buckets = table.num_buckets
            current["growths"] += 1
            rise = max(memory_kib("VmHWM") - max(rss_before, hwm_before), 0)
            if table.size() > largest_growth[0]:
                largest_growth = (table.size(), rise * 1024, rss_before * 1024)
        if inserted[0] % band_rows < batch or inserted[0] == rows:
            current["rows"] = inserted[0]
            bands.append(current)
            current = {"latencies": [], "growths": 0}
    reader.stop.set()
    control.stop.set()
    reader.join()
    control.join()
    steal_after = stolen_and_total_jiffies()
    stolen = (steal_after[0] - steal_before[0]) / max(steal_after[1] - steal_before[1], 1)
    return bands, reader.waits, control.waits, stolen, largest_growth


def lookup_rate(table, rows, threads, total=10_000_000, batch=65536):
    rng = np.random.default_rng(3)
    keys = keys_of(rng.integers(0, rows, total))
    began = time.perf_counter()
    for start in range(0, total, batch):
        table.lookup(keys[start:start + batch], insert_missing=False, threads=threads)
    return total / (time.perf_counter() - began) / 1e6


def dd_write_rate(directory, size_bytes):
    """MB/s of ``dd`` writing ``size_bytes`` to ``directory``'s file system
    with fsync: the disk's rate, the baseline of both save and restore (a
    restore reads files the save just wrote, from the page cache, so its
    limit is the import, not the disk)."""
    path = os.path.join(directory, "dd.bin")
    count = max(size_bytes >> 20, 1)
    began = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={count}",
                    "conv=fsync"], check=True, capture_output=True)
    rate = count / (time.perf_counter() - began)
    os.remove(path)
    return rate


def save(table, directory):
    """Writes every row as row files; returns (bytes, seconds, paths)."""
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    began = time.perf_counter()
    files = table.write_row_files(os.path.join(directory, "rows"))
    save_seconds = time.perf_counter() - began
    size = sum(f["bytes"] for f in files)
    return size, save_seconds, [f["path"] for f in files]


def restore(paths):
    """Reads and imports the row files into a fresh table (the saved one is
    dropped first, so both never share memory); returns (seconds, rows)."""
    from monolith_tf.quiet_start import import_tensorflow

    import_tensorflow()  # read_rows' module imports it: without its start-up lines
    from monolith_tf.sparse_checkpoint import read_rows

    fresh = _core.EmbeddingTable(dim=DIM, optimizer="adagrad")
    began = time.perf_counter()
    for path in paths:
        fresh.import_rows(**read_rows(path))
    seconds = time.perf_counter() - began
    rows = fresh.size()
    del fresh
    return seconds, rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=60_000_000)
    parser.add_argument("--batch", type=int, default=65536)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--band-rows", type=int, default=10_000_000,
                        help="rows per line of the batch-latency table")
    parser.add_argument("--dir", default="build/scale_bench",
                        help="where the save goes (and dd writes)")
    args = parser.parse_args(argv)

    table = _core.EmbeddingTable(dim=DIM, optimizer="adagrad")
    bands, waits, control_waits, stolen, largest = grow(table, args.rows, args.batch,
                                                        args.threads, args.band_rows)
    print("| rows up to | batches | batches that grew the index | median ms | p99 ms "
          "| worst ms | worst / median |")
    print("|---|---|---|---|---|---|---|")
    for band in bands:
        lat = [x * 1e3 for x in band["latencies"]]
        median = statistics.median(lat)
        print(f"| {band['rows'] / 1e6:.1f}M | {len(lat)} | {band['growths']} | {median:.1f} | "
              f"{percentile(lat, 99):.1f} | {max(lat):.1f} | {max(lat) / median:.1f}x |",
              flush=True)
    print()
    for name, values in (("reader", waits), ("control reader (static 1M-row table)",
                                               control_waits)):
        print(f"{name} (1,024 present ids per lookup, {len(values)} lookups): median "
              f"{percentile(values, 50) * 1e3:.2f} ms, p99 {percentile(values, 99) * 1e3:.1f} "
              f"ms, worst {max(values) * 1e3:.1f} ms")
    print(f"CPU time the host stole during the growth: {stolen:.1%}")
    # Each batch of new ids opens an arena chunk (65,536 rows, about 9 MiB)
    # whose pages must be committed: at this rate, beside the median batch.
    touch = first_touch_gb_per_s()
    print(f"this machine's first touch of fresh memory after the growth: {touch:.2f} GB/s "
          f"({(2 << 20) / touch / 1e6:.2f} ms per 2 MiB page)")
    rows = table.size()
    payload = 2 * DIM * 4
    per_row = table.memory_bytes() / rows
    print(f"at {rows / 1e6:.1f}M rows: {per_row:.0f} B per row ({per_row / payload:.2f}x the "
          f"{payload} B payload); largest growth at {largest[0] / 1e6:.1f}M rows raised peak "
          f"resident memory by {largest[1] / 2**30:.2f} GiB over {largest[2] / 2**30:.2f} GiB "
          f"({largest[1] / max(largest[2], 1):.0%})")
    print(f"lookups of present ids at full size: {lookup_rate(table, rows, args.threads):.1f} "
          f"M ids/s ({args.threads} threads)", flush=True)
    size, save_seconds, paths = save(table, args.dir)
    del table
    restore_seconds, restored = restore(paths)
    assert restored == rows, (restored, rows)
    dd_write = dd_write_rate(args.dir, size)
    shutil.rmtree(args.dir, ignore_errors=True)
    mb = size / 2**20
    print()
    print("| | ours MB/s | dd (write, fsync) MB/s | ours / dd |")
    print("|---|---|---|---|")
    print(f"| full save ({mb:.0f} MiB, fsync) | {mb / save_seconds:.0f} | {dd_write:.0f} | "
          f"{mb / save_seconds / dd_write:.2f} |")
    print(f"| restore (read + import) | {mb / restore_seconds:.0f} | {dd_write:.0f} | "
          f"{mb / restore_seconds / dd_write:.2f} |")


if __name__ == "__main__":
    main()
