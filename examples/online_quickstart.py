"""Online training end to end on one machine: MovieLens traffic replayed
into the feature and action logs, joined into labelled examples, and trained
from the examples log by the training worker, then exported for serving.

    make data && python examples/online_quickstart.py [--max-ratings 30000] [--dir build/online]

Steps (each a library piece you would run as its own process in production):
  1. replay   ratings in timestamp order -> `features` (impressions: rated
              movies and unrated negatives) and `actions` (rating, like)
  2. join     the online joiner -> `examples` (label/like, sample_rate)
  3. train    TrainingWorker on an ExampleStream of `examples` until the
              stream goes quiet; sparse + dense checkpoints with log offsets
  4. export   a stock-ops SavedModel; held-out AUC on the last 10% of examples
Uses the embedded log; pass --kafka host:port to use a Kafka cluster instead.
"""

import argparse
import os
import shutil
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import tensorflow as tf  # noqa: E402

import monolith_tf as mt  # noqa: E402
from monolith_tf.datasets import movielens  # noqa: E402
from monolith_tf.streaming.dataset import POSITION_KEY, ExampleStream  # noqa: E402
from monolith_tf.streaming.joiner import Joiner, JoinerConfig  # noqa: E402
from monolith_tf.streaming import open_log  # noqa: E402
from monolith_tf.streaming.records import joined_feature_spec  # noqa: E402
from monolith_tf.streaming.replay import replay  # noqa: E402
from monolith_tf.training import TrainingWorker  # noqa: E402

keras = tf.keras
ACTIONS = ["rating", "like"]


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
    worker = TrainingWorker(model, os.path.join(args.dir, "model"), sparse_every_steps=20,
                            dense_every_steps=100, log_every_steps=20, verbose=2)
    # Hold out the newest 10% of examples: train up to 90% of them.
    total = sum(log.end_offsets("examples").values())
    summary = worker.train(stream, max_steps=int(total * 0.9) // 256)
    print(f"3. trained {summary['steps']} steps on {summary['examples']:,} examples "
          f"({summary['stop_reason']}); log offsets saved: {worker.stream_position}")

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
