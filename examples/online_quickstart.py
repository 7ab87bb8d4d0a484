"""Online training end to end on one machine: MovieLens traffic replayed
into the feature and action logs, joined into labelled examples, and trained
from the examples log by the training worker, then exported for serving.

    make data && python examples/online_quickstart.py [--max-ratings 30000] [--dir build/online]

Steps (each a library piece you would run as its own process in production):
  1. replay   ratings in timestamp order -> `features` (impressions: rated
              movies and unrated negatives) and `actions` (rating, like)
  2. join     the online joiner -> `examples` (label/like, sample_rate)
  3. train    TrainingWorker on an ExampleStream of `examples` until the
              stream goes quiet; sparse + dense checkpoints with log offsets;
              meanwhile the sync publisher pushes changed rows every 0.25 s
              (dense weights every 0.5 s: this demo is short) to the `sync`
              topic, a model server
              subscribed to it serves a base version and applies the pushes
              in place, and the script prints how a few users' scores (asked
              of the server over gRPC) move as their clicks are trained in
  4. export   a stock-ops SavedModel; held-out AUC on the last 10% of examples
Uses the embedded log; pass --kafka host:port to use a Kafka cluster instead.
"""

import argparse
import os
import shutil
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import monolith_tf as mt  # noqa: E402
from monolith_tf.quiet_start import import_tensorflow  # noqa: E402

tf = import_tensorflow()  # without its start-up lines (set TF_CPP_MIN_LOG_LEVEL to see them)
from monolith_tf.datasets import movielens  # noqa: E402
from monolith_tf.streaming.dataset import POSITION_KEY, ExampleStream  # noqa: E402
from monolith_tf.streaming.joiner import Joiner, JoinerConfig  # noqa: E402
from monolith_tf.streaming import open_log  # noqa: E402
from monolith_tf.streaming.dataset import joined_feature_spec  # noqa: E402
from monolith_tf.streaming.replay import replay  # noqa: E402
from monolith_tf.training import TrainingWorker  # noqa: E402

from monolith_tf.sync.publisher import SyncPublisher  # noqa: E402
from monolith_tf.sync.replica import Replica  # noqa: E402
from monolith_tf.step_task import StepTask  # noqa: E402

keras = tf.keras
ACTIONS = ["rating", "like"]


def most_active(path, max_ratings, users=3):
    """The most active users and the most rated movie among the first
    ``max_ratings`` ratings in time order (what the replay sends)."""
    import numpy as np

    ratings = np.loadtxt(path, dtype=np.int64, usecols=(0, 1, 3))
    ratings = ratings[np.argsort(ratings[:, 2], kind="stable")][:max_ratings]
    top_users = np.bincount(ratings[:, 0]).argsort()[::-1][:users]
    return [int(u) for u in top_users], int(np.bincount(ratings[:, 1]).argmax())


class ScoreWatcher(StepTask):
    """A step task that asks the server (gRPC, as any client) for a few
    users' scores of one item every ``every_steps`` and prints them."""

    def __init__(self, server, users, item, every_steps=10):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.server, self.users, self.item, self.every_steps = server, users, item, every_steps
        self._channel = None
        self._grpc, self._stubs = grpc, prediction_service_pb2_grpc

    def begin(self, worker):
        self._channel = self._grpc.insecure_channel(f"127.0.0.1:{self.server.grpc_port}")
        self._stub = self._stubs.PredictionServiceStub(self._channel)

    def after_step(self, worker):
        if worker.step % self.every_steps == 0:
            self.report(worker)

    def finish(self, worker):
        pass

    def report(self, worker, final=False):
        from tensorflow_serving.apis import predict_pb2

        if self.server.version is None:
            return
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "ctr"
        n = len(self.users)
        inputs = {"user_id": self.users, "item_id": [self.item] * n, "timestamp": [0] * n}
        for name, values in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(values, tf.int64))
        scores = tf.make_ndarray(self._stub.Predict(request, timeout=30).outputs["output"])
        when = "end" if final else f"step {worker.step:4d}"
        print(f"   served scores of movie {self.item} ({when}, data time {worker.data_time}): "
              + ", ".join(f"user {u} {s:.3f}" for u, s in zip(self.users, scores.ravel())),
              flush=True)


