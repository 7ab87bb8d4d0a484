"""Randomized feature/action logs and their expected join (a pandas
interval join), shared by the joiner and Flink job tests."""

import zlib

import numpy as np
import pandas as pd

from monolith_tf.streaming.records import ActionRecord, FeatureRecord

ACTIONS = ("click", "like")
WINDOW, LATENESS = 100, 40


def random_logs(n=300, seed=0):
    """Impressions every ~5 s; actions on 40% of them, some past the window;
    a few orphan actions; arrival order shuffled within the lateness."""
    rng = np.random.default_rng(seed)
    features, actions = [], []
    for i in range(n):
        t = 10_000 + 5 * i + int(rng.integers(0, 5))
        features.append(FeatureRecord(f"r{i}".encode(), int(rng.integers(1, 50)), 100 + i, t,
                                      sparse={"genres": [int(g) for g in rng.integers(0, 9, 2)]}))
        if rng.random() < 0.4:
            for _ in range(int(rng.integers(1, 3))):
                kind = ACTIONS[int(rng.integers(0, 2))]
                value = 1.0 if kind == "click" else float(rng.integers(1, 6))
                actions.append(ActionRecord(f"r{i}".encode(), kind, value,
                                            t + int(rng.integers(0, int(WINDOW * 1.3)))))
    for j in range(5):
        actions.append(ActionRecord(f"orphan{j}".encode(), "click", 1.0, 10_500 + j))
    arrivals = [(r.event_time + rng.uniform(0, LATENESS * 0.8), "features", r) for r in features]
    arrivals += [(r.event_time + rng.uniform(0, LATENESS * 0.8), "actions", r) for r in actions]
    arrivals.sort(key=lambda item: item[0])
    return features, actions, [(topic, record) for _, topic, record in arrivals]


def reference_keeps_negative(request_id, negative_rate):
    """The documented sampling rule, written here on its own: a negative is
    kept when CRC-32 of its request id, as a fraction of 2^32, is below the
    rate."""
    return zlib.crc32(request_id) / float(1 << 32) < negative_rate


def reference(features, actions, negative_rate, window=WINDOW):
    """Expected examples as a set of (request id, click, like, sample rate)."""
    f = pd.DataFrame({"request_id": [r.request_id for r in features],
                      "t": [r.event_time for r in features]})
    a = pd.DataFrame({"request_id": [r.request_id for r in actions],
                      "action": [r.action for r in actions],
                      "value": [r.value for r in actions],
                      "ta": [r.event_time for r in actions]})
    joined = f.merge(a, on="request_id")
    joined = joined[(joined.ta >= joined.t) & (joined.ta <= joined.t + window)]
    labels = joined.groupby(["request_id", "action"]).value.max().unstack(fill_value=0.0)
    expected = {(rid, float(row.get("click", 0.0)), float(row.get("like", 0.0)), 1.0)
                for rid, row in labels.iterrows()}
    expected |= {(rid, 0.0, 0.0, negative_rate) for rid in f.request_id
                 if rid not in labels.index and reference_keeps_negative(rid, negative_rate)}
    return expected
