"""The online joiner: feature log + action log -> labelled training examples.

Impressions (feature records) and actions arrive on two topics, at different
times and in any order. The joiner joins them by request id in event time
(seconds), by these rules (the Flink job ``flink/joiner_job.py`` and the
README state the same ones):

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
   (impression time + window): as input arrives and, when no input arrives,
   on a timer (each poll, at most 0.2 s apart).
4. At the close, with ``emit="impression"`` (default), one example per
   impression, its labels the largest value per action type (0 for types
   that did not occur); with ``emit="action"``, one example per action as
   soon as it joins (the label of that action type) and nothing more at the
   close. An impression whose window closes with no action is a negative,
   kept when crc32(request id) / 2^32 < ``negative_rate`` and recorded with
   that rate as ``sample_rate``.
5. An action that arrives before its impression waits for it; each waiting
   action is dropped (an orphan) once the watermark passes its own event
   time + window.
6. A repeated impression is dropped and counted (``duplicate_impressions``):
   one whose request id is still pending, or was closed and the watermark
   has not yet passed that window's end + ``dedupe_horizon``.
7. A record later than the allowed lateness is joined with whatever is
   still held (an action whose impression closed is an orphan).

State is bounded by ``max_pending`` impressions: past it, the oldest windows
close early (counted as ``closed_early``), watermark or not; the closed
request ids remembered for rule 6 are bounded by the same number (the oldest
forgotten first). Malformed
records and tombstones (null values) go to the ``dead_letter`` topic with
their key and value (empty for a tombstone) and are counted
(``dead_letters``, of which ``tombstones``); the joiner keeps going.

At-least-once: every ``checkpoint_every`` seconds (and at stop) the joiner
flushes its output (durable), then writes a snapshot of its state (pending
impressions, waiting actions, closed request ids, partition event times,
input positions) atomically, then commits the input offsets. A restart
loads the snapshot and reads on from its positions; examples emitted after
the last snapshot are emitted again (the only duplicates, bounded by one
checkpoint interval of output). The snapshot is JSON with the held records
as the base64 of the bytes they arrived as (no re-encoding); no pickle. It
carries a CRC-32 of its content, and the one before it is kept
(``joiner-state.json.prev``): a corrupt snapshot is reported and the
previous one used (more duplicates, nothing lost); both corrupt is an error.
"""

import base64
import heapq
import json
import os
import sys
import time
import zlib

from monolith_tf import kill_points
from monolith_tf.json_crc import json_crc
from monolith_tf.topics import (ACTIONS_TOPIC, DEAD_LETTER_TOPIC, EXAMPLES_TOPIC,
                                FEATURES_TOPIC)
from monolith_tf.streaming.log import LogError
from monolith_tf.streaming.records import (RecordError, decode_action, decode_feature,
                                           encode_joined)

SNAPSHOT_FORMAT = "monolith_tf.joiner/4"  # /4: a CRC-32 of the rest, and a previous copy
# Snapshots of format 2 lack only the closed request ids; they load as is.
_READABLE_FORMATS = ("monolith_tf.joiner/2", "monolith_tf.joiner/3", SNAPSHOT_FORMAT)
# Seconds between polls of an input that has nothing: the close timer's period.
POLL_SECONDS = 0.2


def keep_negative(request_id, negative_rate):
    """Whether the negative of ``request_id`` is kept: a hash of the id
    against the rate, so every replay (and the reference) decides alike."""
    return zlib.crc32(request_id) / 2**32 < negative_rate


