"""TFRS on MovieLens with HashEmbedding (tf_keras only: `make test` runs this
directory with TF_USE_LEGACY_KERAS=1), the loaders, and the notebook."""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from monolith_tf.datasets import movielens

# TFRS needs tf_keras: `make test` runs this module under tf_keras only.
pytestmark = pytest.mark.keras_flavours

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "examples"))


def test_running_under_tf_keras():
    assert tf.keras.__name__.startswith("tf_keras"), "run with TF_USE_LEGACY_KERAS=1"


def test_ml100k_is_complete():
    ratings = movielens.ml100k()
    users, movies, count = set(), set(), 0
    for batch in ratings.batch(20_000):
        users.update(batch["user_id"].numpy().tolist())
        movies.update(batch["movie_id"].numpy().tolist())
        assert set(np.unique(batch["rating"].numpy())) <= {1.0, 2.0, 3.0, 4.0, 5.0}
        count += len(batch["rating"])
    assert (count, len(users), len(movies)) == (100_000, 943, 1682)


@pytest.mark.parametrize("name, text", [
    ("u.data", "1\t10\t4\t881250949\n2\t20\t3\t881250950\n"),
    ("ratings.dat", "1::10::4::881250949\n2::20::3::881250950\n"),
    ("ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,881250949\n2,20,3.0,881250950\n"),
])
def test_grouplens_formats(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    rows = list(movielens.load_ratings(str(path)).as_numpy_iterator())
    assert [(r["user_id"], r["movie_id"], r["rating"], r["timestamp"]) for r in rows] == [
        (1, 10, 4.0, 881250949), (2, 20, 3.0, 881250950)]


def test_malformed_lines_and_names_are_clear_errors(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("1\t10\t4\n")
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected 4 fields"):
        list(movielens.load_ratings(str(path)))
    with pytest.raises(ValueError, match="unknown MovieLens format"):
        movielens.load_ratings(str(path), fmt="ratings.json")


@pytest.mark.slow
def test_tfrs_ranking_and_retrieval_train_on_raw_ids():
    import movielens_model

    metrics, history = movielens_model.train_and_evaluate(epochs=2, max_steps=30, verbose=0)
    assert history["loss"][1] < history["loss"][0]
    assert metrics["test_rmse"] < 1.3
    assert metrics["test_auc_rating_ge_4"] > 0.55
    # 100 of ~1,400 candidates by chance would give ~0.07.
    assert metrics["test_top_100_accuracy"] > 0.08
    assert 0 < metrics["user_rows"] <= 943 and 0 < metrics["movie_rows"] <= 1682


@pytest.mark.slow
def test_notebook_executes_headless(tmp_path):
    import nbclient
    import nbformat

    notebook = nbformat.read(os.path.join(REPO, "examples", "movielens_quickstart.ipynb"), 4)
    os.environ["MONOLITH_NOTEBOOK_STEPS"] = "10"
    os.environ.setdefault("PYTHONPATH", REPO)
    if REPO not in os.environ["PYTHONPATH"].split(os.pathsep):
        os.environ["PYTHONPATH"] = REPO + os.pathsep + os.environ["PYTHONPATH"]
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    # Run in examples/ so the notebook imports the shared model module.
    client.resources["metadata"]["path"] = os.path.join(REPO, "examples")
    client.execute()
    outputs = "".join(out.get("text", "") for cell in notebook.cells
                      for out in cell.get("outputs", []))
    assert "test_rmse" in outputs
    assert any("image/png" in out.get("data", {}) for cell in notebook.cells
               for out in cell.get("outputs", []))


def test_training_worker_trains_and_resumes_a_tfrs_model(tmp_path):
    import movielens_model

    from monolith_tf.training import TrainingWorker

    batches = movielens.ml100k().take(20 * 256).batch(256).cache()

    def worker(model):
        model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
        return TrainingWorker(model, str(tmp_path), sparse_every_steps=4, dense_every_steps=8,
                              sparse_every_secs=None, dense_every_secs=None, verbose=0)

    tf.keras.utils.set_random_seed(0)
    straight = movielens_model.RankingModel()
    first = worker(straight).train(batches, max_steps=10)
    assert first["stop_reason"] == "max_steps"
    assert np.isfinite(first["logs"]["loss"])
    # The ratings' timestamps reached the tables through the worker.
    newest = max(int(b["timestamp"].numpy().max()) for b in batches.take(10))
    assert int(straight.embeddings.tables["user_id"].stats()["now"]) == newest

    resumed = movielens_model.RankingModel()
    second = worker(resumed).train(batches)
    assert second["resumed_from"]["dense"].endswith("dense-10")
    assert second["steps"] == 20
