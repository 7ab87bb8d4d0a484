"""Freshness: from a user's click appended to the action log until a
prediction for that user and item, asked of the serving replica, changes.

The whole loop runs as separate processes on this machine, as in
production: the online joiner (per-action emission), the training worker
streaming from the examples log with the sync publisher (sparse pushes
every --intervals seconds), and ``python -m monolith_tf serve --sync``.
Background load: MovieLens (ml-100k) ratings replayed as impressions and
clicks (4+ stars) at --rate ratings/s, their event times set to now. Probes:
every --probe-every seconds a new user (never seen) gets an impression and
a click on a popular movie; the probe asks the server for that score
(gRPC) before the click and then every 5 ms until it changes. Split (wall
times seen by a monitor reading the logs): join (click appended -> example
in the examples log), train + push (-> a sync record holding the user's
row), apply (-> changed score). --probes per interval.

    PYTHONPATH=. .venv/bin/python bench/freshness_bench.py [--probes 200 --intervals 1,10]
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE_USER_BASE = 10**9
PROBE_ITEM = 50
TOPICS = {"features": 4, "actions": 4, "examples": 4, "dead_letter": 1}


def run_trainer(log_dir, base, interval):
    """Role ``trainer``: the worker on the examples stream, publishing sync."""
    import tensorflow as tf

    from monolith_tf.layers import HashEmbeddingCollection
    from monolith_tf.streaming import open_log
    from monolith_tf.streaming.dataset import ExampleStream
    from monolith_tf.streaming.dataset import joined_feature_spec
    from monolith_tf.sync.publisher import SyncPublisher
    from monolith_tf.training import TrainingWorker

    keras = tf.keras
    inputs = {name: keras.Input(shape=(), dtype="int64", name=name)
              for name in ("user_id", "item_id", "timestamp")}
    rows = HashEmbeddingCollection({"user_id": {"dim": 16, "learning_rate": 0.05},
                                    "item_id": {"dim": 16, "learning_rate": 0.05}},
                                   name="embeddings")(inputs)
    hidden = keras.layers.Dense(32, activation="relu")(
        keras.layers.Concatenate()([rows["user_id"], rows["item_id"]]))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(hidden))
    model.compile(optimizer=keras.optimizers.Adam(0.002), loss="binary_crossentropy")
    log = open_log({"path": log_dir})
    stream = ExampleStream(log, joined_feature_spec(["click"]), batch_size=64,
                           label="label/click", max_wait=0.02,
                           features=["user_id", "item_id", "timestamp"])
    publisher = SyncPublisher(log, base, sparse_every_secs=interval, dense_every_secs=None)
    worker = TrainingWorker(model, os.path.join(os.path.dirname(base), "trainer"),
                            checkpoints=False, verbose=0, tensorboard=False,
                            log_every_steps=10**9, tasks=[publisher])
    worker.train(stream)   # until SIGTERM


class Loop:
    """The joiner, trainer and server processes of one run."""

    def __init__(self, root, interval):
        from monolith_tf.streaming import open_log

        self.log_dir, self.base = os.path.join(root, "log"), os.path.join(root, "models")
        self.log = open_log({"path": self.log_dir})
        for topic, partitions in TOPICS.items():
            self.log.create_topic(topic, partitions)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
        quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        self.processes = [
            subprocess.Popen([sys.executable, "-m", "monolith_tf", "join", "--log",
                              self.log_dir, "--state-dir", os.path.join(root, "joiner"),
                              "--actions", "click", "--emit", "action", "--window", "600",
                              "--partition-idle-timeout", "1", "--checkpoint-every", "5"],
                             **quiet),
            subprocess.Popen([sys.executable, os.path.abspath(__file__), "--role", "trainer",
                              "--log", self.log_dir, "--base", self.base, "--interval",
                              str(interval)], **quiet)]
        self.server = subprocess.Popen(
            [sys.executable, "-m", "monolith_tf", "serve", f"--model_base_path={self.base}",
             "--model_name=ctr", "--port=0", "--rest_api_port=0", f"--sync={self.log_dir}",
             "--file_system_poll_wait_seconds=0.2"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        self.processes.append(self.server)
        self.grpc_port = int(json.loads(self.server.stdout.readline())["grpc"].rsplit(":", 1)[1])

    def stop(self):
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


class Scorer:
    """gRPC predictions of (user, item) from the replica."""

    def __init__(self, port):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{port}"))

    def score(self, user, item):
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = "ctr"
        for name, value in (("user_id", user), ("item_id", item), ("timestamp", 0)):
            request.inputs[name].CopyFrom(tf.make_tensor_proto([value], tf.int64))
        return float(tf.make_ndarray(self._stub.Predict(request, timeout=30).outputs["output"])[0, 0])


def background_load(log, rate, stop):
    """ml-100k ratings as impressions and clicks at ``rate`` ratings/s, at now."""
    from monolith_tf.datasets.movielens import DEFAULT_ML100K
    from monolith_tf.streaming.records import (ActionRecord, FeatureRecord, encode_action,
                                               encode_feature)

    ratings = np.loadtxt(DEFAULT_ML100K, dtype=np.int64, usecols=(0, 1, 2))
    producer = log.producer()
    started, sent = time.monotonic(), 0
    while not stop.is_set():
        user, item, stars = ratings[sent % len(ratings)]
        now = int(time.time())
        request = f"bg-{sent}".encode()
        producer.produce("features", encode_feature(FeatureRecord(request, int(user), int(item),
                                                                  now)), key=request)
        if stars >= 4:
            producer.produce("actions", encode_action(ActionRecord(request, "click", 1.0, now)),
                             key=request)
        sent += 1
        if sent % 20 == 0:
            producer.flush()
        stop.wait(max(0.0, started + sent / rate - time.monotonic()))
    producer.close()


class Monitor:
    """First wall time each probe shows up in the examples log (joined) and
    in the sync stream (pushed)."""

    def __init__(self, log):
        import tensorflow as tf

        self.joined, self.pushed = {}, {}
        self._log, self._tf = log, tf
        self._stop = threading.Event()
        self.error = None
        self._thread = threading.Thread(target=self._run_guarded, daemon=True)
        self._thread.start()

    def _run_guarded(self):
        try:
            self._run()
        except Exception as error:  # noqa: BLE001 - reported with the results
            self.error = repr(error)

    def _run(self):
        from monolith_tf.sync.records import RowsPush, SyncRecordError, decode

        while "sync" not in self._log.topics() and not self._stop.is_set():
            time.sleep(0.05)
        consumer = self._log.consumer(f"monitor-{os.getpid()}", ["examples", "sync"])
        while not self._stop.is_set():
            for record in consumer.poll(1000, 0.01):
                now = time.monotonic()
                if record.value is None:
                    continue  # a tombstone
                if record.topic == "examples":
                    example = self._tf.train.Example.FromString(record.value)
                    users = example.features.feature["user_id"].int64_list.value
                    if users and users[0] >= PROBE_USER_BASE:
                        self.joined.setdefault(users[0], now)
                else:
                    try:
                        push = decode(record.value)
                    except SyncRecordError:
                        continue
                    if isinstance(push, RowsPush) and push.table.endswith("user_id"):
                        for user in push.ids[push.ids >= PROBE_USER_BASE].tolist():
                            self.pushed.setdefault(user, now)

    def stop(self):
        self._stop.set()
        self._thread.join()


def probe(log, scorer, user, results, timeout=30.0):
    from monolith_tf.streaming.records import (ActionRecord, FeatureRecord, encode_action,
                                               encode_feature)

    before = scorer.score(user, PROBE_ITEM)
    producer = log.producer()
    request = f"probe-{user}".encode()
    now = int(time.time())
    producer.produce("features", encode_feature(FeatureRecord(request, user, PROBE_ITEM, now)),
                     key=request)
    producer.flush()
    producer.produce("actions", encode_action(ActionRecord(request, "click", 1.0, now)),
                     key=request)
    producer.flush()
    appended = time.monotonic()
    deadline = appended + timeout
    while time.monotonic() < deadline:
        if abs(scorer.score(user, PROBE_ITEM) - before) > 1e-7:
            results[user] = (appended, time.monotonic())
            break
        time.sleep(0.005)
    producer.close()


def run_interval(interval, args):
    from monolith_tf.streaming import open_log  # noqa: F401 (loads the package once)

    root = tempfile.mkdtemp(prefix="freshness_")
    loop = Loop(root, interval)
    stop_load = threading.Event()
    try:
        load = threading.Thread(target=background_load, args=(loop.log, args.rate, stop_load),
                                daemon=True)
        load.start()
        scorer = Scorer(loop.grpc_port)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the first base version must serve
            try:
                scorer.score(1, PROBE_ITEM)
                break
            except Exception:  # noqa: BLE001 - not serving yet
                time.sleep(0.2)
        time.sleep(max(2.0, interval))  # background traffic flowing through the loop
        monitor = Monitor(loop.log)
        results, probes = {}, []
        for k in range(args.probes):
            user = PROBE_USER_BASE + int(interval * 10**6) + k
            thread = threading.Thread(target=probe, args=(loop.log, scorer, user, results))
            thread.start()
            probes.append(thread)
            time.sleep(args.probe_every)
        for thread in probes:
            thread.join()
        time.sleep(0.5)
        monitor.stop()
    finally:
        stop_load.set()
        loop.stop()
        shutil.rmtree(root, ignore_errors=True)
    total, join, train_push, apply_, log_to_servable = [], [], [], [], []
    for user, (appended, changed) in results.items():
        total.append(changed - appended)
        if user in monitor.joined and user in monitor.pushed:
            join.append(monitor.joined[user] - appended)
            train_push.append(monitor.pushed[user] - monitor.joined[user])
            apply_.append(changed - monitor.pushed[user])
            log_to_servable.append(changed - monitor.joined[user])
    if monitor.error:
        print(f"monitor failed: {monitor.error}", file=sys.stderr)
    return {"interval": interval, "probes": args.probes, "changed": len(results),
            "total": total, "join": join, "train_push": train_push, "apply": apply_,
            "log_to_servable": log_to_servable}


def pct(values, q):
    return float(np.percentile(values, q)) if len(values) else float("nan")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--intervals", default="1,10", help="sparse sync intervals, seconds")
    parser.add_argument("--rate", type=float, default=100.0, help="background ratings/s")
    parser.add_argument("--probe-every", type=float, default=0.25, help="seconds")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--log", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--interval", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "trainer":
        return run_trainer(args.log, args.base, args.interval)
    runs = [run_interval(float(x), args) for x in args.intervals.split(",")]
    print(f"\n{args.probes} probes per interval, background {args.rate:.0f} ratings/s, "
          f"{os.cpu_count()} CPUs; seconds, p50 / p99\n")
    print("| sparse interval | probes changed | click -> changed score | join | "
          "train + push | apply | examples log -> servable |")
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        cells = [f"{pct(run[k], 50):.2f} / {pct(run[k], 99):.2f}"
                 for k in ("total", "join", "train_push", "apply", "log_to_servable")]
        print(f"| {run['interval']:g} s | {run['changed']}/{run['probes']} | " +
              " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
