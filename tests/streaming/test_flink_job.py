"""The PyFlink job (flink/joiner_job.py, in its own virtualenv made by
`make flink-venv`) joins the same logs as the embedded joiner, with the same
output."""

import json
import os
import subprocess

import pytest

from monolith_tf.streaming.joiner import Joiner, JoinerConfig
from monolith_tf.streaming.embedded_log import EmbeddedLog

from joiner_data import ACTIONS, LATENESS, WINDOW, random_logs, reference
from test_joiner import produce, read_examples

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLINK_PYTHON = os.environ.get("MONOLITH_FLINK_PYTHON",
                              os.path.join(REPO, ".venv-flink", "bin", "python"))


@pytest.mark.slow
def test_flink_job_output_equals_the_embedded_joiners(tmp_path):
    assert os.path.exists(FLINK_PYTHON), "run `make flink-venv` (make test does)"
    features, actions, arrivals = random_logs(n=400, seed=7)
    negative_rate = 0.5

    log = EmbeddedLog(str(tmp_path / "log"))
    produce(log, arrivals, garbage=False)
    joiner = Joiner(log, JoinerConfig(ACTIONS, window=WINDOW, allowed_lateness=LATENESS,
                                      negative_rate=negative_rate), str(tmp_path / "state"))
    joiner.run(idle_timeout=1.0)
    joiner.flush_all()
    ours = {(r.decode(), c, l, s) for r, c, l, s in read_examples(log)}

    # The same records, in the same arrival order, as JSON lines for Flink.
    paths = {topic: tmp_path / f"{topic}.jsonl" for topic in ("features", "actions")}
    with open(paths["features"], "w") as f_out, open(paths["actions"], "w") as a_out:
        for topic, record in arrivals:
            if topic == "features":
                f_out.write(json.dumps({"request_id": record.request_id.decode(),
                                        "user_id": record.user_id, "item_id": record.item_id,
                                        "event_time": record.event_time}) + "\n")
            else:
                a_out.write(json.dumps({"request_id": record.request_id.decode(),
                                        "action": record.action, "value": record.value,
                                        "event_time": record.event_time}) + "\n")
    output = tmp_path / "flink.jsonl"
    result = subprocess.run(
        [FLINK_PYTHON, os.path.join(REPO, "flink", "joiner_job.py"), "--features",
         str(paths["features"]), "--actions", str(paths["actions"]), "--output", str(output),
         "--action-types", ",".join(ACTIONS), "--window", str(WINDOW), "--lateness",
         str(LATENESS), "--negative-rate", str(negative_rate)],
        capture_output=True, text=True, cwd=str(tmp_path), timeout=600,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    flink = {(r["request_id"], r["label/click"], r["label/like"], round(r["sample_rate"], 6))
             for r in rows}
    assert len(rows) == len(flink)
    assert flink == ours
    expected = {(r.decode(), c, l, round(s, 6))
                for r, c, l, s in reference(features, actions, negative_rate)}
    assert flink == expected
