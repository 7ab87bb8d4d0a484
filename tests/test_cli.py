"""python -m monolith_tf: inspect, export and train, run through the CLI's
``main(argv)`` in this process (its exit status and what it printed); the
``python -m monolith_tf`` entry itself runs in child processes in the
kill-point, SIGKILL and cluster tests."""

import json
import os
import types

import numpy as np
import pytest
import tensorflow as tf

import monolith_tf as mt
from monolith_tf.cli import main as cli_main
from monolith_tf.layers import HashEmbedding
from monolith_tf.sparse_checkpoint import SparseCheckpointer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli_status(args):
    """The CLI's exit status for ``args``, as a process's (argparse's usage
    errors exit through SystemExit)."""
    try:
        return cli_main([str(a) for a in args])
    except SystemExit as exit_info:
        return exit_info.code


@pytest.fixture
def cli(capsys):
    """``cli(*args)``: the command's exit status and output, as a process's."""
    def run(*args):
        capsys.readouterr()
        status = cli_status(args)
        out, err = capsys.readouterr()
        return types.SimpleNamespace(returncode=status, stdout=out, stderr=err)
    return run


def test_inspect_lists_checkpoints_tables_rows_and_times(tmp_path, cli):
    table = mt.HashTable(3, optimizer="sgd")
    saver = SparseCheckpointer(str(tmp_path), {"users": table})
    table.apply_gradients(tf.range(10, dtype=tf.int64), tf.ones([10, 3]), 0.1, timestamps=50)
    saver.save()
    table.apply_gradients([1, 2], tf.ones([2, 3]), 0.1, timestamps=70)
    table.remove([9])
    saver.save()
    result = cli("inspect", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert [c["kind"] for c in summary] == ["full", "delta"]
    full, delta = (c["tables"]["users"] for c in summary)
    assert (full["rows"], full["oldest_update"], full["newest_update"]) == (10, 50, 50)
    assert (delta["rows"], delta["removed"], delta["newest_update"], delta["now"]) == (2, 1, 70, 70)
    text = cli("inspect", str(tmp_path))
    assert "users: dim 3, 10 rows" in text.stdout


def test_inspect_missing_directory_is_a_clear_error(tmp_path, cli):
    result = cli("inspect", str(tmp_path / "nope"))
    assert result.returncode == 2 and "no such checkpoint directory" in result.stderr


@pytest.mark.keras_flavours
def test_export_command(tmp_path, cli):
    emb = HashEmbedding(2, initializer="ones")
    inputs = tf.keras.Input(shape=(), dtype="int64")
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(1)(emb(inputs)))
    emb(tf.constant([4], tf.int64), training=True)
    legacy = os.environ.get("TF_USE_LEGACY_KERAS") == "1"
    saved = str(tmp_path / ("model" if legacy else "model.keras"))
    model.save(saved)
    result = cli("export", saved, str(tmp_path / "serving"))
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = tf.saved_model.load(str(tmp_path / "serving"))
    out = list(loaded.signatures["serving_default"](tf.constant([4, 5], tf.int64)).values())[0]
    np.testing.assert_allclose(out.numpy(), model.predict(np.array([4, 5]), verbose=0),
                               rtol=1e-6)


def test_train_command_trains_checkpoints_exports_and_inspects(tmp_path, cli):
    data = tmp_path / "u.data"
    with open(data, "w") as f:
        for i in range(600):
            f.write(f"{i % 37}\t{i % 91}\t{1 + i % 5}\t{1000 + i}\n")
    model_dir = tmp_path / "run"
    job = os.path.join(REPO, "examples", "movielens_ctr_job.py")
    result = cli("train", "--job", job, "--data", str(data), "--model-dir", str(model_dir),
                 "--batch-size", "100", "--epochs", "2", "--verbose", "0",
                 "--option", "expire_after=100000", "--export", str(tmp_path / "serving"),
                 "--row-dtype", "float16")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["steps"], summary["examples"], summary["stop_reason"]) == (
        12, 1200, "end_of_data")
    assert sorted(summary["exported"]) == ["embeddings/movie_id", "embeddings/user_id"]
    inspected = json.loads(cli("inspect", str(model_dir), "--json").stdout)
    final = inspected[-1]
    assert final["metadata"]["step"] == 12 and final["metadata"]["data_time"] == 1599
    assert final["tables"]["embeddings.user_id"]["dim"] == 16


def test_train_command_bad_input(tmp_path, cli):
    job = os.path.join(REPO, "examples", "movielens_ctr_job.py")
    result = cli("train", "--job", job, "--data", str(tmp_path / "missing"),
                 "--model-dir", str(tmp_path / "run"))
    assert result.returncode == 2 and "data files not found" in result.stderr
    not_a_job = tmp_path / "job.py"
    not_a_job.write_text("x = 1\n")
    (tmp_path / "u.data").write_text("1\t2\t3\t4\n")
    result = cli("train", "--job", str(not_a_job), "--data", str(tmp_path / "u.data"),
                 "--model-dir", str(tmp_path / "run"))
    assert result.returncode == 2 and "must define ['build_model', 'make_dataset']" in result.stderr
