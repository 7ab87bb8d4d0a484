"""Parameter sync, replica side: following the sync stream and applying it
through a sink.

``SyncFollower`` reads the sync topic (``monolith_tf.sync.records``) from a
position, decodes each record, hands it to its sink (``monolith_tf.sync.sinks``:
our model server in process, or any TF Serving over gRPC) in order, and
sends what the sink cannot apply (truncated, corrupt, unknown table, wrong
dim, ...) to a dead-letter topic with nothing of it applied, counting each
by reason; it keeps going. Its position comes from the base version being
served: a base records the stream offsets it covers (``export_format.
read_sync_state``), records below them are skipped, and on each new base
(the sink calls ``rebase``) the follower seeks back to its offsets and
replays what follows, so a replica started late or restarted catches up.
Re-applying a record is harmless: every record holds full row values, in
stream order.
"""

import logging
import threading
import time
import uuid

from monolith_tf.serving.errors import ServingError
from monolith_tf.sync.records import DensePush, SyncRecordError, decode
from monolith_tf.topics import SYNC_DEAD_LETTER_TOPIC, SYNC_TOPIC

_log = logging.getLogger(__name__)


class SyncFollower:
    """Reads the sync topic and applies it in order through ``sink`` (module
    doc).

    Args:
      log: the ``monolith_tf.streaming`` log holding the topic.
      sink: a ``monolith_tf.sync.sinks.SyncSink``: applies pushes and calls
        ``rebase(offsets)`` when a new base serves.
      topic: the sync topic; ``dead_letter_topic``: where refused records go.
      poll_timeout: seconds one poll waits for records.
    """

    def __init__(self, log, sink, topic=SYNC_TOPIC, dead_letter_topic=SYNC_DEAD_LETTER_TOPIC,
                 poll_timeout=0.1):
        self.log, self.sink = log, sink
        self.topic, self.dead_letter_topic = topic, dead_letter_topic
        self.poll_timeout = poll_timeout
        self._consumer = None
        self._producer = None
        self._lock = threading.Lock()
        self._floor = {}
        self._pending_seek = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = None
        self.counters = {"records": 0, "rows": 0, "removed": 0, "dense": 0, "skipped": 0,
                         "rejected": 0}
        self.rejected = {}          # reason -> count
        self.last_applied = None    # (partition, offset, wall lag seconds, data time)
        self._handled = {}          # partition -> offset after the newest record handled

    def start(self):
        """Starts following in a thread (it waits for the first base)."""
        for topic in (self.topic, self.dead_letter_topic):
            if topic not in self.log.topics():
                self.log.create_topic(topic, 1)
        self._consumer = self.log.consumer(f"sync-{uuid.uuid4().hex[:12]}", [self.topic])
        self._producer = self.log.producer()
        self._thread = threading.Thread(target=self._run, name="sync-follower", daemon=True)
        self._thread.start()
        self.sink.attach(self)
        return self

    def stop(self):
        """Stops following (the record being applied finishes)."""
        self._stop.set()
        self.sink.detach()
        if self._thread is not None:
            self._thread.join()
        for client in (self._consumer, self._producer):
            if client is not None:
                client.close()
        self._consumer = self._producer = None

    def rebase(self, offsets):
        """A base covering ``offsets`` ({partition: next offset}) now serves:
        skip records below them and replay from them."""
        with self._lock:
            self._floor = dict(offsets)
            self._pending_seek = dict(offsets)
            self._handled = {}
        self._ready.set()

    def covered(self, record):
        """Whether the serving base already holds ``record``."""
        return record.offset < self._floor.get(record.partition, 0)

    def _run(self):
        while not self._stop.is_set():
            if not self._ready.wait(0.1):
                continue
            with self._lock:
                seek, self._pending_seek = self._pending_seek, None
            if seek:
                for partition, offset in seek.items():
                    self._consumer.seek(self.topic, partition, offset)
            for record in self._consumer.poll(500, self.poll_timeout):
                if self._stop.is_set() or self._pending_seek is not None:
                    break  # a new base: its replay starts over
                self._handle(record)
                self._handled[record.partition] = record.offset + 1

    def _handle(self, record):
        try:
            push = decode(record.value)
        except SyncRecordError as error:
            return self._reject(record, "corrupt", str(error))
        try:
            applied = self.sink.apply(push, lambda: self.covered(record))
        except ServingError as error:
            return self._reject(record, "refused", error.message)
        if not applied:
            self.counters["skipped"] += 1
            return
        self.counters["records"] += 1
        if isinstance(push, DensePush):
            self.counters["dense"] += 1
        else:
            self.counters["rows"] += len(push.ids)
            self.counters["removed"] += len(push.removed)
        self.last_applied = (record.partition, record.offset, time.time() - push.wall_time,
                             push.data_time)
        self.sink.applied(push, record)

    def _reject(self, record, reason, message):
        _log.warning("sync record at %s:%d refused (%s): %s", record.topic, record.offset,
                     reason, message)
        self.counters["rejected"] += 1
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        value = record.value if record.value is not None else b""
        self._producer.produce(self.dead_letter_topic, value, key=record.key)
        self._producer.flush()
        self.sink.rejected(reason)

    def wait_until_applied(self, offsets, timeout):
        """Waits until every record below ``offsets`` ({partition: offset})
        was applied, skipped or refused; returns whether it was."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._pending_seek is None and all(
                    self._handled.get(p, self._floor.get(p, 0)) >= o
                    for p, o in offsets.items()):
                return True
            time.sleep(0.01)
        return False
