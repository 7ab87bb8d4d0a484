"""The log interface, run against each backend by one fixture: topics,
partitioning, ordering, consumer groups and committed offsets, several
processes at once, crashes, bad input."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from monolith_tf.streaming import Consumer, EmbeddedLog, Log, LogError, Producer, open_log

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def drain(consumer, expected, timeout=10.0):
    records = []
    while len(records) < expected:
        batch = consumer.poll(max_records=expected - len(records), timeout=timeout)
        if not batch:
            break
        records.extend(batch)
    return records


def test_every_backend_implements_the_declared_interface(log):
    """Each backend provides every method of the Log, Producer and Consumer
    protocols, with the protocol's parameter names."""
    import inspect

    log.create_topic("interface", partitions=2)
    producer, consumer = log.producer(), log.consumer("g", ["interface"])
    for instance, protocol in ((log, Log), (producer, Producer), (consumer, Consumer)):
        assert isinstance(instance, protocol), (type(instance).__name__, protocol.__name__)
        for name, member in vars(protocol).items():
            if name.startswith("_") or not callable(member):
                continue
            expected = list(inspect.signature(member).parameters)[1:]
            got = list(inspect.signature(getattr(instance, name)).parameters)
            assert got == expected, (type(instance).__name__, name)
    producer.close()
    consumer.close()


def test_keyed_records_keep_order_per_partition(log):
    log.create_topic("events", partitions=3)
    producer = log.producer()
    for i in range(300):
        producer.produce("events", f"v{i}".encode(), key=f"k{i % 7}".encode(),
                         timestamp_ms=1_000_000 + i)
    producer.flush()
    consumer = log.consumer("g", ["events"])
    records = drain(consumer, 300)
    assert len(records) == 300
    by_key = {}
    for record in records:
        by_key.setdefault(record.key, []).append(int(record.value[1:]))
        assert record.timestamp_ms == 1_000_000 + int(record.value[1:])
    for key, values in by_key.items():
        assert values == sorted(values)
        assert len({r.partition for r in records if r.key == key}) == 1
    for partition in range(3):
        offsets = [r.offset for r in records if r.partition == partition]
        assert offsets == list(range(len(offsets)))


def test_tombstones_keep_their_key_and_read_back_as_none(log):
    log.create_topic("compacted", partitions=1)
    producer = log.producer()
    producer.produce("compacted", b"v1", key=b"k")
    producer.produce("compacted", None, key=b"k")         # a tombstone
    producer.produce("compacted", b"", key=b"empty")      # an empty value is not one
    producer.produce("compacted", None)                   # neither key nor value
    producer.flush()
    records = drain(log.consumer("g", ["compacted"]), 4)
    assert [(r.key, r.value) for r in records] == [(b"k", b"v1"), (b"k", None),
                                                   (b"empty", b""), (None, None)]
    assert [r.offset for r in records] == [0, 1, 2, 3]
    with pytest.raises(LogError, match="bytes or None"):
        producer.produce("compacted", "text")


def test_committed_offsets_resume_a_group_and_other_groups_are_independent(log):
    log.create_topic("t", partitions=2)
    producer = log.producer()
    for i in range(40):
        producer.produce("t", str(i).encode())
    producer.flush()
    first = log.consumer("g", ["t"])
    seen = drain(first, 25)
    first.commit()
    extra = drain(first, 5)   # returned but not committed: read again later
    first.close()
    again = log.consumer("g", ["t"])
    rest = drain(again, 15)
    values = sorted(int(r.value) for r in seen + rest)
    assert values == list(range(40))
    assert {r.value for r in extra} <= {r.value for r in rest}
    assert sum(again.committed().values()) == 25
    other = log.consumer("other", ["t"])
    assert len(drain(other, 40)) == 40


def test_unknown_topic_and_bad_input_are_clear_errors(log):
    with pytest.raises(LogError, match="unknown topic"):
        log.producer().produce("missing", b"x")
    with pytest.raises(LogError, match="unknown topic"):
        log.consumer("g", ["missing"])
    log.create_topic("t", partitions=2)
    with pytest.raises(LogError, match="exists with 2 partitions"):
        log.create_topic("t", partitions=3)
    with pytest.raises(LogError, match="value must be bytes"):
        log.producer().produce("t", "text")
    with pytest.raises(LogError, match="partition 5 out of range"):
        log.producer().produce("t", b"x", partition=5)
    with pytest.raises(LogError, match="topic name"):
        log.create_topic("bad/name")


