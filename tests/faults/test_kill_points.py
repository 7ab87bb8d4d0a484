"""SIGKILL at seeded kill points (monolith_tf.kill_points): the training
worker (inside sparse saves, paired saves, dense saves, delta chains and
sync pushes, and between steps) and the joiner (after emitting, inside and
after its snapshot), restarted after each kill. Every restart must succeed;
the worker's final rows and weights must equal an uninterrupted run's
(consistent resume) and a replica following its sync stream must equal
them; the joiner's output must equal the reference as a set with duplicates
bounded."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from monolith_tf.schema import table_file_name
from monolith_tf.sparse_checkpoint import list_checkpoints, read_manifest
from replica_rows import served_rows
from test_training import _final_state, write_ratings

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 240
# (kill point, largest n to draw): n stays small enough that a run resumed
# from the newest dense checkpoint passes the point n times before STEPS.
WORKER_POINTS = {
    "worker.step": 30, "sparse_save.table": 6, "sparse_save.manifest": 3,
    "sparse_save.renamed": 3, "paired_save.sparse_done": 1, "dense_save.written": 1,
    "sync.rows_record": 6, "sync.rows_pushed": 1,
}


def kill_plan(points, kills, seed):
    rng = np.random.default_rng(seed)
    names = sorted(points)
    plan = [(name, 1 + int(rng.integers(points[name]))) for name in names]  # each once
    while len(plan) < kills:
        name = names[int(rng.integers(len(names)))]
        plan.append((name, 1 + int(rng.integers(points[name]))))
    order = rng.permutation(len(plan))
    return [plan[i] for i in order]


def rotation(plan, seed):
    """The kills of one ``make test`` run: for every kill point, one of its
    kills in ``plan`` chosen by ``seed``, in the plan's order (the seed is
    printed in pytest's header). ``MONOLITH_KILLS=all`` (``make
    test-faults``) runs the whole plan."""
    if os.environ.get("MONOLITH_KILLS") == "all":
        return list(plan)
    rng = np.random.default_rng(seed)
    chosen = set()
    for name in sorted({name for name, _ in plan}):
        indices = [i for i, (point, _) in enumerate(plan) if point == name]
        chosen.add(indices[int(rng.integers(len(indices)))])
    return [plan[i] for i in sorted(chosen)]


ROTATION_SEED = int(os.environ.get("MONOLITH_KILL_SEED", "0"))


def train_run(run_dir, data, kill_at=None):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("MONOLITH_TF_KILL_AT", None)
    if kill_at:
        env["MONOLITH_TF_KILL_AT"] = f"{kill_at[0]}:{kill_at[1]}"
    return subprocess.run(
        [sys.executable, "-m", "monolith_tf", "train", "--job",
         os.path.join(REPO, "examples", "movielens_ctr_job.py"), "--data", data,
         "--model-dir", str(run_dir / "model"), "--batch-size", "16", "--max-steps", str(STEPS),
         "--sparse-every-steps", "4", "--dense-every-steps", "12", "--full-every", "3",
         "--sparse-every-secs", "1e9", "--dense-every-secs", "1e9",
         "--log-every-steps", "1000", "--verbose", "0",
         "--sync-log", str(run_dir / "sync"), "--serving-base-path", str(run_dir / "models"),
         "--sparse-sync-every-secs", "0", "--dense-sync-every-secs", "0",
         # 16 ratings x 10 s per step: rows every 5 steps, dense every 15.
         "--sparse-sync-every-data-secs", "800", "--dense-sync-every-data-secs", "2400"],
        capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_worker_killed_at_seeded_points_ends_equal_to_an_uninterrupted_run(tmp_path):
    """A rotation over the 20 seeded kills (every kill point each run, all
    20 under ``make test-faults``); then the final run completes."""
    data = write_ratings(tmp_path / "u.data", 16 * STEPS, seed=7)
    reference = train_run(tmp_path / "reference", data)
    assert reference.returncode == 0, reference.stderr[-3000:]

    crashed = tmp_path / "crashed"
    plan = rotation(kill_plan(WORKER_POINTS, 20, seed=15), ROTATION_SEED)
    assert {point for point, _ in plan} == set(WORKER_POINTS)
    for point, n in plan:
        run = train_run(crashed, data, (point, n))
        assert run.returncode == -signal.SIGKILL, \
            f"{point}:{n} (rotation seed {ROTATION_SEED}) was not reached or the restart " \
            f"failed: {run.stderr[-3000:]}"
        # A full snapshot then at most full_every - 1 deltas, after any kill.
        sparse_dir = crashed / "model" / "sparse"
        for _, kind, path in list_checkpoints(str(sparse_dir)):
            chain = read_manifest(path)
            assert chain["sequence"] - chain["base"] < 3, (point, n, path)
    final = train_run(crashed, data)
    assert final.returncode == 0, final.stderr[-3000:]
    assert '"resumed_from": {"dense"' in final.stdout
    model_dir = crashed / "model"
    assert not [name for d in ("sparse", "dense") for name in os.listdir(model_dir / d)
                if name.startswith(".partial-") or "_temp" in name]

    dense_a, sparse_a = _final_state(str(model_dir))
    dense_b, sparse_b = _final_state(str(tmp_path / "reference" / "model"))
    assert dense_a.keys() == dense_b.keys()
    for name in dense_a:
        np.testing.assert_array_equal(dense_a[name], dense_b[name], err_msg=name)
    assert sparse_a.keys() == sparse_b.keys()
    for table in sparse_a:
        for field in sparse_a[table]:
            np.testing.assert_array_equal(sparse_a[table][field], sparse_b[table][field],
                                          err_msg=f"{table} {field}")

    # A replica following the crashed run's sync stream (newest base, then
    # the records after it) serves exactly the final rows.
    served = served_rows(str(crashed / "models"), str(crashed / "sync"))
    assert {table_file_name(name) for name in served} == sparse_a.keys()
    for name, (ids, values) in served.items():
        trained = sparse_a[table_file_name(name)]
        np.testing.assert_array_equal(ids, trained["keys"], err_msg=name)
        np.testing.assert_array_equal(values, trained["values"], err_msg=name)


JOINER_POINTS = {"joiner.emitted": 15, "joiner.snapshot": 2, "joiner.committed": 2}


def joiner_run(log_dir, state_dir, kill_at=None, close_at_end=False):
    from joiner_data import ACTIONS, LATENESS, WINDOW

    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("MONOLITH_TF_KILL_AT", None)
    if kill_at:
        env["MONOLITH_TF_KILL_AT"] = f"{kill_at[0]}:{kill_at[1]}"
    return subprocess.run(
        [sys.executable, "-m", "monolith_tf", "join", "--log", log_dir, "--state-dir", state_dir,
         "--actions", ",".join(ACTIONS), "--window", str(WINDOW), "--allowed-lateness",
         str(LATENESS), "--negative-rate", "0.5", "--checkpoint-every", "0.3",
         "--idle-timeout", "1", *(["--close-at-end"] if close_at_end else [])],
        capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.slow
def test_joiner_killed_at_seeded_points_emits_every_example_with_bounded_duplicates(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "tests", "streaming"))
    from joiner_data import random_logs, reference
    from test_joiner import produce, read_examples

    from monolith_tf.streaming.embedded_log import EmbeddedLog

    log = EmbeddedLog(str(tmp_path / "log"))
    features, actions, arrivals = random_logs(n=1500, seed=5)
    state_dir = str(tmp_path / "state")
    snapshot = os.path.join(state_dir, "joiner-state.json")
    plan = kill_plan(JOINER_POINTS, 10, seed=21)
    # The logs grow between runs, so every run has examples left to emit.
    slices = np.array_split(np.arange(len(arrivals)), len(plan))
    duplicate_bound = 0
    for index, (point, n) in enumerate(plan):
        produce(log, [arrivals[i] for i in slices[index]], garbage=False, create=index == 0)
        run = joiner_run(log.path, state_dir, (point, n))
        assert run.returncode == -signal.SIGKILL, f"{point}:{n} not reached: {run.stderr[-3000:]}"
        emitted_at_kill = sum(log.end_offsets("examples").values())
        emitted_at_snapshot = 0
        if os.path.exists(snapshot):
            with open(snapshot) as f:
                emitted_at_snapshot = json.load(f)["counters"]["emitted"]
        # A restart re-emits what came after the snapshot it resumes from.
        duplicate_bound += emitted_at_kill - emitted_at_snapshot
        if point != "joiner.snapshot":  # a restart removed an older kill's temporary
            assert not os.path.exists(snapshot + ".tmp"), (point, n)
    final = joiner_run(log.path, state_dir, close_at_end=True)
    assert final.returncode == 0, final.stderr[-3000:]
    assert not os.path.exists(snapshot + ".tmp")
    got = read_examples(log)
    expected = {(r, c, l, round(s, 6)) for r, c, l, s in reference(features, actions, 0.5)}
    assert set(got) == expected
    assert len(got) - len(set(got)) <= duplicate_bound