class JoinerConfig:
    """Join settings (see module doc).

    Args:
      actions: the action types that become labels (``label/<type>``).
      window, allowed_lateness: seconds of event time.
      negative_rate: share of negatives kept, in (0, 1].
      emit: ``"impression"`` or ``"action"``.
      max_pending: impressions held at most.
      partition_idle_timeout: seconds of wall time after which a partition
        with nothing to read stops holding the watermark (None: never).
      dedupe_horizon: seconds of event time a closed request id is
        remembered to drop repeated impressions (0: not remembered).
    """

    def __init__(self, actions, window=600, allowed_lateness=60, negative_rate=1.0,
                 emit="impression", max_pending=1_000_000, partition_idle_timeout=30.0,
                 dedupe_horizon=3600):
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
        if partition_idle_timeout is not None and not partition_idle_timeout > 0:
            raise ValueError(f"partition_idle_timeout must be > 0 seconds or None (never "
                             f"idle), got {partition_idle_timeout!r}")
        if dedupe_horizon < 0:
            raise ValueError(f"dedupe_horizon must be >= 0 seconds, got {dedupe_horizon!r}")
        self.actions = tuple(actions)
        self.window = int(window)
        self.allowed_lateness = int(allowed_lateness)
        self.negative_rate = float(negative_rate)
        self.emit = emit
        self.max_pending = int(max_pending)
        self.partition_idle_timeout = (None if partition_idle_timeout is None
                                       else float(partition_idle_timeout))
        self.dedupe_horizon = int(dedupe_horizon)


def _encode_id(request_id):
    return base64.b64encode(request_id).decode()


