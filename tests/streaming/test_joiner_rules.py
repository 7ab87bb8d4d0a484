"""The joiner's rules one at a time (module doc of monolith_tf.streaming.joiner):
a quiet partition stops holding the watermark, windows close on a timer when
input stops, tombstones are dead-lettered, waiting actions expire one by one,
repeated impressions are dropped within the dedupe horizon."""

import threading
import time

import pytest

from monolith_tf.streaming.joiner import Joiner, JoinerConfig
from monolith_tf.streaming.records import (ActionRecord, FeatureRecord, encode_action,
                                           encode_feature)

from joiner_data import ACTIONS, reference
from test_joiner import read_examples

WINDOW, LATENESS, IDLE = 100, 10, 1.0


def create_topics(log, partitions):
    for topic in ("features", "actions", "examples", "dead_letter"):
        log.create_topic(topic, partitions=partitions)


def send(producer, record, partition=0):
    if isinstance(record, FeatureRecord):
        producer.produce("features", encode_feature(record), key=record.request_id,
                         partition=partition)
    else:
        producer.produce("actions", encode_action(record), key=record.request_id,
                         partition=partition)


def impression(request_id, time_s, partition_hint=0):
    return FeatureRecord(request_id, 1 + partition_hint, 7, time_s)


def run_until_read(joiner, features, actions=0, dead_letters=0, timeout=30.0):
    """Runs the joiner until its counters show this many records read in
    all (a fixed idle time could end before a loaded broker delivers)."""
    def done():
        c = joiner.counters
        return (c["features"] >= features and c["actions"] >= actions
                and c["dead_letters"] >= dead_letters)

    joiner.run(should_stop=done, max_seconds=timeout)
    assert done(), joiner.counters


def emitted_ids(log):
    return [rid for rid, *_ in read_examples(log)]


def test_a_quiet_partition_stops_holding_the_watermark(log, tmp_path):
    create_topics(log, partitions=2)
    producer = log.producer()
    features = [impression(b"quiet", 1000, 1), impression(b"busy-0", 1000)]
    actions = [ActionRecord(b"quiet", "click", 1.0, 1010)]
    send(producer, features[0], partition=1)
    send(producer, actions[0], partition=1)
    send(producer, features[1], partition=0)
    producer.flush()
    config = JoinerConfig(ACTIONS, window=WINDOW, allowed_lateness=LATENESS,
                          partition_idle_timeout=IDLE)
    joiner = Joiner(log, config, str(tmp_path / "state"), checkpoint_every=0.5)

    stop = threading.Event()

    def busy_partition():  # partition 0 advances 20 s of event time every 0.1 s
        traffic = log.producer()
        t, i = 1000, 1
        while not stop.is_set() and i < 400:
            t += 20
            record = impression(f"busy-{i}".encode(), t)
            features.append(record)
            send(traffic, record, partition=0)
            traffic.flush()
            i += 1
            time.sleep(0.1)

    thread = threading.Thread(target=busy_partition)
    thread.start()
    started = time.monotonic()
    try:
        joiner.run(should_stop=lambda: b"quiet" in joiner.closed
                   or time.monotonic() - started > 20)
    finally:
        stop.set()
        thread.join()
    took = time.monotonic() - started
    # Closed by the watermark of the busy partition once the quiet one went
    # idle: within the idle time (plus polling), not at the end of the input.
    assert b"quiet" in joiner.closed and took < IDLE + 5.0, took
    assert (b"quiet", 1.0, 0.0, 1.0) in read_examples(log)
    run_until_read(joiner, features=len(features), actions=1)  # the busy partition's rest
    joiner.flush_all()
    got = read_examples(log)
    assert len(got) == len(set(got))
    assert set(got) == reference(features, actions, 1.0, window=WINDOW)


def test_windows_close_on_a_timer_when_input_stops(log, tmp_path):
    create_topics(log, partitions=2)
    producer = log.producer()
    send(producer, impression(b"a", 1000), partition=0)
    send(producer, impression(b"late-window", 1500), partition=0)
    send(producer, impression(b"c", 1050), partition=1)
    producer.flush()
    config = JoinerConfig(ACTIONS, window=WINDOW, allowed_lateness=LATENESS,
                          partition_idle_timeout=IDLE)
    joiner = Joiner(log, config, str(tmp_path / "state"), checkpoint_every=0.5)
    run_until_read(joiner, features=3)
    # Read everything: partition 1 (1050) holds the watermark at 1040, so no
    # window (a ends 1100) has closed yet.
    assert emitted_ids(log) == [] and len(joiner.pending) == 3
    # No more input: once both partitions are idle the newest time (1500)
    # counts, and the timer closes the windows that ended before 1490.
    joiner.run(max_seconds=IDLE + 1.5)
    assert sorted(emitted_ids(log)) == [b"a", b"c"]
    assert list(joiner.pending) == [b"late-window"]
    assert joiner.watermark() == 1500 - LATENESS


