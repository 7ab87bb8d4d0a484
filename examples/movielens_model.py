"""TFRS ranking and retrieval on raw MovieLens ids with HashEmbedding.

No vocabulary step: user and movie ids go straight into hash tables, which
insert new ids while training and read unseen ids as zeros when serving.
Shared by examples/movielens_quickstart.py (run by `make demo`) and the
notebook examples/movielens_quickstart.ipynb. TFRS needs tf_keras, so set
TF_USE_LEGACY_KERAS=1 before TensorFlow is first imported.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402

from monolith_tf.quiet_start import import_tensorflow  # noqa: E402

tf = import_tensorflow()  # without its start-up lines (set TF_CPP_MIN_LOG_LEVEL to see them)
import tensorflow_recommenders as tfrs  # noqa: E402

from monolith_tf.datasets import movielens  # noqa: E402
from monolith_tf.layers import HashEmbedding, HashEmbeddingCollection  # noqa: E402

EMBEDDING = {"dim": 32, "initializer": "truncated_normal(stddev=0.05)",
             "optimizer": "adagrad(initial_accumulator=0.1)", "learning_rate": 0.1}


def train_test_split(ratings, test_fraction=0.2, seed=42):
    """Shuffled (train, test) split of the 100k ratings, deterministic and
    held in memory (parsed and shuffled once)."""
    ratings = ratings.cache().shuffle(100_000, seed=seed, reshuffle_each_iteration=False)
    test_size = int(100_000 * test_fraction)
    return ratings.skip(test_size).cache(), ratings.take(test_size).cache()


class RankingModel(tfrs.Model):
    """Predicts the rating from user and movie embeddings through an MLP."""

    def __init__(self):
        super().__init__()
        self.embeddings = HashEmbeddingCollection({"user_id": EMBEDDING, "movie_id": EMBEDDING},
                                                  name="embeddings")
        self.mlp = tf.keras.Sequential([tf.keras.layers.Dense(64, activation="relu"),
                                        tf.keras.layers.Dense(32, activation="relu"),
                                        tf.keras.layers.Dense(1)])
        self.task = tfrs.tasks.Ranking(loss=tf.keras.losses.MeanSquaredError(),
                                       metrics=[tf.keras.metrics.RootMeanSquaredError()])
        # "Liked" = rating >= 4, scored by the predicted rating squashed to [0, 1].
        self.auc = tf.keras.metrics.AUC(name="auc_rating_ge_4")

    def call(self, features, training=False):
        rows = self.embeddings({"user_id": features["user_id"],
                                "movie_id": features["movie_id"]}, training=training)
        return self.mlp(tf.concat([rows["user_id"], rows["movie_id"]], axis=1))

    def compute_loss(self, features, training=False):
        predictions = self(features, training=training)
        self.auc.update_state(tf.cast(features["rating"] >= 4, tf.float32)[:, None],
                              tf.sigmoid(predictions - 3.5))
        return self.task(labels=features["rating"][:, None], predictions=predictions)


class RetrievalModel(tfrs.Model):
    """Two towers of raw-id embeddings, trained with in-batch softmax."""

    def __init__(self, movie_ids):
        super().__init__()
        self.user_embedding = HashEmbedding(**EMBEDDING, name="user_embedding")
        self.movie_embedding = HashEmbedding(**EMBEDDING, name="movie_embedding")
        candidates = movie_ids.batch(256).map(lambda ids: self.movie_embedding(ids))
        self.task = tfrs.tasks.Retrieval(metrics=tfrs.metrics.FactorizedTopK(candidates))

    def compute_loss(self, features, training=False):
        users = self.user_embedding(features["user_id"], training=training)
        movies = self.movie_embedding(features["movie_id"], training=training)
        return self.task(users, movies, compute_metrics=not training)


def train_and_evaluate(epochs=3, max_steps=None, batch_size=1024, verbose=1, path=None):
    """Trains both models on ml-100k and returns (metrics dict, ranking history).

    ``max_steps`` caps each epoch (tests run a few steps).
    """
    tf.random.set_seed(0)
    train, test = train_test_split(movielens.ml100k(path))
    train_batches = train.batch(batch_size).cache()
    test_batches = test.batch(4096).cache()
    if max_steps:
        train_batches = train_batches.take(max_steps)

    ranking = RankingModel()
    ranking.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
    history = ranking.fit(train_batches, epochs=epochs, verbose=verbose)
    ranked = ranking.evaluate(test_batches, return_dict=True, verbose=0)

    movie_ids = np.unique(np.concatenate([b["movie_id"].numpy() for b in train_batches]))
    retrieval = RetrievalModel(tf.data.Dataset.from_tensor_slices(movie_ids))
    retrieval.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
    retrieval.fit(train_batches, epochs=epochs, verbose=verbose)
    retrieved = retrieval.evaluate(test_batches, return_dict=True, verbose=0)

    metrics = {
        "test_rmse": ranked["root_mean_squared_error"],
        "test_auc_rating_ge_4": ranked["auc_rating_ge_4"],
        "test_top_10_accuracy": retrieved["factorized_top_k/top_10_categorical_accuracy"],
        "test_top_100_accuracy": retrieved["factorized_top_k/top_100_categorical_accuracy"],
        "user_rows": int(ranking.embeddings.tables["user_id"].size()),
        "movie_rows": int(ranking.embeddings.tables["movie_id"].size()),
    }
    return metrics, {k: np.asarray(v) for k, v in history.history.items()}
