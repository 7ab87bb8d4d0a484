"""Insert speed of the TF-free core (pybind11, no TensorFlow), into fresh
memory and into memory freed by removal, to separate the table's own cost
from the cost of committing new pages.

    PYTHONPATH=. .venv/bin/python bench/core_insert_bench.py [--keys 1000000]
"""

import argparse
import time

import numpy as np

from monolith_tf import _core


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=65536)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    n, batch = args.keys, args.batch
    rng = np.random.default_rng(0)
    print("| dim | initializer | fresh memory M keys/s | reused memory M keys/s (best of 3) |")
    print("|---|---|---|---|")
    for dim in (8, 32, 64):
        for initializer in ("constant(value=0.01)", "uniform"):
            table = _core.EmbeddingTable(dim=dim, initializer=initializer, optimizer="adagrad")
            rates = []
            for _ in range(4):
                keys = rng.integers(1, 2**62, size=n, dtype=np.int64)
                start = time.perf_counter()
                for i in range(0, n, batch):
                    table.lookup(keys[i:i + batch], insert_missing=True, threads=args.threads)
                rates.append(n / (time.perf_counter() - start) / 1e6)
                table.remove(keys)
            print(f"| {dim} | {initializer} | {rates[0]:.2f} | {max(rates[1:]):.2f} |", flush=True)


if __name__ == "__main__":
    main()
