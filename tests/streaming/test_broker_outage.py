"""A Kafka broker outage (librdkafka's mock cluster taking its broker down
and up): producers and consumers stall and then continue, nothing is lost,
nothing duplicated (the producer is idempotent); an outage longer than the
log's timeout is a clear error."""

import threading
import time

import pytest

from monolith_tf.streaming import open_log
from monolith_tf.streaming.log import LogError
from monolith_tf.step_task import StepTask


@pytest.mark.slow
def test_outage_mid_stream_stalls_then_continues_without_loss(mock_broker):
    log = open_log(mock_broker.config(timeout_s=20))
    log.create_topic("events", 2)
    sent, got, stop = [], [], threading.Event()
    arrival_times = []

    def consume():
        consumer = log.consumer("outage", ["events"])
        while not stop.is_set():
            for record in consumer.poll(max_records=200, timeout=0.2):
                got.append(record.value)
                arrival_times.append(time.monotonic())
        consumer.close()

    reader = threading.Thread(target=consume)
    reader.start()
    producer = log.producer()
    started = time.monotonic()
    up_requested = []

    def bring_up():
        up_requested.append(time.monotonic())   # before the broker can deliver
        mock_broker.set_broker(1, True)

    for i in range(400):
        value = f"event {i}".encode()
        producer.produce("events", value, key=str(i % 7).encode())
        sent.append(value)
        if i == 150:
            mock_broker.set_broker(1, up=False)
        if i == 199:
            # Records 151..199 were all produced while the broker was down;
            # it comes back 4 s from now, while this flush waits for it.
            threading.Timer(4.0, bring_up).start()
        if i % 50 == 49:
            producer.flush()   # waits through the outage (timeout 20 s)
        time.sleep(0.005)
    producer.flush()
    deadline = time.monotonic() + 60
    while len(got) < len(sent) and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    reader.join(timeout=30)
    producer.close()
    assert sorted(got) == sorted(sent)            # nothing lost, nothing duplicated
    assert time.monotonic() - started > 4          # the outage was real: it took that long
    # Records produced while the broker was down reached the consumer only
    # after it was asked to come back: the stream stalled, then continued.
    arrived = dict(zip(got, arrival_times))
    during = [f"event {i}".encode() for i in range(151, 200)]
    assert min(arrived[value] for value in during) >= up_requested[0]


@pytest.mark.slow
def test_outage_longer_than_the_timeout_is_a_clear_error(mock_broker):
    log = open_log(mock_broker.config(timeout_s=2))
    log.create_topic("events", 1)
    producer = log.producer()
    producer.produce("events", b"before")
    producer.flush()
    mock_broker.set_broker(1, up=False)
    try:
        producer.produce("events", b"during")
        started = time.monotonic()
        with pytest.raises(LogError, match="not acknowledged by Kafka within 2 s|records failed"):
            producer.flush()
        assert time.monotonic() - started < 10
    finally:
        mock_broker.set_broker(1, up=True)


def _outage(mock_broker, seconds, events):
    """Takes the broker down now and back up after ``seconds``; appends the
    wall times of both to ``events``."""
    mock_broker.set_broker(1, up=False)
    events.append(("down", time.monotonic()))

    def up():
        mock_broker.set_broker(1, up=True)
        events.append(("up", time.monotonic()))

    timer = threading.Timer(seconds, up)
    timer.start()
    return timer


