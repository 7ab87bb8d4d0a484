"""Online joiner throughput and memory, with the embedded log and with a
Kafka-protocol broker (librdkafka's mock cluster in its own process).

Synthetic traffic: --requests impressions at --rate requests per second of
event time (so the window holds rate x window impressions), 30% of them
with 1-2 actions up to 1.3 windows later, arrival shuffled within the
allowed lateness; 8 partitions per topic (the mock broker drops messages
past about 5 MiB per partition; the default size stays under that). The
logs are filled first (not timed); then the joiner, in a fresh process,
consumes everything and emits
the examples (checkpointing every 5 s as in production). Events/s counts
input records (impressions + actions) per second of wall time; peak memory
is the joiner process's resident set above its start, sampled every ms.

    PYTHONPATH=. .venv/bin/python bench/joiner_bench.py [--requests 100000 --rate 100 --window 600]
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workers  # noqa: E402

TOPICS = ("features", "actions", "examples", "dead_letter")
PARTITIONS = 8


def traffic(requests, rate, window, lateness, seed=0):
    """(topic, record) pairs in arrival order."""
    import numpy as np

    from monolith_tf.streaming.records import ActionRecord, FeatureRecord

    rng = np.random.default_rng(seed)
    times = 1_000_000 + (np.arange(requests) / rate).astype(np.int64)
    users = rng.integers(1, 100_000, requests)
    items = rng.integers(1, 20_000, requests)
    arrivals = []
    for i in range(requests):
        request_id = f"r{i}".encode()
        t = int(times[i])
        arrivals.append((t + rng.uniform(0, lateness * 0.8), "features",
                         FeatureRecord(request_id, int(users[i]), int(items[i]), t)))
        if rng.random() < 0.3:
            for _ in range(int(rng.integers(1, 3))):
                at = t + int(rng.integers(0, int(window * 1.3) + 1))
                arrivals.append((at + rng.uniform(0, lateness * 0.8), "actions",
                                 ActionRecord(request_id, "click", 1.0, at)))
    arrivals.sort(key=lambda item: item[0])
    return [(topic, record) for _, topic, record in arrivals]


def fill(log, arrivals):
    from monolith_tf.streaming.records import encode_action, encode_feature

    for topic in TOPICS:
        log.create_topic(topic, PARTITIONS)
    producer = log.producer()
    for topic, record in arrivals:
        data = encode_feature(record) if topic == "features" else encode_action(record)
        producer.produce(topic, data, key=record.request_id)
    producer.flush()


def worker(config, args, state_dir):
    from monolith_tf.streaming.joiner import Joiner, JoinerConfig
    from monolith_tf.streaming import open_log

    log = open_log(config)
    joiner = Joiner(log, JoinerConfig(["click"], window=args.window,
                                      allowed_lateness=args.lateness), state_dir)
    with workers.PeakSampler() as memory:
        start = time.perf_counter()
        counters = joiner.run(idle_timeout=2.0)
        seconds = time.perf_counter() - start - 2.0  # the idle wait at the end
        joiner.flush_all()
    workers.emit({"events": counters["features"] + counters["actions"], "seconds": seconds,
                  "emitted": joiner.counters["emitted"],
                  "peak_extra": memory.peak - memory.start_rss})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=100.0, help="requests per event second")
    parser.add_argument("--window", type=int, default=600)
    parser.add_argument("--lateness", type=int, default=60)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        import json

        worker(json.loads(args.config), args, args.state)
        return
    import json

    from monolith_tf.streaming import open_log
    from tools.mock_kafka import MockBrokerProcess

    arrivals = traffic(args.requests, args.rate, args.window, args.lateness)
    rows = []
    for backend in ("embedded", "kafka (mock broker)"):
        scratch = tempfile.mkdtemp(prefix="joinbench-", dir=os.environ.get("TMPDIR"))
        broker = None
        try:
            if backend == "embedded":
                config = {"path": os.path.join(scratch, "log")}
                fill(open_log(config), arrivals)
            else:
                broker = MockBrokerProcess()
                fill(open_log(broker.config()), arrivals)
                config = {"bootstrap.servers": broker.bootstrap_servers}
            result = workers.run(__file__, [
                "--worker", "1", "--config", json.dumps(config), "--state",
                os.path.join(scratch, "state"), "--window", args.window, "--lateness",
                args.lateness], backend)
            rows.append((backend, result))
        finally:
            if broker is not None:
                broker.stop()
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"{args.requests:,} requests at {args.rate:g}/s of event time, window {args.window} s "
          f"(~{args.rate * args.window:,.0f} open impressions), lateness {args.lateness} s, "
          f"{PARTITIONS} partitions\n")
    print("| log | input events | events/s | examples emitted | peak extra memory |")
    print("|---|---|---|---|---|")
    for backend, r in rows:
        print(f"| {backend} | {r['events']:,} | {r['events'] / r['seconds']:,.0f} | "
              f"{r['emitted']:,} | {r['peak_extra'] / 1e6:.0f} MB |")


if __name__ == "__main__":
    main()
