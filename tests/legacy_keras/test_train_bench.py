"""The training bench end to end on tiny sizes. Its workers run under
tf_keras (the stronger dense baseline applies sparse gradients there), so
its smoke test lives here, in the tf_keras run, where they run in this
process (``BENCH_IN_PROCESS=1``); its figures are checked in
bench/RESULTS.md, not here."""

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The bench's workers need tf_keras: `make test` runs this module under tf_keras only.
pytestmark = pytest.mark.keras_flavours


@pytest.mark.slow
def test_train_bench_runs(monkeypatch, capsys):
    assert os.environ.get("TF_USE_LEGACY_KERAS") == "1"
    monkeypatch.setenv("BENCH_IN_PROCESS", "1")
    monkeypatch.syspath_prepend(os.path.join(REPO, "bench"))
    import train_bench

    train_bench.main(["--steps", "4", "--mlps", "8,8"])
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 8,8 |")]
    assert len(row) == 1 and row[0].count("x |") == 3
