"""TrainingWorker: batch vs stream, budgets and signals, data time,
TensorBoard, checkpoints and resume (in process and after SIGKILL)."""

import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import monolith_tf as mt
from monolith_tf.dense_checkpoint import DenseCheckpointError
from monolith_tf.sparse_checkpoint import SparseCheckpointer, list_checkpoints, read_manifest
from monolith_tf.training import TrainingWorker
from signal_scenarios import signalled_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "examples"))
import movielens_ctr_job as job  # noqa: E402

BATCH = 64


def write_ratings(path, n, seed=0, start_time=1_000_000, seconds_per_rating=10):
    """A MovieLens-format file of n ratings with increasing timestamps."""
    rng = np.random.default_rng(seed)
    users = rng.integers(1, 300, n)
    movies = rng.integers(1, 500, n)
    ratings = rng.integers(1, 6, n)
    with open(path, "w") as f:
        for i in range(n):
            f.write(f"{users[i]}\t{movies[i]}\t{ratings[i]}\t{start_time + i * seconds_per_rating}\n")
    return str(path)


def fresh_model(**options):
    tf.keras.utils.set_random_seed(0)
    return job.build_model(**options)


def worker(model, model_dir, **options):
    settings = dict(sparse_every_secs=None, dense_every_secs=None, log_every_steps=10,
                    verbose=0)
    settings.update(options)
    return TrainingWorker(model, str(model_dir), **settings)


def sorted_rows(table):
    rows = {k: v.numpy() for k, v in table.export().items()}
    order = np.argsort(rows["keys"])
    return {k: v[order] for k, v in rows.items()}


def assert_same_model(a, b, exact=True):
    assert len(a.weights) == len(b.weights)
    for wa, wb in zip(a.weights, b.weights):
        if exact:
            np.testing.assert_array_equal(np.asarray(wa), np.asarray(wb), err_msg=wa.name)
        elif np.asarray(wa).dtype.kind == "f":
            # Counters are left out: Keras 3's fit counts one extra iteration at
            # the end of a dataset of unknown length (seen with TF 2.21).
            np.testing.assert_allclose(np.asarray(wa), np.asarray(wb), rtol=1e-5, atol=1e-6)
    tables_a, tables_b = mt.layers.model_tables(a), mt.layers.model_tables(b)
    assert len(tables_a) == len(tables_b)
    for (name, table_a), table_b in zip(tables_a.items(), tables_b.values()):
        ra, rb = sorted_rows(table_a), sorted_rows(table_b)
        fields = ra if exact else ("keys", "values")
        for field in fields:
            if exact or field == "keys":
                np.testing.assert_array_equal(ra[field], rb[field], err_msg=f"{name} {field}")
            else:
                np.testing.assert_allclose(ra[field], rb[field], rtol=1e-5, atol=1e-6)


def stream_of(path):
    """An unbounded stream: the file's ratings, then the same ratings again
    forever, produced by a Python generator (as a consumer of a log would)."""
    def lines():
        while True:
            with open(path) as f:
                yield from (line.rstrip("\n") for line in f)

    def parse(line):
        fields = tf.strings.split(line, "\t")
        return {"user_id": tf.strings.to_number(fields[0], tf.int64),
                "movie_id": tf.strings.to_number(fields[1], tf.int64),
                "rating": tf.strings.to_number(fields[2], tf.float32),
                "timestamp": tf.strings.to_number(fields[3], tf.int64)}

    raw = tf.data.Dataset.from_generator(lines, output_signature=tf.TensorSpec([], tf.string))
    return raw.map(parse).map(job.to_example).batch(BATCH)