class Joiner:
    """Joins ``feature_topic`` and ``action_topic`` of ``log`` into
    ``output_topic`` (see module doc). ``state_dir`` holds the snapshot."""

    def __init__(self, log, config, state_dir, feature_topic=FEATURES_TOPIC,
                 action_topic=ACTIONS_TOPIC, output_topic=EXAMPLES_TOPIC,
                 dead_letter_topic=DEAD_LETTER_TOPIC, group="joiner", checkpoint_every=5.0):
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
        # request id -> event time after which it is forgotten (window end + horizon)
        self.closed = {}
        self.newest_time = {}    # (topic, partition) -> newest event time seen
        # Heaps of (event time, request id): window ends, waiting actions'
        # expiry, closed ids' forgetting.
        self._closing, self._orphaning, self._forgetting = [], [], []
        # (topic, partition) -> wall time it last had records to read.
        started = time.monotonic()
        self._active_at = {key: started for key in self._consumer.assignment()}
        self.counters = {"features": 0, "actions": 0, "emitted": 0, "positives": 0,
                         "negatives_kept": 0, "negatives_dropped": 0, "orphan_actions": 0,
                         "closed_early": 0, "dead_letters": 0, "tombstones": 0,
                         "duplicate_impressions": 0}
        self._load_snapshot()
        self._last_checkpoint = time.monotonic()
        self._changed = False  # input processed or windows closed since the last checkpoint

    # -- state snapshot -----------------------------------------------------------

    @property
    def _snapshot_path(self):
        return os.path.join(self.state_dir, "joiner-state.json")

    def _read_snapshot(self, path):
        """The snapshot in ``path``, or None if there is no such file; raises
        LogError naming the file when it is unreadable, corrupt or foreign."""
        try:
            with open(path, "rb") as f:
                snapshot = json.loads(f.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise LogError(f"{path}: unreadable joiner snapshot ({error})") from error
        if not isinstance(snapshot, dict) or snapshot.get("format") not in _READABLE_FORMATS:
            found = snapshot.get("format") if isinstance(snapshot, dict) else snapshot
            raise LogError(f"{path}: format {found!r}, expected {SNAPSHOT_FORMAT}")
        if snapshot["format"] == SNAPSHOT_FORMAT:
            stored = snapshot.pop("crc32", None)
            if stored != json_crc(snapshot):
                raise LogError(f"{path}: CRC mismatch (a corrupt joiner snapshot)")
        return snapshot

    def _load_snapshot(self):
        # A snapshot being written when the process died is not the snapshot.
        try:
            os.remove(self._snapshot_path + ".tmp")
        except FileNotFoundError:
            pass
        previous = self._snapshot_path + ".prev"
        try:
            snapshot = self._read_snapshot(self._snapshot_path)
        except LogError as error:
            # The previous snapshot is older: resuming from it re-emits more
            # examples (duplicates), never fewer.
            try:
                snapshot = self._read_snapshot(previous)
            except LogError as previous_error:
                raise LogError(f"{error}; the previous one too: {previous_error}") from error
            if snapshot is None:
                raise
            print(f"monolith_tf.joiner: {error}; resuming from {previous}", file=sys.stderr,
                  flush=True)
        if snapshot is None:  # killed between keeping the previous and renaming the new
            snapshot = self._read_snapshot(previous)
        if snapshot is None:
            return
        for raw, labels, joined in snapshot["pending"]:
            raw = base64.b64decode(raw)
            feature = decode_feature(raw)
            self.pending[feature.request_id] = [feature, labels, joined, raw]
            self._closing.append((feature.event_time + self.config.window, feature.request_id))
        for raws in snapshot["waiting"]:
            actions = [(decode_action(raw), raw) for raw in map(base64.b64decode, raws)]
            request_id = actions[0][0].request_id
            self.waiting[request_id] = actions
            self._orphaning.extend((a.event_time + self.config.window, request_id)
                                   for a, _ in actions)
        for request_id, forget_at in snapshot.get("closed", []):
            request_id = base64.b64decode(request_id)
            self.closed[request_id] = forget_at
            self._forgetting.append((forget_at, request_id))
        for heap in (self._closing, self._orphaning, self._forgetting):
            heapq.heapify(heap)
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
            "closed": [[_encode_id(request_id), forget_at]
                       for request_id, forget_at in self.closed.items()],
            "newest_time": [[list(key), t] for key, t in self.newest_time.items()],
            "counters": self.counters,
            "positions": [[list(key), offset] for key, offset in
                          self._consumer.positions().items()]}
        snapshot["crc32"] = json_crc(snapshot)
        temporary = self._snapshot_path + ".tmp"
        with open(temporary, "w") as f:
            json.dump(snapshot, f)
            f.flush()
            os.fsync(f.fileno())
        kill_points.reached("joiner.snapshot")
        if os.path.exists(self._snapshot_path):  # kept: the fallback if this one rots
            os.replace(self._snapshot_path, self._snapshot_path + ".prev")
        os.replace(temporary, self._snapshot_path)
        self._consumer.commit()
        kill_points.reached("joiner.committed")
        self._last_checkpoint = time.monotonic()
        self._changed = False

    # -- joining ------------------------------------------------------------------

    def watermark(self):
        """The joiner's watermark (event time, seconds; rule 2 of the module
        doc), or None while a partition with unread records has no known
        event time or nothing has been read."""
        now = time.monotonic()
        caught_up = self._consumer.caught_up()
        idle_after = self.config.partition_idle_timeout
        holding = []
        for key in self._consumer.assignment():
            if key not in caught_up:
                self._active_at[key] = now  # unread records: active
                if key not in self.newest_time:
                    return None
                holding.append(self.newest_time[key])
            elif key in self.newest_time and (
                    idle_after is None or now - self._active_at.get(key, now) < idle_after):
                holding.append(self.newest_time[key])
            # A caught-up partition never read from has no time to hold.
        if holding:
            return min(holding) - self.config.allowed_lateness
        if not self.newest_time:
            return None
        return max(self.newest_time.values()) - self.config.allowed_lateness

    def _advance(self, record, event_time):
        key = (record.topic, record.partition)
        self._active_at[key] = time.monotonic()
        if event_time > self.newest_time.get(key, event_time - 1):
            self.newest_time[key] = event_time

    def _dead_letter(self, record):
        self.counters["dead_letters"] += 1
        if record.value is None:
            self.counters["tombstones"] += 1
        self._producer.produce(self.dead_letter_topic, record.value or b"", key=record.key,
                               timestamp_ms=record.timestamp_ms)

    def _emit(self, feature, labels, sample_rate):
        full = {action: float(labels.get(action, 0.0)) for action in self.config.actions}
        self._producer.produce(self.output_topic, encode_joined(feature, full, sample_rate),
                               key=feature.request_id,
                               timestamp_ms=int(feature.event_time) * 1000)
        self.counters["emitted"] += 1
        kill_points.reached("joiner.emitted")

    def _join_action(self, request_id, action):
        feature, labels, _, _ = self.pending[request_id]
        if not feature.event_time <= action.event_time <= \
                feature.event_time + self.config.window:
            return
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
        if feature.request_id in self.pending or feature.request_id in self.closed:
            self.counters["duplicate_impressions"] += 1
            return
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
        elif action.request_id in self.closed:
            self.counters["orphan_actions"] += 1  # its impression's window has closed
        else:
            self.waiting.setdefault(action.request_id, []).append((action, record.value))
            heapq.heappush(self._orphaning, (action.event_time + self.config.window,
                                             action.request_id))

    def _close(self, request_id):
        feature, labels, joined, _ = self.pending.pop(request_id)
        if self.config.dedupe_horizon:
            forget_at = feature.event_time + self.config.window + self.config.dedupe_horizon
            self.closed[request_id] = forget_at
            heapq.heappush(self._forgetting, (forget_at, request_id))
            # Remembered ids are bounded like held impressions: oldest forgotten first.
            while len(self.closed) > self.config.max_pending:
                oldest_at, oldest = heapq.heappop(self._forgetting)
                if self.closed.get(oldest) == oldest_at:
                    del self.closed[oldest]
        if joined:
            if self.config.emit == "impression":
                self._emit(feature, labels, 1.0)
                self.counters["positives"] += 1
        elif keep_negative(request_id, self.config.negative_rate):
            self._emit(feature, {}, self.config.negative_rate)
            self.counters["negatives_kept"] += 1
        else:
            self.counters["negatives_dropped"] += 1

    def close_windows(self):
        """Closes what the watermark has passed (rules 3, 5, 6) and enforces
        ``max_pending``; returns the number of impressions closed."""
        closed = 0
        watermark = self.watermark()
        if watermark is not None:
            closed += self._close_passed(watermark)
        # The bound on held state holds whether or not the watermark is known.
        while len(self.pending) > self.config.max_pending:
            _, request_id = heapq.heappop(self._closing)  # the oldest window first
            if request_id in self.pending:
                self._close(request_id)
                self.counters["closed_early"] += 1
                closed += 1
        return closed

    def _close_passed(self, watermark):
        """Closes the windows, drops the waiting actions and forgets the
        closed request ids that ``watermark`` (event time) has passed; returns
        the number of impressions closed. Heap entries already handled are
        skipped."""
        closed = 0
        while self._closing and self._closing[0][0] < watermark:
            _, request_id = heapq.heappop(self._closing)
            if request_id in self.pending:
                self._close(request_id)
                closed += 1
        while self._orphaning and self._orphaning[0][0] < watermark:
            _, request_id = heapq.heappop(self._orphaning)
            actions = self.waiting.get(request_id)
            if not actions:
                continue
            # Per action: only those whose own time + window has passed.
            kept = [(a, raw) for a, raw in actions
                    if a.event_time + self.config.window >= watermark]
            self.counters["orphan_actions"] += len(actions) - len(kept)
            if kept:
                self.waiting[request_id] = kept
            else:
                del self.waiting[request_id]
        while self._forgetting and self._forgetting[0][0] < watermark:
            forget_at, request_id = heapq.heappop(self._forgetting)
            if self.closed.get(request_id) == forget_at:
                del self.closed[request_id]
        return closed

    def process(self, records):
        """Joins a batch of input records (as the consumer returned them)."""
        for record in records:
            if record.value is None:
                self._dead_letter(record)  # a tombstone carries no record
                continue
            try:
                if record.topic == self.topics["feature"]:
                    self._on_feature(record, decode_feature(record.value))
                else:
                    self._on_action(record, decode_action(record.value))
            except RecordError:
                self._dead_letter(record)
        self.close_windows()
        self._changed = True

    def run(self, max_seconds=None, idle_timeout=None, should_stop=None):
        """Consumes and joins until ``max_seconds`` pass, no input arrives for
        ``idle_timeout`` seconds, or ``should_stop()`` is true; closes windows
        on a timer while input is quiet (rule 3); checkpoints on schedule and
        at the end. Returns the counters."""
        started = idle_since = time.monotonic()
        while True:
            records = self._consumer.poll(max_records=1000, timeout=POLL_SECONDS)
            now = time.monotonic()
            if records:
                self.process(records)
                idle_since = now
            elif self.close_windows():
                self._changed = True  # the watermark moved by idleness alone
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
