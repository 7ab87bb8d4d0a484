"""The online joiner: feature log + action log -> labelled training examples.

Impressions (feature records) and actions arrive on two topics, at different
times and in any order. The joiner joins them by request id in event time:
an action belongs to an impression when its event time lies in
``[impression time, impression time + window]``. Event time advances a
watermark per input partition (its newest event time); the joiner's
watermark is the smallest over the partitions that still have unread
records, minus ``allowed_lateness``, so reading one partition ahead of
another closes nothing early (when every partition is caught up, the
newest time overall counts). An impression's window closes when the
watermark passes its end, and then:

  ``emit="impression"`` (default): one example per impression, its labels
      the largest value per action type (0 for types that did not occur);
  ``emit="action"``: one example per action as soon as it joins (label of
      that action type), and nothing more for the impression;

impressions whose window closes with no action are negatives, kept with
probability ``negative_rate``, decided by a hash of the request id (so a
replay decides the same) and recorded in the example's ``sample_rate``.
Actions that arrive before their impression wait for it; an action whose
impression never comes is dropped once the watermark passes its time plus
the window ("orphan"). Records later than the allowed lateness are joined
with whatever is still held.

State is bounded by ``max_pending`` impressions: past it, the oldest
windows close early (counted as ``closed_early``). Malformed records go to
the ``dead_letter`` topic (key: the source topic) and are counted; the
joiner keeps going.

At-least-once: every ``checkpoint_every`` seconds (and at stop) the joiner
flushes its output (durable), then writes a snapshot of its state (pending
impressions, waiting actions, watermark, input positions) atomically, then
commits the input offsets. A restart loads the snapshot and reads on from
its positions; examples emitted after the last snapshot are emitted again
(the only duplicates, bounded by one checkpoint interval of output).
The snapshot is JSON with the held records as the base64 of the bytes they
arrived as (no re-encoding); no pickle.
"""

import base64
import heapq
import json
import os
import time
import zlib

from monolith_tf.streaming.log import LogError
from monolith_tf.streaming.records import (RecordError, decode_action, decode_feature,
                                           encode_joined)

SNAPSHOT_FORMAT = "monolith_tf.joiner/2"


def keep_negative(request_id, negative_rate):
    """Whether the negative of ``request_id`` is kept: a hash of the id
    against the rate, so every replay (and the reference) decides alike."""
    return zlib.crc32(request_id) / 2**32 < negative_rate


class JoinerConfig:
    """Join settings (seconds of event time; see module doc)."""

    def __init__(self, actions, window=600, allowed_lateness=60, negative_rate=1.0,
                 emit="impression", max_pending=1_000_000):
        if not actions:
            raise ValueError("actions must name at least one action type")
        if window < 0 or allowed_lateness < 0:
            raise ValueError("window and allowed_lateness must be >= 0 seconds")
        if not 0.0 < negative_rate <= 1.0:
            raise ValueError(f"negative_rate must be in (0, 1], got {negative_rate}")
        if emit not in ("impression", "action"):
            raise ValueError(f"emit must be 'impression' or 'action', got {emit!r}")
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        self.actions = tuple(actions)
        self.window = int(window)
        self.allowed_lateness = int(allowed_lateness)
        self.negative_rate = float(negative_rate)
        self.emit = emit
        self.max_pending = int(max_pending)


