"""Parameter-server scale-out on loopback: examples/s and table rows/s of
the training worker on a localhost cluster (1 or 2 PS x 1 or 2 workers, one
step at a time or 4 in flight)
against the same job in one process, and the bytes that cross loopback per
step against the batch's own rows.

    python bench/ps_bench.py [--steps 60] [--batch 1024] [--rounds 2]

Each configuration runs in a fresh process (connecting makes a process's
eager context the cluster's), interleaved over ``--rounds``. Job: two id
features (Zipf users over 1M ids, items over 50k), dim 32, Adagrad tables,
MLP 64-32, batch 1024; the first 10 steps are warm-up. "Loopback bytes" are
the loopback interface's transmitted bytes during the timed steps (all
gRPC: chief -> worker batches, worker <-> PS lookups, gradients, dense
variables), divided by steps; "batch rows" is 2 tables x distinct ids x
(8 B id + 4 x 32 B row) — what a lookup must return at least.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ["single", "ps=1,workers=1", "ps=2,workers=1", "ps=1,workers=2", "ps=2,workers=2",
           "ps=1,workers=1,in_flight=4", "ps=2,workers=2,in_flight=4"]


def loopback_tx_bytes():
    with open("/proc/net/dev") as f:
        for line in f:
            name, _, fields = line.partition(":")
            if name.strip() == "lo":
                return int(fields.split()[8])
    return 0


def run_one(config, steps, batch, warmup=10):
    sys.path.insert(0, REPO)
    import tensorflow as tf

    import monolith_tf as mt
    from monolith_tf.cluster import LocalCluster, connect
    from monolith_tf.step_task import StepTask
    from monolith_tf.training import TrainingWorker

    keras = tf.keras
    rng = np.random.default_rng(0)
    total = (steps + warmup) * batch
    users = np.minimum(rng.zipf(1.2, total), 1_000_000).astype(np.int64)
    items = np.minimum(rng.zipf(1.1, total), 50_000).astype(np.int64)
    labels = rng.random((total, 1)).astype(np.float32)
    distinct = np.mean([len(np.unique(users[i:i + batch])) + len(np.unique(items[i:i + batch]))
                        for i in range(0, total, batch)])

    def build():
        tf.keras.utils.set_random_seed(0)
        inputs = {n: keras.Input(shape=(), dtype="int64", name=n) for n in ("user", "item")}
        rows = mt.layers.HashEmbeddingCollection(
            {"user": {"dim": 32, "optimizer": "adagrad"},
             "item": {"dim": 32, "optimizer": "adagrad"}}, name="emb")(inputs)
        hidden = keras.layers.Dense(64, activation="relu")(
            keras.layers.Concatenate()([rows["user"], rows["item"]]))
        hidden = keras.layers.Dense(32, activation="relu")(hidden)
        model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
        model.compile(optimizer=keras.optimizers.Adam(0.001), loss="mse")
        return model

    class Clock(StepTask):
        def begin(self, worker):
            pass

        def after_step(self, worker):
            if worker.step == warmup:
                self.started, self.bytes = time.perf_counter(), loopback_tx_bytes()

        def finish(self, worker):
            self.seconds = time.perf_counter() - self.started
            self.bytes = loopback_tx_bytes() - self.bytes

    def train(strategy, steps_in_flight=1):
        if strategy is not None:
            with strategy.scope():
                model = build()
        else:
            model = build()
        # Built after connecting: a dataset made before lives on a device
        # the cluster's context no longer knows.
        dataset = tf.data.Dataset.from_tensor_slices(
            ({"user": users, "item": items}, labels)).batch(batch)
        clock = Clock()
        TrainingWorker(model, "/tmp/ps_bench_unused", checkpoints=False, tensorboard=False,
                       verbose=0, strategy=strategy, tasks=[clock],
                       steps_in_flight=steps_in_flight).train(dataset)
        return clock

    if config == "single":
        clock = train(None)
    else:
        counts = dict(part.split("=") for part in config.split(","))
        with LocalCluster(num_ps=int(counts["ps"]), num_workers=int(counts["workers"])) as c:
            clock = train(connect(c.cluster, timeout=60), int(counts.get("in_flight", 1)))
    examples_per_sec = steps * batch / clock.seconds
    return {"config": config, "examples_per_sec": round(examples_per_sec),
            "rows_per_sec": round(steps * distinct / clock.seconds),
            "loopback_bytes_per_step": round(clock.bytes / steps),
            "batch_row_bytes_per_step": round(distinct * (8 + 4 * 32))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.steps, args.batch)), flush=True)
        return
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    results = {config: [] for config in CONFIGS}
    for _ in range(args.rounds):
        for config in CONFIGS:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", config,
                                  "--steps", str(args.steps), "--batch", str(args.batch)],
                                 capture_output=True, text=True, env=env, timeout=900)
            line = [l for l in out.stdout.splitlines() if l.startswith("{")]
            if out.returncode != 0 or not line:
                raise RuntimeError(f"{config} failed: {out.stderr[-2000:]}")
            results[config].append(json.loads(line[-1]))
    base = np.median([r["examples_per_sec"] for r in results["single"]])
    print("| configuration | examples/s (runs) | vs one process | rows/s per PS | "
          "loopback bytes/step | batch row bytes/step |")
    print("|---|---|---|---|---|---|")
    for config, runs in results.items():
        rate = np.median([r["examples_per_sec"] for r in runs])
        ps = 1 if config == "single" else int(config.split(",")[0].split("=")[1])
        rows = np.median([r["rows_per_sec"] for r in runs]) / ps
        print(f"| {config} | {', '.join(str(r['examples_per_sec']) for r in runs)} | "
              f"{rate / base:.2f}x | {rows:,.0f} | "
              f"{np.median([r['loopback_bytes_per_step'] for r in runs]):,.0f} | "
              f"{runs[0]['batch_row_bytes_per_step']:,} |")


if __name__ == "__main__":
    main()
