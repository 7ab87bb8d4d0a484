"""The soak bench for one minute (``make bench-soak`` runs it for ten):
producer -> joiner -> worker with expiry and checkpoints, in a fresh
process; memory, table rows and model files must stay flat after warm-up."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_one_minute_soak_stays_flat(tmp_path):
    out = tmp_path / "soak.json"
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "bench", "soak.py"), "--seconds", "60",
         "--dir", str(tmp_path / "run"), "--json", str(out)],
        capture_output=True, text=True, env=env, timeout=240)
    report = json.loads(out.read_text())
    summary, counters = report["summary"], report["counters"]
    assert result.returncode == 0, json.dumps(summary, indent=1) + result.stderr[-2000:]
    assert all(series["flat"] for series in summary.values()), summary
    # It really ran online: examples trained, rows expired, saves pruned.
    assert counters["steps"] > 100 and counters["examples"] > 25_000, counters
    assert counters["evicted"] > 1000, counters
    assert len(report["samples"]) >= 20
    assert summary["model_files"]["mean"] > 10
