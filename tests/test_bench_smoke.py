"""The benchmark scripts run end to end on tiny sizes (their figures are
not checked here: speed targets live in bench/RESULTS.md, not in tests).
Benches run in this process through their ``main(argv)``, their worker
processes too (``BENCH_IN_PROCESS=1``, bench/workers.py); those whose point
is other processes (a server, a cluster, the trainer of the freshness
probe) start them. The training bench, whose workers run under tf_keras,
is smoke-tested in tests/legacy_keras."""

import importlib
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def bench(monkeypatch, capsys):
    """``bench(name, *argv)`` runs ``bench/<name>.py``'s ``main(argv)`` here
    and returns what it printed."""
    monkeypatch.setenv("BENCH_IN_PROCESS", "1")
    monkeypatch.syspath_prepend(os.path.join(REPO, "bench"))

    def run(name, *argv):
        module = importlib.import_module(name)
        capsys.readouterr()
        module.main([str(a) for a in argv])
        return capsys.readouterr().out
    return run


@pytest.mark.slow
def test_table_bench_runs(tmp_path, bench):
    out = tmp_path / "bench.json"
    printed = bench("table_bench", "--keys", 20000, "--dims", 8, "--batch", 4096,
                    "--repeats", 2, "--warm-bytes", 0, "--json", out)
    rows = json.loads(out.read_text())
    assert len(rows) == 1
    for system in ("monolith", "dense_hash_table", "dense_gather"):
        assert rows[0][system]["lookup"] > 0
        assert rows[0][system]["adagrad"] > 0
    assert rows[0]["monolith"]["insert"] > 0
    assert "| 20,000 | 8 |" in printed


@pytest.mark.slow
def test_memory_bench_runs(tmp_path, bench):
    plot = tmp_path / "memory.png"
    printed = bench("memory_bench", "--steps", 12, "--thresholds", "0,2", "--plot", plot)
    rows = [line for line in printed.splitlines() if line.startswith("| 0 |")
            or line.startswith("| 2 |")]
    assert len(rows) == 4
    assert plot.stat().st_size > 1000


@pytest.mark.slow
def test_checkpoint_bench_runs(bench):
    printed = bench("checkpoint_bench", "--rows", 30000, "--touched", 300)
    rows = {line.split("|")[1].strip(): line for line in printed.splitlines()
            if line.startswith("| ours") or line.startswith("| tf_checkpoint")}
    assert set(rows) == {"ours", "tf_checkpoint"}
    # The delta holds 300 of 30,000 rows: 1% of the full size, plus headers.
    delta_share = float(rows["ours"].rstrip(" |").rsplit("(", 1)[1].rstrip("%)"))
    assert 1.0 <= delta_share < 1.5, rows["ours"]


@pytest.mark.slow
@pytest.mark.integration
def test_joiner_bench_runs():
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "bench", "joiner_bench.py"), "--requests", "500"],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines()
            if line.startswith("| embedded") or line.startswith("| kafka")]
    assert len(rows) == 2 and all("| 500 |" in row for row in rows)  # every impression emitted


@pytest.mark.slow
@pytest.mark.integration
def test_serving_bench_runs():
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "bench", "serving_bench.py"), "--users", "500",
         "--items", "100", "--requests", "5", "--paced-seconds", "0.5", "--paced-runs", "1"],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| gRPC | 64 |")]
    assert len(rows) == 1 and "x |" in rows[0]
    assert "| in the server, 100/s |" in result.stdout


@pytest.mark.slow
@pytest.mark.integration
def test_sync_and_freshness_benches_run(bench):
    printed = bench("sync_bench", "--rows", 20000, "--touched", 500, "--repeats", 2)
    assert "push size" in printed and "| sync push:" in printed
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "bench", "freshness_bench.py"), "--probes", "3",
         "--intervals", "1", "--probe-every", "0.5"],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    row = [line for line in result.stdout.splitlines() if line.startswith("| 1 s |")]
    assert len(row) == 1 and "3/3" in row[0]


@pytest.mark.slow
@pytest.mark.integration
def test_ps_bench_one_configuration_runs():
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "bench", "ps_bench.py"), "--one", "ps=2,workers=1",
         "--steps", "3", "--batch", "64"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])
    assert row["config"] == "ps=2,workers=1" and row["examples_per_sec"] > 0
    assert row["loopback_bytes_per_step"] > 0