@pytest.mark.keras_flavours
def test_batch_and_stream_training_end_with_identical_weights(tmp_path):
    data = write_ratings(tmp_path / "u.data", 40 * BATCH)
    batch_model = fresh_model()
    result = worker(batch_model, tmp_path / "batch").train(job.make_dataset([data], BATCH))
    assert (result["stop_reason"], result["steps"]) == ("end_of_data", 40)

    stream_model = fresh_model()
    stream = stream_of(data)
    assert stream.cardinality() == tf.data.UNKNOWN_CARDINALITY
    result = worker(stream_model, tmp_path / "stream").train(stream, max_steps=40)
    assert (result["stop_reason"], result["examples"]) == ("max_steps", 40 * BATCH)
    assert_same_model(batch_model, stream_model)

    # Independent reference: Keras' own fit over the same batches.
    fit_model = fresh_model()
    fit_model.fit(job.make_dataset([data], BATCH), epochs=1, verbose=0)
    assert_same_model(batch_model, fit_model, exact=False)


class Subclassed(tf.keras.Model):
    """A model whose variables are created on its first call."""

    def __init__(self):
        super().__init__()
        self.users = mt.layers.HashEmbedding(8, initializer="normal(stddev=0.1)", seed=1)
        self.head = tf.keras.layers.Dense(1, activation="sigmoid")

    def call(self, features, training=False):
        return self.head(self.users(features["user_id"], training=training))


@pytest.mark.keras_flavours
def test_subclassed_model_built_by_the_worker_trains_like_fit(tmp_path):
    data = write_ratings(tmp_path / "u.data", 10 * BATCH)
    models = []
    for use_fit in (False, True):
        tf.keras.utils.set_random_seed(0)
        model = Subclassed()
        model.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss="binary_crossentropy")
        if use_fit:
            model.fit(job.make_dataset([data], BATCH), verbose=0)
        else:
            worker(model, tmp_path / "run").train(job.make_dataset([data], BATCH))
        models.append(model)
    assert_same_model(*models, exact=False)


@pytest.mark.keras_flavours
def test_data_time_reaches_the_tables_and_expires_rows(tmp_path):
    data = write_ratings(tmp_path / "u.data", 30 * BATCH, seconds_per_rating=100)
    model = fresh_model(expire_after=5_000, evict_every=5)
    trainer = worker(model, tmp_path / "run")
    trainer.train(job.make_dataset([data], BATCH))
    newest = 1_000_000 + (30 * BATCH - 1) * 100
    assert trainer.data_time == newest
    for table in mt.layers.model_tables(model).values():
        stats = table.stats()
        assert int(stats["now"]) == newest
        assert int(stats["evicted"]) > 0
        # Evicted at most 5 steps ago: nothing older than that survives.
        assert sorted_rows(table)["timestamps"].min() >= newest - 5_000 - 5 * 100 * BATCH


