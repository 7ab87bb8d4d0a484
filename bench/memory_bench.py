"""Table size, bytes and held-out AUC under admission thresholds and expiry.

A long-tail click stream: user ids Zipf(1.1) over 2M, item ids Zipf(1.1) over
a catalogue that drifts (each step shifts the item ids, so old items go
quiet). Click log-odds = user bias + item bias, so frequent ids carry signal
and one-off ids are noise. A logistic model on dim-8 HashEmbeddingCollection
rows (user, item) trains with model.fit on the first 90% of the stream,
timestamps = step (seconds of data time); AUC is measured on the last 10%
(future traffic, predict inserts nothing). Each configuration runs in a fresh
process: occurrence thresholds 0, 1, 2, 5 (counting filter), each with expiry
off and on (expire_after 30 steps, evicting every 10 applies). The stream and
the model are `experiments.memory`'s (`python -m
experiments memory` runs them over several seeds).

    PYTHONPATH=. .venv/bin/python bench/memory_bench.py [--steps 200] [--plot bench/memory_bench.png]
"""

import argparse
import os

import workers


def run_worker(threshold, expire, steps):
    from experiments.memory import run_config

    return run_config(threshold, bool(expire), steps)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--thresholds", default="0,1,2,5")
    parser.add_argument("--plot", help="write a PNG chart here")
    parser.add_argument("--worker", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
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