@pytest.mark.slow
def test_joiner_across_an_outage_emits_every_example_once(mock_broker, tmp_path):
    from joiner_data import ACTIONS, LATENESS, WINDOW, random_logs, reference
    from test_joiner import produce, read_examples

    from monolith_tf.streaming.joiner import Joiner, JoinerConfig

    log = open_log(mock_broker.config(timeout_s=20))
    features, actions, arrivals = random_logs(n=800, seed=11)
    half = len(arrivals) // 2
    produce(log, arrivals[:half], garbage=False)
    joiner = Joiner(log, JoinerConfig(ACTIONS, window=WINDOW, allowed_lateness=LATENESS,
                                      negative_rate=1.0),
                    str(tmp_path / "state"), checkpoint_every=0.3)
    stop = threading.Event()
    runner = threading.Thread(target=joiner.run, kwargs={"should_stop": stop.is_set})
    runner.start()
    events = []
    try:
        time.sleep(1.0)
        timer = _outage(mock_broker, 4.0, events)
        # The second half is produced while the broker is down: the
        # producer's flush waits for it (timeout 20 s), the joiner stalls.
        produce(log, arrivals[half:], garbage=False, create=False)
        timer.join()
        deadline = time.monotonic() + 60
        while joiner.counters["features"] + joiner.counters["actions"] < len(arrivals) \
                and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        runner.join(timeout=60)
    assert [name for name, _ in events] == ["down", "up"]
    joiner.flush_all()
    got = read_examples(log)
    expected = {(r, c, l, round(s, 6)) for r, c, l, s in reference(features, actions, 1.0)}
    assert set(got) == expected
    assert len(got) == len(set(got))  # no restart, idempotent producer: no duplicates


@pytest.mark.slow
def test_worker_stream_across_an_outage_trains_every_example_once(mock_broker, tmp_path):
    import numpy as np
    import tensorflow as tf

    import monolith_tf as mt
    from monolith_tf.streaming.dataset import ExampleStream, joined_feature_spec
    from monolith_tf.streaming.records import FeatureRecord, encode_joined
    from monolith_tf.training import TrainingWorker

    log = open_log(mock_broker.config(timeout_s=20))
    log.create_topic("examples", 2)
    total = 64 * 40

    def produce(first, last):
        producer = log.producer()
        for i in range(first, last):
            feature = FeatureRecord(f"r{i}".encode(), i % 300, i % 50, 1000 + i)
            producer.produce("examples", encode_joined(feature, {"click": float(i % 3 == 0)},
                                                       1.0), key=feature.request_id)
        producer.close()  # flushes: waits out an outage (timeout 20 s)

    produce(0, total // 2)

    inputs = {name: tf.keras.Input(shape=(), dtype="int64", name=name)
              for name in ("user_id", "item_id", "timestamp")}
    rows = mt.layers.HashEmbeddingCollection({"user_id": {"dim": 4}, "item_id": {"dim": 4}},
                                             name="embeddings")(inputs)
    output = tf.keras.layers.Dense(1, activation="sigmoid")(
        tf.keras.layers.Concatenate()([rows["user_id"], rows["item_id"]]))
    model = tf.keras.Model(inputs, output)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    events = []

    second_half = threading.Thread(target=produce, args=(total // 2, total))

    class OutageAtStep(StepTask):
        """After step 10 takes the broker down for 4 s and produces the
        second half of the examples meanwhile: the stream runs dry of what
        it fetched, stalls, then continues when the broker is back."""

        def begin(self, worker):
            pass

        def after_step(self, worker):
            if worker.step == 10:
                self.timer = _outage(mock_broker, 4.0, events)
                second_half.start()

        def finish(self, worker):
            pass

    stream = ExampleStream(log, joined_feature_spec(["click"]), batch_size=64,
                           label="label/click", idle_timeout=15.0,
                           features=["user_id", "item_id", "timestamp"])
    worker = TrainingWorker(model, str(tmp_path / "run"), checkpoints=False, verbose=0,
                            tensorboard=False, tasks=[OutageAtStep()])
    started = time.monotonic()
    result = worker.train(stream)
    second_half.join(timeout=60)
    assert [name for name, _ in events] == ["down", "up"]
    assert result["examples"] == total, result     # nothing lost, nothing twice
    assert time.monotonic() - started > 4
    users = mt.layers.model_tables(model)["embeddings/user_id"]
    assert int(users.size()) == 300
    assert np.isfinite(result["logs"]["loss"])
