"""Soak: a bounded online run (records produced -> joined -> trained with
expiry and checkpoints), sampling the process's RSS, the tables' size and
the files under the run directory; after warm-up each must stay flat.

    python bench/soak.py --seconds 600 [--dir build/soak] [--json out.json]

Traffic: impressions of users from a window that slides over the id space
as data time advances (500 new users per minute of data time, each active
for about 10 minutes), items from a fixed Zipf catalog, about 1 impression
in 5 clicked; tables expire rows idle for 15 minutes of data time. So the
live user rows reach a steady state, and so must memory. Three threads: a
producer (about 2,000 impressions per wall second; data time runs 60x
faster), the online joiner, and the training worker on the examples log
(sparse saves every 10 steps, full every 5th, 2 chains kept; dense every
50, 2 kept). The log's files grow by design (append-only, retention is the
broker's job); they are counted apart from the model directory.

Flat means: over the samples after the warm-up (the first third), the
least-squares slope of each series, times the remaining duration, is within
a bound of its mean (``BOUNDS``, relative): the run ends with about the
same memory, rows and files it had at the end of the warm-up. The model
directory's file count is a sawtooth (a sparse chain grows by a delta per
save until the next full one prunes the oldest chain), whose least-squares
slope over a few teeth depends on where the run stops; for it the drift is
the change of the highest count between the two halves of the post-warm-up
span: files that are never pruned raise every later peak.
"""

import argparse
import json
import os
import sys
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import tensorflow as tf  # noqa: E402

import monolith_tf as mt  # noqa: E402
from monolith_tf.streaming import open_log  # noqa: E402
from monolith_tf.streaming.dataset import ExampleStream, joined_feature_spec  # noqa: E402
from monolith_tf.streaming.joiner import Joiner, JoinerConfig  # noqa: E402
from monolith_tf.streaming.records import (ActionRecord, FeatureRecord,  # noqa: E402
                                           encode_action, encode_feature)
from monolith_tf.training import TrainingWorker  # noqa: E402
from monolith_tf.step_task import StepTask  # noqa: E402

keras = tf.keras
# Relative drift allowed over the post-warm-up part of the run.
BOUNDS = {"rss_mb": 0.10, "table_rows": 0.15, "model_files": 0.25}
SAWTOOTH_SERIES = {"model_files"}   # drift measured between the halves' peaks
DATA_SECONDS_PER_WALL_SECOND = 60


def build_model():
    inputs = {name: keras.Input(shape=(), dtype="int64", name=name)
              for name in ("user_id", "item_id", "timestamp")}
    rows = mt.layers.HashEmbeddingCollection(
        {"user_id": {"dim": 16, "expire_after": 900, "evict_every": 50},
         "item_id": {"dim": 16, "expire_after": 900, "evict_every": 50}},
        name="embeddings")(inputs)
    hidden = keras.layers.Dense(32, activation="relu")(
        keras.layers.Concatenate()([rows["user_id"], rows["item_id"]]))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(hidden))
    model.compile(optimizer=keras.optimizers.Adam(0.002), loss="binary_crossentropy")
    return model


def produce(log, stop, rate=2000, seed=0):
    """Impressions and clicks at ``rate`` per wall second until ``stop``."""
    rng = np.random.default_rng(seed)
    producer = log.producer()
    started, sent = time.monotonic(), 0
    items = np.arange(1, 20_001)
    weights = 1.0 / items ** 1.1
    weights /= weights.sum()
    while not stop.is_set():
        elapsed = time.monotonic() - started
        due = int(elapsed * rate) - sent
        if due <= 0:
            time.sleep(0.01)
            continue
        for _ in range(min(due, 500)):
            data_time = 1_000_000 + int(sent / rate * DATA_SECONDS_PER_WALL_SECOND)
            window_start = (data_time - 1_000_000) * 500 // 60
            user = 1 + window_start + int(rng.integers(5000))
            item = int(rng.choice(items, p=weights))
            request = f"q{sent}".encode()
            producer.produce("features", encode_feature(
                FeatureRecord(request, user, item, data_time)), key=request)
            if rng.random() < 0.2:
                producer.produce("actions", encode_action(
                    ActionRecord(request, "click", 1.0, data_time + 5)), key=request)
            sent += 1
        producer.flush()
    producer.close()


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def count_files(directory):
    return sum(len(files) for _, _, files in os.walk(directory))