PRODUCER = textwrap.dedent("""
    import sys
    from monolith_tf.streaming import open_log
    log = open_log({"path": sys.argv[1]})
    producer = log.producer()
    for i in range(int(sys.argv[3])):
        producer.produce("t", f"{sys.argv[2]}-{i}".encode(), key=sys.argv[2].encode())
    producer.flush()
""")


@pytest.mark.integration
def test_several_producer_processes_append_without_loss(tmp_path):
    path = str(tmp_path / "log")
    log = EmbeddedLog(path)
    log.create_topic("t", partitions=2)
    env = dict(os.environ, PYTHONPATH=REPO)
    processes = [subprocess.Popen([sys.executable, "-c", PRODUCER, path, f"p{n}", "500"],
                                  env=env) for n in range(4)]
    for process in processes:
        assert process.wait(timeout=120) == 0
    records = drain(log.consumer("g", ["t"]), 2000)
    assert len(records) == 2000
    for n in range(4):
        mine = [int(r.value.split(b"-")[1]) for r in records if r.key == f"p{n}".encode()]
        assert mine == list(range(500))  # one key, one partition, in order


def test_consumer_group_members_split_partitions(tmp_path):
    log = EmbeddedLog(str(tmp_path / "log"))
    log.create_topic("t", partitions=4)
    producer = log.producer()
    for i in range(100):
        producer.produce("t", str(i).encode())
    members = [log.consumer("g", ["t"], assignment=(m, 2)) for m in range(2)]
    assert [m.assignment() for m in members] == [[("t", 0), ("t", 2)], [("t", 1), ("t", 3)]]
    values = [int(r.value) for m in members for r in drain(m, 50)]
    assert sorted(values) == list(range(100))


def test_a_frame_torn_by_a_crash_is_cut_off_and_readers_wait_at_it(tmp_path):
    log = EmbeddedLog(str(tmp_path / "log"))
    log.create_topic("t")
    producer = log.producer()
    producer.produce("t", b"whole")
    producer.flush()
    file = os.path.join(log.path, "topics", "t", "0.log")
    with open(file, "ab") as f:   # what a producer killed mid-write leaves
        f.write(b"MTLR\x00\x00\x00\x00\x10\x00\x00\x00part")
    consumer = log.consumer("g", ["t"])
    assert [r.value for r in consumer.poll(timeout=0.2)] == [b"whole"]
    assert consumer.poll(timeout=0.2) == []
    log.producer().produce("t", b"after")
    assert [r.value for r in consumer.poll(timeout=1)] == [b"after"]
    assert log.end_offsets("t") == {0: 2}


@pytest.mark.integration
def test_producer_killed_mid_stream_loses_only_unflushed_records(tmp_path):
    path = str(tmp_path / "log")
    log = EmbeddedLog(path)
    log.create_topic("t")
    script = textwrap.dedent("""
        import os, signal, sys
        from monolith_tf.streaming import open_log
        producer = open_log({"path": sys.argv[1]}).producer()
        for i in range(1000):
            producer.produce("t", str(i).encode())
            if i == 499:
                producer.flush()
                print("flushed", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", script, path], capture_output=True,
                            text=True, env=dict(os.environ, PYTHONPATH=REPO), timeout=120)
    assert result.returncode == -signal.SIGKILL and "flushed" in result.stdout
    values = [int(r.value) for r in drain(log.consumer("g", ["t"]), 1000, timeout=1)]
    # Everything flushed survives, in order; later records survive in the page cache.
    assert values[:500] == list(range(500)) and values == list(range(len(values)))


@pytest.mark.integration
def test_unreachable_broker_is_an_error_after_a_bounded_wait():
    import time

    log = open_log({"bootstrap.servers": "127.0.0.1:1", "monolith.timeout_s": 2})
    start = time.monotonic()
    with pytest.raises(LogError, match="cannot reach Kafka"):
        log.create_topic("t", 1)
    assert time.monotonic() - start < 30


def test_fsync_policy_and_config_errors(tmp_path):
    with pytest.raises(LogError, match="fsync must be one of"):
        open_log({"path": str(tmp_path), "fsync": "sometimes"})
    with pytest.raises(LogError, match="needs"):
        open_log({})
    always = open_log(str(tmp_path / "always"), fsync="always")
    always.create_topic("t")
    always.producer().produce("t", b"x")
    assert always.end_offsets("t") == {0: 1}
