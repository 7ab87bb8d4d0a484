"""The online join as an Apache Flink job, for users who outgrow one
process: the same semantics as monolith_tf.streaming.joiner (impression
mode), written with PyFlink's DataStream API. Both inputs are keyed by
request id and connected; a keyed co-process function holds each impression
and its labels, keeps actions that arrive before their impression, and acts
on event-time timers. Its rules, in the joiner's words (a partition here is
an input source's split; Flink's watermark strategy with
``for_bounded_out_of_orderness(lateness)`` and ``with_idleness`` implements
rule 2, timers rules 3, 5 and 6):

1. An action joins an impression of the same request id when its event
   time lies in [impression time, impression time + window].
2. Each input partition's event time is the newest event time read from it.
   A partition is idle once it has had nothing to read for
   ``partition_idle_timeout`` seconds of wall time; an idle partition does
   not hold the watermark. The watermark is the smallest event time over the
   partitions that are not idle, minus ``allowed_lateness``; when every
   partition is idle, the newest event time over all of them, minus
   ``allowed_lateness``. A partition with unread records whose event time is
   not known yet holds the watermark back.
3. An impression's window closes when the watermark passes its end
   (impression time + window).
4. At the close, one example per impression, its labels the largest value
   per action type (0 for types that did not occur). An impression whose
   window closes with no action is a negative, kept when
   crc32(request id) / 2^32 < ``negative_rate`` and recorded with that rate
   as ``sample_rate``.
5. An action that arrives before its impression waits for it; each waiting
   action is dropped (an orphan) once the watermark passes its own event
   time + window.
6. A repeated impression is dropped: one whose request id is still
   pending, or was closed and the watermark has not yet passed that
   window's end + ``dedupe_horizon``.
7. A record later than the allowed lateness is joined with whatever is
   still held.

Runs in its own virtualenv (`make flink-venv`), with no TensorFlow:

    .venv-flink/bin/python flink/joiner_job.py --features F.jsonl --actions A.jsonl \\
        --output OUT.jsonl --action-types click,like --window 600 --lateness 60 \\
        [--partition-idle-timeout 30] [--dedupe-horizon 3600]

Inputs here are JSON-lines files (one record per line: feature records
``{"request_id", "user_id", "item_id", "event_time"}``, action records
``{"request_id", "action", "value", "event_time"}``), read in file order as
bounded streams. In production, replace the two ``from_collection`` sources
with Flink's Kafka connector (``flink-sql-connector-kafka`` jar added with
``env.add_jars``; ``KafkaSource.builder()...`` with a deserializer of the
tf.train.Example records) and the output with a ``KafkaSink``: that jar
cannot be downloaded in this project's build environment, so it is not
exercised here.
"""

import argparse
import json
import sys
import zlib

from pyflink.common import Duration, Types, WatermarkStrategy
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import KeyedCoProcessFunction, StreamExecutionEnvironment
from pyflink.datastream.state import ListStateDescriptor, MapStateDescriptor, ValueStateDescriptor



# Functions, not constants: a type used on the client caches a Java object,
# which cannot travel to the Python workers with the process function.
def feature_type():
    """(request_id, user_id, item_id, event_time)."""
    return Types.TUPLE([Types.STRING(), Types.LONG(), Types.LONG(), Types.LONG()])


def action_type():
    """(request_id, action, value, event_time)."""
    return Types.TUPLE([Types.STRING(), Types.STRING(), Types.FLOAT(), Types.LONG()])


def keep_negative(request_id, negative_rate):
    """The joiner's rule: crc32 of the request id (UTF-8) against the rate."""
    return zlib.crc32(request_id.encode()) / 2**32 < negative_rate


class EventTime(TimestampAssigner):
    def extract_timestamp(self, value, record_timestamp):
        return value[3] * 1000  # seconds -> Flink's milliseconds