class Sampler(StepTask):
    """A step task sampling memory, rows and files every ``every`` seconds."""

    def __init__(self, model_dir, log_dir, every=2.0):
        self.model_dir, self.log_dir, self.every = model_dir, log_dir, every
        self.samples, self._last, self._started = [], 0.0, time.monotonic()

    def begin(self, worker):
        pass

    def after_step(self, worker):
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        self.samples.append({
            "seconds": round(now - self._started, 2), "step": worker.step,
            "rss_mb": round(rss_mb(), 1),
            "table_rows": sum(int(t.size()) for t in worker.tables.values()),
            "model_files": count_files(self.model_dir),
            "log_files": count_files(self.log_dir), "data_time": worker.data_time})

    def finish(self, worker):
        pass


def slopes(samples, warmup_share=1 / 3):
    """Per series: mean, least-squares drift over the post-warm-up span
    (slope x span) relative to the mean, and whether it is within BOUNDS."""
    after = samples[int(len(samples) * warmup_share):]
    seconds = np.array([s["seconds"] for s in after])
    span = seconds[-1] - seconds[0]
    summary = {}
    for name, bound in BOUNDS.items():
        values = np.array([s[name] for s in after], float)
        if name in SAWTOOTH_SERIES:
            half = len(values) // 2
            change = values[half:].max() - values[:half].max()
        else:
            change = np.polyfit(seconds, values, 1)[0] * span
        drift = change / max(values.mean(), 1e-9)
        summary[name] = {"mean": round(float(values.mean()), 1),
                         "first": float(values[0]), "last": float(values[-1]),
                         "relative_drift": round(float(drift), 4), "bound": bound,
                         "flat": bool(abs(drift) <= bound)}
    return summary


def soak(seconds, directory):
    """Runs the soak for ``seconds``; returns (summary, samples, counters)."""
    keras.utils.set_random_seed(0)
    log_dir, model_dir = os.path.join(directory, "log"), os.path.join(directory, "model")
    log = open_log({"path": log_dir})
    for topic in ("features", "actions", "examples", "dead_letter"):
        log.create_topic(topic, 2)
    stop = threading.Event()
    producer = threading.Thread(target=produce, args=(log, stop), daemon=True)
    joiner = Joiner(log, JoinerConfig(["click"], window=60, allowed_lateness=10),
                    os.path.join(directory, "joiner"), checkpoint_every=5.0)
    joiner_thread = threading.Thread(
        target=joiner.run, kwargs={"should_stop": stop.is_set}, daemon=True)
    sampler = Sampler(model_dir, log_dir)
    worker = TrainingWorker(build_model(), model_dir, sparse_every_steps=10,
                            sparse_every_secs=None, dense_every_steps=50,
                            dense_every_secs=None, full_every=5, keep_full=2, keep_dense=2,
                            verbose=0, tensorboard=False, tasks=[sampler])
    stream = ExampleStream(log, joined_feature_spec(["click"]), batch_size=256,
                           label="label/click", features=["user_id", "item_id", "timestamp"])
    producer.start()
    joiner_thread.start()
    try:
        result = worker.train(stream, max_seconds=seconds)
    finally:
        stop.set()
        producer.join(timeout=30)
        joiner_thread.join(timeout=60)
    counters = {"steps": result["steps"], "examples": result["examples"],
                "joined": joiner.counters["emitted"],
                "evicted": sum(int(t.stats()["evicted"]) for t in worker.tables.values())}
    return slopes(sampler.samples), sampler.samples, counters


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--dir", default=os.path.join(REPO, "build", "soak"))
    parser.add_argument("--json", help="write the samples and summary here")
    args = parser.parse_args(argv)
    import shutil
    shutil.rmtree(args.dir, ignore_errors=True)
    summary, samples, counters = soak(args.seconds, args.dir)
    print(json.dumps({"summary": summary, "counters": counters}, indent=1))
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump({"summary": summary, "counters": counters, "samples": samples}, f)
        os.replace(args.json + ".tmp", args.json)
    return 0 if all(s["flat"] for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
