"""examples/online_quickstart.py (run by `make demo`) end to end, small."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_online_quickstart_runs(tmp_path):
    data = tmp_path / "u.data"
    with open(data, "w") as f:
        for i in range(3000):
            f.write(f"{i % 97 + 1}\t{(i * 7) % 131 + 1}\t{1 + (i * 13) % 5}\t{10_000 + 30 * i}\n")
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "examples", "online_quickstart.py"), "--data",
         str(data), "--dir", str(tmp_path / "online")],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("1. replayed 3,000 ratings") for line in lines)
    assert any(line.startswith("4. held-out AUC") for line in lines)
    assert os.path.exists(tmp_path / "online" / "serving" / "saved_model.pb")
