"""Traffic replay of MovieLens ratings, then the joiner over it, through the
command line."""

import json
import os
import subprocess
import sys

import pytest

from monolith_tf.streaming.embedded_log import EmbeddedLog
from monolith_tf.streaming.records import decode_action, decode_feature

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RATINGS = [(1, 10, 5, 100), (2, 10, 3, 50), (1, 11, 2, 300), (3, 12, 4, 200), (2, 13, 1, 400),
           (3, 10, 5, 250)]


def cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-m", "monolith_tf", *args], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.integration
def test_replay_then_join(tmp_path):
    data = tmp_path / "u.data"
    data.write_text("".join(f"{u}\t{m}\t{r}\t{t}\n" for u, m, r, t in RATINGS))
    log_dir = str(tmp_path / "log")
    counts = cli("replay", "--data", str(data), "--log", log_dir, "--create-topics", "2",
                 "--negatives", "3", "--max-action-delay", "5")
    likes = sum(1 for _, _, r, _ in RATINGS if r >= 4)
    assert counts["ratings"] == 6 and counts["actions"] == 6 + likes
    log = EmbeddedLog(log_dir)
    consumer = log.consumer("check", ["features", "actions"])
    records = consumer.poll(max_records=1000, timeout=1)
    features = [decode_feature(r.value) for r in records if r.topic == "features"]
    actions = [decode_action(r.value) for r in records if r.topic == "actions"]
    assert len(features) == counts["impressions"] and len(actions) == counts["actions"]
    negatives = [f for f in features if f.request_id.endswith(b"-n")]
    # A negative shows a movie the user had not rated by then.
    assert not [f for f in negatives for u, m, _, t in RATINGS
                if (u, m) == (f.user_id, f.item_id) and t <= f.event_time]
    assert {a.action for a in actions} == {"rating", "like"}
    assert all(0 <= a.event_time - int(a.request_id.split(b"-")[2]) <= 5 for a in actions)

    log.create_topic("examples", 2)
    log.create_topic("dead_letter", 1)
    joined = cli("join", "--log", log_dir, "--state-dir", str(tmp_path / "state"),
                 "--actions", "rating,like", "--window", "60", "--allowed-lateness", "0",
                 "--idle-timeout", "1", "--close-at-end")
    assert joined["positives"] == 6
    assert joined["negatives_kept"] == len(negatives)
    assert joined["emitted"] == 6 + len(negatives)


def test_replay_paces_event_time_by_the_speedup(tmp_path):
    import time

    from monolith_tf.streaming.replay import replay

    data = tmp_path / "u.data"
    data.write_text("1\t10\t5\t1000\n2\t11\t3\t1150\n")   # 150 s of event time
    log = EmbeddedLog(str(tmp_path / "log"))
    log.create_topic("features")
    log.create_topic("actions")
    start = time.monotonic()
    counts = replay(str(data), log, speedup=100, negatives=0)
    assert counts["ratings"] == 2 and time.monotonic() - start >= 1.4  # 150 s / 100