def build_model():
    """Raw user and item ids -> embeddings -> probability of a like."""
    inputs = {name: keras.Input(shape=(), dtype="int64", name=name)
              for name in ("user_id", "item_id", "timestamp")}
    rows = mt.layers.HashEmbeddingCollection(
        {"user_id": {"dim": 16, "learning_rate": 0.05, "expire_after": 30 * 86400,
                     "evict_every": 100},
         "item_id": {"dim": 16, "learning_rate": 0.05}}, name="embeddings")(inputs)
    hidden = keras.layers.Dense(32, activation="relu")(
        keras.layers.Concatenate()([rows["user_id"], rows["item_id"]]))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(hidden))
    model.compile(optimizer=keras.optimizers.Adam(0.002), loss="binary_crossentropy",
                  metrics=[keras.metrics.AUC(name="auc")])
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=movielens.DEFAULT_ML100K)
    parser.add_argument("--max-ratings", type=int, default=30_000)
    parser.add_argument("--dir", default=os.path.join(REPO, "build", "online"))
    parser.add_argument("--kafka", help="bootstrap.servers (topics must exist or be creatable)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the dense layers' weights")
    args = parser.parse_args()
    keras.utils.set_random_seed(args.seed)
    shutil.rmtree(args.dir, ignore_errors=True)
    log = open_log({"bootstrap.servers": args.kafka} if args.kafka else
                   {"path": os.path.join(args.dir, "log")})
    for topic in ("features", "actions", "examples", "dead_letter"):
        log.create_topic(topic, 4)

    counts = replay(args.data, log, negatives=1, max_ratings=args.max_ratings)
    print(f"1. replayed {counts['ratings']:,} ratings: {counts['impressions']:,} impressions, "
          f"{counts['actions']:,} actions")

    joiner = Joiner(log, JoinerConfig(ACTIONS, window=3600, allowed_lateness=600),
                    os.path.join(args.dir, "joiner"))
    joiner.run(idle_timeout=2.0)
    joiner.flush_all()
    c = joiner.counters
    print(f"2. joined: {c['emitted']:,} examples ({c['positives']:,} with actions, "
          f"{c['negatives_kept']:,} negatives), {c['dead_letters']} dead letters")

    model = build_model()
    stream = ExampleStream(log, joined_feature_spec(ACTIONS), batch_size=256,
                           label="label/like", idle_timeout=2.0,
                           features=["user_id", "item_id", "timestamp"])
    # Serving while training: a server on the sync publisher's base versions,
    # following the sync stream (the server starts before the first base).
    models_dir = os.path.join(args.dir, "models")
    replica = Replica(models_dir, log, model_name="ctr", port=0, rest_api_port=None,
                      poll_seconds=0.2).start()
    publisher = SyncPublisher(log, models_dir, sparse_every_secs=0.25, dense_every_secs=0.5,
                              base_every_secs=3600.0)
    watched_users, watched_item = most_active(args.data, args.max_ratings)
    watcher = ScoreWatcher(replica.server, users=watched_users, item=watched_item)
    worker = TrainingWorker(model, os.path.join(args.dir, "model"), sparse_every_steps=20,
                            dense_every_steps=100, log_every_steps=20, verbose=2,
                            tasks=[publisher, watcher])
    # Hold out the newest 10% of examples: train up to 90% of them.
    total = sum(log.end_offsets("examples").values())
    try:
        summary = worker.train(stream, max_steps=int(total * 0.9) // 256)
        publisher.push_dense(worker)   # the trained dense weights, as a last dense push
        replica.catch_up(timeout=30)
        watcher.report(worker, final=True)
    finally:
        replica.stop()
    print(f"3. trained {summary['steps']} steps on {summary['examples']:,} examples "
          f"({summary['stop_reason']}); log offsets saved: {worker.stream_position}; "
          f"{publisher.totals['pushes']} sync pushes ({publisher.totals['rows']:,} rows), "
          f"{replica.follower.counters['records']} records applied by the server")

    held_out = stream.dataset(worker.stream_position).map(
        lambda features, label: ({k: v for k, v in features.items() if k != POSITION_KEY},
                                 label))
    held_out = held_out.take(max(1, (total - summary["examples"]) // 256))
    metrics = model.evaluate(held_out, return_dict=True, verbose=0)
    path = os.path.join(args.dir, "serving")
    mt.export_saved_model(model, path)
    print(f"4. held-out AUC {metrics['auc']:.3f}, loss {metrics['loss']:.3f}; "
          f"serving SavedModel at {path}")
    return metrics


if __name__ == "__main__":
    main()
