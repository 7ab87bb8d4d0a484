"""A training job for `python -m monolith_tf train`: "will the user like this
movie" (rating >= 4) from raw user and movie ids, on MovieLens rating files.

A job module defines two functions, which the CLI calls:
  build_model()                      -> a compiled Keras model
  make_dataset(files, batch_size)    -> a tf.data.Dataset of batches

    make data
    python -m monolith_tf train --job examples/movielens_ctr_job.py \\
        --data data/ml-100k/u.data --model-dir /tmp/ctr --epochs 2

Works under Keras 3 and tf_keras. Examples keep their file order (no
shuffle), so a resumed run sees exactly the batches it would have seen; the
rating timestamp is the data time that stamps table rows (expiry).
"""

import tensorflow as tf

from monolith_tf.datasets import movielens
from monolith_tf.layers import HashEmbeddingCollection

keras = tf.keras

EMBEDDING = {"dim": 16, "initializer": "truncated_normal(stddev=0.05)",
             "optimizer": "adagrad(initial_accumulator=0.1)", "learning_rate": 0.05}


def build_model(expire_after=None, evict_every=50):
    """Embeddings of raw user and movie ids -> MLP -> probability of a like.
    ``expire_after``: seconds of data time after which idle rows expire,
    checked every ``evict_every`` steps."""
    memory = {"expire_after": expire_after, "evict_every": evict_every} if expire_after else {}
    inputs = {"user_id": keras.Input(shape=(), dtype="int64", name="user_id"),
              "movie_id": keras.Input(shape=(), dtype="int64", name="movie_id"),
              "timestamp": keras.Input(shape=(), dtype="int64", name="timestamp")}
    rows = HashEmbeddingCollection({"user_id": {**EMBEDDING, **memory},
                                    "movie_id": {**EMBEDDING, **memory}},
                                   name="embeddings")(inputs)
    hidden = keras.layers.Concatenate()([rows["user_id"], rows["movie_id"]])
    hidden = keras.layers.Dense(32, activation="relu")(hidden)
    output = keras.layers.Dense(1, activation="sigmoid")(hidden)
    model = keras.Model(inputs, output)
    model.compile(optimizer=keras.optimizers.Adam(0.002), loss="binary_crossentropy",
                  metrics=[keras.metrics.AUC(name="auc")])
    return model


def to_example(rating):
    """A parsed rating -> (features, label)."""
    features = {"user_id": rating["user_id"], "movie_id": rating["movie_id"],
                "timestamp": rating["timestamp"]}
    return features, tf.cast(rating["rating"] >= 4, tf.float32)


def make_dataset(files, batch_size=256):
    """Batches of (features, label) from MovieLens rating files, in file order."""
    dataset = None
    for path in files:
        ratings = movielens.load_ratings(path)
        dataset = ratings if dataset is None else dataset.concatenate(ratings)
    if dataset is None:
        raise ValueError("make_dataset needs at least one file")
    return dataset.map(to_example).batch(batch_size).prefetch(2)