@pytest.mark.slow
def test_peers_bench_runs_without_the_peer_virtualenv(bench, capsys):
    """Ours against the dense limit (TFRA needs `make bench-peers`' own
    virtualenv, which the test suite does not build)."""
    printed = bench("peers_bench", "--systems", "ours,gather", "--keys", 20000, "--batch", 4096,
                    "--repeats", 2, "--rounds", 1)
    rows = {line.split("|")[1].strip(): line for line in printed.splitlines()
            if line.startswith("| ") and "---" not in line}
    assert rows["lookup, present ids"].count("x (") == 1  # a ratio against dense only
    assert float(rows["Adagrad apply (rows)"].split("|")[2]) > 0
    with pytest.raises(SystemExit) as exit_info:
        bench("peers_bench", "--systems", "ours,hbm")
    assert exit_info.value.code == 2 and "unknown systems ['hbm']" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("op", ["lookup", "gather", "insert_reused", "assign_reused", "scatter",
                                "adagrad"])
def test_table_profile_loop_runs(op, bench):
    printed = bench("table_profile", "--op", op, "--keys", 20000, "--batch", 4096,
                    "--seconds", 0.5)
    assert printed.startswith(f"{op}: ") and " M ids/s " in printed


@pytest.mark.slow
@pytest.mark.parametrize("comparison,ours,dense", [("lookup_vs_gather", "lookup", "gather"),
                                                  ("insert_vs_scatter", "insert_reused", "scatter")])
def test_table_profile_compares_with_the_dense_limit_in_one_process(comparison, ours, dense,
                                                                    bench):
    printed = bench("table_profile", "--op", comparison, "--keys", 20000, "--batch", 4096,
                    "--seconds", 1.2, "--window", 0.2)
    lines = printed.splitlines()
    assert lines[0].startswith(f"| window | {ours}, M ids/s | ")
    windows = [line.split("|")[1:5] for line in lines if line.startswith("| ") and "window" not in line]
    assert len(windows) == 3  # 1.2 s in windows of 0.2 s, two ops each
    for _, ours_rate, dense_rate, ratio in windows:
        assert float(ours_rate) > 0 and float(dense_rate) > 0
        assert abs(float(ratio.strip().rstrip("x")) - float(ours_rate) / float(dense_rate)) < 0.02
    assert lines[-1].startswith(f"median {ours} / {dense}: ") and lines[-1].endswith("x")


@pytest.mark.slow
@pytest.mark.integration
def test_row_limit_measures_every_kind_and_refuses_bad_flags():
    build = subprocess.run(["make", "-s", "build/row_limit"], cwd=REPO, capture_output=True,
                           text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    binary = os.path.join(REPO, "build", "row_limit")
    result = subprocess.run([binary, "--rows", "20000", "--batch", "4096", "--seconds", "0.05",
                             "--threads", "2"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [line.split("|")[1:4] for line in result.stdout.splitlines()[2:]]
    assert [(name.strip(), int(threads)) for name, threads, _ in rows] == [
        (name, threads)
        for name in ("read embedding (lookup)", "write new row (insert)",
                     "update row (optimizer apply)")
        for threads in (1, 2)]
    assert all(float(rate) > 0 for _, _, rate in rows)
    for flags, message in ((["--rows", "0"], "need --rows"), (["--bogus", "1"], "unknown flag"),
                           (["--dim"], "needs a value")):
        bad = subprocess.run([binary, *flags], capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and message in bad.stderr


@pytest.mark.slow
def test_scale_bench_runs(tmp_path, bench):
    printed = bench("scale_bench", "--rows", 200_000, "--batch", 16384, "--band-rows", 100_000,
                    "--dir", tmp_path / "scale")
    bands = [line for line in printed.splitlines() if line.startswith("| 0.1M")
             or line.startswith("| 0.2M")]
    assert len(bands) == 2
    assert "reader (1,024 present ids per lookup" in printed
    assert "| full save (" in printed and "| restore (read + import) |" in printed
    assert not (tmp_path / "scale").exists()   # the bench cleans up its save