class ImpressionJoin(KeyedCoProcessFunction):
    """Per request id: the impression, its labels, early actions, and how
    long a closed request id is remembered (rules in the module doc)."""

    def __init__(self, action_types, window, negative_rate, dedupe_horizon):
        self.action_types = list(action_types)
        self.window = window
        self.negative_rate = negative_rate
        self.dedupe_horizon = dedupe_horizon

    def open(self, runtime_context):
        self.feature = runtime_context.get_state(ValueStateDescriptor("feature", feature_type()))
        self.labels = runtime_context.get_map_state(
            MapStateDescriptor("labels", Types.STRING(), Types.FLOAT()))
        self.early = runtime_context.get_list_state(ListStateDescriptor("early", action_type()))
        # Event time (seconds) until which a closed request id is remembered.
        self.closed_until = runtime_context.get_state(
            ValueStateDescriptor("closed_until", Types.LONG()))

    def _join(self, feature, action):
        in_window = feature[3] <= action[3] <= feature[3] + self.window
        if in_window and action[1] in self.action_types:
            old = self.labels.get(action[1])
            self.labels.put(action[1], action[2] if old is None else max(old, action[2]))

    def process_element1(self, feature, ctx):
        if self.feature.value() is not None or self.closed_until.value() is not None:
            return  # rule 6: a repeated impression
        self.feature.update(feature)
        ctx.timer_service().register_event_time_timer((feature[3] + self.window) * 1000)
        for action in self.early.get():
            self._join(feature, action)
        self.early.clear()

    def process_element2(self, action, ctx):
        feature = self.feature.value()
        if feature is None:
            self.early.add(action)
            # Rule 5: this action's own expiry.
            ctx.timer_service().register_event_time_timer((action[3] + self.window) * 1000)
        else:
            self._join(feature, action)

    def on_timer(self, timestamp, ctx):
        feature = self.feature.value()
        if feature is not None and timestamp == (feature[3] + self.window) * 1000:
            yield from self._close(feature, ctx)
            return
        closed_until = self.closed_until.value()
        if closed_until is not None and timestamp >= closed_until * 1000:
            self.closed_until.clear()
        # Rule 5, per action: drop the waiting actions whose expiry is due.
        waiting = list(self.early.get())
        kept = [a for a in waiting if (a[3] + self.window) * 1000 > timestamp]
        if len(kept) != len(waiting):
            self.early.update(kept)

    def _close(self, feature, ctx):
        labels = {action: self.labels.get(action) for action in self.action_types}
        if any(value is not None for value in labels.values()):
            yield json.dumps({"request_id": feature[0], "sample_rate": 1.0,
                              **{f"label/{a}": float(v or 0.0) for a, v in labels.items()}})
        elif keep_negative(feature[0], self.negative_rate):
            yield json.dumps({"request_id": feature[0], "sample_rate": self.negative_rate,
                              **{f"label/{a}": 0.0 for a in self.action_types}})
        self.feature.clear()
        self.labels.clear()
        if self.dedupe_horizon:
            forget_at = feature[3] + self.window + self.dedupe_horizon
            self.closed_until.update(forget_at)
            ctx.timer_service().register_event_time_timer(forget_at * 1000)


def read_jsonl(path, fields):
    with open(path) as f:
        return [tuple(json.loads(line)[name] for name in fields) for line in f if line.strip()]


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", required=True)
    parser.add_argument("--actions", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--action-types", required=True)
    parser.add_argument("--window", type=int, default=600)
    parser.add_argument("--lateness", type=int, default=60)
    parser.add_argument("--negative-rate", type=float, default=1.0)
    parser.add_argument("--partition-idle-timeout", type=float, default=30.0,
                        help="seconds; 0: partitions never idle")
    parser.add_argument("--dedupe-horizon", type=int, default=3600, help="seconds of event time")
    args = parser.parse_args()

    env = StreamExecutionEnvironment.get_execution_environment()
    env.set_parallelism(1)
    env.set_python_executable(sys.executable)  # the workers run in this same virtualenv
    watermarks = (WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_seconds(args.lateness))
                  .with_timestamp_assigner(EventTime()))
    if args.partition_idle_timeout:
        watermarks = watermarks.with_idleness(
            Duration.of_millis(int(args.partition_idle_timeout * 1000)))
    features = env.from_collection(
        read_jsonl(args.features, ("request_id", "user_id", "item_id", "event_time")),
        type_info=feature_type()).assign_timestamps_and_watermarks(watermarks)
    actions = env.from_collection(
        [(r, a, float(v), t) for r, a, v, t in
         read_jsonl(args.actions, ("request_id", "action", "value", "event_time"))],
        type_info=action_type()).assign_timestamps_and_watermarks(watermarks)
    joined = features.key_by(lambda f: f[0], key_type=Types.STRING()).connect(
        actions.key_by(lambda a: a[0], key_type=Types.STRING())).process(
        ImpressionJoin(args.action_types.split(","), args.window, args.negative_rate,
                       args.dedupe_horizon),
        output_type=Types.STRING())
    with open(args.output, "w") as out:
        with joined.execute_and_collect() as results:
            for line in results:
                out.write(line + "\n")


if __name__ == "__main__":
    main()