class Joiner:
    """Joins ``feature_topic`` and ``action_topic`` of ``log`` into
    ``output_topic`` (see module doc). ``state_dir`` holds the snapshot."""

    def __init__(self, log, config, state_dir, feature_topic="features",
                 action_topic="actions", output_topic="examples",
                 dead_letter_topic="dead_letter", group="joiner", checkpoint_every=5.0):
        self.log = log
        self.config = config
        self.state_dir = state_dir
        self.topics = {"feature": feature_topic, "action": action_topic}
        self.output_topic = output_topic
        self.dead_letter_topic = dead_letter_topic
        self.checkpoint_every = float(checkpoint_every)
        os.makedirs(state_dir, exist_ok=True)
        self._consumer = log.consumer(group, [feature_topic, action_topic])
        self._producer = log.producer()
        # request id -> [FeatureRecord, {action: value}, joined any, record bytes]
        self.pending = {}
        # request id -> [(ActionRecord, record bytes), ...] (before their impression)
        self.waiting = {}
        self.newest_time = {}    # (topic, partition) -> newest event time seen
        self._closing, self._orphaning = [], []  # heaps: (window end, request id)
        self.counters = {"features": 0, "actions": 0, "emitted": 0, "positives": 0,
                         "negatives_kept": 0, "negatives_dropped": 0, "orphan_actions": 0,
                         "closed_early": 0, "dead_letters": 0}
        self._load_snapshot()
        self._last_checkpoint = time.monotonic()
        self._changed = False  # input processed since the last checkpoint

    # -- state snapshot -----------------------------------------------------------

    @property
    def _snapshot_path(self):
        return os.path.join(self.state_dir, "joiner-state.json")

    def _load_snapshot(self):
        try:
            with open(self._snapshot_path) as f:
                snapshot = json.load(f)
        except FileNotFoundError:
            return
        if snapshot.get("format") != SNAPSHOT_FORMAT:
            raise LogError(f"{self._snapshot_path}: format {snapshot.get('format')!r}, "
                           f"expected {SNAPSHOT_FORMAT}")
        for raw, labels, joined in snapshot["pending"]:
            raw = base64.b64decode(raw)
            feature = decode_feature(raw)
            self.pending[feature.request_id] = [feature, labels, joined, raw]
            self._closing.append((feature.event_time + self.config.window, feature.request_id))
        for raws in snapshot["waiting"]:
            actions = [(decode_action(raw), raw) for raw in map(base64.b64decode, raws)]
            request_id = actions[0][0].request_id
            self.waiting[request_id] = actions
            self._orphaning.append((max(a.event_time for a, _ in actions) + self.config.window,
                                    request_id))
        heapq.heapify(self._closing)
        heapq.heapify(self._orphaning)
        self.newest_time = {tuple(key): t for key, t in snapshot["newest_time"]}
        self.counters.update(snapshot["counters"])
        for key, offset in snapshot["positions"]:
            self._consumer.seek(key[0], key[1], offset)

    def checkpoint(self):
        """Output durable, then state snapshot, then input offsets committed.
        Held records go into the snapshot as the bytes they arrived as."""
        self._producer.flush()
        snapshot = {
            "format": SNAPSHOT_FORMAT,
            "pending": [[base64.b64encode(raw).decode(), labels, joined]
                        for _, labels, joined, raw in self.pending.values()],
            "waiting": [[base64.b64encode(raw).decode() for _, raw in actions]
                        for actions in self.waiting.values()],
            "newest_time": [[list(key), t] for key, t in self.newest_time.items()],
            "counters": self.counters,
            "positions": [[list(key), offset] for key, offset in
                          self._consumer.positions().items()]}
        temporary = self._snapshot_path + ".tmp"
        with open(temporary, "w") as f:
            json.dump(snapshot, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self._snapshot_path)
        self._consumer.commit()
        self._last_checkpoint = time.monotonic()
        self._changed = False

    # -- joining ------------------------------------------------------------------

    def _watermark(self):
        caught_up = self._consumer.caught_up()
        behind = [key for key in self._consumer.assignment() if key not in caught_up]
        if any(key not in self.newest_time for key in behind):
            return None  # a partition with unread records of unknown time
        times = [self.newest_time[key] for key in behind] or list(self.newest_time.values())
        if not times:
            return None
        return min(times) - self.config.allowed_lateness

    def _advance(self, record, event_time):
        key = (record.topic, record.partition)
        if event_time > self.newest_time.get(key, event_time - 1):
            self.newest_time[key] = event_time

    def _dead_letter(self, record):
        self.counters["dead_letters"] += 1
        self._producer.produce(self.dead_letter_topic, record.value,
                               key=record.topic.encode(), timestamp_ms=record.timestamp_ms)

    def _emit(self, feature, labels, sample_rate):
        full = {action: float(labels.get(action, 0.0)) for action in self.config.actions}
        self._producer.produce(self.output_topic, encode_joined(feature, full, sample_rate),
                               key=feature.request_id,
                               timestamp_ms=int(feature.event_time) * 1000)
        self.counters["emitted"] += 1

    def _join_action(self, request_id, action):
        feature, labels, _, _ = self.pending[request_id]
        if not feature.event_time <= action.event_time <= feature.event_time + \
                self.config.window:
            return  # outside this impression's window
        if action.action not in self.config.actions:
            return
        self.pending[request_id][2] = True
        if self.config.emit == "action":
            self._emit(feature, {action.action: action.value}, 1.0)
            self.counters["positives"] += 1
        else:
            labels[action.action] = max(labels.get(action.action, action.value), action.value)

    def _on_feature(self, record, feature):
        self.counters["features"] += 1
        self._advance(record, feature.event_time)
        if feature.request_id in self.pending:
            return  # a replayed duplicate
        self.pending[feature.request_id] = [feature, {}, False, record.value]
        heapq.heappush(self._closing, (feature.event_time + self.config.window,
                                       feature.request_id))
        for action, _ in self.waiting.pop(feature.request_id, []):
            self._join_action(feature.request_id, action)

    def _on_action(self, record, action):
        self.counters["actions"] += 1
        self._advance(record, action.event_time)
        if action.request_id in self.pending:
            self._join_action(action.request_id, action)
        else:
            self.waiting.setdefault(action.request_id, []).append((action, record.value))
            heapq.heappush(self._orphaning, (action.event_time + self.config.window,
                                             action.request_id))

    def _close(self, request_id):
        feature, labels, joined, _ = self.pending.pop(request_id)
        if joined:
            if self.config.emit == "impression":
                self._emit(feature, labels, 1.0)
                self.counters["positives"] += 1
        elif keep_negative(request_id, self.config.negative_rate):
            self._emit(feature, {}, self.config.negative_rate)
            self.counters["negatives_kept"] += 1
        else:
            self.counters["negatives_dropped"] += 1

    def _close_windows(self):
        watermark = self._watermark()
        if watermark is not None:
            self._close_passed(watermark)
        # The bound on held state holds whether or not the watermark is known.
        while len(self.pending) > self.config.max_pending:
            _, request_id = heapq.heappop(self._closing)  # the oldest window first
            if request_id in self.pending:
                self._close(request_id)
                self.counters["closed_early"] += 1

    def _close_passed(self, watermark):
        """Closes the windows and drops the waiting actions that ``watermark``
        (event time, seconds) has passed."""
        # Heaps of (window end, request id); entries already closed are skipped.
        while self._closing and self._closing[0][0] < watermark:
            _, request_id = heapq.heappop(self._closing)
            if request_id in self.pending:
                self._close(request_id)
        while self._orphaning and self._orphaning[0][0] < watermark:
            _, request_id = heapq.heappop(self._orphaning)
            actions = self.waiting.get(request_id, [])
            if actions and max(a.event_time for a, _ in actions) + self.config.window < watermark:
                self.counters["orphan_actions"] += len(self.waiting.pop(request_id))

    def process(self, records):
        """Joins a batch of input records (as the consumer returned them)."""
        for record in records:
            try:
                if record.topic == self.topics["feature"]:
                    self._on_feature(record, decode_feature(record.value))
                else:
                    self._on_action(record, decode_action(record.value))
            except RecordError:
                self._dead_letter(record)
        self._close_windows()
        self._changed = True

    def run(self, max_seconds=None, idle_timeout=None, should_stop=None):
        """Consumes and joins until ``max_seconds`` pass, no input arrives for
        ``idle_timeout`` seconds, or ``should_stop()`` is true; checkpoints on
        schedule and at the end. Returns the counters."""
        started = idle_since = time.monotonic()
        while True:
            records = self._consumer.poll(max_records=1000, timeout=0.2)
            now = time.monotonic()
            if records:
                self.process(records)
                idle_since = now
            if self._changed and now - self._last_checkpoint >= self.checkpoint_every:
                self.checkpoint()  # an idle joiner rewrites nothing
            if ((max_seconds is not None and now - started >= max_seconds)
                    or (idle_timeout is not None and now - idle_since >= idle_timeout)
                    or (should_stop is not None and should_stop())):
                break
        self.checkpoint()
        return dict(self.counters)

    def flush_all(self):
        """Closes every open window now (end of a bounded input) and
        checkpoints."""
        for request_id in list(self.pending):
            self._close(request_id)
        self.counters["orphan_actions"] += sum(len(a) for a in self.waiting.values())
        self.waiting.clear()
        self.checkpoint()