def test_tombstones_are_dead_lettered_and_the_joiner_goes_on(log, tmp_path):
    create_topics(log, partitions=1)
    producer = log.producer()
    send(producer, impression(b"r1", 1000))
    producer.produce("actions", None, key=b"r1")           # a tombstone
    producer.produce("features", None)                     # one without a key
    send(producer, ActionRecord(b"r1", "like", 5.0, 1020))
    send(producer, impression(b"r2", 1300))
    producer.flush()
    config = JoinerConfig(ACTIONS, window=WINDOW, allowed_lateness=0)
    joiner = Joiner(log, config, str(tmp_path / "state"), checkpoint_every=0.5)
    run_until_read(joiner, features=2, actions=1, dead_letters=2)
    counters = joiner.counters
    assert counters["tombstones"] == 2 and counters["dead_letters"] == 2
    joiner.flush_all()
    assert sorted(read_examples(log)) == [(b"r1", 0.0, 5.0, 1.0), (b"r2", 0.0, 0.0, 1.0)]
    dead = log.consumer("dead-reader", ["dead_letter"])
    letters = dead.poll(max_records=10, timeout=5.0)
    dead.close()
    assert sorted((r.key or b"", r.value) for r in letters) == [(b"", b""), (b"r1", b"")]


def test_waiting_actions_expire_one_by_one(log, tmp_path):
    create_topics(log, partitions=1)
    config = JoinerConfig(ACTIONS, window=WINDOW, allowed_lateness=0)
    joiner = Joiner(log, config, str(tmp_path / "state"), checkpoint_every=0.5)
    producer = log.producer()
    send(producer, ActionRecord(b"r1", "click", 1.0, 100))   # expires at 200
    send(producer, ActionRecord(b"r1", "like", 4.0, 400))    # expires at 500
    send(producer, impression(b"x", 1000))
    producer.flush()
    run_until_read(joiner, features=1, actions=2)   # watermark: min(1000, 400) = 400
    assert joiner.counters["orphan_actions"] == 1
    assert [a.event_time for a, _ in joiner.waiting[b"r1"]] == [400]
    # The impression arrives late; its window [90, 190] held the expired click.
    send(producer, impression(b"r1", 90))
    producer.flush()
    run_until_read(joiner, features=2, actions=2)
    joiner.flush_all()
    assert sorted(read_examples(log)) == [(b"r1", 0.0, 0.0, 1.0), (b"x", 0.0, 0.0, 1.0)]


def test_a_repeated_impression_is_dropped_within_the_dedupe_horizon(log, tmp_path):
    create_topics(log, partitions=1)
    config = JoinerConfig(ACTIONS, window=WINDOW, allowed_lateness=0, dedupe_horizon=500)
    joiner = Joiner(log, config, str(tmp_path / "state"), checkpoint_every=0.5)
    producer = log.producer()

    def feed(*records, watermark_to=None):
        if watermark_to is not None:  # both topics' event time moves on
            records += (impression(f"w{watermark_to}".encode(), watermark_to),
                        ActionRecord(b"tick", "click", 1.0, watermark_to))
        for record in records:
            send(producer, record)
        producer.flush()
        c = joiner.counters
        run_until_read(joiner,
                       c["features"] + sum(isinstance(r, FeatureRecord) for r in records),
                       c["actions"] + sum(isinstance(r, ActionRecord) for r in records))

    feed(impression(b"r5", 1000), ActionRecord(b"r5", "click", 1.0, 1010),
         watermark_to=1300)                            # r5's window [1000, 1100] closes
    assert emitted_ids(log) == [b"r5"]
    feed(impression(b"r5", 1000))                      # repeated: remembered until 1600
    assert joiner.counters["duplicate_impressions"] == 1 and b"r5" not in joiner.pending
    feed(watermark_to=1700)                            # r5 forgotten
    assert b"r5" not in joiner.closed
    feed(impression(b"r5", 1650))                      # a new impression now
    joiner.flush_all()
    got = sorted(read_examples(log))
    assert [g for g in got if g[0] == b"r5"] == [(b"r5", 0.0, 0.0, 1.0), (b"r5", 1.0, 0.0, 1.0)]
    assert joiner.counters["duplicate_impressions"] == 1


def test_remembered_request_ids_are_bounded_by_max_pending(tmp_path):
    from monolith_tf.streaming.embedded_log import EmbeddedLog

    log = EmbeddedLog(str(tmp_path / "log"))
    create_topics(log, partitions=1)
    config = JoinerConfig(ACTIONS, window=WINDOW, allowed_lateness=0, max_pending=2)
    joiner = Joiner(log, config, str(tmp_path / "state"))
    producer = log.producer()
    for i in range(5):
        send(producer, impression(f"r{i}".encode(), 1000 + i))
    producer.flush()
    run_until_read(joiner, features=5)
    joiner.flush_all()
    assert sorted(joiner.closed) == [b"r3", b"r4"]  # the newest two


def test_the_dedupe_memory_survives_a_restart(tmp_path):
    from monolith_tf.streaming.embedded_log import EmbeddedLog

    log = EmbeddedLog(str(tmp_path / "log"))
    create_topics(log, partitions=1)
    config = JoinerConfig(ACTIONS, window=WINDOW, allowed_lateness=0)
    producer = log.producer()
    for record in (impression(b"r7", 1000), impression(b"w", 1300),
                   ActionRecord(b"tick", "click", 1.0, 1300)):
        send(producer, record)
    producer.flush()
    first = Joiner(log, config, str(tmp_path / "state"))
    run_until_read(first, features=2, actions=1)
    assert b"r7" in first.closed
    send(producer, impression(b"r7", 1000))
    producer.flush()
    second = Joiner(log, config, str(tmp_path / "state"))  # from the snapshot
    run_until_read(second, features=3)  # counters come back with the snapshot
    assert second.counters["duplicate_impressions"] == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"partition_idle_timeout": 0}, "partition_idle_timeout"),
    ({"dedupe_horizon": -1}, "dedupe_horizon"),
])
def test_bad_rule_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        JoinerConfig(ACTIONS, **kwargs)