@pytest.mark.keras_flavours
def test_tensorboard_has_loss_metrics_throughput_and_table_stats(tmp_path):
    data = write_ratings(tmp_path / "u.data", 20 * BATCH)
    worker(fresh_model(), tmp_path / "run").train(job.make_dataset([data], BATCH))
    tags = set()
    for file in glob.glob(str(tmp_path / "run" / "tensorboard" / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(file):
            tags.update(value.tag for value in event.summary.value)
    for table in ("embeddings/user_id", "embeddings/movie_id"):
        for field in ("size", "admitted", "rejected", "evicted", "memory_bytes"):
            assert f"tables/{table}/{field}" in tags
    assert {"train/loss", "train/auc", "train/examples_per_sec", "train/data_time"} <= tags


@pytest.mark.integration
def test_unbounded_stream_stops_on_time_budget_and_on_signal(tmp_path):
    data = write_ratings(tmp_path / "u.data", 10 * BATCH)
    result = worker(fresh_model(), tmp_path / "timed").train(stream_of(data), max_seconds=2)
    assert result["stop_reason"] == "max_seconds" and result["steps"] >= 1

    # SIGTERM from outside, to a worker in a child process (never to pytest).
    stopped = signalled_run("file_stream", tmp_path)
    assert stopped["stop_reason"] == "signal" and stopped["steps"] >= 3
    # The final save pairs a dense checkpoint with a sparse one at the last step.
    assert stopped["dense_step"] == stopped["steps"]
    assert stopped["sparse_steps"] == [stopped["steps"]]
    assert stopped["handler_restored"]


@pytest.mark.keras_flavours
def test_resume_policies_and_schedules(tmp_path):
    data = write_ratings(tmp_path / "u.data", 30 * BATCH)
    run = tmp_path / "run"
    first = worker(fresh_model(), run, sparse_every_steps=4, dense_every_steps=10)
    first.train(job.make_dataset([data], BATCH), max_steps=27)
    # Dense at 10, 20 and the final 27; sparse at 4, 8, 10, 12, ..., 24, 27.
    dense = first.checkpoint_policy.dense
    assert [dense.peek(p)[0] for p in dense.checkpoints()] == [10, 20, 27]
    # Simulate a crash after step 24: drop the final pair.
    newest_dense = first.checkpoint_policy.dense.checkpoints()[-1]
    for file in glob.glob(newest_dense + ".*"):
        os.remove(file)
    shutil.rmtree(list_checkpoints(first.checkpoint_policy.sparse.directory)[-1][2])
    with open(os.path.join(run, "dense", "checkpoint"), "w") as f:
        f.write('model_checkpoint_path: "dense-20"\nall_model_checkpoint_paths: "dense-10"\n'
                'all_model_checkpoint_paths: "dense-20"\n')
    latest_dir = tmp_path / "latest"
    shutil.copytree(run, latest_dir)

    consistent = worker(fresh_model(), run)
    result = consistent.train(job.make_dataset([data], BATCH), max_steps=20)
    assert result["resumed_from"]["dense"].endswith("dense-20")
    assert result["steps"] == 20  # resumed at 20: nothing left to do
    steps = [read_manifest(p)["metadata"]["step"] for _, _, p in
             list_checkpoints(consistent.checkpoint_policy.sparse.directory)]
    assert max(steps) == 20  # the sparse saves after the dense one were discarded

    latest = worker(fresh_model(), latest_dir, resume="latest")
    result = latest.train(job.make_dataset([data], BATCH), max_steps=24)
    assert result["resumed_from"]["sparse"].endswith("-delta")
    assert result["steps"] == 24 and result["examples"] == 24 * BATCH


@pytest.mark.keras_flavours
def test_resumed_run_equals_an_uninterrupted_one_in_process(tmp_path):
    data = write_ratings(tmp_path / "u.data", 30 * BATCH)
    straight = fresh_model()
    worker(straight, tmp_path / "straight").train(job.make_dataset([data], BATCH))
    stopped = worker(fresh_model(), tmp_path / "stopped", sparse_every_steps=3)
    stopped.train(job.make_dataset([data], BATCH), max_steps=13)
    resumed = fresh_model()
    result = worker(resumed, tmp_path / "stopped").train(job.make_dataset([data], BATCH))
    assert result["resumed_from"]["dense"].endswith("dense-13")
    assert result["steps"] == 30
    assert_same_model(straight, resumed)


@pytest.mark.keras_flavours
def test_restarts_leave_no_temporaries_and_chains_stay_within_full_every(tmp_path):
    """A crash can leave a sparse ``.partial-*`` directory of any sequence
    and kind and TensorFlow's ``dense-<step>_temp``; the next run removes
    them. Repeated restarts continue the chain's count, so no chain ever
    holds more than ``full_every`` checkpoints (restarting the count grew
    one delta chain per restart)."""
    from monolith_tf.sparse_checkpoint import SparseCheckpointer

    data = write_ratings(tmp_path / "u.data", 40 * BATCH)
    run = tmp_path / "run"
    for restart in range(6):
        if restart:   # what a SIGKILL inside saves leaves
            os.makedirs(run / "sparse" / f".partial-{90 + restart:08d}-delta")
            os.makedirs(run / "sparse" / f".partial-{90 + restart:08d}-full")
            os.makedirs(run / "dense" / f"dense-{900 + restart}_temp")
        w = worker(fresh_model(), run, sparse_every_steps=1, dense_every_steps=2, full_every=3)
        w.train(job.make_dataset([data], BATCH), max_steps=2 * restart + 2)
        assert not [n for n in os.listdir(run / "sparse") if n.startswith(".partial-")]
        assert not [n for n in os.listdir(run / "dense") if n.endswith("_temp")]
    chains = SparseCheckpointer(str(run / "sparse"), {}).chains()
    assert chains and max(len(chain) for chain in chains) <= 3
    kinds = [kind for _, kind, _ in list_checkpoints(str(run / "sparse"))]
    assert kinds[-3:].count("full") >= 1


@pytest.mark.keras_flavours
def test_a_second_train_call_continues_from_memory(tmp_path):
    data = write_ratings(tmp_path / "u.data", 20 * BATCH)
    straight = fresh_model()
    worker(straight, tmp_path / "straight").train(job.make_dataset([data], BATCH), epochs=2)
    model = fresh_model()
    trainer = worker(model, tmp_path / "twice")
    trainer.train(job.make_dataset([data], BATCH), epochs=1)
    result = trainer.train(job.make_dataset([data], BATCH), epochs=2)
    assert result["resumed_from"] is None and result["steps"] == 40
    assert_same_model(straight, model)


@pytest.mark.keras_flavours
def test_corrupt_newest_pair_falls_back_and_foreign_model_is_refused(tmp_path, capsys):
    data = write_ratings(tmp_path / "u.data", 20 * BATCH)
    run = tmp_path / "run"
    first = worker(fresh_model(), run, dense_every_steps=5, sparse_every_steps=5)
    first.train(job.make_dataset([data], BATCH), max_steps=10)
    newest_sparse = list_checkpoints(first.checkpoint_policy.sparse.directory)[-1][2]
    row_file = sorted(glob.glob(os.path.join(newest_sparse, "*.rows.*")))[0]
    with open(row_file, "r+b") as f:
        f.seek(30)
        f.write(b"\x00\x01\x02\x03")
    second = worker(fresh_model(), run, verbose=1)
    result = second.train(job.make_dataset([data], BATCH), max_steps=10)
    assert result["resumed_from"]["dense"].endswith("dense-5")
    assert "CRC mismatch" in capsys.readouterr().out

    inputs = tf.keras.Input(shape=(), dtype="int64", name="user_id")
    rows = mt.layers.HashEmbedding(16, name="embeddings")(inputs)
    other = tf.keras.Model(inputs, tf.keras.layers.Dense(1)(rows))
    other.compile(optimizer="adam", loss="mse")
    other_data = tf.data.Dataset.from_tensor_slices(
        (tf.range(64, dtype=tf.int64), tf.zeros([64, 1]))).batch(BATCH)
    with pytest.raises(ValueError, match="no checkpoint could be restored"):
        worker(other, run).train(other_data)


@pytest.mark.keras_flavours
def test_checkpoints_off_writes_none(tmp_path):
    data = write_ratings(tmp_path / "u.data", 5 * BATCH)
    result = worker(fresh_model(), tmp_path / "run", checkpoints=False, sparse_every_steps=1,
                    tensorboard=False).train(job.make_dataset([data], BATCH))
    assert result["steps"] == 5
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.keras_flavours
def test_bad_arguments(tmp_path):
    inputs = tf.keras.Input(shape=(2,))
    uncompiled = tf.keras.Model(inputs, tf.keras.layers.Dense(1)(inputs))
    with pytest.raises(ValueError, match="compiled model"):
        TrainingWorker(uncompiled, str(tmp_path))
    model = fresh_model()
    with pytest.raises(ValueError, match="resume"):
        TrainingWorker(model, str(tmp_path), resume="newest")
    with pytest.raises(ValueError, match="steps must be > 0"):
        TrainingWorker(model, str(tmp_path), sparse_every_steps=0)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="steps_in_flight must be an int >= 1"):
            TrainingWorker(model, str(tmp_path), steps_in_flight=bad)
    with pytest.raises(ValueError, match="steps_in_flight > 1 needs a strategy"):
        TrainingWorker(model, str(tmp_path), steps_in_flight=2)
    with pytest.raises(TypeError, match="tf.data.Dataset"):
        worker(model, tmp_path).train([1, 2, 3])
    with pytest.raises(DenseCheckpointError, match="no such dense checkpoint"):
        dense = worker(model, tmp_path).checkpoint_policy.dense
        dense.restore(str(tmp_path / "dense" / "dense-99"))


def _cli_train(model_dir, data, max_steps, extra=()):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen(
        [sys.executable, "-m", "monolith_tf", "train", "--job",
         os.path.join(REPO, "examples", "movielens_ctr_job.py"), "--data", data,
         "--model-dir", str(model_dir), "--batch-size", "16", "--max-steps", str(max_steps),
         "--sparse-every-steps", "7", "--dense-every-steps", "50", "--full-every", "5",
         "--log-every-steps", "100", "--verbose", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _final_state(model_dir):
    """(dense variables by name, sparse rows by table) of a finished run, read
    from its files alone: TF's checkpoint reader and fresh HashTables."""
    dense_dir = os.path.join(model_dir, "dense")
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(dense_dir))
    dense = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
             if name.startswith(("model_weights", "optimizer_variables", "step"))}
    sparse_dir = os.path.join(model_dir, "sparse")
    manifest = read_manifest(list_checkpoints(sparse_dir)[-1][2])
    tables = {}
    for name, entry in manifest["tables"].items():
        config = dict(entry["config"])
        for option in ("expire_after", "evict_every"):
            config[option] = config[option] or None
        tables[name] = mt.HashTable(**config)
    SparseCheckpointer(sparse_dir, tables).restore()
    return dense, {name: sorted_rows(table) for name, table in tables.items()}


@pytest.mark.slow
def test_sigkill_mid_run_then_restart_matches_an_uninterrupted_run(tmp_path):
    data = write_ratings(tmp_path / "u.data", 20_000, seed=4)
    steps = 400   # the kill comes after 3 dense saves (step 150); restarts train the rest
    reference = _cli_train(tmp_path / "reference", data, steps)
    crashed_dir = tmp_path / "crashed"
    crashed = _cli_train(crashed_dir, data, steps)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and crashed.poll() is None:
        state = tf.train.get_checkpoint_state(str(crashed_dir / "dense"))
        if state and len(state.all_model_checkpoint_paths) >= 3:
            break
        time.sleep(0.02)
    assert crashed.poll() is None, "the run ended before it could be killed"
    crashed.send_signal(signal.SIGKILL)
    crashed.wait()
    assert crashed.returncode == -signal.SIGKILL
    killed_at = max(read_manifest(p)["metadata"]["step"] for _, _, p in
                    list_checkpoints(str(crashed_dir / "sparse")))
    assert killed_at < steps

    restarted = _cli_train(crashed_dir, data, steps)
    out, err = restarted.communicate(timeout=300)
    assert restarted.returncode == 0, err[-3000:]
    assert '"resumed_from": {"dense"' in out
    out, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-3000:]

    dense_a, sparse_a = _final_state(crashed_dir)
    dense_b, sparse_b = _final_state(tmp_path / "reference")
    assert dense_a.keys() == dense_b.keys()
    for name in dense_a:
        np.testing.assert_array_equal(dense_a[name], dense_b[name], err_msg=name)
    for table in sparse_a:
        for field in sparse_a[table]:
            np.testing.assert_array_equal(sparse_a[table][field], sparse_b[table][field],
                                          err_msg=f"{table} {field}")
